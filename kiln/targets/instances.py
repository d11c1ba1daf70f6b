"""SageMaker instance types: how many accelerator devices each has, and which GPU.

One table for every use: Neuron validation (tp_degree against NeuronCores), resolving LMI's
``tensor_parallel_degree=max``, choosing an engine for an instance (`kiln lookup --select`),
and the GPU's SM where a build must be checked against the instance it is for.
SageMaker's ``ml.`` prefix is accepted and ignored.
"""

from __future__ import annotations

import difflib

# NeuronCores per Inferentia2 / Trainium instance.
NEURON_CORES = {
    "inf2.xlarge": 2, "inf2.8xlarge": 2, "inf2.24xlarge": 12, "inf2.48xlarge": 24,
    "trn1.2xlarge": 2, "trn1.32xlarge": 32, "trn1n.32xlarge": 32,
}
# GPUs per GPU instance: AWS, "Specifications for Amazon EC2 accelerated computing instances"
# (docs.aws.amazon.com/ec2/latest/instancetypes/ac.html, "Performance specifications": the
# Accelerators column), the sizes SageMaker offers as ml.<type>.
GPU_COUNTS = {
    "g4dn.xlarge": 1, "g4dn.2xlarge": 1, "g4dn.4xlarge": 1, "g4dn.8xlarge": 1, "g4dn.16xlarge": 1, "g4dn.12xlarge": 4,
    "g5.xlarge": 1, "g5.2xlarge": 1, "g5.4xlarge": 1, "g5.8xlarge": 1, "g5.16xlarge": 1,
    "g5.12xlarge": 4, "g5.24xlarge": 4, "g5.48xlarge": 8,
    "g6.xlarge": 1, "g6.2xlarge": 1, "g6.4xlarge": 1, "g6.8xlarge": 1, "g6.16xlarge": 1,
    "g6.12xlarge": 4, "g6.24xlarge": 4, "g6.48xlarge": 8,
    "g6e.xlarge": 1, "g6e.2xlarge": 1, "g6e.4xlarge": 1, "g6e.8xlarge": 1, "g6e.16xlarge": 1,
    "g6e.12xlarge": 4, "g6e.24xlarge": 4, "g6e.48xlarge": 8,
    "p4d.24xlarge": 8, "p4de.24xlarge": 8, "p5.4xlarge": 1, "p5.48xlarge": 8, "p5e.48xlarge": 8, "p5en.48xlarge": 8,
    "p6-b200.48xlarge": 8, "p6-b300.48xlarge": 8, "p6e-gb200.36xlarge": 4,
}
# The GPU of each family and its compute capability as an SM number (8.6 -> 86). Models from
# the same AWS page (the p6e-gb200 GPUs are the B200s of GB200 superchips, named as NVIDIA
# sells them); SMs from NVIDIA's "CUDA GPU Compute Capability" table
# (developer.nvidia.com/cuda-gpus): T4 7.5, A100 8.0, A10 8.6 (the A10G is AWS's variant of
# the A10, the same GA102 chip), L4 and L40S 8.9, H100 and H200 9.0, B200 and GB200 10.0,
# B300 10.3. The model is the product name, not nvidia-smi's exact string (which varies by
# memory size and form factor): compare SMs, not models, across the two.
GPU_FAMILIES: dict[str, tuple[str, int]] = {
    "g4dn": ("NVIDIA T4", 75),
    "g5": ("NVIDIA A10G", 86),
    "g6": ("NVIDIA L4", 89),
    "g6e": ("NVIDIA L40S", 89),
    "p4d": ("NVIDIA A100", 80),
    "p4de": ("NVIDIA A100", 80),
    "p5": ("NVIDIA H100", 90),
    "p5e": ("NVIDIA H200", 90),
    "p5en": ("NVIDIA H200", 90),
    "p6-b200": ("NVIDIA B200", 100),
    "p6-b300": ("NVIDIA B300", 103),
    "p6e-gb200": ("NVIDIA GB200", 100),
}


def normalize_instance_type(value: str) -> str:
    text = value.strip().lower()
    return text[3:] if text.startswith("ml.") else text


def instance_devices(instance_type: str) -> int | None:
    """NeuronCores or GPUs of an instance type; None when Kiln does not know it."""
    name = normalize_instance_type(instance_type)
    return NEURON_CORES.get(name) or GPU_COUNTS.get(name)


def instance_gpu(instance_type: str) -> tuple[str, int] | None:
    """(GPU model, SM) of a GPU instance type's family (``ml.p5.48xlarge`` -> ``("NVIDIA H100", 90)``); None otherwise."""
    return GPU_FAMILIES.get(normalize_instance_type(instance_type).split(".")[0])


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
