"""Installed versions of packages, without importing them or, usually, ``importlib.metadata``.

Every lookup keys on toolchain versions (torch, transformers…), read from package metadata.
``importlib.metadata`` and what it imports (email, zipfile, socket, importlib.resources) cost
about 16 ms of a ~140 ms ``kiln lookup`` (``python -X importtime``, Python 3.11), so the common
case is found by the names of the ``.dist-info`` directories on ``sys.path``, in path order
as ``importlib.metadata`` searches them (an installed wheel's directory is named
``{normalized name}-{version}.dist-info``, PyPA's "Recording installed projects"), and read
from that directory's METADATA header. Anything else (eggs, ``.egg-info``, a name with more
than one ``-``, a missing METADATA, a zip on the path) falls back to ``importlib.metadata``.
"""

from __future__ import annotations

import os
import re
import sys

__all__ = ["installed_version"]

_SEPARATORS = re.compile(r"[-_.]+")
_SUFFIXES = (".dist-info", ".egg-info", ".egg")


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
        try:
            names = os.listdir(entry or ".")
        except OSError:  # not a directory: a zip on the path is importlib.metadata's to read
            if os.path.isfile(entry):
                return _from_metadata(dist)
            continue
        for name in names:
            lower = name.lower()
            suffix = next((x for x in _SUFFIXES if lower.endswith(x)), None)
            if suffix is None:
                continue
            stem = name[: -len(suffix)]
            # The project is before the first "-" (wheels, eggs) or, in old names, the last one.
            if wanted not in (_normalize(stem.partition("-")[0]), _normalize(stem.rpartition("-")[0])):
                continue
            if name.endswith(".dist-info") and stem.count("-") == 1:
                version = _metadata_version(os.path.join(entry or ".", name, "METADATA"))
                if version:
                    return version
            return _from_metadata(dist)
    return None


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
