"""Contract: for a JumpStart LMI NeuronX environment, Kiln's neuron plan is the call that LMI release makes.

The expectations here are written from djl-serving's own source (deepjavalibrary/djl-serving), never from
kiln/targets/neuron/consumers.py: `SOURCE` below is a table of per-release facts, each naming the file, the ref
and the lines it comes from, and `lmi_call` walks them the way the container does (Java's LmiConfigRecommender,
then the Python handler's set_configs, TNXModelLoader.set_neuron_config and get_model_specific_kwargs). Each
release is read at its SageMaker DLC branch (the images are built from those; the tags v0.26.0, v0.28.0 and
v0.29.0 sit on them, v0.27.0 does not; 0.30.0-0.34.0 have no tags). 0.34.0 is the last release with the
transformers-neuronx handler (commit 1132e3ab removes it before 0.35.0). The container's environment counts too:
NEURON_CC_FLAGS replaces the image's at every release, and from 0.31 TP takes property defaults from NEURON_*
variables.

Abbreviations in citations (paths under deepjavalibrary/djl-serving):
  H   engines/python/setup/djl_python/transformers_neuronx.py
  ML  engines/python/setup/djl_python/neuron_utils/model_loader.py
  NU  engines/python/setup/djl_python/neuron_utils/utils.py
  SD  engines/python/setup/djl_python/neuron_utils/neuron_smart_default_utils.py
  TP  engines/python/setup/djl_python/properties_manager/tnx_properties.py
  PP  engines/python/setup/djl_python/properties_manager/properties.py
  REC wlm/src/main/java/ai/djl/serving/wlm/LmiConfigRecommender.java
  JSD wlm/src/main/java/ai/djl/serving/wlm/NeuronSmartDefaultUtils.java
  MI  wlm/src/main/java/ai/djl/serving/wlm/ModelInfo.java
  PM  engines/python/src/main/java/ai/djl/python/engine/PyModel.java
  PE  engines/python/src/main/java/ai/djl/python/engine/PyEnv.java
  DF  serving/docker/pytorch-inf2.Dockerfile

Where Kiln's plan disagrees with the source, the case is xfail(strict=True) with the source that says otherwise:
those are Kiln bugs to fix, not expectations to move. Model files are stand-ins (real Llama-2 configs, tiny
safetensors bytes): a dry run reads only the config and the tensor header.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from kiln.presets import PresetRow, load_preset

from ...conftest import run_kiln
from .conftest import LLAMA2, MAX_POSITION_EMBEDDINGS

# --------------------------------------------------------------------------------------------------------------
# The models: Llama-2 7B/13B (+chat) configs as published (no "neuron" stanza: an HF checkpoint, and the config
# Kiln's lmi layout ships unchanged), stand-in weight bytes.
# --------------------------------------------------------------------------------------------------------------





# NeuronCores per instance: 2 NeuronCore-v2 per Inferentia2 chip; inf2.xlarge and inf2.8xlarge have 1 chip,
# inf2.24xlarge 6, inf2.48xlarge 12 (AWS "Amazon EC2 Inf2 Instances" specifications).
NEURON_CORES = {"ml.inf2.xlarge": 2, "ml.inf2.8xlarge": 2, "ml.inf2.24xlarge": 12, "ml.inf2.48xlarge": 24}

# --------------------------------------------------------------------------------------------------------------
# The source table: what each LMI NeuronX release does, with where it says so.
# --------------------------------------------------------------------------------------------------------------

IMAGE_CC_FLAGS = "--logfile /tmp/compile.log --temp-dir=/tmp"
AUTO_CLASS = "transformers_neuronx.NeuronAutoModelForCausalLM"
LLAMA_CLASS = "transformers_neuronx.llama.model.LlamaForSampling"


@dataclass(frozen=True)
class LmiRelease:
    version: str
    ref: str
    cc_flags: str  # the image's ENV NEURON_CC_FLAGS
    rec: str  # which LmiConfigRecommender rolling-batch rule runs: none | 0.27 | 0.28 | 0.30 | 0.33
    py_rolling: tuple[str, ...]  # TNX_SUPPORTED_ROLLING_BATCH_TYPES (anything else but disable becomes auto)
    loader: str  # which H.set_model_loader_class rule: 0.26 | 0.27 | 0.28
    model_class: str  # what TNXModelLoader calls for a safetensors llama checkpoint without a "neuron" stanza
    cb: str  # when ContinuousBatchingConfig is made: rolling | strategy | strategy+batch>1|vllm
    strategy: str  # H.set_configs default rolling_batch_strategy: none | llama | llama+batch>1
    cle_default: str  # CB context_length_estimate default: n | buckets
    user_cle_must_be_n: bool  # a user context_length_estimate != [n] raises under CB (no cache_layout)
    default_n_positions: str  # 128 | smart (min(max_position_embeddings, 4096))
    saturate_infinity: bool  # TP has enable_saturate_infinity
    toolchain: Mapping[str, str]  # DF ARGs: the pip pins of the SDK that compiles (libneuronxla pinned from 0.32)
    reads_neuron_env: bool = False  # TP defaults properties from NEURON_* variables (get_env_or_default, 0.31+)
    vllm_tnx_needs_draft: bool = False  # H.load_model: vllm + model_loader=tnx raises without a draft model (0.31+)
    model_loaders: tuple[str, ...] = ("tnx", "optimum", "vllm")  # TP TnXModelLoaders values (nxdi from 0.32)
    sources: Mapping[str, str] = field(default_factory=dict)


SOURCE = {r.version: r for r in (
    LmiRelease(
        "0.26.0", "0.26.0-dlc (1635512c; tag v0.26.0 b909f121 has the same H/ML/TP/PP)", IMAGE_CC_FLAGS, rec="none",
        py_rolling=("auto",), loader="0.26", model_class=LLAMA_CLASS, cb="rolling", strategy="none", cle_default="n",
        user_cle_must_be_n=True, default_n_positions="128", saturate_infinity=False,
        toolchain={"neuronx-cc": "2.12.54.0", "torch-neuronx": "1.13.1.1.13.0", "transformers-neuronx": "0.9.474"},
        sources={
            "toolchain": "DF@0.26.0-dlc L16-20 (neuronsdk 2.16.0; the same ARGs at tag v0.26.0)",
            "cc_flags": "DF@0.26.0-dlc L52 (v0.26.0 L51)",
            "rec": "no LmiConfigRecommender.java at v0.26.0; PP@v0.26.0 L49 rolling_batch default disable",
            "py_rolling": "TP@v0.26.0 L48, L90-100",
            "loader": "H@v0.26.0 L29, L44-55 (llama uses optimum-neuron unless rolling batch is on)",
            "model_class": "ML@v0.26.0 L68-76, L86-89, L181-188 (explicit <Arch>ForSampling)",
            "batch_size": "H@v0.26.0 L59-61 (rolling batch: batch_size = max_rolling_batch_size)",
            "cb": "ML@v0.26.0 L108-113 (any rolling batch, every model type)",
            "kwargs": "ML@v0.26.0 L125-151 (n_positions [n], context_length_estimate [n], != [n] raises)",
            "dtype": "TP@v0.26.0 L31-34, L55, L144-147 (amp = Dtype name; default fp16)",
            "n_positions": "TP@v0.26.0 L56 (default 128)",
        }),
    LmiRelease(
        "0.27.0", "0.27.0-dlc (049a929b)", IMAGE_CC_FLAGS, rec="0.27", py_rolling=("auto",), loader="0.27",
        model_class=AUTO_CLASS, cb="strategy", strategy="llama", cle_default="n", user_cle_must_be_n=True,
        default_n_positions="128", saturate_infinity=True,
        toolchain={"neuronx-cc": "2.13.68.0", "torch-neuronx": "2.1.2.2.1.0", "transformers-neuronx": "0.10.0.360"},
        sources={
            "toolchain": "DF@0.27.0-dlc L17-21 (neuronsdk 2.18.1)",
            "cc_flags": "DF@0.27.0-dlc L54",
            "rec": "REC@0.27.0-dlc L72-93 (auto + SERVING_FEATURES vllm,lmi-dist -> llama: lmi-dist), L95-114 "
                   "(lmi-dist -> engine MPI); DF@0.27.0-dlc L55 SERVING_FEATURES=vllm,lmi-dist,tnx; PE@0.27.0-dlc "
                   "L340-351 (MPI workers = GPUs / tp = 0 on inf2) and PM@0.27.0-dlc L199-215 (then no worker)",
            "py_rolling": "TP@0.27.0-dlc L77, L137-147",
            "loader": "H@0.27.0-dlc L31-32, L48-77 (llama + rolling batch -> optimum-neuron; model_loader=tnx wins); "
                      "TP@0.27.0-dlc L231-250 (context_length_estimate etc. set model_loader=tnx)",
            "model_class": "ML@0.27.0-dlc set_neuron_model (safetensors, no 'neuron' -> NeuronAutoModelForCausalLM)",
            "strategy": "H@0.27.0-dlc L90-94",
            "cb": "ML@0.27.0-dlc L120-123, L172-183",
        }),
    LmiRelease(
        "0.28.0", "0.28.0-dlc (7805e155)", IMAGE_CC_FLAGS, rec="0.28", py_rolling=("auto", "vllm", "lmi-dist", "tnx"),
        loader="0.28", model_class=AUTO_CLASS, cb="strategy+batch>1|vllm", strategy="llama+batch>1", cle_default="n",
        user_cle_must_be_n=True, default_n_positions="128", saturate_infinity=True,
        toolchain={"neuronx-cc": "2.13.72.0", "torch-neuronx": "2.1.2.2.1.0", "transformers-neuronx": "0.10.0.360"},
        sources={
            "toolchain": "DF@0.28.0-dlc L17-21 (neuronsdk 2.18.2)",
            "cc_flags": "DF@0.28.0-dlc L54",
            "rec": "REC@0.28.0-dlc L81-113 (absent -> disable (ef2a8c46), auto -> tnx), L119-129 (lmi-dist -> MPI)",
            "py_rolling": "TP@0.28.0-dlc L79-82, L146-156",
            "loader": "H@0.28.0-dlc L50, L72-92 (TNXModelLoader unless model_loader says otherwise)",
            "model_class": "ML@0.28.0-dlc L257-263, L318-346 (NeuronAutoModelForCausalLM.from_pretrained)",
            "strategy": "H@0.28.0-dlc L105-111",
            "cb": "ML@0.28.0-dlc L152-164 (... and max_rolling_batch_size > 1, or rolling_batch == vllm)",
            "kwargs": "ML@0.28.0-dlc L200-237",
            "vllm": "H@0.28.0-dlc load_model: rolling_batch=vllm -> TNXModelLoader.load_unwrapped_model() "
                    "(the same kwargs, compiled by to_neuron) handed to vLLM as preloaded_model",
        }),
    LmiRelease(
        "0.29.0", "0.29.0-dlc (58eb48b6)", IMAGE_CC_FLAGS, rec="0.28", py_rolling=("auto", "vllm", "lmi-dist", "tnx"),
        loader="0.28", model_class=AUTO_CLASS, cb="strategy+batch>1|vllm", strategy="llama+batch>1", cle_default="n",
        user_cle_must_be_n=False, default_n_positions="128", saturate_infinity=True,
        toolchain={"neuronx-cc": "2.14.227.0", "torch-neuronx": "2.1.2.2.2.0", "transformers-neuronx": "0.11.351"},
        sources={
            "toolchain": "DF@0.29.0-dlc L17-21 (neuronsdk 2.19.1)",
            "cc_flags": "DF@0.29.0-dlc L54",
            "rec": "REC@0.29.0-dlc L95-130 (absent -> disable, auto -> tnx), L132-136 (lmi-dist -> MPI)",
            "strategy": "H@0.29.0-dlc L107-113",
            "cb": "ML@0.29.0-dlc L157-169",
            "kwargs": "ML@0.29.0-dlc L205-243 (a user value != [n] raises only with cache_layout BSH)",
            "vllm": "H@0.29.0-dlc L177-184 (rolling_batch=vllm -> load_unwrapped_model())",
        }),
    LmiRelease(
        "0.30.0", "0.30.0-dlc (fefd40ec)", IMAGE_CC_FLAGS, rec="0.30", py_rolling=("auto", "vllm", "lmi-dist", "tnx"),
        loader="0.28", model_class=AUTO_CLASS, cb="strategy", strategy="llama+batch>1", cle_default="buckets",
        user_cle_must_be_n=False, default_n_positions="smart", saturate_infinity=True,
        toolchain={"neuronx-cc": "2.15.141.0", "torch-neuronx": "2.1.2.2.3.1", "transformers-neuronx": "0.12.313"},
        sources={
            "toolchain": "DF@0.30.0-dlc L18-22 (neuronsdk 2.20.1)",
            "cc_flags": "DF@0.30.0-dlc L57",
            "rec": "REC@0.30.0-dlc L36-45 (smart defaults before tp), L47-82 (absent -> auto; auto -> vllm if "
                   "max_rolling_batch_size >= 12 else tnx)",
            "strategy": "H@0.30.0-dlc L170-176",
            "cb": "ML@0.30.0-dlc L162-183",
            "kwargs": "ML@0.30.0-dlc L223-267; NU@0.30.0-dlc L49 (INITIAL_BUCKET_SIZE 1024), L100-119",
            "on_device_embedding": "SD@0.30.0-dlc L82-85 (set only when config.json has a 'neuron' stanza or when "
                                   "partitioning); H@0.30.0-dlc L155-163 (is_partition False when serving)",
            "n_positions": "TP@0.30.0-dlc L90 (None); JSD@0.30.0-dlc applySmartDefaults / SD@0.30.0-dlc L72-80 "
                           "(min(max_position_embeddings, 4096))",
            "max_rolling_batch_size": "JSD@0.30.0-dlc L54-67, L289-303 (absent: a memory heuristic, run by REC "
                                      "L40 after setRollingBatch L38 decided auto with '1'; REC L43 "
                                      "setRollingBatchSize only if JSD set nothing) -- jsd_max_rolling_batch",
            "vllm": "H@0.30.0-dlc load_model (rolling_batch=vllm -> load_unwrapped_model())",
        }),
    # 0.31-0.34: TNXModelLoader (ML) is the 0.30 one at every branch (git diff 0.30.0-dlc 0.34.0-dlc adds only
    # TNXVllmModelLoader, NxdiVllmModelLoader and imports); what changes is around it.
    LmiRelease(
        "0.31.0", "0.31.0-dlc (2389a1bb)", IMAGE_CC_FLAGS, rec="0.30", py_rolling=("auto", "vllm", "lmi-dist", "tnx"),
        loader="0.28", model_class=AUTO_CLASS, cb="strategy", strategy="llama+batch>1", cle_default="buckets",
        user_cle_must_be_n=False, default_n_positions="smart", saturate_infinity=True,
        toolchain={"neuronx-cc": "2.15.141.0", "torch-neuronx": "2.1.2.2.3.1", "transformers-neuronx": "0.12.313"},
        reads_neuron_env=True, vllm_tnx_needs_draft=True,
        sources={
            "toolchain": "DF@0.31.0-dlc L18-22 (neuronsdk 2.20.1, the 0.30 ARGs; libneuronxla not pinned)",
            "cc_flags": "DF@0.31.0-dlc L57",
            "rec": "REC@0.31.0-dlc L58-82 (absent -> auto; auto -> vllm if max_rolling_batch_size >= 12 else tnx, "
                   "SERVING_FEATURES=vllm,lmi-dist,tnx at DF L58), L85-90 (lmi-dist -> MPI), L125-144 (absent "
                   "max_rolling_batch_size: 256 for vllm, else 32); the only change from 0.30 is setPropertiesForLora",
            "py_rolling": "TP@0.31.0-dlc L78-81, L198-208",
            "loader": "H@0.31.0-dlc L66 (TNXModelLoader unless set), L111-146 (model_loader=tnx: TNXVllmModelLoader "
                      "only with speculative_draft_model + vllm), L314-327 (vllm + model_loader=tnx without a draft "
                      "model raises ValueError 'Preloaded tnx model is only supported for speculative decoding')",
            "strategy": "H@0.31.0-dlc L177-183",
            "cb": "ML@0.31.0-dlc L164-175",
            "kwargs": "ML@0.31.0-dlc L225-269; NU@0.31.0-dlc L48, L99-118 (build_context_length_estimates as 0.30)",
            "neuron_env": "TP@0.31.0-dlc L84-99 get_env_or_default (bool: 'true'/'false' any case, else None; list: "
                          "eval), L113-115 context_length_estimate <- NEURON_CONTEXT_LENGTH_ESTIMATE (a default "
                          "factory: option.context_length_estimate wins, and pydantic does not validate defaults), "
                          "L142-168 on_device_embedding, on_device_generation, shard_over_sequence, "
                          "compilation_worker_count, sequence_parallel, multi_node, neuron_cc_pipeline_factor, "
                          "neuron_quant <- NEURON_*; ML@0.31.0-dlc L192-194 (shard_over_sequence), L216-218 "
                          "(on_device_embedding), L219-222 (on_device_generation.keys(): True has none -> "
                          "AttributeError); the last five reach only TNXVllmModelLoader (ML L776-889)",
            "n_positions": "TP@0.31.0-dlc L108 (None); SD@0.31.0-dlc L72-80 (min(max_position_embeddings, 4096)); "
                           "L83-85 on_device_embedding only with a 'neuron' stanza or when partitioning",
            "vllm": "H@0.31.0-dlc L324-325 (rolling_batch=vllm, model_loader unset -> load_unwrapped_model())",
        }),
    LmiRelease(
        "0.32.0", "0.32.0-dlc (3d6ad832)", IMAGE_CC_FLAGS, rec="0.30", py_rolling=("auto", "vllm", "lmi-dist", "tnx"),
        loader="0.28", model_class=AUTO_CLASS, cb="strategy", strategy="llama+batch>1", cle_default="buckets",
        user_cle_must_be_n=False, default_n_positions="smart", saturate_infinity=True,
        toolchain={"neuronx-cc": "2.16.372.0", "torch-neuronx": "2.1.2.2.4.0", "transformers-neuronx": "0.13.380",
                   "libneuronxla": "2.1.714.0"},
        reads_neuron_env=True, vllm_tnx_needs_draft=True, model_loaders=("tnx", "optimum", "vllm", "nxdi"),
        sources={
            "toolchain": "DF@0.32.0-dlc L22-30 (neuronsdk 2.21.1; libneuronxla pinned, installed at L102)",
            "cc_flags": "DF@0.32.0-dlc L65",
            "rec": "REC@0.32.0-dlc L59-83 (as 0.31; SERVING_FEATURES=vllm,lmi-dist,tnx at DF L66), L86-91 "
                   "(lmi-dist -> MPI); REC always writes option.rolling_batch for a text-generation config, so "
                   "the Python defaults new in 0.32 (PP@0.32.0-dlc L51 rolling_batch=auto, SD@0.32.0-dlc L75-76 "
                   "rolling_batch=auto when absent) are not reached by a Llama checkpoint",
            "loader": "H@0.32.0-dlc L111-151 (model_loader=nxdi -> NxdiVllmModelLoader, L141-144), L316-331 "
                      "(vllm + vllm|nxdi: loading deferred to vLLM; vllm + tnx without a draft raises); TP@0.32.0-dlc "
                      "L55-59 (TnXModelLoaders gains nxdi)",
            "strategy": "H@0.32.0-dlc L182-188",
            "cb": "ML@0.32.0-dlc L166-177",
            "kwargs": "ML@0.32.0-dlc L227-271; NU@0.32.0-dlc L99-118",
            "neuron_env": "TP@0.32.0-dlc L85-100, L114-116, L143-169 (as 0.31); ML@0.32.0-dlc L194-196, L218-225",
            "vllm": "H@0.32.0-dlc L328-329",
        }),
    LmiRelease(
        "0.33.0", "0.33.0-dlc (8b3b685b)", IMAGE_CC_FLAGS, rec="0.33", py_rolling=("auto", "vllm", "lmi-dist", "tnx"),
        loader="0.28", model_class=AUTO_CLASS, cb="strategy", strategy="llama+batch>1", cle_default="buckets",
        user_cle_must_be_n=False, default_n_positions="smart", saturate_infinity=True,
        toolchain={"neuronx-cc": "2.16.372.0", "torch-neuronx": "2.1.2.2.4.0", "transformers-neuronx": "0.13.380",
                   "libneuronxla": "2.1.714.0"},
        reads_neuron_env=True, vllm_tnx_needs_draft=True, model_loaders=("tnx", "optimum", "vllm", "nxdi"),
        sources={
            "toolchain": "DF@0.33.0-dlc L22-30 (the 0.32 ARGs)",
            "cc_flags": "DF@0.33.0-dlc L65",
            "rec": "REC@0.33.0-dlc L57-83: lmi-dist removed -- option.rolling_batch=lmi-dist is overridden to vllm "
                   "(mpi_mode false, L58-64), auto -> vllm if max_rolling_batch_size >= 12 else tnx (L70-76); "
                   "L85-90 MPI only for trtllm; L125-135 (absent max_rolling_batch_size: 256 for vllm); DF@0.33.0-dlc "
                   "L66 SERVING_FEATURES=vllm,tnx",
            "loader": "H@0.33.0-dlc (unchanged from 0.32.0-dlc)",
            "kwargs": "ML@0.33.0-dlc (unchanged from 0.32.0-dlc: L227-271)",
            "neuron_env": "TP@0.33.0-dlc (unchanged from 0.32.0-dlc)",
            "vllm": "H@0.33.0-dlc L328-329: the vllm that lmi-dist becomes is compiled by load_unwrapped_model()",
        }),
    LmiRelease(
        "0.34.0", "0.34.0-dlc (63a6dcf3)", IMAGE_CC_FLAGS, rec="0.33", py_rolling=("auto", "vllm", "lmi-dist", "tnx"),
        loader="0.28", model_class=AUTO_CLASS, cb="strategy", strategy="llama+batch>1", cle_default="buckets",
        user_cle_must_be_n=False, default_n_positions="smart", saturate_infinity=True,
        toolchain={"neuronx-cc": "2.16.372.0", "torch-neuronx": "2.1.2.2.4.0", "transformers-neuronx": "0.13.380",
                   "libneuronxla": "2.1.714.0"},
        reads_neuron_env=True, vllm_tnx_needs_draft=True, model_loaders=("tnx", "optimum", "vllm", "nxdi"),
        sources={
            "toolchain": "DF@0.34.0-dlc L22-30 (the 0.32 ARGs)",
            "cc_flags": "DF@0.34.0-dlc L65",
            "rec": "REC@0.34.0-dlc L58-86 (as 0.33; a trtllm feature branch after vllm, L80-81, not reached with "
                   "SERVING_FEATURES=vllm,tnx at DF L66); setPropertiesForStatefulSessions (L171-184) sets workers only",
            "loader": "H@0.34.0-dlc (unchanged from 0.32.0-dlc); the last release with the handler: commit 1132e3ab "
                      "removes it before 0.35.0",
            "kwargs": "ML@0.34.0-dlc (unchanged from 0.32.0-dlc)",
            "neuron_env": "TP@0.34.0-dlc (unchanged from 0.32.0-dlc)",
        }),
)}
RELEASES = tuple(SOURCE)

# Facts every release shares.
COMMON_SOURCES = {
    "option_env": "MI@0.29.0-dlc L834-845: OPTION_X -> option.x (the key lower-cased, the value as written)",
    "dtype": "TP Dtype{f32='fp32', f16='fp16', bf16='bf16'}, dtype default f16, set_amp_value amp = dtype.name "
             "(TP@0.29.0-dlc L32-35, L90, L219-222; the same at every release): only fp32|fp16|bf16 as written",
    "tp": "PM@0.29.0-dlc L126-131 ('max' -> the NeuronCores, else Integer.parseInt); MI@0.29.0-dlc L1046-1066 "
          "(NeuronCores / tp == 0 -> 'Neuron devices are not enough'); no tp validator in TP or PP",
    "batch_size": "TP@0.29.0-dlc L159-170 validate_batch_size: batch_size > 1 with rolling batch raises; "
                  "PP@0.29.0-dlc L56 batch_size default 1 (used as is when rolling batch is disabled)",
    "cc_appends": "TP@0.29.0-dlc L119-138: neuron_optimize_level -> ' -ON', enable_mixed_precision_accumulation "
                  "and enable_saturate_infinity append their flag whenever the option is given (even false)",
    "cc_env": "DF ENV NEURON_CC_FLAGS is the image's default, which a container environment variable of the same "
              "name replaces; TP's validators append to os.environ['NEURON_CC_FLAGS'] (TP@0.31.0-dlc L170-189) and "
              "transformers-neuronx compiles with it (aws-neuron/transformers-neuronx@1ade6d7 "
              "src/transformers_neuronx/compiler.py L89-91 get_compiler_flags)",
    "gqa": "ML@0.29.0-dlc set_neuron_config: group_query_attention passed when set",
    "mpi": "PE getMpiWorkers = GPUs / tp (0 on inf2) -> PM 'GPU devices are not enough' (lmi-dist/trtllm run MPI)",
    "model_loader_vllm": "H@0.28.0-dlc L87-92 .. H@0.34.0-dlc L146-151: model_loader=vllm sets no loader class "
                         "(TNXModelLoader stays, H L66), and only rolling_batch=vllm defers loading to vLLM "
                         "(H@0.31.0-dlc L314-316); an invalid TnXModelLoaders value fails TP validation",
    "vocab_pad": "aws-neuron/transformers-neuronx@1ade6d7 src/transformers_neuronx/decoder.py L355 (since 6f4c23f): "
                 "the lm_head is padded to a multiple of int(NEURON_VOCAB_PAD_DIVISOR or tp_degree) -- read by the "
                 "library itself, so at every release",
}


@dataclass(frozen=True)
class Refusal:
    """The release does not compile this configuration with transformers-neuronx; `words`: one names why."""

    why: str
    words: tuple[str, ...]


def build_context_length_estimates(n: int) -> list[int]:
    """NU@0.30.0-dlc L100-119, as written there (NU@0.31.0-dlc .. 0.34.0-dlc L99-118, unchanged)."""
    if n <= 128:
        return [n]
    estimates, bucket = [128], 1024
    while n > bucket:
        estimates.append(bucket)
        bucket *= 2
    return estimates + [n]


# Options lmi_call models; anything else in a case is a test-writing mistake, not a silent default.
_MODELLED = {"model_id", "entrypoint", "rolling_batch", "n_positions", "max_rolling_batch_size", "tensor_parallel_degree",
             "dtype", "batch_size", "context_length_estimate", "neuron_optimize_level", "model_loader",
             "enable_mixed_precision_accumulation", "enable_saturate_infinity", "group_query_attention"}
# NEURON_* variables lmi_call models: the image's compiler flags, and what TP@0.31.0-dlc L113-168 reads.
_NEURON_MODELLED = {"NEURON_CC_FLAGS", "NEURON_CONTEXT_LENGTH_ESTIMATE", "NEURON_ON_DEVICE_EMBEDDING",
                    "NEURON_ON_DEV_GENERATION", "NEURON_SHARD_OVER_SEQUENCE", "NEURON_COMPILATION_WORKER_COUNT",
                    "NEURON_SEQUENCE_PARALLEL", "NEURON_MULTI_NODE", "NEURON_CC_PIPELINE_FACTOR", "NEURON_QUANT"}


def _named(value: str) -> tuple[str, ...]:
    """How an error names a bad value: quoted, or after '=' (never a bare substring such as '0')."""
    return (f"'{value}'", f"={value}")


def _env_bool(env: Mapping[str, str], name: str) -> bool | None:
    """TP@0.31.0-dlc L84-99 get_env_or_default(convert_type=bool): 'true'/'false' in any case, anything else None."""
    value = env.get(name)
    return None if value is None else {"true": True, "false": False}.get(value.lower())


def jsd_max_rolling_batch(model_id: str, n: int, tp: int) -> int | None:
    """JSD@0.30.0-dlc setHeuristicNeuronMaxRollingBatch (L289-303; JSD unchanged to 0.34.0-dlc), run by REC's
    setHeuristicDefaults on a Neuron host -- after setRollingBatch, before setRollingBatchSize (REC@0.30.0-dlc
    L38-43) -- for the config llama2_cache writes (LmiUtils@0.30.0-dlc L597-612 and L656-658 with its values; it
    has no intermediate_size, which Gson leaves 0). None: the heuristic sets nothing (<= 0)."""
    dims = LLAMA2[model_id.split("Llama-2-")[1].split("-")[0]]
    hidden, heads, kv, layers, vocab, intermediate = (dims["hidden_size"], dims["num_attention_heads"],
                                                      dims["num_key_value_heads"], 32, 32000, 0)
    head_dim = heads * kv  # as written there
    embeddings = vocab * hidden
    per_layer = head_dim * hidden * kv * 3 + hidden * hidden + hidden * intermediate * 3 + 2 * hidden
    params = embeddings + layers * per_layer + hidden + embeddings
    model_gb = 2 * params / 1e9  # paramBytes 2 without option.quantize (L83-84)
    seq_gb = n * hidden * layers * 2 * 0.95 / (1024.0 ** 3)  # L85-88
    m = min(int((tp * 16.0 - model_gb * (1.0 + (tp * 2 - 2) / 100.0)) / seq_gb), 32)  # L206-211, L102-104
    if m != 0 and (m & (m - 1)) == 0:  # getMaxPowerOf2, L183-193
        power = m
    else:
        power = 1
        while power < m:
            power *= 2
        power //= 2
    return power if power > 0 else None


def lmi_call(rel: LmiRelease, env: Mapping[str, str], cores: int) -> dict[str, Any] | Refusal:
    """The transformers-neuronx call a Llama-2 checkpoint gets from LMI NeuronX `rel` started with `env`."""
    opt = {k[len("OPTION_"):].lower(): v for k, v in env.items() if k.startswith("OPTION_") and v}
    if "HF_MODEL_ID" in env:
        opt.setdefault("model_id", env["HF_MODEL_ID"])
    unknown = set(opt) - _MODELLED - {"kiln_consumer"}
    assert not unknown, f"lmi_call does not model {unknown}"
    unknown = {k for k in env if k.startswith("NEURON_")} - _NEURON_MODELLED
    assert not unknown, f"lmi_call does not model {unknown}"

    # Java: LmiConfigRecommender's rolling batch (SOURCE[*].sources["rec"]).
    rb = opt.get("rolling_batch")
    if rel.rec == "none":
        rb = rb or "disable"
    elif rel.rec == "0.27":
        if rb in (None, "auto"):
            return Refusal("REC maps llama to lmi-dist under SERVING_FEATURES=vllm,lmi-dist,tnx (engine MPI, no worker "
                           "on inf2); at the v0.27.0 tag auto stays auto and llama goes to optimum-neuron",
                           ("optimum", "lmi-dist", "MPI"))
    elif rel.rec == "0.28":
        rb = rb or "disable"
        rb = "tnx" if rb == "auto" else rb
    else:  # 0.30, 0.33
        if rel.rec == "0.33" and rb == "lmi-dist":
            rb = "vllm"  # REC@0.33.0-dlc L58-64: lmi-dist removed, overridden to vllm (no MPI)
        rb = rb or "auto"
        if rb == "auto":
            rb = "vllm" if int(opt.get("max_rolling_batch_size", "1")) >= 12 else "tnx"
    if rel.rec != "none" and rb in ("lmi-dist", "trtllm"):
        return Refusal(f"rolling_batch={rb} runs MPI, which has no workers on inf2", (rb, "MPI"))

    # Java: tensor parallel degree (COMMON_SOURCES["tp"]).
    tp_text = opt["tensor_parallel_degree"]
    try:
        tp = cores if tp_text == "max" else int(tp_text)
    except ValueError:
        return Refusal(f"tensor_parallel_degree={tp_text!r} is not an integer (Integer.parseInt)", _named(tp_text))
    if tp <= 0:
        return Refusal(f"tensor_parallel_degree={tp} is no shard count transformers-neuronx can compile", _named(tp_text))
    if cores // tp == 0:
        return Refusal(f"tp {tp} > {cores} NeuronCores", _named(str(tp)))

    # Python: TransformerNeuronXProperties.
    if rb != "disable" and rb not in rel.py_rolling:
        rb = "auto"
    dtype = opt.get("dtype", "fp16")
    if dtype not in ("fp32", "fp16", "bf16"):
        return Refusal(f"dtype {dtype!r} is not a Dtype value", _named(dtype))
    amp = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}[dtype]
    if "n_positions" in opt:
        n = int(opt["n_positions"])
    else:
        n = 128 if rel.default_n_positions == "128" else min(MAX_POSITION_EMBEDDINGS, 4096)
    # An absent max_rolling_batch_size: from 0.30 JSD's heuristic first (after the rolling batch is decided), then
    # REC setRollingBatchSize (0.28+): 32 for tnx, 256 for vllm; PP default 32 before.
    mrbs_default = "256" if rb == "vllm" and rel.rec in ("0.28", "0.30", "0.33") else "32"
    if rel.rec in ("0.30", "0.33"):
        mrbs_default = str(jsd_max_rolling_batch(opt["model_id"], n, tp) or mrbs_default)
    mrbs = int(opt.get("max_rolling_batch_size", mrbs_default))
    batch_size = int(opt.get("batch_size", "1"))
    if batch_size > 1 and rb != "disable":
        return Refusal("batch_size > 1 with rolling batch: dynamic and rolling batching cannot both be on",
                       ("batch_size", "batch size"))
    if rb != "disable":
        batch_size = mrbs
    user_cle: list[int] | None = None
    if "context_length_estimate" in opt:
        user_cle = [int(x) for x in opt["context_length_estimate"].split(",")]
    elif rel.reads_neuron_env and "NEURON_CONTEXT_LENGTH_ESTIMATE" in env:
        # TP@0.31.0-dlc L113-115: eval() of the variable, an unvalidated default (the option, when given, wins).
        user_cle = ast.literal_eval(env["NEURON_CONTEXT_LENGTH_ESTIMATE"])
        assert isinstance(user_cle, list) and all(type(x) is int for x in user_cle), "lmi_call models list values only"
    if rel.reads_neuron_env:
        for name in ("NEURON_COMPILATION_WORKER_COUNT", "NEURON_CC_PIPELINE_FACTOR"):  # convert_type=int
            if name in env and not env[name].strip().lstrip("+-").isdigit():
                return Refusal(f"{name}={env[name]!r}: int() raises in TP's default factory", (name,))
    model_loader = opt.get("model_loader")
    if rel.loader == "0.27" and model_loader is None and "context_length_estimate" in opt:
        model_loader = "tnx"  # TP@0.27.0-dlc L231-250

    # Python: H.set_model_loader_class and H.load_model.
    if rel.loader == "0.26" and rb == "disable":
        return Refusal("llama without rolling batch loads through optimum-neuron", ("optimum",))
    if rel.loader == "0.27" and model_loader != "tnx" and (model_loader == "optimum" or rb != "disable"):
        return Refusal("llama with rolling batch loads through optimum-neuron", ("optimum",))
    if rel.loader == "0.28":
        if model_loader is not None and model_loader not in rel.model_loaders:
            return Refusal(f"model_loader={model_loader} is no TnXModelLoaders value at {rel.version}", (model_loader,))
        if model_loader in ("optimum", "nxdi") or (model_loader == "vllm" and rb == "vllm"):
            return Refusal(f"model_loader={model_loader} loads without TNXModelLoader", (model_loader,))
    if rel.vllm_tnx_needs_draft and rb == "vllm" and model_loader == "tnx":
        return Refusal("rolling_batch=vllm with model_loader=tnx raises without a speculative draft model",
                       ("model_loader", "tnx"))

    # Python: strategy and continuous batching.
    if rel.strategy == "llama":
        strategy_cb = rb != "disable"
    elif rel.strategy == "llama+batch>1":
        strategy_cb = rb != "disable" and mrbs > 1
    else:
        strategy_cb = False
    if rel.cb == "rolling":
        cb = rb != "disable"
    elif rel.cb == "strategy":
        cb = strategy_cb
    else:
        cb = (strategy_cb and mrbs > 1) or rb == "vllm"

    # Python: TNXModelLoader.set_neuron_config and get_model_specific_kwargs.
    kwargs: dict[str, Any] = {"batch_size": batch_size, "amp": amp, "tp_degree": tp, "n_positions": n}
    if user_cle is not None:
        kwargs["context_length_estimate"] = user_cle
    neuron_config: dict[str, Any] = {}
    if cb:
        kwargs["n_positions"] = [n]
        neuron_config["continuous_batching"] = {"batch_size_for_shared_caches": mrbs}
        if user_cle is None:
            kwargs["context_length_estimate"] = [n] if rel.cle_default == "n" else build_context_length_estimates(n)
        elif user_cle != [n] and rel.user_cle_must_be_n:
            return Refusal(f"context_length_estimate {user_cle} must equal [n_positions] under continuous batching",
                           ("context_length_estimate",))
    if "group_query_attention" in opt:
        neuron_config["group_query_attention"] = opt["group_query_attention"]
    if rel.reads_neuron_env:  # SOURCE[*].sources["neuron_env"]
        if _env_bool(env, "NEURON_SHARD_OVER_SEQUENCE"):
            neuron_config["shard_over_sequence"] = True
        if _env_bool(env, "NEURON_ON_DEVICE_EMBEDDING"):
            neuron_config["on_device_embedding"] = True
        if _env_bool(env, "NEURON_ON_DEV_GENERATION"):
            return Refusal("NEURON_ON_DEV_GENERATION=true makes on_device_generation True, and set_neuron_config "
                           "calls .keys() on it (AttributeError)", ("NEURON_ON_DEV_GENERATION",))
    kwargs["neuron_config"] = neuron_config

    flags = env.get("NEURON_CC_FLAGS", rel.cc_flags)  # COMMON_SOURCES["cc_env"]
    if "neuron_optimize_level" in opt:
        flags += f" -O{int(opt['neuron_optimize_level'])}"
    if "enable_mixed_precision_accumulation" in opt:
        flags += " --enable-mixed-precision-accumulation"
    if "enable_saturate_infinity" in opt and rel.saturate_infinity:
        flags += " --enable-saturate-infinity"
    return {"class": rel.model_class, "kwargs": kwargs, "env": {"NEURON_CC_FLAGS": flags}}


# --------------------------------------------------------------------------------------------------------------
# Running Kiln.
# --------------------------------------------------------------------------------------------------------------

ROWS = load_preset("jumpstart-llama2-neuron")


@pytest.fixture(autouse=True)
def _no_ambient_neuron_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kiln runs with os.environ plus a case's env: a NEURON_* variable of the developer's is no part of a case."""
    for name in list(os.environ):
        if name.startswith("NEURON_"):
            monkeypatch.delenv(name)


def _plan(env: Mapping[str, str], *args: str) -> tuple[int, str, dict[str, Any] | None]:
    r = run_kiln("build", *args, "--dry-run", "--json", env=dict(env))
    assert "Traceback" not in r.stderr, r.stderr
    doc = json.loads(r.stdout) if r.returncode == 0 else None
    return r.returncode, r.stderr.strip(), doc


def _engine_invocation(doc: dict[str, Any]) -> dict[str, Any]:
    step = doc["steps"][0]
    assert step["name"] == "engine", doc["steps"]
    return step["invocation"]


def _check(expected: dict[str, Any] | Refusal, env: Mapping[str, str], *args: str) -> None:
    rc, err, doc = _plan(env, *args)
    if isinstance(expected, Refusal):
        assert rc == 2, f"expected a refusal ({expected.why}); Kiln planned {doc and _engine_invocation(doc)}"
        assert "\n" not in err and err.startswith("kiln: error: "), err
        assert any(w in err for w in expected.words), (expected.why, expected.words, err)
        return
    assert rc == 0, err
    got = _engine_invocation(doc)
    # Field by field first, so a failure names the field; then the whole call (nothing extra either).
    assert got["class"] == expected["class"]
    assert got["env"] == expected["env"], "NEURON_CC_FLAGS"
    for name, value in expected["kwargs"].items():
        assert name in got["kwargs"], f"kwarg {name} missing"
        assert got["kwargs"][name] == value and type(got["kwargs"][name]) is type(value), (name, got["kwargs"][name], value)
    assert got == expected


def _row_args(row: PresetRow, release: str) -> list[str]:
    return ["--from-env", "--consumer", f"lmi-neuronx:{release}", "--instance-type", row.instance_type]


# --------------------------------------------------------------------------------------------------------------
# Known disagreements (Kiln bugs, each with the source that says otherwise).
# --------------------------------------------------------------------------------------------------------------

def _row_disagreement(release: str) -> str | None:
    """A known Kiln bug every JumpStart row hits at `release` (an xfail reason), or None: none at present."""
    return None


def _row_cases() -> list[Any]:
    cases = []
    for row in ROWS:
        for release in RELEASES:
            reason = _row_disagreement(release)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            cases.append(pytest.param(row, release, marks=marks, id=f"{row.id}@{release}"))
    return cases


# --------------------------------------------------------------------------------------------------------------
# The source table itself: a few hand-computed calls, so a slip in lmi_call cannot hide behind Kiln agreeing.
# --------------------------------------------------------------------------------------------------------------

ROW_ENV_7B_4096x4_TP8 = {
    "HF_MODEL_ID": "meta-llama/Llama-2-7b-hf", "OPTION_ENTRYPOINT": "djl_python.transformers_neuronx",
    "OPTION_ROLLING_BATCH": "auto", "OPTION_N_POSITIONS": "4096", "OPTION_MAX_ROLLING_BATCH_SIZE": "4",
    "OPTION_TENSOR_PARALLEL_DEGREE": "8", "OPTION_DTYPE": "fp16",
}


def test_the_source_table_gives_the_hand_read_calls() -> None:
    flags = {"NEURON_CC_FLAGS": "--logfile /tmp/compile.log --temp-dir=/tmp"}
    cb4 = {"continuous_batching": {"batch_size_for_shared_caches": 4}}
    env = ROW_ENV_7B_4096x4_TP8
    # 0.26: explicit class, CB for any rolling batch, estimates [n] (ML@v0.26.0 L108-151).
    assert lmi_call(SOURCE["0.26.0"], env, 12) == {"class": LLAMA_CLASS, "env": flags, "kwargs": {
        "batch_size": 4, "amp": "f16", "tp_degree": 8, "n_positions": [4096], "context_length_estimate": [4096],
        "neuron_config": cb4}}
    # 0.26 at max_rolling_batch_size 1 is still continuous batching (no batch>1 clause until 0.28).
    one = dict(env, OPTION_MAX_ROLLING_BATCH_SIZE="1", OPTION_N_POSITIONS="1024", OPTION_TENSOR_PARALLEL_DEGREE="2")
    assert lmi_call(SOURCE["0.26.0"], one, 2)["kwargs"] == {  # type: ignore[index]
        "batch_size": 1, "amp": "f16", "tp_degree": 2, "n_positions": [1024], "context_length_estimate": [1024],
        "neuron_config": {"continuous_batching": {"batch_size_for_shared_caches": 1}}}
    # 0.27: llama with rolling batch never reaches TNXModelLoader.
    assert isinstance(lmi_call(SOURCE["0.27.0"], env, 12), Refusal)
    # 0.29: NeuronAuto, CB only above batch 1.
    assert lmi_call(SOURCE["0.29.0"], env, 12) == {"class": AUTO_CLASS, "env": flags, "kwargs": {
        "batch_size": 4, "amp": "f16", "tp_degree": 8, "n_positions": [4096], "context_length_estimate": [4096],
        "neuron_config": cb4}}
    assert lmi_call(SOURCE["0.29.0"], one, 2) == {"class": AUTO_CLASS, "env": flags, "kwargs": {
        "batch_size": 1, "amp": "f16", "tp_degree": 2, "n_positions": 1024, "neuron_config": {}}}
    # 0.30: bucketed estimates; 2048 -> [128, 1024, 2048]; 4096 -> [128, 1024, 2048, 4096].
    assert build_context_length_estimates(4096) == [128, 1024, 2048, 4096]
    assert build_context_length_estimates(2048) == [128, 1024, 2048]
    assert build_context_length_estimates(1024) == [128, 1024]
    assert build_context_length_estimates(100) == [100]
    assert lmi_call(SOURCE["0.30.0"], dict(env, OPTION_N_POSITIONS="2048"), 12)["kwargs"][  # type: ignore[index]
        "context_length_estimate"] == [128, 1024, 2048]
    # 0.31+: NEURON_CONTEXT_LENGTH_ESTIMATE (eval'd) is context_length_estimate's default; the option wins.
    def call(release: str, e: Mapping[str, str]) -> dict[str, Any]:
        got = lmi_call(SOURCE[release], e, 12)
        assert isinstance(got, dict), got
        return got

    cle_env = dict(env, NEURON_CONTEXT_LENGTH_ESTIMATE="[1024, 4096]")
    assert call("0.31.0", cle_env) == {"class": AUTO_CLASS, "env": flags, "kwargs": {
        "batch_size": 4, "amp": "f16", "tp_degree": 8, "n_positions": [4096], "context_length_estimate": [1024, 4096],
        "neuron_config": cb4}}
    assert call("0.30.0", cle_env) == call("0.30.0", env)  # 0.30 reads no NEURON_* variable
    assert call("0.31.0", dict(cle_env, OPTION_CONTEXT_LENGTH_ESTIMATE="2048,4096"))["kwargs"][
        "context_length_estimate"] == [2048, 4096]
    assert call("0.34.0", dict(cle_env, OPTION_ROLLING_BATCH="disable"))["kwargs"] == {
        "batch_size": 1, "amp": "f16", "tp_degree": 8, "n_positions": 4096, "context_length_estimate": [1024, 4096],
        "neuron_config": {}}
    # get_env_or_default(bool): 'true' in any case -> True, 'false' -> False, anything else -> None.
    assert call("0.31.0", dict(env, NEURON_ON_DEVICE_EMBEDDING="True"))["kwargs"]["neuron_config"] == {
        **cb4, "on_device_embedding": True}
    assert call("0.32.0", dict(env, NEURON_SHARD_OVER_SEQUENCE="true"))["kwargs"]["neuron_config"] == {
        **cb4, "shard_over_sequence": True}
    assert call("0.31.0", dict(env, NEURON_ON_DEVICE_EMBEDDING="1")) == call("0.31.0", env)
    assert call("0.31.0", dict(env, NEURON_ON_DEVICE_EMBEDDING="false")) == call("0.31.0", env)
    assert isinstance(lmi_call(SOURCE["0.31.0"], dict(env, NEURON_ON_DEV_GENERATION="true"), 12), Refusal)
    assert call("0.30.0", dict(env, NEURON_ON_DEV_GENERATION="true")) == call("0.30.0", env)
    # NEURON_CC_FLAGS replaces the image's value (any release); the options append to it.
    assert call("0.29.0", dict(env, NEURON_CC_FLAGS="--x", OPTION_NEURON_OPTIMIZE_LEVEL="2"))["env"] == {
        "NEURON_CC_FLAGS": "--x -O2"}
    # 0.31+: auto from max_rolling_batch_size 12 is vllm (load_unwrapped_model); with model_loader=tnx it raises.
    big = dict(env, OPTION_MAX_ROLLING_BATCH_SIZE="16")
    assert call("0.31.0", big)["kwargs"]["neuron_config"] == {"continuous_batching": {"batch_size_for_shared_caches": 16}}
    assert isinstance(lmi_call(SOURCE["0.31.0"], dict(big, OPTION_MODEL_LOADER="tnx"), 12), Refusal)
    assert call("0.30.0", dict(big, OPTION_MODEL_LOADER="tnx")) == call("0.30.0", big)
    # model_loader=vllm keeps TNXModelLoader unless rolling_batch is vllm; nxdi is a loader from 0.32, invalid before.
    assert call("0.31.0", dict(env, OPTION_MODEL_LOADER="vllm")) == call("0.31.0", env)
    assert isinstance(lmi_call(SOURCE["0.31.0"], dict(big, OPTION_MODEL_LOADER="vllm"), 12), Refusal)
    for release in ("0.31.0", "0.32.0"):
        assert isinstance(lmi_call(SOURCE[release], dict(env, OPTION_MODEL_LOADER="nxdi"), 12), Refusal)
    # 0.33: lmi-dist becomes vllm (no MPI); 0.32 refuses it. An absent max_rolling_batch_size is JSD's (32 at tp 8),
    # and vLLM's 256 only where JSD sets nothing (tp 1 at n 4096).
    lmi_dist = dict(env, OPTION_ROLLING_BATCH="lmi-dist")
    assert isinstance(lmi_call(SOURCE["0.32.0"], lmi_dist, 12), Refusal)
    assert call("0.33.0", lmi_dist) == call("0.33.0", dict(env, OPTION_ROLLING_BATCH="vllm"))
    lmi_dist_absent = {k: v for k, v in lmi_dist.items() if k != "OPTION_MAX_ROLLING_BATCH_SIZE"}
    assert call("0.34.0", lmi_dist_absent)["kwargs"]["batch_size"] == 32
    assert lmi_call(SOURCE["0.34.0"], dict(lmi_dist_absent, OPTION_TENSOR_PARALLEL_DEGREE="1"), 2)[  # type: ignore[index]
        "kwargs"]["batch_size"] == 256
    # JSD's max_rolling_batch_size (0.30+): 7B at n 4096 -- 13.68e9 parameters by LmiUtils' count for this config
    # (27.37 GB), 0.95 GB a sequence: tp 8 -> (128 - 31.20) / 0.95 = 101 -> 32 (the cap); tp 2 -> (32 - 27.92) / 0.95
    # = 4 -> 4; tp 1 -> negative -> unset (REC's default); n 1024, tp 2 -> 4.09 / 0.2375 = 17 -> 16.
    assert jsd_max_rolling_batch("meta-llama/Llama-2-7b-hf", 4096, 8) == 32
    assert jsd_max_rolling_batch("meta-llama/Llama-2-7b-hf", 4096, 2) == 4
    assert jsd_max_rolling_batch("meta-llama/Llama-2-7b-hf", 4096, 1) is None
    assert jsd_max_rolling_batch("meta-llama/Llama-2-7b-hf", 1024, 2) == 16
    absent = {k: v for k, v in one.items() if k != "OPTION_MAX_ROLLING_BATCH_SIZE"}
    assert call("0.31.0", absent)["kwargs"]["batch_size"] == 16  # and auto was decided with "1": tnx
    assert lmi_call(SOURCE["0.29.0"], absent, 2)["kwargs"]["batch_size"] == 32  # type: ignore[index]
    # Every fact cites where it comes from.
    for rel in SOURCE.values():
        assert rel.sources and all("@" in s or "no " in s for s in rel.sources.values()), rel.version
        assert "toolchain" in rel.sources and rel.toolchain, rel.version


# --------------------------------------------------------------------------------------------------------------
# Every JumpStart row x every release.
# --------------------------------------------------------------------------------------------------------------

def test_every_row_is_planned() -> None:
    assert len(ROWS) == 34 and {r.instance_type for r in ROWS} <= set(NEURON_CORES)


@pytest.mark.parametrize(("row", "release"), _row_cases())
def test_a_jumpstart_row_plans_the_releases_own_call(llama2_cache: None, row: PresetRow, release: str) -> None:
    env = row.lmi_env()
    assert env["OPTION_ROLLING_BATCH"] == "auto"  # as JumpStart starts the container
    expected = lmi_call(SOURCE[release], env, NEURON_CORES[row.instance_type])
    _check(expected, env, *_row_args(row, release))


@pytest.mark.parametrize("release", RELEASES)
def test_the_consumer_from_the_environment_plans_the_same(llama2_cache: None, release: str) -> None:
    row = next(r for r in ROWS if r.id.endswith("4096x4/tp8"))
    env = row.lmi_env()
    by_flag = _plan(env, *_row_args(row, release))
    by_env = _plan(dict(env, OPTION_KILN_CONSUMER=f"lmi-neuronx:{release}"),
                   "--from-env", "--instance-type", row.instance_type)
    assert by_flag[0] == by_env[0]
    if by_flag[2] is not None:
        assert _engine_invocation(by_flag[2]) == _engine_invocation(by_env[2])  # type: ignore[arg-type]
        assert by_flag[2]["key"] == by_env[2]["key"]  # type: ignore[index]


def test_an_lmi_configuration_without_a_consumer_lists_the_choices(llama2_cache: None) -> None:
    row = ROWS[0]
    rc, err, _ = _plan(row.lmi_env(), "--from-env", "--instance-type", row.instance_type)
    assert rc == 2 and "\n" not in err
    # Every release (the plain-library consumer is no choice here: it has no rolling batch, which LMI's env sets).
    for choice in [f"lmi-neuronx:{v}" for v in RELEASES]:
        assert choice in err, (choice, err)
    # 0.35.0 has no transformers-neuronx handler (djl-serving commit 1132e3ab removed it): no such consumer.
    rc, err, _ = _plan(row.lmi_env(), "--from-env", "--consumer", "lmi-neuronx:0.35.0", "--instance-type", row.instance_type)
    assert rc == 2 and "lmi-neuronx:0.35.0" in err and f"lmi-neuronx:{RELEASES[-1]}" in err


# --------------------------------------------------------------------------------------------------------------
# Configurations around the rows: (release, changes to the 7B 4096x4 tp8 row on ml.inf2.24xlarge, Kiln bug or None).
# --------------------------------------------------------------------------------------------------------------

_DEL = ""  # an empty OPTION_ value is no option (MI@0.29.0-dlc L831-833 skips empty values)


# A compiler-flag value other than the image's (--model-type is a neuronx-cc option).
OTHER_CC_FLAGS = "--logfile /tmp/compile.log --temp-dir=/tmp --model-type=transformer"

AROUND_ROWS: list[tuple[str, dict[str, str], str | None]] = [
    # rolling_batch=disable: a static TNX compile (llama), batch_size from option.batch_size.
    ("0.26.0", {"OPTION_ROLLING_BATCH": "disable"}, None),
    ("0.27.0", {"OPTION_ROLLING_BATCH": "disable"}, None),
    ("0.28.0", {"OPTION_ROLLING_BATCH": "disable"}, None),
    ("0.29.0", {"OPTION_ROLLING_BATCH": "disable"}, None),
    ("0.30.0", {"OPTION_ROLLING_BATCH": "disable"},
     None),
    ("0.29.0", {"OPTION_ROLLING_BATCH": "disable", "OPTION_BATCH_SIZE": "2"}, None),
    # rolling_batch absent: REC's default per release.
    ("0.26.0", {"OPTION_ROLLING_BATCH": _DEL}, None),
    ("0.27.0", {"OPTION_ROLLING_BATCH": _DEL}, None),
    ("0.28.0", {"OPTION_ROLLING_BATCH": _DEL}, None),
    ("0.29.0", {"OPTION_ROLLING_BATCH": _DEL}, None),
    ("0.30.0", {"OPTION_ROLLING_BATCH": _DEL}, None),
    # rolling_batch written out.
    ("0.26.0", {"OPTION_ROLLING_BATCH": "tnx"}, None),  # coerced to auto (TP@v0.26.0 L90-100)
    ("0.27.0", {"OPTION_ROLLING_BATCH": "tnx"}, None),  # coerced to auto -> optimum-neuron
    ("0.28.0", {"OPTION_ROLLING_BATCH": "tnx"}, None),
    ("0.29.0", {"OPTION_ROLLING_BATCH": "tnx"}, None),
    ("0.28.0", {"OPTION_ROLLING_BATCH": "vllm"}, None),
    ("0.29.0", {"OPTION_ROLLING_BATCH": "vllm"}, None),
    ("0.29.0", {"OPTION_ROLLING_BATCH": "lmi-dist"}, None),
    ("0.30.0", {"OPTION_ROLLING_BATCH": "lmi-dist"}, None),
    # 0.30's auto goes to vLLM from max_rolling_batch_size 12 -- still compiled by TNXModelLoader.
    ("0.29.0", {"OPTION_MAX_ROLLING_BATCH_SIZE": "16"}, None),
    ("0.30.0", {"OPTION_MAX_ROLLING_BATCH_SIZE": "16"}, None),
    ("0.29.0", {"OPTION_MAX_ROLLING_BATCH_SIZE": _DEL}, None),  # REC setRollingBatchSize: 32 for tnx
    # model_loader.
    ("0.27.0", {"OPTION_ROLLING_BATCH": "tnx", "OPTION_MODEL_LOADER": "tnx"}, None),
    ("0.29.0", {"OPTION_MODEL_LOADER": "tnx"}, None),
    ("0.29.0", {"OPTION_MODEL_LOADER": "optimum"}, None),
    # n_positions and dtype defaults.
    ("0.26.0", {"OPTION_N_POSITIONS": _DEL}, None),
    ("0.29.0", {"OPTION_N_POSITIONS": _DEL}, None),
    ("0.30.0", {"OPTION_N_POSITIONS": _DEL}, None),
    ("0.29.0", {"OPTION_DTYPE": _DEL}, None),
    ("0.29.0", {"OPTION_DTYPE": "bf16"}, None),
    ("0.29.0", {"OPTION_DTYPE": "fp32"}, None),
    ("0.26.0", {"OPTION_DTYPE": "bf16"}, None),
    # context_length_estimate under continuous batching.
    ("0.26.0", {"OPTION_CONTEXT_LENGTH_ESTIMATE": "1024,4096"}, None),
    ("0.28.0", {"OPTION_CONTEXT_LENGTH_ESTIMATE": "1024,4096"}, None),
    ("0.29.0", {"OPTION_CONTEXT_LENGTH_ESTIMATE": "1024,4096"}, None),
    ("0.29.0", {"OPTION_CONTEXT_LENGTH_ESTIMATE": "4096"}, None),
    # batch_size next to rolling batch.
    ("0.28.0", {"OPTION_BATCH_SIZE": "4"}, None),
    ("0.29.0", {"OPTION_BATCH_SIZE": "4"}, None),
    ("0.26.0", {"OPTION_BATCH_SIZE": "4"}, None),
    # Compiler flags and NeuronConfig fields.
    ("0.29.0", {"OPTION_NEURON_OPTIMIZE_LEVEL": "2"}, None),
    ("0.29.0", {"OPTION_ENABLE_MIXED_PRECISION_ACCUMULATION": "true"}, None),
    ("0.29.0", {"OPTION_ENABLE_SATURATE_INFINITY": "false"}, None),
    ("0.29.0", {"OPTION_GROUP_QUERY_ATTENTION": "shard-over-heads"}, None),
    # tensor_parallel_degree.
    ("0.29.0", {"OPTION_TENSOR_PARALLEL_DEGREE": "max"}, None),  # PM: the instance's NeuronCores (12)
    ("0.29.0", {"OPTION_TENSOR_PARALLEL_DEGREE": "24"}, None),  # MI: 12 cores / 24 == 0
    # 0.31-0.34. rolling_batch absent: REC writes auto's resolution (tnx below max_rolling_batch_size 12) before
    # Python runs, so 0.32's Python default (auto) is never what a Llama checkpoint gets.
    ("0.31.0", {"OPTION_ROLLING_BATCH": _DEL}, None),
    ("0.32.0", {"OPTION_ROLLING_BATCH": _DEL}, None),
    ("0.33.0", {"OPTION_ROLLING_BATCH": _DEL}, None),
    ("0.34.0", {"OPTION_ROLLING_BATCH": _DEL}, None),
    ("0.31.0", {"OPTION_ROLLING_BATCH": "disable"}, None),
    ("0.34.0", {"OPTION_ROLLING_BATCH": "disable"}, None),
    ("0.32.0", {"OPTION_ROLLING_BATCH": "tnx"}, None),
    # max_rolling_batch_size absent: auto is decided with REC's "1" (tnx), then JSD's heuristic sets the size (32).
    ("0.30.0", {"OPTION_MAX_ROLLING_BATCH_SIZE": _DEL}, None),
    ("0.31.0", {"OPTION_MAX_ROLLING_BATCH_SIZE": _DEL}, None),
    ("0.34.0", {"OPTION_MAX_ROLLING_BATCH_SIZE": _DEL}, None),
    ("0.31.0", {"OPTION_MAX_ROLLING_BATCH_SIZE": "11"}, None),
    # From max_rolling_batch_size 12 auto is vllm, still compiled by TNXModelLoader.load_unwrapped_model().
    ("0.31.0", {"OPTION_MAX_ROLLING_BATCH_SIZE": "12"}, None),
    ("0.32.0", {"OPTION_ROLLING_BATCH": _DEL, "OPTION_MAX_ROLLING_BATCH_SIZE": "16"}, None),
    ("0.34.0", {"OPTION_MAX_ROLLING_BATCH_SIZE": "16"}, None),
    # lmi-dist: the MPI engine through 0.32; from 0.33 REC overrides it to vllm.
    ("0.31.0", {"OPTION_ROLLING_BATCH": "lmi-dist"}, None),
    ("0.32.0", {"OPTION_ROLLING_BATCH": "lmi-dist"}, None),
    ("0.33.0", {"OPTION_ROLLING_BATCH": "lmi-dist"}, None),
    ("0.34.0", {"OPTION_ROLLING_BATCH": "lmi-dist", "OPTION_MAX_ROLLING_BATCH_SIZE": _DEL}, None),
    ("0.33.0", {"OPTION_ROLLING_BATCH": "trtllm"}, None),  # REC@0.33.0-dlc L85-90: still MPI
    # model_loader.
    ("0.31.0", {"OPTION_MAX_ROLLING_BATCH_SIZE": "16", "OPTION_MODEL_LOADER": "tnx"}, None),  # raises, no draft
    ("0.34.0", {"OPTION_MAX_ROLLING_BATCH_SIZE": "16", "OPTION_MODEL_LOADER": "vllm"}, None),  # vLLM loads it
    ("0.31.0", {"OPTION_MODEL_LOADER": "tnx"}, None),
    ("0.31.0", {"OPTION_MODEL_LOADER": "nxdi"}, None),  # no TnXModelLoaders value yet
    ("0.32.0", {"OPTION_MODEL_LOADER": "nxdi"}, None),  # NxdiVllmModelLoader
    ("0.34.0", {"OPTION_MODEL_LOADER": "optimum"}, None),
    # Defaults, options and flags as at 0.30.
    ("0.31.0", {"OPTION_N_POSITIONS": _DEL}, None),
    ("0.34.0", {"OPTION_N_POSITIONS": _DEL}, None),
    ("0.33.0", {"OPTION_DTYPE": "bf16"}, None),
    ("0.31.0", {"OPTION_CONTEXT_LENGTH_ESTIMATE": "1024,4096"}, None),
    ("0.31.0", {"OPTION_BATCH_SIZE": "4"}, None),
    ("0.34.0", {"OPTION_NEURON_OPTIMIZE_LEVEL": "2"}, None),
    ("0.34.0", {"OPTION_ENABLE_MIXED_PRECISION_ACCUMULATION": "false"}, None),  # appended whatever the value
    ("0.26.0", {"OPTION_ENABLE_SATURATE_INFINITY": "true"}, None),  # no such TP field at 0.26: nothing appended
    ("0.32.0", {"OPTION_GROUP_QUERY_ATTENTION": "shard-over-heads"}, None),
    ("0.34.0", {"OPTION_TENSOR_PARALLEL_DEGREE": "max"}, None),
    ("0.34.0", {"OPTION_TENSOR_PARALLEL_DEGREE": "24"}, None),
    # NEURON_CONTEXT_LENGTH_ESTIMATE: context_length_estimate's default from 0.31 (the option wins); not read before.
    ("0.29.0", {"NEURON_CONTEXT_LENGTH_ESTIMATE": "[1024, 4096]"}, None),
    ("0.30.0", {"NEURON_CONTEXT_LENGTH_ESTIMATE": "[1024, 4096]"}, None),
    ("0.31.0", {"NEURON_CONTEXT_LENGTH_ESTIMATE": "[1024, 4096]"}, None),
    ("0.32.0", {"NEURON_CONTEXT_LENGTH_ESTIMATE": "[1024, 2048, 4096]"}, None),
    ("0.33.0", {"NEURON_CONTEXT_LENGTH_ESTIMATE": "[4096]"}, None),
    ("0.34.0", {"NEURON_CONTEXT_LENGTH_ESTIMATE": "[1024, 4096]"}, None),
    ("0.34.0", {"NEURON_CONTEXT_LENGTH_ESTIMATE": "[1024, 4096]", "OPTION_ROLLING_BATCH": "disable"}, None),
    ("0.31.0", {"NEURON_CONTEXT_LENGTH_ESTIMATE": "[1024, 4096]", "OPTION_CONTEXT_LENGTH_ESTIMATE": "2048,4096"}, None),
    # NEURON_CC_FLAGS: the container's value replaces the image's at every release; options append to it.
    ("0.29.0", {"NEURON_CC_FLAGS": OTHER_CC_FLAGS}, None),
    ("0.30.0", {"NEURON_CC_FLAGS": OTHER_CC_FLAGS}, None),
    ("0.31.0", {"NEURON_CC_FLAGS": OTHER_CC_FLAGS}, None),
    ("0.34.0", {"NEURON_CC_FLAGS": OTHER_CC_FLAGS}, None),
    ("0.31.0", {"NEURON_CC_FLAGS": OTHER_CC_FLAGS, "OPTION_NEURON_OPTIMIZE_LEVEL": "2"}, None),
    ("0.33.0", {"NEURON_CC_FLAGS": OTHER_CC_FLAGS, "OPTION_ENABLE_SATURATE_INFINITY": "true"}, None),
]


def _case_name(name: str) -> str:
    return name[len("OPTION_"):].lower() if name.startswith("OPTION_") else name


def _around_cases() -> list[Any]:
    out = []
    for release, changes, bug in AROUND_ROWS:
        marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
        cid = f"{release}:" + ",".join(f"{_case_name(k)}={v.replace(' ', '') or 'absent'}" for k, v in changes.items())
        out.append(pytest.param(release, changes, marks=marks, id=cid))
    return out


@pytest.mark.parametrize(("release", "changes"), _around_cases())
def test_configurations_around_the_rows(llama2_cache: None, release: str, changes: dict[str, str]) -> None:
    env = {k: v for k, v in {**ROW_ENV_7B_4096x4_TP8, **changes}.items() if v}
    expected = lmi_call(SOURCE[release], env, NEURON_CORES["ml.inf2.24xlarge"])
    _check(expected, env, "--from-env", "--consumer", f"lmi-neuronx:{release}", "--instance-type", "ml.inf2.24xlarge")


# --------------------------------------------------------------------------------------------------------------
# NEURON_* variables: a variable that shapes the graphs either gets its own key or is refused, never the same key.
# --------------------------------------------------------------------------------------------------------------

_ROW_ARGS_24XL = ("--instance-type", "ml.inf2.24xlarge")
_SHAPING = [("NEURON_CONTEXT_LENGTH_ESTIMATE", "[1024, 4096]"), ("NEURON_ON_DEVICE_EMBEDDING", "true"),
            ("NEURON_SHARD_OVER_SEQUENCE", "true"), ("NEURON_CC_FLAGS", OTHER_CC_FLAGS)]
NEURON_ENV_CASES: list[tuple[str, str, str, str | None]] = [
    *((release, name, value, None) for release in RELEASES for name, value in _SHAPING),
    ("0.32.0", "NEURON_ON_DEVICE_EMBEDDING", "TRUE", None),  # get_env_or_default lower-cases
    # get_env_or_default (TP@0.31.0-dlc L84-99): 'false' -> False, '1' -> None; set_neuron_config adds
    # on_device_embedding only when truthy (ML@0.31.0-dlc L216-218).
    ("0.31.0", "NEURON_ON_DEVICE_EMBEDDING", "false", None),
    ("0.31.0", "NEURON_ON_DEVICE_EMBEDDING", "1", None),
    ("0.31.0", "NEURON_CONTEXT_LENGTH_ESTIMATE", "[128, 1024, 2048, 4096]", None),  # the default buckets for 4096
    ("0.30.0", "NEURON_ON_DEV_GENERATION", "true", None),  # not read
    ("0.33.0", "NEURON_ON_DEV_GENERATION", "true", None),  # True.keys(): the container does not start
    # Read (TP@0.31.0-dlc L153-168) into properties only TNXVllmModelLoader uses (ML@0.31.0-dlc L776-889), which
    # H@0.31.0-dlc L121-126 picks only for model_loader=tnx + speculative_draft_model + rolling_batch=vllm.
    ("0.31.0", "NEURON_QUANT", "true", None),
    ("0.31.0", "NEURON_COMPILATION_WORKER_COUNT", "4", None),
    *((release, "NEURON_CC_FLAGS", IMAGE_CC_FLAGS, None) for release in ("0.29.0", "0.30.0", "0.31.0", "0.34.0")),
]


def _neuron_env_cases() -> list[Any]:
    return [pytest.param(r, n, v, marks=[pytest.mark.xfail(strict=True, reason=bug)] if bug else [],
                         id=f"{r}:{n}={v.replace(' ', '')}") for r, n, v, bug in NEURON_ENV_CASES]


@pytest.mark.parametrize(("release", "name", "value"), _neuron_env_cases())
def test_a_neuron_variable_is_the_releases_call_or_refused(llama2_cache: None, release: str, name: str,
                                                            value: str) -> None:
    """Against the plan without the variable: where the release compiles the same call (it does not read the
    variable, or reads it to no effect), Kiln plans the same call -- under the same key where the release reads no
    NEURON_* variable at all (<= 0.30) or the value is the image's own NEURON_CC_FLAGS. Where the call changes,
    Kiln plans exactly that call under another key, or refuses naming the variable. Where the container does not
    start, Kiln refuses."""
    rel, base_env = SOURCE[release], ROW_ENV_7B_4096x4_TP8
    env = dict(base_env, **{name: value})
    args = ("--from-env", "--consumer", f"lmi-neuronx:{release}", *_ROW_ARGS_24XL)
    expected, unchanged = lmi_call(rel, env, 12), lmi_call(rel, base_env, 12)
    if isinstance(expected, Refusal):
        _check(expected, env, *args)
        return
    base, (rc, err, doc) = _plan(base_env, *args), _plan(env, *args)
    assert base[0] == 0 and base[2] is not None, base[1]
    if expected == unchanged:
        assert rc == 0, err
        assert _engine_invocation(doc) == _engine_invocation(base[2])  # type: ignore[arg-type]
        if not rel.reads_neuron_env or name == "NEURON_CC_FLAGS":
            assert doc["key"] == base[2]["key"]  # type: ignore[index]
            assert _engine_invocation(doc) == expected  # type: ignore[arg-type]
        return
    if rc == 2:
        assert "\n" not in err and err.startswith("kiln: error: ") and name in err, err
        return
    assert rc == 0, err
    assert _engine_invocation(doc) == expected  # type: ignore[arg-type]
    assert doc["key"] != base[2]["key"]  # type: ignore[index]
    assert doc["steps"][0]["stage"]["key"] != base[2]["steps"][0]["stage"]["key"]  # type: ignore[index]


VOCAB_PAD_IGNORED = (
    "kiln: plans NEURON_VOCAB_PAD_DIVISOR=512 under the key of the plan without it; transformers-neuronx pads the "
    "lm_head to a multiple of int(NEURON_VOCAB_PAD_DIVISOR or tp_degree) when it shards it "
    "(aws-neuron/transformers-neuronx@1ade6d7 src/transformers_neuronx/decoder.py L355, since 6f4c23f): vocab 32000 "
    "at tp 8 pads to 32256 instead of staying 32000 -- another lm_head graph and weights, at every LMI release")


@pytest.mark.parametrize("release", [pytest.param(r, id=r) for r in ("0.26.0", "0.30.0", "0.31.0", "0.34.0")])
def test_a_variable_transformers_neuronx_reads_gets_another_key_or_is_refused(llama2_cache: None, release: str) -> None:
    """COMMON_SOURCES["vocab_pad"]: the library, not LMI, reads NEURON_VOCAB_PAD_DIVISOR -- in every image."""
    base_env = ROW_ENV_7B_4096x4_TP8
    assert isinstance(lmi_call(SOURCE[release], base_env, 12), dict)
    assert -(-32000 // 512) * 512 == 32256 and 32000 % 8 == 0 and 32256 % 8 == 0  # a different, shardable pad
    args = ("--from-env", "--consumer", f"lmi-neuronx:{release}", *_ROW_ARGS_24XL)
    base, (rc, err, doc) = _plan(base_env, *args), _plan(dict(base_env, NEURON_VOCAB_PAD_DIVISOR="512"), *args)
    assert base[0] == 0 and base[2] is not None, base[1]
    if rc == 2:
        assert "\n" not in err and "NEURON_VOCAB_PAD_DIVISOR" in err, err
        return
    assert rc == 0, err
    assert doc["key"] != base[2]["key"], VOCAB_PAD_IGNORED  # type: ignore[index]


# --------------------------------------------------------------------------------------------------------------
# The toolchain: the SDK the release's image compiles with (its Dockerfile's pins).
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("release", RELEASES)
def test_the_toolchain_is_the_images_sdk(llama2_cache: None, release: str) -> None:
    rel = SOURCE[release]
    env = next(e for e in (ROW_ENV_7B_4096x4_TP8, dict(ROW_ENV_7B_4096x4_TP8, OPTION_ROLLING_BATCH="disable"))
               if isinstance(lmi_call(rel, e, 12), dict))
    rc, err, doc = _plan(env, "--from-env", "--consumer", f"lmi-neuronx:{release}", *_ROW_ARGS_24XL)
    assert rc == 0, err
    toolchain, origin = doc["toolchain"], doc["toolchain_origin"]  # type: ignore[index]
    assert {k: toolchain.get(k) for k in rel.toolchain} == dict(rel.toolchain)
    # Exactly the Dockerfile's pins are said to be the image's; anything else (a package the image leaves to pip,
    # such as libneuronxla before 0.32) must not claim to be.
    image = origin["neuronx-cc"]
    assert {k for k in toolchain if k != "hardware" and origin.get(k) == image} == set(rel.toolchain), origin


# --------------------------------------------------------------------------------------------------------------
# Values LMI NeuronX refuses: Kiln must not build an engine for a container that would not start.
# --------------------------------------------------------------------------------------------------------------

# The releases whose handler reaches these values with the row environment (0.27 refuses the row first).
_VALUE_RELEASES = tuple(r for r in RELEASES if r != "0.27.0")
REFUSED_VALUES = [
    # dtype: only the Dtype values as written (TP class Dtype; MI keeps the value's case).
    ("OPTION_DTYPE", "float16"), ("OPTION_DTYPE", "bfloat16"), ("OPTION_DTYPE", "float32"), ("OPTION_DTYPE", "FP16"),
    ("OPTION_DTYPE", "auto"), ("OPTION_DTYPE", "int8"),
    # tensor_parallel_degree: Integer.parseInt in PM, and a degree transformers-neuronx can shard over.
    ("OPTION_TENSOR_PARALLEL_DEGREE", "0"), ("OPTION_TENSOR_PARALLEL_DEGREE", "-1"),
    ("OPTION_TENSOR_PARALLEL_DEGREE", "2.5"), ("OPTION_TENSOR_PARALLEL_DEGREE", "eight"),
]


@pytest.mark.parametrize("release", _VALUE_RELEASES)
@pytest.mark.parametrize(("name", "value"), REFUSED_VALUES, ids=[f"{n[7:].lower()}={v}" for n, v in REFUSED_VALUES])
def test_values_lmi_neuronx_refuses_are_refused(llama2_cache: None, release: str, name: str, value: str) -> None:
    env = dict(ROW_ENV_7B_4096x4_TP8, **{name: value})
    expected = lmi_call(SOURCE[release], env, NEURON_CORES["ml.inf2.24xlarge"])
    assert isinstance(expected, Refusal), expected  # the source table says LMI refuses it
    _check(expected, env, "--from-env", "--consumer", f"lmi-neuronx:{release}", "--instance-type", "ml.inf2.24xlarge")


# --------------------------------------------------------------------------------------------------------------
# The plain library: CLI flags, --consumer transformers-neuronx.
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("row", [r for r in ROWS if r.model.endswith("-hf") and "chat" not in r.model], ids=lambda r: r.id)
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_the_transformers_neuronx_consumer_from_cli_flags(llama2_cache: None, row: PresetRow, dtype: str) -> None:
    """The library's own call (aws-neuron/transformers-neuronx @1ade6d7, main): LlamaForSampling(config, *,
    n_positions, batch_size, amp, tp_degree, context_length_estimate=None, neuron_config=None) in
    src/transformers_neuronx/llama/model.py L32-34, reached through from_pretrained. Kiln passes an int n_positions
    (the library derives its buckets), no context_length_estimate, a fresh NeuronConfig per model and no continuous
    batching (that is LMI's choice); NEURON_CC_FLAGS is empty because no image sets it and compiler.py L89-91
    get_compiler_flags reads only the environment."""
    args = [row.model, "--target", "neuron", "--n-positions", str(row.n_positions), "--batch-size", str(row.batch_size),
            "--tp-degree", str(row.tp_degree), "--dtype", dtype, "--instance-type", row.instance_type,
            "--consumer", "transformers-neuronx"]
    rc, err, doc = _plan({}, *args)
    assert rc == 0, err
    assert _engine_invocation(doc) == {  # type: ignore[arg-type]
        "class": LLAMA_CLASS,
        "kwargs": {"batch_size": row.batch_size, "amp": {"fp16": "f16", "bf16": "bf16", "fp32": "f32"}[dtype],
                   "tp_degree": row.tp_degree, "n_positions": row.n_positions, "neuron_config": {}},
        "env": {"NEURON_CC_FLAGS": ""},
    }
    assert type(_engine_invocation(doc)["kwargs"]["n_positions"]) is int  # type: ignore[arg-type]
