"""Installed versions of packages, without importing them or, usually, ``importlib.metadata``.

Every lookup keys on toolchain versions (torch, transformers…), read from package metadata.
``importlib.metadata`` and what it imports (email, zipfile, socket, importlib.resources) cost
about 16 ms of a ~140 ms ``kiln lookup`` (``python -X importtime``, Python 3.11), so the common
case is found by the names of the ``.dist-info`` directories on ``sys.path``, in path order
as ``importlib.metadata`` searches them (an installed wheel's directory is named
``{normalized name}-{version}.dist-info``, PyPA's "Recording installed projects"), and read
from that directory's METADATA header. Anything else (eggs, ``.egg-info``, a name with more
than one ``-``, a missing METADATA, a zip on the path) falls back to ``importlib.metadata``.

A directory is listed once per process while its mtime stands (importlib.metadata's path cache
does the same): a lookup asks for two or three packages, each of which re-listed the standard
library and site-packages. A directory changed in the last two seconds is listed afresh every
time: an install in the same tick of the mtime clock as the listing (a few ms on Linux, 2 s on
some filesystems) leaves the mtime as it was, and a kept listing would miss that install for
the life of the process (git's "racy timestamp" problem), giving a wrong toolchain version.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import time

__all__ = ["installed_version"]

_SEPARATORS = re.compile(r"[-_.]+")
_SUFFIXES = (".dist-info", ".egg-info", ".egg")
_RACY_NS = 2_000_000_000  # a listing of a directory changed this recently is not kept


def _normalize(name: str) -> str:
    return _SEPARATORS.sub("_", name).lower()


def installed_version(dist: str) -> str | None:
    """The installed version of distribution ``dist`` (``"torch"``, ``"tensorrt_llm"``), or None.

    The first directory on ``sys.path`` that holds the project decides, as for importlib.metadata;
    the version is its METADATA's ``Version:`` header (importlib.metadata's answer, which a
    directory name may spell differently). Anything but a plain ``name-version.dist-info`` with a
    readable METADATA is left to importlib.metadata itself.
    """
    wanted = _normalize(dist)
    for entry in sys.path:
        directory = os.path.abspath(entry or ".")
        try:
            mtime = os.stat(directory).st_mtime_ns
        except OSError:
            continue
        listing = _distributions if time.time_ns() - mtime >= _RACY_NS else _distributions.__wrapped__
        index = listing(directory, mtime)
        if index is None:  # not a directory: a zip on the path is importlib.metadata's to read
            if os.path.isfile(directory):
                return _from_metadata(dist)
            continue
        name = index.get(wanted)
        if name is None:
            continue
        if name.endswith(".dist-info") and name[: -len(".dist-info")].count("-") == 1:
            version = _metadata_version(os.path.join(directory, name, "METADATA"))
            if version:
                return version
        return _from_metadata(dist)
    return None


@functools.lru_cache(maxsize=64)
def _distributions(directory: str, mtime_ns: int) -> dict[str, str] | None:
    """The distribution entries of ``directory`` (as of ``mtime_ns``) by normalized project name, the
    first in listing order for each; None when it is not a directory."""
    try:
        names = os.listdir(directory)
    except OSError:
        return None
    index: dict[str, str] = {}
    for name in names:
        lower = name.lower()
        if not lower.endswith(_SUFFIXES):
            continue
        stem = name[: -len(next(x for x in _SUFFIXES if lower.endswith(x)))]
        # The project is before the first "-" (wheels, eggs) or, in old names, the last one.
        for project in (_normalize(stem.partition("-")[0]), _normalize(stem.rpartition("-")[0])):
            index.setdefault(project, name)
    return index


def _metadata_version(path: str) -> str | None:
    """The ``Version:`` header of a METADATA file (headers end at the first blank line)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    return None
                key, _, value = line.partition(":")
                if key.strip().lower() == "version":
                    return value.strip() or None
    except OSError:
        return None
    return None


def _from_metadata(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
