"""An S3 remote (``s3://bucket/prefix``), for AWS or any S3-compatible server.

Atomicity (the :class:`~kiln.cache.remotes.Remote` contract) comes from S3 itself: an object,
multipart uploads included, becomes visible only when complete. A killed multipart upload
leaves parts that cost storage without being an object; remote gc aborts them after its
grace period (:meth:`S3Remote.cleanup_partial_uploads`).

boto3 is an optional dependency and is imported only when an S3 remote is opened, so
``kiln lookup`` against a local store (or a filesystem remote) never pays for it.
Credentials come from the standard AWS chain (environment, profiles, instance roles) and are
never printed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlparse

from ...errors import RemoteError
from .._progress import Progress
from ._base import ObjectInfo, Remote

__all__ = ["S3Remote"]


class S3Remote(Remote):
    """``s3://bucket/prefix`` with boto3: transfer manager for parallel multipart/ranged I/O.

    Settings, from the URL's query string or the environment (URL wins):
    ``endpoint`` (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``), ``region`` (``AWS_REGION``),
    ``addressing=path|virtual`` (``KILN_S3_ADDRESSING``; default path when an endpoint is set,
    as S3-compatible servers expect), ``profile`` (``AWS_PROFILE``), ``timeout=SECONDS``
    (``KILN_S3_TIMEOUT``; how long a request waits for the server's next bytes). Credentials:
    the standard AWS chain.

    Time is bounded: a request is tried at most ATTEMPTS times, each waiting at most TIMEOUT
    seconds for the server, so an endpoint that accepts connections but never answers (a hung
    or paused server) fails one request in about ATTEMPTS × TIMEOUT seconds plus backoff,
    not hangs a serving container's start-up.
    """

    PART_SIZE = 64 << 20
    CONCURRENCY = 8
    TIMEOUT = 15.0  # seconds without a byte from the server before a request attempt fails
    ATTEMPTS = 3  # per request, the first try included

    def __init__(self, url: str) -> None:
        try:
            import boto3
            from boto3.s3.transfer import TransferConfig
            from botocore.config import Config
        except ImportError:
            raise RemoteError("s3:// remotes need boto3: pip install 'kiln[s3]'.") from None
        parsed = urlparse(url)
        self.url = url
        self.bucket = parsed.netloc
        if not self.bucket:
            raise RemoteError(f"remote {url!r} names no bucket; write s3://BUCKET/PREFIX.")
        self.prefix = parsed.path.strip("/")
        q = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        endpoint = q.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        addressing = q.get("addressing") or os.environ.get("KILN_S3_ADDRESSING") or ("path" if endpoint else "auto")
        session = boto3.session.Session(profile_name=q.get("profile") or os.environ.get("AWS_PROFILE") or None)
        self.endpoint = endpoint
        timeout = q.get("timeout") or os.environ.get("KILN_S3_TIMEOUT") or self.TIMEOUT
        try:
            self.timeout = float(timeout)
            if not self.timeout > 0:
                raise ValueError
        except ValueError:
            raise RemoteError(f"S3 timeout {timeout!r} is not a positive number of seconds (timeout= / KILN_S3_TIMEOUT).") from None
        self.client = session.client(
            "s3",
            endpoint_url=endpoint,
            region_name=q.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            config=Config(
                s3={"addressing_style": addressing},
                # Bounded, with backoff. (The old read_timeout=60 with 4 attempts let one request to
                # a paused server wait 4+ minutes; `kiln ls --remote` was seen past 5.)
                retries={"total_max_attempts": self.ATTEMPTS, "mode": "standard"},
                connect_timeout=min(5.0, self.timeout),
                read_timeout=self.timeout,
                max_pool_connections=self.CONCURRENCY * 2,
            ),
        )
        self.transfer = TransferConfig(
            multipart_threshold=self.PART_SIZE,
            multipart_chunksize=self.PART_SIZE,
            max_concurrency=self.CONCURRENCY,
            use_threads=True,
        )

    def describe(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, action: str, key: str, e: Exception) -> RemoteError:
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        name = f"s3://{self.bucket}/{self._key(key)}"
        inner = e.__cause__ or e.__context__
        known = (ClientError, EndpointConnectionError, ReadTimeoutError, ConnectTimeoutError, ConnectionClosedError)
        if not isinstance(e, known) and isinstance(inner, known):
            e = inner  # the transfer manager wraps the real error (S3UploadFailedError)
        if isinstance(e, (ReadTimeoutError, ConnectTimeoutError)):
            return RemoteError(
                f"the S3 endpoint {self.endpoint or 'of AWS'} did not answer within {self.timeout:g} s "
                f"({self.ATTEMPTS} attempts) to {action} {name}: is the server up and healthy? "
                "(Set a longer wait with ?timeout=SECONDS in the remote URL or KILN_S3_TIMEOUT.)"
            )
        if not isinstance(e, ClientError) and "NoSuchBucket" in str(e):
            return RemoteError(f"bucket {self.bucket} does not exist at {self.describe()}; create it or fix KILN_REMOTE.")
        if isinstance(e, NoCredentialsError):
            return RemoteError(
                f"no AWS credentials to {action} {name}: set AWS_PROFILE or AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY, or run where an instance role applies."
            )
        if isinstance(e, EndpointConnectionError):
            return RemoteError(
                f"cannot reach the S3 endpoint {self.endpoint or 'of AWS'} to {action} {name} (after retries): "
                "is the server up and the endpoint right?"
            )
        if isinstance(e, ClientError):
            code = e.response.get("Error", {}).get("Code", "?")
            if code in ("NoSuchBucket",):
                return RemoteError(f"bucket {self.bucket} does not exist at {self.describe()}; create it or fix KILN_REMOTE.")
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return RemoteError(f"access denied to {action} {name} ({code}); check the credentials' permissions.")
            return RemoteError(f"S3 error {code} while trying to {action} {name}.")
        return RemoteError(f"cannot {action} {name}: {type(e).__name__}: {e}")

    @staticmethod
    def _missing(e: Exception) -> bool:
        from botocore.exceptions import ClientError

        return isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")

    def get(self, key: str, max_size: int) -> bytes | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes=0-{max_size}")
            return obj["Body"].read()
        except Exception as e:
            if self._missing(e):
                return None
            if self._code(e) == "InvalidRange":
                return b""  # `bytes=0-N` of a 0-byte object is unsatisfiable: the object is empty
            raise self._fail("read", key, e) from None

    @staticmethod
    def _code(e: Exception) -> str | None:
        from botocore.exceptions import ClientError

        return e.response.get("Error", {}).get("Code") if isinstance(e, ClientError) else None

    def put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as e:
            raise self._fail("write", key, e) from None

    def stat(self, key: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except Exception as e:
            if self._missing(e):
                return None
            raise self._fail("check", key, e) from None

    def upload(self, path: Path, key: str, progress: Progress | None = None) -> None:
        try:
            self.client.upload_file(str(path), self.bucket, self._key(key), Config=self.transfer, Callback=progress)
        except Exception as e:
            raise self._fail("upload", key, e) from None

    def download(self, key: str, dest: Path, progress: Progress | None = None) -> None:
        try:
            self.client.download_file(self.bucket, self._key(key), str(dest), Config=self.transfer, Callback=progress)
        except Exception as e:
            if self._missing(e):
                raise RemoteError(f"object s3://{self.bucket}/{self._key(key)} is missing from the remote") from None
            raise self._fail("download", key, e) from None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"][strip:], int(obj["Size"]), obj["LastModified"].timestamp())
        except RemoteError:
            raise
        except Exception as e:
            raise self._fail("list", prefix, e) from None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as e:
            raise self._fail("delete", key, e) from None

    def cleanup_partial_uploads(self, older_than_s: float) -> int:
        """Abort multipart uploads under the prefix started before the grace period."""
        import time

        cutoff, n = time.time() - older_than_s, 0
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self._key(""))
            for page in pages:
                for up in page.get("Uploads", []):
                    if up["Initiated"].timestamp() < cutoff:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                        n += 1
        except Exception as e:
            raise self._fail("clean up multipart uploads in", "", e) from None
        return n
