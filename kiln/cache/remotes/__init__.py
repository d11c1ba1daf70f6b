"""Remote stores: a shared filesystem path or an S3 bucket prefix, behind one small interface.

    _base.py   :class:`Remote` (the ABC every backend implements) and :class:`ObjectInfo`
    file.py    :class:`FileRemote`: a directory, typically an NFS or other shared mount
    s3.py      :class:`S3Remote`: ``s3://bucket/prefix`` with boto3 (imported lazily)
    oci.py     :class:`OCIRemote`: ``oci://host/repository``, an OCI distribution registry
               (_oci_repository.py: one repository's blobs, manifests and tags; _oci_client.py:
               HTTP and the auth flow; _oci_auth.py: docker config, helpers, ECR)

:func:`open_remote` turns a URL into the right backend. Both backends write each object
atomically, so the order of writes in :mod:`kiln.cache._sync` is all that keeps readers from
partial artifacts. Remote data is untrusted: callers verify every blob against its digest
after download. Credentials come from the standard AWS chain (environment, profiles,
instance roles) and are never printed: every message of a remote, and :meth:`Remote.describe`,
goes through :func:`kiln._redact.redact`. Remote reads are bounded: in bytes (a download stops
at the declared size), in kinds of file (a filesystem remote opens only regular files) and in
time (every S3 request and transfer has a total deadline).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from ..._redact import redact
from ...errors import RemoteError
from ._base import ObjectInfo, Remote
from .file import FileRemote
from .s3 import S3Remote

__all__ = ["FileRemote", "OCIRemote", "ObjectInfo", "Remote", "S3Remote", "open_remote"]


def open_remote(url: str | None) -> Remote | None:
    """``s3://bucket/prefix[?endpoint=…]``, ``oci://host/repo[?plain-http=true]``, ``file:///path`` or a plain path; None for none."""
    if url is None or not str(url).strip():
        return None
    url = str(url).strip()
    if url.startswith("s3://"):
        return S3Remote(url)
    if url.startswith("oci://"):
        from .oci import OCIRemote  # http.client and ssl: ~30 ms that a lookup without a registry must not pay

        return OCIRemote(url)
    if url.startswith("file://"):
        parsed = urlparse(url)
        # file://tmp/x names host "tmp" and path /x; file:// alone names nothing. Both are
        # mistakes for file:///tmp/x: refuse them rather than use (and create) another path.
        if parsed.netloc not in ("", "localhost") or not parsed.path:
            raise RemoteError(redact(
                f"remote {url!r} is not a local file URL (it names host {parsed.netloc.rpartition('@')[2]!r} and path "
                f"{parsed.path or '(none)'!r}); write file:///ABSOLUTE/PATH (three slashes) or a plain path."
            ))
        path = Path(parsed.path)
    elif "://" in url:
        raise RemoteError(redact(f"remote {url!r}: Kiln supports s3://BUCKET/PREFIX, oci://HOST[:PORT]/REPOSITORY, file:///PATH or a plain path."))
    else:
        path = Path(url).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RemoteError(redact(f"remote directory {path} is not usable: {e.strerror}")) from None
    return FileRemote(path.absolute(), url)


def __getattr__(name: str) -> object:
    if name == "OCIRemote":  # imported on first use, as in open_remote
        from .oci import OCIRemote

        return OCIRemote
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
