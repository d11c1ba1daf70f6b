"""The skeleton every worker process shares: progress lines, exit codes, errors.

A worker is ``python -m kiln.targets.<target>.worker …``: it runs one build step in its own
process, so that a compiler crash, a leak or torch's global state never reaches Kiln, and
its whole output becomes the step's build log. Its stdout protocol, read by
``kiln.compile.worker``: a line ``stage: NAME [details]`` marks the start of a stage (the
parent times it); every other line is log text.

Exit codes (the same for every worker)::

    0  success: the outputs are in the out dir
    1  the step failed (message and traceback in the log)
    2  bad arguments, or a spec the model cannot take
    3  the model's architecture is not supported by this target
    4  the toolchain is not installed here
"""

from __future__ import annotations

import signal
import sys
import time
import traceback
from typing import Callable, Mapping

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_BAD_SPEC", "EXIT_UNSUPPORTED", "EXIT_NO_TOOLCHAIN", "EXIT_MEANINGS",
           "UnsupportedArchitectureError", "describe_exit", "log", "error", "stage", "run"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_SPEC = 2
EXIT_UNSUPPORTED = 3
EXIT_NO_TOOLCHAIN = 4
EXIT_MEANINGS = {
    EXIT_FAILED: "the step failed",
    EXIT_BAD_SPEC: "bad input",
    EXIT_UNSUPPORTED: "unsupported architecture",
    EXIT_NO_TOOLCHAIN: "toolchain not installed here",
}

# What a signal that ended a process most likely means, for the error message.
_SIGNAL_HINTS = {
    "SIGSEGV": "a crash in native code: a compiler, a driver or torch",
    "SIGBUS": "a crash in native code, or a file it had mapped shrank or its disk filled",
    "SIGILL": "an instruction this CPU lacks: code built for another CPU",
    "SIGABRT": "an assertion or an uncaught C++ exception in native code",
    "SIGKILL": "sent from outside; on Linux often by the kernel's out-of-memory killer, see dmesg",
}


class UnsupportedArchitectureError(ValueError):
    """The model's architecture is not one this target builds (exit 3)."""


def log(line: str) -> None:
    print(line, flush=True)


def stage(name: str, details: str = "") -> None:
    """Mark the start of a stage; the parent measures how long it lasts."""
    log(f"stage: {name}" + (f" {details}" if details else ""))


def error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def run(what: str, body: Callable[[], str | None]) -> int:
    """Run ``body`` and turn what it raises into the exit codes above.

    ``body`` returns a one-line summary (logged at the end) or None. ValueError means bad
    input (exit 2; UnsupportedArchitectureError exit 3), ImportError a missing toolchain
    (exit 4), anything else a failure whose traceback goes into the log (exit 1).
    """
    t0 = time.perf_counter()
    try:
        summary = body()
    except UnsupportedArchitectureError as exc:
        error(str(exc))
        return EXIT_UNSUPPORTED
    except ImportError as exc:
        error(f"{what} needs its toolchain, which is not importable here: {exc}")
        return EXIT_NO_TOOLCHAIN
    except ValueError as exc:
        error(str(exc))
        return EXIT_BAD_SPEC
    except Exception as exc:  # the parent stores this log with the failed build
        traceback.print_exc()
        error(f"{what} failed: {type(exc).__name__}: {exc}")
        return EXIT_FAILED
    log(f"finished in {time.perf_counter() - t0:.1f}s" + (f" {summary}" if summary else ""))
    return EXIT_OK


def describe_exit(returncode: int, meanings: Mapping[int, str] | None = None) -> str:
    """How a process ended, for an error message: ``failed (exit 4: toolchain not installed here)``
    with ``meanings=EXIT_MEANINGS`` for a worker, or ``was killed by SIGSEGV (a crash in native
    code: ...)`` for a signal (a negative ``subprocess`` return code)."""
    if returncode >= 0:
        meaning = (meanings or {}).get(returncode)
        return f"failed (exit {returncode}" + (f": {meaning})" if meaning else ")")
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"was killed by signal {-returncode}"
    hint = _SIGNAL_HINTS.get(name)
    return f"was killed by {name}" + (f" ({hint})" if hint else "")
