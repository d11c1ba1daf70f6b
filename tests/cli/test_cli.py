"""The CLI as a user runs it: real subprocesses, real store, exit codes, messages."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import run_kiln, write_hf_cache_model


def _missing_toolchain_pins(**versions: str) -> list[str]:
    """``--toolchain NAME=VERSION`` for each package of ``versions`` not installed here.

    A serving container has Kiln's light core only (no torch, no transformers): the torch-aoti
    key cannot be detected there, so it is pinned, as a deployment pins it. Where the packages
    are installed nothing is pinned and the tests exercise the detected toolchain, as before.
    """
    pins = []
    for dist, version in versions.items():
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pins += ["--toolchain", f"{dist}={version}"]
    return pins


AOTI = ["--target", "torch-aoti", "--n-positions", "256", *_missing_toolchain_pins(torch="2.13.0", transformers="5.0.0")]


def _artifact(tmp_path: Path, name: str = "art", payload: bytes = b"engine") -> Path:
    d = tmp_path / name
    (d / "sub").mkdir(parents=True)
    (d / "engine.pt2").write_bytes(payload)
    (d / "sub" / "weights.safetensors").write_bytes(os.urandom(50_000))
    return d


@pytest.mark.light
def test_put_lookup_fetch_round_trip(tmp_path: Path, fake_model: Path) -> None:
    art = _artifact(tmp_path)
    put = run_kiln("store", "put", str(art), str(fake_model), *AOTI, "--json")
    assert put.returncode == 0, put.stderr
    key = json.loads(put.stdout)["key"]

    hit = run_kiln("lookup", str(fake_model), *AOTI, "--json")
    assert hit.returncode == 0, hit.stderr
    data = json.loads(hit.stdout)
    assert data["hit"] and data["key"] == key

    dest = tmp_path / "deploy"
    fetched = run_kiln("fetch", str(fake_model), *AOTI, "--dest", str(dest))
    assert fetched.returncode == 0, fetched.stderr
    assert (dest / "engine.pt2").read_bytes() == b"engine"
    assert (dest / "sub" / "weights.safetensors").read_bytes() == (art / "sub" / "weights.safetensors").read_bytes()

    ls = run_kiln("ls", "--json")
    assert [e["key"] for e in json.loads(ls.stdout)] == [key]
    show = run_kiln("show", key[:10])
    assert show.returncode == 0 and "sub/weights.safetensors" in show.stdout
    assert run_kiln("verify").returncode == 0


@pytest.mark.light
def test_miss_explains_the_nearest_entries(tmp_path: Path, fake_model: Path) -> None:
    assert run_kiln("store", "put", str(_artifact(tmp_path)), str(fake_model), *AOTI, "--batch-size", "4").returncode == 0
    miss = run_kiln("lookup", str(fake_model), *AOTI, "--batch-size", "8")
    assert miss.returncode == 1
    assert "batch_size: want 8, have 4" in miss.stdout
    dt = run_kiln("lookup", str(fake_model), *AOTI, "--batch-size", "4", "--dtype", "bf16", "--json")
    assert dt.returncode == 1
    assert any("dtype: want bf16, have fp32" in line for line in json.loads(dt.stdout)["explanation"])


@pytest.mark.light
def test_changed_weights_are_a_miss_that_says_so(tmp_path: Path) -> None:
    hub = Path(os.environ["HF_HUB_CACHE"])
    cfg = json.dumps({"architectures": ["LlamaForCausalLM"], "num_attention_heads": 4, "max_position_embeddings": 512}).encode()
    write_hf_cache_model(hub, "org/m", {"config.json": cfg, "model.safetensors": b"v1" * 100}, commit="1" * 40)
    assert run_kiln("store", "put", str(_artifact(tmp_path)), "org/m", *AOTI).returncode == 0
    assert run_kiln("lookup", "org/m", *AOTI).returncode == 0
    write_hf_cache_model(hub, "org/m", {"config.json": cfg, "model.safetensors": b"v2" * 100}, commit="2" * 40)
    miss = run_kiln("lookup", "org/m", *AOTI)
    assert miss.returncode == 1
    assert "other weights" in miss.stdout and "commit 2222" in miss.stdout
    # The old revision, pinned, is still a hit.
    assert run_kiln("lookup", "org/m@" + "1" * 40, *AOTI).returncode == 0


@pytest.mark.light
def test_toolchain_difference_is_a_miss_that_names_it(tmp_path: Path, fake_model: Path) -> None:
    art = _artifact(tmp_path)
    assert run_kiln("store", "put", str(art), str(fake_model), *AOTI, "--toolchain", "torch=2.12.0").returncode == 0
    miss = run_kiln("lookup", str(fake_model), *AOTI)
    assert miss.returncode == 1
    assert "toolchain torch: want" in miss.stdout and "have 2.12.0" in miss.stdout
    assert "tied to the compiler version" in miss.stdout


@pytest.mark.light
def test_an_engine_of_another_format_is_a_miss(tmp_path: Path, fake_model: Path) -> None:
    """What export.py writes is keyed (the target's static toolchain): after a Kiln upgrade that changes
    the engine format, an engine of the old one is never served, and the miss says why."""
    from kiln.targets.torch_aoti._facts import ENGINE_FORMAT, ENGINE_FORMAT_VERSION

    old = str(ENGINE_FORMAT_VERSION - 1)
    art = _artifact(tmp_path)
    assert run_kiln("store", "put", str(art), str(fake_model), *AOTI, "--toolchain", f"{ENGINE_FORMAT}={old}").returncode == 0
    miss = run_kiln("lookup", str(fake_model), *AOTI)
    assert miss.returncode == 1
    assert f"toolchain {ENGINE_FORMAT}: want {ENGINE_FORMAT_VERSION}" in miss.stdout and f"have {old}" in miss.stdout
    assert run_kiln("lookup", str(fake_model), *AOTI, "--toolchain", f"{ENGINE_FORMAT}={old}").returncode == 0


@pytest.mark.light
def test_lookup_where_the_toolchain_is_not_installed(tmp_path: Path, fake_model: Path) -> None:
    spec = ["--target", "neuron", "--n-positions", "2048", "--tp-degree", "2", "--instance-type", "ml.inf2.xlarge"]
    pins = ["--toolchain", "neuronx-cc=2.15.128", "--toolchain", "transformers-neuronx=0.12.313", "--toolchain",
            "torch-neuronx=2.1.2.2.3.0,libneuronxla=2.0.4986.0"]
    # Without the SDK the key cannot be computed unpinned: a clear error, not a guess.
    no_pin = run_kiln("store", "put", str(_artifact(tmp_path)), str(fake_model), *spec)
    assert no_pin.returncode == 2 and "--toolchain neuronx-cc=VERSION" in no_pin.stderr
    assert run_kiln("store", "put", str(_artifact(tmp_path, "a2")), str(fake_model), *spec, *pins).returncode == 0
    hit = run_kiln("lookup", str(fake_model), *spec, "--json")
    assert hit.returncode == 0, hit.stdout + hit.stderr
    data = json.loads(hit.stdout)
    assert data["entry"]["toolchain"]["neuronx-cc"] == "2.15.128"
    assert data["toolchain_origin"]["neuronx-cc"] == "unknown"
    assert run_kiln("lookup", str(fake_model), *spec, "--toolchain", "neuronx-cc=2.15.128").returncode == 0
    pinned_other = run_kiln("lookup", str(fake_model), *spec, "--toolchain", "neuronx-cc=2.16.0")
    assert pinned_other.returncode == 1 and "toolchain neuronx-cc: want 2.16.0, have 2.15.128" in pinned_other.stdout


@pytest.mark.light
def test_same_key_from_flags_env_and_properties(tmp_path: Path, fake_model: Path) -> None:
    flags = run_kiln("key", str(fake_model), "--target", "neuron", "--n-positions", "2048", "--tp-degree", "4",
                     "--batch-size", "4", "--dtype", "fp16", "--consumer", "lmi-neuronx:0.29.0", "--option", "rolling_batch=tnx",
                     "--toolchain", "neuronx-cc=2.15,transformers-neuronx=0.12,torch-neuronx=2.1,libneuronxla=2.0,hardware=neuron-inf2")
    env = run_kiln("key", "--from-env", "--toolchain", "neuronx-cc=2.15,transformers-neuronx=0.12,torch-neuronx=2.1,libneuronxla=2.0,hardware=neuron-inf2", env={
        "HF_MODEL_ID": str(fake_model), "OPTION_ROLLING_BATCH": "tnx", "OPTION_N_POSITIONS": "2048",
        "OPTION_TENSOR_PARALLEL_DEGREE": "4", "OPTION_MAX_ROLLING_BATCH_SIZE": "4", "OPTION_DTYPE": "fp16",
        "OPTION_KILN_CONSUMER": "lmi-neuronx:0.29.0"})
    props = tmp_path / "serving.properties"
    props.write_text(f"engine = Python\noption.model_id = {fake_model}\noption.entryPoint=djl_python.transformers_neuronx\n"
                     "option.n_positions=2048\noption.tensor_parallel_degree=4\noption.max_rolling_batch_size=4\noption.dtype=fp16\n"
                     "option.rolling_batch=tnx\noption.kiln_consumer=lmi-neuronx:0.29.0\n")
    prop = run_kiln("key", "--serving-properties", str(props), "--toolchain", "neuronx-cc=2.15,transformers-neuronx=0.12,torch-neuronx=2.1,libneuronxla=2.0,hardware=neuron-inf2")
    assert flags.returncode == env.returncode == prop.returncode == 0, flags.stderr + env.stderr + prop.stderr
    assert flags.stdout.strip() == env.stdout.strip() == prop.stdout.strip()


@pytest.mark.light
def test_key_explain_lists_inputs_and_ignored(tmp_path: Path, fake_model: Path) -> None:
    props = tmp_path / "serving.properties"
    props.write_text(f"engine=MPI\noption.model_id={fake_model}\noption.rolling_batch=trtllm\noption.max_input_len=512\n"
                     "option.max_output_len=512\noption.tensor_parallel_degree=2\noption.enable_streaming=true\n"
                     "option.kiln_consumer=lmi-trtllm:0.29.0\n")  # 0.29: the engine is input + output long
    out = run_kiln("key", "--serving-properties", str(props), "--explain", "--json",
                   "--toolchain", "tensorrt_llm=0.12.0,tensorrt=10.3.0,hardware=cuda-sm90")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["inputs"]["spec"]["n_positions"] == 1024
    assert data["inputs"]["spec"]["tp_degree"] == 2
    assert data["inputs"]["toolchain"]["tensorrt_llm"] == "0.12.0"
    assert {"engine", "option.enable_streaming"} <= {i["source"].split(" ")[0] for i in data["ignored"]}


@pytest.mark.light
@pytest.mark.parametrize(
    "args,env,message",
    [
        (["--target", "torch-aoti", "--n-positions", "lots"], {}, "--n-positions='lots' must be a positive integer"),
        (["--target", "torch-aoti", "--n-positions", "99999"], {}, "exceeds the model's max_position_embeddings=4096"),
        (["--target", "trtllm", "--tp-degree", "3"], {}, "tp_degree=3 does not divide the model's 8 attention heads"),
        (["--target", "trtllm", "--tp-degree", "8", "--n-positions", "128"], {}, None),
        (["--target", "trtllm", "--smoothquant", "2"], {}, "outside [0, 1]"),
        (["--target", "torch-aoti", "--smoothquant", "0.5"], {}, "not supported by the torch-aoti target"),
        (["--target", "torch-aoti", "--tp-degree", "2"], {}, "at most 1 device"),
        (["--target", "tpu"], {}, "'tpu' is not a Kiln target"),
        (["--target", "neuron", "--instance-type", "ml.inf2.xlarge", "--tp-degree", "4"], {}, "exceeds the 2 NeuronCores"),
        (["--target", "neuron", "--instance-type", "ml.inf9.huge"], {}, "not a known Inferentia2/Trainium instance"),
        (["--target", "torch-aoti", "--option", "colour=blue"], {}, "target option colour='blue' is not known"),
        (["--target", "torch-aoti", "--per-token"], {}, "SmoothQuant is not enabled"),
    ],
)
def test_bad_input_is_a_clear_error_without_traceback(fake_model: Path, args: list[str], env: dict, message: str | None) -> None:
    # Pin the toolchains these machines lack, so validation (not the missing SDK) speaks.
    pins = {"trtllm": ["--toolchain", "tensorrt_llm=1,tensorrt=1,hardware=cuda-sm90"],
            "neuron": ["--toolchain", "neuronx-cc=2,transformers-neuronx=1,torch-neuronx=1,libneuronxla=2"]}.get(args[1], [])
    r = run_kiln("lookup", str(fake_model), *args, *pins, env=env)
    if message is None:  # tp=8 with 4 KV heads replicates them: valid
        assert r.returncode == 1, r.stderr
        return
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.light
def test_bad_env_and_properties_exit_2_without_traceback(tmp_path: Path, fake_model: Path) -> None:
    r = run_kiln("lookup", "--from-env", env={"HF_MODEL_ID": str(fake_model), "OPTION_ROLLING_BATCH": "trtllm",
                                              "OPTION_TENSOR_PARALLEL_DEGREE": "max"})
    assert r.returncode == 2 and "OPTION_TENSOR_PARALLEL_DEGREE=max" in r.stderr and "Traceback" not in r.stderr
    props = tmp_path / "serving.properties"
    props.write_text(f"option.model_id={fake_model}\noption.rolling_batch=trtllm\noption.max_rolling_batch_size=zero\n")
    r = run_kiln("lookup", "--serving-properties", str(props))
    assert r.returncode == 2 and "option.max_rolling_batch_size (serving.properties:3)='zero'" in r.stderr
    r = run_kiln("lookup", "--serving-properties", str(tmp_path / "missing.properties"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = run_kiln("lookup", "--from-env", env={})
    assert r.returncode == 2 and "no target given" in r.stderr


@pytest.mark.light
def test_missing_model_is_exit_2(tmp_path: Path) -> None:
    r = run_kiln("lookup", "org/not-cached", *AOTI)
    assert r.returncode == 2 and "HF_HUB_OFFLINE=1" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.light
def test_lookup_never_imports_torch_nor_the_signing_library(tmp_path: Path, fake_model: Path) -> None:
    assert run_kiln("store", "put", str(_artifact(tmp_path)), str(fake_model), *AOTI).returncode == 0
    code = (
        "import sys\n"
        "from kiln.cli import main\n"
        "try:\n"
        f"    main(['lookup', {str(fake_model)!r}, *{AOTI!r}])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'tensorrt_llm', 'transformers_neuronx', 'numpy', 'safetensors', 'model_signing', 'sigstore'))\n"
        "heavy += sorted(m for m in sys.modules if m == 'kiln.cache.remotes.oci')  # http.client + ssl: registries only\n"
        "print('HEAVY', heavy)\n"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout


@pytest.mark.light
def test_fetch_refuses_a_non_empty_dest_unless_forced(tmp_path: Path, fake_model: Path) -> None:
    assert run_kiln("store", "put", str(_artifact(tmp_path)), str(fake_model), *AOTI).returncode == 0
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "old.txt").write_text("keep me")
    r = run_kiln("fetch", str(fake_model), *AOTI, "--dest", str(dest))
    assert r.returncode == 2 and "old.txt is not part of the artifact" in r.stderr and "--force" in r.stderr
    assert (dest / "old.txt").read_text() == "keep me"
    r = run_kiln("fetch", str(fake_model), *AOTI, "--dest", str(dest), "--force")
    assert r.returncode == 0 and (dest / "engine.pt2").exists() and not (dest / "old.txt").exists()


def test_put_of_empty_dir_is_refused(tmp_path: Path, fake_model: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_kiln("store", "put", str(empty), str(fake_model), *AOTI)
    assert r.returncode == 2 and "never published" in r.stderr
    assert json.loads(run_kiln("ls", "--json").stdout) == []


# What a local `kiln lookup` hit must not import (issue 18: a hit within +60 ms of `python -c pass`,
# docs/benchmarks.md "Lookup"). Each was on that path once; each is imported where it is used.
_NOT_ON_A_LOOKUP = (
    "kiln.targets.trtllm", "kiln.targets.neuron",  # one target asked for, one imported
    "kiln.trust",  # no policy: no signature is read
    "kiln.cache._gc", "kiln.cache._verify", "kiln.cache._publish", "kiln.cache._sync", "kiln.cache.remotes",
    "kiln.models._hub_api", "kiln.models._s3model", "kiln.lmi", "kiln.presets",
    "kiln.cli.build", "kiln.cli.remote", "kiln.cli.matrix", "kiln.cli.signing", "kiln.cli.maintenance",
    "logging", "shutil", "tempfile", "secrets", "socket", "subprocess", "zipfile", "concurrent.futures",
    "importlib.resources", "importlib.metadata",
)


@pytest.mark.light
def test_a_local_lookup_hit_imports_only_what_it_uses(tmp_path: Path, fake_model: Path) -> None:
    assert run_kiln("store", "put", str(_artifact(tmp_path)), str(fake_model), *AOTI).returncode == 0
    probe = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from kiln.cli import main\n"
        "try:\n"
        f"    main(['lookup', {str(fake_model)!r}, *{AOTI!r}])\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "sys.stderr.write(f'exit {code}\\n')\n"
        "print('\\n'.join(sorted(set(sys.modules) - before)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "exit 0" in done.stderr, done.stderr  # a hit
    imported = set(done.stdout.split())
    assert "kiln.targets.torch_aoti" in imported and "kiln.core.find" in imported  # the probe saw the lookup
    assert sorted(m for m in _NOT_ON_A_LOOKUP if m in imported) == []


@pytest.mark.light
def test_every_command_is_registered_under_its_own_name() -> None:
    """The CLI imports a command's module when it runs (KilnGroup.add_lazy_command); the table of
    names must match the commands, or `kiln NAME` would run another command or none."""
    import click

    from kiln.cli import cli

    ctx = click.Context(cli)
    names = cli.list_commands(ctx)
    assert {"lookup", "fetch", "build", "ensure", "push", "pull", "gc", "matrix", "sign"} <= set(names)
    for name in names:
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name, name
