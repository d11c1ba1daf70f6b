"""Naming artifacts on the command line: key (or manifest digest) prefixes, locally or on a remote."""

from __future__ import annotations

import re

from .. import api
from ..errors import NotFoundError, SpecError

__all__ = ["MIN_PREFIX", "looks_like_key", "find_remote_artifact", "entry_json"]

MIN_PREFIX = 6  # as api.find_artifact: fewer hex digits name too many artifacts to be useful
_HEX_REF = re.compile(r"(sha256:)?[0-9a-f]{%d,64}" % MIN_PREFIX)


def looks_like_key(ref: str) -> bool:
    """A key or manifest digest prefix (at least 6 hex digits), as opposed to a model ref."""
    return bool(_HEX_REF.fullmatch(ref.strip().lower()))


def find_remote_artifact(remote: api.Remote, ref: str) -> api.IndexEntry:
    """The remote's entry with this key (or unique prefix, or manifest digest prefix)."""
    wanted = ref.strip().lower().removeprefix("sha256:")
    if not looks_like_key(wanted):
        raise SpecError(f"{ref!r} does not name an artifact; give at least {MIN_PREFIX} hex digits of its key.")
    found = [e for e in api.remote_entries(remote)
             if e.key.startswith(wanted) or e.manifest.split(":", 1)[1].startswith(wanted)]
    if not found:
        raise NotFoundError(f"no artifact with key or manifest digest starting {wanted!r} on {remote.describe()}; "
                            "see `kiln ls --remote`.")
    if len({e.key for e in found}) > 1:
        raise SpecError(f"{wanted!r} matches {len(found)} artifacts on {remote.describe()}; give more digits of the key.")
    return found[0]


def entry_json(entry: api.IndexEntry, last_used: str | None) -> dict[str, object]:
    """An index entry as output shows it: the stored entry plus when it was last used (ISO 8601)."""
    return {**entry.to_json(), "last_used": last_used}
