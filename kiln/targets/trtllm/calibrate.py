"""Offline SmoothQuant calibration: per-channel activation maxima of every linear layer.

What is collected is what TensorRT-LLM's SmoothQuant converter collects
(``capture_activation_range`` in ``tensorrt_llm/models/llama/convert.py``): a forward hook
on every ``nn.Linear`` records, over all calibration tokens,

* ``x``: max |input| per input channel  (drives the smoothing factors and, after smoothing,
  the static per-tensor activation scale ``scale_x_orig_quant = 127 / max(x / s)``),
* ``y``: max |output| per output channel (per-tensor output scale ``scale_y_quant_orig``,
  and the INT8 KV-cache scale ``max(y_q, y_k, y_v) / 127``),
* ``w``: max |weight| per output row (clipped at 1e-8, as TensorRT-LLM does).

Samples are processed one at a time, in file order, each truncated to ``seq_len`` tokens
(TensorRT-LLM's defaults: 512 samples x 512 tokens, read from cnn_dailymail; Kiln reads
local text so that calibration never needs the network). The default corpus has the same
strength: 512 texts of at least 512 tokens each (Jane Austen's novels and the Python 3.11
documentation, from Debian packages: ``scripts/make_calib_corpus.py`` makes it and names the
sources and licenses). A corpus with fewer texts than ``num_samples`` is used whole: maxima
over repeated texts would not change, so nothing is repeated; the worker warns, and the
metadata records both numbers. (The build refuses static activation scales from a short
corpus before any work: :func:`kiln.targets.trtllm.stages.build_steps`.)

Output (a stage node that every shape of the same model + corpus reuses)::

    act_stats.safetensors   "<module>.x" / "<module>.y" / "<module>.w" float32 vectors
    act_stats.json          format, model fingerprint, corpus digest, sample/token counts
    facts.json              samples and tokens requested and used, warnings: quoted in the
                            stage's build record (kiln.compile.stages.STAGE_FACTS)

Deterministic: same model, corpus and options give the same bytes (given the same torch
build and thread count; the maxima are of float32 forward activations).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = [
    "DEFAULT_NUM_SAMPLES",
    "DEFAULT_SEQ_LEN",
    "STATS_FILE",
    "STATS_META_FILE",
    "STATS_FORMAT",
    "FACTS_FILE",
    "default_calib_file",
    "parse_calib_text",
    "load_calib_texts",
    "is_pretokenised",
    "model_fingerprint",
    "collect_activation_stats",
    "calibrate",
    "load_stats",
]

DEFAULT_NUM_SAMPLES = 512  # TensorRT-LLM convert_checkpoint.py --calib_size default
DEFAULT_SEQ_LEN = 512  # TensorRT-LLM calib_max_seq_length default
STATS_FILE = "act_stats.safetensors"
STATS_META_FILE = "act_stats.json"
STATS_FORMAT = "kiln-smoothquant-act-stats/1"
STAT_KINDS = ("x", "y", "w")
# What the stage's build record quotes (kiln.compile.stages.STAGE_FACTS: the same name).
FACTS_FILE = "facts.json"

Log = Callable[[str], None]
Sample = str | list[int]  # a text, or the token ids of a pre-tokenised JSONL line


def default_calib_file() -> Path:
    """The corpus shipped with Kiln (512 prose texts of >= 512 tokens; no network needed)."""
    return Path(__file__).with_name("calib_default.txt.gz")


# ----------------------------------------------------------------------------- corpus
def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 1 << 31 for i in value)


def parse_calib_text(content: str, *, name: str = "<calibration text>", jsonl: bool | None = None) -> list[Sample]:
    """Samples from a calibration file's content: texts, or token-id lists (pre-tokenised JSONL).

    Plain text: paragraphs separated by blank lines (lines inside a paragraph are joined
    with spaces; lines starting with ``#`` are comments). JSONL: one JSON object per line
    with a string ``text`` field, or, pre-tokenised for a model without a tokenizer, an
    ``input_ids`` list of token ids (one kind per file). ``jsonl=None`` detects the format:
    JSONL when the first non-blank line starts with ``{``.
    """
    if jsonl is None:
        first = next((ln.strip() for ln in content.splitlines() if ln.strip()), "")
        jsonl = first.startswith("{")
    texts: list[Sample] = []
    if jsonl:
        for lineno, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{name} line {lineno} is not valid JSON ({exc}); JSONL needs one object per line") from None
            if isinstance(obj, dict) and "input_ids" in obj and "text" not in obj:
                if not _token_ids(obj["input_ids"]):
                    raise ValueError(f"{name} line {lineno}: 'input_ids' must be a non-empty list of token ids "
                                     "(integers >= 0)")
                texts.append(list(obj["input_ids"]))
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise ValueError(f"{name} line {lineno} has no string field 'text'; each JSONL line needs "
                                 "{\"text\": \"...\"} (or, pre-tokenised, {\"input_ids\": [1, 2, ...]})")
            if obj["text"].strip():
                texts.append(obj["text"].strip())
        if len({isinstance(t, list) for t in texts}) > 1:
            raise ValueError(f"{name} mixes 'text' and 'input_ids' lines; a calibration file holds one kind")
    else:
        para: list[str] = []
        for line in content.splitlines() + [""]:
            s = line.strip()
            if s.startswith("#"):
                continue
            if s:
                para.append(s)
            elif para:
                texts.append(" ".join(para))
                para = []
    if not texts:
        raise ValueError(
            f"{name} holds no calibration text; write paragraphs separated by blank lines, "
            "or JSONL lines with a 'text' field"
        )
    return texts


def is_pretokenised(texts: list[Sample]) -> bool:
    """True when every sample is token ids: calibration then needs no tokenizer."""
    return bool(texts) and all(isinstance(t, list) for t in texts)


def load_calib_texts(calib_file: Path | str | None = None) -> tuple[list[Sample], dict[str, Any]]:
    """``(texts, source)`` from ``calib_file`` (default: Kiln's built-in corpus).

    ``source`` describes the corpus for the metadata: its name and the sha256 of its bytes.
    """
    path = Path(calib_file) if calib_file is not None else default_calib_file()
    if not path.is_file():
        raise ValueError(f"calibration file {path} does not exist; pass --calib-file with a .txt or .jsonl file")
    data = path.read_bytes()
    # A .gz file (the default corpus is one) is read decompressed; its digest stays that of its bytes.
    suffixes = [s.lower() for s in path.suffixes]
    raw = data
    if suffixes[-1:] == [".gz"]:
        try:
            raw = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"calibration file {path} is not a valid gzip file ({exc})") from None
        suffixes = suffixes[:-1]
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"calibration file {path} is not UTF-8 text") from None
    suffix = suffixes[-1] if suffixes else ""
    jsonl = True if suffix in (".jsonl", ".ndjson") else (False if suffix == ".txt" else None)
    texts = parse_calib_text(content, name=str(path), jsonl=jsonl)
    source = {
        "name": "kiln-default" if calib_file is None else path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "texts": len(texts),
        **({"pretokenised": True} if is_pretokenised(texts) else {}),
    }
    return texts, source


# ----------------------------------------------------------------------------- model identity
def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return [model_dir / f for f in sorted(set(weight_map.values()))]
    return sorted(model_dir.glob("*.safetensors"))


def model_fingerprint(model_dir: Path | str) -> str:
    """sha256 over config.json and every weights file (content, not names or paths).

    Statistics computed for one model must never be applied to another: the converter
    compares this fingerprint before using a stats directory.
    """
    model_dir = Path(model_dir)
    h = hashlib.sha256(b"kiln-model-fingerprint/1\n")
    cfg = model_dir / "config.json"
    h.update(cfg.read_bytes() if cfg.is_file() else b"")
    for f in _weight_files(model_dir):
        fh = hashlib.sha256()
        with open(f, "rb") as fp:
            for chunk in iter(lambda: fp.read(1 << 22), b""):
                fh.update(chunk)
        h.update(fh.digest())
    return h.hexdigest()


# ----------------------------------------------------------------------------- collection
def _check_counts(num_samples: int, seq_len: int) -> None:
    for name, v in (("num_samples", num_samples), ("seq_len", seq_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"calibration {name} must be a positive integer, got {v!r}")


def collect_activation_stats(
    model: Any,
    tokenizer: Any,
    texts: Iterable[Sample],
    *,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seq_len: int = DEFAULT_SEQ_LEN,
    log: Log | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Run ``model`` over the first ``num_samples`` texts; return ``(stats, counts)``.

    ``stats[module_name]`` has float32 tensors ``x``, ``y``, ``w`` (see the module doc);
    ``counts`` has ``samples`` and ``tokens`` actually used.
    """
    import torch

    _check_counts(num_samples, seq_len)
    stats: dict[str, dict[str, Any]] = {}

    def absmax(t: Any) -> Any:
        t = t.detach()
        return t.reshape(-1, t.shape[-1]).abs().amax(dim=0).to(torch.float32)

    def hook(name: str) -> Callable[..., None]:
        def fn(module: Any, inputs: Any, output: Any) -> None:
            x = inputs[0] if isinstance(inputs, tuple) else inputs
            entry = stats.get(name)
            xm, ym = absmax(x), absmax(output)
            if entry is None:
                w = module.weight.detach().abs().clamp(min=1e-8).amax(dim=1).to(torch.float32)
                stats[name] = {"x": xm, "y": ym, "w": w}
            else:
                entry["x"] = torch.maximum(entry["x"], xm)
                entry["y"] = torch.maximum(entry["y"], ym)

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if not handles:
        raise ValueError("the model has no nn.Linear layers to calibrate")
    samples = tokens = 0
    t0 = time.perf_counter()
    try:
        model.eval()
        device = next(model.parameters()).device
        with torch.inference_mode():
            vocab = model.get_input_embeddings().num_embeddings
            for n, text in enumerate(texts, 1):
                if samples >= num_samples:
                    break
                if isinstance(text, list):  # pre-tokenised: truncated as the tokenizer would
                    if max(text) >= vocab:
                        raise ValueError(f"calibration sample {n} has token id {max(text)}, outside the model's "
                                         f"vocabulary of {vocab}: it was tokenised for another model")
                    ids = torch.tensor([text[:seq_len]], dtype=torch.long)
                else:
                    ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=seq_len).input_ids
                if ids.numel() == 0:
                    continue
                model(input_ids=ids.to(device), use_cache=False)
                samples += 1
                tokens += int(ids.numel())
                if log and (samples % 16 == 0):
                    log(f"calibrate: {samples} samples, {tokens} tokens, {time.perf_counter() - t0:.1f}s")
    finally:
        for h in handles:
            h.remove()
    if samples == 0:
        raise ValueError("no calibration sample produced any tokens; check the calibration text")
    return stats, {"samples": samples, "tokens": tokens}


def calibrate(
    model_dir: Path | str,
    out_dir: Path | str | None = None,
    *,
    calib_file: Path | str | None = None,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seq_len: int = DEFAULT_SEQ_LEN,
    log: Log = print,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Calibrate the Hugging Face model in ``model_dir``; write stats to ``out_dir`` if given.

    Returns ``(stats, meta)``. Bad input (missing model, bad counts, empty or malformed
    corpus) raises ValueError before the model is loaded.
    """
    model_dir = Path(model_dir)
    _check_counts(num_samples, seq_len)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
    texts, source = load_calib_texts(calib_file)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    log(f"stage: load model={model_dir.name} texts={len(texts)} num_samples={num_samples} seq_len={seq_len}")
    # Pre-tokenised samples need no tokenizer (a model directory without one can calibrate).
    tokenizer = None if is_pretokenised(texts) else AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    log("stage: calibrate")
    t0 = time.perf_counter()
    stats, counts = collect_activation_stats(model, tokenizer, texts, num_samples=num_samples, seq_len=seq_len, log=log)
    log(f"calibrate: {counts['samples']} samples, {counts['tokens']} tokens in {time.perf_counter() - t0:.1f}s")
    warnings = shortfall_warnings(source, num_samples, counts["samples"])
    for w in warnings:
        log(f"WARNING: {w}")
    meta: dict[str, Any] = {
        "format": STATS_FORMAT,
        "model_fingerprint": model_fingerprint(model_dir),
        "architecture": (getattr(model.config, "architectures", None) or [None])[0],
        "calibration": {
            **source,
            "num_samples_requested": num_samples,
            "num_samples_used": counts["samples"],
            "seq_len": seq_len,
            "tokens": counts["tokens"],
            "dtype": "float32",
            "warnings": warnings,
        },
        "modules": len(stats),
        "stats": list(STAT_KINDS),
    }
    if out_dir is not None:
        write_stats(Path(out_dir), stats, meta)
        log(f"calibrated modules={len(stats)} out={out_dir}")
    return stats, meta


def shortfall_warnings(source: dict[str, Any], requested: int, used: int) -> list[str]:
    """What a build record must say when the corpus gave fewer samples than asked for."""
    if used >= requested:
        return []
    why = (f"the corpus {source['name']} has only {source['texts']} texts" if source["texts"] < requested
           else f"{source['texts'] - used} of its texts produced no tokens")
    return [f"calibration used {used} samples, not the {requested} requested: {why}. The maxima (and any static "
            "activation scale) come from fewer samples than TensorRT-LLM uses; pass a larger --calib-file."]


def facts(meta: dict[str, Any]) -> dict[str, Any]:
    """The calibration's account for the stage's build record: what was asked for and what was used."""
    cal = meta["calibration"]
    return {"calibration": {
        "corpus": cal["name"], "corpus_sha256": cal["sha256"], "texts_available": cal["texts"],
        "samples_requested": cal["num_samples_requested"], "samples_used": cal["num_samples_used"],
        "seq_len": cal["seq_len"], "tokens_used": cal["tokens"],
        "tokens_at_most": cal["num_samples_requested"] * cal["seq_len"], "warnings": list(cal.get("warnings", [])),
    }}


# ----------------------------------------------------------------------------- files
def write_stats(out_dir: Path, stats: dict[str, dict[str, Any]], meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"{name}.{kind}": stats[name][kind].contiguous() for name in sorted(stats) for kind in STAT_KINDS}
    tmp = out_dir / f".{STATS_FILE}.tmp"
    # One metadata key only: safetensors writes a multi-key metadata map in random order.
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)  # safetensors creates 0600 files
    os.replace(tmp, out_dir / STATS_FILE)
    for name, obj in ((STATS_META_FILE, meta), (FACTS_FILE, facts(meta))):
        tmp_meta = out_dir / f".{name}.tmp"
        tmp_meta.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        os.replace(tmp_meta, out_dir / name)


def load_stats(stats_dir: Path | str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """``(stats, meta)`` from a directory written by :func:`calibrate`; ValueError if unusable."""
    stats_dir = Path(stats_dir)
    st, mf = stats_dir / STATS_FILE, stats_dir / STATS_META_FILE
    if not st.is_file() or not mf.is_file():
        raise ValueError(
            f"{stats_dir} holds no calibration statistics ({STATS_FILE} and {STATS_META_FILE}); "
            "run `python -m kiln.targets.trtllm.worker calibrate` first"
        )
    try:
        meta = json.loads(mf.read_text())
    except ValueError as exc:
        raise ValueError(f"{mf} is not valid JSON ({exc}); recalibrate") from None
    if not isinstance(meta, dict) or meta.get("format") != STATS_FORMAT:
        raise ValueError(f"{mf} is not a {STATS_FORMAT} file (format {meta.get('format') if isinstance(meta, dict) else None!r}); recalibrate")
    from safetensors.torch import load_file

    stats: dict[str, dict[str, Any]] = {}
    for key, t in load_file(str(st)).items():
        name, _, kind = key.rpartition(".")
        if kind not in STAT_KINDS or not name:
            raise ValueError(f"{st} has an unexpected tensor {key!r}; recalibrate")
        stats.setdefault(name, {})[kind] = t
    for name, entry in stats.items():
        if set(entry) != set(STAT_KINDS):
            raise ValueError(f"{st}: module {name} lacks {sorted(set(STAT_KINDS) - set(entry))}; recalibrate")
    return stats, meta
