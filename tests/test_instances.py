"""SageMaker GPU instance types: GPUs per size, and each family's GPU and SM.

The rows below are copied from AWS's "Specifications for Amazon EC2 accelerated computing
instances" (docs.aws.amazon.com/ec2/latest/instancetypes/ac.html, "Performance
specifications", Accelerators column, in that page's own wording), and the compute
capabilities from NVIDIA's "CUDA GPU Compute Capability" table (developer.nvidia.com/cuda-gpus):
the module's tables are checked against these transcriptions, not against themselves.
"""

from __future__ import annotations

import re

import pytest

from kiln.targets.instances import (
    GPU_COUNTS,
    GPU_FAMILIES,
    NEURON_CORES,
    instance_devices,
    instance_families,
    instance_gpu,
    unknown_instance_hint,
)

pytestmark = pytest.mark.light

AWS_ACCELERATORS = """
g4dn.xlarge 1 x NVIDIA T4 GPU
g4dn.2xlarge 1 x NVIDIA T4 GPU
g4dn.4xlarge 1 x NVIDIA T4 GPU
g4dn.8xlarge 1 x NVIDIA T4 GPU
g4dn.12xlarge 4 x NVIDIA T4 GPU
g4dn.16xlarge 1 x NVIDIA T4 GPU
g5.xlarge 1 x NVIDIA A10G GPU
g5.2xlarge 1 x NVIDIA A10G GPU
g5.4xlarge 1 x NVIDIA A10G GPU
g5.8xlarge 1 x NVIDIA A10G GPU
g5.12xlarge 4 x NVIDIA A10G GPU
g5.16xlarge 1 x NVIDIA A10G GPU
g5.24xlarge 4 x NVIDIA A10G GPU
g5.48xlarge 8 x NVIDIA A10G GPU
g6.xlarge 1 x NVIDIA L4 GPU
g6.2xlarge 1 x NVIDIA L4 GPU
g6.4xlarge 1 x NVIDIA L4 GPU
g6.8xlarge 1 x NVIDIA L4 GPU
g6.12xlarge 4 x NVIDIA L4 GPU
g6.16xlarge 1 x NVIDIA L4 GPU
g6.24xlarge 4 x NVIDIA L4 GPU
g6.48xlarge 8 x NVIDIA L4 GPU
g6e.xlarge 1 x NVIDIA L40S GPU
g6e.2xlarge 1 x NVIDIA L40S GPU
g6e.4xlarge 1 x NVIDIA L40S GPU
g6e.8xlarge 1 x NVIDIA L40S GPU
g6e.12xlarge 4 x NVIDIA L40S GPU
g6e.16xlarge 1 x NVIDIA L40S GPU
g6e.24xlarge 4 x NVIDIA L40S GPU
g6e.48xlarge 8 x NVIDIA L40S GPU
p4d.24xlarge 8 x NVIDIA A100 GPU
p4de.24xlarge 8 x NVIDIA A100 GPU
p5.4xlarge 1 x NVIDIA H100 GPU
p5.48xlarge 8 x NVIDIA H100 GPU
p5e.48xlarge 8 x NVIDIA H200 GPU
p5en.48xlarge 8 x NVIDIA H200 GPU
p6-b200.48xlarge 8 x NVIDIA B200 GPU
p6-b300.48xlarge 8 x NVIDIA B300 GPU
p6e-gb200.36xlarge 4 x NVIDIA B200 GPU
"""
# NVIDIA's table lists the A10 (8.6), not AWS's A10G variant of it; GB200's GPUs are listed as "NVIDIA GB200".
NVIDIA_CC = {"NVIDIA T4": "7.5", "NVIDIA A10G": "8.6", "NVIDIA L4": "8.9", "NVIDIA L40S": "8.9", "NVIDIA A100": "8.0",
             "NVIDIA H100": "9.0", "NVIDIA H200": "9.0", "NVIDIA B200": "10.0", "NVIDIA GB200": "10.0",
             "NVIDIA B300": "10.3"}  # fmt: skip


def _aws_rows() -> list[tuple[str, int, str]]:
    rows = []
    for line in AWS_ACCELERATORS.strip().splitlines():
        m = re.fullmatch(r"(\S+) (\d+) x (.+) GPU", line)
        assert m, line
        rows.append((m.group(1), int(m.group(2)), m.group(3)))
    return rows


@pytest.mark.parametrize("instance,count,gpu", _aws_rows())
def test_gpu_counts_and_models_match_aws(instance: str, count: int, gpu: str) -> None:
    assert GPU_COUNTS[instance] == count
    assert instance_devices(f"ml.{instance}") == count
    model, sm = instance_gpu(f"ml.{instance}")
    # p6e-gb200: AWS names its GPUs B200 (of GB200 superchips); Kiln names the product, GB200.
    assert model == gpu or (instance.startswith("p6e-gb200.") and model == "NVIDIA GB200")
    major, minor = NVIDIA_CC[model].split(".")
    assert sm == int(major) * 10 + int(minor)


def test_every_gpu_size_has_a_family_and_every_family_a_size() -> None:
    sized = {name.split(".")[0] for name in GPU_COUNTS}
    assert sized == set(GPU_FAMILIES)
    assert {name for name, _, _ in _aws_rows()} == set(GPU_COUNTS)  # nothing in the table the page lacks


@pytest.mark.parametrize("spelling", ["ml.p6-b200.48xlarge", "P6-B200.48XLARGE", " ml.p6-b200.48xlarge "])
def test_instance_gpu_normalises_the_name(spelling: str) -> None:
    assert instance_gpu(spelling) == ("NVIDIA B200", 100)


@pytest.mark.parametrize("instance", ["ml.inf2.24xlarge", "ml.trn1.32xlarge", "ml.c5.xlarge", "ml.g7.mega", ""])
def test_instance_gpu_is_none_without_a_known_gpu(instance: str) -> None:
    assert instance_gpu(instance) is None


def test_blackwell_families_are_the_sm_100_to_119_ones() -> None:
    # What the SmoothQuant / INT8 KV refusal on SM 100-119 reads from --instance-type.
    refused = {family for family, (_, sm) in GPU_FAMILIES.items() if 100 <= sm <= 119}
    assert refused == {"p6-b200", "p6-b300", "p6e-gb200"}


def test_new_families_are_listed_in_the_hint_and_spellings_found() -> None:
    families = instance_families()
    assert len(families) == len(set(families))
    for family in ("ml.g4dn", "ml.g6e", "ml.p5en", "ml.p6-b200", "ml.p6e-gb200"):
        assert family in families
    assert unknown_instance_hint("ml.p6-b200.48xlarg") == "did you mean ml.p6-b200.48xlarge?"
    assert unknown_instance_hint("ml.g5.12xlarg") == "did you mean ml.g5.12xlarge?"


def test_neuron_and_gpu_tables_do_not_overlap() -> None:
    assert not set(NEURON_CORES) & set(GPU_COUNTS)
