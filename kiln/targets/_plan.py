"""What a target tells the build orchestrator: the steps of a build, as data.

A build is a short chain of :class:`Step` s. Every step but the last computes a
:class:`Stage` — an intermediate output stored as an entry of its own (SmoothQuant
statistics, a converted TensorRT-LLM checkpoint, the compiled engine of a weight-independent
target), found again by its key so that other shapes, other machines and — for an engine
keyed by its architecture — other models of that architecture reuse it. The last step computes the artifact a deployment looks
up, keyed by the build key. The orchestrator (``kiln.compile``) runs each step in a worker
subprocess; the target only says which worker, with which arguments, needing what.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..spec import KEY_SCHEMA, MODEL_DIGESTS, canonical_json

__all__ = ["BUILD_LOG", "ENGINE_STAGE", "Stage", "Step"]

BUILD_LOG = "build.log"  # a worker's whole output, published with every step's output
ENGINE_STAGE = "engine"  # the compiled engine of a weight-independent target (kiln.manifests._entry_shape knows it too)


@dataclass(frozen=True)
class Stage:
    """An intermediate build output with a key of its own.

    Its key is sha256 over {key schema, stage name, target, its inputs, the model's identity,
    the toolchain that computes it}. The identity is ``{"tree_digest"}`` (the stage reads the
    weights) or ``{"architecture_digest"}`` (the compiled engine of a weight-independent
    target: every model of that architecture shares it). Its index entry lives under that
    digest's directory with ``"stage"`` in its spec, so engine lookups never match it, and push,
    pull, ls and gc treat it like any artifact.
    """

    name: str  # "calibration", "checkpoint", "engine"
    target: str
    inputs: Mapping[str, Any]  # canonical-JSON-able (no floats)
    model_identity: Mapping[str, str]  # exactly one of MODEL_DIGESTS
    model_summary: Mapping[str, Any]  # ref, repo_id, commit of the model the build resolved
    toolchain: Mapping[str, str]
    depends_on: tuple[str, ...] = field(default_factory=tuple)  # keys of stages this one consumes

    def __post_init__(self) -> None:
        if len(self.model_identity) != 1 or not set(self.model_identity) <= set(MODEL_DIGESTS):
            raise ValueError(f"internal: stage {self.name} is identified by {sorted(self.model_identity)}, not one "
                             f"of {', '.join(MODEL_DIGESTS)}")

    def key_inputs(self) -> dict[str, Any]:
        return {
            "kiln_key_schema": KEY_SCHEMA,
            "stage": self.name,
            "target": self.target,
            "inputs": dict(self.inputs),
            "model": dict(self.model_identity),
            "toolchain": dict(sorted(self.toolchain.items())),
        }

    @property
    def key(self) -> str:
        return hashlib.sha256(canonical_json(self.key_inputs())).hexdigest()

    @property
    def model_hex(self) -> str:
        return next(iter(self.model_identity.values())).split(":", 1)[1]

    def entry_model(self) -> dict[str, Any]:
        """What the stage's entry and record say of its model: its identity, and where it was built from."""
        summary = {k: v for k, v in self.model_summary.items() if k not in MODEL_DIGESTS}
        return {**summary, **self.model_identity}

    def entry_spec(self) -> dict[str, Any]:
        return {"target": self.target, "stage": self.name, **self.inputs, "model": self.model_summary.get("ref")}


# argv(out_dir, inputs) -> the arguments after ``python`` for the worker. ``inputs`` maps the
# name of each earlier step this one consumes to the directory its output was materialised in.
WorkerArgv = Callable[[Path, Mapping[str, Path]], "list[str]"]


@dataclass(frozen=True)
class Step:
    name: str  # "compile", "calibration", "checkpoint", "engine": progress, timings, record
    what: str  # "trtllm checkpoint": how messages name the worker
    argv: WorkerArgv
    stage: Stage | None = None  # None: this step produces the artifact itself (the last step)
    inputs: tuple[str, ...] = ()  # names of earlier steps whose outputs this one reads
    # True: the target's toolchain must really be installed (a --toolchain pin cannot stand in
    # for the compiler whose version labels the output).
    needs_toolchain: bool = True
    # False: the step compiles nothing (it puts one model's weights beside a stored engine), so a
    # build whose compiling steps were all found reports "compiled": false.
    compiles: bool = True
