"""Run a target's compile in a worker subprocess, stream its progress, keep its log.

Heavy imports and compilers live in the worker: a compiler crash or leak cannot take Kiln
down, and the worker's whole output becomes ``build.log`` inside the artifact. The parent
reads the worker's stdout line by line; a line ``stage: NAME …`` marks the start of a stage
(the protocol: :mod:`kiln.targets._worker_main`), which is timed here and reported through
``on_stage(NAME)``.

The worker dies with its parent. Killing only `kiln build` (SIGKILL, an OOM kill) must not
leave a compiler running to the end for nobody: the worker is started through a few lines of
Python (:data:`_DIE_WITH_PARENT`) that ask Linux for a parent-death signal (SIGKILL), then
check that the parent did not die before the request (``getppid``), then exec the real worker
— the request survives exec. The parent-death signal fires when the *thread* that started the
worker exits; ``run_worker`` blocks in that thread until the worker is done, so it fires only
when the parent dies. The worker also leads its own process group, and whenever ``run_worker``
stops waiting for it early (an error, Ctrl-C) it kills the whole group, so the compiler's own
children go too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import BuildError
from ..targets import BUILD_LOG
from ..targets._worker_main import EXIT_MEANINGS, describe_exit

__all__ = ["BUILD_LOG", "OnStage", "WorkerResult", "run_worker"]


OnStage = Callable[[str], None]  # called with a stage's name when it starts

# argv: PARENT_PID PYTHON ARGS...: die with the parent (Linux), then become the worker.
_DIE_WITH_PARENT = """
import os, signal, sys
parent = int(sys.argv[1])
if sys.platform.startswith("linux"):
    import ctypes
    PR_SET_PDEATHSIG = 1
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        # A sandbox that refuses it: build anyway (the build is right; only a killed parent's
        # worker would run on), and say so in the log.
        print("kiln worker: prctl(PR_SET_PDEATHSIG) failed: " + os.strerror(ctypes.get_errno()), flush=True)
if os.getppid() != parent:
    os._exit(1)  # the parent died before the request: nobody is waiting for this build
os.execv(sys.argv[2], sys.argv[2:])
"""


@dataclass
class WorkerResult:
    returncode: int
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds spent in it
    tail: str = ""


def run_worker(
    argv: Sequence[str],
    log_path: Path,
    *,
    on_stage: OnStage | None = None,
    env: dict[str, str] | None = None,
    what: str = "build",
) -> WorkerResult:
    """Run ``python <argv>``; write every output line to ``log_path``; raise BuildError on failure."""
    cmd = [sys.executable, *argv]
    guarded = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd]
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONUNBUFFERED"] = "1"
    # A crash in native code (a compiler, a driver, torch's package loader) leaves the worker's
    # Python stack in its log instead of a bare exit status.
    full_env.setdefault("PYTHONFAULTHANDLER", "1")
    t0 = time.monotonic()
    tail: deque[str] = deque(maxlen=40)
    crash_report: list[str] = []  # faulthandler's block, which can be longer than the tail
    stages: dict[str, float] = {}
    current, since = "start", t0
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        with subprocess.Popen(
            guarded, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env, bufsize=1,
            process_group=0,  # its own group: killing it takes the compiler's children too
        ) as proc:
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    tail.append(line.rstrip("\n"))
                    # The last report counts: a compiler's child process may have crashed earlier.
                    # [:300]: its "Extension modules: ..." line runs to kilobytes.
                    if line.startswith("Fatal Python error: "):
                        crash_report = [line.rstrip("\n")[:300]]
                    elif 0 < len(crash_report) < _CRASH_LINES:
                        crash_report.append(line.rstrip("\n")[:300])
                    if line.startswith("stage: "):
                        now = time.monotonic()
                        stages[current] = stages.get(current, 0.0) + now - since
                        current, since = line[len("stage: "):].strip().split()[0], now
                        if on_stage:
                            on_stage(current)
                rc = proc.wait()
            except BaseException:
                _kill_group(proc)
                raise
    now = time.monotonic()
    stages[current] = stages.get(current, 0.0) + now - since
    crashed = rc < 0 and bool(crash_report)  # killed by a signal faulthandler reported
    result = WorkerResult(rc, now - t0, stages, "\n".join(crash_report if crashed else tail))
    if rc != 0:
        # The stage a worker last announced began before the crash; it may have finished (the
        # H200's SIGSEGV came from loading the compiled package, after "compile done").
        where = f"after its {current!r} stage began" if current != "start" else "before its first stage"
        crash = " Its Python stack is at the end of the log." if crashed else ""
        raise BuildError(
            f"the {what} worker {describe_exit(rc, EXIT_MEANINGS)} {where}, {result.seconds:.1f} s in; "
            f"nothing was published.{crash} Full log: {log_path}",
            log_tail=result.tail,
            crashed=crashed,
        )
    return result


_CRASH_LINES = 80  # of faulthandler's report, kept as the error's log tail


def _kill_group(proc: "subprocess.Popen[str]") -> None:
    """SIGKILL the worker's process group (the worker and every child it started)."""
    if proc.returncode is None:  # not reaped yet, so its pid (the group's id) is still ours
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is gone already
    proc.wait()
