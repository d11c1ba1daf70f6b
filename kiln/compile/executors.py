"""Running a planned matrix: on this machine (memory-aware threads) or on a Ray cluster.

Each row is one :func:`kiln.compile.build` (idempotent: a hit returns at once); one row's
failure never stops the others, and every row ends with a status in the report.

A row the plan found on the remote is reported as a hit from the remote's index alone: nothing
is downloaded (a CI job would otherwise pull every stored engine of the matrix just to learn
that it exists). ``pushed`` is true only where this run put something on the remote that was
not there (a new index entry, or blobs it lacked); a push that fails leaves the row's status
(``built``/``hit``) and key, sets ``push_error``, and fails the run.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..cache import Remote, Store, open_remote, remote_entry
from ..core import Resolution, resolve, spec_from_sources
from ..errors import BuildError, IncompleteBuildError, KilnError, SpecError
from ..spec import Field
from ..targets import BUILD_LOG, get_target
from .build import BuildResult, build, push_build
from .plan import PlannedRow

__all__ = ["RowResult", "build_row", "run_local", "run_ray", "github_matrix", "settle_planned_hit"]


@dataclass
class RowResult:
    row: str
    status: str  # "hit", "built", "incomplete" (CPU stages stored, engine needs other hardware), "failed", "invalid"
    key: str | None = None
    seconds: float = 0.0
    size: int = 0
    log: str | None = None  # where the build log is (store blob, or a saved failure log)
    error: str | None = None
    stages: dict[str, float] = field(default_factory=dict)
    pushed: bool = False  # this run put the artifact (or missing blobs of it) on the remote
    push: dict[str, Any] | None = None  # what the push did (blobs uploaded/skipped), when one ran
    push_error: str | None = None  # the push failed: the row is built/hit locally, not on the remote
    source: str | None = None  # on a hit: "local" or "remote" (remote: confirmed from its index, not pulled)
    started: float = 0.0  # wall-clock (epoch seconds), to show what ran concurrently
    finished: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def build_row(res: Any, *, store: Any, remote: Any = None, push: bool = False) -> RowResult:
    """Build one planned row (idempotent: a hit returns at once); never raises for build errors."""
    started = time.time()
    result = _build_row(res, store=store, remote=remote, push=push)
    result.started, result.finished = started, time.time()
    return result


def _build_row(res: Resolution, *, store: Store, remote: Remote | None, push: bool) -> RowResult:
    t0 = time.monotonic()
    row = res.spec.summary()
    try:
        result = build(res, store=store, remote=remote)
        out = RowResult(row, "hit" if result.hit else "built", result.entry.key, time.monotonic() - t0,
                        result.entry.size, stages=dict(result.stages))
        out.log = _log_location(store, result.entry)
        out.source = result.source if result.hit else None
        if push and remote is not None:
            _push(out, store, remote, result)
        return out
    except IncompleteBuildError as e:
        return RowResult(row, "incomplete", None, time.monotonic() - t0, error=str(e))
    except BuildError as e:
        return RowResult(row, "failed", None, time.monotonic() - t0, error=str(e), log=e.log_path)
    except KilnError as e:
        return RowResult(row, "failed", None, time.monotonic() - t0, error=str(e))
    except OSError as e:  # one row's disk or filesystem trouble must not stop the other rows
        return RowResult(row, "failed", None, time.monotonic() - t0,
                         error=f"{e.strerror or e}: {e.filename or ''}".rstrip(": "))


def _push(out: RowResult, store: Store, remote: Remote, built: BuildResult) -> None:
    """Push one artifact (and its stages) and record what really happened (never raises for remote errors)."""
    entry = built.entry
    try:
        existed = remote_entry(remote, entry.model_hex, entry.key) is not None
        # Always run the push, even when the entry exists: it stats every blob and restores any
        # that a remote gc or a damaged bucket lost, so an announced artifact is complete.
        result = push_build(store, remote, built)
    except KilnError as e:
        out.push_error = f"push to {remote.describe()} failed: {e}"
        return
    except OSError as e:  # a filesystem remote's own errors (not a directory, disk full, …)
        out.push_error = f"push to {remote.describe()} failed: " + f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")
        return
    out.push = {**result.to_json(), "entry_existed": existed}
    out.pushed = not existed or result.uploaded > 0


def settle_planned_hit(p: PlannedRow) -> RowResult | None:
    """The result of a row the plan found on the remote, from its index alone; None otherwise.

    Nothing is downloaded: the plan read the remote's index entry, which a push writes last.
    With ``push`` there is nothing to do either (it is on the remote already).
    """
    if p.status != "hit" or p.source != "remote" or p.entry is None:
        return None
    now = time.time()
    return RowResult(p.row.id, "hit", p.entry.key, size=p.entry.size, source="remote", started=now, finished=now)


def _log_location(store: Any, entry: Any) -> str | None:
    try:
        manifest = store.read_manifest(entry.manifest)
    except KilnError:
        return None
    for f in manifest.files:
        if f.path == BUILD_LOG:
            return str(store.blob_path(f.digest))
    return None


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def run_local(planned: list[PlannedRow], *, store: Any, remote: Any = None, jobs: int = 2, push: bool = False,
              on_done: Any = None) -> list[RowResult]:
    """Build the planned rows on this machine, at most ``jobs`` at once and within memory.

    Compiles are memory-hungry: a row starts only when its estimate fits in what is left of
    80% of MemAvailable (measured once); a row larger than the whole budget runs alone.
    Shared stages are single-flight in the store, so rows needing one calibration run it once.
    """
    budget = int(_mem_available() * 0.8)
    used = 0
    cond = threading.Condition()

    def run(p: PlannedRow) -> RowResult:
        nonlocal used
        need = min(p.memory_bytes, budget)
        with cond:
            cond.wait_for(lambda: used + need <= budget or used == 0)
            used += need
        try:
            r = build_row(p.resolution, store=store, remote=remote, push=push)
        finally:
            with cond:
                used -= need
                cond.notify_all()
        r.row = p.row.id
        if on_done:
            on_done(r)
        return r

    results: dict[str, RowResult] = {}
    todo = []
    for p in planned:
        settled = settle_planned_hit(p)
        if p.status == "invalid":
            results[p.row.id] = RowResult(p.row.id, "invalid", error=p.error)
        elif settled is not None:
            results[p.row.id] = settled
            if on_done:
                on_done(settled)
        else:
            todo.append(p)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for r in pool.map(run, todo):
            results[r.row] = r
    return [results[p.row.id] for p in planned]


# --------------------------------------------------------------------------- Ray


def _ray_build_task(fields: dict[str, Field], store_root: str, remote_url: str | None, push: bool,
                    pins: dict[str, str]) -> dict[str, Any]:
    """Runs on a Ray worker: resolve and build one row (idempotent: a hit returns at once)."""
    store = Store(store_root)
    remote = open_remote(remote_url)
    try:
        res = resolve(spec_from_sources(fields), store=store, toolchain=pins or None)
    except KilnError as e:
        return RowResult("", "failed", error=str(e)).to_json()
    return build_row(res, store=store, remote=remote, push=push).to_json()


def run_ray(planned: list[PlannedRow], *, store: Any, remote_url: str | None, push: bool, address: str | None = None,
            num_cpus: int | None = None, pins: Mapping[str, str] | None = None, on_done: Any = None) -> list[RowResult]:
    """Submit each row as a Ray task with resources that fit its target; gather the same table.

    A row whose resources no node of the cluster has (e.g. neuron_cores on a CPU cluster)
    fails at once with that reason instead of waiting forever.
    """
    try:
        import ray
    except ImportError:
        raise SpecError("--executor ray needs Ray: pip install 'kiln-engines[ray]'.") from None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    cluster = ray.cluster_resources()
    task = ray.remote(_ray_build_task)
    futures, results = {}, {}
    for p in planned:
        settled = settle_planned_hit(p)
        if p.status == "invalid":
            results[p.row.id] = RowResult(p.row.id, "invalid", error=p.error)
            continue
        if settled is not None:
            results[p.row.id] = settled
            if on_done:
                on_done(settled)
            continue
        req = get_target(p.resolution.spec.target).resources(p.resolution, p.memory_bytes)
        wants = {"CPU": req.get("num_cpus", 0), "GPU": req.get("num_gpus", 0), **req.get("resources", {})}
        lacking = [k for k, v in wants.items() if v and cluster.get(k, 0) < v]
        if lacking:
            results[p.row.id] = RowResult(p.row.id, "failed", error=f"no node of the Ray cluster has {', '.join(lacking)} "
                                          f"({', '.join(f'{k}={wants[k]}' for k in lacking)}) for this row")
            continue
        opts = dict(req)
        if opts.get("memory", 0) > cluster.get("memory", 0):
            opts.pop("memory")  # larger than any node: let it run alone rather than never
        # The row's own pins (matrix file + --toolchain, as the plan resolved them), so the
        # worker computes the key the plan did.
        row_pins = {c: v for c, v in p.resolution.toolchain.items() if p.resolution.toolchain_origin.get(c) == "pinned"}
        futures[p.row.id] = task.options(**opts).remote(dict(p.row.fields), str(store.root), remote_url, push, row_pins)
    for rid, fut in futures.items():
        data = ray.get(fut)
        data["row"] = rid
        r = RowResult(**data)
        results[rid] = r
        if on_done:
            on_done(r)
    return [results[p.row.id] for p in planned]


def github_matrix(planned: list[PlannedRow], shard_size: int = 1) -> dict[str, Any]:
    """A GitHub Actions `strategy.matrix` with one entry per missing row (or per shard of rows)."""
    missing = [p.row.id for p in planned if p.status == "build"]
    shards = [missing[i:i + shard_size] for i in range(0, len(missing), max(1, shard_size))]
    return {"include": [{"name": rows[0] if len(rows) == 1 else f"{rows[0]} (+{len(rows) - 1})", "rows": ",".join(rows)}
                        for rows in shards]}
