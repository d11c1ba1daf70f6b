"""How lookups, fetches, ensures and builds report their result (text or --json).

JSON documents share one vocabulary (docs/json.md): ``status`` says what happened (``hit``,
``miss``, ``built``, ``incomplete``), ``spec``/``toolchain``/``model`` describe the artifact
(``query`` what was asked), sizes are bytes, durations ``*_seconds``/``seconds``, times ISO 8601.
"""

from __future__ import annotations

import json
from typing import Any

import click

from .. import api
from ..errors import IncompleteBuildError
from ._output import age, human_size, print_json

__all__ = ["report_lookup", "explain_lines", "warn_damaged", "incomplete_json", "build_json", "describe_push",
           "describe_build"]


def warn_damaged(result: api.LookupResult | api.KeyLookup) -> None:
    for d in result.damaged:
        click.echo(f"kiln: WARNING: {d}", err=True)


def _hit_line(result: api.LookupResult | api.KeyLookup) -> str:
    e = result.entry
    assert e is not None
    s = e.spec
    consumer = api.entry_consumer(e)
    return (f"hit ({result.source}) {e.key}  {s['target']}{f' for {consumer}' if consumer else ''} "
            f"n_positions={s.get('n_positions')} "
            f"batch_size={s.get('batch_size')} tp={s.get('tp_degree')} dtype={s.get('dtype')}  {human_size(e.size)}  "
            f"built {age(e.created)} ago")


def report_lookup(result: api.LookupResult | api.KeyLookup, as_json: bool, extra: dict[str, Any] | None = None,
                  ) -> None:
    """A lookup/fetch result (of a spec, or of a key alone): one hit line (with notes, DEST, env)
    or the miss and its explanation."""
    warn_damaged(result)
    if as_json:
        data = result.to_json()
        data.update(extra or {})
        print_json(data)
        return
    if result.hit:
        click.echo(_hit_line(result))
        for n in result.notes:
            click.echo(f"note: {n}")
        if extra and extra.get("dest"):
            click.echo(f"dest: {extra['dest']} (layout {extra.get('layout', 'raw')}, {extra.get('seconds', 0):.2f} s)")
        for name, value in sorted((result.env or {}).items()):
            click.echo(f"env: {name}={value}")
    else:
        if isinstance(result, api.KeyLookup):
            click.echo(f"miss: no artifact with key {result.wanted}")
        else:
            click.echo(f"miss: no artifact for {result.resolution.model.ref} with {result.resolution.spec.summary()}")
        for line in result.explanation:
            click.echo(line)


def describe_build(built: api.BuildResult) -> str:
    """``built 8857542da900 in 14.8 s (compiled here)`` — or how a peer or a store supplied it."""
    if built.hit:
        return f"found {built.entry.key[:12]} ({built.source}) while preparing to build: nothing compiled"
    how = "compiled here" if not built.waited_for_peer else "built by another process while this one waited"
    return f"built {built.entry.key[:12]} in {built.seconds:.1f} s ({how}; {built.entry.files} files, {human_size(built.entry.size)})"


def describe_push(pushed: api.PushResult, where: str) -> str:
    return (f"pushed {pushed.entry.key[:12]} to {where}: {pushed.uploaded} blobs ({human_size(pushed.uploaded_bytes)}) "
            f"uploaded, {pushed.skipped} ({human_size(pushed.skipped_bytes)}) already there")


def build_json(built: api.BuildResult, pushed: api.PushResult | None = None) -> dict[str, Any]:
    """A build's document: status ``hit`` (found, nothing compiled) or ``built``, and the push result."""
    data = built.to_json()
    data["status"] = "hit" if built.hit else "built"
    data["push"] = pushed.to_json() if pushed is not None else None
    return data


def incomplete_json(e: IncompleteBuildError, res: api.Resolution | None) -> dict[str, Any]:
    """The --json document of a build that stored what it could and stopped (exit 3)."""
    data = e.to_json()
    if res is not None:
        data["key"] = res.key if res.complete else None
        data["spec"] = res.entry_spec()
        data["model"] = res.model_summary()
        data["toolchain"] = dict(res.toolchain)
    return data


def _part_lines(res: api.Resolution) -> list[str]:
    """Which of the inputs above key the compiled engine, and which the weights."""
    parts = res.key_parts() if res.complete else None
    if parts is None:
        return []
    engine, weights = parts["engine"], parts["weights"]
    if weights is None:
        return [f"engine       keyed by spec, toolchain and the tree digest ({engine['why']})"]
    arch = engine.get("architecture")
    if arch is None:
        lines = [f"engine       {engine['key']}  keyed by spec, toolchain and the tree digest ({engine['why']})"]
    else:
        left_out = ", ".join(arch["config_fields_left_out"])
        lines = [f"engine       {engine['key']}  keyed by spec, toolchain and the architecture: shared by every model "
                 "of this architecture",
                 f"architecture {arch['digest']}  (config.json without {left_out}; {arch['tensors']} tensors' names, "
                 "dtypes and shapes)"]
    return lines + [f"weights      keyed by the tree digest {res.model.tree_digest[:19]}…: this model's own part"]


def explain_lines(res: api.Resolution) -> list[str]:
    """Every key input of a resolution, with where each value came from (`kiln key --explain`)."""
    lines = [f"model        {res.model.ref}  ({res.model.kind}{', commit ' + res.model.commit if res.model.commit else ''})",
             f"tree digest  {res.model.tree_digest}  ({len(res.model.files)} files)"]
    for k, v in res.shape.items():
        lines.append(f"spec.{k:<12} {json.dumps(v, sort_keys=True) if isinstance(v, dict) or v is None else v}")
    for k, v in res.toolchain.items():
        lines.append(f"toolchain.{k:<9} {v if v is not None else '(unknown)'}  [{res.toolchain_origin[k]}]")
    lines += _part_lines(res)
    for n in res.notes:
        lines.append(f"note         {n}")
    for src, value in res.ignored:
        lines.append(f"ignored      {src}={value}  (does not change the engine)")
    return lines
