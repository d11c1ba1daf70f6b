"""Deployment layouts: one stored artifact, arranged the way a consumer reads it.

A layout is a pure remapping of the artifact's files (by digest: no bytes are copied, the
materialiser links or clones them) plus a few small generated files and the environment the
consumer should be started with. ``raw`` (the artifact as built) applies to every target;
each target plans its own consumer layouts (``Target.plan_layout``), with the helpers here.

serving.properties is written in the subset both of DJL Serving's readers agree on (the Java
``Properties.load`` and LMI's naive Python ``split('=')``): ASCII ``key=value`` lines, ``#``
comments in column 0, lowercase booleans, no continuations or escapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import SpecError
from ..manifests import FileEntry

__all__ = ["RAW", "Layout", "serving_properties", "strip_prefix"]

RAW = "raw"


@dataclass
class Layout:
    files: list[FileEntry]  # existing blobs under new paths
    generated: dict[str, bytes] = field(default_factory=dict)  # new small files
    env: dict[str, str] = field(default_factory=dict)  # what the consumer should be started with


def serving_properties(props: Mapping[str, Any]) -> bytes:
    lines = ["# Written by Kiln: the engine in this directory was compiled ahead of time."]
    for k, v in props.items():
        if v is None:
            continue
        text = ("true" if v else "false") if isinstance(v, bool) else str(v)
        if any(c in text for c in "\n\r\\") or not text.isascii():
            raise SpecError(f"cannot write {k}={text!r} into serving.properties")
        lines.append(f"{k}={text}")
    return ("\n".join(lines) + "\n").encode("ascii")


def strip_prefix(files: tuple[FileEntry, ...], prefix: str, to: str = "") -> list[FileEntry]:
    """The files under ``prefix``, moved under ``to``."""
    return [FileEntry(to + f.path[len(prefix):], f.digest, f.size) for f in files if f.path.startswith(prefix)]
