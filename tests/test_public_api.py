from __future__ import annotations

import inspect
import json
from pathlib import Path

import jsonschema
import pytest

import kiln
from kiln.errors import SpecError
from kiln.manifests import record_json_schema

from .conftest import run_kiln, write_fake_model


def test_exported_names_are_pinned() -> None:
    assert sorted(kiln.__all__) == sorted([
        "__version__", "BuildResult", "BuildSpec", "Field", "KilnError", "LoadedEngine", "LookupResult",
        "Quantization", "Query", "Remote", "Resolution", "Store", "build", "compute_key", "fetch", "find_artifact",
        "list_artifacts", "load_engine", "load_engine_by_key", "lookup", "open_remote", "parse_toolchain_pins", "put",
        "resolve", "select", "spec_from_fields", "spec_from_sources",
    ])
    for name in kiln.__all__:
        assert hasattr(kiln, name), name


def test_every_public_name_has_a_docstring() -> None:
    """Written ones: a dataclass without a docstring gets its signature as __doc__, which does not count."""
    missing = []
    for name in kiln.__all__:
        if name == "__version__":
            continue
        obj = getattr(kiln, name)
        doc = inspect.getdoc(obj) or ""
        generated = inspect.isclass(obj) and doc.startswith(f"{obj.__name__}(")
        if len(doc) < 20 or generated:
            missing.append(name)
    assert missing == []


def test_public_functions_that_take_a_remote_can_be_given_one() -> None:
    for name in ("lookup", "select", "fetch", "build", "load_engine"):
        assert "remote" in inspect.signature(getattr(kiln, name)).parameters, name
    assert kiln.open_remote(None) is None


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


# --------------------------------------------------------------------------- the API checks what the CLI checks


def _cli_error(*args: str) -> str:
    r = run_kiln(*args)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    return r.stderr.removeprefix("kiln: error: ").rstrip("\n")


@pytest.mark.parametrize(
    "kw,flag,value",
    [
        ({"batch_size": 0}, "--batch-size", "0"),
        ({"tp_degree": -1}, "--tp-degree", "-1"),
        ({"n_positions": 10**30}, "--n-positions", str(10**30)),
        ({"n_positions": "abc"}, "--n-positions", "abc"),
        ({"dtype": "int4"}, "--dtype", "int4"),
    ],
)
def test_build_spec_raises_the_cli_message(tmp_path: Path, kw: dict, flag: str, value: str) -> None:
    model = write_fake_model(tmp_path / "m")
    with pytest.raises(kiln.KilnError) as api:
        kiln.BuildSpec("torch-aoti", str(model), **kw)
    cli = _cli_error("key", str(model), "--target", "torch-aoti", f"{flag}={value}")
    # The same sentence; only the name of the field (and the quotes of a typed string) differ.
    name = next(iter(kw))
    assert str(api.value).replace("'", "") == cli.replace(f"{flag}=", f"{name}=").replace("'", "")


def test_resolve_refuses_an_unknown_target_as_the_cli_does(tmp_path: Path, store: kiln.Store) -> None:
    model = write_fake_model(tmp_path / "m")
    with pytest.raises(SpecError) as api:
        kiln.resolve(kiln.BuildSpec("nope", str(model), n_positions=64), store=store)
    assert str(api.value) == "target='nope' is not a Kiln target; write one of torch-aoti, trtllm, neuron."
    assert _cli_error("key", str(model), "--target", "nope") == "--" + str(api.value)
    # Aliases resolve as on the command line.
    assert kiln.resolve(kiln.BuildSpec("TensorRT-LLM", str(model), n_positions=64), store=store).spec.target == "trtllm"
    with pytest.raises(SpecError, match="resolve\\(\\) takes a kiln.BuildSpec"):
        kiln.resolve({"target": "torch-aoti"}, store=store)  # type: ignore[arg-type]


def test_string_numbers_give_the_key_the_cli_gives(tmp_path: Path, store: kiln.Store) -> None:
    model = write_fake_model(tmp_path / "m")
    res = kiln.resolve(kiln.BuildSpec("torch-aoti", str(model), n_positions="128", batch_size="2"), store=store)
    r = run_kiln("key", str(model), "--target", "torch-aoti", "--n-positions", "128", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    assert res.key == r.stdout.strip()


# --------------------------------------------------------------------------- loading through a remote


def test_load_engine_finds_the_engine_through_a_remote_and_both_loaders_use_its_device(tmp_path: Path) -> None:
    """A real torch-aoti build on CPU, pushed to a filesystem remote; a second, empty store
    loads it with ``remote=`` (pulled and verified), then by key; neither names a device."""
    pytest.importorskip("torch")
    from kiln.api import push
    from kiln.core.load import engine_device

    from .tiny_models import make_tiny_model

    model = make_tiny_model("llama", tmp_path / "m", seed=21)
    builder = kiln.Store(tmp_path / "builder")
    spec = kiln.BuildSpec("torch-aoti", str(model), n_positions=32)
    built = kiln.build(kiln.resolve(spec, store=builder), store=builder)
    remote = kiln.open_remote(str(tmp_path / "remote"))
    assert isinstance(remote, kiln.Remote)
    push(builder, remote, built.entry)

    server = kiln.Store(tmp_path / "server")
    res = kiln.resolve(spec, store=server)
    loaded = kiln.load_engine(res, store=server, remote=remote)
    assert loaded.entry.key == built.entry.key and engine_device(loaded.entry) == "cpu"
    assert str(loaded.engine.device) == "cpu"
    by_key = kiln.load_engine_by_key(built.entry.key[:16], store=server)  # pulled above: now local
    assert str(by_key.engine.device) == "cpu"
    import torch

    ids = torch.tensor([[5, 6, 7]])
    assert loaded.engine.generate(ids, 4, eos_token_id=[]).tolist() == by_key.engine.generate(ids, 4, eos_token_id=[]).tolist()
    # The light tokenizer (no transformers) encodes and decodes as transformers' own does.
    text = "ahead of time engines"
    fast, full = loaded.fast_tokenizer(), loaded.tokenizer()
    assert fast.encode(text, add_special_tokens=False).ids == full(text, add_special_tokens=False)["input_ids"]
    assert fast.decode([5, 6, 7]) == full.decode([5, 6, 7])
    (loaded.directory / "tokenizer.json").unlink()
    with pytest.raises(kiln.KilnError, match="holds no tokenizer.json"):
        loaded.fast_tokenizer()
    with pytest.raises(kiln.KilnError, match="no torch-aoti engine"):
        kiln.load_engine(kiln.resolve(spec.replace(batch_size=2), store=server), store=server, remote=remote)


def test_the_device_rule_reads_the_stored_spec() -> None:
    from kiln.core.load import engine_device
    from kiln.manifests import IndexEntry

    def entry(options: dict) -> IndexEntry:
        return IndexEntry("k" * 64, "sha256:" + "0" * 64, {"target": "torch-aoti", "options": options},
                          {"tree_digest": "sha256:" + "0" * 64}, {}, 0, "2025-01-01T00:00:00.000000Z", 0)

    assert engine_device(entry({})) == "cpu"
    assert engine_device(entry({"device": "cuda"})) == "cuda"
    assert inspect.signature(kiln.load_engine).parameters["device"].default is None
    assert inspect.signature(kiln.load_engine_by_key).parameters["device"].default is None


@pytest.mark.parametrize("value", ["1" + "0" * 5000, "cu\nda", "x" * 1025])
def test_target_option_values_are_bounded_and_printable(tmp_path: Path, value: str) -> None:
    """A neighbour of the huge flags: a target option's value reaches keys, argv and messages."""
    model = write_fake_model(tmp_path / "m")
    r = run_kiln("key", str(model), "--target", "trtllm", "--smoothquant", "0.5", "-o", f"calib_samples={value}")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("kiln: error: target option calib_samples=") and \
        r.stderr.endswith("is not a value Kiln takes: at most 1024 printable characters.\n")
