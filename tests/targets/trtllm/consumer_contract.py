"""Contract fixtures: what each TensorRT-LLM consumer release reads, taken from the consumer's own source.

These are the expected values the layout tests check Kiln against (issue 15). They are written from the
consumers' source at release refs, independently of kiln/targets/trtllm/ (nothing here imports Kiln), and every
value carries the place it comes from as "owner/repo path@ref Lnn". Where the source does not settle a value the
field says so (value None, or a note) instead of guessing.

Refs. djl-serving (LMI): the release tags where they exist (v0.28.0, v0.29.0, v0.35.0, v0.36.0), else the SageMaker
DLC release branch the image is built from (0.30.0-dlc ... 0.34.0-dlc). For every file read here v0.35.0 equals
0.35.0-dlc and 0.35.1-dlc, and v0.36.0 equals 0.36.0-lmi27-dlc (except tests/integration/llm/prepare.py); v0.28.0
and v0.29.0 differ from their -dlc branches only in the Dockerfile's CUDA base/plugin file name and in code that does
not touch the TensorRT-LLM path. tensorrtllm_backend (Triton): the release tags v0.9.0 ... v0.19.0; from v0.20.0 on
the repository holds no backend source (only the tensorrt_llm submodule, dockerfile, docs: `git ls-tree v0.20.0`),
the backend lives in TensorRT-LLM's triton_backend/ and is not covered here.

"Required" means the consumer reads the value with no default and fails to start without it (or with another value);
"forbidden" entries say what breaks and how sure that is: effect "start-up" is a load failure shown by the source,
effect "deviates" is a configuration LMI's own CI never uses that changes how the worker is launched or how requests
are routed, without this reading proving the failure (that needs a GPU run).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------------------------------------------
# Where the facts come from ("owner/repo path"; a citation is f"{PATH}@{ref} L{lines}").
# --------------------------------------------------------------------------------------------------------------

_DJL = "deepjavalibrary/djl-serving"
DF = f"{_DJL} serving/docker/tensorrt-llm.Dockerfile"
LU = f"{_DJL} wlm/src/main/java/ai/djl/serving/wlm/LmiUtils.java"
LCR = f"{_DJL} wlm/src/main/java/ai/djl/serving/wlm/LmiConfigRecommender.java"
MI = f"{_DJL} wlm/src/main/java/ai/djl/serving/wlm/ModelInfo.java"
PM = f"{_DJL} engines/python/src/main/java/ai/djl/python/engine/PyModel.java"
PP = f"{_DJL} engines/python/src/main/java/ai/djl/python/engine/PyProcess.java"
CONN = f"{_DJL} engines/python/src/main/java/ai/djl/python/engine/Connection.java"
TLH = f"{_DJL} engines/python/setup/djl_python/tensorrt_llm.py"
TRB = f"{_DJL} engines/python/setup/djl_python/rolling_batch/trtllm_rolling_batch.py"
TP = f"{_DJL} engines/python/setup/djl_python/properties_manager/trt_properties.py"
TAS = f"{_DJL} engines/python/setup/djl_python/lmi_trtllm/trtllm_async_service.py"
SYNC = f"{_DJL} engines/python/setup/djl_python/python_sync_engine.py"
ENG = f"{_DJL} engines/python/setup/djl_python_engine.py"
PREP = f"{_DJL} tests/integration/llm/prepare.py"
UG = f"{_DJL} serving/docs/lmi/user_guides/trt_llm_user_guide.md"
TUT = f"{_DJL} serving/docs/lmi/tutorials/trtllm_manual_convert_tutorial.md"

_TB = "triton-inference-server/tensorrtllm_backend"
MS = f"{_TB} inflight_batcher_llm/src/model_state.cc"
MIS = f"{_TB} inflight_batcher_llm/src/model_instance_state.cc"
TB_SRC = f"{_TB} inflight_batcher_llm/src"
AM = f"{_TB} all_models/inflight_batcher_llm"
TB_DOCKER = f"{_TB} dockerfile/Dockerfile.triton.trt_llm_backend"
TB_README = f"{_TB} README.md"
TRITON_MATRIX = "https://docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/introduction/compatibility.html"
TRITON_MATRIX_2530 = (
    "https://docs.nvidia.com/deeplearning/triton-inference-server/archives/triton-inference-server-2530/"
    "user-guide/docs/introduction/compatibility.html"
)
TRITON_MATRIX_2540 = TRITON_MATRIX_2530.replace("2530", "2540")


def at(path: str, ref: str, lines: str) -> str:
    """One citation: the file, the ref, the lines ("12", "12-20" or "12,15-16")."""
    return f"{path}@{ref} L{lines}"


def cite(*parts: str) -> str:
    """Several citations for one fact."""
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------------------------
# Record types
# --------------------------------------------------------------------------------------------------------------

TP_PLACEHOLDER = "{tp}"  # stands for the engine's tensor-parallel degree in a required value


@dataclass(frozen=True)
class Fact:
    value: Any
    source: str
    note: str = ""


@dataclass(frozen=True)
class Prop:
    """A serving.properties key the handler path needs. values[0] is what LMI's own configuration writes."""

    key: str
    values: tuple[str, ...]
    source: str
    why: str


@dataclass(frozen=True)
class Forbidden:
    """A serving.properties key/value a layout must not write. values None: any value of the key."""

    key: str
    values: tuple[str, ...] | None
    effect: str  # "start-up" | "deviates" (see the module docstring)
    source: str
    why: str


@dataclass(frozen=True)
class LmiRelease:
    version: str
    ref: str
    layout: Fact  # "engine-dir" | "subdir-pbtxt"
    layout_files: tuple[str, ...]  # what LMI's "already compiled" check looks for ({subdir}: any sub-directory)
    entry_point: Fact  # the handler module LMI picks when option.entryPoint is absent
    required_properties: tuple[Prop, ...]
    forbidden_properties: tuple[Forbidden, ...]
    tensorrt_llm: Fact
    tensorrt: Fact  # value None: the Dockerfile pins no TensorRT (it comes with the tensorrt_llm wheel)
    max_output_len_means: Fact  # "output" (max new tokens) | "max_seq_len"
    max_seq_len_key: Fact  # the property the handler passes to TensorRT-LLM as max_seq_len (None: not in open source)
    attention_window: Fact  # where a sliding window (max_attention_window) is set for this release
    handler_broken: Fact  # value None: the handler starts; else the error it raises before loading
    triton_backend: Fact  # subdir-pbtxt: the tensorrtllm_backend release the image bundles (its config.pbtxt rules)


@dataclass(frozen=True)
class Param:
    """A config.pbtxt parameter read with no default. accepts None: any string (see rule)."""

    key: str
    accepts: tuple[str, ...] | None
    rule: str
    source: str


@dataclass(frozen=True)
class TritonRelease:
    tag: str
    tensorrt_llm: Fact
    tensorrt: Fact
    required_parameters: tuple[Param, ...]  # tensorrt_llm model: GetParameter outside any try (fails without)
    decoder_engine: Param  # gpt_model_path: how a decoder-only engine must be named
    conditional_parameters: tuple[Fact, ...]  # read without default only when another setting asks for them
    max_attention_window_format: Fact  # "int" (one value) | "csv" (one per layer, comma-separated)
    template_backend: Fact  # the backend field of the tensorrt_llm template
    decoupled: Fact  # where model_transaction_policy.decoupled is read (absent: false)
    streaming_needs_decoupled: Fact
    preprocessing_required: tuple[Param, ...]  # python model, KeyError without
    postprocessing_required: tuple[Param, ...]
    ensemble_steps: Fact  # model names of the template ensemble, in order
    ensemble_required_inputs: Fact
    ensemble_stream_input: Fact  # (ensemble input, tensorrt_llm input it maps to)


# --------------------------------------------------------------------------------------------------------------
# A. LMI (SageMaker DJL) TensorRT-LLM container
# --------------------------------------------------------------------------------------------------------------

ASYNC_SERVICE = "djl_python.lmi_trtllm.trtllm_async_service"
SYNC_HANDLER = "djl_python.tensorrt_llm"
SUBDIR_FILES = ("{subdir}/config.pbtxt", "{subdir}/tokenizer_config.json")
ENGINE_DIR_FILES = ("config.json",)  # with a top-level "build_config" key


def _subdir_release(
    version: str,
    ref: str,
    *,
    lu_check: str,
    lu_force_rb: str,
    lu_mpi_default: str,
    lu_need_convert: str,
    pm_entry: str,
    pm_tp: str,
    mi_mpi: str,
    mi_detect: str,
    trb: str,
    tlh_disable: str | None,
    tp_rb: str,
    df_trtllm: str,
    df_trt: str,
    df_lib: str,
    trtllm: str,
    trt: str,
    backend_tag: str,
    ug: str,
    means: str,
    tut: str,
    engine_first: str,
) -> LmiRelease:
    """The design of LMI <= 0.32 (and of 0.34, which reverted to it): Triton backend under the closed toolkit."""
    rb_why = (
        "convertTrtLLM runs only when rolling_batch is trtllm or absent/auto and then forces it to trtllm; "
        "TRTLLMRollingBatch is the handler that loads the Triton-style repository"
    )
    if tlh_disable:
        rb_why += "; 'disable' switches the handler to TRTLLMPythonService (the Python-backend repository format)"
    rb_src = cite(at(LU, ref, lu_need_convert), at(LU, ref, lu_force_rb))
    if tlh_disable:
        rb_src = cite(rb_src, at(TLH, ref, tlh_disable))
    return LmiRelease(
        version=version,
        ref=ref,
        layout=Fact(
            "subdir-pbtxt",
            at(LU, ref, lu_check),
            "isValidTrtLlmModelRepo: some sub-directory of the model dir holds config.pbtxt and tokenizer_config.json; "
            "otherwise trt_llm_partition.py converts the directory (needs HF weights). config.json with build_config "
            "at the root is not recognised.",
        ),
        layout_files=SUBDIR_FILES,
        entry_point=Fact(SYNC_HANDLER, at(PM, ref, pm_entry), "chosen when SERVING_FEATURES equals 'trtllm'"),
        required_properties=(
            Prop(
                "engine",
                (engine_first, "MPI" if engine_first == "Python" else "Python"),
                cite(at(MI, ref, mi_detect), at(TUT, ref, tut)),
                "the root holds no model.py/config.json and no option.model_id, so the engine cannot be inferred "
                "('Failed to detect engine'); the tutorial's extracted-artifacts config writes it",
            ),
            Prop(
                "option.mpi_mode",
                ("true",),
                cite(at(TRB, ref, trb), at(MI, ref, mi_mpi), at(LU, ref, lu_mpi_default)),
                "TRTLLMRollingBatch asserts mpi_mode ('Need mpi_mode to start tensorrt llm RollingBatcher'); "
                "engine=MPI and a root without HF config.json also set it",
            ),
            Prop("option.rolling_batch", ("trtllm", "auto"), rb_src, rb_why),
            Prop(
                "option.tensor_parallel_degree",
                (TP_PLACEHOLDER,),
                at(PM, ref, pm_tp),
                "MPI mode starts tensor_parallel_degree ranks (all GPUs when absent); the engine has tp ranks",
            ),
        ),
        forbidden_properties=(
            Forbidden(
                "option.rolling_batch",
                ("vllm", "lmi-dist", "tnx", "scheduler"),
                "start-up",
                at(TP, ref, tp_rb),
                "TensorRtLlmProperties.validate_rolling_batch raises 'tensorrt llm only supports rolling batch type "
                "[auto, trtllm, disable]'",
            ),
        )
        + (
            (
                Forbidden(
                    "trtllm_python_backend",
                    None,
                    "start-up",
                    at(LU, ref, "92-95,122-129"),
                    "switches convertTrtLLM to the Python-backend check (encoder/decoder sub-directories with "
                    "config.json); a decoder-only repository fails it and LMI tries to convert the directory",
                ),
            )
            if version == "0.28.0"
            else ()
        ),
        tensorrt_llm=Fact(trtllm, at(DF, ref, df_trtllm)),
        tensorrt=Fact(trt, at(DF, ref, df_trt)),
        max_output_len_means=Fact(means, at(UG, ref, ug)),
        max_seq_len_key=Fact(
            None,
            at(TRB, ref, str(int(trb.split("-")[0]) + 3)),
            "properties go to the closed-source tensorrt_llm_toolkit.init_inference; no open-source reader",
        ),
        attention_window=Fact(
            "config.pbtxt max_attention_window_size",
            at(DF, ref, df_lib),
            f"read by the bundled libtriton_tensorrtllm.so of TensorRT-LLM {backend_tag}: see TRITON_TRTLLM['{backend_tag}']",
        ),
        handler_broken=Fact(None, at(TRB, ref, trb)),
        triton_backend=Fact(
            backend_tag,
            at(DF, ref, df_lib),
            "the image downloads libtriton_tensorrtllm.so built for this TensorRT-LLM version; config.pbtxt "
            "gpt_model_path must be the in-container engine path (e.g. /opt/ml/model/tensorrt_llm/1)",
        ),
    )


def _async_release(
    version: str,
    ref: str,
    *,
    lu_check: str,
    lu_force_rb: str | None,
    pm_entry: str,
    pm_async_prop: str,
    pm_mpi: str,
    lcr_mpi: str,
    lcr_rb: str,
    pp_rb: str,
    conn_mpi: str,
    prep: str,
    tas_llm: str,
    tp_kwargs: str,
    tp_seq: str,
    tp_window: str,
    sync: str,
    df_trtllm: str,
    trtllm: str,
    trt: str | None,
    trt_note: str,
    trt_src: str | None,
    ug: str,
    broken: str | None,
    broken_src: str,
) -> LmiRelease:
    """LMI 0.33, 0.35, 0.36: TensorRT-LLM's LLM API behind the async service; the engine directory is the model."""
    default_async = version == "0.33.0"
    async_why = (
        "the handler's handle() is async: without async_mode the sync engine gets a coroutine and answers "
        "'Invalid output type'. "
        + (
            "PyModel sets async mode itself only when it picks the default entry point (no option.entryPoint)"
            if default_async
            else "Nothing sets it for an engine directory: PyModel's default entry point does not, and the "
            "recommender does so only for HF text-generation configs (an engine config.json has no architectures)"
        )
    )
    rb_note = "" if lu_force_rb is None else f"; convertTrtLLM then overwrites it with trtllm ({at(LU, ref, lu_force_rb)})"
    return LmiRelease(
        version=version,
        ref=ref,
        layout=Fact(
            "engine-dir",
            at(LU, ref, lu_check),
            "isValidTrtLlmModelRepo: <dir>/config.json exists and has the key build_config; otherwise "
            "trt_llm_partition.py converts the directory (needs HF weights). LLM(model=<dir>) loads it; the tokenizer "
            "is loaded from the same directory (option.tokenizer unset).",
        ),
        layout_files=ENGINE_DIR_FILES,
        entry_point=Fact(ASYNC_SERVICE, at(PM, ref, pm_entry), "chosen when SERVING_FEATURES equals 'trtllm'"),
        required_properties=(
            Prop(
                "option.async_mode",
                ("true",),
                cite(at(PM, ref, pm_async_prop), at(SYNC, ref, sync), at(PREP, ref, prep), at(LCR, ref, lcr_rb)),
                async_why,
            ),
            Prop("option.entryPoint", (ASYNC_SERVICE,), cite(at(PM, ref, pm_entry), at(PREP, ref, prep)),
                 "LMI's own CI configuration for the TensorRT-LLM handler writes it (and then needs async_mode)"),
            Prop(
                "option.rolling_batch",
                ("disable", "auto"),
                cite(at(PREP, ref, prep), at(LCR, ref, lcr_rb)),
                "LMI's CI writes disable; auto (or absent) becomes disable for an engine config.json" + rb_note,
            ),
            Prop(
                "option.tensor_parallel_degree",
                (TP_PLACEHOLDER,),
                at(TP, ref, tp_kwargs),
                "passed to the LLM API as tensor_parallel_size; when absent the recommender uses the GPU count",
            ),
        ),
        forbidden_properties=(
            Forbidden(
                "engine",
                ("MPI",),
                "deviates",
                cite(at(PM, ref, pm_mpi), at(CONN, ref, conn_mpi)),
                "the MPI engine runs the async service under mpirun, one process per rank, each building its own "
                "LLM(); LMI's CI never sets engine for this handler",
            ),
            Forbidden(
                "option.mpi_mode",
                ("true",),
                "deviates",
                cite(at(PM, ref, pm_mpi), at(CONN, ref, conn_mpi)),
                "as engine=MPI: mpirun launch of the async service",
            ),
            Forbidden(
                "option.rolling_batch",
                ("trtllm",),
                "deviates",
                cite(at(LCR, ref, lcr_mpi), at(PP, ref, pp_rb)),
                "the recommender turns on mpi_mode for rolling_batch=trtllm, and PyProcess then creates the Java "
                "RollingBatch, to which requests go instead of the async request manager",
            ),
        ),
        tensorrt_llm=Fact(trtllm, at(DF, ref, df_trtllm)),
        tensorrt=Fact(trt, cite(at(DF, ref, df_trtllm), trt_src) if trt_src else at(DF, ref, df_trtllm), trt_note),
        max_output_len_means=Fact(
            "max_seq_len",
            at(UG, ref, ug),
            "the user guide's row; the async service itself never reads option.max_output_len (no field, not in "
            "get_llm_kwargs)",
        ),
        max_seq_len_key=Fact("option.max_seq_len", at(TP, ref, tp_seq),
                             "a runtime kwarg; for an engine directory the LLM API keeps the engine's build_config"),
        attention_window=Fact(
            "option.max_attention_window",
            at(TP, ref, tp_window),
            "JSON list (json.loads) -> KvCacheConfig(max_attention_window=...)",
        ),
        handler_broken=Fact(broken, cite(at(TAS, ref, tas_llm), broken_src)),
        triton_backend=Fact(None, at(DF, ref, df_trtllm), "no Triton backend in the image"),
    )


_TRT_1_0 = (
    "the Dockerfile installs tensorrt_llm==1.0.0 with no tensorrt pin; TensorRT-LLM 1.0.0 ships with TensorRT "
    f"10.11.0.33 in Triton 25.09/25.10 ({TRITON_MATRIX}); the wheel's own pin was not readable here"
)

_DUP_KWARGS = (
    "TypeError: LLM() got multiple values for keyword argument 'trust_remote_code' -- LLM(model=..., "
    "tensor_parallel_size=..., trust_remote_code=..., dtype=..., revision=..., **llm_kwargs) while llm_kwargs "
    "also holds trust_remote_code, dtype, revision and tensor_parallel_size; raised before any loading"
)

LMI_TRTLLM: dict[str, LmiRelease] = {
    "0.28.0": _subdir_release(
        "0.28.0", "v0.28.0", lu_check="403-420", lu_force_rb="131", lu_mpi_default="56-66",
        lu_need_convert="79-95", pm_entry="163-164", pm_tp="125-131,196-205", mi_mpi="865-866", mi_detect="745,756-762",
        trb="36-38", tlh_disable="131-132", tp_rb="16-33", df_trtllm="22,27", df_trt="20,82",
        df_lib="22,91", trtllm="0.9.0", trt="9.3.0.post12.dev1", backend_tag="v0.9.0", ug="87", means="output",
        tut="273-279", engine_first="MPI",
    ),
    "0.29.0": _subdir_release(
        "0.29.0", "v0.29.0", lu_check="454-471", lu_force_rb="128", lu_mpi_default="56-66",
        lu_need_convert="79-95", pm_entry="173-174", pm_tp="126-132,208-217", mi_mpi="882-883", mi_detect="762,773-779",
        trb="38-40", tlh_disable="95-96", tp_rb="16-33", df_trtllm="23,28", df_trt="20,85",
        df_lib="23,94", trtllm="0.11.0", trt="10.1.0", backend_tag="v0.11.0", ug="87", means="output",
        tut="273-279", engine_first="MPI",
    ),
    "0.30.0": _subdir_release(
        "0.30.0", "0.30.0-dlc", lu_check="481-498", lu_force_rb="129", lu_mpi_default="57-67",
        lu_need_convert="80-96", pm_entry="181-182", pm_tp="128-134,216-225", mi_mpi="899-900", mi_detect="779,790-796",
        trb="38-40", tlh_disable="95-96", tp_rb="16-33", df_trtllm="24,29", df_trt="21,82",
        df_lib="24,91", trtllm="0.12.0", trt="10.3.0", backend_tag="v0.12.0", ug="86", means="max_seq_len",
        tut="250-256", engine_first="MPI",
    ),
    "0.31.0": _subdir_release(
        "0.31.0", "0.31.0-dlc", lu_check="481-498", lu_force_rb="129", lu_mpi_default="57-67",
        lu_need_convert="80-96", pm_entry="181-182", pm_tp="128-134,216-225", mi_mpi="917-918", mi_detect="797,808-814",
        trb="38-40", tlh_disable="95-96", tp_rb="16-33", df_trtllm="24,29", df_trt="21,86",
        df_lib="24,95", trtllm="0.12.0", trt="10.1.0", backend_tag="v0.12.0", ug="87", means="max_seq_len",
        tut="251-257", engine_first="Python",
    ),
    "0.32.0": _subdir_release(
        "0.32.0", "0.32.0-dlc", lu_check="462-479", lu_force_rb="141", lu_mpi_default="70-80",
        lu_need_convert="93-109", pm_entry="181-182", pm_tp="128-134,216-225", mi_mpi="922-923", mi_detect="802,813-819",
        trb="38-40", tlh_disable=None, tp_rb="16-33", df_trtllm="24,29", df_trt="21,89",
        df_lib="24,98", trtllm="0.12.0", trt="10.1.0", backend_tag="v0.12.0", ug="87", means="max_seq_len",
        tut="251-257", engine_first="Python",
    ),
    "0.33.0": _async_release(
        "0.33.0", "0.33.0-dlc", lu_check="426-434", lu_force_rb=None, pm_entry="171-196",
        pm_async_prop="151-152,184-186", pm_mpi="64,148-149", lcr_mpi="85-90", lcr_rb="57-83", pp_rb="74-83,162-166",
        conn_mpi="224-275", prep="1749-1760", tas_llm="93-100", tp_kwargs="128-137", tp_seq="64,157",
        tp_window="79-81", sync="165-167", df_trtllm="16,60-61", trtllm="0.21.0rc1", trt=None,
        trt_note=(
            "the Dockerfile installs tensorrt_llm==0.21.0rc1 with no tensorrt pin; 0.21.0 final ships with TensorRT "
            f"10.11.0.33 in Triton 25.08 ({TRITON_MATRIX}); rc1's pin not verified"
        ),
        trt_src=None, ug="87", broken=None, broken_src=at(TP, "0.33.0-dlc", "128-163"),
    ),
    "0.34.0": _subdir_release(
        "0.34.0", "0.34.0-dlc", lu_check="469-486", lu_force_rb="148", lu_mpi_default="70-87",
        lu_need_convert="100-116", pm_entry="184-185", pm_tp="128-134,219-228", mi_mpi="916-917", mi_detect="796,807-813",
        trb="38-40", tlh_disable=None, tp_rb="16-33", df_trtllm="24,29", df_trt="21,89",
        df_lib="24,98", trtllm="0.12.0", trt="10.1.0", backend_tag="v0.12.0", ug="87", means="max_seq_len",
        tut="251-257", engine_first="Python",
    ),
    "0.35.0": _async_release(
        "0.35.0", "v0.35.0", lu_check="470-478", lu_force_rb="149", pm_entry="173-200",
        pm_async_prop="153-154,186-187", pm_mpi="65,150-151", lcr_mpi="81-86", lcr_rb="56-78", pp_rb="76-85,165-169",
        conn_mpi="224-275", prep="1074-1085", tas_llm="100-134", tp_kwargs="131-140", tp_seq="66,160",
        tp_window="81-83", sync="165-167", df_trtllm="16,60-61", trtllm="1.0.0", trt="10.11.0.33",
        trt_note=_TRT_1_0, trt_src=f"{TRITON_MATRIX} rows 25.09-25.10", ug="87", broken=_DUP_KWARGS, broken_src=at(TP, "v0.35.0", "131-140"),
    ),
    "0.36.0": _async_release(
        "0.36.0", "v0.36.0", lu_check="496-504", lu_force_rb="175", pm_entry="173-200",
        pm_async_prop="153-154,186-187", pm_mpi="65,150-151", lcr_mpi="81-86", lcr_rb="56-78", pp_rb="76-85,165-169",
        conn_mpi="224-275", prep="1328-1339", tas_llm="100-134", tp_kwargs="131-140", tp_seq="66,160",
        tp_window="81-83", sync="165-167", df_trtllm="16,60-61", trtllm="1.0.0", trt="10.11.0.33",
        trt_note=_TRT_1_0, trt_src=f"{TRITON_MATRIX} rows 25.09-25.10", ug="87", broken=_DUP_KWARGS, broken_src=at(TP, "v0.36.0", "131-140"),
    ),
}

# 0.34.0 reverted the async handler on its branch: the image design is 0.32's again.
LMI_0_34_REVERT = Fact("fac49e0b", f"{_DJL} git show fac49e0b (2025-09-23, 'Revert \"[python][async] adding async tensorrt-llm handler (#2785)\"')")


# --------------------------------------------------------------------------------------------------------------
# B. Triton tensorrtllm_backend
# --------------------------------------------------------------------------------------------------------------

TRITON_TAGS = (
    "v0.9.0", "v0.10.0", "v0.11.0", "v0.12.0", "v0.13.0", "v0.14.0", "v0.15.0", "v0.16.0", "v0.17.0",
    "v0.18.0", "v0.18.1", "v0.18.2", "v0.19.0",
)
TRITON_NO_BACKEND_SOURCE_FROM = Fact(
    "v0.20.0",
    f"{_TB} git ls-tree v0.20.0 (no inflight_batcher_llm/, no all_models/)",
    "v0.20.0, v0.21.0 and v1.0.0 hold only the tensorrt_llm submodule, dockerfile and docs; the backend is in "
    "TensorRT-LLM triton_backend/",
)

GPT_MODEL_TYPES = ("inflight_fused_batching", "inflight_batching", "V1", "v1")
ENSEMBLE_STEPS = ("preprocessing", "tensorrt_llm", "postprocessing")

# Per tag, the lines the facts sit on (found with a brace/try scan of every GetParameter in model_state.cc and
# model_instance_state.cc; each call outside a try block is listed as required).
_TB_LINES: dict[str, dict[str, Any]] = {
    "v0.9.0": {"sub": "250d9c293d5edbc2a45c20775b3150b1eb68b364", "type": 83, "path": 113, "path_bare": True,
               "both": None, "guided": None, "window": (250, "int"), "stream": ("work_item.cc", "140-145"),
               "pre_tok": 57, "pre_mm": None, "post_tok": 56, "steps": (204, 272, 396), "ins": (32, 37, 144, 351)},
    "v0.10.0": {"sub": "9bd15f1937f52658fb116f30d58fea786ce5d03b", "type": 54, "path": 442, "path_bare": True,
                "both": None, "guided": None, "window": (125, "int"), "stream": ("utils.cc", "546-551"),
                "pre_tok": 57, "pre_mm": None, "post_tok": 56, "steps": (204, 272, 396), "ins": (32, 37, 144, 351)},
    "v0.11.0": {"sub": "05316d3313360012536ace46c781518f5afae75e", "type": 56, "path": 461, "path_bare": False,
                "both": 487, "guided": None, "window": (127, "int"), "stream": ("utils.cc", "574-579"),
                "pre_tok": 57, "pre_mm": None, "post_tok": 56, "steps": (210, 290, 422), "ins": (32, 43, 150, 377)},
    "v0.12.0": {"sub": "28fb9aacaa5a05494635194a9cbb264da9a744bd", "type": 56, "path": 510, "path_bare": False,
                "both": 536, "guided": None, "window": (127, "int"), "stream": ("utils.cc", "604-607"),
                "pre_tok": 61, "pre_mm": ("visual_model_path", 66), "post_tok": 56, "steps": (221, 313, 449),
                "ins": (32, 49, 156, 400)},
    "v0.13.0": {"sub": "201135e58aa525af7e523d091d4c9584229524bc", "type": 58, "path": 544, "path_bare": False,
                "both": 570, "guided": None, "window": (129, "csv"), "stream": ("utils.cc", "615-618"),
                "pre_tok": 58, "pre_mm": ("visual_model_path", 63), "post_tok": 56, "steps": (221, 309, 449),
                "ins": (32, 43, 150, 396)},
    "v0.14.0": {"sub": "b0880169d0fb8cd0363049d91aa548e58a41be07", "type": 59, "path": 560, "path_bare": False,
                "both": 586, "guided": None, "window": (141, "csv"), "stream": ("utils.cc", "638-641"),
                "pre_tok": 58, "pre_mm": ("visual_model_path", 63), "post_tok": 56, "steps": (232, 320, 468),
                "ins": (32, 43, 156, 411)},
    "v0.15.0": {"sub": "8f91cff22e7cc1feeb61f6edb58cd3bc91333fde", "type": 59, "path": 616, "path_bare": False,
                "both": 642, "guided": None, "window": (141, "csv"), "stream": ("utils.cc", "658-661"),
                "pre_tok": 62, "pre_mm": ("visual_model_path", 67), "post_tok": 56, "steps": (273, 361, 521),
                "ins": (32, 43, 156, 452)},
    "v0.16.0": {"sub": "42a7b0922fc9e095f173eab9a7efa0bcdceadd0d", "type": 60, "path": 645, "path_bare": False,
                "both": 671, "guided": None, "window": (142, "csv"), "stream": ("utils.cc", "664-667"),
                "pre_tok": 62, "pre_mm": ("visual_model_path", 67), "post_tok": 56, "steps": (300, 388, 568),
                "ins": (32, 43, 168, 487)},
    "v0.17.0": {"sub": "350625cc1c0754882f764a6df5540e35caa48ef3", "type": 60, "path": 645, "path_bare": False,
                "both": 671, "guided": None, "window": (142, "csv"), "stream": ("utils.cc", "795-798"),
                "pre_tok": 62, "pre_mm": ("visual_model_path", 67), "post_tok": 56, "steps": (300, 388, 568),
                "ins": (32, 43, 168, 487)},
    "v0.18.0": {"sub": "3c0462002cbefde475d46acb5d5edefec92dfb6a", "type": 60, "path": 645, "path_bare": False,
                "both": 671, "guided": None, "window": (142, "csv"), "stream": ("utils.cc", "795-798"),
                "pre_tok": 62, "pre_mm": ("visual_model_path", 67), "post_tok": 56, "steps": (300, 388, 568),
                "ins": (32, 43, 168, 487)},
    "v0.18.1": {"sub": "62f3c954b9e44eb8ef6fd7f0e3ffef8602987e94", "type": 60, "path": 645, "path_bare": False,
                "both": 671, "guided": None, "window": (142, "csv"), "stream": ("utils.cc", "795-798"),
                "pre_tok": 62, "pre_mm": ("visual_model_path", 67), "post_tok": 56, "steps": (300, 388, 568),
                "ins": (32, 43, 168, 487)},
    "v0.18.2": {"sub": "5aec7af45fc0abd876fa68a9ae8c8cae084f3af3", "type": 60, "path": 645, "path_bare": False,
                "both": 671, "guided": None, "window": (142, "csv"), "stream": ("utils.cc", "795-798"),
                "pre_tok": 62, "pre_mm": ("visual_model_path", 67), "post_tok": 56, "steps": (300, 388, 568),
                "ins": (32, 43, 168, 487)},
    "v0.19.0": {"sub": "c6f7d423354214df818e206e87680fb2d513a718", "type": 62, "path": 746, "path_bare": False,
                "both": 772, "guided": (413, 414, 415), "window": (144, "csv"), "stream": ("utils.cc", "905-908"),
                "pre_tok": 63, "pre_mm": ("multimodal_model_path", 68), "post_tok": 56, "steps": (354, 442, 658),
                "ins": (32, 43, 168, 541)},
}

# TensorRT per tag. v0.12.0+: the backend's own image recipe pins it (line 4); v0.10/v0.11: the README's "build the
# same container as the NGC one" recipe; v0.9.0 is left open (see the note).
_TB_TENSORRT: dict[str, Fact] = {
    "v0.9.0": Fact(
        None,
        cite(at(TB_README, "v0.9.0", "73-74,89"), f"{TRITON_MATRIX_2530} row 24.05"),
        "conflicting: the README recipe says 9.2.0.5 (stale: it names backend v0.7.2), the matrix row 24.05 lists "
        "TensorRT 10.0.1.6 with TensorRT-LLM 0.9.0, and LMI ships TensorRT-LLM 0.9.0 with TensorRT 9.3.0.post12.dev1",
    ),
    "v0.10.0": Fact("10.0.1.6", cite(at(TB_README, "v0.10.0", "73-74"), f"{TRITON_MATRIX_2530} row 24.06 (10.0.1)")),
    "v0.11.0": Fact("10.1.0.27", cite(at(TB_README, "v0.11.0", "74,77"), f"{TRITON_MATRIX_2530} row 24.07 (10.1.0)")),
}
for _tag, _trt in {
    "v0.12.0": "10.3.0.26", "v0.13.0": "10.4.0.26", "v0.14.0": "10.4.0.26", "v0.15.0": "10.6.0.26",
    "v0.16.0": "10.7.0.23", "v0.17.0": "10.8.0.43", "v0.18.0": "10.9.0.34", "v0.18.1": "10.9.0.34",
    "v0.18.2": "10.9.0.34", "v0.19.0": "10.9.0.34",
}.items():
    _TB_TENSORRT[_tag] = Fact(_trt, at(TB_DOCKER, _tag, "4"), "ARG TRT_VER of the backend's image recipe")

# The only other no-default reads (their catch blocks rethrow), each behind a setting Kiln does not write.
_TB_PARTICIPANT_IDS = {"v0.13.0": "221-235", "v0.14.0": "237-252"}

# NGC container rows that name the same TensorRT-LLM release (corroboration for the version).
_TB_MATRIX_ROW = {
    "v0.9.0": "24.05", "v0.10.0": "24.06", "v0.11.0": "24.07", "v0.12.0": "24.08", "v0.13.0": "24.09",
    "v0.14.0": "24.10", "v0.15.0": "24.11", "v0.16.0": "24.12", "v0.17.0": "25.01",
}


def _triton_release(tag: str) -> TritonRelease:
    d = _TB_LINES[tag]
    version = tag.removeprefix("v")
    row = _TB_MATRIX_ROW.get(tag)
    trtllm_src = f"{_TB} git ls-tree {tag} tensorrt_llm -> {d['sub'][:8]}"
    if row:
        trtllm_src = cite(trtllm_src, f"{TRITON_MATRIX_2540 if row >= '24.12' else TRITON_MATRIX_2530} row {row}")
    required = [
        Param("gpt_model_type", GPT_MODEL_TYPES, "anything else throws 'Invalid gpt_model_type'",
              at(MIS, tag, str(d["type"]))),
    ]
    if d["path_bare"]:
        required.append(Param("gpt_model_path", None, "the engine directory (config.json is opened from it)",
                              at(MIS, tag, str(d["path"]))))
    if d["guided"]:
        g = d["guided"]
        required += [
            Param("tokenizer_dir", None, "any string ('' or the ${tokenizer_dir} placeholder is fine: only logged)",
                  at(MIS, tag, f"{g[0]},417-422")),
            Param("xgrammar_tokenizer_info_path", None,
                  "'' or the placeholder disables guided decoding; otherwise an existing tokenizer-info JSON file",
                  at(MIS, tag, f"{g[1]},424-437")),
            Param("guided_decoding_backend", None,
                  "'' (or the placeholder) disables; with a tokenizer-info path any value but xgrammar throws",
                  at(MIS, tag, f"{g[2]},424-449")),
        ]
    if d["path_bare"]:
        decoder = required[1]
    else:
        decoder = Param(
            "gpt_model_path", None,
            "read inside try, but a missing or non-existent path leaves it empty and, with no encoder_model_path, "
            "'Both encoder and decoder model paths are empty' stops the load: effectively required, an existing dir",
            at(MIS, tag, f"{d['path']}-{d['path'] + 2},{d['both']}"),
        )
    conditional: list[Fact] = []
    if tag in _TB_PARTICIPANT_IDS:
        conditional.append(Fact("participant_ids", at(MIS, tag, _TB_PARTICIPANT_IDS[tag]),
                                "required in orchestrator mode (TRTLLM_ORCHESTRATOR) with process spawning disabled"))
    if tag == "v0.19.0":
        conditional.append(Fact(("lookahead_window_size", "lookahead_ngram_size", "lookahead_verification_set_size"),
                                at(MIS, tag, "627-647"), "required when decoding_mode is lookahead"))
    window_line, window_format = d["window"]
    pre: list[Param] = [Param("tokenizer_dir", None, "an HF tokenizer directory (AutoTokenizer.from_pretrained)",
                              at(f"{AM}/preprocessing/1/model.py", tag, f"{d['pre_tok']}-{d['pre_tok'] + 1}"))]
    if d["pre_mm"]:
        name, line = d["pre_mm"]
        pre.append(Param(name, None, f"'' or the ${{{name}}} placeholder means text only",
                         at(f"{AM}/preprocessing/1/model.py", tag, f"{line}-{line + 1}")))
    s1, s2, s3 = d["steps"]
    text_input, max_tokens, stream, smap = d["ins"]
    ens = f"{AM}/ensemble/config.pbtxt"
    tcfg = f"{AM}/tensorrt_llm/config.pbtxt"
    stream_file, stream_lines = d["stream"]
    return TritonRelease(
        tag=tag,
        tensorrt_llm=Fact(version, trtllm_src,
                          "the submodule's tensorrt_llm/version.py was not readable here; the tag names the release"),
        tensorrt=_TB_TENSORRT[tag],
        required_parameters=tuple(required),
        decoder_engine=decoder,
        conditional_parameters=tuple(conditional),
        max_attention_window_format=Fact(
            window_format,
            at(MIS, tag, str(window_line)),
            "GetParameter<int32_t> (std::stoi: '4096,4096' silently reads 4096)" if window_format == "int"
            else "GetParameter<std::vector<int32_t>> via utils::csvStrToVecInt",
        ),
        template_backend=Fact("tensorrtllm" if tag == "v0.9.0" else "${triton_backend}", at(tcfg, tag, "28"),
                              "fill with tensorrtllm for the C++ backend these parameters belong to"),
        decoupled=Fact("model_transaction_policy.decoupled", at(MS, tag, "73-76" if tag == "v0.9.0" else "72-75"),
                       "absent: false"),
        streaming_needs_decoupled=Fact(
            True, at(f"{TB_SRC}/{stream_file}", tag, stream_lines),
            "'Streaming is only supported if model is deployed using decoupled mode.'",
        ),
        preprocessing_required=tuple(pre),
        postprocessing_required=(
            Param("tokenizer_dir", None, "an HF tokenizer directory",
                  at(f"{AM}/postprocessing/1/model.py", tag, f"{d['post_tok']}-{d['post_tok'] + 1}")),
        ),
        ensemble_steps=Fact(ENSEMBLE_STEPS, at(ens, tag, f"{s1},{s2},{s3}"), "platform: ensemble, model_version -1"),
        ensemble_required_inputs=Fact(("text_input", "max_tokens"), at(ens, tag, f"{text_input},{max_tokens}")),
        ensemble_stream_input=Fact(("stream", "streaming"), at(ens, tag, f"{stream},{smap}"),
                                   "optional input, mapped to the tensorrt_llm step's streaming input"),
    )


TRITON_TRTLLM: dict[str, TritonRelease] = {tag: _triton_release(tag) for tag in TRITON_TAGS}


# --------------------------------------------------------------------------------------------------------------
# Checks the layout tests can call
# --------------------------------------------------------------------------------------------------------------


def _same(got: str, want: str) -> bool:
    # Booleans are read with Boolean.parseBoolean / pydantic (any case); names (engine, entry point) are exact.
    if want.lower() in ("true", "false"):
        return got.strip().lower() == want.lower()
    return got.strip() == want


def lmi_problems(version: str, props: Mapping[str, str], tp: int) -> list[str]:
    """What in a serving.properties mapping the LMI release would not start with (empty: nothing)."""
    rel = LMI_TRTLLM[version]
    out = []
    for p in rel.required_properties:
        accepted = tuple(v.replace(TP_PLACEHOLDER, str(tp)) for v in p.values)
        got = props.get(p.key)
        if got is None:
            out.append(f"{p.key} missing (needs {accepted[0]}): {p.why}")
        elif not any(_same(str(got), a) for a in accepted):
            out.append(f"{p.key}={got} (needs one of {accepted}): {p.why}")
    for f in rel.forbidden_properties:
        got = props.get(f.key)
        if got is not None and (f.values is None or any(_same(str(got), v) for v in f.values)):
            out.append(f"{f.key}={got} is not allowed ({f.effect}): {f.why}")
    return out


def triton_problems(tag: str, params: Mapping[str, str]) -> list[str]:
    """Which required tensorrt_llm-model parameters a config.pbtxt lacks or fills with a value the tag refuses."""
    rel = TRITON_TRTLLM[tag]
    out = []
    for p in rel.required_parameters + ((rel.decoder_engine,) if rel.decoder_engine not in rel.required_parameters else ()):
        if p.key not in params:
            out.append(f"parameter {p.key} missing: {p.rule}")
        elif p.accepts is not None and params[p.key] not in p.accepts:
            out.append(f"parameter {p.key}={params[p.key]!r} not one of {p.accepts}")
        elif p.key == "gpt_model_path" and not params[p.key]:
            out.append("parameter gpt_model_path is empty")
    return out


# --------------------------------------------------------------------------------------------------------------
# config.pbtxt (protobuf text format) reader: enough for Triton model configs, as the backend's templates and
# Kiln write them (multi-line blocks, one-line blocks, `parameters {` with or without the colon, [ ... ] lists,
# ${placeholders} left unfilled, # comments).
# --------------------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|\$\{[^}]*\}|[{}\[\]:,;<>]|[^\s{}\[\]:,;"#<>]+')


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # an unterminated string: nothing in the grammar above matches
            raise ValueError(f"config.pbtxt: cannot read from {text[pos:pos + 30]!r}")
        pos = m.end()
        if not (m.group().isspace() or m.group().startswith("#")):
            out.append(m.group())
    return out


def _scalar(tok: str) -> str:
    return tok[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape") if tok.startswith('"') else tok


def _message(toks: list[str], i: int, end: str) -> tuple[dict[str, list[Any]], int]:
    """A message as {field: [values...]} (repeated fields and [a, b] lists both accumulate)."""
    msg: dict[str, list[Any]] = {}
    while toks[i] != end:
        if toks[i] in "{}[]<>:,;" or toks[i] == "<EOF>":
            raise ValueError(f"config.pbtxt: unexpected {toks[i]!r}")
        name = toks[i]
        i += 1
        if toks[i] == ":":
            i += 1
        if toks[i] == "[":
            i += 1
            vals = []
            while toks[i] != "]":
                v, i = _value(toks, i)
                vals.append(v)
                if toks[i] == ",":
                    i += 1
            i += 1
        else:
            v, i = _value(toks, i)
            vals = [v]
        if toks[i] in (",", ";"):
            i += 1
        msg.setdefault(name, []).extend(vals)
    return msg, i + 1


def _value(toks: list[str], i: int) -> tuple[Any, int]:
    if toks[i] in ("{", "<"):
        return _message(toks, i + 1, "}" if toks[i] == "{" else ">")
    if toks[i] == "<EOF>":
        raise ValueError("config.pbtxt: ends inside a block")
    return _scalar(toks[i]), i + 1


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    msg, _ = _message(_tokens(text) + ["<EOF>"], 0, "<EOF>")
    return msg


def parse_pbtxt_parameters(text: str) -> dict[str, str]:
    """parameters { key: "k" value: { string_value: "v" } } blocks -> {k: v}. A key given twice is an error."""
    out: dict[str, str] = {}
    for p in parse_pbtxt(text).get("parameters", []):
        key = p["key"][0]
        if key in out:
            raise ValueError(f"config.pbtxt: parameter {key} given twice")
        out[key] = p["value"][0].get("string_value", [""])[0]
    return out


def parse_pbtxt_header(text: str) -> dict[str, str | None]:
    """The top-level fields a layout test checks: name, backend, platform, max_batch_size, decoupled."""
    msg = parse_pbtxt(text)

    def first(field: str) -> str | None:
        return msg[field][0] if field in msg else None

    policy = msg.get("model_transaction_policy", [{}])[0]
    return {
        "name": first("name"),
        "backend": first("backend"),
        "platform": first("platform"),
        "max_batch_size": first("max_batch_size"),
        "decoupled": policy.get("decoupled", [None])[0],
    }


def ensemble_steps(text: str) -> list[str]:
    """The model_name of each ensemble_scheduling step, in order."""
    sched = parse_pbtxt(text).get("ensemble_scheduling", [{}])[0]
    return [s["model_name"][0] for s in sched.get("step", [])]
