"""Deployment layouts: one stored artifact, arranged the way a consumer reads it.

A layout is a pure remapping of the artifact's files (by digest: no bytes are copied, the
materialiser hard-links them) plus a few small generated files. Layouts:

``raw``           the artifact as built (default)
``lmi``           a model directory a SageMaker LMI container loads without compiling:
                  neuron — HF model files + ``compiled/`` NEFFs + ``serving.properties``
                  trtllm — engine dir + tokenizer + ``serving.properties``
``neuron-cache``  the Neuron persistent compile cache:
                  ``neuronxcc-<version>/MODULE_<graph>+<flags>/{model.neff,model.done,compile_flags.json}``
                  for consumers that point ``NEURON_COMPILE_CACHE_URL`` at it
``triton``        a Triton ``tensorrt_llm`` model repository (trtllm)

serving.properties is written in the subset both of DJL Serving's readers agree on (the Java
``Properties.load`` and LMI's naive Python ``split('=')``): ASCII ``key=value`` lines, ``#``
comments in column 0, lowercase booleans, no continuations or escapes.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..errors import SpecError
from ._index import IndexEntry
from ._manifest import FileEntry, Manifest

__all__ = ["LAYOUTS", "Layout", "plan_layout", "serving_properties"]

LAYOUTS = ("raw", "lmi", "neuron-cache", "triton")


@dataclass
class Layout:
    files: list[FileEntry]  # existing blobs under new paths
    generated: dict[str, bytes] = field(default_factory=dict)  # new small files
    env: dict[str, str] = field(default_factory=dict)  # what the consumer should be started with


def serving_properties(props: Mapping[str, Any]) -> bytes:
    lines = ["# Written by Kiln: the engine in this directory was compiled ahead of time."]
    for k, v in props.items():
        if v is None:
            continue
        text = ("true" if v else "false") if isinstance(v, bool) else str(v)
        if any(c in text for c in "\n\r\\") or not text.isascii():
            raise SpecError(f"cannot write {k}={text!r} into serving.properties")
        lines.append(f"{k}={text}")
    return ("\n".join(lines) + "\n").encode("ascii")


def _lmi_neuron_props(entry: IndexEntry, container_dir: str) -> dict[str, Any]:
    s = entry.spec
    opts = s.get("options") or {}
    return {
        "engine": "Python",
        "option.entryPoint": "djl_python.transformers_neuronx",
        "option.rolling_batch": "auto",
        "option.max_rolling_batch_size": s["batch_size"],
        "option.n_positions": s["n_positions"],
        "option.tensor_parallel_degree": s["tp_degree"],
        "option.dtype": s["dtype"],
        "option.group_query_attention": opts.get("gqa_strategy"),
        "option.context_length_estimate": opts.get("context_length_estimate"),
        "option.neuron_optimize_level": opts.get("optlevel"),
        "option.compiled_graph_path": posixpath.join(container_dir, "compiled"),
    }


def _strip(files: tuple[FileEntry, ...], prefix: str, to: str = "") -> list[FileEntry]:
    return [FileEntry(to + f.path[len(prefix):], f.digest, f.size) for f in files if f.path.startswith(prefix)]


def plan_layout(
    layout: str,
    entry: IndexEntry,
    manifest: Manifest,
    read_blob: Callable[[str], bytes],
    *,
    dest: str,
    container_dir: str | None = None,
) -> Layout:
    """The files (and environment) of ``layout`` for one artifact; raises SpecError if it does not apply."""
    target = entry.spec.get("target")
    container = container_dir or dest
    by_path = {f.path: f for f in manifest.files}
    if layout == "raw":
        return Layout(list(manifest.files))
    if layout not in LAYOUTS:
        raise SpecError(f"layout {layout!r} is not known; use one of {', '.join(LAYOUTS)}.")
    if target == "neuron" and layout == "lmi":
        files = _strip(manifest.files, "model/") + _strip(manifest.files, "compiled/", "compiled/")
        props = _lmi_neuron_props(entry, container)
        return Layout(files, {"serving.properties": serving_properties(props)},
                      {"OPTION_MODEL_ID": container, "OPTION_COMPILED_GRAPH_PATH": posixpath.join(container, "compiled")})
    if target == "neuron" and layout == "neuron-cache":
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
            m = {"module": module, "neff": neff_path}
            neff = by_path.get(neff_path)
            if neff is None or not module.startswith("MODULE_") or "/" in module:
                raise SpecError(f"artifact {entry.key[:12]} lists a bad cache module {m!r}.")
            base = f"neuronxcc-{version}/{module}"
            files.append(FileEntry(f"{base}/model.neff", neff.digest, neff.size))
            generated[f"{base}/model.done"] = b""
            generated[f"{base}/compile_flags.json"] = flags
        return Layout(files, generated, {"NEURON_COMPILE_CACHE_URL": container})
    if target == "trtllm" and layout in ("lmi", "triton"):
        from ._trtllm_layouts import plan_trtllm_layout

        return plan_trtllm_layout(layout, entry, manifest, container)
    raise SpecError(f"layout {layout!r} does not apply to {target} artifacts.")
