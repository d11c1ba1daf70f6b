"""Model refs: is it a local directory or a Hub id, and what to say when a directory is missing.

A ref that looks like a path (starts with ``/``, ``.`` or ``~``; holds a backslash; has more
than one ``/`` before any ``@revision``; or its first component is an existing directory here)
is a local directory (unless the Hugging Face cache holds a repository of that name), so a
typo in it gets "no such directory … did you mean …?" instead of advice about the Hub. Anything else of the form ``org/name[@revision]`` is a Hub id.
``s3://bucket/prefix/`` is an S3 model URI (:mod:`kiln.models._s3model`); other URLs are refused.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from .._input import show, show_path
from ..errors import ModelNotFoundError, SpecError
from ._hub import hf_cache_dir

__all__ = ["parse_model_ref", "missing_directory_error"]

_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?)(@(?P<rev>[\w.\-/]+))?\Z")
_MAX_REF = 4096  # PATH_MAX: no model directory or Hub id is longer
_LISTED = 2000  # directory entries compared for a "did you mean" (a huge directory is not scanned)


def _looks_local(text: str) -> bool:
    if text.startswith(("/", ".", "~")) or "\\" in text:
        return True
    repo = text.split("@", 1)[0]
    if repo.count("/") > 1:  # a Hub id is org/name: more separators are a path
        return True
    first = repo.split("/", 1)[0]
    if "/" not in repo or not os.path.isdir(first):
        return False
    # models/llam where ./models exists: a path, unless the Hub cache holds that very repo.
    return not os.path.isdir(os.path.join(hf_cache_dir(), "models--" + repo.replace("/", "--")))


def parse_model_ref(ref: str) -> tuple[str, str | None, str | None]:
    """Classify a ref: ("local", path, None), ("hub", repo_id, revision) or ("s3", uri, None)."""
    if not isinstance(ref, str):
        raise SpecError(f"model ref {show(ref)} must be a string: a Hub id (org/name[@revision]) or a local directory.")
    text = ref.strip()
    if not text:
        raise SpecError("the model ref is empty; pass a Hub id (org/name[@revision]) or a local directory.")
    if not text.isprintable() or len(text) > _MAX_REF:
        raise SpecError(
            f"model {show(text)} is not a model ref: it holds control characters or is longer than {_MAX_REF} "
            "characters; pass a Hub id (org/name[@revision]) or a local directory."
        )
    if text.startswith("s3://"):
        from ._s3model import parse_s3_uri

        parse_s3_uri(text)  # a bucket, no query: refused here, before any S3 call
        return "s3", text, None
    if text.startswith(("gs://", "http://", "https://")):
        raise SpecError(
            f"model {show(text)}: Kiln resolves Hub ids, s3:// model URIs and local directories; download the "
            "model to a local directory first and pass that directory."
        )
    expanded = os.path.expanduser(text)
    if os.path.isdir(expanded) or _looks_local(text):
        return "local", expanded, None
    m = _HUB_ID.match(text)
    if not m:
        raise SpecError(
            f"model {show(text)} is neither an existing directory nor a Hub id of the form "
            "org/name[@revision]; check the spelling, or write a directory as ./NAME."
        )
    return "hub", m.group("repo"), m.group("rev")


def missing_directory_error(written: str) -> ModelNotFoundError:
    """"no such directory: X (did you mean Y?)" for a local ref that names no directory."""
    path = Path(os.path.expanduser(written))
    shown = show_path(written)
    if path.exists():
        kind = "a GGUF file" if path.suffix == ".gguf" else "a file"
        return ModelNotFoundError(
            f"model path {shown} is {kind}, not a directory; pass the directory that holds it "
            f"(with config.json and the tokenizer): {show_path(path.parent)}."
        )
    if "\\" in written:
        return ModelNotFoundError(
            f"no such directory: {shown} (paths are written with /, not \\); pass an existing model directory, "
            "or a Hub id (org/name[@revision])."
        )
    parts = written.rstrip("/").split("/")
    # The first component (in the user's spelling) that names nothing on disk.
    for i in range(len(parts)):
        prefix = "/".join(parts[: i + 1]) or "/"
        if not os.path.lexists(os.path.expanduser(prefix)):
            break
    else:  # every component is there: the last one is a dangling link
        i = len(parts) - 1
    parent = "/".join(parts[:i]) or ("/" if written.startswith("/") else ".")
    missing = parts[i]
    hint = ""
    names: list[str] = []
    try:
        with os.scandir(os.path.expanduser(parent)) as it:
            for n, entry in enumerate(it):
                if n >= _LISTED:
                    break
                if entry.is_dir():
                    names.append(entry.name)
    except OSError:
        pass
    close = difflib.get_close_matches(missing, names, n=1, cutoff=0.6)
    if close:
        guess = "/".join([*parts[:i], close[0], *parts[i + 1:]])
        if not os.path.isdir(os.path.expanduser(guess)):  # the rest is wrong too: point at what exists
            guess = "/".join([*parts[:i], close[0]])
        hint = f" (did you mean {show_path(guess)}?)"
    elif i < len(parts) - 1:
        hint = f" ({show_path('/'.join(parts[: i + 1]))} does not exist)"
    return ModelNotFoundError(
        f"no such directory: {shown}{hint}; pass an existing model directory, or a Hub id (org/name[@revision])."
    )
