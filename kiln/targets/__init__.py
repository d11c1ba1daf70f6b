"""Targets: one module per compiler behind the small :class:`~kiln.targets._base.Target` interface."""

from __future__ import annotations

from ..errors import SpecError
from ._base import ResolvedSpec, Target, TargetOption
from .neuron import NEURON
from .torch_aoti import TORCH_AOTI
from .trtllm import TRTLLM

TARGETS: dict[str, Target] = {t.name: t for t in (TORCH_AOTI, TRTLLM, NEURON)}

__all__ = ["TARGETS", "Target", "TargetOption", "ResolvedSpec", "get_target"]


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise SpecError(f"target {name!r} is not known; use one of {', '.join(TARGETS)}.") from None
