"""Who loads a Neuron artifact, and so how Kiln must compile it: consumer profiles as data.

transformers-neuronx finds a precompiled graph only by the hash of the HLO the *loader* builds
(``save()`` names each NEFF ``sha256(HLO)[:20].neff``; ``load()`` + ``to_neuron()`` raises "Could not
find a matching NEFF" and never compiles instead: transformers-neuronx v0.13.0 ``module.py`` /
``base.py``). So Kiln makes exactly the call the consumer makes — the same class, kwargs and
NeuronConfig, with NEURON_CC_FLAGS set as its image sets it — and keys the consumer and its
release. A profile says, per release: the SDK its image ships (the toolchain in the key, so a
lookup needs no ``--toolchain`` pins), the flags, the defaults the handler applies, and how it
batches. Values come from djl-serving's source at the release named; each names its file:

``H``   engines/python/setup/djl_python/transformers_neuronx.py
``ML``  engines/python/setup/djl_python/neuron_utils/model_loader.py
``NU``  engines/python/setup/djl_python/neuron_utils/utils.py
``TP``  engines/python/setup/djl_python/properties_manager/tnx_properties.py
``REC`` wlm/src/main/java/ai/djl/serving/wlm/LmiConfigRecommender.java
``DF``  serving/docker/pytorch-inf2.Dockerfile

Releases: 0.26.0–0.29.0 from their tags; 0.30.0 from the ``0.30.0-dlc`` branch (commit fefd40ec,
the source of the published ``djl-inference:0.30.0-neuronx-sdk2.20.1`` image; the mirror has no
v0.30.0 tag). 0.31–0.34 kept the handler in source, but no NeuronX image of those releases is
named anywhere in djl-serving's docs (they still point at 0.30.0), so they are not offered; the
handler was removed before 0.35.0 (commit 1132e3ab). Releases that route a configuration through
optimum-neuron or vLLM instead of transformers-neuronx (0.26/0.27 for some Llama setups, 0.30 with
max_rolling_batch_size ≥ 12) are refused for it: Kiln's graphs would not be the ones loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ...errors import ValidationError

__all__ = ["NeuronConsumer", "CONSUMERS", "DEFAULT_CONSUMER", "get_consumer", "consumer_names",
           "context_length_buckets", "IMAGE_NEURON_CC_FLAGS"]

# DF at every release 0.26.0 → 0.34.0: ENV NEURON_CC_FLAGS="--logfile /tmp/compile.log --temp-dir=/tmp".
IMAGE_NEURON_CC_FLAGS = "--logfile /tmp/compile.log --temp-dir=/tmp"
# Architectures LMI batches continuously (H set_configs, 0.27+: llama/mistral; 0.26: every model).
_CB_MODEL_TYPES = ("llama", "mistral")
# LMI's dtype → transformers-neuronx amp (TP set_amp_value: amp = Dtype[dtype].name).
_AMP = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}


def context_length_buckets(n: int) -> list[int]:
    """NU@0.30.0-dlc build_context_length_estimates: [n] up to 128, else 128, 1024, then doubling below n, then n."""
    if n <= 128:
        return [n]
    out = [128]
    b = 1024
    while b < n:
        out.append(b)
        b *= 2
    return out + [n]


@dataclass(frozen=True)
class NeuronConsumer:
    """One consumer release: what its image ships and how its loader calls transformers-neuronx."""

    name: str  # "lmi-neuronx" or "transformers-neuronx"
    version: str  # the release ("" for the plain library: whatever is installed)
    toolchain: Mapping[str, str] = field(default_factory=dict)  # the image's SDK: keyed, so lookups need no pins
    source: str = ""  # where the values come from
    neuron_cc_flags: str | None = None  # None: the plain library, the build host's NEURON_CC_FLAGS left out
    default_n_positions: int | None = None  # None: min(max_position_embeddings, 4096) (0.30 smart default)
    # "explicit": <Arch>ForSampling (0.26); "auto": NeuronAutoModelForCausalLM.from_pretrained (0.27+).
    model_class: str = "auto"
    cb_every_architecture: bool = False  # 0.26: continuous batching for every model type
    cb_needs_batch_above_one: bool = True  # 0.28+: max_rolling_batch_size > 1 (0.27: any)
    cle_buckets: bool = False  # 0.30: the default context_length_estimate under CB is a bucket list
    vllm_from_batch: int | None = None  # 0.30: rolling_batch=auto goes to vLLM from this max_rolling_batch_size
    auto_refused: str | None = None  # why rolling_batch=auto (or absent, where absent means auto) is not tnx here
    cb_cle_must_be_n: bool = False  # ML raises unless context_length_estimate == [n_positions] under CB
    optimum_for_rolling_llama: bool = False  # 0.27: llama/mistral with rolling batch go through optimum-neuron
    optimum_for_static_llama: bool = False  # 0.26: llama without rolling batch goes through optimum-neuron
    mixtral: bool = True  # 0.26's loader has no mixtral entry (ML MODEL_TYPE_TO_CLS_LOADER)
    absent_rolling_batch: str = "disable"  # what an absent option.rolling_batch means (REC / PP)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}" if self.version else self.name

    @property
    def is_lmi(self) -> bool:
        return self.name == "lmi-neuronx"

    # ---------------------------------------------------------------- what the loader does
    def rolling_batch(self, written: str | None, batch_size: int) -> str:
        """The effective option.rolling_batch: ``tnx`` or ``disable`` (ValidationError where LMI would not use tnx)."""
        value = (written or self.absent_rolling_batch).strip().lower()
        if value == "auto" and self.auto_refused:
            raise ValidationError(f"{self.ref}: rolling_batch=auto{' (absent: auto)' if not written else ''} "
                                  f"{self.auto_refused}; set option.rolling_batch=tnx (or disable).")
        if value == "auto":
            if self.vllm_from_batch is not None and batch_size >= self.vllm_from_batch:
                raise ValidationError(
                    f"{self.ref} serves rolling_batch=auto with max_rolling_batch_size={batch_size} through vLLM "
                    f"(REC: auto goes to vllm from max_rolling_batch_size {self.vllm_from_batch}), not "
                    "transformers-neuronx: Kiln's graphs would not be loaded; set option.rolling_batch=tnx.")
            return "tnx"
        if value in ("tnx", "disable"):
            return value
        raise ValidationError(f"option.rolling_batch={written!r} is not one {self.ref} serves with transformers-neuronx; "
                              "use tnx, auto or disable.")

    def invocation(self, *, architecture: str, model_type: str, batch_size: int, tp_degree: int, n_positions: int,
                   dtype: str, rolling_batch: str, strategy: str | None, context_length_estimate: list[int] | None,
                   gqa: str | None, optlevel: str | None, class_path: str) -> dict[str, Any]:
        """The exact call: ``{"class", "kwargs" (neuron_config as a dict of its fields), "env"}``."""
        if not self.is_lmi:
            return self._library_call(class_path, batch_size, tp_degree, n_positions, dtype, context_length_estimate,
                                      gqa, optlevel)
        rolling = rolling_batch != "disable"
        if rolling and self.optimum_for_rolling_llama and model_type in _CB_MODEL_TYPES:
            raise ValidationError(f"{self.ref} loads {model_type} with rolling batch through optimum-neuron (H "
                                  "optimum_not_supported), which Kiln does not model; use another release.")
        if not rolling and self.optimum_for_static_llama and model_type == "llama":
            raise ValidationError(f"{self.ref} loads llama without rolling batch through optimum-neuron (H), which "
                                  "Kiln does not model; use option.rolling_batch=tnx or another release.")
        if model_type == "mixtral" and not self.mixtral:
            raise ValidationError(f"{self.ref}'s loader has no mixtral model class (ML MODEL_TYPE_TO_CLS_LOADER).")
        if strategy is None:
            # H set_configs: the default strategy.
            cb_type = self.cb_every_architecture or model_type in _CB_MODEL_TYPES
            strategy = "continuous_batching" if cb_type and (batch_size > 1 or not self.cb_needs_batch_above_one) \
                else "naive_rolling_batch"
        continuous = rolling and strategy == "continuous_batching" and \
            (batch_size > 1 or not self.cb_needs_batch_above_one)
        kwargs: dict[str, Any] = {"batch_size": batch_size, "amp": _AMP[dtype], "tp_degree": tp_degree}
        neuron_config: dict[str, Any] = {}
        if continuous:
            kwargs["n_positions"] = [n_positions]  # ML get_model_specific_kwargs: a list under CB
            if self.cb_cle_must_be_n and context_length_estimate not in (None, [n_positions]):
                raise ValidationError(f"{self.ref} refuses context_length_estimate={context_length_estimate} with "
                                      f"continuous batching: it must be [{n_positions}] (ML get_model_specific_kwargs); "
                                      "drop it, or use lmi-neuronx:0.29.0 or later.")
            if context_length_estimate is None:
                context_length_estimate = context_length_buckets(n_positions) if self.cle_buckets else [n_positions]
            neuron_config["continuous_batching"] = {"batch_size_for_shared_caches": batch_size}
        else:
            kwargs["n_positions"] = n_positions
        if context_length_estimate is not None:
            kwargs["context_length_estimate"] = context_length_estimate
        if gqa:
            neuron_config["group_query_attention"] = gqa
        kwargs["neuron_config"] = neuron_config
        flags = self.neuron_cc_flags or ""
        if optlevel:
            flags += f" -O{optlevel}"  # TP neuron_optimize_level validator appends it
        cls = "transformers_neuronx.NeuronAutoModelForCausalLM" if self.model_class == "auto" else class_path
        return {"class": cls, "kwargs": kwargs, "env": {"NEURON_CC_FLAGS": flags}}

    def _library_call(self, class_path: str, batch_size: int, tp_degree: int, n_positions: int, dtype: str,
                      context_length_estimate: list[int] | None, gqa: str | None,
                      optlevel: str | None) -> dict[str, Any]:
        """The plain library, as its README calls it: ``<Arch>ForSampling.from_pretrained(dir, ...)``, a fresh
        NeuronConfig (transformers-neuronx's own default is shared between instances and changed in place)."""
        kwargs: dict[str, Any] = {"batch_size": batch_size, "tp_degree": tp_degree, "n_positions": n_positions,
                                  "amp": _AMP[dtype]}
        if context_length_estimate is not None:
            kwargs["context_length_estimate"] = context_length_estimate
        kwargs["neuron_config"] = {"group_query_attention": gqa} if gqa else {}
        return {"class": class_path, "kwargs": kwargs, "env": {"NEURON_CC_FLAGS": f"-O{optlevel}" if optlevel else ""}}


def _lmi(version: str, toolchain: dict[str, str], source: str, **facts: Any) -> NeuronConsumer:
    return NeuronConsumer("lmi-neuronx", version, toolchain, source, IMAGE_NEURON_CC_FLAGS, **facts)


CONSUMERS: dict[str, NeuronConsumer] = {c.ref: c for c in (
    _lmi("0.26.0", {"neuronx-cc": "2.12.54.0", "transformers-neuronx": "0.9.474", "torch-neuronx": "1.13.1.1.13.0"},
         "djl-serving v0.26.0: DF (SDK 2.16.0), ML L108-151 (CB for every model with rolling batch), H L44-55, TP L51-67",
         default_n_positions=128, model_class="explicit", cb_every_architecture=True, cb_needs_batch_above_one=False,
         optimum_for_static_llama=True, mixtral=False, absent_rolling_batch="disable", cb_cle_must_be_n=True),
    _lmi("0.27.0", {"neuronx-cc": "2.13.68.0", "transformers-neuronx": "0.10.0.360", "torch-neuronx": "2.1.2.2.1.0"},
         "djl-serving 0.27.0-dlc (049a929b): DF (SDK 2.18.1), ML L115-164, H set_configs, TP L74-97",
         default_n_positions=128, cb_needs_batch_above_one=False, optimum_for_rolling_llama=True,
         absent_rolling_batch="auto", cb_cle_must_be_n=True,
         auto_refused="goes to lmi-dist on the MPI engine in 0.27.0-dlc's recommender (REC L81-106; the image sets "
                      "SERVING_FEATURES=vllm,lmi-dist,tnx), which starts no worker on Inferentia"),
    _lmi("0.28.0", {"neuronx-cc": "2.13.72.0", "transformers-neuronx": "0.10.0.360", "torch-neuronx": "2.1.2.2.1.0"},
         "djl-serving v0.28.0 / 0.28.0-dlc: DF (SDK 2.18.2), ML L147-193, REC (0.28.0-dlc ef2a8c46: absent "
         "rolling_batch is disable, auto is tnx)", default_n_positions=128, absent_rolling_batch="disable",
         cb_cle_must_be_n=True),
    _lmi("0.29.0", {"neuronx-cc": "2.14.227.0", "transformers-neuronx": "0.11.351", "torch-neuronx": "2.1.2.2.2.0"},
         "djl-serving v0.29.0: DF (SDK 2.19.1), ML get_model_specific_kwargs, REC", default_n_positions=128,
         absent_rolling_batch="disable"),
    _lmi("0.30.0", {"neuronx-cc": "2.15.141.0", "transformers-neuronx": "0.12.313", "torch-neuronx": "2.1.2.2.3.1"},
         "djl-serving 0.30.0-dlc (fefd40ec): DF (SDK 2.20.1), ML + NU build_context_length_estimates, REC (auto: vllm "
         "from max_rolling_batch_size 12). on_device_embedding is set only for a config.json with a \"neuron\" "
         "stanza or a partition (neuron_smart_default_utils.py L82-85), which Kiln's layouts do not write",
         default_n_positions=None, cle_buckets=True, vllm_from_batch=12, absent_rolling_batch="auto"),
    NeuronConsumer("transformers-neuronx", "", source="the library's own API (README: <Arch>ForSampling.from_pretrained)"),
)}
DEFAULT_CONSUMER = "transformers-neuronx"  # a spec written with CLI flags (LMI sources must name one)


def consumer_names() -> list[str]:
    return list(CONSUMERS)


def get_consumer(ref: str) -> NeuronConsumer:
    """The consumer ``NAME:VERSION`` names; ValidationError listing the choices otherwise."""
    wanted = ref.strip().lower()
    found = CONSUMERS.get(wanted) or CONSUMERS.get(wanted.removesuffix(":"))
    if found is None:
        raise ValidationError(f"consumer {ref!r} is not one Kiln builds Neuron graphs for; choose one of "
                              f"{', '.join(CONSUMERS)}.")
    return found
