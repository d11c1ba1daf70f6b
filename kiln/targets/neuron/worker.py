"""Worker process for the ``neuron`` target: compile one model with transformers-neuronx.

    python -m kiln.targets.neuron.worker --model-dir D --out-dir O --invocation JSON [--engine-only]

It makes exactly the call the consumer makes (``--invocation``, planned by
:mod:`kiln.targets.neuron.consumers`: class, kwargs, NeuronConfig fields, NEURON_CC_FLAGS), written
against transformers-neuronx's API (the Neuron SDK is not installable from PyPI, so this runs only
where the SDK is; ``to_neuron()`` initialises the runtime and loads weights onto NeuronCores, so the
build host needs at least tp_degree NeuronCores)::

    model = <class>.from_pretrained(dir, **kwargs, neuron_config=NeuronConfig(**fields))
    model.to_neuron()      # compiles every graph with neuronx-cc
    model.save(out)        # one <sha256(HLO)[:20]>.neff per graph

The worker points ``NEURON_COMPILE_CACHE_URL`` at a private directory during the compile, so
the artifact also records the persistent-cache module of every graph
(``neuronxcc-<version>/MODULE_<hash>+<flags>/model.neff``), from which Kiln writes the
``neuron-cache`` deployment layout.

Artifact layout written into --out-dir::

    model/        the HF model files the runtime loads weights from (config, tokenizer, weights);
                  left out with --engine-only (a Kiln build: kiln.targets.neuron.assemble adds them)
    compiled/     model.save() output (*.neff) and VERSION (the neuronx-cc version)
    neuron-graphs.json   compiler version, flags, and for each NEFF its cache module name
    neuron-cache/ the captured persistent-cache MODULE directories, verbatim (every NEFF must have one)
    engine.json   what was built (shape, amp, options)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
import sys
import time
from pathlib import Path

from .._worker_main import EXIT_BAD_SPEC, EXIT_FAILED, EXIT_NO_TOOLCHAIN, EXIT_OK
from .._worker_main import log as _log
from .._worker_main import stage as _stage
from ._facts import MODEL_CLASSES, MODEL_FILE_SUFFIXES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kiln.targets.neuron.worker")
    p.add_argument("--model-dir", required=True, type=Path)
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--invocation", required=True,
                   help='the consumer\'s exact call, JSON: {"class", "kwargs" (neuron_config as a dict), "env"}')
    p.add_argument("--engine-only", action="store_true",
                   help="leave model/ out: the compiled graphs are a stage every model of the architecture shares")
    return p


def _import(dotted: str):  # type: ignore[no-untyped-def]
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _neuron_config(fields: dict):  # type: ignore[no-untyped-def]
    """A fresh NeuronConfig of exactly these fields (continuous_batching as its ContinuousBatchingConfig)."""
    from transformers_neuronx import NeuronConfig
    from transformers_neuronx.config import ContinuousBatchingConfig

    fields = dict(fields)
    if "continuous_batching" in fields:
        fields["continuous_batching"] = ContinuousBatchingConfig(**fields["continuous_batching"])
    return NeuronConfig(**fields)


def _neuron_cores() -> int:
    """NeuronCores on this host: 2 per /dev/neuron* device (Inferentia2, Trainium1; LNC=1 counts differ on trn2)."""
    return 2 * len(list(Path("/dev").glob("neuron[0-9]*")))


def copy_model_files(model_dir: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(model_dir.iterdir()):
        if p.is_file() and p.name.endswith(MODEL_FILE_SUFFIXES):
            shutil.copyfile(p, dest / p.name)


def cache_modules(cache_root: Path, compiled: Path) -> tuple[str | None, list[dict[str, str]]]:
    """Map every saved NEFF to the persistent-cache module that holds the same bytes; every one must have one
    (ValueError naming the first that has not: the neuron-cache layout would miss it)."""
    by_digest = {}
    version = None
    for neff in cache_root.glob("neuronxcc-*/MODULE_*/model.neff"):
        version = neff.parent.parent.name[len("neuronxcc-"):]
        by_digest[hashlib.sha256(neff.read_bytes()).hexdigest()] = neff.parent.name
    modules = []
    for neff in sorted(compiled.glob("*.neff")):
        module = by_digest.get(hashlib.sha256(neff.read_bytes()).hexdigest())
        if module is None:
            raise ValueError(f"the saved graph {neff.name} has no module in the compile cache captured at {cache_root}: "
                             "the neuron-cache layout could not serve it")
        modules.append({"neff": f"compiled/{neff.name}", "module": module})
    return version, modules


def copy_cache_modules(cache_root: Path, modules: list[dict[str, str]], dest: Path) -> None:
    """The captured MODULE directories, verbatim (model.hlo_module.pb, compile_flags.json, model.done, …):
    what the compiler wrote is what a consumer of the persistent cache reads."""
    for m in modules:
        for src in cache_root.glob(f"neuronxcc-*/{m['module']}"):
            shutil.copytree(src, dest / src.parent.name / src.name, dirs_exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()
    _stage("start")
    config = json.loads((args.model_dir / "config.json").read_text())
    arch = (config.get("architectures") or [None])[0]
    if arch not in MODEL_CLASSES:
        print(f"architecture {arch} is not supported by transformers-neuronx via Kiln; supported: "
              f"{', '.join(MODEL_CLASSES)}", file=sys.stderr, flush=True)
        return EXIT_BAD_SPEC
    try:
        compiler_version = importlib.metadata.version("neuronx-cc")
        import transformers_neuronx  # noqa: F401 - present, or say so
    except (importlib.metadata.PackageNotFoundError, ImportError) as e:
        print(f"the Neuron SDK is not installed here ({e}); install neuronx-cc and transformers-neuronx "
              "from AWS's package index on an Inferentia2/Trainium instance or an x86_64 build host",
              file=sys.stderr, flush=True)
        return EXIT_NO_TOOLCHAIN

    out: Path = args.out_dir
    cache = out.parent / "neuron-cache-capture"
    invocation = json.loads(args.invocation)
    os.environ["NEURON_COMPILE_CACHE_URL"] = str(cache)
    # Exactly the consumer's flags: the build host's own NEURON_CC_FLAGS would change the graphs' names.
    flags = invocation["env"].get("NEURON_CC_FLAGS", "")
    os.environ["NEURON_CC_FLAGS"] = flags
    kwargs = dict(invocation["kwargs"])
    try:
        kwargs["neuron_config"] = _neuron_config(kwargs.get("neuron_config") or {})
        _stage("load", f"arch={arch} {invocation['class']} {invocation['kwargs']}")
        model = _import(invocation["class"]).from_pretrained(str(args.model_dir), **kwargs)
        cores = _neuron_cores()
        if hasattr(model, "cpu_compile") and cores == 0:
            # transformers-neuronx 0.13+: compile without a Neuron device (the graphs are the same).
            _stage("compile", "(neuronx-cc, cpu_compile: no Neuron device here)")
            model.cpu_compile()
        else:
            tp = int(invocation["kwargs"].get("tp_degree", 1))
            if cores < tp:
                print(f"to_neuron() loads the weights onto {tp} NeuronCores, and this host has {cores}: build on an "
                      f"Inferentia2/Trainium host with at least {tp} (transformers-neuronx here has no cpu_compile())",
                      file=sys.stderr, flush=True)
                return EXIT_NO_TOOLCHAIN
            _stage("compile", "(neuronx-cc)")
            model.to_neuron()
        _stage("save")
        compiled = out / "compiled"
        model.save(str(compiled))
        (compiled / "VERSION").write_text(compiler_version + "\n")
        if not args.engine_only:  # a Kiln build adds model/ in its weights step (kiln.targets.neuron.assemble)
            copy_model_files(args.model_dir, out / "model")
        version, modules = cache_modules(cache, compiled)
        copy_cache_modules(cache, modules, out / "neuron-cache")
        (out / "neuron-graphs.json").write_text(json.dumps({
            "compiler_version": version or compiler_version,
            "flags": flags.split(),
            "modules": modules,
        }, indent=1, sort_keys=True))
        (out / "engine.json").write_text(json.dumps({
            "format": 2, "target": "neuron", "architecture": arch, "invocation": invocation,
            "neuronx_cc": compiler_version,
        }, indent=1, sort_keys=True))
    except Exception as e:  # the parent stores this log with the failed build
        import traceback

        traceback.print_exc()
        print(f"error: neuron compile failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    _log(f"finished in {time.perf_counter() - t0:.1f}s")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
