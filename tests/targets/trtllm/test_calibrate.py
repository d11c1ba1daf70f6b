"""Offline calibration: corpus parsing, what is collected, determinism, bad input."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from kiln.targets.trtllm.calibrate import (
    DEFAULT_NUM_SAMPLES,
    DEFAULT_SEQ_LEN,
    FACTS_FILE,
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

REPO = Path(__file__).resolve().parents[3]


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
    assert source["name"] == "kiln-default" and len(source["sha256"]) == 64
    assert len(set(texts)) == len(texts)
    assert all(len(t.split()) >= 40 for t in texts)


def test_default_corpus_has_tensorrt_llms_strength() -> None:
    """512 texts, each long enough for 512 tokens: TensorRT-LLM's 512 x 512 calibration."""
    texts, source = load_calib_texts(None)
    assert len(texts) >= DEFAULT_NUM_SAMPLES and source["texts"] == len(texts)
    # No English BPE tokenizer averages 6 characters a token (SmolLM2's: 4.5 on this corpus), so
    # 6 characters a token is a safe lower bound on each text's tokens without a tokenizer.
    assert min(len(t) for t in texts) >= 6 * DEFAULT_SEQ_LEN
    # Prose, not code or tables: mostly letters, no reStructuredText or doctest left over.
    for t in texts:
        letters = sum(c.isalpha() for c in t)
        assert letters >= 0.75 * len(t.replace(" ", "")), t[:200]
        assert "::" not in t and ">>>" not in t and "+---" not in t and "``" not in t, t[:200]
    # Both sources alternate from the start: the first calib_samples texts mix both registers.
    assert all("Python" in t for t in texts[1:64:2]) and sum("Python" in t for t in texts[0:64:2]) <= 2
    # The shipped file carries the notices its sources' licenses ask for (PSF clause 2, MIT).
    header = gzip.decompress(default_calib_file().read_bytes()).decode().split("\n\n", 1)[0]
    assert "Copyright (c) 2001-2023 Python Software Foundation; All Rights Reserved" in header
    assert "Copyright (c) 2016-2017 Julia Silge, MIT license" in header and "Changes made" in header
    assert source["sha256"] == hashlib.sha256(default_calib_file().read_bytes()).hexdigest()


SMOLLM2 = REPO / ".kiln-demo" / "SmolLM2-135M-Instruct"


@pytest.mark.skipif(not (SMOLLM2 / "tokenizer.json").is_file(),
                    reason="SmolLM2 is fetched by scripts/get_smollm2.py (tests/test_smollm2.py); not here")
def test_default_corpus_texts_reach_512_real_tokens() -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(SMOLLM2)
    texts, _ = load_calib_texts(None)
    assert min(len(tok(t).input_ids) for t in texts) >= DEFAULT_SEQ_LEN


def _corpus_script() -> Any:
    spec = importlib.util.spec_from_file_location("make_calib_corpus", REPO / "scripts" / "make_calib_corpus.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_corpus_script_keeps_rst_prose_and_drops_code() -> None:
    m = _corpus_script()
    rst = """\
.. _tut-intro:

*****************
An Informal Intro
*****************

Python's :func:`len` returns the number of items, and :meth:`~str.join` concatenates them;
see :pep:`8` and :issue:`1234` for the ``style`` rules, or `the guide <https://example.org>`_.

For example::

   >>> len("abc")
   3

.. code-block:: python

   print("this is code, not prose")

.. note::

   A note is prose, and its body is kept when it reads like a sentence of English text.

+-------+-------+
| table | cells |
+-------+-------+

* A list item is a paragraph of its own, if it is long enough to read as prose here.
"""
    paras = m.rst_paragraphs(rst)
    assert paras == [
        "Python's len() returns the number of items, and join() concatenates them; see PEP 8 and bpo-1234 for "
        "the style rules, or the guide.",
        "A note is prose, and its body is kept when it reads like a sentence of English text.",
        "A list item is a paragraph of its own, if it is long enough to read as prose here.",
    ]
    # Austen: headings and front matter go, editors' notes go, italics underscores go.
    lines = ["EMMA", "", "VOLUME I", "", "CHAPTER I", "", "Emma Woodhouse, handsome, _clever_,", "and rich.", "",
             "[End volume one of this edition.]", "", "Finis"]
    assert m.austen_paragraphs(lines) == ["Emma Woodhouse, handsome, clever, and rich."]
    texts = m.chunk(["a" * 2000, "b" * 1299, "c" * 10, "d" * 3300, "e"])
    assert [len(t) for t in texts] == [2000 + 1 + 1299, 10 + 1 + 3300]  # joined with spaces, >= MIN_CHARS


@pytest.mark.skipif(not os.environ.get("KILN_CALIB_DEB_DIR"),
                    reason="set KILN_CALIB_DEB_DIR to a directory holding r-cran-janeaustenr_1.0.0-1_all.deb and "
                           "python3.11-doc_3.11.2-6+deb12u9_all.deb (`apt-get download`) to rebuild the corpus")
def test_corpus_script_reproduces_the_shipped_corpus() -> None:
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "make_calib_corpus.py"), "--deb-dir",
                        os.environ["KILN_CALIB_DEB_DIR"], "--check"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


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


def test_a_short_corpus_is_used_whole_and_said_loudly(tmp_path: Path, model: Path) -> None:
    corpus = tmp_path / "short.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n\nhello world, this is a tiny model\n")
    lines: list[str] = []
    _, meta = calibrate(model, tmp_path / "s", calib_file=corpus, num_samples=5, seq_len=8, log=lines.append)
    cal = meta["calibration"]
    assert (cal["num_samples_used"], cal["num_samples_requested"]) == (2, 5)
    assert len(cal["warnings"]) == 1 and "used 2 samples, not the 5 requested" in cal["warnings"][0]
    assert "short.txt has only 2 texts" in cal["warnings"][0]
    assert any(ln.startswith("WARNING: calibration used 2 samples") for ln in lines)
    # What the stage's build record quotes: requested and used, side by side.
    facts = json.loads((tmp_path / "s" / FACTS_FILE).read_text())["calibration"]
    assert facts["samples_requested"] == 5 and facts["samples_used"] == 2 and facts["texts_available"] == 2
    assert facts["tokens_used"] == cal["tokens"] and 0 < facts["tokens_used"] <= 2 * 8
    assert facts["tokens_at_most"] == 5 * 8 and facts["warnings"] == cal["warnings"]
    assert facts["corpus"] == "short.txt" and facts["corpus_sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()


def test_a_full_corpus_has_no_warning(tmp_path: Path, model: Path) -> None:
    _, meta = calibrate(model, tmp_path / "s", num_samples=3, seq_len=8, log=_quiet)
    assert meta["calibration"]["warnings"] == []
    assert json.loads((tmp_path / "s" / FACTS_FILE).read_text())["calibration"]["samples_used"] == 3


def test_gzip_calibration_files(tmp_path: Path) -> None:
    jsonl = tmp_path / "c.jsonl.gz"
    jsonl.write_bytes(gzip.compress(b'{"text": "alpha beta"}\n{"text": "gamma"}\n'))
    texts, source = load_calib_texts(jsonl)
    assert texts == ["alpha beta", "gamma"]
    assert source["sha256"] == hashlib.sha256(jsonl.read_bytes()).hexdigest()  # the file's bytes, as --calib-file keys it
    plain = tmp_path / "c.txt.gz"
    plain.write_bytes(gzip.compress(b"one\n\ntwo\n"))
    assert load_calib_texts(plain)[0] == ["one", "two"]
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="is not a valid gzip file"):
        load_calib_texts(bad)


def test_pretokenised_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "ids.jsonl"
    path.write_text('{"input_ids": [5, 6, 7]}\n\n{"input_ids": [9]}\n')
    texts, source = load_calib_texts(path)
    assert texts == [[5, 6, 7], [9]] and source["pretokenised"] is True
    assert "pretokenised" not in load_calib_texts(None)[1]
    for content, message in [
        ('{"input_ids": [1, 2]}\n{"text": "words"}\n', "mixes 'text' and 'input_ids' lines"),
        ('{"input_ids": []}\n', "line 1: 'input_ids' must be a non-empty list of token ids"),
        ('{"input_ids": [1, -2]}\n', "line 1: 'input_ids' must be a non-empty list"),
        ('{"input_ids": [1, true]}\n', "line 1: 'input_ids' must be a non-empty list"),
        ('{"input_ids": "1 2"}\n', "line 1: 'input_ids' must be a non-empty list"),
    ]:
        path.write_text(content)
        with pytest.raises(ValueError, match=message):
            load_calib_texts(path)


def test_pretokenised_samples_calibrate_like_their_text_without_a_tokenizer(tmp_path: Path, model: Path) -> None:
    import shutil

    from transformers import AutoTokenizer

    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n\nhello world, this is a tiny model\n")
    from_text, _ = calibrate(model, None, calib_file=corpus, num_samples=2, seq_len=6, log=_quiet)
    tok = AutoTokenizer.from_pretrained(model)
    ids = tmp_path / "c.jsonl"
    ids.write_text("".join(json.dumps({"input_ids": tok(t).input_ids}) + "\n" for t in parse_calib_text(corpus.read_text())))
    # The same model without its tokenizer files: the ids are all calibration needs.
    bare = tmp_path / "bare"
    shutil.copytree(model, bare, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    from_ids, meta = calibrate(bare, None, calib_file=ids, num_samples=2, seq_len=6, log=_quiet)
    assert meta["calibration"]["pretokenised"] is True and meta["calibration"]["tokens"] <= 12
    assert set(from_ids) == set(from_text)
    for name in from_text:
        for kind in ("x", "y", "w"):
            assert torch.equal(from_ids[name][kind], from_text[name][kind]), (name, kind)
    ids.write_text('{"input_ids": [1, 2, 100000]}\n')
    with pytest.raises(ValueError, match="sample 1 has token id 100000, outside the model's vocabulary of"):
        calibrate(bare, None, calib_file=ids, num_samples=1, seq_len=6, log=_quiet)
