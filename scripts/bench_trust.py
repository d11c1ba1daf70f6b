#!/usr/bin/env python
"""What a trust policy costs a deployment: `kiln fetch --key` with and without `require: signed`.

One stored artifact (files of --files × --file-kib), signed with an EC P-256 key; then, in the
same run, alternating so both see the same machine state:

* baseline: ``kiln fetch --key KEY --dest D --force`` with no policy (the CLI process, lookup,
  verification of the blobs, materialisation);
* policy: the same with ``--trust-policy`` (``require: signed``): model-signing is imported and
  the signature verified against the manifest (no file is hashed again).

Prints the median seconds of each and the ratio. Also times `kiln sign` (signature and signed
provenance), which a CI job pays once per artifact.

    .venv/bin/python scripts/bench_trust.py              # 8 files of 1 MiB, 9 runs each
    .venv/bin/python scripts/bench_trust.py --files 200  # a manifest with many files
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def kiln(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "kiln.cli", *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"kiln {' '.join(args)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r


def timed(*args: str, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    kiln(*args, env=env)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--file-kib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    with tempfile.TemporaryDirectory(prefix="kiln-bench-trust-") as tmp_:
        tmp = Path(tmp_)
        env = {**os.environ, "KILN_HOME": str(tmp / "store"), "HF_HUB_OFFLINE": "1"}
        key = ec.generate_private_key(ec.SECP256R1())
        (tmp / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
        (tmp / "k.pub.pem").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
        (tmp / "policy.yaml").write_text("require: signed\nkeys:\n  - name: bench\n    public_key: k.pub.pem\n")
        model = tmp / "model"
        model.mkdir()
        (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                                       "hidden_size": 64, "num_attention_heads": 8,
                                                       "num_hidden_layers": 2, "vocab_size": 512}))
        (model / "model.safetensors").write_bytes(b"\0" * 4096)
        art = tmp / "art"
        art.mkdir()
        for i in range(args.files):
            (art / f"part-{i:04d}.bin").write_bytes(os.urandom(args.file_kib * 1024))
        spec = ["--target", "torch-aoti", "--n-positions", "256", "--toolchain", "torch=2.0.0",
                "--toolchain", "transformers=5.0.0", "--toolchain", "hardware=cpu-test"]
        k = json.loads(kiln("store", "put", str(art), str(model), *spec, "--json", env=env).stdout)["key"]
        sign_s = [timed("sign", k, "--sign-key", str(tmp / "k.pem"), env=env) for _ in range(3)]
        fetch = ["fetch", "--key", k, "--dest", str(tmp / "dest"), "--force"]
        base: list[float] = []
        trusted: list[float] = []
        for _ in range(args.runs):
            base.append(timed(*fetch, env=env))
            trusted.append(timed(*fetch, "--trust-policy", str(tmp / "policy.yaml"), env=env))
        b, t = statistics.median(base), statistics.median(trusted)
        print(f"artifact: {args.files} files x {args.file_kib} KiB; {args.runs} runs each, alternating")
        print(f"kiln fetch --key, no policy        median {b:.3f} s  (min {min(base):.3f}, max {max(base):.3f})")
        print(f"kiln fetch --key, require: signed  median {t:.3f} s  (min {min(trusted):.3f}, max {max(trusted):.3f})")
        print(f"ratio policy / no policy: {t / b:.2f}x  (+{t - b:.3f} s)")
        print(f"kiln sign (signature + provenance): median {statistics.median(sign_s):.3f} s")


if __name__ == "__main__":
    main()
