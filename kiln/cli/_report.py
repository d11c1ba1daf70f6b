"""How lookups, fetches and ensures report their result (text or --json)."""

from __future__ import annotations

import json
from typing import Any

import click

from .. import api
from ._output import age, human_size, print_json

__all__ = ["report_lookup", "explain_lines", "warn_damaged"]


def warn_damaged(result: api.LookupResult) -> None:
    for d in result.damaged:
        click.echo(f"kiln: WARNING: {d}", err=True)


def report_lookup(result: api.LookupResult, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    warn_damaged(result)
    if as_json:
        data = result.to_json()
        data.update(extra or {})
        print_json(data)
        return
    if result.hit:
        e = result.entry
        assert e is not None
        click.echo(f"hit ({result.source}) {e.key}  {e.spec['target']} n_positions={e.spec['n_positions']} batch_size={e.spec['batch_size']} "
                   f"tp={e.spec['tp_degree']} dtype={e.spec['dtype']}  {human_size(e.size)}  built {age(e.created)} ago")
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


def explain_lines(res: api.Resolution) -> list[str]:
    """Every key input of a resolution, with where each value came from (`kiln key --explain`)."""
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
