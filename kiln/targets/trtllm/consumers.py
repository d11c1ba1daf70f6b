"""Who loads a TensorRT-LLM engine, and so how Kiln must build and lay it out: consumer profiles as data.

A TensorRT engine loads only on the TensorRT it was built with ("The engine plan file is not
compatible with this version of TensorRT … please rebuild"), and nothing in TensorRT-LLM's runtime
compares the engine's ``version`` with its own (``cpp/tensorrt_llm/runtime/gptJsonConfig.cpp``
``parseJson`` only picks the config format). So the profile is the check: it names the exact
``tensorrt_llm`` and ``tensorrt`` its image ships, which become the toolchain of the engine (keyed,
so a lookup needs no ``--toolchain`` pins, and a build host with other versions is refused), and it
says which layout the consumer reads and with which parameters. Facts and their sources:
``docs/research/trtllm-consumers.md`` (§1 LMI, §2 tensorrtllm_backend, §3 TensorRT-LLM). Sources:

``DF``   djl-serving serving/docker/tensorrt-llm.Dockerfile at the ``0.NN.0-dlc`` branch SageMaker builds from
``LU``   djl-serving wlm/src/main/java/ai/djl/serving/wlm/LmiUtils.java (the "already compiled" check)
``TAS``  djl-serving engines/python/setup/djl_python/lmi_trtllm/trtllm_async_service.py
``TP``   djl-serving engines/python/setup/djl_python/properties_manager/trt_properties.py
``UG``   djl-serving serving/docs/lmi/user_guides/trt_llm_user_guide.md
``MIS``  tensorrtllm_backend inflight_batcher_llm/src/model_instance_state.cc at the backend's tag
``TM``   the Triton release compatibility matrix (trtllm-python-py3 containers: TRT-LLM and TensorRT versions)

Three kinds of consumer:

``lmi-trtllm:<release>``     SageMaker LMI's TensorRT-LLM container. 0.33 and 0.35+ load an engine directory
                             (``config.json`` with ``build_config``: LU@0.33.0-dlc L98-103) through the async
                             LLM-API service; 0.28-0.32 and 0.34 recognise only a sub-directory holding
                             ``config.pbtxt`` and ``tokenizer_config.json`` (LU@0.32.0-dlc L93-109) and run the
                             image's bundled tensorrtllm_backend of the same TensorRT-LLM version.
``triton-trtllm:<release>``  Triton's ``tensorrtllm`` backend at that tag, in its NGC trtllm-python-py3 image.
``tensorrt-llm[:<version>]`` direct use of the runtime (``tensorrt_llm.LLM`` / the executor); without a
                             version, whatever is installed on the build host (the default consumer).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

from ...errors import ValidationError
from .._lmi_image import read_lmi_telemetry

__all__ = ["TrtllmConsumer", "CONSUMERS", "DEFAULT_CONSUMER", "get_consumer", "detect_lmi_consumer",
           "version_tuple"]

DEFAULT_CONSUMER = "tensorrt-llm"


def version_tuple(version: str) -> tuple[int, ...]:
    """``0.21.0rc1`` → (0, 21, 0): the release a pre-release belongs to (for "at least" rules)."""
    return tuple(int(p) for p in re.findall(r"\d+", version.split("rc")[0].split("+")[0])[:3])


@dataclass(frozen=True)
class TrtllmConsumer:
    """One consumer release: the toolchain its image ships and the layout it reads."""

    name: str  # "lmi-trtllm", "triton-trtllm" or "tensorrt-llm"
    version: str  # "" for the plain runtime: whatever is installed
    tensorrt_llm: str | None = None  # None: the installed one (plain runtime)
    # None where the image's TensorRT could not be established from source: a lookup or build must pin it
    # (``--toolchain tensorrt=VERSION``); it is never guessed, since a wrong one is a miss at best.
    tensorrt: str | None = None
    source: str = ""
    # "lmi-async" (LMI 0.33/0.35+: engine dir + async LLM-API service), "lmi-pbtxt" (LMI <= 0.32, 0.34: a
    # tensorrtllm_backend model sub-directory), "triton" (a Triton model repository), None (raw files only).
    layout: str | None = None
    # The tensorrtllm_backend release whose config.pbtxt parameters the layout renders (triton, lmi-pbtxt).
    backend: str | None = None
    # LMI 0.30+: option.max_output_len "Now maps to max_seq_len in TRTLLM" (UG@0.30.0-dlc L85-87); before, the
    # engine's sequence is max_input_len + max_output_len.
    max_output_len_is_seq_len: bool = False
    # Why Kiln refuses to build for this release (its server cannot start with any layout), or None.
    defect: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}" if self.version else self.name

    @property
    def is_lmi(self) -> bool:
        return self.name == "lmi-trtllm"

    @property
    def toolchain(self) -> dict[str, str]:
        """What the image ships, as toolchain components (absent ones come from the build host or pins)."""
        out = {}
        if self.tensorrt_llm is not None:
            out["tensorrt_llm"] = self.tensorrt_llm
        if self.tensorrt is not None:
            out["tensorrt"] = self.tensorrt
        return out

    @property
    def backend_version(self) -> tuple[int, ...]:
        return version_tuple(self.backend or "0")


def _lmi(version: str, trtllm: str, trt: str, source: str, *, pbtxt: bool, seq_len: bool,
         defect: str | None = None) -> TrtllmConsumer:
    return TrtllmConsumer("lmi-trtllm", version, trtllm, trt, source, "lmi-pbtxt" if pbtxt else "lmi-async",
                          backend=trtllm if pbtxt else None, max_output_len_is_seq_len=seq_len, defect=defect)


# LMI 0.35/0.36: TAS calls LLM(model=…, tensor_parallel_size=…, trust_remote_code=…, dtype=…, revision=…,
# **llm_kwargs) while TP's get_llm_kwargs() holds those keys too, so Python raises "got multiple values for
# keyword argument" before anything loads (TAS@0.35.0-dlc L105, L122-129; TP@0.35.0-dlc L131-140; the same on
# 0.35.1-dlc, v0.36.0 and master).
_ASYNC_DEFECT = ("its TensorRT-LLM service cannot start: trtllm_async_service.py passes tensor_parallel_size, dtype, "
                 "revision and trust_remote_code both by name and in **llm_kwargs (TypeError: got multiple values for "
                 "keyword argument; djl-serving trtllm_async_service.py@0.35.0-dlc L122-129, trt_properties.py L131-140)")

_LMI = (
    # release, tensorrt_llm, tensorrt (DF: pip lines), source
    _lmi("0.28.0", "0.9.0", "9.3.0.post12.dev1", "DF@0.28.0-dlc L20-22,L83-94", pbtxt=True, seq_len=False),
    _lmi("0.29.0", "0.11.0", "10.1.0", "DF@0.29.0-dlc L20,L23,L85-94", pbtxt=True, seq_len=False),
    _lmi("0.30.0", "0.12.0", "10.3.0", "DF@0.30.0-dlc L21,L24,L82-83", pbtxt=True, seq_len=True),
    _lmi("0.31.0", "0.12.0", "10.1.0", "DF@0.31.0-dlc L21,L23-24,L86-87", pbtxt=True, seq_len=True),
    _lmi("0.32.0", "0.12.0", "10.1.0", "DF@0.32.0-dlc L21,L24,L89-90", pbtxt=True, seq_len=True),
    # tensorrt: tensorrt_llm 0.21.0's pin (tensorrt~=10.11.0); 0.21.0rc1's own pin was not readable. A build host
    # whose installed TensorRT differs is refused, naming both (never a wrong hit).
    _lmi("0.33.0", "0.21.0rc1", "10.11.0.33", "DF@0.33.0-dlc L15-16,L60-61", pbtxt=False, seq_len=True),
    # The 0.34.0-dlc branch reverted the async handler (commit fac49e0b): the 0.32 design again.
    _lmi("0.34.0", "0.12.0", "10.1.0", "DF@0.34.0-dlc L21,L24", pbtxt=True, seq_len=True),
    _lmi("0.35.0", "1.0.0", "10.11.0.33", "DF@0.35.0-dlc L15-16,L60-61; TM 25.09", pbtxt=False, seq_len=True,
         defect=_ASYNC_DEFECT),
    _lmi("0.35.1", "1.0.0", "10.11.0.33", "DF@0.35.1-dlc L15-16,L60-61; TM 25.09", pbtxt=False, seq_len=True,
         defect=_ASYNC_DEFECT),
    _lmi("0.36.0", "1.0.0", "10.11.0.33", "DF@v0.36.0 L16; TM 25.10", pbtxt=False, seq_len=True, defect=_ASYNC_DEFECT),
)

# tensorrtllm_backend tag → (tensorrt_llm, tensorrt of its image). TensorRT-LLM: the tag (its tensorrt_llm submodule,
# TM rows 24.05-25.01). TensorRT: v0.12.0+ the backend's own image recipe (dockerfile/Dockerfile.triton.trt_llm_backend
# L4, ARG TRT_VER), v0.10/v0.11 its README recipe (L73-77), v0.20+ TM (the backend source moved into TensorRT-LLM);
# written as pip reports the version (three parts up to 10.7, four from 10.8 as the wheels are numbered). v0.9.0's
# sources disagree (README 9.2.0.5, TM 10.0.1.6): None, and 0.9 is older than Kiln builds for anyway.
_TRITON = {
    "0.9.0": ("0.9.0", None), "0.10.0": ("0.10.0", "10.0.1"), "0.11.0": ("0.11.0", "10.1.0"),
    "0.12.0": ("0.12.0", "10.3.0"), "0.13.0": ("0.13.0", "10.4.0"), "0.14.0": ("0.14.0", "10.4.0"),
    "0.15.0": ("0.15.0", "10.6.0"), "0.16.0": ("0.16.0", "10.7.0"), "0.17.0": ("0.17.0", "10.8.0.43"),
    "0.18.0": ("0.18.0", "10.9.0.34"), "0.18.1": ("0.18.1", "10.9.0.34"), "0.18.2": ("0.18.2", "10.9.0.34"),
    "0.19.0": ("0.19.0", "10.9.0.34"),
    "0.20.0": ("0.20.0", "10.10.0.31"), "0.21.0": ("0.21.0", "10.11.0.33"), "1.0.0": ("1.0.0", "10.11.0.33"),
}


def _triton(version: str, trtllm: str, trt: str | None) -> TrtllmConsumer:
    return TrtllmConsumer("triton-trtllm", version, trtllm, trt, f"TM (tritonserver trtllm-python-py3), tag v{version}",
                          "triton", backend=version)


def _runtime(version: str, trt: str | None) -> TrtllmConsumer:
    return TrtllmConsumer("tensorrt-llm", version, version, trt, "TensorRT-LLM release's TensorRT (as its image)")


CONSUMERS: dict[str, TrtllmConsumer] = {
    DEFAULT_CONSUMER: TrtllmConsumer("tensorrt-llm", "", source="the build host's installed tensorrt_llm"),
    **{c.ref: c for c in _LMI},
    **{f"triton-trtllm:{v}": _triton(v, *pins) for v, pins in _TRITON.items()},
    # Direct use of a release: the TensorRT its release images ship (the same pairs as the Triton images).
    **{f"tensorrt-llm:{trtllm}": _runtime(trtllm, trt) for trtllm, trt in dict(_TRITON.values()).items()},
}


def get_consumer(ref: str) -> TrtllmConsumer:
    """The consumer ``NAME[:VERSION]`` names; ValidationError listing the choices otherwise."""
    name, _, version = ref.strip().lower().partition(":")
    found = CONSUMERS.get(f"{name}:{version.removeprefix('v')}" if version else name)
    if found is None:
        releases = sorted({c.version for c in CONSUMERS.values() if c.name == name and c.version}, key=version_tuple)
        hint = (f"Kiln has profiles of {name} {', '.join(releases)}" if releases
                else "consumers: lmi-trtllm:RELEASE, triton-trtllm:RELEASE, tensorrt-llm[:VERSION]")
        raise ValidationError(f"consumer {ref!r} is not one Kiln builds TensorRT-LLM engines for; {hint}.")
    return found


def lmi_consumers() -> tuple[str, ...]:
    """The LMI releases Kiln builds for (an open LMI lookup tries each; the others are refused by name)."""
    return tuple(c.ref for c in CONSUMERS.values()
                 if c.is_lmi and not c.defect and version_tuple(c.tensorrt_llm or "0") >= (0, 11))


def detect_lmi_consumer(environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """``(consumer ref, where it was read)`` inside an LMI TensorRT-LLM image, else None.

    Every such image sets ``SERVING_FEATURES=trtllm`` (DF@0.28.0-dlc L52 … DF@v0.36.0 L36), and LMI itself
    picks its TensorRT-LLM service by exactly that value (LU: ``"trtllm".equals(SERVING_FEATURES)``); the
    release is the one DJL's telemetry file names. A release Kiln has no profile for is refused."""
    env = os.environ if environ is None else environ
    if env.get("SERVING_FEATURES") != "trtllm":
        return None
    read = read_lmi_telemetry()
    if read is None:
        return None
    text, path = read
    found = re.match(r"\s*v?(\d+\.\d+\.\d+)", text)
    if found is None:
        return None
    ref = f"lmi-trtllm:{found.group(1)}"
    if ref not in CONSUMERS:
        raise ValidationError(f"this is an LMI TensorRT-LLM {found.group(1)} container ({path}), a release Kiln has no "
                              f"profile for; Kiln builds for {', '.join(lmi_consumers())} (pass --consumer to build "
                              "for another container than this one).")
    return ref, f"{path} and SERVING_FEATURES=trtllm (an LMI TensorRT-LLM image)"
