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

__all__ = ["hub_snapshot", "hf_cache_dir", "hub_offline"]

_TRUE = {"1", "true", "yes", "on"}


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


def hub_snapshot(repo_id: str, revision: str | None) -> Path:
    """The local snapshot of ``repo_id@revision``, downloading it unless HF_HUB_OFFLINE=1."""
    from huggingface_hub import snapshot_download  # lazy: keeps `kiln --help` light
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline()
    cache = hf_cache_dir()
    name = f"{repo_id}@{revision}" if revision else repo_id
    get = f"`hf download {repo_id}" + (f" --revision {revision}" if revision else "") + "`"
    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=offline, cache_dir=cache))
    except LocalEntryNotFoundError as e:
        if offline:
            raise ModelNotFoundError(
                f"model {name} is neither a local directory nor in the local Hugging Face cache ({cache}), and "
                f"HF_HUB_OFFLINE=1 is set, so Kiln did not try the Hub; run {get} on a machine with Hub access "
                "(sharing HF_HOME), unset HF_HUB_OFFLINE to download it, or pass a local directory."
            ) from None
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        raise ModelNotFoundError(
            f"model {name} is not in the local Hugging Face cache ({cache}) and the Hub at {endpoint} could not be "
            f"reached ({_one_line(e.__cause__ or e.__context__)}); check the network (or HF_ENDPOINT), run {get} "
            "where the Hub is reachable (sharing HF_HOME), or pass a local directory."
        ) from None
    except GatedRepoError:
        raise ModelNotFoundError(
            f"model {name} is gated on the Hub: accept its terms on its Hub page, then log in (`hf auth login` "
            "or set HF_TOKEN) and run again."
        ) from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(
            f"revision {revision or 'main'} of model {repo_id} does not exist on the Hub; check the branch, tag "
            f"or commit (or drop @{revision or 'main'} for the default branch)."
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"model {repo_id} was not found on the Hub; check the spelling (org/name), and if it is private, "
            "log in (`hf auth login` or set HF_TOKEN)."
        ) from None
    except HfHubHTTPError as e:
        raise ModelError(
            f"the Hub refused model {name} ({_one_line(e)}); if it is private or gated, log in (`hf auth login` "
            "or set HF_TOKEN), or pass a local directory."
        ) from None
    except Exception as e:  # huggingface_hub raises a zoo of types for network/filesystem failures
        raise ModelError(f"cannot resolve model {name} on the Hub ({_one_line(e)}); run {get} to see the Hub's "
                         "own error, or pass a local directory.") from None
