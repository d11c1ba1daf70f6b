"""Build orchestration: lookup → the target's steps → publish. One path for every target.

The order matters for what users are promised:

* A hit returns without compiling (a second `kiln build` of the same spec is a lookup).
* A weight-independent target's engine is a stage keyed by the architecture: a fine-tune of a
  stored architecture compiles nothing (``"compiled": false``, the engine it reused named).
* A target says which steps a build needs (``Target.build_steps``); each intermediate step's
  output is a stored stage that other shapes and machines reuse (``kiln.compile.stages``).
* A step that needs the real toolchain checks for it before it computes (a stored stage needs
  none: a fine-tune of an architecture whose Neuron engine is stored builds without the SDK):
  pins may label a lookup, never a compile. Where it is missing, the target says what to do
  (``Target.missing_toolchain_error``: "install it", or for trtllm "the CPU stages are stored;
  finish on a GPU machine" with exit 3).
* Eight builders of one key compile once: the first holds the key's single-flight lock while
  it builds; the others wait for it, then find the artifact.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..cache import Progress, PushResult, Remote, Store, push

from ..core import Resolution, lookup, put
from ..errors import ToolchainError
from ..manifests import IndexEntry
from ..models import check_weight_files, fetch_model_files
from ..targets import ENGINE_STAGE, Step, Target, get_target
from ..targets.base import StoredStep
from .stages import compile_and_publish, run_stage
from .worker import OnStage, WorkerResult

__all__ = ["BuildResult", "build", "plan_build", "push_build", "require_real_toolchain"]


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build` did: the artifact's index entry, and whether it was a hit or compiled (with timings)."""

    entry: IndexEntry
    hit: bool  # True: found in the store, nothing compiled
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)
    waited_for_peer: bool = False  # another process built it while we waited
    source: str | None = None  # on a hit: "local", or "remote" (pulled)
    # A weight-independent target: the compiled engine stage this build used, and whether it was
    # found (compiled for another model of the same architecture, or an earlier build) or compiled now.
    engine: StoredStep | None = None
    compiled: bool | None = None  # None: as ``not hit``; False: nothing was compiled (every compiling step reused)
    # The stored stages this build used (found or computed): pushed with the artifact (push_build),
    # so that another machine building another model of the architecture finds the engine.
    stage_entries: tuple[IndexEntry, ...] = ()

    @property
    def did_compile(self) -> bool:
        return not self.hit if self.compiled is None else self.compiled

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.entry.key,
            "manifest": self.entry.manifest,
            "hit": self.hit,
            "source": self.source,
            "compiled": self.did_compile,
            "engine": None if self.engine is None else {"key": self.engine.key, "reused": self.engine.reused},
            "waited_for_peer": self.waited_for_peer,
            "seconds": round(self.seconds, 3),
            "stages": {k: round(v, 3) for k, v in self.stages.items()},
            "size": self.entry.size,
            "files": self.entry.files,
        }


def require_real_toolchain(target: Target, res: Resolution, stored: list[StoredStep], where: str) -> None:
    """A compile must run with the toolchain its key names: pins may not stand in for it."""
    detected = target.installed_toolchain(res.spec)
    missing = [c for c, v in detected.items() if v is None]
    if missing:
        raise target.missing_toolchain_error(res, missing, stored, where)
    pinned_off = [c for c, origin in res.toolchain_origin.items() if origin == "pinned" and res.toolchain[c] != detected[c]]
    if pinned_off:
        raise ToolchainError(
            "--toolchain pins a different version than this machine has for "
            + ", ".join(f"{c} (pinned {res.toolchain[c]}, installed {detected[c]})" for c in pinned_off)
            + "; a build is keyed by the toolchain that really compiles it: drop the pin."
        )
    # A consumer's image ships its own SDK: graphs compiled with another would not be the ones it loads.
    image_off = [c for c, origin in res.toolchain_origin.items()
                 if origin not in ("pinned", "detected") and res.toolchain[c] != detected[c]]
    if image_off:
        raise ToolchainError(
            f"the consumer's image ships a different toolchain than this machine has: "
            + ", ".join(f"{c} {res.toolchain[c]} ({res.toolchain_origin[c]}; installed {detected[c]})" for c in image_off)
            + "; build where exactly that SDK is installed (the image itself, or a host with those versions).")


def build(
    res: Resolution,
    *,
    store: Store,
    remote: Remote | None = None,
    force: bool = False,
    on_stage: OnStage | None = None,
    calib_file: Path | None = None,
) -> BuildResult:
    """Build ``res`` unless the local store or the remote already has it (then pull it)."""
    t0 = time.monotonic()
    if not force:
        found = lookup(res, store=store, remote=remote)
        if found.hit:
            assert found.entry is not None
            return BuildResult(found.entry, True, time.monotonic() - t0, source=found.source)
    store.require_writable("building")  # a read-only store says so before any work
    fetch_model_files(res.model, store.memo)  # resolved from Hub metadata: the weights come now, checked
    check_weight_files(res.model)  # a corrupt or truncated weight file fails here, not in a worker minutes later
    target = get_target(res.spec.target)
    steps = target.build_steps(res, calib_file=calib_file)  # bad inputs fail here, before any work
    if not res.complete:
        # No key without the toolchain (trtllm on a CPU machine): the stages this machine can run are
        # stored, and the last step says what is missing (exit 3) before it would need the key.
        return _run_steps(res, target, steps, store=store, remote=remote, force=force, on_stage=on_stage, t0=t0)
    key = res.key

    def waiting(holder: str) -> None:  # called only when another builder holds the key's lock
        if on_stage:
            on_stage(f"waiting for the build lock of {key[:12]}: {holder}")

    # Single-flight on the build key for the whole build, stages included: a peer building the
    # same artifact is waited for before anything is compiled. (Stage locks are taken inside it
    # and never the other way round, so builders of different artifacts cannot deadlock.)
    with store.single_flight(key).held(on_wait=waiting):
        if not force:
            found = lookup(res, store=store)  # a peer may have built it while we waited
            if found.hit:
                assert found.entry is not None
                return BuildResult(found.entry, True, time.monotonic() - t0, waited_for_peer=True, source=found.source)
        return _run_steps(res, target, steps, store=store, remote=remote, force=force, on_stage=on_stage, t0=t0)


def _run_steps(res: Resolution, target: Target, steps: tuple[Step, ...], *, store: Store, remote: Remote | None,
               force: bool, on_stage: OnStage | None, t0: float) -> BuildResult:
    """Every step of a build (the caller holds the build key's lock): stages found or computed, then the artifact."""
    *stages, last = steps
    outputs: dict[str, IndexEntry] = {}
    stored: list[StoredStep] = []
    times: dict[str, float] = {}
    for step in stages:
        # The toolchain must be here only to compute a stage, not to use a stored one.
        check = functools.partial(require_real_toolchain, target, res, list(stored), str(store.root)) \
            if step.needs_toolchain else None
        t = time.monotonic()
        # --force recompiles: a compiling stage is computed again, not found (conversions are reused).
        outputs[step.name], reused, worker_times = run_stage(
            store, step, outputs, remote=remote, on_stage=on_stage, before_compute=check,
            recompute=force and step.compiles)
        _add_times(times, {step.name: time.monotonic() - t, **worker_times})
        stored.append(StoredStep(step.name, outputs[step.name].key, outputs[step.name].files, reused))
        if reused and on_stage and step.compiles:
            on_stage(f"{step.name}: reusing {outputs[step.name].key[:12]}, compiled for "
                     f"{outputs[step.name].model.get('ref') or 'another model'}: nothing to compile")
    if last.needs_toolchain:
        require_real_toolchain(target, res, stored, str(store.root))

    def publish(out: Path, result: WorkerResult, started: str) -> IndexEntry:
        facts = {name: f for name, e in outputs.items()  # what each stage's record says it used (samples, tokens)
                 if (f := store.read_record(store.read_manifest(e.manifest)).get("extra", {}).get("facts"))}
        extra = {"stages_s": {k: round(v, 3) for k, v in result.stages.items()},
                 **{name: entry.key for name, entry in outputs.items()}, **({"stage_facts": facts} if facts else {})}
        return put(res, out, store=store, duration_s=result.seconds, started=started, move=True, extra=extra)

    entry, worker_times = compile_and_publish(store, res.key, last, outputs, publish=publish, on_stage=on_stage)
    _add_times(times, worker_times)
    ran = [step for step, s in zip(stages, stored) if not s.reused] + [last]
    return BuildResult(entry, False, time.monotonic() - t0, times,
                       engine=next((s for s in stored if s.name == ENGINE_STAGE), None),
                       compiled=any(step.compiles for step in ran), stage_entries=tuple(outputs.values()))


def _add_times(total: dict[str, float], more: dict[str, float]) -> None:
    """Stage timings of several steps in one table: a name two workers share (imports, load) adds up."""
    for name, seconds in more.items():
        total[name] = total.get(name, 0.0) + seconds


def plan_build(res: Resolution, *, store: Store, calib_file: Path | None = None) -> dict[str, object]:
    """What `kiln build` would do, without doing it (``kiln build --dry-run``): the key, each step
    with its stored stage (if found in the local store) and its exact vendor invocation where the
    target says one (neuron: the consumer's class, kwargs and NeuronConfig, and env), else its
    worker command line (OUT stands for its build directory)."""
    target = get_target(res.spec.target)
    steps = []
    for step in target.build_steps(res, calib_file=calib_file):
        entry = {"name": step.name, "what": step.what, "compiles": step.compiles,
                 "needs_toolchain": step.needs_toolchain}
        if step.stage is not None:
            stored = store.get_entry(step.stage.model_hex, step.stage.key) if res.complete else None
            entry["stage"] = {"name": step.stage.name, "key": step.stage.key if res.complete else None,
                              "stored": stored is not None}
        invocation = target.step_invocation(res, step.name)
        if invocation is not None:
            entry["invocation"] = invocation
        else:
            entry["argv"] = ["python", *step.argv(Path("OUT"), {name: Path(name.upper()) for name in step.inputs})]
        steps.append(entry)
    return {"key": res.key if res.complete else None, "spec": res.entry_spec(), "model": res.model_summary(),
            "toolchain": dict(res.toolchain), "toolchain_origin": dict(res.toolchain_origin), "steps": steps,
            "notes": list(res.notes)}


def push_build(store: Store, remote: Remote, result: BuildResult, progress: Progress | None = None, *,
               replace_signed: bool = False) -> PushResult:
    """Push a build's artifact, then the compiled engine stage it holds (a weight-independent target):
    the artifact is complete without it, but another machine building another model of the
    architecture needs it to compile nothing. Conversion stages (a TensorRT-LLM checkpoint is the
    whole converted model) are pushed only when asked (`kiln push --key`). Returns the artifact's push."""
    pushed = push(store, remote, result.entry, progress=progress, replace_signed=replace_signed)
    for entry in result.stage_entries:
        if entry.spec.get("stage") == ENGINE_STAGE:
            push(store, remote, entry, replace_signed=replace_signed)
    return pushed
