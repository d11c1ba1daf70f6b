"""`kiln` command line: a shell around :mod:`kiln.api` (the only part of Kiln it imports).

The root group (``_app``) adds one module per command group (``keys``, ``lookup``,
``build``, ``store``, ``maintenance`` — gc and rm —, ``remote``, ``signing``, ``matrix``); the command
modules never import the root. Shared options are defined once (``_options``: the spec flags
as one :class:`~kiln.cli._options.SpecRequest` value, ``--layout``, ``--toolchain``,
``--remote``; ``_output``: ``--json``, tables, times), progress lives in ``_progress``, result
reports in ``_report``, artifact references in ``_refs``. Every --json shape is a schema in
docs/json/.
"""

from __future__ import annotations

import logging
import sys
from typing import NoReturn, Sequence

import click

from . import build, keys, lookup, maintenance, matrix, remote, signing, store
from ._app import cli

__all__ = ["cli", "main"]

for command in (
    keys.key,
    lookup.lookup,
    lookup.fetch,
    build.build,
    build.generate,
    build.presets,
    store.ls_cmd,
    store.show,
    store.verify,
    maintenance.gc,
    maintenance.rm,
    store.store_group,
    remote.push_cmd,
    remote.pull_cmd,
    remote.ensure,
    signing.sign,
    matrix.matrix,
):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the `kiln` command; exits with its code (0 hit/success, 1 miss, 2+ errors)."""
    _warnings_to_stderr()
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


def _warnings_to_stderr() -> None:
    """Warnings Kiln logs (refused remote data…) go to stderr as they are, one line each."""
    logger = logging.getLogger("kiln")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
