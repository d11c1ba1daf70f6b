"""A deployment's trust policy: which keys may sign engines, for which models and remotes.

``KILN_TRUST_POLICY=FILE`` or ``--trust-policy FILE``, YAML::

    require: signed            # or: any (the default when no policy is given)
    keys:
      - name: ci-release
        public_key: ci.pub.pem   # relative to this file; inline PEM; awskms:///alias/NAME
        models: ["acme/*"]       # optional: model refs / Hub repo ids this key may sign for
        remotes: ["s3://ml-engines/*"]   # optional: where artifacts it signs may come from

Under ``require: signed`` an artifact is served only if one of its signatures verifies
(:func:`~kiln.trust._bundle.verify_bundle`: this artifact's files, build key and manifest) with a
listed key whose ``models`` match the artifact's model (its Hub repo id or ref; ``*`` and ``?``
as in shell globs, case-insensitively, as the Hub compares repo ids) and whose ``remotes`` match
where it came from: the remote's URL (without its query) when it is pulled, and, for an
artifact already in the local store, the remotes its signatures were verified from when it was
pulled. An artifact built here and never pulled has no remote, so it satisfies only keys without
``remotes``. Anything else is a :class:`~kiln.errors.TrustError` naming the artifact, the key
fingerprints and the rule.

The policy is read completely when it is loaded — every key file, every KMS public key — so a
policy that does not parse, names a file that does not exist, or lists a field Kiln does not
know (a misspelt ``require`` must never mean "anything goes") is a SpecError before any work.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .._input import read_small_file, show
from ..errors import SpecError, TrustError
from ..manifests._index import IndexEntry
from ..manifests._manifest import Manifest
from ._bundle import Verified, bundle_key_hint, verify_bundle
from ._keys import PublicKey, load_public_key, may_be_key_material

__all__ = ["origin_matches", "TrustPolicy", "TrustedKey", "load_policy", "parse_policy", "keys_policy", "describe_signers", "Signature"]

MAX_POLICY_BYTES = 1024 * 1024
_TOP = {"require", "keys"}
_KEY_FIELDS = {"name", "public_key", "models", "remotes"}


@dataclass(frozen=True)
class Signature:
    """One stored signature of an artifact: the key fingerprint it is filed under, and its bundle."""

    fingerprint: str
    data: bytes


@dataclass(frozen=True)
class TrustedKey:
    name: str
    key: PublicKey
    models: tuple[str, ...] = ()  # empty: any model
    remotes: tuple[str, ...] = ()  # empty: any remote, and the local store

    def _for_models(self, names: Iterable[str]) -> bool:
        return any(fnmatch.fnmatchcase(m.casefold(), p.casefold()) for m in names for p in self.models)

    def refuses(self, models: Iterable[str], origins: Iterable[str | None], requested: Iterable[str] = ()) -> str | None:
        """Why this key may not vouch for an artifact of ``models`` from ``origins`` when a
        deployment asked for ``requested`` (empty: it asked by build key alone), or None."""
        names = [m for m in models if m]
        if self.models and not self._for_models(names):
            shown = ", ".join(names) or "a model with no Hub id or ref"
            return f"the policy trusts key {self.name!r} only for models {list(self.models)}, and this is {shown}"
        # The model the artifact names is the signer's claim; the model the deployment asked for
        # is the deployer's. Both must be the key's: otherwise a key trusted for acme/* could
        # vouch for an engine a deployment of meta/llama finds under the same build key (a build
        # key follows the weights' digest, not the model's name).
        wanted = [m for m in requested if m]
        if self.models and wanted and not self._for_models(wanted):
            return (f"the policy trusts key {self.name!r} only for models {list(self.models)}, and this deployment "
                    f"asked for {', '.join(wanted)}")
        places = list(origins)
        if self.remotes and not any(o and origin_matches(p, o) for o in places for p in self.remotes):
            shown = ", ".join(o for o in places if o) or "the local store (built here, never pulled)"
            return f"the policy trusts key {self.name!r} only for remotes {list(self.remotes)}, and this came from {shown}"
        return None


@dataclass(frozen=True)
class TrustPolicy:
    source: str  # the policy file, as named
    require_signed: bool
    keys: tuple[TrustedKey, ...]

    def describe(self) -> str:
        return f"trust policy {self.source}"

    def check(self, entry: IndexEntry, manifest: Manifest, signatures: Iterable[Signature],
              origins: Iterable[str | None], requested: Iterable[str] = ()) -> Verified | None:
        """The signature that makes ``entry`` acceptable, or TrustError; None when nothing is required.

        ``requested``: the model names the deployment asked for (its Hub id and ref), when it
        asked by model rather than by build key alone."""
        if not self.require_signed:
            return None
        sigs, origins, wanted = list(signatures), list(origins), list(requested)
        what = _describe(entry, origins)
        if not sigs:
            raise TrustError(f"{what} is unsigned, and {self.describe()} says `require: signed`: refused, nothing "
                             "materialised. Sign it with a trusted key (`kiln sign KEY --sign-key …`, then push) "
                             "or deploy a signed build.")
        reasons = []
        for sig in sigs:
            fp = bundle_key_hint(sig.data) or sig.fingerprint
            # One key may be listed several times (acme/* from one remote, lab/* from another):
            # any listing whose rules admit the artifact will do.
            listed = [k for k in self.keys if k.key.fingerprint == fp]
            if not listed:
                reasons.append(f"signed by key {fp}, which the policy does not list")
                continue
            admitting = [k for k in listed if not k.refuses(_model_names(entry), origins, wanted)]
            if not admitting:
                why = [k.refuses(_model_names(entry), origins, wanted) for k in listed]
                reasons.append(f"signed by {listed[0].name!r} ({fp}), but " + "; and ".join(w for w in why if w))
                continue
            try:
                verified = verify_bundle(sig.data, admitting[0].key, manifest, entry.key, entry.manifest)
            except TrustError as e:
                reasons.append(str(e))
                continue
            return Verified(verified.fingerprint, admitting[0].name, verified.data)
        raise TrustError(f"{what} is refused by {self.describe()} (require: signed): " + "; ".join(reasons)
                         + ". Nothing was materialised.")


def _split_origin(value: str) -> tuple[str, str, list[str], str]:
    """(scheme, bucket or host, path segments, endpoint) of a remote's origin or of a pattern;
    a bare path is a file remote (``file://`` + its normalised absolute path)."""
    if not re.match(r"[a-z][a-z0-9+.-]*://", value):
        value = "file://" + os.path.normpath(os.path.abspath(os.path.expanduser(value)))
    scheme, _, rest = value.partition("://")
    # `?endpoint=` names the server; any other `?` is a glob character (`s3://ml-engines/pro?`).
    rest, _, endpoint = rest.partition("?endpoint=")
    if scheme == "file":
        return scheme, "", [p for p in os.path.normpath(rest or "/").split("/") if p], ""
    netloc, _, path = rest.partition("/")
    return scheme.lower(), netloc, [p for p in path.split("/") if p], endpoint.rstrip("/").lower()


def origin_matches(pattern: str, origin: str) -> bool:
    """Whether a policy's ``remotes`` pattern admits a remote's origin (:meth:`Remote.origin`).

    Segment by segment, never as one string: ``*`` and ``?`` match within a segment (a bucket,
    a path component), and a last segment of ``*`` admits everything below the prefix before
    it. The scheme and the endpoint must be equal: ``s3://ml-engines/*`` (no endpoint: AWS's
    own) does not admit a bucket of that name on another server, nor ``s3://ml-engines-evil``,
    nor ``/srv/engines/../elsewhere``."""
    p_scheme, p_host, p_path, p_endpoint = _split_origin(pattern.strip())
    o_scheme, o_host, o_path, o_endpoint = _split_origin(origin)
    if p_scheme != o_scheme or p_endpoint != o_endpoint or not fnmatch.fnmatchcase(o_host, p_host or ""):
        return False
    if p_path and p_path[-1] in ("*", "**"):
        head = p_path[:-1]
        return len(o_path) > len(head) and all(fnmatch.fnmatchcase(o, p) for o, p in zip(o_path, head))
    return len(o_path) == len(p_path) and all(fnmatch.fnmatchcase(o, p) for o, p in zip(o_path, p_path))


def _model_names(entry: IndexEntry) -> list[str]:
    """What a key's ``models`` patterns are matched against: the Hub repo id and the ref (with
    and without its @revision). The entry's model is the one its build record states (checked
    when the artifact verified), and the signature covers the record."""
    out: list[str] = []
    for field in ("repo_id", "ref"):
        value = entry.model.get(field)
        if isinstance(value, str) and value:
            for name in (value, value.split("@", 1)[0]):
                if name not in out:
                    out.append(name)
    return out


def _describe(entry: IndexEntry, origins: list[str | None]) -> str:
    model = entry.model.get("ref") or entry.model.get("repo_id") or "?"
    where = ", ".join(o for o in origins if o) or "the local store"
    return f"artifact {entry.key[:12]} ({show(model)}, from {where})"


def _shown(value: Any) -> str:
    """A policy value quoted in a message, unless it may be key material (a pasted private key)."""
    text = value if isinstance(value, str) else repr(value)
    return f"(a value of {len(text)} characters, not shown)" if may_be_key_material(text) else show(value)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if value == []:
        # Omitting the field means "any"; an empty list would read as "none" to some and "any" to
        # others, so it is neither.
        raise SpecError(f"{where} is an empty list: omit the field to allow any, or list the patterns allowed.")
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise SpecError(f"{where} must be a list of patterns (strings), not {_shown(value)}.")
    return tuple(v.strip() for v in value)


def parse_policy(data: bytes, source: str, base: Path | None) -> TrustPolicy:
    import yaml

    where = f"trust policy {source}"
    if len(data) > MAX_POLICY_BYTES:
        raise SpecError(f"{where} is larger than {MAX_POLICY_BYTES} bytes: not a trust policy.")
    try:
        raw = yaml.safe_load(data)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{where} is not valid YAML{at}: {getattr(e, 'problem', None) or e}.") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{where} must be a mapping with `require:` and `keys:`, not {_shown(raw)}.")
    unknown = sorted(str(k) for k in raw if k not in _TOP)
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {', '.join(unknown)}; a policy has `require` and `keys`.")
    if "require" not in raw:
        # A policy file that forgets `require` must not quietly mean "anything goes".
        raise SpecError(f"{where} has no `require:`; write `require: signed` (serve only artifacts signed by a listed "
                        "key) or `require: any`.")
    require = raw["require"]
    if not isinstance(require, str) or require.strip().lower() not in ("signed", "any"):
        raise SpecError(f"{where}: require: {_shown(require)} is not `signed` or `any`.")
    keys_raw = raw.get("keys")
    keys_raw = [] if keys_raw is None else keys_raw
    if not isinstance(keys_raw, list):
        raise SpecError(f"{where}: keys must be a list of {{name, public_key, models, remotes}}, not {_shown(keys_raw)}.")
    keys: list[TrustedKey] = []
    for i, item in enumerate(keys_raw):
        at = f"{where}, keys[{i}]"
        if not isinstance(item, dict):
            raise SpecError(f"{at} must be a mapping with public_key (and name, models, remotes), not {_shown(item)}.")
        bad = sorted(str(k) for k in item if k not in _KEY_FIELDS)
        if bad:
            raise SpecError(f"{at}: unknown field(s) {', '.join(bad)}; a key has {', '.join(sorted(_KEY_FIELDS))}.")
        pub = item.get("public_key")
        if not isinstance(pub, str) or not pub.strip():
            raise SpecError(f"{at} has no public_key (a PEM file relative to the policy, inline PEM, or "
                            "awskms:///alias/NAME).")
        key = load_public_key(pub, base, where=at)
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            raise SpecError(f"{at}: name must be a string, not {_shown(name)}.")
        keys.append(TrustedKey(name or key.name, key, _strings(item.get("models"), f"{at}: models"),
                               _strings(item.get("remotes"), f"{at}: remotes")))
    require_signed = require.strip().lower() == "signed"
    if require_signed and not keys:
        raise SpecError(f"{where} says `require: signed` but lists no keys: nothing could ever be served. "
                        "Add the keys your builds are signed with.")
    return TrustPolicy(source, require_signed, tuple(keys))


def keys_policy(public_keys: Iterable[str], base: TrustPolicy | None = None) -> TrustPolicy:
    """``base`` (or no policy) plus these public keys (``--public-key``), trusted for anything:
    what `kiln verify --signatures` checks stored signatures with."""
    extra = tuple(TrustedKey(k.name, k) for k in (load_public_key(v, where="--public-key") for v in public_keys))
    if base is None:
        return TrustPolicy("--public-key", False, extra)
    return TrustPolicy(base.source, base.require_signed, base.keys + extra)


def load_policy(path: str | Path) -> TrustPolicy:
    """The policy in ``path``; SpecError (before any work) if it cannot be used."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SpecError(f"trust policy {p} does not exist: check --trust-policy / KILN_TRUST_POLICY.")
    data = read_small_file(p, MAX_POLICY_BYTES, "trust policy", SpecError, "check --trust-policy / KILN_TRUST_POLICY")
    return parse_policy(data, str(p), p.parent)


def describe_signers(signatures: Iterable[Signature], entry: IndexEntry, manifest: Manifest | None,
                     policy: TrustPolicy | None) -> list[dict[str, Any]]:
    """Who signed, as `kiln show` / `kiln ls --json` print it: each bundle's key fingerprint, the
    policy's name for that key, and ``verified`` (True/False where the policy holds that key and
    the manifest is given, else None: a fingerprint alone proves nothing)."""
    keys = {k.key.fingerprint: k for k in policy.keys} if policy is not None else {}
    out: list[dict[str, Any]] = []
    for sig in signatures:
        fp = bundle_key_hint(sig.data) or sig.fingerprint
        known = keys.get(fp)
        verified: bool | None = None
        if known is not None and manifest is not None:
            try:
                verify_bundle(sig.data, known.key, manifest, entry.key, entry.manifest)
                verified = True
            except TrustError:
                verified = False
        out.append({"fingerprint": fp, "key": known.name if known else None, "verified": verified})
    return out
