"""An S3 remote (``s3://bucket/prefix``), for AWS or any S3-compatible server.

Atomicity (the :class:`~kiln.cache.remotes.Remote` contract) comes from S3 itself: an object,
multipart uploads included, becomes visible only when complete. A killed multipart upload
leaves parts that cost storage without being an object; remote gc aborts them after its
grace period (:meth:`S3Remote.cleanup_partial_uploads`).

Every wait is bounded twice: each socket read by ``timeout`` (botocore's read timeout, per
recv) and each request or transfer by a total deadline (:mod:`._bounded`), because a server
that trickles bytes defeats any per-recv timeout. Downloads are Kiln's own ranged GETs (not
the transfer manager's ``download_file``) so that they stop at the declared size: a GET
longer than the object's HEAD is refused after at most one extra byte, never written to disk.
Uploads are Kiln's own ``put_object`` / multipart calls, so that an abandoned one runs on
daemon threads and never holds the process at exit.

boto3 is an optional dependency and is imported only when an S3 remote is opened, so
``kiln lookup`` against a local store (or a filesystem remote) never pays for it.
Credentials come from the standard AWS chain (environment, profiles, instance roles) and are
never printed.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import parse_qs, urlparse

from ..._content_range import parse_content_range
from ..._redact import redact
from ...errors import RemoteError
from .._fsutil import unlink_quiet
from .._progress import Progress
from ._base import ObjectInfo, Remote
from ._bounded import Cancelled, DeadlineExceeded, FileSlice, LocalWriteError, Sink, run_bounded, run_parallel

T = TypeVar("T")

__all__ = ["S3Remote"]


class S3Remote(Remote):
    """``s3://bucket/prefix`` with boto3: transfer manager for parallel multipart/ranged I/O.

    Settings, from the URL's query string or the environment (URL wins):
    ``endpoint`` (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``), ``region`` (``AWS_REGION``),
    ``addressing=path|virtual`` (``KILN_S3_ADDRESSING``; default path when an endpoint is set,
    as S3-compatible servers expect), ``profile`` (``AWS_PROFILE``), ``timeout=SECONDS``
    (``KILN_S3_TIMEOUT``; how long a request waits for the server's next bytes),
    ``deadline=SECONDS`` (``KILN_S3_DEADLINE``; the most one request may take in all, retries
    included; a transfer of N bytes gets that plus N / MIN_RATE seconds). Credentials: the
    standard AWS chain.

    Time is bounded: a request is tried at most ATTEMPTS times, each waiting at most TIMEOUT
    seconds for the server's next bytes, so an endpoint that accepts connections but never
    answers (a hung or paused server) fails one request in about ATTEMPTS × TIMEOUT seconds
    plus backoff, not hangs a serving container's start-up. And a request (a small GET, HEAD,
    PUT, one LIST page) never takes longer than DEADLINE in all, nor a download or upload
    longer than DEADLINE + size / MIN_RATE, however the server trickles its headers or body.
    """

    PART_SIZE = 64 << 20
    CONCURRENCY = 8
    TIMEOUT = 15.0  # seconds without a byte from the server before a request attempt fails
    ATTEMPTS = 3  # per request, the first try included
    DEADLINE = 60.0  # seconds one request may take in all, its retries included
    MIN_RATE = 1 << 20  # bytes/s: a transfer's deadline is DEADLINE + size / MIN_RATE
    CHUNK = 1 << 20  # bytes read from a response body at a time

    def __init__(self, url: str) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise self.error("s3:// remotes need boto3: pip install 'kiln-engines[s3]'.") from None
        parsed = urlparse(url)
        self.url = url
        self.bucket = parsed.netloc
        if not self.bucket:
            raise self.error(f"remote {url!r} names no bucket; write s3://BUCKET/PREFIX.")
        self.prefix = parsed.path.strip("/")
        q = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        endpoint = q.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        addressing = q.get("addressing") or os.environ.get("KILN_S3_ADDRESSING") or ("path" if endpoint else "auto")
        session = boto3.session.Session(profile_name=q.get("profile") or os.environ.get("AWS_PROFILE") or None)
        self.endpoint = endpoint
        self.timeout = self._seconds("timeout", q.get("timeout") or os.environ.get("KILN_S3_TIMEOUT") or self.TIMEOUT)
        self.deadline = self._seconds("deadline", q.get("deadline") or os.environ.get("KILN_S3_DEADLINE") or self.DEADLINE)
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
                # Parts of several files at once (pull and push move 4 files in parallel).
                max_pool_connections=self.CONCURRENCY * 4,
            ),
        )

    @property
    def transfer(self) -> Any:
        """boto3's TransferConfig with Kiln's part size and concurrency, for comparisons with boto3's
        own transfers (scripts/bench_remote.py); Kiln's transfers do not use the transfer manager."""
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=self.PART_SIZE, multipart_chunksize=self.PART_SIZE,
                              max_concurrency=self.CONCURRENCY, use_threads=True)

    def _seconds(self, name: str, value: object) -> float:
        env = {"timeout": "KILN_S3_TIMEOUT", "deadline": "KILN_S3_DEADLINE"}[name]
        try:
            seconds = float(value)  # type: ignore[arg-type]
            if not 0 < seconds < float("inf"):
                raise ValueError
        except (TypeError, ValueError):
            raise self.error(f"S3 {name} {value!r} is not a positive number of seconds ({name}= / {env}).") from None
        return seconds

    def describe(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return redact(f"s3://{self.bucket}/{self.prefix}{where}")

    def origin(self) -> str:
        base = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        if not self.endpoint:
            return base
        parsed = urlparse(self.endpoint)  # scheme and host:port only: never userinfo or a path
        return f"{base}?endpoint={parsed.scheme}://{(parsed.hostname or '').lower()}" + \
            (f":{parsed.port}" if parsed.port else "")

    def _name(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _transfer_budget(self, size: int) -> float:
        return self.deadline + size / self.MIN_RATE

    def _late(self, action: str, key: str, budget: float) -> RemoteError:
        return self.error(
            f"the S3 endpoint {self.endpoint or 'of AWS'} took longer than its deadline of {round(budget, 1):g} s "
            f"to {action} {self._name(key)} (a stalled or trickling server?). Allow longer with ?deadline=SECONDS "
            f"in the remote URL or KILN_S3_DEADLINE (now {self.deadline:g} s per request; transfers get "
            f"{self.MIN_RATE >> 20} s more per MiB)."
        )

    def _call(self, action: str, key: str, fn: Callable[[], T], budget: float | None = None) -> T:
        """``fn()`` (botocore calls), within the request deadline (or ``budget``)."""
        budget = self.deadline if budget is None else budget
        try:
            return run_bounded(fn, budget)
        except DeadlineExceeded:
            raise self._late(action, key, budget) from None

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
            e = inner  # a wrapper of the real error (botocore's, or one raised on the way out)
        if isinstance(e, (ReadTimeoutError, ConnectTimeoutError)):
            return self.error(
                f"the S3 endpoint {self.endpoint or 'of AWS'} did not answer within {self.timeout:g} s "
                f"({self.ATTEMPTS} attempts) to {action} {name}: is the server up and healthy? "
                "(Set a longer wait with ?timeout=SECONDS in the remote URL or KILN_S3_TIMEOUT.)"
            )
        if not isinstance(e, ClientError) and "NoSuchBucket" in str(e):
            return self.error(f"bucket {self.bucket} does not exist at {self.describe()}; create it or fix KILN_REMOTE.")
        if isinstance(e, NoCredentialsError):
            return self.error(
                f"no AWS credentials to {action} {name}: set AWS_PROFILE or AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY, or run where an instance role applies."
            )
        if isinstance(e, EndpointConnectionError):
            return self.error(
                f"cannot reach the S3 endpoint {self.endpoint or 'of AWS'} to {action} {name} (after retries): "
                "is the server up and the endpoint right?"
            )
        if isinstance(e, ClientError):
            code = e.response.get("Error", {}).get("Code", "?")
            if code in ("NoSuchBucket",):
                return self.error(f"bucket {self.bucket} does not exist at {self.describe()}; create it or fix KILN_REMOTE.")
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return self.error(f"access denied to {action} {name} ({code}); check the credentials' permissions.")
            return self.error(f"S3 error {code} while trying to {action} {name}.")
        return self.error(f"cannot {action} {name}: {type(e).__name__}: {e}")

    @staticmethod
    def _missing(e: Exception) -> bool:
        from botocore.exceptions import ClientError

        return isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")

    def get(self, key: str, max_size: int) -> bytes | None:
        def read() -> bytes:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes=0-{max_size}")
            try:
                return bytes(obj["Body"].read(max_size + 1))  # never more, even if the server ignores Range
            finally:
                obj["Body"].close()

        try:
            return self._call("read", key, read)
        except RemoteError:
            raise
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
            self._call("write", key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data),
                       self._transfer_budget(len(data)))
        except RemoteError:
            raise
        except Exception as e:
            raise self._fail("write", key, e) from None

    def stat(self, key: str) -> int | None:
        try:
            head = self._call("check", key, lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
            return int(head["ContentLength"])
        except RemoteError:
            raise
        except Exception as e:
            if self._missing(e):
                return None
            raise self._fail("check", key, e) from None

    # ------------------------------------------------------------------ transfers

    def upload(self, path: Path, key: str, progress: Progress | None = None) -> None:
        size = path.stat().st_size
        budget = self._transfer_budget(size)
        try:
            if size <= self.PART_SIZE:
                def put() -> None:
                    with open(path, "rb") as body:
                        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body)

                self._call("upload", key, put, budget)
                if progress:
                    progress(size)
            else:
                self._multipart_upload(path, key, size, budget, progress)
        except RemoteError:
            raise
        except Exception as e:
            raise self._fail("upload", key, e) from None

    def _multipart_upload(self, path: Path, key: str, size: int, budget: float, progress: Progress | None) -> None:
        """Parts in parallel, then complete; on any failure the upload is aborted (best effort)."""
        start = time.monotonic()
        full = self._key(key)
        upload_id = self._call("upload", key, lambda: self.client.create_multipart_upload(Bucket=self.bucket, Key=full))["UploadId"]
        etags: dict[int, str] = {}

        def part(number: int, offset: int, length: int) -> Callable[[threading.Event], None]:
            def task(cancel: threading.Event) -> None:
                if cancel.is_set():
                    raise Cancelled
                with FileSlice(path, offset, length, cancel) as body:  # stops sending once cancelled
                    r = self.client.upload_part(Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=body)
                etags[number] = r["ETag"]
                if progress:
                    progress(length)
            return task

        try:
            tasks = [part(n, off, length) for n, (off, length) in enumerate(_ranges(size, self.PART_SIZE), 1)]
            try:
                run_parallel(tasks, budget - (time.monotonic() - start), self.CONCURRENCY)
            except DeadlineExceeded:
                raise self._late("upload", key, budget) from None
            parts = [{"ETag": etags[n], "PartNumber": n} for n in sorted(etags)]
            self._call("upload", key, lambda: self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}))
        except BaseException:
            try:  # what is left is also aborted by remote gc's cleanup_partial_uploads
                run_bounded(lambda: self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id),
                            min(self.deadline, 10.0))
            except Exception:
                pass
            raise

    def download(self, key: str, dest: Path, size: int, progress: Progress | None = None) -> tuple[str, int] | None:
        """Ranged GETs (parallel parts for large objects) into ``dest``, at most ``size`` bytes written.

        The last part asks for one byte past the declared end, so an object longer than
        declared shows itself (and a 206's Content-Range total says by how much) without a
        byte of it being written; each part reads at most its length plus one byte, whatever
        the server sends. Bounded by :meth:`_transfer_budget` in all.
        """
        budget = self._transfer_budget(size)
        sink = Sink(dest)  # a file it cannot create is the store's problem: LocalWriteError
        try:
            try:
                ranges = _ranges(size, self.PART_SIZE)
                tasks = [self._get_part(key, size, off, length, i == len(ranges) - 1, sink, progress)
                         for i, (off, length) in enumerate(ranges)]
                run_parallel(tasks, budget, self.CONCURRENCY)
                sink.fsync()
                return sink.sha256()
            finally:
                sink.close()  # from here on no abandoned part can write a byte
        except BaseException as e:
            unlink_quiet(dest)
            if isinstance(e, DeadlineExceeded):
                raise self._late("download", key, budget) from None
            if isinstance(e, (RemoteError, LocalWriteError)) or not isinstance(e, Exception):
                raise
            if self._missing(e):
                raise self.error(f"object {self._name(key)} is missing from the remote {self.describe()}") from None
            raise self._fail("download", key, e) from None

    def _get_part(self, key: str, size: int, offset: int, length: int, last: bool, sink: Sink,
                  progress: Progress | None) -> Callable[[threading.Event], None]:
        def task(cancel: threading.Event) -> None:
            end = offset + length - (0 if last else 1)  # the last part: one byte past the declared end
            try:
                obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes={offset}-{end}")
            except Exception as e:
                if size == 0 and self._code(e) == "InvalidRange":
                    return  # `bytes=0-0` of an empty object is unsatisfiable: empty, as declared
                raise
            body = obj["Body"]
            try:
                total = _stated_total(obj)
                if total is not None and total != size:
                    raise self.size_error(key, size, total)
                crange = str(obj.get("ContentRange") or "")
                if not crange and not (offset == 0 and last):
                    # Range ignored: the whole object comes, which is one part's worth only when
                    # there is one part. Said before its bytes are read as "more than declared".
                    raise self.error(
                        f"the S3 endpoint {self.endpoint or 'of AWS'} answered a ranged read of {self._name(key)} "
                        "without a Content-Range: Kiln needs a server that supports Range requests."
                    )
                stated = parse_content_range(crange) if crange else None
                if crange and (stated is None or stated[0] != offset):
                    # Bytes of another offset would be written here and found only by the hash, as "corrupt".
                    raise self.error(
                        f"the S3 endpoint {self.endpoint or 'of AWS'} answered a read of {self._name(key)} from byte "
                        f"{offset} with Content-Range {crange[:80]!r}: Kiln needs a server that honours Range requests."
                    )
                got = 0
                while got <= length:
                    if cancel.is_set():
                        raise Cancelled
                    chunk = body.read(min(self.CHUNK, length + 1 - got))
                    if not chunk:
                        break
                    keep = chunk[: max(0, length - got)]
                    if keep:
                        sink.write_at(offset + got, keep)
                        if progress:
                            progress(len(keep))
                    got += len(chunk)
                if got != length:
                    raise self.size_error(key, size, f"more than {size}" if got > length else f"fewer than {size}")
            finally:
                body.close()
        return task

    # ------------------------------------------------------------------ listing, deleting

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects under ``prefix``, one bounded request per page of up to 1000."""
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full, **({"ContinuationToken": token} if token else {})}
            try:
                page = self._call("list", prefix, lambda: self.client.list_objects_v2(**args))
            except RemoteError:
                raise
            except Exception as e:
                raise self._fail("list", prefix, e) from None
            for obj in page.get("Contents", []):
                yield ObjectInfo(obj["Key"][strip:], int(obj["Size"]), obj["LastModified"].timestamp())
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def delete(self, key: str) -> None:
        try:
            self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)))
        except RemoteError:
            raise
        except Exception as e:
            raise self._fail("delete", key, e) from None

    def cleanup_partial_uploads(self, older_than_s: float) -> int:
        """Abort multipart uploads under the prefix started before the grace period."""
        cutoff, n = time.time() - older_than_s, 0
        marker: dict[str, str] = {}
        try:
            while True:
                args = {"Bucket": self.bucket, "Prefix": self._key(""), **marker}
                page = self._call("list multipart uploads in", "", lambda: self.client.list_multipart_uploads(**args))
                for up in page.get("Uploads", []):
                    if up["Initiated"].timestamp() < cutoff:
                        self._call("abort", up["Key"][len(self._key("")):], lambda: self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]))
                        n += 1
                if not page.get("IsTruncated"):
                    return n
                marker = {"KeyMarker": page.get("NextKeyMarker", ""), "UploadIdMarker": page.get("NextUploadIdMarker", "")}
        except RemoteError:
            raise
        except Exception as e:
            raise self._fail("clean up multipart uploads in", "", e) from None


def _stated_total(obj: dict[str, Any]) -> int | None:
    """The object's full size as a GET response states it (Content-Range, or the length of a 200
    that sent the whole object), if it does."""
    if obj.get("ContentRange"):
        stated = parse_content_range(obj["ContentRange"])
        return stated[2] if stated is not None else None
    length = obj.get("ContentLength")
    return int(length) if obj.get("ResponseMetadata", {}).get("HTTPStatusCode") == 200 and length is not None else None


def _ranges(size: int, part: int) -> list[tuple[int, int]]:
    """(offset, length) of each part of an object of ``size`` bytes; one empty part for an empty object."""
    return [(off, min(part, size - off)) for off in range(0, size, part)] or [(0, 0)]
