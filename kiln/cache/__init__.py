"""The content-addressed store (local) and its remotes (filesystem paths, S3 buckets).

Public to the rest of Kiln: :class:`Store` (which owns every directory under ``KILN_HOME``),
:func:`open_remote` / :class:`Remote`, and the transfers between them (:func:`push`,
:func:`pull`, :func:`remote_entries`, :func:`remote_gc`). The underscore modules are private.
"""

from ._hashmemo import HashMemo
from ._model_records import ModelRecordFiles, remote_model_record, remote_revision_pointers
from ._progress import Progress
from ._store import GcPlan, Store, VerifyReport, default_store_root
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
from .remotes import Remote, open_remote

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
