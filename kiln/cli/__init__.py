"""`kiln` command line: a shell around :mod:`kiln.api` (the only part of Kiln it imports).

The root group (``_app``) adds one module per command group; the command modules never
import the root. Shared options are defined once (``_options``: the spec flags as one
:class:`~kiln.cli._options.SpecRequest` value, ``--layout``, ``--toolchain``; ``_output``:
``--json``), progress lives in ``_progress`` and result reports in ``_report``.
"""

from __future__ import annotations

from typing import Sequence

from . import build, keys, lookup, matrix, remote, store
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
    store.gc,
    store.store_group,
    remote.push_cmd,
    remote.pull_cmd,
    remote.ensure,
    matrix.matrix,
):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="kiln")
