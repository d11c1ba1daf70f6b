"""Every error Kiln raises on purpose derives from :class:`KilnError`.

The tree (subclasses also derive from a stdlib type where that is natural, so callers
that already catch ``ValueError`` or ``FileNotFoundError`` keep working)::

    KilnError
    ├── SpecError (ValueError)            a build spec, flag, env var or property is bad
    │   └── ConfigSourceError             a serving.properties / OPTION_* value Kiln cannot honour
    ├── ModelError                        a model ref cannot be resolved or read
    │   └── ModelNotFoundError (FileNotFoundError)
    ├── ValidationError (ValueError)      a spec does not fit the model or the target
    ├── ToolchainError                    a target's toolchain is missing or cannot be detected
    ├── StoreError                        the store is unusable (permissions, layout)
    │   ├── CorruptBlobError              a blob does not match its digest or size
    │   ├── UnsafeManifestError           a manifest that must not be trusted (paths, sizes)
    │   ├── NotFoundError (LookupError)   no artifact for a digest/key that must exist
    │   └── RemoteError                   a remote (S3 bucket, shared path) failed or holds bad data
    ├── TrustError                        an artifact the trust policy refuses (unsigned, untrusted key,
    │                                     signature not of this artifact), or a key that cannot sign
    └── BuildError                        a build failed; carries the worker's log tail
        └── IncompleteBuildError          CPU stages stored; the last step needs other hardware (exit 3)

Every message says what was wrong and what to do next. The CLI prints the message (no
traceback) and exits with ``exit_code``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

__all__ = [
    "KilnError",
    "SpecError",
    "ConfigSourceError",
    "ModelError",
    "ModelNotFoundError",
    "ValidationError",
    "ToolchainError",
    "StoreError",
    "CorruptBlobError",
    "UnsafeManifestError",
    "NotFoundError",
    "RemoteError",
    "TrustError",
    "BuildError",
    "IncompleteBuildError",
]


class KilnError(Exception):
    """Root of every error Kiln raises on purpose."""

    exit_code = 2


class SpecError(KilnError, ValueError):
    """A build spec field, CLI flag, environment variable or property has a bad value."""


class ConfigSourceError(SpecError):
    """A value in serving.properties or OPTION_* that Kiln cannot honour."""


class ModelError(KilnError):
    """A model ref cannot be resolved or its files cannot be read."""


class ModelNotFoundError(ModelError, FileNotFoundError):
    """A model ref names nothing on disk or in the local Hugging Face cache."""


class ValidationError(KilnError, ValueError):
    """A spec that does not fit the model or the target."""


class ToolchainError(KilnError):
    """A target's toolchain is missing, or a toolchain pin is malformed."""


class StoreError(KilnError):
    """The store cannot be used."""


class CorruptBlobError(StoreError):
    """A blob's bytes do not match its digest or declared size."""

    def __init__(self, message: str, digest: str = "") -> None:
        super().__init__(message)
        self.digest = digest


class UnsafeManifestError(StoreError, ValueError):
    """A manifest that Kiln refuses to trust (unsafe paths, unbounded sizes, bad digests)."""


class NotFoundError(StoreError, LookupError):
    """A digest, key or artifact that was asked for by name is not in the store."""


class RemoteError(StoreError):
    """A remote store cannot be reached or used, or served data that failed verification."""


class TrustError(KilnError):
    """An artifact the deployment's trust policy refuses, or a signing key that cannot be used.

    Never a miss: a refused artifact is an error (exit 2) naming the artifact, the key
    fingerprint and the rule, so that a poisoned entry is seen, not silently rebuilt over.
    """


class BuildError(KilnError):
    """A build failed; ``log_tail`` holds the end of the worker's log when there is one.

    ``crashed``: the worker was killed by a signal and faulthandler reported it; ``log_tail`` is
    then that report (its Python stack), not the last lines of the log.
    """

    def __init__(self, message: str, log_tail: str = "", log_path: str | None = None, crashed: bool = False) -> None:
        super().__init__(message)
        self.log_tail = log_tail
        self.log_path = log_path
        self.crashed = crashed


class IncompleteBuildError(BuildError):
    """The steps this machine can run are stored; the last one needs another machine (a GPU).

    Besides the message, it carries what a script needs to finish the build elsewhere (the
    CLI prints it as ``kiln build --json``'s document with status ``incomplete``): the stored
    steps (``name``, ``key``, ``files``, ``reused``), the missing toolchain components, and the
    commands that push the stored steps and finish the build on a machine that has them.
    """

    exit_code = 3

    def __init__(self, message: str, *, stored: Sequence[Mapping[str, Any]] = (), missing: Sequence[str] = (),
                 push_command: str | None = None, finish_command: str | None = None) -> None:
        super().__init__(message)
        self.stored = tuple(dict(s) for s in stored)
        self.missing = tuple(missing)
        self.push_command = push_command
        self.finish_command = finish_command

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "incomplete",
            "stages": [dict(s) for s in self.stored],
            "missing_toolchain": list(self.missing),
            "push_command": self.push_command,
            "finish_command": self.finish_command,
            "message": str(self),
        }
