"""Run one build step: find its output in the store (or remote), or compute it in a worker.

Every step runs the same way: look for its output (a stored stage, or for the last step the
artifact itself); under the key's single-flight lock look again (a peer may have just built
it); otherwise run the target's worker in a build directory the store hands out, and publish
what it wrote. Nothing is published unless the worker exited 0 *and* produced files; its log
is published with the output as ``build.log``, and a failed step's log is kept in the store's
``logs/`` bucket.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Mapping

from ..cache import Remote, Store
from ..core import find_entry
from ..errors import BuildError
from ..manifests import IndexEntry, make_record
from ..targets import Stage, Step
from .worker import BUILD_LOG, OnStage, WorkerResult, run_worker

__all__ = ["run_stage", "compile_and_publish", "find_stage"]

Publish = Callable[[Path, WorkerResult, str], IndexEntry]
STAGE_FACTS = "facts.json"  # a stage worker's account of its output (trtllm calibration: samples, tokens used)


def find_stage(store: Store, stage: Stage, remote: Remote | None = None) -> IndexEntry | None:
    """A verified local entry for the stage, pulling it from the remote if only there."""
    return find_entry(store, remote, stage.model_hex, stage.key).entry


def run_stage(store: Store, step: Step, inputs: Mapping[str, IndexEntry], *, remote: Remote | None = None,
              on_stage: OnStage | None = None, before_compute: Callable[[], None] | None = None,
              recompute: bool = False) -> tuple[IndexEntry, bool, dict[str, float]]:
    """Find the step's stage output or compute it (single-flight); return (entry, reused, worker timings).

    ``before_compute`` runs only when the output is not stored (it raises when this machine
    cannot compute it: a stored engine serves a machine without the compiler). ``recompute``:
    compute it even when stored (``kiln build --force``)."""
    stage = step.stage
    assert stage is not None, "the last step is published by kiln.compile.build"
    found = None if recompute else find_stage(store, stage, remote)
    if found is not None:
        return found, True, {}
    if before_compute is not None:
        before_compute()
    with store.single_flight(stage.key):
        found = None if recompute else find_stage(store, stage)
        if found is not None:
            return found, True, {}

        def publish(out: Path, result: WorkerResult, started: str) -> IndexEntry:
            record = make_record(
                key=stage.key, inputs=stage.key_inputs(), spec=stage.entry_spec(), model=stage.entry_model(),
                toolchain=stage.toolchain, started=started, duration_s=result.seconds,
                extra={"stage": stage.name, "depends_on": list(stage.depends_on),  # + the worker's facts.json, if any
                       **({"facts": json.loads((out / STAGE_FACTS).read_text())} if (out / STAGE_FACTS).is_file() else {})},
            )
            return store.publish(out, key=stage.key, spec=stage.entry_spec(), model=stage.entry_model(),
                                 toolchain=stage.toolchain, record=record, move=True)

        entry, timings = compile_and_publish(store, stage.key, step, inputs, publish=publish, on_stage=on_stage)
        return entry, False, timings


def compile_and_publish(
    store: Store,
    key: str,
    step: Step,
    inputs: Mapping[str, IndexEntry],
    *,
    publish: Publish,
    on_stage: OnStage | None = None,
) -> tuple[IndexEntry, dict[str, float]]:
    """Run ``step``'s worker in a build directory and publish its output (with its log).

    The outputs of the earlier steps it reads (``inputs``) are materialised under the build
    directory first. Returns the published entry and the worker's stage timings.
    """
    from ..manifests import utc_now

    with store.build_dir(key) as work:
        out = work / "artifact"
        log = work / BUILD_LOG
        try:
            # Inputs are read by the worker only, in a build directory under the store: links.
            dirs = {name: store.materialize(store.check_artifact(inputs[name]), work / "inputs" / name, link=True)
                    for name in step.inputs}
            started = utc_now()
            result = run_worker(step.argv(out, dirs), log, on_stage=on_stage, what=step.what)
            if not out.is_dir() or not any(out.rglob("*")):
                raise BuildError(
                    f"the {step.what} worker exited 0 but wrote no files into {out}; nothing was published.",
                    log_tail=result.tail,
                )
        except BuildError as e:
            # The build directory goes away; keep the worker's log where the user can read it.
            if log.exists():
                saved = store.keep_failed_log(key, log)
                e.args = (str(e).replace(str(log), str(saved)),)
                e.log_path = str(saved)
            raise
        with open(out / BUILD_LOG, "wb") as published, open(log, "rb") as worker_log:
            for name in step.inputs:  # where the rest of the story is: each input's own build.log
                published.write(f"# input {name}: stored entry {inputs[name].key} (its build.log has its log)\n".encode())
            shutil.copyfileobj(worker_log, published)
        if on_stage:
            on_stage("publish")
        t_pub = time.monotonic()
        entry = publish(out, result, started)
        stages = dict(result.stages)
        stages["publish"] = time.monotonic() - t_pub
        return entry, stages
