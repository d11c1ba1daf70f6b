"""`kiln sign`: sign artifacts already in the local store (then `kiln push` spreads the signatures).

Builds and pushes sign as they go (``--sign-key`` / ``KILN_SIGN_KEY`` on `kiln build`, `kiln push`,
`kiln ensure --on-miss build`); this command is for what was stored before, or built elsewhere.
"""

from __future__ import annotations

from typing import Sequence

import click

from .. import api
from ._context import remote, store
from ._options import remote_option, sign_key_option
from ._output import json_option, print_json
from ._progress import TransferBar

__all__ = ["sign"]


@click.command()
@click.argument("keys", nargs=-1, metavar="KEY...")
@click.option("--all", "all_", is_flag=True, help="Sign every artifact in the local store.")
@click.option("--push", "do_push", is_flag=True, help="Then push each signed artifact (and its signature) to the remote.")
@click.option("--force", is_flag=True, help="Also sign artifacts pulled from a remote (not built here): vouch for them.")
@sign_key_option
@remote_option
@json_option
@click.pass_context
def sign(ctx: click.Context, keys: Sequence[str], all_: bool, do_push: bool, force: bool,
         sign_key: api.SigningKey | None, as_json: bool) -> None:
    """Sign stored artifacts (KEY: a build key or prefix) with --sign-key / KILN_SIGN_KEY.

    The signature (OpenSSF model-signing format: every file with its sha256, bound to the build
    key and manifest) and a signed SLSA provenance statement are filed beside the manifest;
    `kiln push` carries them to the remote before the index entry. An artifact pulled from a
    remote is refused unless --force: a signature vouches for what was built here.
    """
    if sign_key is None:
        raise click.UsageError("no signing key: pass --sign-key KEY (a PEM private key file, or awskms:///alias/NAME) "
                               "or set KILN_SIGN_KEY.")
    if bool(keys) == all_:
        raise click.UsageError("name what to sign: KEY... (build keys or prefixes), or --all.")
    st = store(ctx)
    rem = remote(ctx, required=do_push)
    st.require_writable("signing")  # before the first signature, not halfway through
    entries = list(st.iter_entries()) if all_ else [api.find_artifact(st, k) for k in keys]
    pulled = [e for e in entries if st.pulled_from(e)]
    if pulled and not force:
        if not all_:
            st.sign(pulled[0], sign_key)  # the refusal, naming the artifact and its remote
        for e in pulled:
            click.echo(f"kiln: WARNING: not signed: artifact {e.key[:12]} was pulled from "
                       f"{', '.join(st.pulled_from(e))} (--force to vouch for it)", err=True)
        entries = [e for e in entries if e not in pulled]
    out = []
    for entry in entries:
        sig = st.sign(entry, sign_key, force=force)
        item: dict[str, object] = {"key": entry.key, "manifest": entry.manifest, "fingerprint": sig.fingerprint,
                                   "files": entry.files, "pushed": False}
        if do_push:
            assert rem is not None
            with TransferBar(f"push {entry.key[:12]}") as bar:
                api.push(st, rem, entry, progress=bar)
            item["pushed"] = True
        out.append(item)
        if not as_json:
            click.echo(f"signed {entry.key[:12]} ({entry.files} files) with {sig.fingerprint}"
                       + (f"; pushed to {rem.describe()}" if do_push and rem is not None else ""))
    if as_json:
        print_json(out)
