"""Run a target's compile in a worker subprocess, stream its progress, keep its log.

Heavy imports and compilers live in the worker: a compiler crash or leak cannot take Kiln
down, and the worker's whole output becomes ``build.log`` inside the artifact. The parent
reads the worker's stdout line by line; a line ``stage: NAME …`` marks the start of a stage
(the protocol: :mod:`kiln.targets._worker_main`), which is timed here and reported through
``on_stage(NAME)``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import BuildError
from ..targets import BUILD_LOG

__all__ = ["BUILD_LOG", "OnStage", "WorkerResult", "run_worker"]


OnStage = Callable[[str], None]  # called with a stage's name when it starts


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
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONUNBUFFERED"] = "1"
    t0 = time.monotonic()
    tail: deque[str] = deque(maxlen=40)
    stages: dict[str, float] = {}
    current, since = "start", t0
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env, bufsize=1
        ) as proc:
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    tail.append(line.rstrip("\n"))
                    if line.startswith("stage: "):
                        now = time.monotonic()
                        stages[current] = stages.get(current, 0.0) + now - since
                        current, since = line[len("stage: "):].strip().split()[0], now
                        if on_stage:
                            on_stage(current)
                rc = proc.wait()
            except BaseException:
                proc.kill()
                raise
    now = time.monotonic()
    stages[current] = stages.get(current, 0.0) + now - since
    result = WorkerResult(rc, now - t0, stages, "\n".join(tail))
    if rc != 0:
        raise BuildError(
            f"the {what} worker failed (exit {rc}) after {result.seconds:.1f} s; nothing was published. "
            f"Full log: {log_path}",
            log_tail=result.tail,
        )
    return result
