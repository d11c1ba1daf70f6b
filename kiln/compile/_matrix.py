"""Build matrices: one declarative YAML file → exactly the builds that are missing.

A matrix file::

    models:                      # Hub ids (optionally pinned) or local directories
      - org/model@<revision>
      - {id: /models/other}
    targets: [torch-aoti]
    n_positions: [512, 1024]     # a list, a number, or a range:
    batch_sizes: {start: 1, stop: 8, factor: 2}   # 1, 2, 4, 8  ({start, stop, step} too)
    tp_degrees: [1]
    dtypes: [fp32]
    quantization:                # variants; "none" or SmoothQuant settings
      - none
      - {smoothquant: 0.5, per_token: true, per_channel: true, int8_kv_cache: false}
    instance_types: [ml.inf2.24xlarge]      # optional
    options: {gqa_strategy: shard-over-heads}  # target options for every row (where the target has them)
    include:                     # extra rows (fields as above, single values)
      - {model: org/model, target: neuron, n_positions: 4096, batch_size: 4, tp_degree: 8, dtype: fp16}
    exclude:                     # rows matching every field given are dropped
      - {target: torch-aoti, batch_size: 8}
    presets:                     # shipped presets as matrix entries
      - {name: jumpstart-llama2-neuron, model: org/llama-2-7b}   # model optional

Every row is validated before anything runs; all errors are reported at once, each naming its
row. Row ids are stable, readable strings (``model/target/NxB/tpT/dtype/quant[/instance]``), so a
CI job can run one row with ``kiln matrix build FILE --row ID``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import KilnError, SpecError
from ..spec import Field

__all__ = ["MatrixRow", "load_matrix", "expand_matrix"]

_KEYS = {"models", "targets", "n_positions", "batch_sizes", "tp_degrees", "dtypes", "quantization",
         "instance_types", "options", "include", "exclude", "presets"}
_ROW_FIELDS = {"model", "target", "n_positions", "batch_size", "tp_degree", "dtype", "quantization",
               "instance_type", "options"}


@dataclass(frozen=True)
class MatrixRow:
    id: str
    fields: Mapping[str, Field]
    source: str  # where the row came from, for error messages
    values: Mapping[str, Any] = field(default_factory=dict)  # the plain values, for include/exclude matching


def _values(raw: Any, name: str) -> list[Any]:
    if raw is None:
        return [None]
    if isinstance(raw, list):
        if not raw:
            raise SpecError(f"matrix: {name} is an empty list; remove it or give at least one value.")
        return raw
    if isinstance(raw, Mapping) and "start" in raw:
        try:
            start, stop = int(raw["start"]), int(raw["stop"])
            factor = int(raw["factor"]) if "factor" in raw else None
            step = int(raw.get("step", 1))
        except (KeyError, TypeError, ValueError):
            raise SpecError(f"matrix: {name} range {dict(raw)} needs integer start, stop and step/factor.") from None
        if factor is not None:
            if factor < 2 or start < 1:
                raise SpecError(f"matrix: {name} range factor must be >= 2 and start >= 1.")
            out, v = [], start
            while v <= stop:
                out.append(v)
                v *= factor
            return out
        if step < 1:
            raise SpecError(f"matrix: {name} range step must be >= 1.")
        return list(range(start, stop + 1, step))
    return [raw]


def _quant_fields(q: Any, src: str) -> dict[str, Field]:
    if q is None or (isinstance(q, str) and q.lower() == "none"):
        return {}
    if not isinstance(q, Mapping):
        raise SpecError(f"{src}: quantization {q!r} must be 'none' or a mapping like {{smoothquant: 0.5, per_token: true}}.")
    unknown = set(q) - {"smoothquant", "per_token", "per_channel", "int8_kv_cache"}
    if unknown:
        raise SpecError(f"{src}: unknown quantization keys {', '.join(sorted(unknown))}.")
    out = {}
    if q.get("smoothquant") is not None:
        out["smoothquant_alpha"] = Field(str(q["smoothquant"]), src)
    for k in ("per_token", "per_channel", "int8_kv_cache"):
        if k in q:
            out[k] = Field(q[k], src)
    return out


def _quant_label(q: Any) -> str:
    if q is None or (isinstance(q, str) and q.lower() == "none"):
        return "none"
    parts = [f"sq{q.get('smoothquant')}"] if q.get("smoothquant") is not None else []
    parts += [k.replace("_", "-") for k in ("per_token", "per_channel", "int8_kv_cache") if q.get(k)]
    return "+".join(parts) or "none"


def _model_id(m: Any) -> str:
    if isinstance(m, Mapping):
        mid = str(m.get("id") or m.get("model") or "")
        rev = m.get("revision")
        return f"{mid}@{rev}" if rev and "@" not in mid else mid
    return str(m)


def _short(model: str) -> str:
    base = model.rstrip("/").split("/")[-1]
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", base)


def _row(values: dict[str, Any], options: Mapping[str, Any], src: str) -> MatrixRow:
    fields: dict[str, Field] = {}
    for name in ("model", "target", "n_positions", "batch_size", "tp_degree", "dtype"):
        if values.get(name) is not None:
            fields[name] = Field(values[name], src)
    fields.update(_quant_fields(values.get("quantization"), src))
    if values.get("instance_type"):
        fields["option.instance_type"] = Field(values["instance_type"], src)
    for k, v in {**options, **(values.get("options") or {})}.items():
        fields[f"option.{k}"] = Field(str(v), src)
    rid = "/".join([
        _short(str(values.get("model"))), str(values.get("target")),
        f"{values.get('n_positions') or 'auto'}x{values.get('batch_size') or 1}", f"tp{values.get('tp_degree') or 1}",
        str(values.get("dtype") or "auto"), _quant_label(values.get("quantization")),
    ] + ([str(values["instance_type"]).removeprefix("ml.")] if values.get("instance_type") else []))
    return MatrixRow(rid, fields, src, dict(values))


def _matches(rule: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    return all(values.get(k) == v for k, v in rule.items())


def expand_matrix(doc: Mapping[str, Any], origin: str = "matrix") -> list[MatrixRow]:
    """All rows of a parsed matrix document (not yet validated against models and targets)."""
    if not isinstance(doc, Mapping):
        raise SpecError(f"{origin}: the matrix file must be a YAML mapping (models:, targets:, …).")
    unknown = set(doc) - _KEYS
    if unknown:
        raise SpecError(f"{origin}: unknown keys {', '.join(sorted(unknown))}; known: {', '.join(sorted(_KEYS))}.")
    options = doc.get("options") or {}
    if not isinstance(options, Mapping):
        raise SpecError(f"{origin}: options must be a mapping of target option names to values.")
    rows: list[MatrixRow] = []
    if "models" in doc:
        models = [_model_id(m) for m in _values(doc.get("models"), "models")]
        axes = {
            "model": models,
            "target": _values(doc.get("targets"), "targets"),
            "n_positions": _values(doc.get("n_positions"), "n_positions"),
            "batch_size": _values(doc.get("batch_sizes"), "batch_sizes"),
            "tp_degree": _values(doc.get("tp_degrees"), "tp_degrees"),
            "dtype": _values(doc.get("dtypes"), "dtypes"),
            "quantization": _values(doc.get("quantization"), "quantization"),
            "instance_type": _values(doc.get("instance_types"), "instance_types"),
        }
        names = list(axes)
        for i, combo in enumerate(itertools.product(*axes.values())):
            rows.append(_row(dict(zip(names, combo)), options, f"{origin} (combination {i + 1})"))
    for i, inc in enumerate(doc.get("include") or []):
        if not isinstance(inc, Mapping) or set(inc) - _ROW_FIELDS:
            raise SpecError(f"{origin}: include entry {i + 1} must map fields of {', '.join(sorted(_ROW_FIELDS))}.")
        values = dict(inc)
        values["model"] = _model_id(values.get("model"))
        rows.append(_row(values, options, f"{origin} (include {i + 1})"))
    for i, p in enumerate(doc.get("presets") or []):
        from ..presets import load_preset

        name = p.get("name") if isinstance(p, Mapping) else p
        model = p.get("model") if isinstance(p, Mapping) else None
        for prow in load_preset(str(name), model=model):
            values = {"model": prow.model, "target": prow.target, "n_positions": prow.n_positions,
                      "batch_size": prow.batch_size, "tp_degree": prow.tp_degree, "dtype": prow.dtype,
                      "instance_type": prow.instance_type}
            rows.append(_row(values, options, f"{origin} (preset {name} row {prow.id})"))
    excludes = doc.get("exclude") or []
    for i, rule in enumerate(excludes):
        if not isinstance(rule, Mapping) or set(rule) - _ROW_FIELDS:
            raise SpecError(f"{origin}: exclude entry {i + 1} must map fields of {', '.join(sorted(_ROW_FIELDS))}.")
    out, seen = [], set()
    for r in rows:
        if any(_matches(rule, r.values) for rule in excludes) or r.id in seen:
            continue
        seen.add(r.id)
        out.append(r)
    if not out:
        raise SpecError(f"{origin}: the matrix has no rows (no models/include/presets, or everything excluded).")
    return out


def load_matrix(path: Path) -> list[MatrixRow]:
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise SpecError(f"matrix file {path} does not exist.") from None
    except yaml.YAMLError as e:
        raise SpecError(f"matrix file {path} is not valid YAML: {e}") from None
    return expand_matrix(doc, origin=str(path))


# --------------------------------------------------------------------------- planning


@dataclass
class PlannedRow:
    row: MatrixRow
    status: str  # "hit" (local/remote), "build", "invalid"
    key: str | None = None
    error: str | None = None
    source: str | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)  # shared stages this row needs
    memory_bytes: int = 0  # estimate, for the local executor
    resolution: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row.id, "status": self.status, "key": self.key, "error": self.error,
                "source": self.source, "stages": self.stages, "memory_estimate_bytes": self.memory_bytes}


def plan_rows(rows: Iterable[MatrixRow], *, store: Any, remote: Any = None, pins: Mapping[str, str] | None = None,
              check_remote: bool = True) -> list[PlannedRow]:
    """Validate every row (collecting all errors) and mark hits; nothing is built."""
    from ..api import lookup, resolve, spec_from_sources

    planned = []
    for row in rows:
        try:
            res = resolve(spec_from_sources(dict(row.fields)), store=store, toolchain=pins)
        except KilnError as e:
            planned.append(PlannedRow(row, "invalid", error=str(e)))
            continue
        p = PlannedRow(row, "build", resolution=res, memory_bytes=_memory_estimate(res))
        if res.complete:
            p.key = res.key
        found = lookup(res, store=store)  # local only: planning never downloads
        if found.hit:
            p.status, p.key, p.source = "hit", found.entry.key, "local"  # type: ignore[union-attr]
        elif remote is not None and check_remote:
            entry = _remote_match(res, remote)
            if entry is not None:
                p.status, p.key, p.source = "hit", entry.key, "remote"
        if res.spec.target == "trtllm":
            from ._trtllm_build import stages_for

            calib, ckpt = stages_for(res)
            p.stages = [{"stage": s.name, "key": s.key} for s in (calib, ckpt) if s is not None]
        planned.append(p)
    return planned


def _memory_estimate(res: Any) -> int:
    """Peak memory of one build: weights once in the model dtype, a working copy, plus the
    compiler's own footprint — measured here as ~1.5 GiB for AOTInductor on small models."""
    weights = sum(f.size for f in res.model.files if f.path.endswith((".safetensors", ".bin", ".gguf")))
    return 3 * weights + (3 << 29)


def _remote_match(res: Any, remote: Any) -> Any:
    from ..api import _matches
    from ..cache._sync import remote_entries, remote_entry

    model_hex = res.model.tree_digest.split(":", 1)[1]
    if res.complete:
        return remote_entry(remote, model_hex, res.key)
    matches = sorted((e for e in remote_entries(remote, model_hex) if _matches(res, e)), key=lambda e: e.created)
    return matches[-1] if matches else None


# --------------------------------------------------------------------------- execution


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
    pushed: bool = False
    started: float = 0.0  # wall-clock (epoch seconds), to show what ran concurrently
    finished: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def build_row(res: Any, *, store: Any, remote: Any = None, push: bool = False) -> RowResult:
    """Build one planned row (idempotent: a hit returns at once); never raises for build errors."""
    import time

    started = time.time()
    result = _build_row(res, store=store, remote=remote, push=push)
    result.started, result.finished = started, time.time()
    return result


def _build_row(res: Any, *, store: Any, remote: Any, push: bool) -> RowResult:
    import time

    from ..errors import BuildError
    from ._build import build
    from ._trtllm_build import IncompleteBuildError

    t0 = time.monotonic()
    row = res.spec.summary()
    try:
        result = build(res, store=store, remote=remote)
        out = RowResult(row, "hit" if result.hit else "built", result.entry.key, time.monotonic() - t0,
                        result.entry.size, stages=dict(result.stages))
        out.log = _log_location(store, result.entry)
        if push and remote is not None:
            from ..cache._sync import push as push_entry

            push_entry(store, remote, result.entry)
            out.pushed = True
        return out
    except IncompleteBuildError as e:
        return RowResult(row, "incomplete", None, time.monotonic() - t0, error=str(e))
    except BuildError as e:
        return RowResult(row, "failed", None, time.monotonic() - t0, error=str(e), log=e.log_path)
    except KilnError as e:
        return RowResult(row, "failed", None, time.monotonic() - t0, error=str(e))


def _log_location(store: Any, entry: Any) -> str | None:
    try:
        manifest = store.read_manifest(entry.manifest)
    except KilnError:
        return None
    for f in manifest.files:
        if f.path == "build.log":
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
    import threading
    from concurrent.futures import ThreadPoolExecutor

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
        if p.status == "invalid":
            results[p.row.id] = RowResult(p.row.id, "invalid", error=p.error)
        else:
            todo.append(p)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for r in pool.map(run, todo):
            results[r.row] = r
    return [results[p.row.id] for p in planned]


# --------------------------------------------------------------------------- Ray


def ray_resources(res: Any, memory_bytes: int) -> dict[str, Any]:
    """What one row's build asks the Ray scheduler for, by target."""
    target = res.spec.target
    if target == "neuron":
        return {"num_cpus": 1, "resources": {"neuron_cores": res.spec.tp_degree}, "memory": memory_bytes}
    if target == "trtllm" and all(v is not None for v in res.toolchain.values()):
        return {"num_cpus": 1, "num_gpus": res.spec.tp_degree, "memory": memory_bytes}
    if target == "torch-aoti" and (res.spec.option("device") == "cuda"):
        return {"num_cpus": 1, "num_gpus": 1, "memory": memory_bytes}
    # torch-aoti on CPU and trtllm conversion stages: CPU and memory only.
    return {"num_cpus": 1, "memory": memory_bytes}


def _ray_build_task(fields: dict[str, Field], store_root: str, remote_url: str | None, push: bool,
                    pins: dict[str, str]) -> dict[str, Any]:
    """Runs on a Ray worker: resolve and build one row (idempotent: a hit returns at once)."""
    from ..api import resolve, spec_from_sources
    from ..cache._remote import open_remote
    from ..cache._store import Store

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
        raise SpecError("--executor ray needs Ray: pip install 'kiln[ray]'.") from None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    cluster = ray.cluster_resources()
    task = ray.remote(_ray_build_task)
    futures, results = {}, {}
    for p in planned:
        if p.status == "invalid":
            results[p.row.id] = RowResult(p.row.id, "invalid", error=p.error)
            continue
        req = ray_resources(p.resolution, p.memory_bytes)
        wants = {"CPU": req.get("num_cpus", 0), "GPU": req.get("num_gpus", 0), **req.get("resources", {})}
        lacking = [k for k, v in wants.items() if v and cluster.get(k, 0) < v]
        if lacking:
            results[p.row.id] = RowResult(p.row.id, "failed", error=f"no node of the Ray cluster has {', '.join(lacking)} "
                                          f"({', '.join(f'{k}={wants[k]}' for k in lacking)}) for this row")
            continue
        opts = dict(req)
        if opts.get("memory", 0) > cluster.get("memory", 0):
            opts.pop("memory")  # larger than any node: let it run alone rather than never
        futures[p.row.id] = task.options(**opts).remote(dict(p.row.fields), str(store.root), remote_url, push, dict(pins or {}))
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
