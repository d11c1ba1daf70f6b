"""`kiln` command line: a shell around :mod:`kiln.api` (the only part of Kiln it imports).

The root group (``_app``) names one module per command group (``keys``, ``lookup``,
``build``, ``store``, ``maintenance`` — gc and rm —, ``remote``, ``signing``, ``matrix``) and
imports a command's module only when that command runs or help lists them all; the command
modules never import the root. Shared options are defined once (``_options``: the spec flags
as one :class:`~kiln.cli._options.SpecRequest` value, ``--layout``, ``--toolchain``,
``--remote``; ``_output``: ``--json``, tables, times), progress lives in ``_progress``, result
reports in ``_report``, artifact references in ``_refs``. Every --json shape is a schema in
docs/json/.
"""

from __future__ import annotations

import sys
from typing import NoReturn, Sequence

import click

from .._warn import lines_to_stderr
from ._app import cli

__all__ = ["cli", "main"]

# Every command, by name, and where it lives; imported when it runs (KilnGroup.add_lazy_command).
_COMMANDS = {
    "key": ".keys:key",
    "lookup": ".lookup:lookup",
    "fetch": ".lookup:fetch",
    "build": ".build:build",
    "generate": ".build:generate",
    "presets": ".build:presets",
    "ls": ".store:ls_cmd",
    "show": ".store:show",
    "verify": ".store:verify",
    "gc": ".maintenance:gc",
    "rm": ".maintenance:rm",
    "store": ".store:store_group",
    "push": ".remote:push_cmd",
    "pull": ".remote:pull_cmd",
    "ensure": ".remote:ensure",
    "sign": ".signing:sign",
    "matrix": ".matrix:matrix",
}
for _name, _where in _COMMANDS.items():
    cli.add_lazy_command(_name, _where)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the `kiln` command; exits with its code (0 hit/success, 1 miss, 2+ errors)."""
    lines_to_stderr()  # warnings Kiln logs (refused remote data…) go to stderr as they are, one line each
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="kiln", standalone_mode=False)
    except click.UsageError as e:
        # Click's own form is three lines (usage, hint, "Error: …"); scripts and people get one.
        where = e.ctx.command_path if e.ctx is not None else "kiln"
        message = " ".join(e.format_message().split())
        click.echo(f"kiln: error: {message} (see `{where} --help`)", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"kiln: error: {' '.join(e.format_message().split())}", err=True)
        sys.exit(e.exit_code if e.exit_code >= 2 else 2)
    except click.Abort:
        click.echo("kiln: aborted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
