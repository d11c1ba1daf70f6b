"""Hub ids → a snapshot directory in huggingface_hub's cache, with errors that say what to do.

Each failure is told apart, because the fix differs: not cached while ``HF_HUB_OFFLINE=1``
(download it where the Hub is reachable), not cached and the Hub unreachable (the network or
``HF_ENDPOINT``), no such repository or revision (the spelling), gated or private (log in).
The download command suggested is the one the installed huggingface_hub ships: ``hf``
(recent huggingface_hub releases, such as the 2.x this project installs, no longer ship ``huggingface-cli``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelError, ModelNotFoundError

__all__ = ["hub_endpoint", "hub_error", "hub_snapshot", "hf_cache_dir", "hub_offline", "unreachable_error",
           "SnapshotUnavailable"]

_TRUE = {"1", "true", "yes", "on"}


class SnapshotUnavailable(ModelNotFoundError):
    """A Hub id not in the local HF cache while the Hub was not asked (offline) or not reached.

    The one failure where a model record may stand in for the snapshot (:mod:`kiln.models._recorded`);
    ``tried`` says where Kiln looked, for the message that lists every place tried.
    """

    def __init__(self, message: str, tried: str) -> None:
        super().__init__(message)
        self.tried = tried


def hf_cache_dir() -> str:
    """The hub cache directory, read at call time.

    huggingface_hub reads these once at import, which would pin a long-lived process (or a
    test session) to the first value it saw.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _one_line(e: BaseException | None) -> str:
    """huggingface_hub's messages span lines; Kiln's errors are one line."""
    if e is None:
        return "unknown error"
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def hub_endpoint() -> str:
    """The Hub's URL, read at call time (as :func:`hf_cache_dir`, for the same reason)."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _download_hint(repo_id: str, revision: str | None) -> str:
    return f"`hf download {repo_id}" + (f" --revision {revision}" if revision else "") + "`"


def unreachable_error(repo_id: str, revision: str | None, cause: BaseException | None) -> SnapshotUnavailable:
    """Online, the Hub could not be reached and the cache does not hold the model."""
    name = f"{repo_id}@{revision}" if revision else repo_id
    return SnapshotUnavailable(
        f"model {name} is not in the local Hugging Face cache ({hf_cache_dir()}) and the Hub at {hub_endpoint()} could "
        f"not be reached ({_one_line(cause)}); check the network (or HF_ENDPOINT), run "
        f"{_download_hint(repo_id, revision)} where the Hub is reachable (sharing HF_HOME), or pass a local directory.",
        f"the Hugging Face cache at {hf_cache_dir()}, the Hub at {hub_endpoint()} (unreachable: {_one_line(cause)})",
    )


def hub_error(e: BaseException, repo_id: str, revision: str | None) -> ModelError:
    """The Hub's answer ``e`` (a huggingface_hub error) as one line naming the fix.

    Shared by the snapshot download and the metadata path (:mod:`kiln.models._hub_api`), so
    that a typo reads the same whichever of them met it.
    """
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    name = f"{repo_id}@{revision}" if revision else repo_id
    if isinstance(e, GatedRepoError):  # a subclass of RepositoryNotFoundError: test it first
        return ModelNotFoundError(
            f"model {name} is gated on the Hub: accept its terms on its Hub page, then log in (`hf auth login` "
            "or set HF_TOKEN) and run again."
        )
    if isinstance(e, RevisionNotFoundError):
        return ModelNotFoundError(
            f"revision {revision or 'main'} of model {repo_id} does not exist on the Hub; check the branch, tag "
            f"or commit (or drop @{revision or 'main'} for the default branch)."
        )
    if isinstance(e, RepositoryNotFoundError):
        return ModelNotFoundError(
            f"model {repo_id} was not found on the Hub; check the spelling (org/name), and if it is private, "
            "log in (`hf auth login` or set HF_TOKEN)."
        )
    if isinstance(e, HfHubHTTPError):
        return ModelError(
            f"the Hub refused model {name} ({_one_line(e)}); if it is private or gated, log in (`hf auth login` "
            "or set HF_TOKEN), or pass a local directory."
        )
    return ModelError(f"cannot resolve model {name} on the Hub ({_one_line(e)}); run "
                      f"{_download_hint(repo_id, revision)} to see the Hub's own error, or pass a local directory.")


def hub_snapshot(repo_id: str, revision: str | None) -> Path:
    """The local snapshot of ``repo_id@revision``, downloading it unless HF_HUB_OFFLINE=1."""
    from huggingface_hub import snapshot_download  # lazy: keeps `kiln --help` light
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = hub_offline()
    cache = hf_cache_dir()
    name = f"{repo_id}@{revision}" if revision else repo_id
    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=offline, cache_dir=cache,
                                      endpoint=hub_endpoint()))
    except LocalEntryNotFoundError as e:
        if offline:
            raise SnapshotUnavailable(
                f"model {name} is neither a local directory nor in the local Hugging Face cache ({cache}), and "
                f"HF_HUB_OFFLINE=1 is set, so Kiln did not try the Hub; run {_download_hint(repo_id, revision)} on a "
                "machine with Hub access (sharing HF_HOME), unset HF_HUB_OFFLINE to download it, or pass a local "
                "directory.",
                f"the Hugging Face cache at {cache} (HF_HUB_OFFLINE=1: the Hub was not asked)",
            ) from None
        raise unreachable_error(repo_id, revision, e.__cause__ or e.__context__) from None
    except Exception as e:  # huggingface_hub raises a zoo of types for network/filesystem failures
        raise hub_error(e, repo_id, revision) from None
