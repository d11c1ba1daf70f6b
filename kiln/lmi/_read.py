"""Reading LMI configuration as DJL Serving does: serving.properties files and OPTION_* variables.

Both forms become the same intermediate: property name → :class:`Prop` (value and where it
was written). What the properties mean is :mod:`kiln.lmi._interpret`'s job.

A serving.properties file is a few lines; Kiln reads at most :data:`MAX_PROPERTIES_BYTES`
of it and only from a regular file, so a path to a device (``/dev/zero``), a FIFO or a
runaway file is one clear error, never a hang or an out-of-memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .._input import read_small_file, show_path
from ..errors import ConfigSourceError

__all__ = ["Prop", "parse_properties_text", "read_serving_properties", "properties_from_env", "MAX_PROPERTIES_BYTES"]

MAX_PROPERTIES_BYTES = 1 << 20  # 1 MiB: DJL's own files are well under 4 KiB


@dataclass(frozen=True)
class Prop:
    value: str
    source: str  # e.g. "OPTION_DTYPE" or "option.dtype (serving.properties:4)"


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def parse_properties_text(text: str, origin: str = "serving.properties") -> dict[str, Prop]:
    """java.util.Properties.load semantics (plus trailing-whitespace stripping)."""
    props: dict[str, Prop] = {}
    # Java's LineReader ends lines at \n, \r or \r\n only; str.splitlines() would also split at
    # \f, \v, \x1c-\x1e, \x85 and U+2028/9, reading two properties where LMI reads one.
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    i = 0
    while i < len(lines):
        lineno = i + 1
        line = lines[i].lstrip(" \t\f")
        i += 1
        if not line or line[0] in "#!":
            continue
        # Join continuation lines: an odd number of trailing backslashes continues.
        while _continues(line) and i < len(lines):
            line = line[:-1] + lines[i].lstrip(" \t\f")
            i += 1
        if _continues(line):
            line = line[:-1]
        key, value = _split_key_value(line)
        # Escapes (\\n, \\u000a) can put control characters in a key; messages quote the
        # source, so it is written printable.
        shown = key if key.isprintable() else repr(key)
        props[key] = Prop(value.rstrip(" \t\f"), f"{shown} ({origin}:{lineno})")
    return props


def _continues(line: str) -> bool:
    n = len(line) - len(line.rstrip("\\"))
    return n % 2 == 1


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2 : i + 6] or ""):
                out.append(chr(int(text[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _split_key_value(line: str) -> tuple[str, str]:
    i = 0
    while i < len(line):
        c = line[i]
        if c == "\\":
            i += 2
            continue
        if c in "=: \t\f":
            break
        i += 1
    key = line[:i]
    rest = line[i:].lstrip(" \t\f")
    if rest[:1] in ("=", ":") and (i >= len(line) or line[i] in " \t\f=:"):
        rest = rest[1:].lstrip(" \t\f")
    return _unescape(key), _unescape(rest)


def read_serving_properties(path: Path | str) -> dict[str, Prop]:
    """The properties of an LMI serving.properties file (a regular file of at most 1 MiB)."""
    p = Path(path)
    raw = read_small_file(p, MAX_PROPERTIES_BYTES, "serving.properties file", ConfigSourceError,
                          "pass the path of an LMI serving.properties file (a few lines of option.NAME=VALUE)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # what java.util.Properties.load(InputStream) assumes
    return parse_properties_text(text, show_path(p.name))


_SNAKE_CAPS = re.compile(r"[A-Z0-9_]+\Z")
# Fallback names the LMI container entrypoint or server also reads, → the property they feed.
_ENV_FALLBACKS = {
    "HF_MODEL_ID": "option.model_id",
    "HF_REVISION": "option.revision",
    "TENSOR_PARALLEL_DEGREE": "option.tensor_parallel_degree",
    "SM_NUM_GPUS": "option.tensor_parallel_degree",
    "MAX_BATCH_SIZE": "option.max_rolling_batch_size",
    "HF_MODEL_QUANTIZE": "option.quantize",
}
# Of those, the ones only the CUDA image's entrypoint translates (TGI-style names): the NeuronX
# image does not read them, so a target whose LmiFacts say so drops them.
GPU_ENV_FALLBACKS = ("SM_NUM_GPUS", "MAX_BATCH_SIZE", "HF_MODEL_QUANTIZE")
# The consumer's own process environment that a backend reads while compiling (the Neuron compiler and
# LMI NeuronX 0.31+ read NEURON_* variables): passed on as ``env:NAME`` properties, for the target to key
# or refuse (LmiFacts.environment_option); every other target reports them as ignored.
ENV_PASSTHROUGH_PREFIXES = ("NEURON_", "NEURONX_")
ENV_PREFIX = "env:"


def properties_from_env(env: Mapping[str, str]) -> dict[str, Prop]:
    """LMI properties from ``OPTION_*`` (and fallback) environment variables, as DJL maps them."""
    props: dict[str, Prop] = {}
    for name in sorted(env):
        value = env[name]
        if not name.startswith("OPTION_") or value is None or not str(value).strip():
            continue
        key = name[len("OPTION_"):]
        if _SNAKE_CAPS.match(key):
            key = key.lower()
        if key.lower() == "entrypoint":
            prop = "option.entryPoint"
        elif key.lower() == "engine":
            prop = "engine"
        else:
            prop = "option." + key
        props[prop] = Prop(str(value).strip(), name if name.isprintable() else repr(name))
    # Fallbacks only fill what OPTION_* left unset (DJL uses putIfAbsent / getenv fallbacks).
    for name, prop in _ENV_FALLBACKS.items():
        value = env.get(name)
        if value and value.strip() and prop not in props:
            props[prop] = Prop(value.strip(), name)
    for name in sorted(env):
        if name.startswith(ENV_PASSTHROUGH_PREFIXES) and env[name] is not None and name.isprintable():
            props[ENV_PREFIX + name] = Prop(str(env[name]), name)  # empty is a value here: the process sees it
    return props
