"""What a target tells the build orchestrator: the steps of a build, as data.

A build is a short chain of :class:`Step` s. Every step but the last computes a
:class:`Stage` — an intermediate output stored as an entry of its own (SmoothQuant
statistics, a converted TensorRT-LLM checkpoint), found again by its key so that other
shapes and other machines reuse it. The last step computes the artifact a deployment looks
up, keyed by the build key. The orchestrator (``kiln.compile``) runs each step in a worker
subprocess; the target only says which worker, with which arguments, needing what.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..spec import KEY_SCHEMA, canonical_json

__all__ = ["BUILD_LOG", "Stage", "Step"]

BUILD_LOG = "build.log"  # a worker's whole output, published with every step's output


@dataclass(frozen=True)
class Stage:
    """An intermediate build output with a key of its own.

    Its key is sha256 over {key schema, stage name, target, its inputs, the model tree digest,
    the toolchain that computes it}; its index entry lives beside the engines' (under the
    model's directory) with ``"stage"`` in its spec, so engine lookups never match it, and
    push, pull, ls and gc treat it like any artifact.
    """

    name: str  # "calibration", "checkpoint"
    target: str
    inputs: Mapping[str, Any]  # canonical-JSON-able (no floats)
    model_tree: str
    model_summary: Mapping[str, Any]
    toolchain: Mapping[str, str]
    depends_on: tuple[str, ...] = field(default_factory=tuple)  # keys of stages this one consumes

    def key_inputs(self) -> dict[str, Any]:
        return {
            "kiln_key_schema": KEY_SCHEMA,
            "stage": self.name,
            "target": self.target,
            "inputs": dict(self.inputs),
            "model": {"tree_digest": self.model_tree},
            "toolchain": dict(sorted(self.toolchain.items())),
        }

    @property
    def key(self) -> str:
        return hashlib.sha256(canonical_json(self.key_inputs())).hexdigest()

    @property
    def model_hex(self) -> str:
        return self.model_tree.split(":", 1)[1]

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
