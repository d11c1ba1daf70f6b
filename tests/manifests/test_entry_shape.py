"""Index entry documents of the wrong shape are refused by the parser, with a message naming
the field, and an entry the parser accepts never crashes a caller that indexes into it.

Before the validation layer, ``IndexEntry.from_json`` accepted ``spec: {}``, strings where
numbers belong and lists where objects belong; ``kiln ls`` then died with a KeyError, and a
100 000-deep document raised RecursionError out of every reader.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.errors import UnsafeManifestError
from kiln.manifests import MAX_ENTRY_BYTES, IndexEntry, spec_differences, toolchain_differences
from kiln.manifests._json import load_json
from kiln.spec import Quantization

KEY = "8f27db7ee66a6bbe7bf6291b937c849e452d2eea5adae1833133e399c6eb71dc"
TREE = "sha256:4d7f6ca994ca19d36e391171e1955c74ec8c7682a0f53df5e307628059cd6e4d"
MANIFEST = "sha256:3af17ae61074f1b8c0e1d3cf376dabe22fcafff02eb40584f3165a2ccbbeb9bb"

ENGINE = {
    "schema": 1, "key": KEY, "manifest": MANIFEST, "size": 100, "files": 1, "created": "2026-01-01T09:18:44.148016Z",
    "model": {"commit": None, "ref": "/models/tiny", "repo_id": None, "tree_digest": TREE},
    "spec": {"batch_size": 1, "dtype": "fp32", "model": "/models/tiny", "n_positions": 256, "options": {},
             "quantization": None, "target": "torch-aoti", "tp_degree": 1},
    "toolchain": {"hardware": "cpu-test", "torch": "2.0.0", "transformers": "5.0.0"},
}
# A TensorRT-LLM checkpoint stage, as kiln.targets.trtllm.stages writes its entry spec.
STAGE = dict(ENGINE, spec={
    "target": "trtllm", "stage": "checkpoint", "dtype": "fp16", "tp_degree": 2, "calibration": None,
    "quantization": {"smoothquant_alpha": "0.5", "per_token": True, "per_channel": False, "int8_kv_cache": False},
    "model": "/models/tiny",
}, toolchain={"torch": "2.6.0", "transformers": "5.0.0", "kiln-trtllm-converter": "1"})


def consume(entry: IndexEntry) -> None:
    """What the callers of an entry do with it (kiln ls, lookups, --select, miss explanations)."""
    s = entry.spec
    assert isinstance(entry.model_hex, str) and len(entry.model_hex) == 64
    if "stage" not in s:
        _ = f"{s['n_positions']}x{s['batch_size']} tp{s['tp_degree']} {s['dtype']} {s['target']}"
        _ = sorted([(s["tp_degree"], s["batch_size"], s["n_positions"], entry.created)])
        entry.build_spec()
    elif "tp_degree" in s:
        _ = f"tp{s['tp_degree']}"
    _ = s["target"] + (f" ({s['stage']})" if "stage" in s else "") + str(s.get("dtype", "-"))
    Quantization.from_json(s.get("quantization")).describe()
    spec_differences(dict(ENGINE["spec"]), {k: v for k, v in s.items() if k != "model"})
    toolchain_differences({"torch": "2.0.0", "hardware": None}, entry.toolchain)
    str(entry.model.get("repo_id") or entry.model.get("ref"))
    _ = entry.size + entry.files
    assert IndexEntry.parse(entry.to_bytes()) == entry  # what pull writes locally reads back the same


@pytest.mark.parametrize("doc", [ENGINE, STAGE], ids=["engine", "stage"])
def test_the_shapes_kiln_writes_are_accepted(doc: dict) -> None:
    entry = IndexEntry.parse(json.dumps(doc).encode())
    assert entry.to_json() == doc
    consume(entry)


def test_an_entry_without_schema_or_files_reads_as_schema_1() -> None:
    doc = {k: v for k, v in ENGINE.items() if k not in ("schema", "files")}
    assert IndexEntry.from_json(doc).files == 0


def _set(path: str, value: Any) -> Any:
    def mutate(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return mutate


BAD_ENTRIES = [
    # (mutation of a valid entry or a whole document, what the message must name)
    ([ENGINE], "is a list, not a JSON object"),
    ("entry", "is a str, not a JSON object"),
    (None, "is null, not a JSON object"),
    (17, "is a int, not a JSON object"),
    (_set("spec", {}), "spec has no 'target' field"),
    (_set("spec", []), "spec is [], not a JSON object"),
    (_set("spec.n_positions", KeyError), "spec has no 'n_positions' field"),
    (_set("spec.n_positions", "abc"), "spec.n_positions is 'abc'"),
    (_set("spec.n_positions", 0), "spec.n_positions is 0"),
    (_set("spec.n_positions", True), "spec.n_positions is True"),
    (_set("spec.n_positions", 1.5), "spec.n_positions is 1.5"),
    (_set("spec.batch_size", 10**40), "spec.batch_size is <an integer of about 41 digits>"),
    (_set("spec.tp_degree", None), "spec.tp_degree is None"),
    (_set("spec.dtype", "fp8"), "spec.dtype is 'fp8'"),
    (_set("spec.target", "Torch AOTI"), "spec.target is 'Torch AOTI'"),
    (_set("spec.target", 3), "spec.target is 3"),
    (_set("spec.options", {"a": 1}), "spec.options.a is 1"),
    (_set("spec.options", "gqa=x"), "spec.options is 'gqa=x'"),
    (_set("spec.quantization", {}), "spec.quantization must hold exactly"),
    (_set("spec.quantization", "sq"), "spec.quantization is 'sq'"),
    (_set("spec.quantization", {"smoothquant_alpha": "abc", "per_token": True, "per_channel": True,
                                "int8_kv_cache": False}), "spec.quantization.smoothquant_alpha is 'abc'"),
    (_set("spec.quantization", {"smoothquant_alpha": "0.5", "per_token": "yes", "per_channel": True,
                                "int8_kv_cache": False}), "spec.quantization.per_token is 'yes'"),
    (_set("spec.extra", 1), "spec has unknown field(s) 'extra'"),
    (_set("spec.model", ["a"]), "spec.model is ['a']"),
    (_set("spec.model", "x" * 5000), "spec.model is 5000 characters long"),
    (_set("spec.model", "evil\x1b[2J"), "spec.model holds control characters"),
    (_set("key", KeyError), "required field 'key' is missing"),
    (_set("manifest", KeyError), "required field 'manifest' is missing"),
    (_set("key", KEY.upper()), "key is '8F27"),
    (_set("key", "../../../escaped"), "key is '../../../escaped'"),
    (_set("key", 12), "key is 12"),
    (_set("manifest", "sha256:xyz"), "manifest is 'sha256:xyz'"),
    (_set("model", "x"), "model is 'x', not a JSON object"),
    (_set("model", {}), "model.tree_digest is None"),
    (_set("model.tree_digest", "sha256:../../x"), "model.tree_digest is 'sha256:../../x'"),
    (_set("model.ref", {"a": 1}), "model.ref is {'a': 1}"),
    (_set("toolchain", ["torch"]), "toolchain is ['torch']"),
    (_set("toolchain", {"torch": 2}), "toolchain.torch is 2"),
    (_set("toolchain", {"": "1"}), "toolchain has an empty field name"),
    (_set("size", "100"), "size is '100'"),
    (_set("size", -1), "size is -1"),
    (_set("files", 10**9), "files is 1000000000"),
    (_set("created", 5), "created is 5"),
    (_set("created", "yesterday"), "created is 'yesterday'"),
    (_set("schema", 2), "entry schema 2 is not one this Kiln reads"),
    (_set("schema", True), "entry schema True"),
    (_set("unexpected", 1), "unknown field(s) 'unexpected'"),
]


@pytest.mark.parametrize("mutation, problem", BAD_ENTRIES, ids=[p for _, p in BAD_ENTRIES])
def test_wrong_shapes_are_refused_naming_the_field(mutation: Any, problem: str) -> None:
    if callable(mutation):
        doc = copy.deepcopy(ENGINE)
        mutation(doc)
    else:
        doc = mutation
    with pytest.raises(UnsafeManifestError) as e:
        IndexEntry.parse(json.dumps(doc).encode())
    assert problem in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


STAGE_BAD = [
    (_set("spec.stage", ""), "spec.stage is ''"),
    (_set("spec.n_positions", 128), "spec holds n_positions but no 'batch_size'"),
    (_set("model.architecture_digest", "sha256:x"), "model.architecture_digest is 'sha256:x'"),
    (_set("spec.tp_degree", "2"), "spec.tp_degree is '2'"),
    (_set("spec.calibration", {"key": "x"}), "spec.calibration is {'key': 'x'}"),
    (_set("spec.calibration", 0.5), "spec.calibration is 0.5"),
]


def _engine_stage() -> dict:
    """A weight-independent target's compiled engine: a stage with a whole shape, filed by architecture."""
    doc = copy.deepcopy(STAGE)
    doc["spec"].update(stage="engine", n_positions=64, batch_size=1, tp_degree=1)
    doc["model"] = {"architecture_digest": "sha256:" + "a" * 64, "ref": "base", "repo_id": None, "commit": None}
    return doc


def test_an_engine_stage_is_filed_under_its_architecture() -> None:
    entry = IndexEntry.from_json(_engine_stage())
    assert entry.model_hex == "a" * 64 and entry.spec["n_positions"] == 64
    # A model without an architecture digest: its engine stage is keyed, and filed, by its weights.
    doc = _engine_stage()
    doc["model"] = {"tree_digest": "sha256:" + "b" * 64, "ref": "base", "repo_id": None, "commit": None}
    assert IndexEntry.from_json(doc).model_hex == "b" * 64


ENGINE_STAGE_BAD = [
    (_set("model.tree_digest", "sha256:" + "b" * 64), "model of an engine stage holds both a tree_digest"),
    (_set("model.architecture_digest", None), "model.architecture_digest is None"),
    (_set("spec.n_positions", 1 << 40), "spec.n_positions is 1099511627776"),
    (_set("spec.batch_size", 0), "spec.batch_size is 0"),
]


@pytest.mark.parametrize("mutation, problem", ENGINE_STAGE_BAD, ids=[p for _, p in ENGINE_STAGE_BAD])
def test_wrong_engine_stages_are_refused(mutation: Any, problem: str) -> None:
    doc = _engine_stage()
    mutation(doc)
    with pytest.raises(UnsafeManifestError, match="^" + problem.replace("(", r"\(").replace("[", r"\[")):
        IndexEntry.from_json(doc)


@pytest.mark.parametrize("mutation, problem", STAGE_BAD, ids=[p for _, p in STAGE_BAD])
def test_wrong_stage_shapes_are_refused(mutation: Any, problem: str) -> None:
    doc = copy.deepcopy(STAGE)
    mutation(doc)
    with pytest.raises(UnsafeManifestError, match="^" + problem.replace("(", r"\(").replace("[", r"\[")):
        IndexEntry.from_json(doc)


@pytest.mark.parametrize("raw, problem", [
    (b"", "is empty"),
    (b"   \n", "is empty"),
    (b"\xff\xfe\xfa", "is not JSON"),
    (b"{", "is not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"spec": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001, "nested too deeply"),
    (b'{"spec": ' + b"[" * 40 + b"]" * 40 + b"}", "nested too deeply"),  # parses, still refused
    (b'{"size": NaN}', "is not JSON"),
    (b'{"size": Infinity}', "is not JSON"),
    (b'{"size": ' + b"9" * 5000 + b"}", "is not JSON"),
    (json.dumps(dict(ENGINE, created=" " * MAX_ENTRY_BYTES)).encode(), "exceeds"),
])
def test_undecodable_documents_are_refused(raw: bytes, problem: str) -> None:
    with pytest.raises(UnsafeManifestError, match=problem):
        IndexEntry.parse(raw)


def test_depth_limit_is_not_the_interpreters() -> None:
    # Nesting below the interpreter's recursion limit but above Kiln's: refused after parsing.
    with pytest.raises(UnsafeManifestError, match="nested too deeply"):
        load_json(b"[" * 500 + b"]" * 500, "doc", max_bytes=10_000)
    assert load_json(b"[" * 32 + b"]" * 32, "doc", max_bytes=10_000) is not None


# ------------------------------------------------------------------ generated documents

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
PATHS = ["", "key", "manifest", "spec", "spec.target", "spec.n_positions", "spec.batch_size", "spec.tp_degree",
         "spec.dtype", "spec.quantization", "spec.options", "spec.model", "spec.stage", "model", "model.tree_digest",
         "model.ref", "toolchain", "toolchain.torch", "size", "created", "files", "schema"]


def _replace(doc: dict, path: str, value: Any) -> Any:
    if not path:
        return value
    _set(path, value)(doc)
    return doc


def _check_parse(raw: bytes) -> None:
    try:
        entry = IndexEntry.parse(raw)
    except UnsafeManifestError as e:
        assert "\n" not in str(e)
        return
    consume(entry)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from([ENGINE, STAGE]), path=st.sampled_from(PATHS), value=json_values)
def test_generated_entries_are_refused_or_safe_to_use(base: dict, path: str, value: Any) -> None:
    """Any field replaced by any JSON value: the parser refuses it cleanly, or callers can use it."""
    _check_parse(json.dumps(_replace(copy.deepcopy(base), path, value)).encode())


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_bytes_are_refused_or_safe_to_use(raw: bytes) -> None:
    _check_parse(raw)
