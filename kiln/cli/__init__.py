"""`kiln` command line: a shell around :mod:`kiln.api` (the only part of Kiln it imports).

The root group (``_app``) adds one module per command group (``keys``, ``lookup``,
``build``, ``store``, ``maintenance`` — gc and rm —, ``remote``, ``matrix``); the command
modules never import the root. Shared options are defined once (``_options``: the spec flags
as one :class:`~kiln.cli._options.SpecRequest` value, ``--layout``, ``--toolchain``,
``--remote``; ``_output``: ``--json``, tables, times), progress lives in ``_progress``, result
reports in ``_report``, artifact references in ``_refs``. Every --json shape is a schema in
docs/json/.
"""

from __future__ import annotations

from typing import Sequence

from . import build, keys, lookup, maintenance, matrix, remote, store
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
    matrix.matrix,
):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="kiln")
