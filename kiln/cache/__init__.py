"""The content-addressed store (local) and its remotes (filesystem paths, S3 buckets).

Public to the rest of Kiln: :class:`Store` (which owns every directory under ``KILN_HOME``),
:func:`open_remote` / :class:`Remote`, and the transfers between them (:func:`push`,
:func:`pull`, :func:`remote_entries`, :func:`remote_gc`). The underscore modules are private.

The remotes, the transfers and the maintenance reports are imported when first asked for (as ``kiln.api``
does): a local lookup needs none of them (docs/benchmarks.md, issue 18, "Lookup").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._hashmemo import HashMemo
from ._model_records import ModelRecordFiles, remote_model_record, remote_revision_pointers
from ._progress import Progress
from ._store import Store, default_store_root

if TYPE_CHECKING:
    from ._gc import GcPlan
    from ._sync import (
        PullResult,
        PushResult,
        RemoteGcPlan,
        pull,
        push,
        read_remote_artifact,
        remote_entries,
        remote_entry,
        remote_gc,
        remote_signatures,
    )
    from ._verify import VerifyReport
    from .remotes import Remote, open_remote

_LAZY = {
    "GcPlan": "._gc",
    "VerifyReport": "._verify",
    "Remote": ".remotes",
    "open_remote": ".remotes",
    **{name: "._sync" for name in ("PullResult", "PushResult", "RemoteGcPlan", "pull", "push", "read_remote_artifact",
                                   "remote_entries", "remote_entry", "remote_gc", "remote_signatures")},
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kiln.cache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


__all__ = [
    "GcPlan",
    "HashMemo",
    "ModelRecordFiles",
    "Progress",
    "PullResult",
    "PushResult",
    "Remote",
    "RemoteGcPlan",
    "Store",
    "VerifyReport",
    "default_store_root",
    "open_remote",
    "pull",
    "push",
    "read_remote_artifact",
    "remote_entries",
    "remote_entry",
    "remote_gc",
    "remote_signatures",
    "remote_model_record",
    "remote_revision_pointers",
]
