"""`kiln` command line: parse, call kiln.api, print (rich tables or --json).

Exit codes: 0 success / hit, 1 miss (lookup, fetch, ensure), 2 or more errors — grep's
convention. Errors Kiln raises on purpose print one message saying what to do, never a
traceback.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from . import __version__
from .errors import KilnError
from .spec import Field

# --------------------------------------------------------------------------- output helpers


def _console(stderr: bool = False):  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _human_size(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _age(created: str) -> str:
    from datetime import datetime, timezone

    try:
        t = datetime.strptime(created, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return "?"
    s = (datetime.now(timezone.utc) - t).total_seconds()
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if s >= size:
            return f"{int(s // size)}{unit}"
    return f"{int(s)}s"


def _parse_size(text: str) -> int:
    t = text.strip().upper().replace("IB", "").replace("B", "")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        value = int(float(t[:-1]) * mult[t[-1]]) if t and t[-1] in mult else int(t)
    except (ValueError, OverflowError):
        value = -1
    if value < 0:
        raise click.BadParameter(f"{text!r} is not a size; write e.g. 500M, 20G or 1T.")
    return value


def _parse_duration(text: str) -> float:
    t = text.strip().lower()
    mult = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    try:
        value = float(t[:-1]) * mult[t[-1]] if t and t[-1] in mult else float(t)
    except ValueError:
        value = -1.0
    if not (0 <= value < float("inf")):
        raise click.BadParameter(f"{text!r} is not a duration; write e.g. 30m, 12h or 7d.")
    return value


# --------------------------------------------------------------------------- group


class KilnGroup(click.Group):
    """Turns Kiln's own errors into one clear line and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KilnError as e:
            click.echo(f"kiln: error: {e}", err=True)
            tail = getattr(e, "log_tail", "")
            if tail:
                click.echo("--- worker log (tail) ---\n" + tail, err=True)
            ctx.exit(e.exit_code)
        except BrokenPipeError:  # `kiln ls | head`: the reader left, nothing to report
            sys.stderr.close()
            ctx.exit(0)
        except OSError as e:  # permissions, full disks, vanished files
            click.echo(f"kiln: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), err=True)
            ctx.exit(2)


@click.group(cls=KilnGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="kiln")
@click.option("--store", "store_path", type=click.Path(path_type=Path), envvar="KILN_HOME",
              help="Local store directory [env: KILN_HOME; default: $XDG_CACHE_HOME/kiln or ~/.cache/kiln].")
@click.option("--remote", "remote_url", envvar="KILN_REMOTE", metavar="URL",
              help="Shared store: s3://BUCKET/PREFIX[?endpoint=URL] or a path [env: KILN_REMOTE].")
@click.pass_context
def cli(ctx: click.Context, store_path: Path | None, remote_url: str | None) -> None:
    """Build LLM engines ahead of time; keep them in a content-addressed store; find them fast."""
    from .cache._store import Store

    ctx.obj = _Context(Store(store_path), remote_url)


class _Context:
    def __init__(self, store: Any, remote_url: str | None) -> None:
        self.store = store
        self.remote_url = remote_url
        self._remote: Any = None
        self.calib_file: Path | None = None

    def remote(self, required: bool = False) -> Any:
        from .cache._remote import open_remote
        from .errors import RemoteError

        if self._remote is None and self.remote_url:
            self._remote = open_remote(self.remote_url)
        if required and self._remote is None:
            raise RemoteError("no remote configured: pass --remote URL (before the command) or set KILN_REMOTE.")
        return self._remote


def _store(ctx: click.Context):  # type: ignore[no-untyped-def]
    return ctx.find_root().obj.store


def _remote(ctx: click.Context, required: bool = False):  # type: ignore[no-untyped-def]
    return ctx.find_root().obj.remote(required)


class _TransferBar:
    """Bytes and throughput for transfers on a terminal (stderr); silent otherwise."""

    def __init__(self, what: str, enabled: bool = True) -> None:
        self.progress = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            self.progress = Progress(TextColumn(what), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                     console=_console(stderr=True), transient=True)
            self.task = self.progress.add_task(what, total=None)

    def __enter__(self) -> Any:
        from .api import _transfer_progress

        if self.progress is not None:
            self.progress.start()
        self._token = _transfer_progress.set(self.advance if self.progress is not None else None)
        return self.advance if self.progress is not None else None

    def advance(self, n: int) -> None:
        assert self.progress is not None
        self.progress.advance(self.task, n)

    def __exit__(self, *exc: object) -> None:
        from .api import _transfer_progress

        _transfer_progress.reset(self._token)
        if self.progress is not None:
            self.progress.stop()


# --------------------------------------------------------------------------- spec options

_SPEC_FLAGS = {
    "target": "--target",
    "n_positions": "--n-positions",
    "batch_size": "--batch-size",
    "tp_degree": "--tp-degree",
    "dtype": "--dtype",
    "smoothquant_alpha": "--smoothquant",
    "per_token": "--per-token",
    "per_channel": "--per-channel",
    "int8_kv_cache": "--int8-kv-cache",
}


def spec_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The spec flags every command accepts (or --from-env / --serving-properties instead)."""
    options = [
        click.argument("model", required=False),
        click.option("--target", "-t", help="torch-aoti, trtllm or neuron."),
        click.option("--n-positions", help="Max input + output tokens the engine is compiled for."),
        click.option("--batch-size", help="Batch size (LMI: max_rolling_batch_size)."),
        click.option("--tp-degree", help="Tensor-parallel degree."),
        click.option("--dtype", help="fp32, fp16 or bf16 (float32/float16/bfloat16 accepted)."),
        click.option("--smoothquant", "smoothquant_alpha", metavar="ALPHA", help="SmoothQuant with this alpha in [0, 1] (trtllm)."),
        click.option("--per-token", is_flag=True, default=None, help="SmoothQuant per-token activation scales."),
        click.option("--per-channel", is_flag=True, default=None, help="SmoothQuant per-channel weight scales."),
        click.option("--int8-kv-cache", is_flag=True, default=None, help="INT8 KV cache (trtllm)."),
        click.option("--instance-type", help="Instance type, e.g. ml.inf2.24xlarge (validation, hardware class, tp=max)."),
        click.option("--option", "-o", "target_options", multiple=True, metavar="NAME=VALUE", help="Target option, e.g. gqa_strategy=shard-over-heads."),
        click.option("--from-env", is_flag=True, help="Read SageMaker LMI OPTION_* / HF_MODEL_ID environment variables."),
        click.option("--serving-properties", type=click.Path(path_type=Path), metavar="FILE", help="Read an LMI serving.properties file."),
        click.option("--calib-file", type=click.Path(path_type=Path, exists=True, dir_okay=False), metavar="FILE",
                     help="SmoothQuant calibration texts (plain text paragraphs, or JSONL with a text field)."),
        click.option("--toolchain", "toolchain_pins", multiple=True, metavar="NAME=VERSION", help="Pin a toolchain component (e.g. neuronx-cc=2.15.128, hardware=cuda-sm90)."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _resolution(ctx: click.Context, kw: dict[str, Any]):  # type: ignore[no-untyped-def]
    """Spec flags → api.Resolution (model resolved, validated, toolchain settled)."""
    from .api import parse_toolchain_pins, resolve, spec_from_sources

    flags: dict[str, Field] = {}
    model = kw.pop("model", None)
    if model is not None:
        flags["model"] = Field(model, "MODEL")
    for name, flag in _SPEC_FLAGS.items():
        value = kw.pop(name, None)
        if value is not None:
            flags[name] = Field(value, flag)
    instance = kw.pop("instance_type", None)
    if instance:
        flags["option.instance_type"] = Field(instance, "--instance-type")
    for item in kw.pop("target_options", ()):
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--option")
        flags[f"option.{name.strip()}"] = Field(value, f"--option {name.strip()}")
    calib_file = kw.pop("calib_file", None)
    if calib_file is not None:
        from .compile._trtllm_build import calib_set_digest

        flags["option.calib_set"] = Field(calib_set_digest(calib_file), "--calib-file")
        ctx.find_root().obj.calib_file = calib_file
    from_env = kw.pop("from_env", False)
    props = kw.pop("serving_properties", None)
    pins = parse_toolchain_pins(kw.pop("toolchain_pins", ()))
    source = spec_from_sources(flags, from_env=from_env, serving_properties=props)
    return resolve(source, store=_store(ctx), toolchain=pins)


def _explain_lines(res: Any) -> list[str]:
    lines = [f"model        {res.model.ref}  ({res.model.kind}{', commit ' + res.model.commit if res.model.commit else ''})",
             f"tree digest  {res.model.tree_digest}  ({len(res.model.files)} files)"]
    for k, v in res.shape.items():
        lines.append(f"spec.{k:<12} {json.dumps(v, sort_keys=True) if isinstance(v, dict) or v is None else v}")
    for k, v in res.toolchain.items():
        lines.append(f"toolchain.{k:<9} {v if v is not None else '(unknown)'}  [{res.toolchain_origin[k]}]")
    for n in res.notes:
        lines.append(f"note         {n}")
    for src, value in res.ignored:
        lines.append(f"ignored      {src}={value}  (does not change the engine)")
    return lines


# --------------------------------------------------------------------------- key


@cli.command()
@spec_options
@click.option("--explain", is_flag=True, help="Show every key input and what was ignored.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def key(ctx: click.Context, explain: bool, as_json: bool, **kw: Any) -> None:
    """Print the build key of MODEL with the given spec."""
    res = _resolution(ctx, kw)
    inputs = res.inputs()
    if as_json:
        out: dict[str, Any] = {"key": res.key}
        if explain:
            out.update(inputs=inputs, notes=list(res.notes), ignored=[{"source": s, "value": v} for s, v in res.ignored],
                       toolchain_origin=dict(res.toolchain_origin))
        _print_json(out)
        return
    click.echo(res.key)
    if explain:
        for line in _explain_lines(res):
            click.echo(line)


# --------------------------------------------------------------------------- lookup / fetch


def _report_lookup(result: Any, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    for d in result.damaged:
        click.echo(f"kiln: WARNING: {d}", err=True)
    if as_json:
        data = result.to_json()
        data.update(extra or {})
        _print_json(data)
        return
    if result.hit:
        e = result.entry
        click.echo(f"hit ({result.source}) {e.key}  {e.spec['target']} n_positions={e.spec['n_positions']} batch_size={e.spec['batch_size']} "
                   f"tp={e.spec['tp_degree']} dtype={e.spec['dtype']}  {_human_size(e.size)}  built {_age(e.created)} ago")
        for n in result.notes:
            click.echo(f"note: {n}")
        for k, v in (extra or {}).items():
            click.echo(f"{k}: {v}")
        for name, value in sorted((result.env or {}).items()):
            click.echo(f"env: {name}={value}")
    else:
        click.echo(f"miss: no artifact for {result.resolution.model.ref} with {result.resolution.spec.summary()}")
        for line in result.explanation:
            click.echo(line)


@cli.command()
@spec_options
@click.option("--select", is_flag=True, help="Choose the best stored engine for --instance-type; shape fields you give constrain it, the rest are free.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def lookup(ctx: click.Context, select: bool, as_json: bool, **kw: Any) -> None:
    """Find the artifact for a spec. Exit 0 on a hit, 1 on a miss (with the nearest entries), 2+ on errors."""
    from . import api

    res = _resolution(ctx, kw)
    with _TransferBar("pull", enabled=not as_json):
        if select:
            result = api.select(res, store=_store(ctx), remote=_remote(ctx))
        else:
            result = api.lookup(res, store=_store(ctx), remote=_remote(ctx))
    _report_lookup(result, as_json)
    ctx.exit(0 if result.hit else 1)


def _layout_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--container-dir", metavar="PATH",
                     help="Where DEST will be seen by the consumer (e.g. /opt/ml/model), for paths written into the layout.")(f)
    return click.option("--layout", type=click.Choice(["raw", "lmi", "neuron-cache", "triton"]), default="raw",
                        show_default=True, help="Arrange the files for a consumer (see README).")(f)


@cli.command()
@spec_options
@click.option("--dest", required=True, type=click.Path(path_type=Path), help="Directory to materialise the artifact into.")
@click.option("--force", is_flag=True, help="Replace DEST if it is not empty.")
@click.option("--copy", is_flag=True, help="Copy files instead of hard-linking them from the store.")
@_layout_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def fetch(ctx: click.Context, dest: Path, force: bool, copy: bool, layout: str, container_dir: str | None,
          as_json: bool, **kw: Any) -> None:
    """Look a spec up and materialise the hit into --dest (hard links where possible). Exit 1 on a miss."""
    from . import api

    res = _resolution(ctx, kw)
    t0 = time.monotonic()
    with _TransferBar("pull", enabled=not as_json):
        result, path = api.fetch(res, dest, store=_store(ctx), remote=_remote(ctx), replace=force, copy=copy,
                                 layout=layout, container_dir=container_dir)
    extra = {"dest": str(path), "layout": layout, "seconds": round(time.monotonic() - t0, 3)} if path else {}
    _report_lookup(result, as_json, extra)
    ctx.exit(0 if result.hit and path else 1)


# --------------------------------------------------------------------------- build / generate


class _StageReporter:
    """Progress for long steps on stderr: a spinner on a terminal, plain lines otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.t0 = time.monotonic()
        self.status = None
        if not quiet and sys.stderr.isatty():
            self.status = _console(stderr=True).status("resolving")
            self.status.start()

    def __call__(self, stage: str) -> None:
        if self.quiet:
            return
        text = f"[{time.monotonic() - self.t0:6.1f}s] {stage}"
        if self.status is not None:
            self.status.update(text)
        else:
            click.echo(text, err=True)

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()


@cli.command()
@spec_options
@click.option("--force", is_flag=True, help="Build even if the store already has the artifact.")
@click.option("--push", "do_push", is_flag=True, help="Also publish the artifact to the remote (--remote / KILN_REMOTE).")
@click.option("--preset", metavar="NAME", help="Build every row of a preset (`kiln presets`); MODEL replaces its models.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@click.pass_context
def build(ctx: click.Context, force: bool, do_push: bool, preset: str | None, as_json: bool, **kw: Any) -> None:
    """Build the engine for a spec (a local or remote hit returns at once) and publish it."""
    from .cache._sync import push
    from .compile import build as run_build

    remote = _remote(ctx, required=do_push)
    if preset:
        _build_preset(ctx, preset, kw, force=force, do_push=do_push, as_json=as_json)
        return
    reporter = _StageReporter(quiet=as_json)
    try:
        reporter("resolve model and validate spec")
        res = _resolution(ctx, kw)
        with _TransferBar("pull", enabled=not as_json):
            result = run_build(res, store=_store(ctx), remote=remote, force=force, on_stage=reporter,
                               calib_file=ctx.find_root().obj.calib_file)
    finally:
        reporter.stop()
    pushed = None
    if do_push:
        with _TransferBar("push", enabled=not as_json) as bar:
            pushed = push(_store(ctx), remote, result.entry, progress=bar)
    if as_json:
        data = result.to_json()
        if pushed is not None:
            data["push"] = pushed.to_json()
        _print_json(data)
        return
    e = result.entry
    how = (f"cache hit ({result.source}): nothing compiled" if result.hit else "built and published")
    if pushed is not None:
        how += f"; pushed to {remote.describe()} ({pushed.uploaded} blobs, {_human_size(pushed.uploaded_bytes)} uploaded)"
    if result.waited_for_peer:
        how += " (by another process while this one waited)"
    click.echo(f"{how} in {result.seconds:.2f} s")
    click.echo(f"key       {e.key}")
    click.echo(f"spec      {res.spec.summary()}")
    click.echo(f"artifact  {e.files} files, {_human_size(e.size)}  (manifest {e.manifest[:19]})")
    if result.stages:
        click.echo("stages    " + ", ".join(f"{k} {v:.1f}s" for k, v in result.stages.items() if v >= 0.05))


def _build_preset(ctx: click.Context, name: str, kw: dict[str, Any], *, force: bool, do_push: bool, as_json: bool) -> None:
    """Build every row of a preset, skipping hits; one row's failure does not stop the others."""
    from .api import parse_toolchain_pins, resolve, spec_from_sources
    from .cache._sync import push
    from .compile import build as run_build
    from .presets import load_preset

    stray = [f"--{k.replace('_', '-')}" for k, v in kw.items()
             if k not in ("model", "toolchain_pins") and v not in (None, False, (), [])]
    if stray:
        raise click.UsageError(f"--preset sets the spec of every row; drop {', '.join(stray)} (only MODEL and --toolchain apply).")
    rows = load_preset(name, model=kw.get("model"))
    pins = parse_toolchain_pins(kw.get("toolchain_pins", ()))
    report = []
    for row in rows:
        try:
            res = resolve(spec_from_sources(row.fields()), store=_store(ctx), toolchain=pins)
            result = run_build(res, store=_store(ctx), remote=_remote(ctx), force=force)
            if do_push:
                push(_store(ctx), _remote(ctx, required=True), result.entry)
            report.append({"row": row.id, "status": "hit" if result.hit else "built", "key": result.entry.key})
        except KilnError as e:
            report.append({"row": row.id, "status": "failed", "error": str(e)})
        if not as_json:
            r = report[-1]
            click.echo(f"{r['status']:>6}  {row.id}" + (f"  {r['key'][:12]}" if "key" in r else f"\n        {r['error']}"))
    if as_json:
        _print_json(report)
    failed = sum(r["status"] == "failed" for r in report)
    if not as_json:
        click.echo(f"{len(rows)} rows: {sum(r['status'] == 'hit' for r in report)} hits, "
                   f"{sum(r['status'] == 'built' for r in report)} built, {failed} failed")
    ctx.exit(2 if failed else 0)


@cli.command()
@click.argument("name", required=False)
@click.option("--model", help="Replace the preset's models with this one.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def presets(name: str | None, model: str | None, as_json: bool) -> None:
    """List the presets shipped with Kiln, or the rows of one."""
    from .presets import PRESETS, load_preset

    if name is None:
        if as_json:
            _print_json([{"name": n, "target": t, "description": d, "rows": len(load_preset(n))} for n, (_, t, d) in PRESETS.items()])
            return
        for n, (_, t, d) in PRESETS.items():
            click.echo(f"{n}  ({t}, {len(load_preset(n))} rows)  {d}")
        return
    rows = load_preset(name, model=model)
    if as_json:
        _print_json([r.to_json() for r in rows])
        return
    for r in rows:
        click.echo(f"{r.id:<48} {r.model}  {r.instance_type}  n_positions={r.n_positions} batch={r.batch_size} "
                   f"tp={r.tp_degree} {r.dtype}")


@cli.command()
@spec_options
@click.option("--prompt", "-p", required=True, help="Text to complete (a chat template is applied when the tokenizer has one).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--raw", is_flag=True, help="Do not apply the tokenizer's chat template.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@click.option("--key", "by_key", metavar="KEY", help="Load this artifact (key or prefix) instead of looking a spec up: needs only the store.")
def generate(ctx: click.Context, prompt: str, max_new_tokens: int, raw: bool, as_json: bool, by_key: str | None, **kw: Any) -> None:
    """Load a stored torch-aoti engine (no compile) and greedy-decode a completion of --prompt."""
    from ._engines import load_engine, load_engine_by_key

    t0 = time.monotonic()
    if by_key:
        loaded = load_engine_by_key(by_key, store=_store(ctx))
    else:
        loaded = load_engine(_resolution(ctx, kw), store=_store(ctx))
    t_load = time.monotonic() - t0
    tok = loaded.tokenizer()
    if not raw and getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    else:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
    if ids.shape[0] != loaded.engine.batch_size:
        ids = ids.repeat(loaded.engine.batch_size, 1)
    t1 = time.monotonic()
    try:
        out = loaded.engine.generate(ids, max_new_tokens)
    except ValueError as e:  # prompt too long for the engine, and the like
        from .errors import SpecError

        raise SpecError(str(e)) from None
    t_gen = time.monotonic() - t1
    new = out[0, ids.shape[1]:]
    text = tok.decode(new, skip_special_tokens=True)
    if as_json:
        _print_json({"key": loaded.entry.key, "text": text, "new_tokens": int(new.numel()),
                     "load_seconds": round(t_load, 3), "generate_seconds": round(t_gen, 3)})
        return
    click.echo(text)
    click.echo(f"[{int(new.numel())} tokens in {t_gen:.2f} s; engine {loaded.entry.key[:12]} loaded in {t_load:.2f} s, no compile]", err=True)


# --------------------------------------------------------------------------- ls / show


@cli.command(name="ls")
@click.option("--model", "model_ref", help="Only artifacts of this model ref or Hub id.")
@click.option("--target", "-t")
@click.option("--n-positions", type=int)
@click.option("--batch-size", type=int)
@click.option("--tp-degree", type=int)
@click.option("--dtype")
@click.option("--toolchain", "toolchain_pins", multiple=True, metavar="NAME=VERSION")
@click.option("--remote", "on_remote", is_flag=True, help="List the remote's artifacts instead of the local store's.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def ls_cmd(ctx: click.Context, model_ref: str | None, target: str | None, n_positions: int | None,
           batch_size: int | None, tp_degree: int | None, dtype: str | None, toolchain_pins: Sequence[str],
           on_remote: bool, as_json: bool) -> None:
    """List artifacts in the store or on the remote (filter by any field)."""
    from .api import Query, list_artifacts, parse_toolchain_pins
    from .spec import normalize_dtype, normalize_target

    q = Query(
        ref=model_ref,
        target=normalize_target(target, "--target") if target else None,
        n_positions=n_positions, batch_size=batch_size, tp_degree=tp_degree,
        dtype=normalize_dtype(dtype, "--dtype") if dtype else None,
        toolchain=parse_toolchain_pins(toolchain_pins),
    )
    if on_remote:
        from .cache._sync import remote_entries

        remote = _remote(ctx, required=True)
        entries = sorted((e for e in remote_entries(remote) if q.matches(e)), key=lambda e: e.created, reverse=True)
        where = remote.describe()
    else:
        entries = list_artifacts(_store(ctx), q)
        where = str(_store(ctx).root)
    if as_json:
        _print_json([e.to_json() for e in entries])
        return
    if not entries:
        click.echo(f"no artifacts in {where}" + (" matching the filters" if q != Query() else ""))
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("key", "model", "target", "shape", "dtype", "quant", "size", "age"):
        table.add_column(col, justify="right" if col in ("size", "age") else "left")
    for e in entries:
        s = e.spec
        from .spec import Quantization

        shape = (f"{s['n_positions']}x{s['batch_size']} tp{s['tp_degree']}" if "n_positions" in s
                 else f"tp{s['tp_degree']}" if "tp_degree" in s else "-")
        table.add_row(
            e.key[:12], str(e.model.get("repo_id") or e.model.get("ref")),
            s["target"] + (f" ({s['stage']})" if "stage" in s else ""), shape, str(s.get("dtype", "-")),
            Quantization.from_json(s.get("quantization")).describe(), _human_size(e.size), _age(e.created),
        )
    _console().print(table)
    if on_remote:
        return
    logical = sum(e.size for e in entries)
    unique: dict[str, int] = {}
    for e in entries:
        try:
            unique.update({f.digest: f.size for f in _store(ctx).read_manifest(e.manifest).files})
        except KilnError:
            continue
    click.echo(f"{len(entries)} artifact(s), {_human_size(logical)} in files, {_human_size(sum(unique.values()))} "
               "stored (identical files are kept once)")


@cli.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and build record as JSON.")
@click.pass_context
def show(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Show one artifact (REF: key or key prefix, or manifest digest): files, spec, toolchain, provenance."""
    from .api import find_artifact

    store = _store(ctx)
    entry = find_artifact(store, ref)
    manifest = store.read_manifest(entry.manifest)
    record = store.read_record(manifest)
    if as_json:
        _print_json({"entry": entry.to_json(), "manifest": manifest.to_json(), "record": record})
        return
    click.echo(f"key        {entry.key}")
    click.echo(f"manifest   {entry.manifest}")
    click.echo(f"model      {entry.model.get('ref')}  {entry.model.get('tree_digest')}")
    click.echo(f"spec       {json.dumps({k: v for k, v in entry.spec.items() if k != 'model'}, sort_keys=True)}")
    click.echo(f"toolchain  {json.dumps(entry.toolchain, sort_keys=True)}")
    prov = record.get("provenance", {})
    click.echo(f"built      {prov.get('started')} on {prov.get('host')} in {prov.get('duration_s')} s (kiln {prov.get('kiln_version')})")
    click.echo(f"files      {len(manifest.files)}, {_human_size(manifest.total_size)}")
    sharing = _blob_sharing(store, entry.key)
    for f in manifest.files:
        others = sharing.get(f.digest, 0)
        shared = f"  (shared with {others} other artifact{'s' if others > 1 else ''})" if others else ""
        click.echo(f"  {f.digest[7:19]}  {_human_size(f.size):>10}  {f.path}{shared}")


def _blob_sharing(store: Any, key: str) -> dict[str, int]:
    """digest -> how many *other* artifacts list the same file blob (deduplication at work)."""
    counts: dict[str, int] = {}
    for e in store.iter_entries():
        if e.key == key:
            continue
        try:
            for digest in {f.digest for f in store.read_manifest(e.manifest).files}:
                counts[digest] = counts.get(digest, 0) + 1
        except KilnError:
            continue
    return counts


# --------------------------------------------------------------------------- verify / gc


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def verify(ctx: click.Context, as_json: bool) -> None:
    """Re-hash every blob and check every artifact; exit 1 if anything is corrupt or missing."""
    report = _store(ctx).verify()
    if as_json:
        _print_json({"ok": report.ok, "blobs_checked": report.blobs_checked, "bytes_checked": report.bytes_checked,
                     "entries_checked": report.entries_checked, "corrupt": list(report.corrupt), "missing": list(report.missing)})
    else:
        for line in report.corrupt + report.missing:
            click.echo(f"kiln: CORRUPT: {line}", err=True)
        click.echo(f"{'ok' if report.ok else 'FAILED'}: {report.blobs_checked} blobs ({_human_size(report.bytes_checked)}), "
                   f"{report.entries_checked} artifacts checked; {len(report.corrupt)} corrupt, {len(report.missing)} missing")
    ctx.exit(0 if report.ok else 1)


@cli.command()
@click.option("--max-size", help="Evict least recently used artifacts until the store is at most this size (e.g. 50G).")
@click.option("--older-than", help="Evict artifacts not used for this long (e.g. 30d, 12h).")
@click.option("--dry-run", is_flag=True, help="Show the plan; remove nothing.")
@click.option("--remote", "on_remote", is_flag=True, help="Collect the remote: delete blobs no manifest in it references.")
@click.option("--grace", default="24h", show_default=True, help="With --remote: keep unreferenced blobs younger than this (pushes in flight).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def gc(ctx: click.Context, max_size: str | None, older_than: str | None, dry_run: bool, on_remote: bool, grace: str,
       as_json: bool) -> None:
    """Remove unreferenced blobs and temp leftovers; with --max-size/--older-than, evict LRU artifacts."""
    if on_remote:
        from .cache._sync import remote_gc

        if max_size or older_than:
            raise click.UsageError("--max-size/--older-than apply to the local store only.")
        remote = _remote(ctx, required=True)
        rplan = remote_gc(remote, grace_s=_parse_duration(grace), dry_run=dry_run)
        if as_json:
            _print_json({"dry_run": dry_run, "blobs": [{"key": k, "size": n} for k, n in rplan.blobs],
                         "bytes_freed": rplan.bytes, "kept": rplan.kept, "young": rplan.young,
                         "broken_entries": list(rplan.broken_entries)})
            return
        for b in rplan.broken_entries:
            click.echo(f"kiln: WARNING: {b}", err=True)
        click.echo(f"{'would delete' if dry_run else 'deleted'} {len(rplan.blobs)} unreferenced blobs ({_human_size(rplan.bytes)}) "
                   f"from {remote.describe()}; {rplan.kept} referenced, {rplan.young} unreferenced but younger than {grace}")
        return
    store = _store(ctx)
    plan = store.gc(
        max_size=_parse_size(max_size) if max_size else None,
        older_than=_parse_duration(older_than) if older_than else None,
        dry_run=dry_run,
    )
    verb = "would remove" if dry_run else "removed"
    if as_json:
        _print_json({
            "dry_run": dry_run,
            "evicted": [e.to_json() for e in plan.entries],
            "blobs": [{"digest": d, "size": s} for d, s in plan.blobs],
            "temp_paths": [str(p) for p in plan.temp_paths],
            "bytes_freed": plan.blob_bytes,
            "bytes_kept": plan.kept_bytes,
        })
        return
    for e in plan.entries:
        click.echo(f"{verb} artifact {e.key[:12]} {e.spec.get('model')} {e.spec.get('target')} ({_human_size(e.size)}, used {_age(e.created)} ago)")
    click.echo(f"{verb} {len(plan.entries)} artifacts, {len(plan.blobs)} unreferenced blobs ({_human_size(plan.blob_bytes)}), "
               f"{len(plan.temp_paths)} temp leftovers; {_human_size(plan.kept_bytes)} kept")


# --------------------------------------------------------------------------- store (developer commands)


@cli.group()
def store() -> None:
    """Developer commands on the local store."""


@store.command(name="put")
@click.argument("artifact_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@spec_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def store_put(ctx: click.Context, artifact_dir: Path, as_json: bool, **kw: Any) -> None:
    """Publish ARTIFACT_DIR as the artifact of MODEL + spec (as a build would, without compiling)."""
    from . import api

    res = _resolution(ctx, kw)
    t0 = time.monotonic()
    entry = api.put(res, artifact_dir, store=_store(ctx), duration_s=0.0)
    if as_json:
        _print_json({"key": entry.key, "manifest": entry.manifest, "size": entry.size, "files": entry.files,
                     "seconds": round(time.monotonic() - t0, 3)})
    else:
        click.echo(f"published {entry.key}  {entry.files} files, {_human_size(entry.size)}  manifest {entry.manifest}")


# Commands that live in their own modules register themselves on `cli` when imported.
from . import _cli_matrix, _cli_remote  # noqa: E402,F401

def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="kiln")


if __name__ == "__main__":  # pragma: no cover
    # `python -m kiln.cli`: run the imported module's group, on which every command registered.
    from kiln.cli import main as _main

    _main(sys.argv[1:])
