"""Offline calibration: corpus parsing, what is collected, determinism, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kiln.targets.trtllm.calibrate import (
    DEFAULT_NUM_SAMPLES,
    DEFAULT_SEQ_LEN,
    STATS_FILE,
    STATS_META_FILE,
    calibrate,
    default_calib_file,
    load_calib_texts,
    load_stats,
    model_fingerprint,
    parse_calib_text,
)

from . import tiny


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny("llama", tmp_path_factory.mktemp("cal") / "model")


def test_defaults_are_tensorrt_llms() -> None:
    assert (DEFAULT_NUM_SAMPLES, DEFAULT_SEQ_LEN) == (512, 512)


def test_default_corpus_is_local_and_varied() -> None:
    texts, source = load_calib_texts(None)
    assert default_calib_file().is_file()
    assert len(texts) >= 60
    assert source["name"] == "kiln-default" and len(source["sha256"]) == 64
    assert len(set(texts)) == len(texts)
    assert all(len(t.split()) >= 40 for t in texts)


def test_plain_text_paragraphs() -> None:
    content = "# a comment\nFirst paragraph,\nstill the first.\n\n\n  Second one.  \n\n# another\nThird\n"
    assert parse_calib_text(content) == ["First paragraph, still the first.", "Second one.", "Third"]


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "alpha beta"}\n\n{"text": "gamma", "id": 3}\n{"text": "   "}\n')
    texts, source = load_calib_texts(path)
    assert texts == ["alpha beta", "gamma"]
    assert source["name"] == "c.jsonl"
    # Detected by content when the extension says nothing.
    assert parse_calib_text('{"text": "x"}\n') == ["x"]


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"text": "ok"}\n{"text": \n', "line 2 is not valid JSON"),
        ('{"text": "ok"}\n{"body": "no text"}\n', "line 2 has no string field 'text'"),
        ('{"text": 5}\n', "line 1 has no string field 'text'"),
        ("", "holds no calibration text"),
        ("# only comments\n\n", "holds no calibration text"),
    ],
)
def test_bad_corpus(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / ("c.jsonl" if content.startswith("{") else "c.txt")
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_calib_texts(path)


def test_bad_arguments_fail_before_loading(tmp_path: Path, model: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        calibrate(model, tmp_path / "o", calib_file=tmp_path / "missing.txt", log=_quiet)
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        calibrate(model, tmp_path / "o", num_samples=0, log=_quiet)
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        calibrate(model, tmp_path / "o", seq_len=-5, log=_quiet)
    with pytest.raises(ValueError, match="not a Hugging Face model directory"):
        calibrate(tmp_path, tmp_path / "o", log=_quiet)
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="holds no calibration statistics"):
        load_stats(tmp_path)


def test_collects_input_output_weight_maxima(tmp_path: Path, model: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n\nhello world, this is a tiny model\n\nonce upon a time\n")
    stats, meta = calibrate(model, tmp_path / "s", calib_file=corpus, num_samples=2, seq_len=6, log=_quiet)
    assert meta["calibration"]["num_samples_used"] == 2
    assert meta["calibration"]["tokens"] <= 2 * 6
    assert meta["model_fingerprint"] == model_fingerprint(model)

    # Independent check through the HF model: lm_head's input is the final normed hidden
    # state, its output the logits; q_proj's weight maxima are per output row.
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model)
    xs, ys = [], []
    for text in parse_calib_text(corpus.read_text())[:2]:
        ids = tok(text, return_tensors="pt", truncation=True, max_length=6).input_ids
        with torch.inference_mode():
            out = hf(input_ids=ids, output_hidden_states=True)
        xs.append(out.hidden_states[-1].abs().amax(dim=(0, 1)))
        ys.append(out.logits.abs().amax(dim=(0, 1)))
    torch.testing.assert_close(stats["lm_head"]["x"], torch.stack(xs).amax(0))
    torch.testing.assert_close(stats["lm_head"]["y"], torch.stack(ys).amax(0))
    q = hf.model.layers[1].self_attn.q_proj.weight
    torch.testing.assert_close(stats["model.layers.1.self_attn.q_proj"]["w"], q.abs().amax(1))
    # Every linear layer of the model is covered, and the files round-trip.
    linears = {n for n, m in hf.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(stats) == linears
    loaded, loaded_meta = load_stats(tmp_path / "s")
    assert loaded_meta == meta
    for name in stats:
        for kind in ("x", "y", "w"):
            assert torch.equal(loaded[name][kind], stats[name][kind])


def test_sample_count_scales_down_and_corpus_smaller_than_request(tmp_path: Path, model: Path) -> None:
    _, meta = calibrate(model, None, num_samples=3, seq_len=16, log=_quiet)
    assert meta["calibration"]["num_samples_used"] == 3 and meta["calibration"]["tokens"] <= 48
    _, meta = calibrate(model, None, num_samples=10_000, seq_len=8, log=_quiet)
    n_texts = len(load_calib_texts(None)[0])
    assert meta["calibration"]["num_samples_used"] == n_texts
    assert meta["calibration"]["num_samples_requested"] == 10_000


def test_calibration_is_deterministic(tmp_path: Path, model: Path) -> None:
    lines: list[str] = []
    for out in ("a", "b"):
        calibrate(model, tmp_path / out, num_samples=8, seq_len=32, log=lines.append)
    for name in (STATS_FILE, STATS_META_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    meta = json.loads((tmp_path / "a" / STATS_META_FILE).read_text())
    assert meta["calibration"]["seq_len"] == 32 and meta["calibration"]["name"] == "kiln-default"
    assert any(ln.startswith("stage: calibrate") for ln in lines)
