"""The model tree: which files a model's digest covers, listed and checked before any byte is hashed.

**The tree** is where a model directory's entries may lead, taken as a real path (links on the
way *to* the model directory are resolved first):

- a Hugging Face cache snapshot, ``<cache>/models--org--name/snapshots/<commit>`` (what a Hub id
  resolves to, or such a directory passed as a path): the repository folder ``models--org--name``.
  huggingface_hub stores each file once, as ``blobs/<etag>``, and the snapshot's entries are the
  links ``config.json -> ../../blobs/<etag>``: outside the snapshot, inside the repository folder;
- any other directory: the directory itself.

**The listing** (:func:`scan_tree`) is every file that a reader of the model directory reaches,
walking it and following its links as transformers' loaders and the targets' workers do, except
those :data:`MODEL_FILE_IGNORES` names (paths relative to the model directory). It is what the
digest hashes and what a build may read: nothing is skipped silently. Every listed file is a
regular file inside the tree that this process could open; anything else is a
:class:`~kiln.errors.ModelError` naming the path and the fix, raised before any hashing:

- a directory that cannot be listed, a file that cannot be opened (permissions, a link loop);
- a link whose fully resolved target is outside the tree (what a build reads would then be
  whatever that path holds by then, owned by someone else), or that leads nowhere (dangling);
- a FIFO, socket or device: refused from its ``stat``, never opened (opening a FIFO waits for a
  writer, opening a device can act on it). Regular files are opened with O_NONBLOCK and checked
  again on the descriptor, so an entry swapped for a FIFO in between cannot hang the open;
- a link to a directory that contains it (a cycle: the tree it makes is infinite);
- more than :data:`MAX_TREE_ENTRIES` entries: links to directories can multiply the paths (two
  links to the next level, forty levels deep, are 2**40 paths), so the walk is bounded.

**Links to directories inside the tree are followed**, their files listed under the link's path
(``tokenizer -> original/tok`` lists ``tokenizer/tokenizer.json``), since that is the path a loader
reads them by: the digest then changes when their contents do, even when the link's target is
itself ignored (``original/``). Refusing such links would be sound too, but would turn away
model directories that build correctly; following them under the link's path costs nothing in
honesty, because the listing is exactly what a reader of the directory sees.

**Ignored directories are not entered** (``.git/``, ``original/``): no build reads them, so an
unreadable one must not stop resolution. A directory is pruned only when a pattern ending in
``*`` covers it, hence every path under it (``fnmatch``'s ``*`` matches ``/`` too).

**One rule, two listings.** :func:`ignored` decides which files count and :func:`tree_digest`
is the digest of a file list, both for a directory on disk (:func:`scan_tree`) and for a Hub
repository's file metadata (:mod:`kiln.models._hub_api`, a flat list of paths: pruning a
directory drops exactly the paths :func:`ignored` drops, since a pruning pattern covers every
path under it). The two resolutions of the same commit therefore give the same digest.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .._input import show_path
from ..errors import ModelError

__all__ = ["MODEL_FILE_IGNORES", "MAX_TREE_ENTRIES", "ModelFile", "TreeFile", "TreeListing", "ignored", "scan_tree",
           "tree_digest", "tree_root"]

# Files that never change an engine: docs, licences, git metadata, and the duplicate
# "original/" consolidated checkpoints Meta ships beside the HF weights. Everything else is
# in the digest — when in doubt, a file is included (a miss is cheap, a wrong hit is not).
MODEL_FILE_IGNORES = (
    "*.md", "LICENSE*", "USE_POLICY*", "NOTICE*", ".gitattributes", ".gitignore",
    "original/*", ".cache/*", ".git/*", ".huggingface/*",
)
# Entries visited, links included (real model repositories: tens to a few thousand).
MAX_TREE_ENTRIES = 100_000
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


@dataclass(frozen=True)
class ModelFile:
    """One file of a model: its relative path, sha256 and size (what the tree digest covers)."""

    path: str  # relative, POSIX separators
    sha256: str  # hex
    size: int


def tree_digest(files: Iterable[ModelFile]) -> str:
    """The tree digest: sha256 over the canonical list of (path, sha256, size), sorted by path."""
    listing = [[f.path, f.sha256, f.size] for f in sorted(files, key=lambda f: f.path)]
    data = json.dumps(listing, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class TreeFile:
    """One listed file: the path the digest records, how a reader reaches it, what it is."""

    rel: str  # relative to the model directory, POSIX separators
    path: Path  # model directory / rel (through any links, as a loader opens it): for messages
    real: Path  # its real path, inside the tree: what is opened and hashed
    size: int
    ident: tuple[int, int]  # (st_dev, st_ino) when listed: a file swapped since is noticed


@dataclass(frozen=True)
class TreeListing:
    """A model directory's tree (its real path) and every file of it a build can read."""

    root: Path
    files: tuple[TreeFile, ...]


def ignored(rel: str) -> bool:
    """The file at ``rel`` (relative to the model directory) does not count: the one selection rule."""
    return _ignore_matcher(prune=False)(rel) is not None


def _pruned(rel_dir: str) -> bool:
    """Every path under the directory ``rel_dir`` is ignored (see the module docstring)."""
    return _ignore_matcher(prune=True)(rel_dir + "/") is not None


@functools.cache
def _ignore_matcher(prune: bool) -> Callable[[str], re.Match[str] | None]:
    """``fnmatch.fnmatch`` over the patterns (all, or those that prune), as one regular expression:
    one compile instead of ten (a few ms of every lookup that scans a model directory)."""
    patterns = [p for p in MODEL_FILE_IGNORES if p.endswith("*")] if prune else MODEL_FILE_IGNORES
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)).match


def tree_root(model_dir: Path) -> Path:
    """The tree of ``model_dir`` (a real path): an HF snapshot's repository folder, else the directory."""
    real = Path(os.path.realpath(model_dir))
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        return real.parent.parent
    return real


def _inside(real: str, tree: str) -> bool:
    return real == tree or real.startswith(tree.rstrip(os.sep) + os.sep)


def _unreadable(path: Path, e: OSError, what: str = "model file") -> ModelError:
    verb = "list" if what == "model directory" else "read"
    fix = (f"make it readable (chmod -R a+rX {show_path(path)}) or remove it from the model directory"
           if isinstance(e, PermissionError) else "fix or remove it in the model directory")
    return ModelError(f"cannot {verb} {what} {show_path(path)}: {e.strerror or type(e).__name__}; {fix}.")


def _special(path: Path, mode: int) -> ModelError:
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    return ModelError(
        f"model file {show_path(path)} is {kind}, not a regular file; Kiln never opens one (reading a FIFO waits "
        "for a writer forever): remove it from the model directory."
    )


def _changed(path: Path) -> ModelError:
    return ModelError(f"model file {show_path(path)} changed while Kiln read the model directory; "
                      "run again once nothing is writing to it.")


def _list(path: Path, real_dir: str) -> list[str]:
    try:
        return sorted(os.listdir(real_dir))
    except OSError as e:
        raise _unreadable(path, e, "model directory") from None


def _follow(path: Path, real_dir: str, tree: str) -> tuple[os.stat_result, str]:
    """stat and real path of the entry ``path`` (its real parent is ``real_dir``), links followed.

    Every call is on real paths, and a link is resolved against its real parent, not the path
    it was reached by: the same answer, without resolving every link on the way again (deep
    trees of links stay linear, and never reach the kernel's limit of links in one path).
    ``path`` is for messages.
    """
    real = os.path.join(real_dir, path.name)
    try:
        lst = os.lstat(real)
    except OSError as e:
        raise _unreadable(path, e) from None
    if not stat.S_ISLNK(lst.st_mode):
        return lst, real
    try:
        real = os.path.realpath(os.path.join(real_dir, os.readlink(real)), strict=True)
    except FileNotFoundError:
        raise ModelError(
            f"{show_path(path)} is a dangling link (an interrupted download?); re-download the model, or remove it."
        ) from None
    except OSError as e:
        raise _unreadable(path, e) from None
    if not _inside(real, tree):
        raise ModelError(
            f"{show_path(path)} links to {show_path(real)}, outside the model's tree {show_path(tree)}; Kiln hashes "
            "only what is inside it: replace the link with a copy of its target (cp -rL), or pass a directory "
            "that holds the files."
        )
    try:
        return os.stat(real), real
    except OSError as e:
        raise _unreadable(path, e) from None


def _check_opens(path: Path, real: str, st: os.stat_result) -> None:
    """Open the regular file ``real`` as a build will (and close it): permissions are checked now."""
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except OSError as e:
        raise _unreadable(path, e) from None
    try:
        opened = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
        raise _changed(path)


def scan_tree(model_dir: Path) -> TreeListing:
    """List and check every file of ``model_dir`` a build can read (see the module docstring); no hashing."""
    tree = tree_root(model_dir)
    real_root = os.path.realpath(model_dir)
    try:
        top = os.stat(real_root)
    except OSError as e:
        raise _unreadable(Path(model_dir), e, "model directory") from None
    files: list[TreeFile] = []
    seen = 0
    # (path as reached, its real path, rel prefix, (dev, ino) of it and every directory above it)
    stack: list[tuple[Path, str, str, frozenset[tuple[int, int]]]] = [
        (Path(model_dir), real_root, "", frozenset({(top.st_dev, top.st_ino)}))
    ]
    while stack:
        dirpath, real_dir, prefix, above = stack.pop()
        subdirs = []
        for name in _list(dirpath, real_dir):
            seen += 1
            if seen > MAX_TREE_ENTRIES:
                raise ModelError(
                    f"model directory {show_path(model_dir)} has more than {MAX_TREE_ENTRIES} entries (counting each "
                    "path its links to directories make); remove links that multiply the tree, or pass the "
                    "directory that holds only the model."
                )
            rel = prefix + name
            if ignored(rel):
                continue
            path = dirpath / name
            st, real = _follow(path, real_dir, str(tree))
            if stat.S_ISDIR(st.st_mode):
                ident = (st.st_dev, st.st_ino)
                if _pruned(rel):
                    continue
                if ident in above:
                    raise ModelError(
                        f"{show_path(path)} links to {show_path(real)}, a directory that contains it (a cycle: the "
                        "tree would be infinite); remove the link."
                    )
                subdirs.append((path, real, rel + "/", above | {ident}))
            elif stat.S_ISREG(st.st_mode):
                _check_opens(path, real, st)
                files.append(TreeFile(rel, path, Path(real), st.st_size, (st.st_dev, st.st_ino)))
            else:
                raise _special(path, st.st_mode)
        stack.extend(reversed(subdirs))
    if not files:
        raise ModelError(f"model directory {show_path(model_dir)} holds no model files; is it the right directory?")
    return TreeListing(tree, tuple(files))
