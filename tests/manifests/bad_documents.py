"""Index entry documents of every wrong shape, made from a good one: shared by the local-store
tests here and the remote tests (tests/remote/test_bad_remote_json.py)."""

from __future__ import annotations

import copy
import json
from typing import Callable

HUGE = 50 * 1024 * 1024  # "a 50 MB entry"


def _edit(change: Callable[[dict], object]) -> Callable[[dict], bytes]:
    def make(good: dict) -> bytes:
        doc = copy.deepcopy(good)
        out = change(doc)
        return json.dumps(doc if out is None else out).encode()
    return make


BAD_ENTRY_DOCUMENTS: dict[str, Callable[[dict], bytes]] = {
    "list": _edit(lambda d: [d]),
    "string": lambda good: b'"index entry"',
    "null": lambda good: b"null",
    "number": lambda good: b"17",
    "empty-spec": _edit(lambda d: d.update(spec={})),
    "spec-list": _edit(lambda d: d.update(spec=[d["spec"]])),
    "missing-manifest": _edit(lambda d: d.pop("manifest") and None),
    "missing-spec-field": _edit(lambda d: d["spec"].pop("tp_degree") and None),
    "wrong-types": _edit(lambda d: (d["spec"].update(n_positions="abc"), d.update(size="100")) and None),
    "toolchain-list": _edit(lambda d: d.update(toolchain=sorted(d["toolchain"]))),
    "model-string": _edit(lambda d: d.update(model=d["model"]["tree_digest"])),
    "key-not-hex": _edit(lambda d: d.update(key=d["key"].upper())),
    "key-escapes": _edit(lambda d: d.update(key="../../../escaped")),
    "deep-nesting": lambda good: b"[" * 100_000 + b"]" * 100_000,
    "deep-in-spec": lambda good: json.dumps(dict(good, spec="X")).encode().replace(
        b'"X"', b'{"options": ' * 100_000 + b"{}" + b"}" * 100_000),
    "huge": _edit(lambda d: d["model"].update(ref="x" * HUGE)),
    "empty": lambda good: b"",
    "binary": lambda good: bytes(range(256)) * 4,
    "nan": _edit(lambda d: d.update(size=float("nan"))),
    "newer-schema": _edit(lambda d: d.update(schema=2)),
}
