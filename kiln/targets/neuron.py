"""`neuron`: transformers-neuronx compiled graphs (NEFF) for Inferentia2 / Trainium."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ValidationError
from ..spec import BuildSpec
from ._base import ResolvedSpec, Target, TargetOption

# NeuronCores per instance (SageMaker's ml. prefix is accepted and ignored).
INSTANCE_CORES = {
    "inf2.xlarge": 2, "inf2.8xlarge": 2, "inf2.24xlarge": 12, "inf2.48xlarge": 24,
    "trn1.2xlarge": 2, "trn1.32xlarge": 32, "trn1n.32xlarge": 32,
}


def normalize_instance_type(value: str) -> str:
    text = value.strip().lower()
    return text[3:] if text.startswith("ml.") else text


@dataclass(frozen=True)
class NeuronTarget(Target):
    def hardware(self, spec: BuildSpec) -> str | None:
        instance = spec.option("instance_type")
        if not instance:
            return None
        family = normalize_instance_type(instance).split(".")[0]
        return "neuron-" + ("trn1" if family.startswith("trn1") else family)

    def validate(self, spec: BuildSpec, config: Mapping[str, Any]) -> ResolvedSpec:
        resolved = super().validate(spec, config)
        instance = spec.option("instance_type")
        if instance:
            name = normalize_instance_type(instance)
            cores = INSTANCE_CORES.get(name)
            if cores is None:
                raise ValidationError(
                    f"instance type {instance!r} is not a known Inferentia2/Trainium instance; use "
                    f"one of {', '.join('ml.' + k for k in INSTANCE_CORES)}."
                )
            if spec.tp_degree > cores:
                raise ValidationError(
                    f"tp_degree={spec.tp_degree} exceeds the {cores} NeuronCores of {instance}; use "
                    f"--tp-degree {cores} or less, or a larger instance."
                )
        return resolved


NEURON = NeuronTarget(
    name="neuron",
    description="transformers-neuronx compiled graphs (NEFF) for Inferentia2 / Trainium",
    packages={"neuronx-cc": "neuronx-cc", "transformers-neuronx": "transformers-neuronx"},
    dtypes=("fp16", "bf16", "fp32"),
    default_dtype="fp16",
    architectures=("LlamaForCausalLM", "MistralForCausalLM", "GPT2LMHeadModel", "GPTNeoXForCausalLM", "OPTForCausalLM", "BloomForCausalLM"),
    unsupported={"MixtralForCausalLM": "transformers-neuronx has no Mixtral (MoE) model class"},
    options=(
        TargetOption("instance_type", "Inferentia2/Trainium instance type (chooses the hardware class)", in_key=False),
        TargetOption("gqa_strategy", "GQA sharding strategy", choices=("shard-over-heads", "shard-over-batch", "replicated-heads", "all-gather-heads")),
        TargetOption("context_length_estimate", "context encoding buckets, e.g. 1024 or 512,1024"),
        TargetOption("optlevel", "neuronx-cc optimisation level", choices=("1", "2", "3")),
    ),
    install_hint=(
        "the Neuron SDK is served from AWS's package index, not PyPI: on an Inferentia2/Trainium "
        "instance or an x86 host run `pip install neuronx-cc transformers-neuronx "
        "--extra-index-url https://pip.repos.neuron.amazonaws.com`"
    ),
)
