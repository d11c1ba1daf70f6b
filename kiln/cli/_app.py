"""The root command group: global options, and Kiln's errors as one line and an exit code.

Exit codes: 0 success / hit, 1 miss (lookup, fetch, ensure), 2 or more errors — grep's
convention. Errors Kiln raises on purpose print one message saying what to do, never a
traceback.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click

from .. import api
from ..errors import KilnError
from ._context import CliContext

__all__ = ["KilnGroup", "cli"]


class KilnGroup(click.Group):
    """Turns Kiln's own errors into one clear line and an exit code, never a traceback.

    Commands may be registered by where they live (:meth:`add_lazy_command`): a command's module
    is imported when that command runs, or when help lists every command, so `kiln lookup` does
    not import the modules of build, matrix, signing… (docs/benchmarks.md, issue 18, "Lookup").
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands: dict[str, str] = {}  # name -> "module:attribute", module relative to kiln.cli

    def add_lazy_command(self, name: str, where: str) -> None:
        self.lazy_commands[name] = where

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            module, attribute = self.lazy_commands[cmd_name].split(":")
            command = getattr(importlib.import_module(module, __package__), attribute)
            if command.name != cmd_name:  # the table and the command disagree: a bug here, not the user's
                raise RuntimeError(f"kiln.cli{module}:{attribute} is named {command.name!r}, registered as {cmd_name!r}")
            self.add_command(command)
        return super().get_command(ctx, cmd_name)

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
@click.version_option(api.__version__, prog_name="kiln")
@click.option("--store", "store_path", type=click.Path(path_type=Path), envvar="KILN_HOME",
              help="Local store directory [env: KILN_HOME; default: $XDG_CACHE_HOME/kiln or ~/.cache/kiln].")
@click.option("--remote", "remote_url", envvar="KILN_REMOTE", metavar="URL",
              help="Shared store: oci://HOST/REPOSITORY, s3://BUCKET/PREFIX[?endpoint=URL] or a path [env: KILN_REMOTE].")
@click.option("--trust-policy", "trust_policy", type=click.Path(path_type=Path), envvar="KILN_TRUST_POLICY",
              metavar="FILE", help="Serve only artifacts this YAML policy trusts (require: signed; keys, models, "
                                   "remotes) [env: KILN_TRUST_POLICY].")
@click.pass_context
def cli(ctx: click.Context, store_path: Path | None, remote_url: str | None, trust_policy: Path | None) -> None:
    """Build LLM engines ahead of time; keep them in a content-addressed store; find them fast."""
    # The policy is read whole (every key file, every KMS key) before any work: a bad one is an error now.
    policy = api.load_policy(trust_policy) if trust_policy else None
    ctx.obj = CliContext(api.Store(store_path, trust=policy), remote_url)
    ctx.obj.store.command = f"`kiln {ctx.invoked_subcommand}`"  # named if the store turns out read-only
