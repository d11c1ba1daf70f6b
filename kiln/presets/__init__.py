"""Presets: named build matrices shipped with Kiln.

``jumpstart-llama2-neuron`` is SageMaker JumpStart's published list of configurations for
which it ships precompiled Neuron graphs for Llama-2 (7B and 13B, chat variants too): one row
per instance type, n_positions, max rolling batch size, tensor-parallel degree and dtype.
Each CSV row naming "X and X-chat" expands to one row per model.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError
from ..spec import Field

__all__ = ["PresetRow", "PRESETS", "load_preset"]

# Preset name -> (CSV file, target, description).
PRESETS = {
    "jumpstart-llama2-neuron": (
        "jumpstart-llama2-neuron.csv",
        "neuron",
        "SageMaker JumpStart's precompiled Neuron configurations for Llama-2 7B/13B (+chat) on Inferentia2",
    ),
}

# JumpStart's model names -> Hugging Face Hub ids.
_HUB_IDS = {
    "Llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "Llama-2-7b-chat": "meta-llama/Llama-2-7b-chat-hf",
    "Llama-2-13b": "meta-llama/Llama-2-13b-hf",
    "Llama-2-13b-chat": "meta-llama/Llama-2-13b-chat-hf",
}


@dataclass(frozen=True)
class PresetRow:
    preset: str
    id: str  # stable row id, e.g. "llama-2-7b-hf/inf2.24xlarge/4096x4/tp8"
    model: str
    target: str
    instance_type: str
    n_positions: int
    batch_size: int
    tp_degree: int
    dtype: str
    # Who loads the row's engine (``--consumer``): JumpStart deploys these rows with an LMI NeuronX
    # image whose release the preset does not say, so it is the caller's choice; None: the plain library.
    consumer: str | None = None

    def fields(self) -> dict[str, Field]:
        src = f"preset {self.preset} row {self.id}"
        fields = {
            "model": Field(self.model, src), "target": Field(self.target, src),
            "n_positions": Field(self.n_positions, src), "batch_size": Field(self.batch_size, src),
            "tp_degree": Field(self.tp_degree, src), "dtype": Field(self.dtype, src),
            "option.instance_type": Field(self.instance_type, src),
        }
        if self.consumer:
            fields["option.consumer"] = Field(self.consumer, "--consumer")
            if self.consumer.startswith("lmi-"):
                fields["option.rolling_batch"] = Field("auto", src)  # as lmi_env() starts the container
        return fields

    def lmi_env(self) -> dict[str, str]:
        """The row as an LMI NeuronX container's environment would say it."""
        return {
            "HF_MODEL_ID": self.model,
            "OPTION_ENTRYPOINT": "djl_python.transformers_neuronx",
            "OPTION_ROLLING_BATCH": "auto",
            "OPTION_N_POSITIONS": str(self.n_positions),
            "OPTION_MAX_ROLLING_BATCH_SIZE": str(self.batch_size),
            "OPTION_TENSOR_PARALLEL_DEGREE": str(self.tp_degree),
            "OPTION_DTYPE": self.dtype,
            **({"OPTION_KILN_CONSUMER": self.consumer} if self.consumer else {}),
        }

    def serving_properties(self) -> str:
        """The row as a serving.properties file."""
        return (
            "engine=Python\n"
            f"option.model_id={self.model}\n"
            "option.entryPoint=djl_python.transformers_neuronx\n"
            "option.rolling_batch=auto\n"
            f"option.n_positions={self.n_positions}\n"
            f"option.max_rolling_batch_size={self.batch_size}\n"
            f"option.tensor_parallel_degree={self.tp_degree}\n"
            f"option.dtype={self.dtype}\n"
            + (f"option.kiln_consumer={self.consumer}\n" if self.consumer else "")
        )

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def load_preset(name: str, model: str | None = None, consumer: str | None = None) -> list[PresetRow]:
    """The rows of a preset; ``model`` replaces the preset's models (rows then deduplicated); ``consumer``
    names who loads them (``lmi-neuronx:0.29.0``; None: the plain library)."""
    if name not in PRESETS:
        raise SpecError(f"preset {name!r} is not known; `kiln presets` lists them ({', '.join(PRESETS)}).")
    filename, target, _ = PRESETS[name]
    from importlib import resources  # only when a preset is read: it imports zipfile and tempfile

    text = resources.files("kiln.presets").joinpath(filename).read_text()
    rows: list[PresetRow] = []
    seen: set[tuple[Any, ...]] = set()
    for line in csv.DictReader(io.StringIO(text)):
        names = [n.strip() for n in line["model"].split(" and ")]
        for jumpstart_name in names:
            hub_id = model or _HUB_IDS.get(jumpstart_name)
            if hub_id is None:
                raise SpecError(f"preset {name}: no Hub id known for {jumpstart_name!r}; pass --model.")
            instance = line["instance_type"].strip()
            row = PresetRow(
                preset=name,
                id=(f"{hub_id.split('/')[-1].lower()}/{instance.removeprefix('ml.')}/"
                    f"{line['n_positions']}x{line['max_rolling_batch_size']}/tp{line['tensor_parallel_degree']}"),
                model=hub_id,
                target=target,
                instance_type=instance,
                n_positions=int(line["n_positions"]),
                batch_size=int(line["max_rolling_batch_size"]),
                tp_degree=int(line["tensor_parallel_degree"]),
                dtype=line["dtype"].strip(),
                consumer=consumer,
            )
            if row.id not in seen:
                seen.add(row.id)
                rows.append(row)
    return rows
