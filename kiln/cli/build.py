"""`kiln build`, `kiln generate`, `kiln presets`: build engines, run one, list shipped presets."""

from __future__ import annotations

import time

import click

from .. import api
from ..errors import IncompleteBuildError, KilnError, SpecError
from ._context import remote, store
from ._options import SpecRequest, remote_option, resolve_request, sign_key_option, spec_options, trust_policy_option
from ._output import human_size, json_option, print_json
from ._progress import StageReporter, TransferBar
from ._report import build_json, incomplete_json

__all__ = ["build", "generate", "presets"]


@click.command()
@spec_options
@click.option("--force", is_flag=True, help="Build even if the store already has the artifact.")
@click.option("--push", "do_push", is_flag=True, help="Also publish the artifact to the remote (--remote / KILN_REMOTE).")
@click.option("--preset", metavar="NAME", help="Build every row of a preset (`kiln presets`); MODEL replaces its models.")
@click.option("--dry-run", is_flag=True, help="Print the plan (key, steps, the exact vendor invocation) and build nothing.")
@sign_key_option
@remote_option
@trust_policy_option
@json_option
@click.pass_context
def build(ctx: click.Context, spec: SpecRequest, force: bool, do_push: bool, preset: str | None, dry_run: bool,
          sign_key: api.SigningKey | None, as_json: bool) -> None:
    """Build the engine for a spec (a local or remote hit returns at once) and publish it.

    Progress goes to stderr, the result to stdout (with --json too). Exit 3: the stages this
    machine can run are stored and the last needs another machine (the --json document, status
    "incomplete", lists the stored stage keys and the commands that finish the build).
    """
    if dry_run:
        _dry_run(ctx, spec, as_json=as_json)
        return
    rem = remote(ctx, required=do_push)
    if preset:
        _build_preset(ctx, preset, spec, force=force, do_push=do_push, as_json=as_json, sign_key=sign_key)
        return
    reporter = StageReporter()
    try:
        reporter("resolve model and validate spec")
        res = resolve_request(store(ctx), spec)
        for warning in res.warnings:
            click.echo(f"kiln: WARNING: {warning}", err=True)
    except BaseException:
        reporter.stop()
        raise
    result, pushed = build_and_push(ctx, spec, res, rem, do_push=do_push, as_json=as_json, force=force,
                                    reporter=reporter, sign_key=sign_key)
    if as_json:
        print_json(build_json(result, pushed))
        return
    e = result.entry
    if result.hit:
        how = f"cache hit ({result.source}): nothing compiled"
    elif result.engine is not None and result.engine.reused:
        how = (f"built and published without compiling: engine {result.engine.key[:12]} (same architecture) "
               "reused, with this model's weights")
    else:
        how = "built and published"
    if pushed is not None:
        how += f"; pushed to {rem.describe()} ({pushed.uploaded} blobs, {human_size(pushed.uploaded_bytes)} uploaded)"  # type: ignore[union-attr]
    if result.waited_for_peer:
        how += " (by another process while this one waited)"
    if sign_key is not None and not store(ctx).pulled_from(e):
        how += f"; signed by {sign_key.fingerprint}"
    click.echo(f"{how} in {result.seconds:.2f} s")
    click.echo(f"key       {e.key}")
    click.echo(f"spec      {res.spec.summary()}")
    click.echo(f"artifact  {e.files} files, {human_size(e.size)}  (manifest {e.manifest[:19]})")
    if result.stages:
        click.echo("stages    " + ", ".join(f"{k} {v:.1f}s" for k, v in result.stages.items() if v >= 0.05))


def _dry_run(ctx: click.Context, spec: SpecRequest, *, as_json: bool) -> None:
    plan = api.plan_build(resolve_request(store(ctx), spec), store=store(ctx), calib_file=spec.calib_file)
    if as_json:
        print_json(plan)
        return
    import json

    click.echo(f"key       {plan['key'] or '(not computable: the toolchain is not known here)'}")
    for step in plan["steps"]:  # type: ignore[attr-defined]
        stage = step.get("stage")
        where = f"  stage {stage['key'][:12]}{' (stored)' if stage['stored'] else ''}" if stage and stage["key"] else ""
        click.echo(f"step      {step['name']}: {step['what']}{where}")
        if "invocation" in step:
            click.echo("          " + json.dumps(step["invocation"], sort_keys=True))
        else:
            click.echo("          " + " ".join(step["argv"]))
    for note in plan["notes"]:  # type: ignore[attr-defined]
        click.echo(f"note      {note}")


def build_and_push(ctx: click.Context, spec: SpecRequest, res: api.Resolution, rem: api.Remote | None, *,
                   do_push: bool, as_json: bool, force: bool = False,
                   reporter: StageReporter | None = None,
                   sign_key: api.SigningKey | None = None) -> tuple[api.BuildResult, api.PushResult | None]:
    """Build (a hit returns at once), sign with ``sign_key`` and optionally push, the one way
    `kiln build` and `kiln ensure --on-miss build` do it: progress on stderr, the calibration file
    and the remote's stages used; on exit 3 the --json document is printed before the error.
    The signature lands before the push, so the remote's index entry comes after it."""
    reporter = reporter or StageReporter()
    try:
        with TransferBar("pull"):
            result = api.build(res, store=store(ctx), remote=rem, force=force, on_stage=reporter,
                               calib_file=spec.calib_file)
    except IncompleteBuildError as e:
        if as_json:
            print_json(incomplete_json(e, res))
        raise  # the message on stderr, exit 3
    finally:
        reporter.stop()
    if sign_key is not None:
        sign_if_built_here(ctx, result.entry, sign_key)
        for stage in result.stage_entries:  # so builders with a trust policy can reuse them
            if not store(ctx).pulled_from(stage):
                store(ctx).sign(stage, sign_key)
    pushed = None
    if do_push:
        assert rem is not None
        with TransferBar("push") as bar:
            pushed = api.push_build(store(ctx), rem, result, progress=bar)
    return result, pushed


def sign_if_built_here(ctx: click.Context, entry: api.IndexEntry, key: api.SigningKey) -> bool:
    """Sign ``entry`` unless it was pulled from a remote (a build hit there, or pulled before):
    a build or push signs only what was built here, never what it found (WARNING instead)."""
    origins = store(ctx).pulled_from(entry)
    if origins:
        click.echo(f"kiln: WARNING: artifact {entry.key[:12]} was not signed: it was pulled from "
                   f"{', '.join(origins)}, not built here (its own signatures travel with it; to vouch for it "
                   "anyway: kiln sign --force).", err=True)
        return False
    store(ctx).sign(entry, key)
    return True


def _build_preset(ctx: click.Context, name: str, spec: SpecRequest, *, force: bool, do_push: bool, as_json: bool,
                  sign_key: api.SigningKey | None = None) -> None:
    """Build every row of a preset, skipping hits; one row's failure does not stop the others."""
    stray = [f for f in spec.given_flags() if f != "--consumer"]
    if stray:
        raise click.UsageError(f"--preset sets the spec of every row; drop {', '.join(stray)} (only MODEL, --consumer "
                               "and --toolchain apply).")
    rows = api.load_preset(name, model=spec.model, consumer=spec.consumer)
    pins = api.parse_toolchain_pins(spec.toolchain_pins)
    report = []
    for row in rows:
        try:
            res = api.resolve(api.spec_from_sources(row.fields()), store=store(ctx), toolchain=pins)
            result = api.build(res, store=store(ctx), remote=remote(ctx), force=force)
            if sign_key is not None:
                sign_if_built_here(ctx, result.entry, sign_key)
            pushed = None
            if do_push:
                pushed = api.push_build(store(ctx), remote(ctx, required=True), result)  # type: ignore[arg-type]
            report.append({"row": row.id, "status": "hit" if result.hit else "built", "key": result.entry.key,
                           "push": pushed.to_json() if pushed is not None else None})
        except IncompleteBuildError as e:
            report.append({"row": row.id, **e.to_json(), "error": str(e)})
        except KilnError as e:
            report.append({"row": row.id, "status": "failed", "error": str(e)})
        if not as_json:
            r = report[-1]
            click.echo(f"{r['status']:>6}  {row.id}" + (f"  {r['key'][:12]}" if "key" in r else f"\n        {r['error']}"))
    if as_json:
        print_json(report)
    failed = sum(r["status"] == "failed" for r in report)
    incomplete = sum(r["status"] == "incomplete" for r in report)
    if not as_json:
        click.echo(f"{len(rows)} rows: {sum(r['status'] == 'hit' for r in report)} hits, "
                   f"{sum(r['status'] == 'built' for r in report)} built, {incomplete} incomplete, {failed} failed")
    ctx.exit(2 if failed else 3 if incomplete else 0)


@click.command()
@click.argument("name", required=False)
@click.option("--model", help="Replace the preset's models with this one.")
@json_option
def presets(name: str | None, model: str | None, as_json: bool) -> None:
    """List the presets shipped with Kiln, or the rows of one."""
    if name is None:
        if as_json:
            print_json([{"name": n, "target": t, "description": d, "rows": len(api.load_preset(n))}
                        for n, (_, t, d) in api.PRESETS.items()])
            return
        for n, (_, t, d) in api.PRESETS.items():
            click.echo(f"{n}  ({t}, {len(api.load_preset(n))} rows)  {d}")
        return
    rows = api.load_preset(name, model=model)
    if as_json:
        print_json([r.to_json() for r in rows])
        return
    for r in rows:
        click.echo(f"{r.id:<48} {r.model}  {r.instance_type}  n_positions={r.n_positions} batch={r.batch_size} "
                   f"tp={r.tp_degree} {r.dtype}")


@click.command()
@spec_options
@click.option("--prompt", "-p", required=True, help="Text to complete (a chat template is applied when the tokenizer has one).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--raw", is_flag=True, help="Do not apply the tokenizer's chat template.")
@json_option
@click.option("--key", "by_key", metavar="KEY", help="Load this artifact (key or prefix) instead of looking a spec up: needs only the store.")
@trust_policy_option
@click.pass_context
def generate(ctx: click.Context, spec: SpecRequest, prompt: str, max_new_tokens: int, raw: bool, as_json: bool,
             by_key: str | None) -> None:
    """Load a stored engine in-process (no compile) and greedy-decode a completion of --prompt."""
    t0 = time.monotonic()
    if by_key:
        loaded = api.load_engine_by_key(by_key, store=store(ctx))
    else:
        loaded = api.load_engine(resolve_request(store(ctx), spec), store=store(ctx), remote=remote(ctx))
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
        raise SpecError(str(e)) from None
    t_gen = time.monotonic() - t1
    new = out[0, ids.shape[1]:]
    text = tok.decode(new, skip_special_tokens=True)
    if as_json:
        print_json({"key": loaded.entry.key, "text": text, "new_tokens": int(new.numel()),
                    "load_seconds": round(t_load, 3), "generate_seconds": round(t_gen, 3)})
        return
    click.echo(text)
    click.echo(f"[{int(new.numel())} tokens in {t_gen:.2f} s; engine {loaded.entry.key[:12]} loaded in {t_load:.2f} s, no compile]", err=True)
