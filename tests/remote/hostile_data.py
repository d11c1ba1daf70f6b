"""Seeded generator of hostile remote contents for tests/remote/test_hostile_random.py.

A case starts from a remote holding good artifacts (their objects in a :class:`Layout`) and
applies a few :class:`Mutation`s, each a list of operations on the remote's objects: replaced
or added index entries, manifests and build records (wrong JSON types at every level, missing
and extra fields, 10^5-deep nesting, huge numbers and strings, sizes and digests that lie,
escaping paths, NULs, entries under the wrong key, ``spec: {}``, specs that disagree with the
record), blobs whose bytes lie, and on a filesystem remote links (to /dev/zero, outside the
remote, to directories, dangling), FIFOs and directories where objects belong.

Nothing here touches a remote: the test applies the operations. Every mutation says which
pristine objects it touched (an artifact none of whose objects was touched must stay fully
usable) and which artifacts it must make refused (serving them would be a wrong hit or
unverified data). The same seed gives the same case.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable

DEEP = 100_000  # nesting levels of the deep documents


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_key(digest: str) -> str:
    return f"blobs/sha256/{digest.split(':', 1)[1]}"


# --------------------------------------------------------------------------- what a remote holds


@dataclass(frozen=True)
class Artifact:
    name: str  # "A", "B"
    key: str
    entry_key: str
    manifest_key: str
    record_key: str
    file_keys: tuple[str, ...]
    files: dict[str, bytes]  # relative path -> bytes, as materialised in DEST

    def object_keys(self) -> set[str]:
        return {self.entry_key, self.manifest_key, self.record_key, *self.file_keys}


@dataclass(frozen=True)
class Layout:
    model_hex: str
    artifacts: tuple[Artifact, ...]
    objects: dict[str, bytes]  # every pristine object: key -> bytes

    def doc(self, key: str) -> Any:
        return json.loads(self.objects[key])


# --------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Put:
    key: str
    data: bytes


@dataclass(frozen=True)
class Remove:
    key: str


@dataclass(frozen=True)
class Fifo:  # filesystem remotes only
    key: str


@dataclass(frozen=True)
class MkDir:  # a directory where an object belongs (filesystem remotes only)
    key: str


@dataclass(frozen=True)
class Link:
    """A symlink at ``key``; ``target``: an absolute path (/dev/zero), ``@outside/<name>``
    (a file or directory the test creates outside the remote) or ``@dangling``."""

    key: str
    target: str


@dataclass(frozen=True)
class Outside:
    """A file (``data``) or directory (``data is None``) outside the remote, for links to point at."""

    name: str
    data: bytes | None


Op = Put | Remove | Fifo | MkDir | Link | Outside


@dataclass
class Mutation:
    label: str
    ops: list[Op]
    touches: set[str] = field(default_factory=set)  # pristine object keys changed
    refuse: set[str] = field(default_factory=set)  # artifact names that must never be served after it
    breaks_listing: bool = False  # a non-regular object under index/: listing readers may fail (exit 2)


# --------------------------------------------------------------------------- hostile JSON values


_FIXED_VALUES: list[tuple[str, str]] = [  # (label, JSON text) of values of every wrong kind
    ("null", "null"), ("true", "true"), ("0", "0"), ("-1", "-1"), ("1.5", "1.5"),
    ("1e309", "1e309"), ("-1e309", "-1e309"), ("NaN", "NaN"), ("Infinity", "Infinity"),
    ("2**64", str(2**64)), ("-2**63-1", str(-(2**63) - 1)), ("5000 digits", "1" * 5000),
    ("1e-400", "1e-400"), ('""', '""'), ("NUL string", '"a\\u0000b"'), ("lone surrogate", '"\\ud800"'),
    ("control chars", '"\\n\\r\\t\\u001b[2J"'), ("bidi", '"\\u202eevil"'), ("../ path", '"../../../../etc/passwd"'),
    ("absolute path", '"/etc/passwd"'), ("5000-char string", json.dumps("x" * 5000)),
    ("300 KB string", json.dumps("y" * 300_000)), ("2 MB string", json.dumps("z" * (2 << 20))),
    ("bad digest", '"sha256:ABC"'), ("[]", "[]"), ("{}", "{}"), ("[1,2,3]", "[1,2,3]"),
    ('{"a":1}', '{"a": 1}'), ("deep list", "[" * DEEP + "]" * DEEP),
    ("deep object", '{"a":' * DEEP + "1" + "}" * DEEP), ("500-deep list", "[" * 500 + "]" * 500),
    ("100k-element list", "[" + ",".join(["0"] * 100_000) + "]"),
    ("10k-key object", "{" + ",".join(f'"k{i}":0' for i in range(10_000)) + "}"),
]


def _raw_values(rng: random.Random, layout: Layout) -> list[tuple[str, str]]:
    """The fixed hostile values and digests that lie about this remote's objects."""
    some_blob = rng.choice(sorted(k for k in layout.objects if k.startswith("blobs/")))
    return _FIXED_VALUES + [
        ("lying digest", json.dumps("sha256:" + some_blob.rsplit("/", 1)[1])),
        ("absent digest", json.dumps("sha256:" + "%064x" % rng.getrandbits(256))),
    ]


_HOLE = "\x00@@HOSTILE@@\x00"


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(prefix + (k,))
            out.extend(_paths(v, prefix + (k,)))
    elif isinstance(node, list):
        for i, v in enumerate(node[:3]):
            out.append(prefix + (i,))
            out.extend(_paths(v, prefix + (i,)))
    return out


def _show_path(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def field_edit(rng: random.Random, doc: Any, layout: Layout) -> tuple[str, bytes]:
    """One random field of ``doc`` replaced, deleted, wrapped or joined by an extra field."""
    doc = copy.deepcopy(doc)
    path = rng.choice(_paths(doc))
    *parents, last = path
    parent = doc
    for p in parents:
        parent = parent[p]
    label, raw = rng.choice(_raw_values(rng, layout))
    op = rng.choice(["replace", "replace", "replace", "delete", "extra", "wrap"])
    if op == "delete":
        del parent[last]
        text = json.dumps(doc)
    elif op == "wrap":
        parent[last] = rng.choice([[parent[last]], {"value": parent[last]}])
        text = json.dumps(doc)
    elif op == "extra" and isinstance(parent, dict):
        parent["x_" + rng.choice(["extra", "v2", "Key", ""])] = _HOLE
        text = json.dumps(doc).replace(json.dumps(_HOLE), raw)
    else:
        op = "replace"
        parent[last] = _HOLE
        text = json.dumps(doc, indent=rng.choice([None, 1])).replace(json.dumps(_HOLE), raw)
    what = {"replace": f":= {label}", "delete": "deleted", "wrap": "wrapped", "extra": f"+ extra field {label}"}[op]
    return f"{_show_path(path)} {what}", text.encode()


SAME = " (same document)"  # label suffix: the bytes differ, what a JSON reader gets does not (within size caps)


def whole_doc(rng: random.Random, good: bytes) -> tuple[str, bytes]:
    """A document of the wrong kind altogether, made from a good one (or, labelled SAME, the
    same document in another encoding or layout: refusing it is allowed, not required)."""
    doc = json.loads(good)
    other = "%064x" % rng.getrandbits(256)
    choices: list[tuple[str, Callable[[], bytes]]] = [
        ("empty", lambda: b""), ("null", lambda: b"null"), ("list of it", lambda: json.dumps([doc]).encode()),
        ("string", lambda: b'"entry"'), ("number", lambda: b"17"), ("5000-digit number", lambda: b"9" * 5000),
        ("NaN", lambda: b"NaN"), ("deep list", lambda: b"[" * DEEP + b"]" * DEEP),
        ("deep object", lambda: b'{"a":' * DEEP + b"1" + b"}" * DEEP), ("binary", lambda: bytes(range(256)) * 8),
        ("truncated", lambda: good[: len(good) // 2]), (f"BOM + JSON{SAME}", lambda: b"\xef\xbb\xbf" + good),
        (f"UTF-16{SAME}", lambda: good.decode().encode("utf-16")), ("trailing garbage", lambda: good + b" }{"),
        (f"duplicate key field, the good one last{SAME}", lambda: b'{"key": "' + other.encode() + b'", ' + good.lstrip()[1:]),
        (f"2 MB of padding{SAME}", lambda: good[:-1] + b" " * (2 << 20) + good[-1:]),
        ("invalid UTF-8", lambda: good.replace(b'"', b'"\xff', 1)),
    ]
    label, make = rng.choice(choices)
    return label, make()


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, indent=1, sort_keys=True).encode()


# --------------------------------------------------------------------------- the mutation families


class _Gen:
    """One case's generator: ``rng`` decides everything; ``kind`` is "file" or "s3"."""

    def __init__(self, rng: random.Random, layout: Layout, kind: str, target: Artifact) -> None:
        self.rng, self.layout, self.kind = rng, layout, kind
        self.target = target  # the artifact mutations prefer (the one the case queries)
        self.n_outside = 0

    # helpers ---------------------------------------------------------------

    def art(self) -> Artifact:
        return self.target if self.rng.random() < 0.7 else self.rng.choice(self.layout.artifacts)

    def other(self, a: Artifact) -> Artifact:
        return next(x for x in self.layout.artifacts if x is not a)

    def hexkey(self) -> str:
        return "%064x" % self.rng.getrandbits(256)

    def new_entry_key(self) -> str:
        return f"index/{self.layout.model_hex}/{self.hexkey()}.json"

    def outside(self, data: bytes | None) -> tuple[Outside, str]:
        self.n_outside += 1
        name = f"out{self.n_outside}" + ("-dir" if data is None else ".bin")
        return Outside(name, data), f"@outside/{name}"

    def entry(self, a: Artifact) -> dict:
        return self.layout.doc(a.entry_key)

    def place_entry(self, a: Artifact, data: bytes, label: str, refuse: bool = True) -> Mutation:
        """Put an entry document in place of ``a``'s (touching it) or beside it at a new key."""
        if self.rng.random() < 0.7:
            return Mutation(f"entry {a.name}: {label}", [Put(a.entry_key, data)], {a.entry_key},
                            {a.name} if refuse else set())
        k = self.new_entry_key()
        return Mutation(f"new entry {k[-17:]}: {label} (from {a.name})", [Put(k, data)])

    def point_entry(self, a: Artifact, manifest: bytes, label: str, refuse: bool = True,
                    extra: list[Op] | None = None) -> Mutation:
        """A new manifest blob (at its true digest) and ``a``'s entry pointing at it."""
        entry = self.entry(a)
        entry["manifest"] = sha(manifest)
        ops: list[Op] = [*(extra or []), Put(blob_key(sha(manifest)), manifest), Put(a.entry_key, dumps(entry))]
        return Mutation(f"manifest of {a.name}: {label}", ops, {a.entry_key}, {a.name} if refuse else set())

    # families ------------------------------------------------------------------

    def entry_field(self) -> Mutation:
        a = self.art()
        label, data = field_edit(self.rng, self.entry(a), self.layout)
        return self.place_entry(a, data, label, refuse=False)  # some edits are harmless (model.ref)

    def entry_doc(self) -> Mutation:
        a = self.art()
        label, data = whole_doc(self.rng, self.layout.objects[a.entry_key])
        return self.place_entry(a, data, label, refuse=SAME not in label)

    def entry_lie(self) -> Mutation:
        a, rng = self.art(), self.rng
        b = self.other(a)
        e = self.entry(a)
        other = self.hexkey()
        lies: list[tuple[str, Callable[[dict], Any]]] = [
            ("spec {}", lambda d: d.update(spec={})),
            ("spec.batch_size 4 (record: other)", lambda d: d["spec"].update(batch_size=4)),
            ("spec.tp_degree 2", lambda d: d["spec"].update(tp_degree=2)),
            ("spec.dtype bf16", lambda d: d["spec"].update(dtype="bf16")),
            ("spec.n_positions 4096", lambda d: d["spec"].update(n_positions=4096)),
            ("spec.target trtllm", lambda d: d["spec"].update(target="trtllm")),
            ("spec.options added", lambda d: d["spec"].update(options={"gqa_strategy": "replicate"})),
            ("spec of the other artifact", lambda d: d.update(spec=self.entry(b)["spec"])),
            ("key of the other artifact", lambda d: d.update(key=b.key)),
            ("manifest of the other artifact", lambda d: d.update(manifest=self.entry(b)["manifest"])),
            ("manifest -> its build record", lambda d: d.update(manifest="sha256:" + a.record_key.rsplit("/", 1)[1])),
            ("manifest -> a file blob", lambda d: d.update(manifest="sha256:" + a.file_keys[0].rsplit("/", 1)[1])),
            ("manifest -> absent blob", lambda d: d.update(manifest="sha256:" + other)),
            ("size lies (10**12)", lambda d: d.update(size=10**12)),
            ("size lies (0)", lambda d: d.update(size=0)),
            ("files lies", lambda d: d.update(files=d["files"] + 5)),
            ("toolchain differs", lambda d: d["toolchain"].update(torch="9.9.9")),
            ("model digest differs", lambda d: d["model"].update(tree_digest="sha256:" + other)),
        ]
        label, lie = rng.choice(lies)
        lie(e)
        if rng.random() < 0.25:  # a wholly new entry, stored where its own content says
            e["key"] = other
            k = f"index/{self.layout.model_hex}/{other}.json"
            return Mutation(f"new entry {k[-17:]} (copy of {a.name}, own key): {label}", [Put(k, dumps(e))])
        return Mutation(f"entry {a.name}: {label}", [Put(a.entry_key, dumps(e))], {a.entry_key}, {a.name})

    def misplaced_entry(self) -> Mutation:
        a, rng = self.art(), self.rng
        b = self.other(a)
        good = self.layout.objects[a.entry_key]
        where = rng.choice(["other's place", "new key", "other model", "nested dir", "not .json", "hidden name"])
        if where == "other's place":  # B's entry stored under A's key
            return Mutation(f"entry {b.name} stored at {a.name}'s key", [Put(a.entry_key, self.layout.objects[b.entry_key])],
                            {a.entry_key}, {a.name})
        key = {
            "new key": self.new_entry_key(),
            "other model": f"index/{self.hexkey()}/{a.key}.json",
            "nested dir": f"index/{self.layout.model_hex}/sub/{a.key}.json",
            "not .json": f"index/{self.layout.model_hex}/{self.hexkey()}.txt",
            "hidden name": f"index/{self.layout.model_hex}/.{a.key}.json",
        }[where]
        return Mutation(f"entry {a.name} copied to {where} ({key[6:24]}…)", [Put(key, good)])

    def manifest_edit(self) -> Mutation:
        a, rng = self.art(), self.rng
        whole = rng.random() < 0.4
        label, data = (whole_doc(rng, self.layout.objects[a.manifest_key]) if whole
                       else field_edit(rng, self.layout.doc(a.manifest_key), self.layout))
        if rng.random() < 0.3:  # in place: the manifest's digest now lies
            return Mutation(f"manifest of {a.name} rewritten in place: {label}", [Put(a.manifest_key, data)],
                            {a.manifest_key}, {a.name})  # its digest lies, whatever it holds
        return self.point_entry(a, data, label, refuse=whole and SAME not in label)  # a field edit may be harmless

    def manifest_lie(self) -> Mutation:
        a, rng = self.art(), self.rng
        b = self.other(a)
        m = self.layout.doc(a.manifest_key)
        layer = m["layers"][-1]
        title = "org.opencontainers.image.title"
        b_layer = self.layout.doc(b.manifest_key)["layers"][-1]
        extra: list[Op] = []
        lies: list[tuple[str, Callable[[], Any]]] = [
            ("path ../escape", lambda: layer["annotations"].update({title: "../sentinel/escape.bin"})),
            ("path ../../../ deep", lambda: layer["annotations"].update({title: "a/../../../../tmp/escape.bin"})),
            ("absolute path", lambda: layer["annotations"].update({title: "/tmp/kiln-hostile-escape.bin"})),
            ("NUL in path", lambda: layer["annotations"].update({title: "engine\x00.bin"})),
            ("backslash path", lambda: layer["annotations"].update({title: "..\\escape.bin"})),
            ("duplicate path", lambda: m["layers"].append(copy.deepcopy(layer))),
            ("file-vs-dir clash", lambda: m["layers"].append(dict(copy.deepcopy(layer), annotations={
                title: layer["annotations"][title] + "/inner"}))),
            ("4000-char path", lambda: layer["annotations"].update({title: "d/" * 2000 + "f"})),
            ("size larger than the blob", lambda: layer.update(size=layer["size"] + 1)),
            ("size smaller than the blob", lambda: layer.update(size=max(layer["size"] - 1, 0))),
            ("size 2**62", lambda: layer.update(size=2**62)),
            ("size -1", lambda: layer.update(size=-1)),
            ("size 1.0e3", lambda: layer.update(size=float(layer["size"]))),
            ("size as string", lambda: layer.update(size=str(layer["size"]))),
            ("digest -> other artifact's blob, its size", lambda: layer.update(digest=b_layer["digest"], size=b_layer["size"])),
            ("digest -> absent blob", lambda: layer.update(digest="sha256:" + self.hexkey())),
            ("digest uppercase", lambda: layer.update(digest=layer["digest"].upper())),
            ("config -> a file blob", lambda: m["config"].update(digest=layer["digest"], size=layer["size"])),
            ("config size lies", lambda: m["config"].update(size=m["config"]["size"] + 7)),
            ("config -> absent", lambda: m["config"].update(digest="sha256:" + self.hexkey())),
            ("artifactType v2 (a newer Kiln)", lambda: m.update(artifactType="application/vnd.kiln.artifact.v2")),
            ("mediaType wrong", lambda: m.update(mediaType="application/vnd.docker.distribution.manifest.v2+json")),
            ("schemaVersion 3", lambda: m.update(schemaVersion=3)),
            ("dev.kiln.key missing", lambda: m["annotations"].pop("dev.kiln.key")),
            ("dev.kiln.key other", lambda: m["annotations"].update({"dev.kiln.key": b.key})),
            ("no layers", lambda: m.update(layers=[])),
            ("layers an object", lambda: m.update(layers={"0": layer})),
            ("100 001 layers", lambda: m.update(layers=[layer] * 100_001)),
        ]
        if self.kind == "file":
            lies += [("size 0, blob -> /dev/zero", lambda: self._zero_blob(layer, extra, Link, "/dev/zero")),
                     ("size 0, blob is a FIFO", lambda: self._zero_blob(layer, extra, Fifo, None))]
        else:
            lies += [("size 0, blob holds 10 MB", lambda: self._zero_blob(layer, extra, Put, b"\0" * (10 << 20)))]
        label, lie = rng.choice(lies)
        lie()
        refuse = not label.startswith("digest -> other artifact")  # a consistent forgery: undetectable
        return self.point_entry(a, json.dumps(m).encode(), label, refuse=refuse, extra=extra)

    def zero_blob(self) -> Mutation:
        """A consistent manifest whose engine file declares 0 bytes, and an object there that is
        endless (/dev/zero), never ends (a FIFO) or is much larger: a download must stop at the
        declared size (+1 byte) and fail, and nothing may block on it."""
        a = self.art()
        m = self.layout.doc(a.manifest_key)
        layer, extra = m["layers"][-1], []  # type: ignore[var-annotated]
        choices = ([("/dev/zero", Link, "/dev/zero"), ("a FIFO", Fifo, None)] if self.kind == "file"
                   else [("10 MB", Put, b"\0" * (10 << 20))])
        label, op, arg = self.rng.choice(choices)
        self._zero_blob(layer, extra, op, arg)
        return self.point_entry(a, json.dumps(m).encode(), f"engine file declared 0 bytes, its blob is {label}", extra=extra)

    def _zero_blob(self, layer: dict, extra: list, op: type, arg: Any) -> None:
        """The layer declares 0 bytes of an object that is endless or much larger."""
        digest = sha(b"")
        layer.update(digest=digest, size=0)
        k = blob_key(digest)
        extra.append(op(k) if arg is None else op(k, arg))

    def record_edit(self) -> Mutation:
        a, rng = self.art(), self.rng
        rec = self.layout.doc(a.record_key)
        lies: list[tuple[str, Callable[[dict], Any]]] = [
            ("spec.batch_size 4", lambda r: r["spec"].update(batch_size=4)),
            ("key_inputs.spec forged", lambda r: r["key_inputs"]["spec"].update(batch_size=8)),
            ("key other", lambda r: r.update(key=self.hexkey())),
            ("provenance missing", lambda r: r.pop("provenance")),
            ("key_inputs.model other", lambda r: r["key_inputs"]["model"].update(tree_digest="sha256:" + self.hexkey())),
        ]
        pick = rng.random()
        if pick < 0.4:  # some field edits are harmless (provenance.host): not necessarily refused
            label, data = field_edit(rng, rec, self.layout)
        elif pick < 0.7:
            label, data = whole_doc(rng, self.layout.objects[a.record_key])
        else:
            label, lie = rng.choice(lies)
            lie(rec)
            data = dumps(rec)
        m = self.layout.doc(a.manifest_key)
        size = len(data)
        if rng.random() < 0.2:
            size, label = rng.choice([size + 1, 0, 10**12]), label + ", config size lies"
        m["config"].update(digest=sha(data), size=size)
        mut = self.point_entry(a, json.dumps(m).encode(), "", extra=[Put(blob_key(sha(data)), data)])
        mut.label = f"build record of {a.name}: {label}"
        mut.refuse = {a.name} if (pick >= 0.4 and SAME not in label) or "config size lies" in label else set()
        return mut

    def blob_lie(self) -> Mutation:
        a, rng = self.art(), self.rng
        k = rng.choice(a.file_keys)
        good = self.layout.objects[k]
        label, data = rng.choice([
            ("same size, wrong bytes", bytes(b ^ 0x55 for b in good)), ("one byte longer", good + b"!"),
            ("truncated", good[:-1]), ("empty", b""), ("20x larger", good * 20),
        ])
        users = {x.name for x in self.layout.artifacts if k in x.file_keys}
        return Mutation(f"blob {k[-8:]} of {'+'.join(sorted(users))}: {label}", [Put(k, data)], {k}, users)

    def blob_gone(self) -> Mutation:
        a = self.art()
        k = self.rng.choice([a.manifest_key, a.record_key, *a.file_keys])
        users = {x.name for x in self.layout.artifacts if k in x.object_keys()}
        return Mutation(f"object {k[-8:]} of {'+'.join(sorted(users))} deleted", [Remove(k)], {k}, users)

    def foreign_artifact(self) -> Mutation:
        """A newer Kiln's artifact beside ours: an entry this Kiln reads, a manifest it cannot.
        gc must keep its blob (it cannot know the blob is dead)."""
        a, rng = self.art(), self.rng
        blob = rng.randbytes(300)
        m = self.layout.doc(a.manifest_key)
        m["artifactType"] = "application/vnd.kiln.artifact.v2"
        m["layers"] = [dict(m["layers"][0], digest=sha(blob), size=len(blob))] + (
            [dict(m["layers"][0])] * 100_001 if rng.random() < 0.1 else [])  # more layers than allowed
        mbytes = json.dumps(m).encode()
        e = self.entry(a)
        e.update(key=self.hexkey(), manifest=sha(mbytes))
        k = f"index/{self.layout.model_hex}/{e['key']}.json"
        return Mutation(f"foreign (v2) artifact {k[-17:]} with its own blob", [
            Put(blob_key(sha(blob)), blob), Put(blob_key(sha(mbytes)), mbytes), Put(k, dumps(e))])

    def huge(self) -> Mutation:
        a, rng = self.art(), self.rng
        what = rng.choice(["entry", "manifest", "record"])
        if what == "entry":
            good = self.layout.objects[a.entry_key]
            return self.place_entry(a, good[:-1] + b" " * (3 << 20) + good[-1:], "3 MB entry")
        pad = {"x": "p" * (17 << 20)}
        if what == "manifest":
            m = dict(self.layout.doc(a.manifest_key), **pad)
            return self.point_entry(a, json.dumps(m).encode(), "17 MB manifest")
        rec = dict(self.layout.doc(a.record_key), **pad)
        data = json.dumps(rec).encode()
        m = self.layout.doc(a.manifest_key)
        m["config"].update(digest=sha(data), size=len(data))
        mut = self.point_entry(a, json.dumps(m).encode(), "", extra=[Put(blob_key(sha(data)), data)])
        mut.label = f"build record of {a.name}: 17 MB"
        return mut

    def s3_key_oddity(self) -> Mutation:
        a = self.art()
        good = self.layout.objects[a.entry_key]
        h = self.layout.model_hex
        label, key, data = self.rng.choice([
            ("'..' in the key", f"index/{h}/../../{a.key}.json", good),
            ("empty segment", f"index//{a.key}.json", good),
            ("directory marker", f"index/{h}/{a.key}.json/", b""),
            ("object where a prefix is", f"index/{h}", good),
            ("1000-char key", f"index/{h}/{'k' * 900}.json", good),
            ("key with spaces and unicode", f"index/{h}/ \u202e{a.key}.json", good),
        ])
        return Mutation(f"S3 key oddity: {label}", [Put(key, data)])

    def special(self) -> Mutation:
        """A link, FIFO or directory where an object of the remote belongs (filesystem remotes)."""
        a, rng = self.art(), self.rng
        where = rng.choice(["entry", "new entry", "manifest", "record", "blob", "blob", "model dir"])
        if where == "model dir":  # index/<other model> is a link to a directory outside the remote
            out, target = self.outside(None)
            k = f"index/{self.hexkey()}"
            inner = Outside(f"{out.name}/{a.key}.json", self.layout.objects[a.entry_key])
            return Mutation(f"{k[:18]}… -> outside directory holding entry {a.name}", [out, inner, Link(k, target)])
        key = {"entry": a.entry_key, "new entry": self.new_entry_key(), "manifest": a.manifest_key,
               "record": a.record_key, "blob": rng.choice(a.file_keys)}[where]
        good = self.layout.objects.get(key, self.layout.objects[a.entry_key])
        kind = rng.choice(["fifo", "dir", "/dev/zero", "outside copy", "outside wrong", "outside dir", "dangling", "dir link"])
        ops: list[Op] = [Remove(key)] if key in self.layout.objects else []
        if kind == "fifo":
            ops.append(Fifo(key))
        elif kind == "dir":
            ops.append(MkDir(key))
        elif kind == "/dev/zero":
            ops.append(Link(key, "/dev/zero"))
        elif kind == "dangling":
            ops.append(Link(key, "@dangling"))
        elif kind == "dir link":
            ops.append(Link(key, "@remote/blobs"))
        else:
            data = {"outside copy": good, "outside wrong": bytes(len(good)), "outside dir": None}[kind]
            out, target = self.outside(data)
            ops += [out, Link(key, target)]
        users = {x.name for x in self.layout.artifacts if key in x.object_keys()}
        harmless = kind == "outside copy"  # the right bytes through a link: serving them is no lie
        return Mutation(f"{where} {key[-17:]} of {'+'.join(sorted(users)) or '-'} is {kind}", ops,
                        {key} & set(self.layout.objects), set() if harmless else users,
                        breaks_listing=key.startswith("index/"))


FAMILIES: dict[str, float] = {  # family -> weight
    "entry_field": 3, "entry_doc": 2, "entry_lie": 3, "misplaced_entry": 1.5, "manifest_edit": 2,
    "manifest_lie": 3, "record_edit": 2.5, "blob_lie": 1.5, "blob_gone": 0.5, "foreign_artifact": 1,
    "huge": 0.3, "zero_blob": 1,
}
FILE_ONLY = {"special": 4.0}
S3_ONLY = {"s3_key_oddity": 1.0}


def generate_case(seed: str, layout: Layout, kind: str) -> tuple[Artifact | None, list[Mutation]]:
    """(the artifact the case queries, or None for a miss; the case's mutations)."""
    rng = random.Random(seed)
    query = rng.choice([*layout.artifacts, *layout.artifacts, None])
    gen = _Gen(rng, layout, kind, query or rng.choice(layout.artifacts))
    weights = dict(FAMILIES, **(FILE_ONLY if kind == "file" else S3_ONLY))
    names = sorted(weights)
    muts: list[Mutation] = []
    written: set[str] = set()
    for _ in range(rng.randint(1, 4)):
        for _attempt in range(20):  # no two mutations write one object: each one's claims stay true
            m = getattr(gen, rng.choices(names, [weights[n] for n in names])[0])()
            keys = {op.key for op in m.ops if not isinstance(op, Outside)}
            if not keys & written:
                muts.append(m)
                written |= keys
                break
    return query, muts
