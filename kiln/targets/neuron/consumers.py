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

Releases: 0.26.0–0.29.0 from their tags; 0.30.0–0.34.0 from the ``0.3x.0-dlc`` branches SageMaker's
images are built from (0.30.0-dlc fefd40ec, 0.31.0-dlc 2389a1bb, 0.32.0-dlc 3d6ad832, 0.33.0-dlc 8b3b685b,
0.34.0-dlc 63a6dcf3; the mirror has no v0.30+ tags). The handler was removed before 0.35.0 (commit 1132e3ab).
From 0.31 ``TP`` reads NEURON_* environment variables as property defaults (:data:`LMI_NEURON_ENV`).

libneuronxla is pinned by the image only from 0.32 (DF: libneuronxla==2.1.714.0). Before, pip resolved it
from torch-neuronx's requirement, a range (torch-neuronx 2.1.2.2.2.0 requires libneuronxla>2.0.965,<3.0:
aws-neuron-sdk issue #1012, where a later libneuronxla changed the cache's module names). Those profiles
carry the libneuronxla of the SDK release the image ships (aws-neuron-sdk src/helperscripts/n2-manifest.json
at that release) as ``sdk_defaults``: the key uses it where nothing is installed (CI, a laptop), and the
installed version wins where one is (inside the container, on the build host), so a container whose pip
resolved another libneuronxla looks up its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ...errors import ValidationError
from .._lmi_image import read_lmi_telemetry
from .smart_defaults import smart_defaults

__all__ = ["NeuronConsumer", "CONSUMERS", "DEFAULT_CONSUMER", "get_consumer", "consumer_names",
           "context_length_buckets", "IMAGE_NEURON_CC_FLAGS", "LMI_NEURON_ENV", "detect_lmi_consumer",
           "neuron_env_rule"]

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
    sdk_defaults: Mapping[str, str] = field(default_factory=dict)  # unpinned by the image: yield to the installed
    source: str = ""  # where the values come from
    neuron_cc_flags: str | None = None  # None: the plain library, the build host's NEURON_CC_FLAGS left out
    default_n_positions: int | None = None  # None: min(max_position_embeddings, 4096) (0.30 smart default)
    # "explicit": <Arch>ForSampling (0.26); "auto": NeuronAutoModelForCausalLM.from_pretrained (0.27+).
    model_class: str = "auto"
    cb_every_architecture: bool = False  # 0.26: continuous batching for every model type
    cb_needs_batch_above_one: bool = True  # the *default* strategy is CB only above batch 1 (0.28+; 0.27: any)
    # ContinuousBatchingConfig is made for strategy CB only above batch 1 (ML@v0.28.0/v0.29.0
    # can_use_continuous_batching); 0.27 and 0.30+ make it for strategy CB at any batch.
    strategy_cb_needs_batch_above_one: bool = False
    reads_strategy: bool = True  # 0.26 has no option.rolling_batch_strategy: CB for every rolling batch
    cle_buckets: bool = False  # 0.30: the default context_length_estimate under CB is a bucket list
    vllm_from_batch: int | None = None  # 0.30: rolling_batch=auto goes to vLLM from this max_rolling_batch_size
    auto_refused: str | None = None  # why rolling_batch=auto (or absent, where absent means auto) is not tnx here
    cb_cle_must_be_n: bool = False  # ML raises unless context_length_estimate == [n_positions] under CB
    optimum_for_rolling_llama: bool = False  # 0.27: llama/mistral with rolling batch go through optimum-neuron
    optimum_for_static_llama: bool = False  # 0.26: llama without rolling batch goes through optimum-neuron
    mixtral: bool = True  # 0.26's loader has no mixtral entry (ML MODEL_TYPE_TO_CLS_LOADER)
    absent_rolling_batch: str = "disable"  # what an absent option.rolling_batch means (REC / PP)
    reads_neuron_env: bool = False  # 0.31+: TP takes property defaults from NEURON_* variables (LMI_NEURON_ENV)
    # 0.28+: rolling_batch=vllm (model_loader unset) compiles with TNXModelLoader.load_unwrapped_model() — the
    # same call — and hands the model to vLLM as preloaded_model (H load_model). None: vllm is not served.
    # "always": continuous batching whatever the strategy (ML@v0.28.0/v0.29.0 can_use_continuous_batching
    # `… or rolling_batch == "vllm"`); "strategy": as for tnx (ML@0.30.0-dlc onward).
    vllm_preloads_tnx: str | None = None
    lmi_dist_is_vllm: bool = False  # 0.33+: REC overrides rolling_batch=lmi-dist to vllm ("lmi-dist has been removed")
    # TP fields that exist in this release (a property it lacks is not read: no effect on the graphs).
    reads_model_loader: bool = True  # option.model_loader (TP@0.27.0-dlc on)
    reads_saturate_infinity: bool = True  # option.enable_saturate_infinity (TP@0.27.0-dlc on)
    # 0.31+: rolling_batch=vllm with model_loader=tnx raises unless speculative (H load_model).
    vllm_refuses_tnx_loader: bool = False
    # What an absent option.tensor_parallel_degree becomes: "one" (PP tensor_parallel_degree = 1), "gpu-count"
    # (REC writes CudaUtils.getGpuCount(): 0 on Inferentia), "heuristic" (JSD: a memory heuristic over the
    # instance's NeuronCores, reproduced in smart_defaults.py).
    absent_tp: str = "one"
    # An absent option.max_rolling_batch_size with rolling batch on: "32" (PP / REC), or "heuristic" (JSD).
    absent_max_rolling_batch: str = "32"

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}" if self.version else self.name

    @property
    def is_lmi(self) -> bool:
        return self.name == "lmi-neuronx"

    # ---------------------------------------------------------------- what the loader does
    def rolling_batch(self, written: str | None, batch_size: int) -> str:
        """The effective option.rolling_batch: ``tnx``, ``vllm`` (transformers-neuronx graphs handed to vLLM) or
        ``disable``; ValidationError where LMI would not compile with transformers-neuronx."""
        value = (written or self.absent_rolling_batch).strip().lower()
        if value == "lmi-dist" and self.lmi_dist_is_vllm:
            value = "vllm"
        if value == "auto" and self.auto_refused:
            raise ValidationError(f"{self.ref}: rolling_batch=auto{' (absent: auto)' if not written else ''} "
                                  f"{self.auto_refused}; set option.rolling_batch=tnx (or disable).")
        if value == "auto":
            if self.vllm_from_batch is not None and batch_size >= self.vllm_from_batch:
                value = "vllm"  # REC: auto goes to vllm from this max_rolling_batch_size
            else:
                return "tnx"
        if value == "vllm":
            if self.vllm_preloads_tnx is None:
                raise ValidationError(f"option.rolling_batch=vllm: {self.ref} does not serve vLLM from "
                                      "transformers-neuronx graphs; use tnx, auto or disable.")
            return "vllm"
        if value in ("tnx", "disable"):
            return value
        raise ValidationError(f"option.rolling_batch={written!r} is not one {self.ref} serves with transformers-neuronx; "
                              "use tnx, vllm, auto or disable.")

    def absent_defaults(self, unset: set[str], *, config: Mapping[str, Any], n_positions: int, cores: int | None,
                        quantized: bool, tp_degree: int, batch_size: int, rolling: str) -> tuple[int, int]:
        """``(tp_degree, batch_size)`` once this release has filled what the LMI configuration left out
        (``unset`` ⊆ {"tp_degree", "batch_size"}; the batch is max_rolling_batch_size). ValidationError where
        the release's value cannot be known here: the GPU count of 0.27/0.28, or 0.30+'s heuristic without
        the instance type (it reads the instance's NeuronCores)."""
        tp = None if "tp_degree" in unset else tp_degree
        batch = None if "batch_size" in unset else batch_size
        # LmiConfigRecommender.setRollingBatchSize (v0.28.0 on): 256 for vllm (and lmi-dist), else 32.
        fallback_batch = 256 if rolling == "vllm" else 32
        if tp is None and self.absent_tp == "gpu-count":
            raise ValidationError(f"{self.ref} sets an absent option.tensor_parallel_degree to the number of CUDA "
                                  "GPUs (LmiConfigRecommender setTensorParallelDegree), 0 on Inferentia, which "
                                  "transformers-neuronx cannot shard over; write option.tensor_parallel_degree.")
        if (tp is None and self.absent_tp == "heuristic") or (batch is None and self.absent_max_rolling_batch == "heuristic"):
            if cores is None:
                raise ValidationError(f"{self.ref} chooses an absent option.tensor_parallel_degree / "
                                      "max_rolling_batch_size from the instance's NeuronCores at start-up "
                                      "(NeuronSmartDefaultUtils.java); pass --instance-type (or write both).")
            try:
                return smart_defaults(config, n_positions=n_positions, cores=cores, quantized=quantized,
                                      tp_degree=tp, max_rolling_batch=batch, fallback_batch=fallback_batch)
            except (ValueError, OverflowError) as e:
                raise ValidationError(f"{self.ref}'s start-up defaults cannot be estimated for this model ({e}); "
                                      "write option.tensor_parallel_degree and option.max_rolling_batch_size.") from None
        return (1 if tp is None else tp), (fallback_batch if batch is None else batch)

    def invocation(self, *, architecture: str, model_type: str, batch_size: int, tp_degree: int, n_positions: int,
                   dtype: str, rolling_batch: str, strategy: str | None, context_length_estimate: list[int] | None,
                   gqa: str | None, optlevel: str | None, class_path: str,
                   neuron_cc_flags: str | None = None, model_loader: str | None = None,
                   mixed_precision_accumulation: bool = False, saturate_infinity: bool = False) -> dict[str, Any]:
        """The exact call: ``{"class", "kwargs" (neuron_config as a dict of its fields), "env"}``.

        ``neuron_cc_flags``: the NEURON_CC_FLAGS the consumer's process has, where it is not the image's
        (None: the image's own; the plain library: none)."""
        if not self.is_lmi:
            return self._library_call(class_path, batch_size, tp_degree, n_positions, dtype, context_length_estimate,
                                      gqa, optlevel, neuron_cc_flags)
        rolling = rolling_batch != "disable"
        if rolling_batch == "vllm" and model_loader == "tnx" and self.vllm_refuses_tnx_loader:
            raise ValidationError(f"{self.ref} refuses rolling_batch=vllm with option.model_loader=tnx outside "
                                  "speculative decoding (transformers_neuronx.py load_model: 'Preloaded tnx model is "
                                  "only supported for speculative decoding'); drop option.model_loader.")
        if rolling and self.optimum_for_rolling_llama and model_type in _CB_MODEL_TYPES and model_loader != "tnx":
            raise ValidationError(f"{self.ref} loads {model_type} with rolling batch through optimum-neuron (H "
                                  "optimum_not_supported), which Kiln does not model; set option.model_loader=tnx "
                                  "(the handler then loads with TNXModelLoader), or use another release.")
        if not rolling and self.optimum_for_static_llama and model_type == "llama":
            raise ValidationError(f"{self.ref} loads llama without rolling batch through optimum-neuron (H), which "
                                  "Kiln does not model; use option.rolling_batch=tnx or another release.")
        if model_type == "mixtral" and not self.mixtral:
            raise ValidationError(f"{self.ref}'s loader has no mixtral model class (ML MODEL_TYPE_TO_CLS_LOADER).")
        if not self.reads_strategy:
            strategy = None  # not a property of this release: ML set_neuron_config makes CB for any rolling batch
        if strategy is None:
            # H set_configs: the default strategy.
            cb_type = self.cb_every_architecture or model_type in _CB_MODEL_TYPES
            strategy = "continuous_batching" if cb_type and (batch_size > 1 or not self.cb_needs_batch_above_one) \
                else "naive_rolling_batch"
        continuous = rolling and strategy == "continuous_batching" and \
            (batch_size > 1 or not self.strategy_cb_needs_batch_above_one)
        continuous = continuous or (rolling_batch == "vllm" and self.vllm_preloads_tnx == "always")
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
        flags = (self.neuron_cc_flags if neuron_cc_flags is None else neuron_cc_flags) or ""
        # TP's field validators append to NEURON_CC_FLAGS in field order, each with a leading space, whatever
        # the value given (neuron_optimize_level, enable_mixed_precision_accumulation, enable_saturate_infinity).
        if optlevel:
            flags += f" -O{optlevel}"
        if mixed_precision_accumulation:
            flags += " --enable-mixed-precision-accumulation"
        if saturate_infinity and self.reads_saturate_infinity:
            flags += " --enable-saturate-infinity"
        cls = "transformers_neuronx.NeuronAutoModelForCausalLM" if self.model_class == "auto" else class_path
        return {"class": cls, "kwargs": kwargs, "env": {"NEURON_CC_FLAGS": flags}}

    def _library_call(self, class_path: str, batch_size: int, tp_degree: int, n_positions: int, dtype: str,
                      context_length_estimate: list[int] | None, gqa: str | None,
                      optlevel: str | None, neuron_cc_flags: str | None) -> dict[str, Any]:
        """The plain library, as its README calls it: ``<Arch>ForSampling.from_pretrained(dir, ...)``, a fresh
        NeuronConfig (transformers-neuronx's own default is shared between instances and changed in place)."""
        kwargs: dict[str, Any] = {"batch_size": batch_size, "tp_degree": tp_degree, "n_positions": n_positions,
                                  "amp": _AMP[dtype]}
        if context_length_estimate is not None:
            kwargs["context_length_estimate"] = context_length_estimate
        kwargs["neuron_config"] = {"group_query_attention": gqa} if gqa else {}
        flags = f"{neuron_cc_flags or ''} {f'-O{optlevel}' if optlevel else ''}".strip()
        return {"class": class_path, "kwargs": kwargs, "env": {"NEURON_CC_FLAGS": flags}}


def _lmi(version: str, toolchain: dict[str, str], source: str, **facts: Any) -> NeuronConsumer:
    return NeuronConsumer("lmi-neuronx", version, toolchain, source=source, neuron_cc_flags=IMAGE_NEURON_CC_FLAGS,
                          **facts)


# 0.30+: on an Inferentia host LmiConfigRecommender runs NeuronSmartDefaultUtils (JSD@0.30.0-dlc
# applySmartDefaults → setHeuristicNeuronTPDegree / setHeuristicNeuronMaxRollingBatch) before its own defaults.
_SMART_DEFAULTS: dict[str, Any] = {"absent_tp": "heuristic", "absent_max_rolling_batch": "heuristic",
                                   "vllm_preloads_tnx": "strategy"}


# n2-manifest.json (aws-neuron-sdk) at each SDK release: the libneuronxla paired with the image's
# torch-neuronx (0.5.x is the torch 1.13 line, 2.0.x torch 2.1's).
def _sdk_libneuronxla(version: str) -> dict[str, str]:
    return {"libneuronxla": version}


CONSUMERS: dict[str, NeuronConsumer] = {c.ref: c for c in (
    _lmi("0.26.0", {"neuronx-cc": "2.12.54.0", "transformers-neuronx": "0.9.474", "torch-neuronx": "1.13.1.1.13.0"},
         "djl-serving v0.26.0: DF (SDK 2.16.0), ML L108-151 (CB for every model with rolling batch), H L44-55, TP L51-67",
         default_n_positions=128, model_class="explicit", cb_every_architecture=True, cb_needs_batch_above_one=False,
         optimum_for_static_llama=True, mixtral=False, absent_rolling_batch="disable", cb_cle_must_be_n=True,
         reads_model_loader=False, reads_saturate_infinity=False, reads_strategy=False,  # TP@v0.26.0 lacks them
         sdk_defaults=_sdk_libneuronxla("0.5.669")),  # SDK 2.16.0 (n2-manifest.json@27461f50)
    _lmi("0.27.0", {"neuronx-cc": "2.13.68.0", "transformers-neuronx": "0.10.0.360", "torch-neuronx": "2.1.2.2.1.0"},
         "djl-serving 0.27.0-dlc (049a929b): DF (SDK 2.18.1), ML L115-164, H set_configs, TP L74-97",
         default_n_positions=128, cb_needs_batch_above_one=False, optimum_for_rolling_llama=True,
         absent_rolling_batch="auto", cb_cle_must_be_n=True,
         sdk_defaults=_sdk_libneuronxla("2.0.965"),  # SDK 2.18.1 (n2-manifest.json@710a67a6)
         absent_tp="gpu-count",  # REC@0.27.0-dlc setTensorParallelDegree: "max" → CudaUtils.getGpuCount()
         auto_refused="goes to lmi-dist on the MPI engine in 0.27.0-dlc's recommender (REC L81-106; the image sets "
                      "SERVING_FEATURES=vllm,lmi-dist,tnx), which starts no worker on Inferentia"),
    _lmi("0.28.0", {"neuronx-cc": "2.13.72.0", "transformers-neuronx": "0.10.0.360", "torch-neuronx": "2.1.2.2.1.0"},
         "djl-serving v0.28.0 / 0.28.0-dlc: DF (SDK 2.18.2), ML L147-193, REC (0.28.0-dlc ef2a8c46: absent "
         "rolling_batch is disable, auto is tnx)", default_n_positions=128, absent_rolling_batch="disable",
         cb_cle_must_be_n=True, sdk_defaults=_sdk_libneuronxla("2.0.965"),  # SDK 2.18.2 (n2-manifest.json@d4f19516)
         vllm_preloads_tnx="always",
         strategy_cb_needs_batch_above_one=True,
         absent_tp="gpu-count"),  # REC@v0.28.0 setTensorParallelDegree: "max" → CudaUtils.getGpuCount()
    _lmi("0.29.0", {"neuronx-cc": "2.14.227.0", "transformers-neuronx": "0.11.351", "torch-neuronx": "2.1.2.2.2.0"},
         "djl-serving v0.29.0: DF (SDK 2.19.1), ML get_model_specific_kwargs, REC", default_n_positions=128,
         absent_rolling_batch="disable", vllm_preloads_tnx="always", strategy_cb_needs_batch_above_one=True,
         sdk_defaults=_sdk_libneuronxla("2.0.2335")),  # SDK 2.19.1 (n2-manifest.json@012c0181)
    _lmi("0.30.0", {"neuronx-cc": "2.15.141.0", "transformers-neuronx": "0.12.313", "torch-neuronx": "2.1.2.2.3.1"},
         "djl-serving 0.30.0-dlc (fefd40ec): DF (SDK 2.20.1), ML + NU build_context_length_estimates, REC (auto: vllm "
         "from max_rolling_batch_size 12). on_device_embedding is set only for a config.json with a \"neuron\" "
         "stanza or a partition (neuron_smart_default_utils.py L82-85), which Kiln's layouts do not write",
         default_n_positions=None, cle_buckets=True, vllm_from_batch=12, absent_rolling_batch="auto",
         sdk_defaults=_sdk_libneuronxla("2.0.4986.0"),  # SDK 2.20.1 (n2-manifest.json@4e2e5309)
         **_SMART_DEFAULTS),
    # 0.31: the 0.30 loader and SDK (DF ARGs unchanged); TP L84-168 now defaults properties from NEURON_* variables.
    _lmi("0.31.0", {"neuronx-cc": "2.15.141.0", "transformers-neuronx": "0.12.313", "torch-neuronx": "2.1.2.2.3.1"},
         "djl-serving 0.31.0-dlc (2389a1bb): DF (SDK 2.20.1), ML TNXModelLoader as 0.30, TP get_env_or_default, REC "
         "(auto: vllm from max_rolling_batch_size 12)",
         default_n_positions=None, cle_buckets=True, vllm_from_batch=12, absent_rolling_batch="auto",
         reads_neuron_env=True, vllm_refuses_tnx_loader=True,
         sdk_defaults=_sdk_libneuronxla("2.0.4986.0"),  # SDK 2.20.1, as 0.30
         **_SMART_DEFAULTS),
    *(_lmi(v, {"neuronx-cc": "2.16.372.0", "transformers-neuronx": "0.13.380", "torch-neuronx": "2.1.2.2.4.0",
               "libneuronxla": "2.1.714.0"},
           f"djl-serving {v}-dlc ({commit}): DF (SDK 2.21.1, libneuronxla pinned), ML TNXModelLoader as 0.30, TP "
           f"get_env_or_default, REC (auto: vllm from max_rolling_batch_size 12{note})",
           default_n_positions=None, cle_buckets=True, vllm_from_batch=12, absent_rolling_batch="auto",
           reads_neuron_env=True, **_SMART_DEFAULTS, lmi_dist_is_vllm=bool(note), vllm_refuses_tnx_loader=True)
      for v, commit, note in (("0.32.0", "3d6ad832", ""), ("0.33.0", "8b3b685b", "; lmi-dist removed"),
                              ("0.34.0", "63a6dcf3", "; lmi-dist removed"))),
    NeuronConsumer("transformers-neuronx", "", source="the library's own API (README: <Arch>ForSampling.from_pretrained)"),
)}
DEFAULT_CONSUMER = "transformers-neuronx"  # a spec written with CLI flags (LMI sources must name one)


def detect_lmi_consumer() -> tuple[str, str] | None:
    """``(consumer ref, where it was read)`` when Kiln runs inside an LMI NeuronX image (its telemetry file says
    "<release> inf2" at every release 0.26.0 → 0.34.0), else None.

    A release Kiln has no profile for is a ValidationError: building for a neighbour would compile
    graphs that container cannot load."""
    read = read_lmi_telemetry()
    if read is None:
        return None
    text, path = read
    found = re.match(r"\s*v?(\d+\.\d+\.\d+)\S*\s+inf2\b", text)
    if found is None:
        return None  # another LMI image (the GPU one writes "<release> gpu"), or not LMI's file
    ref = f"lmi-neuronx:{found.group(1)}"
    if ref not in CONSUMERS:
        raise ValidationError(f"this is an LMI NeuronX {found.group(1)} container ({path}), a release Kiln has no "
                              f"profile for; Kiln builds for {', '.join(CONSUMERS)} (pass --consumer to build for "
                              "another container than this one).")
    return ref, f"{path} (an LMI NeuronX image)"


# NEURON_* variables in a consumer's environment (read with --from-env). LMI NeuronX 0.31+ takes these
# TransformerNeuronXProperties defaults from them (TP@0.31.0-dlc L84-168, get_env_or_default; unchanged
# to 0.34.0-dlc): variable → the property. Earlier releases read none of them.
LMI_NEURON_ENV = {
    "NEURON_CONTEXT_LENGTH_ESTIMATE": "context_length_estimate",  # eval'd: a list literal
    "NEURON_ON_DEVICE_EMBEDDING": "on_device_embedding",
    "NEURON_ON_DEV_GENERATION": "on_device_generation",
    "NEURON_SHARD_OVER_SEQUENCE": "shard_over_sequence",
    "NEURON_COMPILATION_WORKER_COUNT": "compilation_worker_count",
    "NEURON_SEQUENCE_PARALLEL": "sequence_parallel",
    "NEURON_MULTI_NODE": "multi_node",
    "NEURON_CC_PIPELINE_FACTOR": "neuron_cc_pipeline_factor",
    "NEURON_QUANT": "neuron_quant",
}
# Variables that provably leave the compiled graphs alone: read by the runtime when loading, or paths.
_RUNTIME_PREFIX = "NEURON_RT_"
_PATH_VARIABLES = {
    "NEURON_SDK_PATH": "the image's library path",
    "NEURON_COMPILE_CACHE_URL": "where the persistent compile cache lives, not what is compiled",
    "NEURON_COMPILED_ARTIFACTS": "NxDI's artifact path (set by the nxdi loader, which Kiln refuses)",
}


# Of those, the ones TNXModelLoader (the loader Kiln builds for) reads, each only when truthy (ML@0.31.0-dlc
# set_neuron_config: `if self.config.shard_over_sequence:` …); the others only TNXVllmModelLoader reads, which
# the handler picks only for speculative decoding under vLLM (H@0.31.0-dlc set_model_loader_class), and
# option.speculative_draft_model is refused.
_TNX_LOADER_READS = {"on_device_embedding", "on_device_generation", "shard_over_sequence"}


def neuron_env_rule(name: str, value: str, consumer: NeuronConsumer) -> tuple[str, str]:
    """What a NEURON_* variable in the consumer's environment does to its graphs: ``("key", option)``
    (Kiln builds it), ``("ignore", why)`` (provably not read when compiling) or ``("refuse", why)``."""
    if name == "NEURON_CC_FLAGS":
        return "key", "neuron_cc_flags"  # the compiler's flags enter the module names (libneuronxla cache)
    if name in LMI_NEURON_ENV:
        prop = LMI_NEURON_ENV[name]
        if not consumer.reads_neuron_env:
            return "ignore", f"{consumer.ref} does not read it (tnx_properties.py reads NEURON_* defaults from 0.31)"
        if prop == "context_length_estimate":
            return "key", "context_length_estimate"
        if prop not in _TNX_LOADER_READS:
            return "ignore", (f"{consumer.ref} reads it as {prop}, which only its speculative-decoding vLLM loader "
                              "uses (TNXVllmModelLoader), not the loader of these graphs")
        if value.strip().lower() != "true":
            # TP get_env_or_default: "true" → True, "false" → False, anything else → None; the loader adds the
            # field only when truthy.
            return "ignore", f"{consumer.ref} reads {value!r} as not true, and adds {prop} only when it is"
        return "refuse", f"{consumer.ref} reads it as option.{prop}, which shapes the graphs"
    if name.startswith(_RUNTIME_PREFIX):
        return "ignore", "a Neuron runtime setting, read when loading, not when compiling"
    if name in _PATH_VARIABLES:
        return "ignore", _PATH_VARIABLES[name]
    return "refuse", ("Kiln does not know that it leaves the compiled graphs unchanged (transformers-neuronx reads "
                      "NEURON_INTERNAL_*, NEURON_VOCAB_PAD_DIVISOR, NEURON_PP_STAGES and others while building them)")


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
