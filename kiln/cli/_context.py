"""What every command reads from the root group: the local store and the (lazily opened) remote.

The remote URL comes from, in order: ``--remote URL`` after the subcommand
(:func:`~kiln.cli._options.remote_option` calls :func:`set_remote_url`), ``--remote URL``
before it (the root group), ``KILN_REMOTE``. The URL may carry credentials (userinfo in an
``?endpoint=``, secret query values): it is kept here only to open the remote, and an error
opening it is redacted (:func:`kiln._redact.redact`) before anyone sees it.
"""

from __future__ import annotations

from typing import Any

import click

from .. import api
from .._redact import redact

__all__ = ["CliContext", "store", "remote", "remote_url", "set_remote_url"]


class CliContext:
    def __init__(self, store_: api.Store, remote_url_: str | None) -> None:
        self.store = store_
        self.remote_url = remote_url_
        self._remote: api.Remote | None = None

    def set_remote_url(self, url: str) -> None:
        self.remote_url = url
        self._remote = None

    def remote(self, required: bool = False) -> api.Remote | None:
        if self._remote is None and self.remote_url:
            try:
                self._remote = api.open_remote(self.remote_url)
            except api.KilnError as e:
                # The remotes redact their own messages; this holds whatever raised (a URL is
                # quoted in many of them), so a credential in the URL never reaches stderr.
                e.args = (redact(str(e)),)
                raise
        if required and self._remote is None:
            from ..errors import RemoteError

            raise RemoteError("no remote configured: pass --remote URL or set KILN_REMOTE.")
        return self._remote


def _obj(ctx: click.Context) -> CliContext:
    obj: Any = ctx.find_root().obj
    return obj


def store(ctx: click.Context) -> api.Store:
    return _obj(ctx).store


def remote(ctx: click.Context, required: bool = False) -> api.Remote | None:
    return _obj(ctx).remote(required)


def remote_url(ctx: click.Context) -> str | None:
    return _obj(ctx).remote_url


def set_remote_url(ctx: click.Context, url: str) -> None:
    _obj(ctx).set_remote_url(url)
