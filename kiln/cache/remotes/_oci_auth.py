"""Registry credentials, found where registries' own users keep them (never printed).

In order, for a registry ``HOST[:PORT]``:

1. ``KILN_OCI_USERNAME`` / ``KILN_OCI_PASSWORD`` (for CI jobs that hold a token in a secret);
2. the docker config file (``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``):
   ``credHelpers[HOST]`` runs ``docker-credential-<helper> get``; else ``auths[HOST]``
   (``auth`` as base64 ``user:password``, or ``username``/``password``, or an
   ``identitytoken``, which is an OAuth2 refresh token); else ``credsStore`` runs its helper —
   as the docker CLI resolves them (docker/cli ``cli/config/configfile/file.go``
   ``GetCredentialsStore``: a per-registry helper wins over the global store);
3. for Amazon ECR hosts (``ACCOUNT.dkr.ecr.REGION.amazonaws.com``): a token from ECR's
   ``GetAuthorizationToken`` through the standard AWS credential chain (boto3);
4. none: anonymous (a registry that wants credentials answers 401, and the message says how
   to give them).

The docker config's ``auths`` keys are matched as the docker CLI writes them: ``HOST``,
``HOST:PORT``, or a URL (``https://HOST/v1/``), compared by host and port only.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ...errors import RemoteError
from ._bounded import DeadlineExceeded, run_bounded

__all__ = ["Credentials", "find_credentials"]

HELPER_TIMEOUT_S = 30.0
ECR_DEADLINE_S = 60.0
MAX_CONFIG_BYTES = 1 << 20
_ECR_HOST = re.compile(r"^\d{12}\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")


@dataclass(frozen=True)
class Credentials:
    username: str
    secret: str  # a password, a token, or (identity_token) an OAuth2 refresh token
    source: str  # where they came from, for messages: never the values
    identity_token: bool = False

    def __repr__(self) -> str:  # never the secret, in a traceback or a log
        return f"Credentials(username={self.username!r}, source={self.source!r})"


def find_credentials(registry: str) -> Credentials | None:
    """The credentials for ``registry`` (``host[:port]``), or None for anonymous access."""
    user, password = os.environ.get("KILN_OCI_USERNAME"), os.environ.get("KILN_OCI_PASSWORD")
    if user and password is not None:
        return Credentials(user, password, "KILN_OCI_USERNAME/KILN_OCI_PASSWORD")
    found = _from_docker_config(registry)
    if found is not None:
        return found
    m = _ECR_HOST.match(registry.split(":")[0])
    if m:
        return _ecr_token(registry, m.group(1))
    return None


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return (Path(base) if base else Path.home() / ".docker") / "config.json"


# Docker Hub's names: `docker login` files its credentials under https://index.docker.io/v1/, skopeo
# under docker.io, and the API is served by registry-1.docker.io (docker/cli registry.IndexServer).
_DOCKER_HUB = {"docker.io", "index.docker.io", "registry-1.docker.io"}


def _same_registry(key: str, registry: str) -> bool:
    host = (urlparse(key).netloc if "://" in key else key.split("/", 1)[0]).lower()
    registry = registry.lower()
    return host == registry or (host in _DOCKER_HUB and registry in _DOCKER_HUB)


def _from_docker_config(registry: str) -> Credentials | None:
    path = docker_config_path()
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RemoteError(f"cannot read the docker config {path}: {e.strerror}") from None
    try:
        config = json.loads(raw) if len(raw) <= MAX_CONFIG_BYTES else None
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise RemoteError(f"the docker config {path} is not a JSON object; fix it (or point DOCKER_CONFIG elsewhere).")
    helpers = config.get("credHelpers") if isinstance(config.get("credHelpers"), dict) else {}
    for key, helper in helpers.items():
        if _same_registry(key, registry) and isinstance(helper, str) and helper:
            return _from_helper(helper, registry)
    auths = config.get("auths") if isinstance(config.get("auths"), dict) else {}
    for key, entry in auths.items():
        if not (_same_registry(key, registry) and isinstance(entry, dict)):
            continue
        if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
            return Credentials(str(entry.get("username") or "<token>"), entry["identitytoken"], f"{path} (identitytoken)",
                               identity_token=True)
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, sep, password = base64.b64decode(entry["auth"], validate=False).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                sep = ""
            if not sep:
                raise RemoteError(f"the docker config {path}: auths[{key!r}].auth is not base64 of USER:PASSWORD; "
                                  "log in again (docker login / skopeo login).")
            return Credentials(user, password, str(path))
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return Credentials(entry["username"], entry["password"], str(path))
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        return _from_helper(store, registry, missing_ok=True)
    return None


def _from_helper(helper: str, registry: str, missing_ok: bool = False) -> Credentials | None:
    """``docker-credential-<helper> get`` with the registry on stdin, as the docker CLI calls it
    (docker/docker-credential-helpers ``client/client.go`` Get: JSON {Username, Secret} on stdout)."""
    program = f"docker-credential-{helper}"
    try:
        done = subprocess.run([program, "get"], input=registry.encode(), capture_output=True, timeout=HELPER_TIMEOUT_S)
    except FileNotFoundError:
        raise RemoteError(f"the docker config names the credential helper {helper!r}, but {program} is not on PATH; "
                          "install it or remove it from the docker config.") from None
    except subprocess.TimeoutExpired:
        raise RemoteError(f"the credential helper {program} did not answer within {HELPER_TIMEOUT_S:g} s.") from None
    out = done.stdout.decode(errors="replace").strip()
    if done.returncode != 0:
        if missing_ok and "credentials not found" in out.lower():
            return None  # the global store simply holds nothing for this registry
        # The helper's own words, but never its stdout when it may hold a secret: only the first line, short.
        why = (done.stderr.decode(errors="replace").strip() or out).splitlines()[:1]
        raise RemoteError(f"the credential helper {program} failed for {registry} (exit {done.returncode}"
                          f"{': ' + why[0][:200] if why else ''}).")
    try:
        answer = json.loads(out)
        user, secret = answer["Username"], answer["Secret"]
        if not (isinstance(user, str) and isinstance(secret, str)):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise RemoteError(f"the credential helper {program} answered something that is not "
                          "{\"Username\": …, \"Secret\": …}.") from None
    # docker-credential-helpers: the username "<token>" marks an identity (refresh) token.
    return Credentials(user, secret, program, identity_token=user == "<token>")


def _ecr_token(registry: str, region: str) -> Credentials:
    try:
        import boto3
    except ImportError:
        raise RemoteError(f"{registry} is Amazon ECR: its token comes from boto3 (pip install 'kiln-engines[s3]'), "
                          "or give credentials in the docker config (aws ecr get-login-password | docker login).") from None
    try:
        client = boto3.session.Session().client("ecr", region_name=region)
        answer = run_bounded(client.get_authorization_token, ECR_DEADLINE_S)
        token = answer["authorizationData"][0]["authorizationToken"]
        user, _, password = base64.b64decode(token).decode().partition(":")
    except DeadlineExceeded:
        raise RemoteError(f"ECR did not give a token for {registry} within {ECR_DEADLINE_S:g} s.") from None
    except Exception as e:  # botocore's many errors: name the kind only (never the token)
        raise RemoteError(f"cannot get an ECR token for {registry} from the AWS credential chain "
                          f"({type(e).__name__}); set AWS credentials or log in with the docker config.") from None
    return Credentials(user, password, "ECR GetAuthorizationToken (AWS credential chain)")
