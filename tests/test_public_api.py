from __future__ import annotations

import json
from pathlib import Path

import jsonschema

import kiln
from kiln.manifests import record_json_schema

from .conftest import write_fake_model


def test_exported_names_are_pinned() -> None:
    assert sorted(kiln.__all__) == sorted([
        "__version__", "BuildResult", "BuildSpec", "Field", "KilnError", "LoadedEngine", "LookupResult",
        "Quantization", "Query", "Resolution", "Store", "build", "compute_key", "fetch", "find_artifact",
        "list_artifacts", "load_engine", "load_engine_by_key", "lookup", "parse_toolchain_pins", "put",
        "resolve", "select", "spec_from_fields", "spec_from_sources",
    ])
    for name in kiln.__all__:
        assert hasattr(kiln, name), name


def test_build_record_matches_the_published_schema(tmp_path: Path, store: kiln.Store) -> None:
    model = write_fake_model(tmp_path / "m")
    art = tmp_path / "art"
    art.mkdir()
    (art / "engine.bin").write_bytes(b"x" * 10)
    spec = kiln.BuildSpec("torch-aoti", str(model), n_positions=64)
    res = kiln.resolve(spec, store=store)
    entry = kiln.put(res, art, store=store, duration_s=1.5)
    manifest = store.read_manifest(entry.manifest)
    record = store.read_record(manifest)
    jsonschema.validate(record, record_json_schema())
    assert record["key"] == entry.key
    assert record["key_inputs"]["model"]["tree_digest"] == res.model.tree_digest
    # The OCI shape: file paths in the title annotation, config is the build record.
    data = json.loads(store.blob_path(entry.manifest).read_bytes())
    assert data["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert data["layers"][0]["annotations"]["org.opencontainers.image.title"] == "engine.bin"
    broken = dict(record, key="not-a-key")
    try:
        jsonschema.validate(broken, record_json_schema())
    except jsonschema.ValidationError:
        pass
    else:  # pragma: no cover
        raise AssertionError("the schema accepted a malformed key")
