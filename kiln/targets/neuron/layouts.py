"""Deployment layouts of Neuron artifacts (the mechanism: ``kiln.targets._layouts``).

``lmi``           a model directory a SageMaker LMI NeuronX container loads without compiling:
                  HF model files + ``compiled/`` NEFFs + ``serving.properties``
``neuron-cache``  the Neuron persistent compile cache for consumers that point
                  ``NEURON_COMPILE_CACHE_URL`` at it: the MODULE directories the compiler wrote, verbatim
                  (``neuron-cache/`` of the artifact); artifacts of an older worker get
                  ``neuronxcc-<version>/MODULE_<graph>+<flags>/{model.neff,model.done,compile_flags.json}``
"""

from __future__ import annotations

import json
import posixpath
from typing import Any, Callable

from ...errors import SpecError
from ...manifests import FileEntry, IndexEntry, Manifest
from .._layouts import Layout, serving_properties, strip_prefix

__all__ = ["LAYOUTS", "plan_neuron_layout"]

LAYOUTS = ("lmi", "neuron-cache")


def _batching(entry: IndexEntry, manifest: Manifest, read_blob: Callable[[str], bytes]) -> tuple[str, str | None]:
    """(option.rolling_batch, option.rolling_batch_strategy) as the graphs were compiled: named, never ``auto``
    (an LMI release resolves auto by its own rules, which may pick another backend or strategy). ``vllm``:
    the release hands these transformers-neuronx graphs to vLLM (model_loader unset)."""
    opts = entry.spec.get("options") or {}
    rolling = str(opts.get("rolling_batch") or "tnx")
    if rolling == "disable":
        return rolling, None
    rolling = "vllm" if rolling == "vllm" else "tnx"
    meta = next((f for f in manifest.files if f.path == "engine.json"), None)
    invocation: Any = None
    if meta is not None:
        try:
            invocation = json.loads(read_blob(meta.digest)).get("invocation")
        except (ValueError, AttributeError):
            invocation = None
    if isinstance(invocation, dict):
        config = (invocation.get("kwargs") or {}).get("neuron_config") or {}
        return rolling, "continuous_batching" if "continuous_batching" in config else "naive_rolling_batch"
    return rolling, opts.get("rolling_batch_strategy")


def _lmi_props(entry: IndexEntry, container_dir: str, batching: tuple[str, str | None]) -> dict[str, Any]:
    s = entry.spec
    opts = s.get("options") or {}
    return {
        "engine": "Python",
        "option.entryPoint": "djl_python.transformers_neuronx",
        "option.rolling_batch": batching[0],
        "option.rolling_batch_strategy": batching[1],
        # Rolling batch disabled, LMI compiles option.batch_size (max_rolling_batch_size is not read).
        "option.max_rolling_batch_size": s["batch_size"] if batching[0] != "disable" else None,
        "option.batch_size": s["batch_size"] if batching[0] == "disable" else None,
        "option.n_positions": s["n_positions"],
        "option.tensor_parallel_degree": s["tp_degree"],
        "option.dtype": s["dtype"],
        "option.group_query_attention": opts.get("gqa_strategy"),
        "option.context_length_estimate": opts.get("context_length_estimate"),
        "option.neuron_optimize_level": opts.get("optlevel"),
        "option.model_loader": opts.get("model_loader"),
        "option.enable_mixed_precision_accumulation": opts.get("mixed_precision_accumulation"),
        "option.enable_saturate_infinity": opts.get("saturate_infinity"),
        "option.compiled_graph_path": posixpath.join(container_dir, "compiled"),
    }


def _neuron_cache(entry: IndexEntry, manifest: Manifest, read_blob: Callable[[str], bytes], container: str) -> Layout:
    captured = strip_prefix(manifest.files, "neuron-cache/")
    if captured:  # what the compiler wrote, verbatim (artifacts since the worker captures it)
        return Layout(captured, {}, {"NEURON_COMPILE_CACHE_URL": container})
    by_path = {f.path: f for f in manifest.files}
    graphs_entry = by_path.get("neuron-graphs.json")
    if graphs_entry is None:
        raise SpecError(f"artifact {entry.key[:12]} records no cache modules (neuron-graphs.json); use --layout lmi.")
    try:
        graphs = json.loads(read_blob(graphs_entry.digest))
        version = str(graphs["compiler_version"])
        flags = json.dumps([str(f) for f in graphs.get("flags") or []]).encode()
        modules = [(str(m["module"]), str(m["neff"])) for m in graphs["modules"]]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise SpecError(f"artifact {entry.key[:12]} has a malformed neuron-graphs.json; use --layout lmi.") from None
    if "/" in version or version in ("", ".", ".."):
        raise SpecError(f"artifact {entry.key[:12]} names a bad compiler version {version!r}.")
    files, generated = [], {}
    for module, neff_path in modules:
        neff = by_path.get(neff_path)
        if neff is None or not module.startswith("MODULE_") or "/" in module:
            raise SpecError(f"artifact {entry.key[:12]} lists a bad cache module {({'module': module, 'neff': neff_path})!r}.")
        base = f"neuronxcc-{version}/{module}"
        files.append(FileEntry(f"{base}/model.neff", neff.digest, neff.size))
        generated[f"{base}/model.done"] = b""
        generated[f"{base}/compile_flags.json"] = flags
    return Layout(files, generated, {"NEURON_COMPILE_CACHE_URL": container})


def plan_neuron_layout(layout: str, entry: IndexEntry, manifest: Manifest, read_blob: Callable[[str], bytes],
                       container: str) -> Layout:
    if layout == "lmi":
        files = strip_prefix(manifest.files, "model/") + strip_prefix(manifest.files, "compiled/", "compiled/")
        props = _lmi_props(entry, container, _batching(entry, manifest, read_blob))
        env = {"OPTION_MODEL_ID": container, "OPTION_COMPILED_GRAPH_PATH": posixpath.join(container, "compiled")}
        flags = (entry.spec.get("options") or {}).get("neuron_cc_flags")
        if flags is not None:  # compiled under other flags than the image's: the container must have them too
            env["NEURON_CC_FLAGS"] = str(flags)
        return Layout(files, {"serving.properties": serving_properties(props)}, env)
    return _neuron_cache(entry, manifest, read_blob, container)
