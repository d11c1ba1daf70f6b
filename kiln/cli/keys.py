"""`kiln key`: the build key of a spec, and with --explain every input that went into it."""

from __future__ import annotations

from typing import Any

import click

from ._context import store
from ._options import SpecRequest, resolve_request, spec_options
from ._output import Verbatim, json_option, print_json
from ._report import explain_lines

__all__ = ["key"]


@click.command()
@spec_options
@click.option("--explain", is_flag=True, help="Show every key input and what was ignored.")
@json_option
@click.pass_context
def key(ctx: click.Context, spec: SpecRequest, explain: bool, as_json: bool) -> None:
    """Print the build key of MODEL with the given spec."""
    res = resolve_request(store(ctx), spec)
    inputs = res.inputs()
    if as_json:
        out: dict[str, Any] = {"key": res.key}
        if explain:  # inputs exactly as hashed: build_key(inputs) == key
            out.update(inputs=Verbatim(inputs), notes=list(res.notes), ignored=[{"source": s, "value": v} for s, v in res.ignored],
                       toolchain_origin=dict(res.toolchain_origin), parts=res.key_parts())
        print_json(out)
        return
    click.echo(res.key)
    if explain:
        for line in explain_lines(res):
            click.echo(line)
