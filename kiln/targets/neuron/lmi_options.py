"""LMI NeuronX settings that reach the compile other than as shape: the consumer's NEURON_* environment and
the loader / compiler-flag properties, each read as the consumer release reads it (keyed, ignored with why,
or refused). Used by :meth:`kiln.targets.neuron.NeuronTarget.validate`."""

from __future__ import annotations

import ast
import json

from ...errors import ValidationError
from ...spec import BuildSpec
from .consumers import NeuronConsumer, neuron_env_rule

__all__ = ["apply_environment", "normalise_loader_options"]


def apply_environment(spec: BuildSpec, consumer: NeuronConsumer) -> tuple[BuildSpec, list[str]]:
    """The consumer's NEURON_* environment (``neuron_env``, from --from-env) as keyed options, or a refusal;
    and a ``neuron_cc_flags`` equal to the consumer's own dropped (the same graphs, the same key)."""
    options = dict(spec.options)
    notes: list[str] = []
    try:
        environment = json.loads(options.pop("neuron_env", None) or "{}")
    except ValueError:
        environment = None
    if not isinstance(environment, dict) or not all(isinstance(v, str) for v in environment.values()):
        raise ValidationError("option neuron_env is Kiln's reading of the NEURON_* environment (--from-env), a "
                              "JSON object of strings; do not pass it (set the variables and use --from-env).")
    for name, value in sorted(environment.items()):
        action, what = neuron_env_rule(name, value, consumer)
        if action == "ignore":
            notes.append(f"{name} ignored: {what}")
        elif action == "refuse":
            raise ValidationError(f"{name}={value!r} in the environment changes the graphs {consumer.ref} "
                                  f"compiles ({what}), and Kiln does not build that variant: unset it, or "
                                  "compile in the container.")
        elif what == "neuron_cc_flags" and value.strip() == (consumer.neuron_cc_flags or ""):
            notes.append(f"{name} is {consumer.ref}'s own: the graphs it names are the default ones")
        elif what == "neuron_cc_flags" and what in options and options[what].strip() != value.strip():
            raise ValidationError(f"{name}={value!r} in the environment and option neuron_cc_flags="
                                  f"{options[what]!r} disagree: both say what the consumer's process compiles "
                                  "with; keep one.")
        elif what in options:
            notes.append(f"{name} not used: option {what} is set, and the option wins (a property default)")
        else:
            options[what] = _context_length_from_env(name, value) if what == "context_length_estimate" else value
            notes.append(f"{what} from {name} (as {consumer.ref} reads it)")
    if options.get("neuron_cc_flags") is not None and \
            options["neuron_cc_flags"].strip() == (consumer.neuron_cc_flags or ""):
        del options["neuron_cc_flags"]  # the consumer's own flags: nothing to key
    return spec.replace(options=tuple(sorted(options.items()))), notes


_BOOL_WORDS = {"true", "false", "1", "0", "yes", "no", "on", "off", "t", "f", "y", "n"}  # what pydantic reads as bool


def normalise_loader_options(options: dict[str, str], consumer: NeuronConsumer) -> list[str]:
    """option.model_loader / enable_* as ``consumer`` reads them (in place), with notes; ValidationError for
    values its handler refuses or loaders that build other graphs."""
    notes = []
    if not consumer.reads_strategy and options.pop("rolling_batch_strategy", None) is not None:
        notes.append(f"option.rolling_batch_strategy ignored: {consumer.ref}'s handler has no such property "
                     "(continuous batching for every rolling batch)")
    loader = options.get("model_loader")
    if loader is not None:
        loader = options["model_loader"] = loader.strip().lower()
        if loader != "tnx":
            raise ValidationError(f"option.model_loader={loader!r}: optimum, vllm and nxdi build other graphs than "
                                  "transformers-neuronx's (TNXModelLoader), which Kiln builds; drop it, or write tnx.")
        if not consumer.reads_model_loader:
            del options["model_loader"]
            notes.append(f"option.model_loader ignored: {consumer.ref}'s handler has no such property")
        elif not consumer.optimum_for_rolling_llama and not (consumer.vllm_refuses_tnx_loader
                                                             and options.get("rolling_batch") == "vllm"):
            del options["model_loader"]  # TNXModelLoader is what it loads with anyway: the same graphs
            notes.append(f"option.model_loader=tnx: {consumer.ref} loads with TNXModelLoader anyway")
    for name, prop in (("mixed_precision_accumulation", "enable_mixed_precision_accumulation"),
                       ("saturate_infinity", "enable_saturate_infinity")):
        value = options.get(name)
        if value is None:
            continue
        if value.strip().lower() not in _BOOL_WORDS:
            raise ValidationError(f"option.{prop}={value!r} is not a boolean {consumer.ref} reads; write true or false.")
        if name == "saturate_infinity" and not consumer.reads_saturate_infinity:
            del options[name]
            notes.append(f"option.{prop} ignored: {consumer.ref}'s handler has no such property")
            continue
        options[name] = "true"  # the validator appends the flag whatever the value
        notes.append(f"option.{prop}={value}: {consumer.ref} appends its compiler flag whatever the value")
    return notes


def _context_length_from_env(name: str, value: str) -> str:
    """NEURON_CONTEXT_LENGTH_ESTIMATE as LMI reads it (tnx_properties.py@0.31.0-dlc: ``eval(value)`` into
    List[int]), as the option's comma form; anything else is an error, as it is at LMI start-up."""
    try:
        parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        parsed = None
    if not isinstance(parsed, (list, tuple)) or not parsed or \
            not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in parsed):
        raise ValidationError(f"{name}={value!r} is not a list of positive integers, which LMI NeuronX reads it "
                              "as (eval into List[int]); write e.g. [1024, 2048].")
    return ",".join(str(x) for x in parsed)
