"""TensorRT-LLM builds in three stages, each its own store entry:

1. calibration (SmoothQuant / INT8 KV cache only) — per-channel activation absmax, per
   (model, calibration set, samples, sequence length): computed once, reused by every shape;
2. checkpoint — the converted (smoothed, quantized, TP-sharded) TensorRT-LLM checkpoint, per
   (model, dtype, tp_degree, quantization, calibration);
3. engine — `trtllm-build`, per (checkpoint, batch size, n_positions, toolchain, GPU SM arch):
   the artifact deployments look up.

Stages 1 and 2 are CPU work that runs here; stage 3 needs `tensorrt_llm` and a CUDA GPU.
Without them the build publishes stages 1-2 and stops with :class:`IncompleteBuildError`
naming the stored checkpoint and the command that finishes the build on a GPU machine that
shares the store or the remote.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import time
from pathlib import Path
from typing import Callable

from ..api import Resolution, lookup, put
from ..cache._remote import Remote
from ..cache._store import Store
from ..errors import BuildError, SpecError
from ..manifests._index import IndexEntry
from ..targets.trtllm import CONVERTER_VERSION, TRTLLM
from ._stages import Stage, run_stage
from ._worker import WorkerResult

__all__ = ["build_trtllm", "IncompleteBuildError", "calib_set_digest"]


class IncompleteBuildError(BuildError):
    """The CPU stages are stored; the engine stage needs a GPU machine."""

    exit_code = 3


def calib_set_digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def conversion_toolchain() -> dict[str, str]:
    return {"torch": _version("torch"), "transformers": _version("transformers"), "kiln-trtllm-converter": CONVERTER_VERSION}


def stages_for(res: Resolution) -> tuple[Stage | None, Stage]:
    """The calibration stage (if the spec needs one) and the checkpoint stage of a spec."""
    spec, model = res.spec, res.model
    tc = conversion_toolchain()
    calib = None
    if spec.quant.smoothquant or spec.quant.int8_kv_cache:
        calib = Stage(
            "calibration", "trtllm",
            {"calib_set": spec.option("calib_set"), "calib_samples": int(spec.option("calib_samples") or 0),
             "calib_seq_len": int(spec.option("calib_seq_len") or 0)},
            model.tree_digest, res.model_summary(), tc,
        )
    ckpt = Stage(
        "checkpoint", "trtllm",
        {"dtype": spec.dtype, "tp_degree": spec.tp_degree, "quantization": spec.quant.to_json(),
         "calibration": calib.key if calib else None},
        model.tree_digest, res.model_summary(), tc, depends_on=(calib.key,) if calib else (),
    )
    return calib, ckpt


def build_trtllm(
    res: Resolution,
    *,
    store: Store,
    remote: Remote | None = None,
    force: bool = False,
    on_stage: Callable[[str], None] | None = None,
    t0: float | None = None,
    calib_file: Path | None = None,
):  # type: ignore[no-untyped-def]
    from ._build import BuildResult, compile_and_publish

    t0 = time.monotonic() if t0 is None else t0
    spec, model = res.spec, res.model
    calib, ckpt = stages_for(res)
    stage_times: dict[str, float] = {}
    reused: dict[str, bool] = {}

    stats_entry: IndexEntry | None = None
    if calib is not None:
        calib_set = spec.option("calib_set")
        if calib_set != "default":
            if calib_file is None or calib_set_digest(calib_file) != calib_set:
                raise SpecError(
                    f"calib_set={calib_set} names a calibration file: pass that file with --calib-file "
                    "(its sha256 must match)."
                )

        def calib_argv(out: Path, _work: Path) -> list[str]:
            argv = ["-m", "kiln.targets._trtllm_worker", "calibrate", "--model-dir", str(model.path),
                    "--out-dir", str(out), "--num-samples", str(calib.inputs["calib_samples"]),
                    "--seq-len", str(calib.inputs["calib_seq_len"])]
            return argv + (["--calib-file", str(calib_file)] if calib_file else [])

        t = time.monotonic()
        stats_entry, reused["calibration"] = run_stage(store, calib, calib_argv, remote=remote, on_stage=on_stage)
        stage_times["calibration"] = time.monotonic() - t

    def convert_argv(out: Path, work: Path) -> list[str]:
        argv = ["-m", "kiln.targets._trtllm_worker", "convert", "--model-dir", str(model.path), "--out-dir", str(out),
                "--dtype", str(spec.dtype), "--tp-degree", str(spec.tp_degree)]
        q = spec.quant
        if q.smoothquant:
            argv += ["--smoothquant", repr(float(q.smoothquant_alpha))]  # type: ignore[arg-type]
            argv += ["--per-token"] if q.per_token else []
            argv += ["--per-channel"] if q.per_channel else []
        if q.int8_kv_cache:
            argv += ["--int8-kv-cache"]
        if stats_entry is not None:
            stats_dir = store.materialize(store.check_artifact(stats_entry), work / "stats")
            argv += ["--stats-dir", str(stats_dir)]
        return argv

    t = time.monotonic()
    ckpt_entry, reused["checkpoint"] = run_stage(store, ckpt, convert_argv, remote=remote, on_stage=on_stage)
    stage_times["checkpoint"] = time.monotonic() - t

    detected = TRTLLM.detect_toolchain(spec)
    missing = [c for c, v in detected.items() if v is None]
    if missing:
        flags = (f"--target trtllm --n-positions {spec.n_positions} --batch-size {spec.batch_size} "
                 f"--tp-degree {spec.tp_degree} --dtype {spec.dtype}")
        if spec.quant.smoothquant:
            flags += f" --smoothquant {spec.quant.smoothquant_alpha}"
            flags += " --per-token" if spec.quant.per_token else ""
            flags += " --per-channel" if spec.quant.per_channel else ""
        flags += " --int8-kv-cache" if spec.quant.int8_kv_cache else ""
        for name, value in spec.options:
            if name == "calib_set" and value != "default":
                flags += " --calib-file FILE"  # the same file: its sha256 is in the key
            elif name not in ("calib_set",):
                flags += f" --option {name}={value}"
        done = ", ".join(f"{name} {'reused' if r else 'built'}" for name, r in reused.items())
        push_keys = " ".join(f"--key {e.key[:12]}" for e in (ckpt_entry, stats_entry) if e is not None)
        raise IncompleteBuildError(
            f"conversion stages stored ({done}): checkpoint {ckpt_entry.key[:12]} "
            f"({ckpt_entry.files} files) in {store.root}. The engine stage needs "
            f"{', '.join(missing)} (a CUDA GPU with tensorrt_llm from NVIDIA's index). To finish, share the "
            f"store, or push the stages (`kiln --remote URL push {push_keys}`) and run on the GPU machine: "
            f"`kiln --remote URL build {model.ref} {flags}`"
        )
    from ._build import _require_real_toolchain

    _require_real_toolchain(res)  # a --toolchain pin must not label an engine built with another

    def engine_argv(out: Path, work: Path) -> list[str]:
        ckpt_dir = store.materialize(store.check_artifact(ckpt_entry), work / "checkpoint")
        argv = ["-m", "kiln.targets._trtllm_engine_worker", "--checkpoint-dir", str(ckpt_dir),
                "--tokenizer-dir", str(model.path), "--out-dir", str(out),
                "--max-batch-size", str(spec.batch_size), "--max-seq-len", str(spec.n_positions)]
        if spec.option("max_num_tokens"):
            argv += ["--max-num-tokens", str(spec.option("max_num_tokens"))]
        return argv

    def publish(out: Path, result: WorkerResult, started: str) -> IndexEntry:
        return put(res, out, store=store, duration_s=result.seconds, started=started, move=True,
                   extra={"checkpoint": ckpt_entry.key, "calibration": stats_entry.key if stats_entry else None})

    with store.single_flight(res.key):
        if not force:
            found = lookup(res, store=store)  # a peer may have built the engine while we waited
            if found.hit:
                assert found.entry is not None
                return BuildResult(found.entry, True, time.monotonic() - t0, stage_times, waited_for_peer=True,
                                   source=found.source)
        entry, stages = compile_and_publish(store, res.key, what="trtllm engine", argv=engine_argv, publish=publish,
                                            on_stage=on_stage)
    return BuildResult(entry, False, time.monotonic() - t0, {**stage_times, **stages})
