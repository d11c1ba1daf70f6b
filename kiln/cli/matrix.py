"""`kiln matrix plan|build|ci`: build matrices from a YAML file (format: docs/ci.md).

JSON shapes: docs/ci/matrix-{plan,build,ci}.schema.json (times ISO 8601 UTC, as docs/json.md says).

Exit codes: ``plan`` and ``ci`` exit 2 when a row is invalid (every invalid row is listed, each
distinct error once with the rows it affects, then one ``kiln: error:`` line on stderr);
``build`` exits 0 only when every row is built or a hit (and, with ``--push``, pushed or already
on the remote), else 1. A file that cannot be read as a matrix is one ``kiln: error:`` line and
exit 2 before anything is planned.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import click

from .. import api
from ..errors import SpecError
from ._context import remote, remote_url, store
from ._options import remote_option, toolchain_option
from ._output import console, human_size, iso_time, json_option, print_json

__all__ = ["matrix"]

_SHOW_ROWS = 8  # rows named per shared error in text output (--json lists all)


@click.group()
def matrix() -> None:
    """Build matrices from a YAML file: plan, build the missing rows, fan out in CI."""


def _plan(ctx: click.Context, file: Path, toolchain_pins: Sequence[str], rows: Sequence[str] = ()) -> list[api.PlannedRow]:
    all_rows = api.load_matrix(file)
    wanted = [r for spec in rows for r in spec.split(",") if r]
    if wanted:
        by_id = {r.id: r for r in all_rows}
        unknown = [w for w in wanted if w not in by_id]
        if unknown:
            raise SpecError(f"--row {unknown[0]!r} is not a row of {file}"
                            + (f" (nor {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                            + f"; `kiln matrix plan {file}` lists the ids.")
        all_rows = [by_id[w] for w in dict.fromkeys(wanted)]
    return api.plan_rows(all_rows, store=store(ctx), remote=remote(ctx), pins=api.parse_toolchain_pins(toolchain_pins))


def _summary(planned: list[api.PlannedRow]) -> dict[str, Any]:
    """What plan --json and ci --json share: rows, counts, each error once, merged rows."""
    return {
        "rows": [p.to_json() for p in planned],
        "invalid": sum(p.status == "invalid" for p in planned),
        "hits": sum(p.status == "hit" for p in planned),
        "builds": sum(p.status == "build" for p in planned),
        "errors": api.shared_errors(planned),
        "merged": [{"row": p.row.id, "sources": [p.row.source, *p.row.merged]} for p in planned if p.row.merged],
    }


def _echo_errors(planned: list[api.PlannedRow], err: bool = False) -> None:
    for group in api.shared_errors(planned):
        ids = group["rows"]
        more = f" and {len(ids) - _SHOW_ROWS} more (--json lists all)" if len(ids) > _SHOW_ROWS else ""
        rows = "row " + ids[0] if len(ids) == 1 else f"{len(ids)} rows ({', '.join(ids[:_SHOW_ROWS])}{more})"
        click.echo(f"invalid {rows}: {group['error']}", err=err)


def _fail_invalid(ctx: click.Context, file: Path, planned: list[api.PlannedRow]) -> None:
    invalid = sum(p.status == "invalid" for p in planned)
    if invalid:
        errors = len(api.shared_errors(planned))
        click.echo(f"kiln: error: {invalid} of {len(planned)} rows of {file} are invalid ({errors} distinct "
                   f"error{'s' if errors > 1 else ''}, listed above); fix them in the file and plan again.", err=True)
        ctx.exit(2)


@matrix.command(name="plan")
@click.argument("file", type=click.Path(path_type=Path))
@remote_option
@toolchain_option
@json_option
@click.pass_context
def matrix_plan(ctx: click.Context, file: Path, toolchain_pins: Sequence[str], as_json: bool) -> None:
    """Expand and validate every row (all errors at once); show hits, builds and shared stages.

    Rows given twice (the same spec from two places) are merged and reported; a shared error
    (one missing model) is printed once with the rows it affects.
    """
    planned = _plan(ctx, file, toolchain_pins)
    if as_json:
        print_json(_summary(planned))
    else:
        stage_users: dict[str, int] = {}
        for p in planned:
            for st in p.stages:
                stage_users[st["key"]] = stage_users.get(st["key"], 0) + 1
        for p in planned:
            tag = {"hit": f"hit ({p.source})", "build": "build", "invalid": "INVALID"}[p.status]
            click.echo(f"{tag:<14} {p.row.id}" + (f"  {p.key[:12]}" if p.key else ""))
            for st in p.stages:
                click.echo(f"{'':<14}   needs {st['stage']} {st['key'][:12]} (shared by {stage_users[st['key']]} row(s))")
            if p.row.merged:
                click.echo(f"{'':<14}   merged: also given by {', '.join(p.row.merged)} (the same row)")
        _echo_errors(planned)
        merged = sum(len(p.row.merged) for p in planned)
        click.echo(f"{len(planned)} rows: {sum(p.status == 'hit' for p in planned)} hits, "
                   f"{sum(p.status == 'build' for p in planned)} to build, "
                   f"{sum(p.status == 'invalid' for p in planned)} invalid"
                   + (f"; {merged} identical row(s) merged" if merged else ""))
    _fail_invalid(ctx, file, planned)


@matrix.command(name="build")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--row", "rows", multiple=True, metavar="ID[,ID…]", help="Build only these rows (ids from `kiln matrix plan`).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, help="Rows built at once (default: CPU count, within memory).")
@click.option("--push", "do_push", is_flag=True, help="Publish each row to the remote as it finishes (rows already there are not re-sent).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", help="Ray cluster address (default: start a local Ray instance).")
@click.option("--report", type=click.Path(path_type=Path), help="Also write the JSON report to this file.")
@remote_option
@toolchain_option
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the table.")
@click.pass_context
def matrix_build(ctx: click.Context, file: Path, rows: Sequence[str], jobs: int | None, do_push: bool, executor: str,
                 address: str | None, report: Path | None, toolchain_pins: Sequence[str], as_json: bool) -> None:
    """Build the missing rows; one failure does not stop the others. Exit 0 only if every row is built or a hit.

    Rows the plan finds on the remote are hits from its index alone: nothing is downloaded.
    """
    rem = remote(ctx, required=do_push)
    planned = _plan(ctx, file, toolchain_pins, rows)
    t0 = time.monotonic()

    def done(r: Any) -> None:
        if not as_json:
            click.echo(f"{r.status:>10}  {r.row}  {r.seconds:.1f}s" + (f"  {r.key[:12]}" if r.key else ""), err=True)

    if executor == "ray":
        results = api.run_ray(planned, store=store(ctx), remote_url=remote_url(ctx), push=do_push,
                              address=address, pins=api.parse_toolchain_pins(toolchain_pins), on_done=done)
    else:
        results = api.run_local(planned, store=store(ctx), remote=rem, jobs=jobs or (os.cpu_count() or 1),
                                push=do_push, on_done=done)
    ok = all(r.status in ("hit", "built") and not r.push_error for r in results)
    data = {"file": str(file), "executor": executor, "ok": ok, "seconds": round(time.monotonic() - t0, 3),
            "rows": [{**r.to_json(), "started": iso_time(r.started), "finished": iso_time(r.finished)} for r in results]}
    if report:
        report.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    if as_json:
        print_json(data)
    else:
        from rich.table import Table

        table = Table(box=None, header_style="bold")
        for col in ("row", "status", "key", "seconds", "size", *(("pushed",) if do_push else ()), "log / error"):
            table.add_column(col)
        for r in results:
            pushed = ("yes" if r.pushed else "failed" if r.push_error else "no (on the remote)"
                      if r.push or r.source == "remote" else "")
            table.add_row(r.row, r.status + (f" ({r.source})" if r.source else ""), (r.key or "")[:12], f"{r.seconds:.1f}",
                          human_size(r.size) if r.size else "", *((pushed,) if do_push else ()),
                          (r.push_error or r.error or r.log or "")[:160])
        console().print(table)
        counts = {s: sum(r.status == s for r in results) for s in ("hit", "built", "incomplete", "failed", "invalid")}
        extra = {"pushed": sum(r.pushed for r in results), "push failed": sum(bool(r.push_error) for r in results)}
        click.echo(", ".join(f"{n} {s}" for s, n in {**counts, **extra}.items() if n) + f" in {data['seconds']:.1f} s")
    ctx.exit(0 if ok else 1)


@matrix.command(name="ci")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["github"]), default="github", show_default=True)
@click.option("--shard-size", type=click.IntRange(min=1), default=1, show_default=True, help="Rows per CI job.")
@remote_option
@toolchain_option
@click.option("--json", "as_json", is_flag=True,
              help="Print {matrix, rows, invalid, hits, builds, errors, merged} instead of the bare job matrix.")
@click.pass_context
def matrix_ci(ctx: click.Context, file: Path, fmt: str, shard_size: int, toolchain_pins: Sequence[str],
              as_json: bool) -> None:
    """Print a CI job matrix of the missing rows: fan out with `kiln matrix build FILE --row ${{ matrix.rows }}`."""
    planned = _plan(ctx, file, toolchain_pins)
    job_matrix = api.github_matrix(planned, shard_size)
    if as_json:
        print_json({"matrix": job_matrix, "format": fmt, "shard_size": shard_size, **_summary(planned)})
    else:
        _echo_errors(planned, err=True)
        click.echo(json.dumps(job_matrix, separators=(",", ":")))
    _fail_invalid(ctx, file, planned)
