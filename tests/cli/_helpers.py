"""Helpers for the CLI tests: a stored artifact from fixture files, and a real terminal (pty).

Nothing is mocked: `kiln store put` publishes real files into the store the test's KILN_HOME
names, and :func:`run_on_terminal` gives the real CLI a pseudo-terminal, as a person's shell
would, to see what it prints there (live bars, shortened keys).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from dataclasses import dataclass
from pathlib import Path

from ..conftest import run_kiln

# A pinned toolchain: keys do not depend on what is installed, and nothing imports torch.
PINS = ["--toolchain", "torch=2.0.0", "--toolchain", "transformers=5.0.0", "--toolchain", "hardware=cpu-test"]
AOTI = ["--target", "torch-aoti", "--n-positions", "256", *PINS]


def artifact_dir(root: Path, payload: bytes = b"engine bytes", shared: bytes = b"w" * 5000) -> Path:
    """A directory shaped like a build's output (an engine file and a weights file)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "engine.pt2").write_bytes(payload)
    (root / "weights.safetensors").write_bytes(shared)
    return root


def put(model: Path, art: Path, *spec: str) -> str:
    """`kiln store put`; returns the key."""
    r = run_kiln("store", "put", str(art), str(model), *(spec or AOTI), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return str(json.loads(r.stdout)["key"])


@dataclass
class TerminalRun:
    returncode: int
    terminal: str  # what the command wrote to the terminal (escape sequences included)
    other: str  # the stream that was not the terminal


def run_on_terminal(*args: str, stream: str = "stdout", columns: int = 100, env: dict | None = None) -> TerminalRun:
    """Run `kiln ARGS` with ``stream`` ("stdout" or "stderr") on a pseudo-terminal of ``columns``."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    full_env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns), **(env or {})}
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        full_env.pop(name, None)
    on_tty = {stream: slave}
    proc = subprocess.Popen([sys.executable, "-m", "kiln.cli", *args], stdin=subprocess.DEVNULL,
                            stdout=on_tty.get("stdout", subprocess.PIPE), stderr=on_tty.get("stderr", subprocess.PIPE),
                            env=full_env)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    other_pipe = proc.stderr if stream == "stdout" else proc.stdout
    assert other_pipe is not None
    with other_pipe:
        other = other_pipe.read().decode(errors="replace")
    proc.wait(timeout=120)
    reader.join(timeout=120)
    os.close(master)
    return TerminalRun(proc.returncode, b"".join(chunks).decode(errors="replace"), other)


def until_blocked_on(path: Path, limit: int = 100_000) -> None:
    """Return once some process is blocked waiting for a flock on ``path``, as /proc/locks shows it
    (``N: -> FLOCK ADVISORY WRITE PID MAJ:MIN:INODE …``): no sleep stands in for "it waits by now"."""
    inode = os.stat(path).st_ino
    for _ in range(limit):
        with open("/proc/locks") as f:
            if any("->" in line and line.split()[6].endswith(f":{inode}") for line in f):
                return
        threading.Event().wait(0.01)
    raise AssertionError(f"nobody ever waited for {path}")
