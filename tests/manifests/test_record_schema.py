"""Build records: the published schema describes every record Kiln writes (engines *and* build
stages), Kiln's own dependency-free checker gives the same verdicts as ``jsonschema`` on it,
and a record that does not describe its index entry is refused.

Before: stage records (TensorRT-LLM calibration, checkpoint) did not match the published
schema (their ``model`` is the summary, without ``kind``/``files``), and a pulled record was
only ``json.loads``-ed for its key: a list crashed pull with AttributeError, deep nesting with
RecursionError.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kiln
from kiln.errors import UnsafeManifestError
from kiln.manifests import (
    IndexEntry,
    check_record,
    check_record_describes,
    make_record,
    parse_record,
    record_json_schema,
)
from kiln.manifests._jsonschema import SchemaChecker, SchemaDefinitionError
from kiln.targets.trtllm.stages import stage_plan
from tests.conftest import write_fake_model

TOOLCHAIN = {"torch": "2.0.0", "transformers": "5.0.0", "hardware": "cpu-test"}


@pytest.fixture
def engine(tmp_path: Path, store: kiln.Store) -> tuple[dict, IndexEntry]:
    """A real engine record and its entry, published as `kiln store put` does."""
    model = write_fake_model(tmp_path / "m")
    art = tmp_path / "art"
    art.mkdir()
    (art / "engine.bin").write_bytes(b"x" * 10)
    res = kiln.resolve(kiln.BuildSpec("torch-aoti", str(model), n_positions=64), store=store, toolchain=TOOLCHAIN)
    entry = kiln.put(res, art, store=store, duration_s=1.5)
    return store.read_record(store.read_manifest(entry.manifest)), entry


def _stage_records(tmp_path: Path, store: kiln.Store) -> list[tuple[dict, IndexEntry]]:
    """The records and entries of TensorRT-LLM's CPU stages, made exactly as kiln.compile.stages makes them."""
    model = write_fake_model(tmp_path / "m")
    out = []
    for options in ({}, {"smoothquant_alpha": 0.5, "int8_kv_cache": True}):
        quant = kiln.Quantization(**options)  # type: ignore[arg-type]
        res = kiln.resolve(kiln.BuildSpec("trtllm", str(model), n_positions=256, quant=quant), store=store, toolchain={})
        for stage in stage_plan(res):
            record = make_record(key=stage.key, inputs=stage.key_inputs(), spec=stage.entry_spec(),
                                 model=stage.model_summary, toolchain=stage.toolchain, started=kiln.manifests.utc_now(),
                                 duration_s=2.0, extra={"stage": stage.name, "depends_on": list(stage.depends_on)})
            entry = IndexEntry(key=stage.key, manifest="sha256:" + "0" * 64, spec=stage.entry_spec(),
                               model=dict(stage.model_summary), toolchain=dict(stage.toolchain), size=1,
                               created=kiln.manifests.utc_now(), files=1)
            out.append((json.loads(json.dumps(record)), entry))
    return out


def test_shipped_schema_uses_only_what_the_checker_implements() -> None:
    SchemaChecker(record_json_schema())
    with pytest.raises(SchemaDefinitionError, match="patternProperties"):
        SchemaChecker({"type": "object", "patternProperties": {"a": {}}})
    with pytest.raises(SchemaDefinitionError, match="points at nothing"):
        SchemaChecker({"$ref": "#/$defs/missing"})


def test_engine_and_stage_records_match_the_published_schema(engine: tuple[dict, IndexEntry], tmp_path: Path,
                                                             store: kiln.Store) -> None:
    records = [engine, *_stage_records(tmp_path, store)]
    assert {r["spec"].get("stage") for r, _ in records} == {None, "calibration", "checkpoint"}
    for record, entry in records:
        jsonschema.validate(record, record_json_schema())
        assert check_record(record) is record
        check_record_describes(record, entry)
        IndexEntry.parse(entry.to_bytes())  # the entry shape accepts what stages write


@pytest.mark.parametrize("raw, problem", [
    (b"[]", r"\$: \[\] is not of type object"),
    (b'"record"', "is not of type object"),
    (b"null", "is not of type object"),
    (b"{}", "required field 'schema' is missing"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"extra": ' + b"[" * 200 + b"]" * 200 + b"}", "nested too deeply"),
    (b" " * (16 * 1024 * 1024 + 1), "exceeds"),
    (b"\x00\x01", "not JSON"),
])
def test_undecodable_or_wrong_shaped_records_are_refused(raw: bytes, problem: str) -> None:
    with pytest.raises(UnsafeManifestError, match=problem):
        parse_record(raw)


def _lie(field: str):  # type: ignore[no-untyped-def]
    def mutate(entry: IndexEntry) -> IndexEntry:
        data = entry.to_json()
        if field == "spec":
            data["spec"]["batch_size"] = 2
        elif field == "toolchain":
            data["toolchain"]["torch"] = "9.9.9"
        elif field == "model":
            data["model"]["tree_digest"] = "sha256:" + "1" * 64
        else:
            data["key"] = "2" * 64
        return IndexEntry.from_json(data)
    return mutate


@pytest.mark.parametrize("field, problem", [
    ("spec", "spec differs from its build record's key inputs in batch_size"),
    ("toolchain", "another toolchain"),
    ("model", "another model"),
    ("key", "build record names key"),
])
def test_an_entry_that_lies_about_its_record_is_refused(engine: tuple[dict, IndexEntry], field: str,
                                                        problem: str) -> None:
    record, entry = engine
    with pytest.raises(UnsafeManifestError, match=problem):
        check_record_describes(record, _lie(field)(entry))


def test_record_whose_key_inputs_do_not_hash_to_its_key_is_refused(engine: tuple[dict, IndexEntry]) -> None:
    record, entry = engine
    forged = copy.deepcopy(record)
    forged["key_inputs"]["spec"]["batch_size"] = 8  # the key still says batch 1
    with pytest.raises(UnsafeManifestError, match="hash to"):
        check_record_describes(check_record(forged), entry)
    forged["key_inputs"]["spec"]["batch_size"] = 1.0  # a float: never canonical JSON
    with pytest.raises(UnsafeManifestError, match="not canonical JSON"):
        check_record_describes(check_record(forged), entry)


# ------------------------------------------------------------------ generated: same verdicts as jsonschema

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**6), max_value=10**6)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10)
    | st.sampled_from(["torch-aoti", "fp16", "calibration", "sha256:" + "a" * 64, "a" * 64, "kiln.build-record/v1"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)


def _paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            yield from _paths(v, prefix + (i,))


@pytest.fixture(scope="module")
def sample_records(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("records")
    store = kiln.Store(tmp / "store")  # module-scoped: the per-test KILN_HOME is not set yet
    model = write_fake_model(tmp / "m")
    art = tmp / "art"
    art.mkdir()
    (art / "engine.bin").write_bytes(b"x")
    res = kiln.resolve(kiln.BuildSpec("torch-aoti", str(model), n_positions=64), store=store, toolchain=TOOLCHAIN)
    entry = kiln.put(res, art, store=store)
    return [store.read_record(store.read_manifest(entry.manifest))] + [r for r, _ in _stage_records(tmp, store)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data(), value=json_values, delete=st.booleans())
def test_checker_agrees_with_jsonschema(sample_records: list[dict], data: st.DataObject, value: Any,
                                        delete: bool) -> None:
    record = copy.deepcopy(data.draw(st.sampled_from(sample_records)))
    path = data.draw(st.sampled_from(sorted(_paths(record), key=repr)))
    if not path:
        record = value
    else:
        node = record
        for part in path[:-1]:
            node = node[part]
        if delete and isinstance(node, dict):
            del node[path[-1]]
        else:
            node[path[-1]] = value
    ours = SchemaChecker(record_json_schema()).first_error(record)
    theirs = next(iter(jsonschema.Draft202012Validator(record_json_schema()).iter_errors(record)), None)
    assert (ours is None) == (theirs is None), (path, ours, theirs and theirs.message)
