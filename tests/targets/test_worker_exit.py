"""How a worker's end is worded in errors (kiln.targets._worker_main.describe_exit), from real
processes' return codes."""

from __future__ import annotations

import subprocess
import sys

from kiln.targets._worker_main import EXIT_MEANINGS, EXIT_NO_TOOLCHAIN, describe_exit


def _returncode(code: str) -> int:
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode


def test_a_worker_exit_code_is_named_with_its_meaning() -> None:
    rc = _returncode(f"raise SystemExit({EXIT_NO_TOOLCHAIN})")
    assert describe_exit(rc, EXIT_MEANINGS) == "failed (exit 4: toolchain not installed here)"
    assert describe_exit(rc) == "failed (exit 4)"  # another program's codes mean nothing to Kiln
    assert describe_exit(_returncode("raise SystemExit(9)"), EXIT_MEANINGS) == "failed (exit 9)"


def test_a_signal_is_named_with_what_it_most_likely_means() -> None:
    killed = _returncode("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert describe_exit(killed).startswith("was killed by SIGKILL (sent from outside; on Linux often by the kernel's out-of-memory killer")
    crashed = _returncode("import ctypes; ctypes.string_at(0)")
    assert describe_exit(crashed) == "was killed by SIGSEGV (a crash in native code: a compiler, a driver or torch)"
    assert describe_exit(_returncode("import os, signal; os.kill(os.getpid(), signal.SIGTERM)")) == "was killed by SIGTERM"
    assert describe_exit(-200) == "was killed by signal 200"  # no such signal: the number stands
