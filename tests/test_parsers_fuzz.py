"""Generated input through every spec parser: CLI spec flags, OPTION_* environments, serving.properties.

Property (what users and scripts rely on): whatever the value — huge integers, empty strings,
unicode, control characters, negative numbers, floats, NaN, very long strings, random bytes
in files — `kiln key` / `kiln lookup` either works (exit 0 hit/key, 1 miss) or refuses with
exit 2 and exactly one stderr line starting ``kiln: error:``; never a traceback, and nothing
is written under KILN_HOME.

The runs are in-process (click's CliRunner through the real ``kiln.cli`` group, so hundreds of
examples take seconds), plus a few real subprocesses. The model is a real directory whose
hashes were memoised once up front, so a run that works writes nothing either. The working
directory and HOME are empty directories, and generated model refs that name an existing
directory are skipped: a ref such as ``/`` or ``~`` would hash a whole filesystem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

hypothesis = pytest.importorskip("hypothesis")
from click.testing import CliRunner  # noqa: E402
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kiln.cli import cli  # noqa: E402

from .conftest import run_kiln, write_fake_model  # noqa: E402

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# ---------------------------------------------------------------------------- values

_CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")  # argv and env cannot hold NUL
NUMBERS = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.integers(10**6, 10**40).map(str),
    st.integers(4000, 6000).map(lambda n: "1" + "0" * n),  # past Python's int-conversion digit limit
    st.integers(1, 5000).map(lambda n: "9" * n + ".0"),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "nan", "NaN", "inf", "-inf", "1e400", "0x10", "1_000", "٤٠٩٦", "４０９６", "4096.0",
                     "-0", "+5", "0", "-1", "true", "max", "64", "32", "1", "2", "4096", "0.5", "1.5"]),
)
TEXT = st.text(_CHARS, max_size=40)
LONG = st.one_of(st.integers(1000, 50_000).map(lambda n: "a" * n), st.text(_CHARS, min_size=300, max_size=2000))
VALUE = st.one_of(NUMBERS, NUMBERS, TEXT, LONG)

# ---------------------------------------------------------------------------- the world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("fuzz")
    model = write_fake_model(root / "model")
    home, cwd, user_home = root / "kiln-home", root / "cwd", root / "user-home"
    cwd.mkdir()
    user_home.mkdir()
    env = {"KILN_HOME": str(home), "HOME": str(user_home), "HF_HUB_OFFLINE": "1",
           "HF_HUB_CACHE": str(root / "hf"), "HF_HOME": str(root / "hf-home")}
    old = os.getcwd()
    os.chdir(cwd)
    try:
        runner = CliRunner()
        warm = runner.invoke(cli, ["key", "--target", "torch-aoti", "--n-positions", "64", "--", str(model)], env=env)
        assert warm.exit_code == 0, warm.output  # memoises the model's hashes: later valid runs write nothing
        yield {"root": root, "model": model, "home": home, "env": env, "runner": runner}
    finally:
        os.chdir(old)


def _snapshot(home: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(home):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st_ = p.lstat()
            out[str(p.relative_to(home))] = (st_.st_size, st_.st_mtime_ns)
    return out


def _check(world: dict, args: list[str], env: dict[str, str | None] | None = None) -> int:
    before = _snapshot(world["home"])
    result = world["runner"].invoke(cli, args, env={**world["env"], **(env or {})})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        shown = [a if len(a) < 80 else a[:60] + f"…({len(a)} chars)" for a in args]
        raise AssertionError(f"kiln {shown!r} raised {type(result.exception).__name__}") from result.exception
    code = result.exit_code
    assert code in (0, 1, 2), (code, result.output)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    if code == 2:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("kiln: error: "), result.stderr[:2000]
    assert _snapshot(world["home"]) == before, "a parser run wrote under KILN_HOME"
    return code


def _not_a_directory(ref: str) -> bool:
    try:
        return not os.path.isdir(os.path.expanduser(ref.strip()))
    except (ValueError, OSError):
        return True


# ---------------------------------------------------------------------------- CLI flags

SPEC_FLAGS = ["--n-positions", "--batch-size", "--tp-degree", "--dtype", "--smoothquant", "--target", "--instance-type"]
FLAG_VALUE = {
    "--dtype": st.one_of(VALUE, st.sampled_from(["fp16", "bf16", "float32", "int8", "auto"])),
    "--target": st.one_of(TEXT, st.sampled_from(["torch-aoti", "trtllm", "neuron", "tensorrt-llm", "AOTI"])),
    "--instance-type": st.one_of(TEXT, st.sampled_from(["ml.inf2.24xlarge", "ml.g5.12xlarge", "inf2.xlarge"])),
}


@st.composite
def cli_args(draw: st.DrawFn, model: str) -> list[str]:
    args = [draw(st.sampled_from(["key", "lookup"]))]
    flags = draw(st.lists(st.sampled_from(SPEC_FLAGS), min_size=1, max_size=4, unique=True))
    if "--target" not in flags:
        args += ["--target", "torch-aoti"]
    for flag in flags:
        args.append(f"{flag}={draw(FLAG_VALUE.get(flag, VALUE))}")  # NAME=VALUE: a value may start with '-'
    for _ in range(draw(st.integers(0, 2))):
        args += ["--option", f"{draw(TEXT)}={draw(VALUE)}"]
    if draw(st.booleans()):
        args += ["--per-token"]
    ref = draw(st.one_of(st.just(model), st.just(model), TEXT, LONG))
    assume(_not_a_directory(ref) or ref == model)
    return [*args, "--", ref]


@SETTINGS
@given(data=st.data())
def test_cli_spec_flags(world: dict, data: st.DataObject) -> None:
    _check(world, data.draw(cli_args(str(world["model"]))))


# ---------------------------------------------------------------------------- OPTION_* environments

ENV_NAMES = [
    "OPTION_N_POSITIONS", "OPTION_TENSOR_PARALLEL_DEGREE", "OPTION_MAX_ROLLING_BATCH_SIZE", "OPTION_BATCH_SIZE",
    "OPTION_DTYPE", "OPTION_QUANTIZE", "OPTION_SMOOTHQUANT_ALPHA", "OPTION_SMOOTHQUANT_PER_TOKEN", "OPTION_ROLLING_BATCH",
    "OPTION_ENTRYPOINT", "OPTION_MAX_INPUT_LEN", "OPTION_MAX_OUTPUT_LEN", "OPTION_MAX_SEQ_LEN", "OPTION_KILN_TARGET",
    "OPTION_INT8_KV_CACHE", "OPTION_KV_CACHE_QUANT_ALGO", "OPTION_REVISION", "OPTION_MODEL_ID", "SM_NUM_GPUS",
    "TENSOR_PARALLEL_DEGREE", "MAX_BATCH_SIZE", "HF_MODEL_QUANTIZE", "SERVING_FEATURES", "OPTION_CONTEXT_LENGTH_ESTIMATE",
]
_ENV_NAME = st.one_of(st.sampled_from(ENV_NAMES), TEXT.map(lambda t: "OPTION_" + t))


@st.composite
def lmi_env(draw: st.DrawFn, model: str) -> dict[str, str]:
    env = {"OPTION_MODEL_ID": model,
           "OPTION_KILN_TARGET": draw(st.sampled_from(["torch-aoti", "trtllm", "neuron"]))}
    for name in draw(st.lists(_ENV_NAME, min_size=1, max_size=5, unique=True)):
        assume("=" not in name and name.strip() == name and name)
        env[name] = draw(VALUE)
    assume(_not_a_directory(env["OPTION_MODEL_ID"]) or env["OPTION_MODEL_ID"] == model)
    return env


@SETTINGS
@given(data=st.data())
def test_option_environments(world: dict, data: st.DataObject) -> None:
    env = data.draw(lmi_env(str(world["model"])))
    command = data.draw(st.sampled_from(["key", "lookup"]))
    _check(world, [command, "--from-env"], env=env)


# ---------------------------------------------------------------------------- serving.properties files

PROP_NAMES = ["option." + n[len("OPTION_"):].lower() for n in ENV_NAMES if n.startswith("OPTION_")] + ["engine"]
INT_PROPS = ["option.n_positions", "option.tensor_parallel_degree", "option.max_rolling_batch_size", "option.batch_size",
             "option.max_input_len", "option.max_output_len", "option.max_seq_len"]


@st.composite
def properties_file(draw: st.DrawFn, model: str) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=4000))  # random bytes
    lines = [f"option.model_id={model}", f"option.kiln_target={draw(st.sampled_from(['torch-aoti', 'trtllm', 'neuron']))}"]
    for _ in range(draw(st.integers(1, 6))):
        key = draw(st.one_of(st.sampled_from(INT_PROPS), st.sampled_from(PROP_NAMES), TEXT))
        sep = draw(st.sampled_from(["=", ":", " ", " = ", "\t"]))
        value = draw(NUMBERS if key in INT_PROPS else VALUE)
        lines.append(key + sep + value + draw(st.sampled_from(["", "\\", " ", "\\u00", "\\u000a"])))
    text = "\n".join(draw(st.permutations(lines)))
    return text.encode(draw(st.sampled_from(["utf-8", "utf-8", "latin-1"])), errors="replace")


@SETTINGS
@given(data=st.data())
def test_serving_properties_files(world: dict, data: st.DataObject) -> None:
    path = world["root"] / "serving.properties"
    content = data.draw(properties_file(str(world["model"])))
    path.write_bytes(content)
    for line in content.decode("latin-1").splitlines():  # a model_id naming a real directory would be hashed
        key, _, value = line.partition("=")
        if key.strip().lower() == "option.model_id":
            assume(_not_a_directory(value) or value.strip() == str(world["model"]))
    _check(world, ["key", "--serving-properties", str(path)])


# ---------------------------------------------------------------------------- a few real subprocesses


@pytest.mark.parametrize(
    "args,env",
    [
        (["key", "--target", "torch-aoti", "--n-positions", "1" + "0" * 5000], {}),
        (["lookup", "--target", "torch-aoti", "--batch-size", str(10**30)], {}),
        (["key", "--target", "torch-aoti", "--tp-degree", "-3"], {}),
        (["key", "--target", "torch-aoti", "--dtype", "fp\n16"], {}),
        (["key", "--from-env"], {"OPTION_KILN_TARGET": "torch-aoti", "OPTION_N_POSITIONS": "9" * 6000}),
        (["lookup", "--from-env"], {"OPTION_KILN_TARGET": "trtllm", "OPTION_SMOOTHQUANT_ALPHA": "nan",
                                    "OPTION_QUANTIZE": "smoothquant"}),
        (["key", "--serving-properties", "/dev/zero"], {}),
    ],
)
def test_real_subprocesses(world: dict, tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
    home = tmp_path / "kiln-home"
    model = str(world["model"])
    full = [*args, "--", model] if "--from-env" not in args and "--serving-properties" not in args else args
    env = {**world["env"], "KILN_HOME": str(home), **env}
    if "--from-env" in args:
        env["OPTION_MODEL_ID"] = model
    r = run_kiln(*full, env=env, cwd=world["root"] / "cwd")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiln: error: ") and "Traceback" not in r.stderr, r.stderr
    assert not home.exists() or not any(p.is_file() for p in home.rglob("*"))


def test_random_bytes_as_serving_properties_in_a_subprocess(world: dict) -> None:
    import random

    path = world["root"] / "random.properties"
    path.write_bytes(random.Random(11).randbytes(8192))
    r = run_kiln("key", "--serving-properties", str(path), env=world["env"], cwd=world["root"] / "cwd")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and r.stderr.startswith("kiln: error: "), r.stderr
