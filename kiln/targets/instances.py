"""SageMaker instance types: how many accelerator devices each has.

One table for every use: Neuron validation (tp_degree against NeuronCores), resolving LMI's
``tensor_parallel_degree=max``, and choosing an engine for an instance (`kiln lookup --select`).
SageMaker's ``ml.`` prefix is accepted and ignored.
"""

from __future__ import annotations

import difflib

# NeuronCores per Inferentia2 / Trainium instance.
NEURON_CORES = {
    "inf2.xlarge": 2, "inf2.8xlarge": 2, "inf2.24xlarge": 12, "inf2.48xlarge": 24,
    "trn1.2xlarge": 2, "trn1.32xlarge": 32, "trn1n.32xlarge": 32,
}
# GPUs per GPU instance.
GPU_COUNTS = {
    "g5.xlarge": 1, "g5.2xlarge": 1, "g5.4xlarge": 1, "g5.8xlarge": 1, "g5.16xlarge": 1,
    "g5.12xlarge": 4, "g5.24xlarge": 4, "g5.48xlarge": 8, "p4d.24xlarge": 8, "p4de.24xlarge": 8,
    "p5.48xlarge": 8, "g6.12xlarge": 4, "g6.48xlarge": 8, "g6e.12xlarge": 4, "g6e.48xlarge": 8,
}


def normalize_instance_type(value: str) -> str:
    text = value.strip().lower()
    return text[3:] if text.startswith("ml.") else text


def instance_devices(instance_type: str) -> int | None:
    """NeuronCores or GPUs of an instance type; None when Kiln does not know it."""
    name = normalize_instance_type(instance_type)
    return NEURON_CORES.get(name) or GPU_COUNTS.get(name)


def instance_families() -> tuple[str, ...]:
    """The families whose sizes this table knows, as users write them (``ml.inf2``, ``ml.g5``, …)."""
    return tuple(f"ml.{family}" for family in dict.fromkeys(n.split(".")[0] for n in (*NEURON_CORES, *GPU_COUNTS)))


def unknown_instance_hint(instance_type: str) -> str:
    """What to say about an instance type :func:`instance_devices` does not know: a close spelling, or the families."""
    name = normalize_instance_type(instance_type)
    close = difflib.get_close_matches(name, [*NEURON_CORES, *GPU_COUNTS], n=1, cutoff=0.8)
    if close:
        return f"did you mean ml.{close[0]}?"
    return f"Kiln knows sizes of {', '.join(instance_families())}"
