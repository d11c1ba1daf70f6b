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

from .._input import show
from ..errors import SpecError
from ._layouts import RAW, Layout
from ._model_files import TOKENIZER_FILES
from ._plan import BUILD_LOG, ENGINE_STAGE, Stage, Step
from .base import BuildInputs, LmiFacts, ResolvedSpec, Target, TargetOption
from .neuron import NEURON
from .torch_aoti import TORCH_AOTI
from .trtllm import TRTLLM

TARGETS: dict[str, Target] = {t.name: t for t in (TORCH_AOTI, TRTLLM, NEURON)}

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

_ALIASES = {alias: t.name for t in TARGETS.values() for alias in (t.name, *t.aliases)}


def normalize_target(value: object, source: str = "target") -> str:
    """The canonical name of a target written any way users write it (``tensorrt-llm`` → ``trtllm``)."""
    text = str(value).strip().lower()
    if text in _ALIASES:
        return _ALIASES[text]
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
