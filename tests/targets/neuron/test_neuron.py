"""The neuron target without the Neuron SDK: presets, validation, keys, layouts, ensure, select.

Engines here are fixtures — directories of NEFF-named files — because no Neuron compiler
exists on these machines; the real compile test runs only where the SDK is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path

import pytest

from kiln import Store, resolve, spec_from_sources
from kiln.api import compute_key
from kiln.errors import ValidationError
from kiln.presets import load_preset

from ...conftest import run_kiln, write_fake_model, write_hf_cache_model
from .conftest import LLAMA2

PINS = {"neuronx-cc": "2.15.128.0+56dc5a86", "transformers-neuronx": "0.12.313", "torch-neuronx": "2.1.2.2.3.0",
        "libneuronxla": "2.0.4986.0"}
PIN_ARGS = ["--toolchain", "neuronx-cc=2.15.128.0+56dc5a86,transformers-neuronx=0.12.313,torch-neuronx=2.1.2.2.3.0,libneuronxla=2.0.4986.0"]
# An LMI NeuronX container of this release loads the graphs (its image's SDK is the toolchain: no pins).
CONSUMER = "lmi-neuronx:0.29.0"
CONSUMER_ARGS = ["--consumer", CONSUMER, "--option", "rolling_batch=auto"]




def test_every_preset_row_parses_validates_and_keys(llama2_cache: None, store: Store, tmp_path: Path) -> None:
    rows = load_preset("jumpstart-llama2-neuron", consumer=CONSUMER)
    assert len(rows) == 34  # 17 published configurations x (base, chat)
    keys: dict[str, str] = {}
    for row in rows:
        res = compute_key(spec_from_sources(row.fields()), store=store, toolchain=PINS)
        env_res = compute_key(spec_from_sources({}, from_env=True, env=row.lmi_env()).spec.replace(
            options=res.spec.options), store=store, toolchain=PINS)
        props = tmp_path / "serving.properties"
        props.write_text(row.serving_properties())
        file_res = compute_key(spec_from_sources({}, serving_properties=props, env={}).spec.replace(
            options=res.spec.options), store=store, toolchain=PINS)
        assert res.key == env_res.key == file_res.key, row.id
        assert res.toolchain["hardware"] == "neuron-inf2"
        keys[row.id] = res.key
    # Distinct engines key distinctly. Rows that differ only in the instance size of one chip
    # family (inf2.24xlarge vs inf2.48xlarge at the same shape and tp) are the same compiled
    # graphs, so they share a key: one build serves both.
    by_engine: dict[tuple, set[str]] = {}
    for row in rows:
        by_engine.setdefault((row.model, row.n_positions, row.batch_size, row.tp_degree, row.dtype), set()).add(keys[row.id])
    assert all(len(k) == 1 for k in by_engine.values())
    assert len(set(keys.values())) == len(by_engine)


def test_tensor_parallel_degree_against_the_instance_and_heads(llama2_cache: None, store: Store, tmp_path: Path) -> None:
    base = {"target": "neuron", "n_positions": "2048", "dtype": "fp16"}

    def check(model: str, **kw: str) -> None:
        from kiln.spec import Field

        fields = {k: Field(v, f"--{k}") for k, v in {**base, **kw}.items()}
        fields["model"] = Field(model, "MODEL")
        if "instance_type" in kw:
            fields["option.instance_type"] = fields.pop("instance_type")
        resolve(spec_from_sources(fields), store=store)

    with pytest.raises(ValidationError, match=r"tp_degree=4 exceeds the 2 NeuronCores of ml.inf2.xlarge"):
        check("meta-llama/Llama-2-7b-hf", tp_degree="4", instance_type="ml.inf2.xlarge")
    with pytest.raises(ValidationError, match=r"'ml.inf2.huge' is not a known Inferentia2/Trainium instance"):
        check("meta-llama/Llama-2-7b-hf", instance_type="ml.inf2.huge")
    with pytest.raises(ValidationError, match=r"n_positions=8192 exceeds the model's max_position_embeddings=4096"):
        check("meta-llama/Llama-2-7b-hf", n_positions="8192")
    # Multi-head attention: heads are padded to a multiple of tp (JumpStart's 7B at tp 12).
    check("meta-llama/Llama-2-7b-hf", tp_degree="12", instance_type="ml.inf2.24xlarge")
    gqa = write_fake_model(tmp_path / "gqa", config={"architectures": ["MistralForCausalLM"], "num_attention_heads": 32,
                                                     "num_key_value_heads": 8, "max_position_embeddings": 4096})
    # transformers-neuronx falls back to replicated heads (a warning, not an error): said, not refused.
    r = run_kiln("key", str(gqa), "--target", "neuron", "--n-positions", "2048", "--tp-degree", "12",
                 "--instance-type", "ml.inf2.24xlarge", *PIN_ARGS, "--explain")
    assert r.returncode == 0 and "replaces shard-over-heads by replicated-heads" in r.stdout, r.stderr
    check(str(gqa), tp_degree="4", instance_type="ml.inf2.24xlarge")
    mixtral = write_fake_model(tmp_path / "mixtral", config={"architectures": ["MixtralForCausalLM"], "num_attention_heads": 32,
                                                             "num_key_value_heads": 8, "max_position_embeddings": 4096})
    check(str(mixtral))  # transformers-neuronx's MixtralForSampling (LMI maps mixtral to it from 0.27)
    neox = write_fake_model(tmp_path / "neox", config={"architectures": ["GPTNeoXForCausalLM"], "num_attention_heads": 32,
                                                      "max_position_embeddings": 2048})
    with pytest.raises(ValidationError, match=r"GPTNeoXForCausalLM is not supported by neuron yet: .*has no save\(\)"):
        check(str(neox))


def test_build_without_the_sdk_fails_fast_saying_where_builds_run(llama2_cache: None) -> None:
    r = run_kiln("build", "meta-llama/Llama-2-7b-hf", "--target", "neuron", "--n-positions", "1024", "--tp-degree", "2",
                 "--instance-type", "ml.inf2.xlarge")
    assert r.returncode == 2
    assert "cannot build neuron here" in r.stderr and "Inferentia2/Trainium instance" in r.stderr
    assert "Traceback" not in r.stderr


NEFFS = {"0a1b2c3d4e5f60718293": b"neff-context", "a4b5c6d7e8f901234567": b"neff-token", "ffeeddccbbaa99887766": b"neff-extra"}
COMPILER = "2.15.128.0+56dc5a86"


def _neuron_fixture_artifact(root: Path, model_dir: Path) -> Path:
    """A directory shaped like the neuron worker's output. Clearly a fixture: no compiler ran."""
    art = root / "neuron-artifact"
    (art / "model").mkdir(parents=True)
    for p in model_dir.iterdir():
        (art / "model" / p.name).write_bytes(p.read_bytes())
    (art / "compiled").mkdir()
    for h, data in NEFFS.items():
        (art / "compiled" / f"{h}.neff").write_bytes(data * 100)
    (art / "compiled" / "VERSION").write_text(COMPILER + "\n")
    modules = [{"neff": f"compiled/{h}.neff", "module": f"MODULE_{h}+{hashlib.md5(h.encode()).hexdigest()[:8]}"} for h in NEFFS]
    (art / "neuron-graphs.json").write_text(json.dumps({"compiler_version": COMPILER, "flags": ["--model-type=transformer", "-O2"],
                                                        "modules": modules}))
    return art


ROW_ENV = {  # a JumpStart row as an LMI NeuronX container is started with it
    "HF_MODEL_ID": "meta-llama/Llama-2-7b-hf", "OPTION_ENTRYPOINT": "djl_python.transformers_neuronx",
    "OPTION_ROLLING_BATCH": "auto", "OPTION_N_POSITIONS": "4096", "OPTION_MAX_ROLLING_BATCH_SIZE": "4",
    "OPTION_TENSOR_PARALLEL_DEGREE": "8", "OPTION_DTYPE": "fp16", "OPTION_KILN_CONSUMER": CONSUMER,
}


@pytest.fixture
def stored_neuron(llama2_cache: None, tmp_path: Path) -> dict:
    snap = next(Path(os.environ["HF_HUB_CACHE"]).glob("models--meta-llama--Llama-2-7b-hf/snapshots/*"))
    art = _neuron_fixture_artifact(tmp_path, snap)
    spec = ["--target", "neuron", "--n-positions", "4096", "--batch-size", "4", "--tp-degree", "8", "--dtype", "fp16",
            "--instance-type", "ml.inf2.24xlarge", "--option", "gqa_strategy=shard-over-heads", *CONSUMER_ARGS]
    # No pins: the consumer's image names the SDK (the toolchain in the key).
    r = run_kiln("store", "put", str(art), "meta-llama/Llama-2-7b-hf", *spec, "--json")
    assert r.returncode == 0, r.stderr
    return {"art": art, "spec": spec, "key": json.loads(r.stdout)["key"]}


def test_lmi_layout_has_what_the_container_reads(stored_neuron: dict, tmp_path: Path) -> None:
    dest = tmp_path / "lmi"
    r = run_kiln("fetch", "meta-llama/Llama-2-7b-hf", *stored_neuron["spec"], "--layout", "lmi", "--dest", str(dest),
                 "--container-dir", "/opt/ml/model", "--json")
    assert r.returncode == 0, r.stderr
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == sorted(["config.json", "model.safetensors", "tokenizer.json", "serving.properties", "compiled/VERSION"]
                           + [f"compiled/{h}.neff" for h in NEFFS])
    props = dict(line.split("=", 1) for line in (dest / "serving.properties").read_text().splitlines() if not line.startswith("#"))
    assert props == {
        "engine": "Python", "option.entryPoint": "djl_python.transformers_neuronx", "option.rolling_batch": "tnx",
        "option.max_rolling_batch_size": "4", "option.n_positions": "4096", "option.tensor_parallel_degree": "8",
        "option.dtype": "fp16", "option.group_query_attention": "shard-over-heads",
        "option.compiled_graph_path": "/opt/ml/model/compiled",
    }
    assert json.loads(r.stdout)["env"] == {"OPTION_MODEL_ID": "/opt/ml/model", "OPTION_COMPILED_GRAPH_PATH": "/opt/ml/model/compiled"}
    # The written file round-trips through Kiln's own parser to the same key.
    again = run_kiln("lookup", "meta-llama/Llama-2-7b-hf", "--serving-properties", str(dest / "serving.properties"),
                     "--instance-type", "ml.inf2.24xlarge", "--consumer", CONSUMER, "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["key"] == stored_neuron["key"]


def test_neuron_cache_layout(stored_neuron: dict, tmp_path: Path) -> None:
    dest = tmp_path / "cache"
    r = run_kiln("fetch", "meta-llama/Llama-2-7b-hf", *stored_neuron["spec"], "--layout", "neuron-cache", "--dest", str(dest))
    assert r.returncode == 0, r.stderr
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    expected = []
    for h, data in NEFFS.items():
        module = f"neuronxcc-{COMPILER}/MODULE_{h}+{hashlib.md5(h.encode()).hexdigest()[:8]}"
        expected += [f"{module}/model.neff", f"{module}/model.done", f"{module}/compile_flags.json"]
        assert (dest / module / "model.neff").read_bytes() == data * 100
        assert (dest / module / "model.done").read_bytes() == b""
        assert json.loads((dest / module / "compile_flags.json").read_text()) == ["--model-type=transformer", "-O2"]
    assert files == sorted(expected)
    assert "env: NEURON_COMPILE_CACHE_URL=" + str(dest) in r.stdout


def test_ensure_from_env_inside_an_lmi_container(stored_neuron: dict, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    telemetry = tmp_path / "telemetry"  # a stand-in for the image's /opt/djl/bin/telemetry
    telemetry.write_text(f"{CONSUMER.split(':')[1]} inf2\n")
    env = dict(ROW_ENV, SERVING_FEATURES="vllm,lmi-dist,tnx", KILN_LMI_TELEMETRY_FILE=str(telemetry))
    env.pop("OPTION_ENTRYPOINT")  # the target comes from SERVING_FEATURES / rolling batch inference
    env["OPTION_ROLLING_BATCH"] = "tnx"
    r = run_kiln("ensure", "--from-env", "--instance-type", "ml.inf2.24xlarge", "--option", "gqa_strategy=shard-over-heads",
                 "--layout", "lmi", "--dest", str(dest), "--print-env", env=env)  # no pins: the image's SDK
    assert r.returncode == 0, r.stderr
    exports = dict(shlex.split(line)[1].split("=", 1) for line in r.stdout.splitlines() if line.startswith("export "))
    assert exports == {"OPTION_MODEL_ID": str(dest), "OPTION_COMPILED_GRAPH_PATH": f"{dest}/compiled"}
    assert (dest / "serving.properties").exists()
    # Made on a host for a container (no LMI image here), the paths are where SageMaker mounts the model.
    host_dest = tmp_path / "for-the-container"
    env.pop("KILN_LMI_TELEMETRY_FILE")
    r = run_kiln("ensure", "--from-env", "--instance-type", "ml.inf2.24xlarge", "--option", "gqa_strategy=shard-over-heads",
                 "--layout", "lmi", "--dest", str(host_dest), "--print-env", env=env)
    assert r.returncode == 0, r.stderr
    assert "option.compiled_graph_path=/opt/ml/model/compiled" in (host_dest / "serving.properties").read_text()
    assert "export OPTION_MODEL_ID=/opt/ml/model" in r.stdout
    # A non-matching environment is a miss that names the nearest stored entry and preset rows.
    miss = run_kiln("ensure", "--from-env", "--instance-type", "ml.inf2.24xlarge",
                    "--dest", str(tmp_path / "other"), env=dict(env, OPTION_TENSOR_PARALLEL_DEGREE="12"))
    assert miss.returncode == 1
    assert "tp_degree: want 12, have 8" in miss.stdout
    assert "nearest rows of preset jumpstart-llama2-neuron" in miss.stdout
    assert "llama-2-7b-hf/inf2.24xlarge/4096x4/tp12: matches this spec" in miss.stdout


def test_a_preset_row_environment_is_a_hit_once_built(llama2_cache: None, tmp_path: Path) -> None:
    snap = next(Path(os.environ["HF_HUB_CACHE"]).glob("models--meta-llama--Llama-2-7b-hf/snapshots/*"))
    art = _neuron_fixture_artifact(tmp_path, snap)
    row = next(r for r in load_preset("jumpstart-llama2-neuron", consumer=CONSUMER)
               if r.id == "llama-2-7b-hf/inf2.24xlarge/4096x4/tp8")
    flags = ["--target", "neuron", "--n-positions", str(row.n_positions), "--batch-size", str(row.batch_size),
             "--tp-degree", str(row.tp_degree), "--dtype", row.dtype, "--instance-type", row.instance_type,
             *CONSUMER_ARGS]
    assert run_kiln("lookup", "--from-env", "--instance-type", row.instance_type, *PIN_ARGS, env=row.lmi_env()).returncode == 1
    assert run_kiln("store", "put", str(art), row.model, *flags, *PIN_ARGS).returncode == 0
    hit = run_kiln("lookup", "--from-env", "--instance-type", row.instance_type, *PIN_ARGS, env=row.lmi_env())
    assert hit.returncode == 0, hit.stdout + hit.stderr


def test_select_picks_the_engine_that_fits_the_instance(llama2_cache: None, tmp_path: Path) -> None:
    snap = next(Path(os.environ["HF_HUB_CACHE"]).glob("models--meta-llama--Llama-2-7b-hf/snapshots/*"))
    art = _neuron_fixture_artifact(tmp_path, snap)
    keys = {}
    for tp, inst in ((2, "ml.inf2.xlarge"), (8, "ml.inf2.24xlarge"), (24, "ml.inf2.48xlarge")):
        r = run_kiln("store", "put", str(art), "meta-llama/Llama-2-7b-hf", "--target", "neuron", "--n-positions", "4096",
                     "--batch-size", "4", "--tp-degree", str(tp), "--dtype", "fp16", "--instance-type", inst, *PIN_ARGS, "--json")
        assert r.returncode == 0, r.stderr
        keys[tp] = json.loads(r.stdout)["key"]
    sel = run_kiln("lookup", "meta-llama/Llama-2-7b-hf", "--target", "neuron", "--instance-type", "ml.inf2.24xlarge",
                   "--select", "--json")
    assert sel.returncode == 0, sel.stdout + sel.stderr
    data = json.loads(sel.stdout)
    assert data["entry"]["key"] == keys[8]
    assert any("tp_degree 24 > 12 devices" in n for n in data["notes"])
    small = run_kiln("lookup", "meta-llama/Llama-2-7b-hf", "--target", "neuron", "--instance-type", "ml.inf2.xlarge", "--select", "--json")
    assert json.loads(small.stdout)["entry"]["key"] == keys[2]
    none = run_kiln("lookup", "meta-llama/Llama-2-7b-hf", "--target", "neuron", "--instance-type", "ml.inf2.xlarge",
                    "--batch-size", "8", "--select")
    assert none.returncode == 1 and "batch_size: want 8, have 4" in none.stdout


@pytest.mark.skipif(not __import__("importlib").util.find_spec("transformers_neuronx"),
                    reason="the Neuron SDK (neuronx-cc, transformers-neuronx) is not installed: it is served only from AWS's index")
def test_real_neuron_compile(tmp_path: Path) -> None:  # pragma: no cover - needs the SDK
    from ...tiny_models import make_tiny_model

    model = make_tiny_model("llama", tmp_path / "m")
    r = run_kiln("build", str(model), "--target", "neuron", "--n-positions", "64", "--tp-degree", "2",
                 "--instance-type", "ml.inf2.xlarge", "--json", timeout=3600)
    assert r.returncode == 0, r.stderr
    dest = tmp_path / "cache"
    assert run_kiln("fetch", str(model), "--target", "neuron", "--n-positions", "64", "--tp-degree", "2",
                    "--instance-type", "ml.inf2.xlarge", "--layout", "neuron-cache", "--dest", str(dest)).returncode == 0
    assert list(dest.glob("neuronxcc-*/MODULE_*/model.neff"))
    # The consumer's own call loads the saved graphs and compiles nothing: load(compiled) + to_neuron()
    # raises "Could not find a matching NEFF" rather than compile, and the compile cache stays empty.
    import subprocess
    import sys

    spec = ["--target", "neuron", "--n-positions", "64", "--tp-degree", "2", "--instance-type", "ml.inf2.xlarge"]
    plan = json.loads(run_kiln("build", str(model), *spec, "--dry-run", "--json").stdout)
    art = tmp_path / "art"
    assert run_kiln("fetch", str(model), *spec, "--dest", str(art)).returncode == 0
    load = ("import json, os, sys, importlib\n"
            "inv = json.loads(sys.argv[1]); os.environ.update(inv['env'])\n"
            "from transformers_neuronx import NeuronConfig\n"
            "mod, _, name = inv['class'].rpartition('.'); cls = getattr(importlib.import_module(mod), name)\n"
            "kw = dict(inv['kwargs']); kw['neuron_config'] = NeuronConfig(**kw['neuron_config'])\n"
            "m = cls.from_pretrained(sys.argv[2], **kw); m.load(sys.argv[3]); m.to_neuron()\n")
    cache = tmp_path / "fresh-cache"
    done = subprocess.run([sys.executable, "-c", load, json.dumps(plan["steps"][0]["invocation"]), str(art / "model"),
                           str(art / "compiled")], env={**os.environ, "NEURON_COMPILE_CACHE_URL": str(cache)},
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr
    assert not list(cache.glob("neuronxcc-*/MODULE_*"))  # nothing was compiled


# --------------------------------------------------------------------------- compile once per architecture


def _same_architecture_models() -> None:
    """A base model and its chat fine-tune: one config, one tensor signature, other weight bytes."""
    hub = Path(os.environ["HF_HUB_CACHE"])
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "max_position_embeddings": 4096,
           "num_hidden_layers": 32, "vocab_size": 32000, **LLAMA2["7b"]}
    for name, weights in (("base", b"base"), ("chat", b"chat")):
        header = json.dumps({"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}).encode()
        files = {"config.json": json.dumps(cfg).encode(), "tokenizer.json": b"{}",
                 "model.safetensors": len(header).to_bytes(8, "little") + header + weights}
        write_hf_cache_model(hub, f"acme/llama-{name}", files, commit=hashlib.sha1(name.encode()).hexdigest())


NEURON_SPEC = ["--target", "neuron", "--n-positions", "1024", "--tp-degree", "2", "--instance-type", "ml.inf2.xlarge"]


def _resolve(model: str, store: Store):  # type: ignore[no-untyped-def]
    from kiln.spec import Field

    fields = {"target": Field("neuron", "--target"), "n_positions": Field("1024", "--n-positions"),
              "tp_degree": Field("2", "--tp-degree"), "option.instance_type": Field("ml.inf2.xlarge", "--instance-type"),
              "model": Field(model, "MODEL")}
    return compute_key(spec_from_sources(fields), store=store, toolchain=PINS)


def test_a_finetune_shares_the_compiled_graphs_stage_and_has_its_own_artifact(store: Store) -> None:
    from kiln.targets import get_target

    _same_architecture_models()
    base, chat = _resolve("acme/llama-base", store), _resolve("acme/llama-chat", store)
    assert base.engine_key == chat.engine_key and base.engine_key is not None
    assert base.key != chat.key and base.architecture_digest == chat.architecture_digest
    engine, weights = get_target("neuron").build_steps(chat)
    assert engine.stage is not None and engine.stage.key == chat.engine_key and engine.needs_toolchain
    assert "--engine-only" in engine.argv(Path("/out"), {})
    # The weights step copies files: no Neuron SDK needed, and nothing compiled.
    assert not weights.needs_toolchain and not weights.compiles and weights.inputs == ("engine",)
    assert weights.argv(Path("/out"), {"engine": Path("/e")})[:2] == ["-m", "kiln.targets.neuron.assemble"]


def _stand_in_engine_stage(root: Path) -> Path:
    """What `neuron.worker --engine-only` writes (compiled/, neuron-graphs.json): a stand-in, no compiler ran."""
    (root / "no-model").mkdir()
    art = _neuron_fixture_artifact(root, root / "no-model")
    (art / "model").rmdir()
    (art / "engine.json").write_text(json.dumps({"format": 1, "target": "neuron"}))
    return art


def test_a_finetune_of_a_stored_architecture_builds_without_the_sdk(store: Store, tmp_path: Path) -> None:
    from kiln.manifests import make_record, utc_now
    from kiln.targets import get_target

    _same_architecture_models()
    chat = _resolve("acme/llama-chat", store)
    stage = get_target("neuron").engine_stage(_resolve("acme/llama-base", store))
    record = make_record(key=stage.key, inputs=stage.key_inputs(), spec=stage.entry_spec(), model=stage.entry_model(),
                         toolchain=stage.toolchain, started=utc_now(), duration_s=1.0, extra={"stage": "engine"})
    store.publish(_stand_in_engine_stage(tmp_path), key=stage.key, spec=stage.entry_spec(), model=stage.entry_model(),
                  toolchain=stage.toolchain, record=record)
    r = run_kiln("build", "acme/llama-chat", *NEURON_SPEC, *PIN_ARGS, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["compiled"] is False and out["engine"] == {"key": stage.key, "reused": True}
    assert out["key"] == chat.key
    dest = tmp_path / "dest"
    f = run_kiln("fetch", "acme/llama-chat", *NEURON_SPEC, *PIN_ARGS, "--dest", str(dest))
    assert f.returncode == 0, f.stderr
    assert {p.name for p in (dest / "compiled").iterdir()} == {f"{h}.neff" for h in NEFFS} | {"VERSION"}
    snapshot = next(Path(os.environ["HF_HUB_CACHE"]).glob("models--acme--llama-chat/snapshots/*"))
    assert (dest / "model" / "model.safetensors").read_bytes() == (snapshot / "model.safetensors").read_bytes()
    # The base model itself still needs the SDK for nothing either: its engine is the same stage.
    b = run_kiln("build", "acme/llama-base", *NEURON_SPEC, *PIN_ARGS, "--json")
    assert b.returncode == 0 and json.loads(b.stdout)["compiled"] is False, b.stderr


def test_assemble_refuses_what_is_not_an_engine_only_stage(tmp_path: Path) -> None:
    import subprocess
    import sys

    model = write_fake_model(tmp_path / "model")
    full = _neuron_fixture_artifact(tmp_path / "full", model)  # still has model/: a full worker output
    r = subprocess.run([sys.executable, "-m", "kiln.targets.neuron.assemble", "--engine-dir", str(full), "--model-dir",
                        str(model), "--out-dir", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode != 0 and "not an engine-only Neuron build" in r.stderr
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- consumers (issue 14)

LMI_ROW = ["meta-llama/Llama-2-7b-hf", "--target", "neuron", "--n-positions", "4096", "--batch-size", "4",
           "--tp-degree", "8", "--dtype", "fp16", "--instance-type", "ml.inf2.24xlarge"]


def _plan(*args: str, env: dict | None = None) -> dict:
    r = run_kiln("build", *args, "--dry-run", "--json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_an_lmi_consumer_names_the_toolchain_so_a_lookup_needs_no_pins(llama2_cache: None) -> None:
    r = run_kiln("key", *LMI_ROW, "--consumer", CONSUMER, "--explain", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["inputs"]["toolchain"]["neuronx-cc"] == "2.14.227.0"  # djl-serving v0.29.0 pytorch-inf2.Dockerfile
    assert out["inputs"]["toolchain"]["torch-neuronx"] == "2.1.2.2.2.0"
    assert out["toolchain_origin"]["transformers-neuronx"] == f"{CONSUMER} image"
    assert out["inputs"]["spec"]["options"]["consumer"] == CONSUMER


def test_the_dry_run_shows_the_consumers_exact_call_whatever_the_build_host_sets(llama2_cache: None) -> None:
    plan = _plan(*LMI_ROW, *CONSUMER_ARGS, env={"NEURON_CC_FLAGS": "-O3 --enable-fast-loading"})
    engine = plan["steps"][0]
    assert engine["name"] == "engine" and engine["stage"]["stored"] is False
    assert engine["invocation"]["env"] == {"NEURON_CC_FLAGS": "--logfile /tmp/compile.log --temp-dir=/tmp"}
    kwargs = engine["invocation"]["kwargs"]
    assert kwargs["n_positions"] == [4096] and kwargs["batch_size"] == 4  # continuous batching: a list
    assert kwargs["neuron_config"] == {"continuous_batching": {"batch_size_for_shared_caches": 4}}
    # The worker is given exactly that call.
    from kiln.targets import get_target

    res = compute_key(spec_from_sources({k: v for k, v in _row_fields().items()}), store=Store())
    argv = get_target("neuron").worker_argv(res, Path("/out"), engine_only=True)
    assert json.loads(argv[argv.index("--invocation") + 1]) == engine["invocation"]


def _row_fields() -> dict:
    from kiln.spec import Field

    values = dict(zip(["target", "n_positions", "batch_size", "tp_degree", "dtype"], LMI_ROW[2::2]))
    fields = {k.lstrip("-").replace("-", "_"): Field(v, k) for k, v in zip(LMI_ROW[1::2], LMI_ROW[2::2])}
    fields = {("option.instance_type" if k == "instance_type" else k): f for k, f in fields.items()}
    fields["model"] = Field(LMI_ROW[0], "MODEL")
    fields["option.consumer"] = Field(CONSUMER, "--consumer")
    fields["option.rolling_batch"] = Field("auto", "--option rolling_batch")
    assert values["target"] == "neuron"
    return fields


@pytest.mark.parametrize("change", [["--consumer", "lmi-neuronx:0.30.0"], ["--option", "rolling_batch=disable"],
                                    ["--option", "rolling_batch_strategy=naive_rolling_batch"]])
def test_what_changes_the_consumers_graphs_changes_the_key(llama2_cache: None, change: list[str]) -> None:
    base = _plan(*LMI_ROW, *CONSUMER_ARGS)
    args = [a for a in CONSUMER_ARGS if not (change[0] == "--consumer" and a in ("--consumer", CONSUMER))]
    other = _plan(*LMI_ROW, *args, *change)
    assert other["key"] != base["key"]
    assert other["steps"][0]["invocation"] != base["steps"][0]["invocation"]


def test_a_consumer_that_would_not_load_the_graphs_is_refused_before_work(llama2_cache: None) -> None:
    r = run_kiln("build", *LMI_ROW, "--consumer", "lmi-neuronx:0.27.0", "--option", "rolling_batch=auto", "--dry-run")
    assert r.returncode == 2 and "lmi-dist" in r.stderr and "Traceback" not in r.stderr
    r = run_kiln("build", *LMI_ROW, "--consumer", "lmi-neuronx:0.27.0", "--option", "rolling_batch=vllm", "--dry-run")
    assert r.returncode == 2 and "does not serve vLLM" in r.stderr
    r = run_kiln("build", *LMI_ROW, "--consumer", "lmi-neuronx:9.9.9", "--dry-run")
    assert r.returncode == 2 and "lmi-neuronx:0.29.0" in r.stderr and "Traceback" not in r.stderr


def test_the_lmi_layout_names_the_batching_the_graphs_were_compiled_for(llama2_cache: None, tmp_path: Path) -> None:
    snap = next(Path(os.environ["HF_HUB_CACHE"]).glob("models--meta-llama--Llama-2-7b-hf/snapshots/*"))
    art = _neuron_fixture_artifact(tmp_path, snap)  # a stand-in for the worker's output: no compiler ran
    invocation = _plan(*LMI_ROW, *CONSUMER_ARGS)["steps"][0]["invocation"]
    (art / "engine.json").write_text(json.dumps({"format": 2, "target": "neuron", "invocation": invocation}))
    assert run_kiln("store", "put", str(art), *LMI_ROW, *CONSUMER_ARGS).returncode == 0
    dest = tmp_path / "lmi"
    r = run_kiln("fetch", *LMI_ROW, *CONSUMER_ARGS, "--layout", "lmi", "--dest", str(dest))
    assert r.returncode == 0, r.stderr
    props = dict(line.split("=", 1) for line in (dest / "serving.properties").read_text().splitlines()
                 if not line.startswith("#"))
    assert props["option.rolling_batch"] == "tnx" and props["option.rolling_batch_strategy"] == "continuous_batching"


def test_matrix_rows_name_their_consumer_and_need_no_pins(llama2_cache: None, tmp_path: Path) -> None:
    m = tmp_path / "m.yaml"
    m.write_text("models: [meta-llama/Llama-2-7b-hf]\ntargets: [neuron]\nn_positions: [4096]\nbatch_sizes: [4]\n"
                 "tp_degrees: [8]\ndtypes: [fp16]\ninstance_types: [ml.inf2.24xlarge]\n"
                 "consumers: [lmi-neuronx:0.29.0, lmi-neuronx:0.30.0]\noptions: {rolling_batch: auto}\n")
    r = run_kiln("matrix", "plan", str(m), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(r.stdout)["rows"]
    keys = {row["row"].split("consumer=")[1].split("+")[0]: row["key"] for row in rows}
    for consumer, key in keys.items():
        direct = run_kiln("key", *LMI_ROW, "--consumer", consumer, "--option", "rolling_batch=auto")
        assert direct.returncode == 0 and direct.stdout.strip() == key, direct.stderr
    assert len(set(keys.values())) == 2


def test_the_neuron_cache_layout_serves_the_captured_modules_verbatim(llama2_cache: None, tmp_path: Path) -> None:
    snap = next(Path(os.environ["HF_HUB_CACHE"]).glob("models--meta-llama--Llama-2-7b-hf/snapshots/*"))
    art = _neuron_fixture_artifact(tmp_path, snap)  # a stand-in for the worker's output: no compiler ran
    module = art / "neuron-cache" / f"neuronxcc-{COMPILER}" / "MODULE_0a1b2c3d4e5f60718293+abcdef01"
    module.mkdir(parents=True)
    written = {"model.neff": b"neff-context" * 100, "model.hlo_module.pb": b"hlo", "compile_flags.json": b'["-O2"]',
               "model.done": b""}
    for name, data in written.items():
        (module / name).write_bytes(data)
    assert run_kiln("store", "put", str(art), *LMI_ROW, *CONSUMER_ARGS).returncode == 0
    dest = tmp_path / "cache"
    r = run_kiln("fetch", *LMI_ROW, *CONSUMER_ARGS, "--layout", "neuron-cache", "--dest", str(dest))
    assert r.returncode == 0, r.stderr
    got = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert got == {f"neuronxcc-{COMPILER}/{module.name}/{n}": d for n, d in written.items()}


def test_a_saved_graph_the_cache_did_not_capture_fails_the_build(tmp_path: Path) -> None:
    from kiln.targets.neuron.worker import cache_modules

    cache, compiled = tmp_path / "cache", tmp_path / "compiled"
    (cache / "neuronxcc-2.14.227.0" / "MODULE_1+a").mkdir(parents=True)
    (cache / "neuronxcc-2.14.227.0" / "MODULE_1+a" / "model.neff").write_bytes(b"one")
    compiled.mkdir()
    (compiled / "aaaa.neff").write_bytes(b"one")
    assert cache_modules(cache, compiled) == ("2.14.227.0", [{"neff": "compiled/aaaa.neff", "module": "MODULE_1+a"}])
    (compiled / "bbbb.neff").write_bytes(b"two")
    with pytest.raises(ValueError, match="bbbb.neff has no module"):
        cache_modules(cache, compiled)


def test_a_checkpoint_without_safetensors_is_refused_before_work(tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "bin", config={"architectures": ["LlamaForCausalLM"], "num_attention_heads": 32,
                                                      "max_position_embeddings": 4096})
    for f in model.glob("*.safetensors"):
        f.rename(f.with_name("pytorch_model.bin"))
    r = run_kiln("build", str(model), "--target", "neuron", "--n-positions", "1024", "--tp-degree", "2",
                 "--instance-type", "ml.inf2.xlarge", "--dry-run")
    assert r.returncode == 2 and "has no .safetensors weights" in r.stderr and "Traceback" not in r.stderr


def test_graphs_compiled_under_other_flags_tell_the_container_to_use_them(llama2_cache: None, tmp_path: Path) -> None:
    snap = next(Path(os.environ["HF_HUB_CACHE"]).glob("models--meta-llama--Llama-2-7b-hf/snapshots/*"))
    art = _neuron_fixture_artifact(tmp_path, snap)
    flags = "--logfile /tmp/compile.log --enable-fast-loading"
    spec = [*LMI_ROW[1:], *CONSUMER_ARGS, "--option", f"neuron_cc_flags={flags}"]
    assert run_kiln("store", "put", str(art), LMI_ROW[0], *spec).returncode == 0
    r = run_kiln("fetch", LMI_ROW[0], *spec, "--layout", "lmi", "--dest", str(tmp_path / "lmi"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["env"]["NEURON_CC_FLAGS"] == flags
    # The image's own flags are no option at all: the same artifact as without.
    same = run_kiln("key", LMI_ROW[0], *LMI_ROW[1:], *CONSUMER_ARGS, "--option",
                    "neuron_cc_flags=--logfile /tmp/compile.log --temp-dir=/tmp")
    plain = run_kiln("key", LMI_ROW[0], *LMI_ROW[1:], *CONSUMER_ARGS)
    assert same.returncode == 0 and same.stdout == plain.stdout


def test_a_lookup_from_lmi_configuration_without_a_consumer_tries_each(llama2_cache: None, tmp_path: Path) -> None:
    """build/key/ensure need the consumer; a lookup leaves it open and says whose artifact it found."""
    snap = next(Path(os.environ["HF_HUB_CACHE"]).glob("models--meta-llama--Llama-2-7b-hf/snapshots/*"))
    art = _neuron_fixture_artifact(tmp_path, snap)
    env = {k: v for k, v in ROW_ENV.items() if k != "OPTION_KILN_CONSUMER"}
    lookup = ["lookup", "--from-env", "--instance-type", "ml.inf2.24xlarge"]
    miss = run_kiln(*lookup, env=env)
    assert miss.returncode == 1, miss.stderr
    assert "consumer open" in miss.stdout and "lmi-neuronx:0.26.0" in miss.stdout
    # 0.27 sends rolling_batch=auto to lmi-dist: said on the miss, as a consumer not looked up, and why.
    assert "lmi-neuronx:0.27.0 not looked up: " in miss.stdout and "lmi-dist" in miss.stdout
    flags = [*LMI_ROW[1:], "--option", "rolling_batch=auto"]
    assert run_kiln("store", "put", str(art), LMI_ROW[0], *flags, "--consumer", "lmi-neuronx:0.28.0").returncode == 0
    hit = run_kiln(*lookup, "--json", env=env)
    assert hit.returncode == 0, hit.stdout + hit.stderr
    doc = json.loads(hit.stdout)
    assert doc["spec"]["options"]["consumer"] == "lmi-neuronx:0.28.0"
    assert any("lmi-neuronx:0.28.0 holds it" in n for n in doc["notes"])
    text = run_kiln(*lookup, env=env)
    assert text.returncode == 0 and "neuron for lmi-neuronx:0.28.0" in text.stdout
    # Naming the consumer is still an exact lookup: another release misses.
    assert run_kiln(*lookup, env=dict(env, OPTION_KILN_CONSUMER="lmi-neuronx:0.29.0")).returncode == 1
    # ls filters by consumer and shows it.
    ls = run_kiln("ls", "--consumer", "lmi-neuronx")
    assert ls.returncode == 0 and "for lmi-neuronx:0.28.0" in ls.stdout
    assert "no artifacts" in run_kiln("ls", "--consumer", "lmi-neuronx:0.30.0").stdout
    # build and key still refuse to guess.
    r = run_kiln("key", "--from-env", "--instance-type", "ml.inf2.24xlarge", env=env)
    assert r.returncode == 2 and "must name its consumer" in r.stderr


def test_auto_at_twelve_and_more_is_vllm_serving_the_same_graphs(llama2_cache: None, tmp_path: Path) -> None:
    """0.30+: rolling_batch=auto with max_rolling_batch_size ≥ 12 is vllm (LmiConfigRecommender), which compiles
    with TNXModelLoader.load_unwrapped_model() and hands the model to vLLM: the graphs of the tnx call, keyed
    apart (the layout must say vllm), and the lmi layout names it."""
    row16 = [a if a != "4" else "16" for a in LMI_ROW]
    auto = _plan(*row16, "--consumer", "lmi-neuronx:0.30.0", "--option", "rolling_batch=auto")
    tnx = _plan(*row16, "--consumer", "lmi-neuronx:0.30.0", "--option", "rolling_batch=tnx")
    assert auto["steps"][0]["invocation"] == tnx["steps"][0]["invocation"]
    assert auto["steps"][0]["invocation"]["kwargs"]["neuron_config"]["continuous_batching"] == \
        {"batch_size_for_shared_caches": 16}
    assert auto["key"] != tnx["key"]
    snap = next(Path(os.environ["HF_HUB_CACHE"]).glob("models--meta-llama--Llama-2-7b-hf/snapshots/*"))
    spec = [*row16[1:], "--consumer", "lmi-neuronx:0.30.0", "--option", "rolling_batch=auto"]
    assert run_kiln("store", "put", str(_neuron_fixture_artifact(tmp_path, snap)), row16[0], *spec).returncode == 0
    dest = tmp_path / "lmi"
    r = run_kiln("fetch", row16[0], *spec, "--layout", "lmi", "--dest", str(dest))
    assert r.returncode == 0, r.stderr
    props = (dest / "serving.properties").read_text()
    assert "option.rolling_batch=vllm" in props, props


def test_the_lmi_layout_of_static_batch_graphs_names_option_batch_size(llama2_cache: None, tmp_path: Path) -> None:
    """Rolling batch disabled, LMI compiles option.batch_size (max_rolling_batch_size is not read): the layout
    must say batch_size, or the container compiles batch 1 and misses these graphs."""
    snap = next(Path(os.environ["HF_HUB_CACHE"]).glob("models--meta-llama--Llama-2-7b-hf/snapshots/*"))
    spec = [*LMI_ROW[1:], "--consumer", "lmi-neuronx:0.32.0", "--option", "rolling_batch=disable"]
    put = run_kiln("store", "put", str(_neuron_fixture_artifact(tmp_path, snap)), LMI_ROW[0], *spec, "--json")
    assert put.returncode == 0, put.stderr
    dest = tmp_path / "lmi"
    assert run_kiln("fetch", LMI_ROW[0], *spec, "--layout", "lmi", "--dest", str(dest)).returncode == 0
    props = dict(line.split("=", 1) for line in (dest / "serving.properties").read_text().splitlines()
                 if not line.startswith("#"))
    assert props["option.rolling_batch"] == "disable" and props["option.batch_size"] == "4"
    assert "option.max_rolling_batch_size" not in props
    again = run_kiln("lookup", LMI_ROW[0], "--serving-properties", str(dest / "serving.properties"),
                     "--instance-type", "ml.inf2.24xlarge", "--consumer", "lmi-neuronx:0.32.0", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["key"] == json.loads(put.stdout)["key"]


def test_an_open_lookup_that_no_release_would_load_is_one_clear_error(llama2_cache: None) -> None:
    env = {k: v for k, v in ROW_ENV.items() if k != "OPTION_KILN_CONSUMER"}
    r = run_kiln("lookup", "--from-env", "--instance-type", "ml.inf2.24xlarge", env=dict(env, OPTION_ROLLING_BATCH="0"))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "lmi-neuronx:0.34.0" in r.stderr and "option.rolling_batch='0'" in r.stderr
