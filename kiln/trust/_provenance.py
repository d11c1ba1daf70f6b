"""The build record's provenance as an in-toto Statement v1 with a SLSA Provenance v1 predicate.

Supply-chain tools read SLSA provenance, not Kiln's build record, so a signed artifact also
carries this statement, signed with the same key in the same bundle format (a DSSE envelope in
a sigstore bundle, by model-signing's signer). It is derived from the record and manifest alone
(nothing new is claimed):

* ``subject``: every file of the artifact with its sha256 (the manifest's blob digests);
* ``buildDefinition.buildType``: :data:`BUILD_TYPE`; ``externalParameters``: the spec and the
  model ref as the user gave them; ``internalParameters``: the toolchain and the build key;
  ``resolvedDependencies``: the model's files with their sha256 (or its tree digest alone);
* ``runDetails``: the builder (Kiln and its version), the host-independent invocation id (the
  build key) and the start and end times.

Field names follow https://slsa.dev/spec/v1.0/provenance.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Mapping

from ..manifests._manifest import Manifest

__all__ = ["BUILD_TYPE", "PREDICATE_TYPE", "provenance_statement"]

PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/kiln-engines/kiln/build/v1"


def _finished(started: str, duration_s: float) -> str | None:
    try:
        t = datetime.strptime(started, "%Y-%m-%dT%H:%M:%S.%fZ")
    except (TypeError, ValueError):
        return None
    return (t + timedelta(seconds=float(duration_s))).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def provenance_predicate(record: Mapping[str, Any], manifest: Manifest) -> dict[str, Any]:
    model = record.get("model") or {}
    prov = record.get("provenance") or {}
    deps: list[dict[str, Any]] = []
    for f in model.get("files") or []:
        if isinstance(f, dict) and isinstance(f.get("sha256"), str):
            deps.append({"name": f.get("path"), "digest": {"sha256": f["sha256"].split(":", 1)[-1]}})
    if not deps and isinstance(model.get("tree_digest"), str):
        deps.append({"name": str(model.get("ref") or "model"),
                     "digest": {"sha256": model["tree_digest"].split(":", 1)[-1]}})
    metadata: dict[str, Any] = {"invocationId": record.get("key")}
    if prov.get("started"):
        metadata["startedOn"] = prov["started"]
        finished = _finished(prov["started"], prov.get("duration_s") or 0)
        if finished:
            metadata["finishedOn"] = finished
    return {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {"spec": record.get("spec"), "model": model.get("ref"),
                                   "command": prov.get("command")},
            "internalParameters": {"toolchain": record.get("toolchain"), "key": record.get("key"),
                                   "manifest_config": manifest.config.digest},
            "resolvedDependencies": deps,
        },
        "runDetails": {
            "builder": {"id": "https://github.com/kiln-engines/kiln", "version": {"kiln": prov.get("kiln_version")}},
            "metadata": metadata,
        },
    }


def provenance_statement(record: Mapping[str, Any], manifest: Manifest) -> Any:
    """The statement (in_toto_attestation's Statement, which model-signing's signer signs)."""
    from in_toto_attestation.v1 import resource_descriptor, statement

    subjects = [resource_descriptor.ResourceDescriptor(name=f.path, digest={"sha256": f.digest.split(":", 1)[1]}).pb
                for f in manifest.files]
    return statement.Statement(subjects=subjects, predicate_type=PREDICATE_TYPE,
                               predicate=provenance_predicate(record, manifest))
