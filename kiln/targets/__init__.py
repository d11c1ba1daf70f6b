"""Targets: one subpackage per backend, each the one home of everything about it.

A :class:`~kiln.targets.base.Target` answers every question the rest of Kiln asks about a
backend — its toolchain and hardware class, which specs and models it takes, the stages a
build runs (and how each worker is started), the resources a stage needs, the LMI facts it
contributes to parsing, the deployment layouts it writes and whether its engines load
in-process — so that nothing outside ``kiln/targets/`` branches on a target's name.

This registry is the only list of targets. Each subpackage's ``__init__`` is light (no
torch, no compiler); the heavy halves (``torch_aoti.engine``, ``trtllm.checkpoint``, the
workers) are imported only inside worker processes and engine loaders.
"""

from __future__ import annotations

import importlib
from typing import Iterator, Mapping

from .._input import show
from ..errors import SpecError
from ._layouts import RAW, Layout
from ._model_files import TOKENIZER_FILES
from ._plan import BUILD_LOG, ENGINE_STAGE, Stage, Step
from .base import BuildInputs, LmiFacts, ResolvedSpec, Target, TargetOption

# Each target's name and the subpackage that defines it. A subpackage is imported the first time
# its target is asked for: a lookup for one target pays for that one (about 3 ms each; issue 18,
# "Lookup" in docs/benchmarks.md). Asking for every target (``TARGETS.values()``, an alias) imports all.
_HOMES = {"torch-aoti": ".torch_aoti", "trtllm": ".trtllm", "neuron": ".neuron"}
_OBJECTS = {"torch-aoti": "TORCH_AOTI", "trtllm": "TRTLLM", "neuron": "NEURON"}


class _Targets(Mapping[str, Target]):
    """The registry: a read-only mapping from name to Target, in a fixed order, loaded per entry."""

    def __init__(self) -> None:
        self._loaded: dict[str, Target] = {}

    def __getitem__(self, name: str) -> Target:
        target = self._loaded.get(name)
        if target is None:
            if name not in _HOMES:
                raise KeyError(name)
            target = getattr(importlib.import_module(_HOMES[name], __name__), _OBJECTS[name])
            assert target.name == name, (name, target.name)
            self._loaded[name] = target
        return target

    def __iter__(self) -> Iterator[str]:
        return iter(_HOMES)

    def __len__(self) -> int:
        return len(_HOMES)

    def __contains__(self, name: object) -> bool:
        return name in _HOMES

    def __repr__(self) -> str:
        return f"TARGETS({', '.join(_HOMES)})"


TARGETS: Mapping[str, Target] = _Targets()

__all__ = [
    "BUILD_LOG",
    "TARGETS",
    "BuildInputs",
    "Layout",
    "LmiFacts",
    "ResolvedSpec",
    "Stage",
    "ENGINE_STAGE",
    "Step",
    "Target",
    "TOKENIZER_FILES",
    "TargetOption",
    "get_target",
    "layout_names",
    "normalize_target",
]


def normalize_target(value: object, source: str = "target") -> str:
    """The canonical name of a target written any way users write it (``tensorrt-llm`` → ``trtllm``)."""
    text = str(value).strip().lower()
    if text in TARGETS:
        return text  # a canonical name: no target needs importing to know it
    for t in TARGETS.values():
        if text in t.aliases:
            return t.name
    raise SpecError(f"{source}={show(value)} is not a Kiln target; write one of {', '.join(TARGETS)}.")


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise SpecError(f"target {name!r} is not known; use one of {', '.join(TARGETS)}.") from None


def layout_names() -> tuple[str, ...]:
    """Every deployment layout some target writes, ``raw`` first (the CLI's --layout choices)."""
    names = [RAW]
    for t in TARGETS.values():
        names += [n for n in t.layouts if n not in names]
    return tuple(names)
