"""Parsing JSON that Kiln did not write itself: bounded in size and in nesting depth.

Index entries, manifests and build records come from remotes nobody here controls (and from
local files anything may have written). :func:`json.loads` has these traps for such data,
closed here once for every reader:

* nesting: ``[[[[…]]]]`` 100 000 deep raises :class:`RecursionError` (not ``ValueError``),
  which no ``except ValueError`` catches; a document that parses but nests deeper than any
  Kiln document does is refused as well, so no later recursive walk can overflow either;
* size: a 50 MB "entry" would be parsed whole; refuse it before parsing;
* non-JSON constants: ``NaN`` and ``Infinity`` are accepted by Python's parser, never written
  by Kiln, and break equality and canonical JSON;
* integers of thousands of digits raise ``ValueError`` (Python's digit limit): caught here.

Every failure is an :class:`~kiln.errors.UnsafeManifestError` saying what is wrong; callers
add which object it was.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import UnsafeManifestError

__all__ = ["MAX_DEPTH", "load_json", "json_depth"]

# Kiln's own documents nest at most ~6 levels (record → key_inputs → spec → quantization);
# 32 leaves room for any "extra" a build adds, and is far below the interpreter's limit.
MAX_DEPTH = 32


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed value (a scalar is 0), walked without recursion.

    Stops as soon as ``limit`` is exceeded, so a hostile document costs at most its size.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def load_json(data: bytes, what: str, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``data`` (a document named ``what`` in messages) within the bounds, or raise."""
    if len(data) > max_bytes:
        raise UnsafeManifestError(f"{what} of {len(data)} bytes exceeds {max_bytes} bytes")
    if not data.strip():
        raise UnsafeManifestError(f"{what} is empty, not JSON")
    try:
        value = json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise UnsafeManifestError(f"{what} is JSON nested too deeply (more than {max_depth} levels)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, huge integers, NaN
        raise UnsafeManifestError(f"{what} is not JSON ({str(e)[:200]})") from None
    if json_depth(value, max_depth) > max_depth:
        raise UnsafeManifestError(f"{what} is JSON nested too deeply (more than {max_depth} levels)")
    return value
