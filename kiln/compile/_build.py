"""Build orchestration: lookup → single-flight → worker compile → publish.

The order matters for what users are promised:

* A hit returns without compiling (a second `kiln build` of the same spec is a lookup).
* Eight builders of one key compile once: the first holds the key's single-flight lock while
  it builds; the others wait for it, then find the artifact.
* The compile runs in a worker subprocess, in a build directory under the store root (same
  filesystem, so publishing renames the outputs into blobs instead of copying them). A build
  directory belongs to a live builder while its ``.lock`` is held; gc removes the others.
* Nothing is published unless the worker exited 0 *and* produced files. The worker's log is
  published inside the artifact as ``build.log``.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..api import Resolution, lookup, put
from ..cache._remote import Remote
from ..cache._store import Store
from ..errors import BuildError, ToolchainError
from ..manifests._index import IndexEntry
from ..manifests._record import utc_now
from ..targets import get_target
from ._worker import WorkerResult, run_worker

__all__ = ["BuildResult", "build", "BUILD_LOG"]

BUILD_LOG = "build.log"


@dataclass(frozen=True)
class BuildResult:
    entry: IndexEntry
    hit: bool  # True: found in the store, nothing compiled
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)
    waited_for_peer: bool = False  # another process built it while we waited
    source: str | None = None  # on a hit: "local", or "remote" (pulled)

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.entry.key,
            "manifest": self.entry.manifest,
            "hit": self.hit,
            "source": self.source,
            "compiled": not self.hit,
            "waited_for_peer": self.waited_for_peer,
            "seconds": round(self.seconds, 3),
            "stages": {k: round(v, 3) for k, v in self.stages.items()},
            "size": self.entry.size,
            "files": self.entry.files,
        }


def _require_real_toolchain(res: Resolution) -> None:
    """A build must run with the toolchain its key names: pins may not stand in for it."""
    target = get_target(res.spec.target)
    detected = target.detect_toolchain(res.spec)
    missing = [c for c, v in detected.items() if v is None]
    if missing:
        raise ToolchainError(
            f"cannot build {target.name} here: {', '.join(missing)} not found on this machine. "
            f"{target.install_hint}."
        )
    pinned_off = [c for c, origin in res.toolchain_origin.items() if origin == "pinned" and res.toolchain[c] != detected[c]]
    if pinned_off:
        raise ToolchainError(
            "--toolchain pins a different version than this machine has for "
            + ", ".join(f"{c} (pinned {res.toolchain[c]}, installed {detected[c]})" for c in pinned_off)
            + "; a build is keyed by the toolchain that really compiles it: drop the pin."
        )


class _BuildDir:
    """A build directory under the store, owned by this process while its flock is held."""

    def __init__(self, store: Store, key: str) -> None:
        root = store.root / "builds"
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / f"{key[:16]}-{os.getpid()}-{secrets.token_hex(3)}"
        # Lock first, then create: gc never sees this directory without a held lock.
        self._fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.path.mkdir()

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        try:
            os.unlink(str(self.path) + ".lock")
        finally:
            os.close(self._fd)


def build(
    res: Resolution,
    *,
    store: Store,
    remote: Remote | None = None,
    force: bool = False,
    on_stage: Callable[[str], None] | None = None,
    calib_file: Path | None = None,
) -> BuildResult:
    """Build ``res`` unless the local store or the remote already has it (then pull it)."""
    t0 = time.monotonic()
    if not force:
        found = lookup(res, store=store, remote=remote)
        if found.hit:
            assert found.entry is not None
            return BuildResult(found.entry, True, time.monotonic() - t0, source=found.source)
    target = get_target(res.spec.target)
    if target.name == "trtllm":
        # Conversion stages run on any CPU machine; only the engine stage needs the toolchain.
        from ._trtllm_build import build_trtllm

        return build_trtllm(res, store=store, remote=remote, force=force, on_stage=on_stage, t0=t0,
                            calib_file=calib_file)
    _require_real_toolchain(res)  # a missing compiler fails here, before any work, saying where builds run
    key = res.key
    if on_stage:
        on_stage("waiting for lock")
    with store.single_flight(key):
        if not force:
            found = lookup(res, store=store)  # a peer may have built it while we waited
            if found.hit:
                assert found.entry is not None
                return BuildResult(found.entry, True, time.monotonic() - t0, waited_for_peer=True, source=found.source)
        def publish(out: Path, result: WorkerResult, started: str) -> IndexEntry:
            return put(res, out, store=store, duration_s=result.seconds, started=started, move=True,
                       extra={"stages_s": {k: round(v, 3) for k, v in result.stages.items()}})

        entry, stages = compile_and_publish(
            store, key, what=f"{target.name} compile", argv=lambda out, _work: target.worker_argv(res, out),
            publish=publish, on_stage=on_stage,
        )
        return BuildResult(entry, False, time.monotonic() - t0, stages)


def compile_and_publish(
    store: Store,
    key: str,
    *,
    what: str,
    argv: Callable[[Path, Path], list[str]],
    publish: Callable[[Path, WorkerResult, str], IndexEntry],
    on_stage: Callable[[str], None] | None = None,
) -> tuple[IndexEntry, dict[str, float]]:
    """Run one worker in a locked build directory and publish its output (with its log).

    ``argv(out_dir, work_dir)`` gives the worker's arguments; inputs it needs can be
    materialised under ``work_dir``. Nothing is published unless the worker exits 0 and
    writes files.
    """
    bdir = _BuildDir(store, key)
    try:
        out = bdir.path / "artifact"
        started = utc_now()
        result = run_worker(argv(out, bdir.path), bdir.path / BUILD_LOG, on_stage=on_stage, what=what)
        if not out.is_dir() or not any(out.rglob("*")):
            raise BuildError(
                f"the {what} worker exited 0 but wrote no files into {out}; nothing was published.",
                log_tail=result.tail,
            )
        shutil.copyfile(bdir.path / BUILD_LOG, out / BUILD_LOG)
        if on_stage:
            on_stage("publish")
        t_pub = time.monotonic()
        entry = publish(out, result, started)
        stages = dict(result.stages)
        stages["publish"] = time.monotonic() - t_pub
        return entry, stages
    except BuildError as e:
        # The build directory goes away; keep the worker's log where the user can read it.
        logs = store.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        saved = logs / f"{key[:16]}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
        if (bdir.path / BUILD_LOG).exists():
            shutil.copyfile(bdir.path / BUILD_LOG, saved)
            e.args = (str(e).replace(str(bdir.path / BUILD_LOG), str(saved)),)
            e.log_path = str(saved)
        raise
    finally:
        bdir.close()
