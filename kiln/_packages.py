"""Installed versions of packages, without importing them or, usually, ``importlib.metadata``.

Every lookup keys on toolchain versions (torch, transformers…), read from package metadata.
``importlib.metadata`` and what it imports (email, zipfile, socket, importlib.resources) cost
about 16 ms of a ~140 ms ``kiln lookup`` (``python -X importtime``, Python 3.11), so the common
case is read from the names of the ``.dist-info`` directories on ``sys.path``, in path order
as ``importlib.metadata`` searches them: an installed wheel's directory is named
``{normalized name}-{version}.dist-info`` (PyPA's "Recording installed projects"). Anything
else (eggs, ``.egg-info``, a name that does not parse, a zip on the path) falls back to
``importlib.metadata``.
"""

from __future__ import annotations

import os
import re
import sys

__all__ = ["installed_version"]

_SEPARATORS = re.compile(r"[-_.]+")
_VERSION = re.compile(r"[0-9][0-9A-Za-z.!+_]*")  # a PEP 440 version as pip writes it in a directory name


def _normalize(name: str) -> str:
    return _SEPARATORS.sub("_", name).lower()


def installed_version(dist: str) -> str | None:
    """The installed version of distribution ``dist`` (``"torch"``, ``"tensorrt_llm"``), or None."""
    wanted = _normalize(dist)
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:  # a missing directory, or a zip on the path (read by importlib.metadata below)
            if os.path.isfile(entry):
                return _from_metadata(dist)
            continue
        for name in names:
            stem, dot, suffix = name.rpartition(".")
            if suffix not in ("dist-info", "egg-info", "egg") or not dot:
                continue
            # A version holds no "-" (PEP 440; installers write one as "_"), so the last "-" splits
            # a .dist-info name; eggs add "-pyX.Y" after the version, so their first "-" does.
            project, _, version = stem.rpartition("-") if suffix == "dist-info" else stem.partition("-")
            if _normalize(project or stem) != wanted:
                continue
            if suffix == "dist-info" and _VERSION.fullmatch(version):
                return version
            return _from_metadata(dist)
    return None


def _from_metadata(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
