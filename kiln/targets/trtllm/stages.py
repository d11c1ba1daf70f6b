"""TensorRT-LLM builds in three steps, each its own store entry:

1. calibration (SmoothQuant / INT8 KV cache only) — per-channel activation absmax, per
   (model, calibration set — the default corpus by its digest —, samples, sequence length):
   computed once, reused by every shape;
2. checkpoint — the converted (smoothed, quantized, TP-sharded) TensorRT-LLM checkpoint, per
   (model, dtype, tp_degree, quantization, calibration);
3. engine — `trtllm-build`, per (checkpoint, batch size, n_positions, toolchain, GPU SM arch):
   the artifact deployments look up.

Before any step runs, :func:`build_steps` refuses a calibrated build whose model has no usable
tokenizer, and static activation scales (SmoothQuant without --per-token, the INT8 KV cache) from a
calibration set with fewer texts than calib_samples.

Steps 1 and 2 are CPU work that runs anywhere; step 3 needs `tensorrt_llm` and a CUDA GPU.
Without them the build stores steps 1-2 and stops with :class:`~kiln.errors.IncompleteBuildError`
naming the stored checkpoint and the command that finishes the build on a GPU machine that
shares the store or the remote (see :func:`incomplete_error`).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..._packages import installed_version
from ...errors import IncompleteBuildError, SpecError, ValidationError
from ...spec import file_digest
from .._plan import Stage, Step
from ..base import BuildInputs, StoredStep
from .calibrate import Sample, default_calib_file, is_pretokenised, load_calib_texts

__all__ = ["CONVERTER_VERSION", "conversion_toolchain", "stage_plan", "build_steps",
           "incomplete_error"]

# The checkpoint converter and SmoothQuant math are Kiln's own code: bump on any change.
CONVERTER_VERSION = "1"


def _version(dist: str) -> str:
    return installed_version(dist) or "absent"


def conversion_toolchain() -> dict[str, str]:
    """What computes the CPU stages (their key): torch, transformers and Kiln's converter."""
    return {"torch": _version("torch"), "transformers": _version("transformers"), "kiln-trtllm-converter": CONVERTER_VERSION}


@functools.lru_cache(maxsize=1)
def default_corpus_digest() -> str:
    """``sha256:<hex>`` of the shipped default corpus file: what ``calib_set=default`` means in a key.

    A Kiln release with another corpus gives other calibration keys, so statistics of the old
    corpus are never taken for the new one (a --calib-file is keyed by its digest already)."""
    return file_digest(default_calib_file())


def stage_plan(res: BuildInputs) -> tuple[Stage, ...]:
    """The calibration stage (if the spec needs one) and the checkpoint stage of a spec."""
    spec, model = res.spec, res.model
    tc = conversion_toolchain()
    calib = None
    if spec.quant.smoothquant or spec.quant.int8_kv_cache:
        calib_inputs: dict[str, Any] = {
            "calib_set": spec.option("calib_set"), "calib_samples": int(spec.option("calib_samples") or 0),
            "calib_seq_len": int(spec.option("calib_seq_len") or 0)}
        if spec.option("calib_set") == "default":
            calib_inputs["calib_corpus"] = default_corpus_digest()
        calib = Stage("calibration", "trtllm", calib_inputs, {"tree_digest": model.tree_digest}, res.model_summary(), tc)
    ckpt = Stage(
        "checkpoint", "trtllm",
        {"dtype": spec.dtype, "tp_degree": spec.tp_degree, "quantization": spec.quant.to_json(),
         "calibration": calib.key if calib else None},
        {"tree_digest": model.tree_digest}, res.model_summary(), tc, depends_on=(calib.key,) if calib else (),
    )
    return (calib, ckpt) if calib else (ckpt,)


def build_steps(res: BuildInputs, *, calib_file: Path | None = None) -> tuple[Step, ...]:
    spec, model = res.spec, res.model
    stages = {s.name: s for s in stage_plan(res)}
    steps: list[Step] = []
    calib = stages.get("calibration")
    if calib is not None:
        calib_set = spec.option("calib_set")
        if calib_set != "default" and (calib_file is None or file_digest(calib_file) != calib_set):
            raise SpecError(
                f"calib_set={calib_set} names a calibration file: pass that file with --calib-file "
                "(its sha256 must match)."
            )
        texts = calibration_texts(calib_file if calib_set != "default" else None)
        if not is_pretokenised(texts):  # pre-tokenised JSONL needs no tokenizer
            check_tokenizer(res)
        check_calibration_size(res, len(texts), calib_file if calib_set != "default" else None)

        def calib_argv(out: Path, _inputs: Mapping[str, Path]) -> list[str]:
            argv = ["-m", "kiln.targets.trtllm.worker", "calibrate", "--model-dir", str(model.path),
                    "--out-dir", str(out), "--num-samples", str(calib.inputs["calib_samples"]),
                    "--seq-len", str(calib.inputs["calib_seq_len"])]
            return argv + (["--calib-file", str(calib_file)] if calib_file else [])

        steps.append(Step("calibration", "trtllm calibration", calib_argv, stage=calib, needs_toolchain=False,
                          compiles=False))

    def convert_argv(out: Path, inputs: Mapping[str, Path]) -> list[str]:
        argv = ["-m", "kiln.targets.trtllm.worker", "convert", "--model-dir", str(model.path), "--out-dir", str(out),
                "--dtype", str(spec.dtype), "--tp-degree", str(spec.tp_degree)]
        q = spec.quant
        if q.smoothquant:
            argv += ["--smoothquant", repr(float(q.smoothquant_alpha))]  # type: ignore[arg-type]
            argv += ["--per-token"] if q.per_token else []
            argv += ["--per-channel"] if q.per_channel else []
        if q.int8_kv_cache:
            argv += ["--int8-kv-cache"]
        if "calibration" in inputs:
            argv += ["--stats-dir", str(inputs["calibration"])]
        return argv

    steps.append(Step("checkpoint", "trtllm checkpoint", convert_argv, stage=stages["checkpoint"],
                      inputs=("calibration",) if calib else (), needs_toolchain=False, compiles=False))

    def engine_argv(out: Path, inputs: Mapping[str, Path]) -> list[str]:
        argv = ["-m", "kiln.targets.trtllm.engine_worker", "--checkpoint-dir", str(inputs["checkpoint"]),
                "--tokenizer-dir", str(model.path), "--out-dir", str(out),
                "--max-batch-size", str(spec.batch_size), "--max-seq-len", str(spec.n_positions)]
        if spec.option("max_num_tokens"):
            argv += ["--max-num-tokens", str(spec.option("max_num_tokens"))]
        return argv

    steps.append(Step("engine", "trtllm engine", engine_argv, inputs=("checkpoint",)))
    return tuple(steps)


# A tokenizer transformers can load from a model directory: one of these sets of files.
TOKENIZER_SETS = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"))


def check_tokenizer(res: BuildInputs) -> None:
    """Calibration tokenizes its texts with the model's own tokenizer: refuse, before any work, a
    model without one (the worker would fail after loading, with the tokenizer library's message)."""
    model = res.model
    names = {f.path for f in model.files if "/" not in f.path}  # AutoTokenizer reads the top directory
    usable = [s for s in TOKENIZER_SETS if set(s) <= names]
    if usable == [("tokenizer.model",)] and importlib.util.find_spec("sentencepiece") is None:
        raise ValidationError(
            f"model {model.ref} has only a sentencepiece tokenizer (tokenizer.model) and the sentencepiece package "
            "is not installed, so SmoothQuant/INT8 KV calibration cannot tokenize its texts: `pip install "
            "sentencepiece`, or add tokenizer.json (a fast tokenizer) to the model directory."
        )
    if not usable:
        raise ValidationError(
            f"model {model.ref} has no usable tokenizer, which SmoothQuant/INT8 KV calibration needs to tokenize its "
            "texts: add tokenizer.json (a fast tokenizer), or tokenizer.model (sentencepiece), or vocab.json with "
            "merges.txt (BPE), with tokenizer_config.json, to the model directory (`tokenizer.save_pretrained(DIR)` "
            "writes them), or pass --calib-file with pre-tokenised JSONL ({\"input_ids\": [...]} per line)."
        )


def calibration_texts(calib_file: Path | None) -> list[Sample]:
    """The calibration set's samples (default: Kiln's corpus), read before any work: a malformed
    --calib-file fails here in one line, not in the worker."""
    try:
        return load_calib_texts(calib_file)[0]
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


def check_calibration_size(res: BuildInputs, available: int, calib_file: Path | None) -> None:
    """Static activation scales need the samples the spec names: refuse a shorter calibration set.

    SmoothQuant without per-token scales bakes max|x| over the calibration tokens into one
    scale per tensor, and the INT8 KV cache its k/v maxima; from fewer samples than asked for
    (TensorRT-LLM's 512) those maxima are lower and clip real activations. Per-token SmoothQuant
    only smooths with them: a short set is used whole, and the worker says so in its record.
    Counting texts needs no tokenizer (each one becomes one sample)."""
    spec = res.spec
    q = spec.quant
    static = [what for what, on in (("SmoothQuant without --per-token (static per-tensor activation scales)",
                                     bool(q.smoothquant) and not q.per_token),
                                    ("the INT8 KV cache (static k/v scales)", bool(q.int8_kv_cache))) if on]
    requested = int(spec.option("calib_samples") or 0)
    if not static or available >= requested:
        return
    name = "Kiln's default corpus" if calib_file is None else f"--calib-file {calib_file}"
    fixes = ["a --calib-file with at least {requested} texts".format(requested=requested)]
    fixes += ["--per-token"] if q.smoothquant and not q.per_token and not q.int8_kv_cache else []
    fixes += [f"--option calib_samples={available}"]
    raise ValidationError(
        f"calib_samples={requested} but {name} has only {available} texts, and {' and '.join(static)} would bake "
        f"maxima from {available} samples into fixed scales; pass {', or '.join(fixes)}."
    )


def incomplete_error(res: BuildInputs, missing: Sequence[str], stored: Sequence[StoredStep],
                     where: str) -> IncompleteBuildError:
    """The CPU stages are stored; say exactly how to finish on a GPU machine (exit 3).

    The error carries the stored steps and both commands too, for ``kiln build --json``.
    """
    spec, model = res.spec, res.model
    done = ", ".join(f"{s.name} {'reused' if s.reused else 'built'}" for s in stored)
    ckpt = next(s for s in stored if s.name == "checkpoint")
    push_keys = " ".join(f"--key {s.key}" for s in reversed(stored))
    push_short = " ".join(f"--key {s.key[:12]}" for s in reversed(stored))
    finish = f"kiln --remote URL build {model.ref} {spec.cli_flags()}"
    return IncompleteBuildError(
        f"conversion stages stored ({done}): checkpoint {ckpt.key[:12]} ({ckpt.files} files) in {where}. "
        f"The engine stage needs {', '.join(missing)} (a CUDA GPU with tensorrt_llm from NVIDIA's index). To "
        f"finish, share the store, or push the stages (`kiln --remote URL push {push_short}`) and run on the GPU "
        f"machine: `{finish}`",
        stored=[{"name": s.name, "key": s.key, "files": s.files, "reused": s.reused} for s in stored],
        missing=missing,
        push_command=f"kiln --remote URL push {push_keys}",
        finish_command=finish,
    )
