"""The Target interface and the checks every target shares.

A target is the unit of ownership: everything about one backend lives in its subpackage, and
the rest of Kiln asks it, never its name. What it answers (light: no torch, no compiler):

* toolchain and hardware class — ``detect_toolchain`` (package metadata, never imports);
* validation — ``validate(spec, config)``: is this spec valid for this model, before any work;
* the build — ``stage_plan`` (stored intermediate stages) and ``build_steps`` (every step and
  its worker argv), ``missing_toolchain_error`` (what to say where the compiler is absent),
  ``resources`` (what a step asks a scheduler such as Ray for);
* parsing — ``lmi``: the LMI facts (entry points, rolling-batch names, defaults, properties);
* deployment — ``layouts`` and ``plan_layout``; ``loads_in_process`` and ``load_engine``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from .._input import show
from .._packages import installed_version
from ..errors import KilnError, SpecError, ToolchainError, ValidationError
from ..spec import LIMITS, MAX_INT, BuildSpec
from ..manifests import IndexEntry, Manifest
from ._layouts import RAW, Layout
from ._plan import ENGINE_STAGE, Stage, Step


__all__ = ["Target", "TargetOption", "ResolvedSpec", "LmiFacts", "BuildInputs", "StoredStep", "model_dims",
           "PROVENANCE_CONFIG_FIELDS"]

# config.json fields that say where the file came from, not what the model computes: no loader
# builds anything from them, so an architecture digest leaves them out for every target. Read
# in transformers 5.24.0 (the loader torch-aoti exports and transformers-neuronx configs use):
PROVENANCE_CONFIG_FIELDS: Mapping[str, str] = {
    "_name_or_path": "where the config was loaded from; from_pretrained overwrites it with the path it was given "
                     "(modeling_utils.py: config.name_or_path = pretrained_model_name_or_path)",
    "_commit_hash": "the Hub commit it was downloaded at; PretrainedConfig.__init__ pops it "
                    "(configuration_utils.py: kwargs.pop(\"_commit_hash\"))",
    "transformers_version": "the transformers release that wrote the file; read only by GenerationConfig and the "
                            "Trainer, never by model code (the release that builds the engine is in the toolchain)",
}


class BuildInputs(Protocol):
    """What a target needs of a resolved spec to plan a build (``kiln.core.Resolution`` is one)."""

    spec: BuildSpec
    toolchain: Mapping[str, str | None]

    @property
    def model(self) -> Any: ...  # .path, .ref, .tree_digest of the resolved model

    @property
    def shape(self) -> dict[str, Any]: ...  # the spec's keyed fields (BuildSpec.shape_json)

    def model_summary(self) -> dict[str, Any]: ...

    def engine_identity(self) -> dict[str, str]: ...  # what the compiled engine is keyed by (architecture or weights)


@dataclass(frozen=True)
class StoredStep:
    """A build step whose output is in the store (for messages about what is left to do)."""

    name: str
    key: str
    files: int
    reused: bool  # found (locally or on the remote) rather than computed by this build


@dataclass(frozen=True)
class LmiFacts:
    """How SageMaker LMI (DJL Serving) configuration selects and configures this target.

    Read by :mod:`kiln.lmi`; values are LMI's own (djl-serving, see the target's module for
    the release each was read from).
    """

    entry_point_words: tuple[str, ...] = ()  # substrings of option.entryPoint that select it
    rolling_batch_names: tuple[str, ...] = ()  # option.rolling_batch values that select it
    serving_features: tuple[str, ...] = ()  # SERVING_FEATURES words that select it
    default_max_rolling_batch: int | None = None  # LMI's max_rolling_batch_size when absent
    default_n_positions: int | None = None  # LMI's n_positions when absent
    # A target option that receives LMI's max_input_len / max_output_len / max_seq_len as written (JSON), for a
    # target whose consumer release decides what they mean (trtllm: LMI 0.30+ maps max_output_len to max_seq_len).
    lengths_option: str | None = None
    # LMI property -> Kiln spec field (``option.<target option>``) for this target.
    properties: Mapping[str, str] = field(default_factory=dict)
    # LMI properties that change this target's compiled graphs but that Kiln does not build for:
    # refused (property -> why), never reported as "ignored" (a hit would then fail at start-up).
    refused_properties: Mapping[str, str] = field(default_factory=dict)
    # False: this backend's LMI image does not translate the GPU image's SM_NUM_GPUS, MAX_BATCH_SIZE,
    # HF_MODEL_QUANTIZE into properties (kiln.lmi drops them, saying so).
    reads_gpu_env_fallbacks: bool = True
    # The option.dtype values this backend's LMI handler accepts as written (None: Kiln's aliases too).
    dtype_values: tuple[str, ...] | None = None
    # False: option.tensor_parallel_degree 0 or -1 is refused (this handler does not read it as 1).
    tp_zero_means_one: bool = True
    # A target option that receives LMI's option.batch_size as written (LMI's default 1 when absent), for a
    # target whose consumer decides between it and max_rolling_batch_size (neuron: by its rolling batch).
    static_batch_option: str | None = None
    # A target option that receives the consumer's NEURON_* environment (JSON {name: value}, read with
    # --from-env), for the target to key or refuse variable by variable (neuron: by its consumer release).
    environment_option: str | None = None
    # A target option that receives which of tp_degree / batch_size the LMI configuration leaves to the
    # consumer's defaults (comma-separated), for a target whose defaults differ by consumer release.
    unset_option: str | None = None
    # The target's consumers that read LMI configuration: an LMI source names one of them (their
    # defaults differ by release), and a lookup that names none tries each.
    consumers: tuple[str, ...] = ()


@dataclass(frozen=True)
class TargetOption:
    name: str
    help: str
    in_key: bool = True  # False: used for validation / hardware choice only
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ResolvedSpec:
    """A spec with defaults filled in from the model and target, plus what was decided."""

    spec: BuildSpec
    notes: tuple[str, ...] = ()


# The most attention heads a config may declare (real models: 8-128); more is a damaged file,
# and validation enumerates the divisors of the head count.
_MAX_HEADS = 1 << 16
_MAX_OPTION_VALUE = 1024  # characters of a target option's value (the longest real ones: ~80)
_JSON_KINDS = {list: "an array", str: "a string", type(None): "null", bool: "a boolean", int: "a number",
               float: "a number"}


def _kind(value: Any) -> str:
    return _JSON_KINDS.get(type(value), type(value).__name__)


def _config_error(source: str, what: str, example: str) -> ValidationError:
    return ValidationError(
        f"{source}: {what}; the model's config.json is damaged or not a Hugging Face model config: fix the field "
        f"(for example {example}) or re-download the model."
    )


def _config_int(cfg: Mapping[str, Any], names: tuple[str, ...], source: str, maximum: int, example: int) -> int | None:
    """The first of ``names`` set in ``cfg``, checked to be an integer in [1, maximum]."""
    for name in names:
        value = cfg.get(name)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 4096.0: some exporters write floats
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _config_error(source, f"{name}={show(value)} is not a positive integer", f'"{name}": {example}')
        if value > maximum:
            raise _config_error(source, f"{name}={show(value)} is larger than any model's (at most {maximum})",
                                f'"{name}": {example}')
        return value
    return None


def _config_mapping(cfg: Mapping[str, Any], name: str, source: str, example: str) -> Mapping[str, Any] | None:
    value = cfg.get(name)
    if value is None or isinstance(value, Mapping):
        return value
    raise _config_error(source, f"{name} is {_kind(value)} ({show(value)}), not an object", f'"{name}": {example}')


def model_dims(config: Mapping[str, Any], source: str = "config.json") -> dict[str, Any]:
    """The shape facts validation needs, across config spellings (Llama, GPT-2, …).

    Every field read is checked (``source`` names the config file in messages): head counts
    and positions are positive integers within sane bounds, ``architectures`` is a list of
    class names, ``text_config`` and ``rope_scaling`` are objects; anything else raises
    :class:`ValidationError` naming the file, the field and the fix.
    """
    if not isinstance(config, Mapping):
        raise _config_error(source, f"the file holds {_kind(config)}, not a JSON object",
                            '{"architectures": ["LlamaForCausalLM"], ...}')
    text = _config_mapping(config, "text_config", source, '{"num_attention_heads": 32, ...}')
    cfg = {**text, **config} if text else config
    heads = _config_int(cfg, ("num_attention_heads", "n_head"), source, _MAX_HEADS, 32)
    kv_heads = _config_int(cfg, ("num_key_value_heads",), source, _MAX_HEADS, 8) or heads
    max_pos = _config_int(cfg, ("max_position_embeddings", "n_positions"), source, MAX_INT, 4096)
    rope = _config_mapping(cfg, "rope_scaling", source, '{"rope_type": "linear", "factor": 2.0}') \
        or _config_mapping(cfg, "rope_parameters", source, '{"rope_type": "default"}')
    rope_type = None
    if rope:
        rope_type = rope.get("rope_type") or rope.get("type")
        if rope_type is not None and not isinstance(rope_type, str):
            raise _config_error(source, f"rope_scaling's rope_type={show(rope_type)} is not a name",
                                '"rope_type": "linear"')
        if rope_type in (None, "default"):
            rope_type = None
    archs = cfg.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise _config_error(source, f"architectures={show(archs)} is not a list of class names",
                            '"architectures": ["LlamaForCausalLM"]')
    return {
        "architecture": archs[0] if archs else None,
        "heads": heads,
        "kv_heads": kv_heads,
        "max_positions": max_pos,
        "rope_scaling": rope_type,
    }


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    packages: Mapping[str, str]  # toolchain component -> Python distribution name
    dtypes: tuple[str, ...]
    default_dtype: str
    architectures: tuple[str, ...]
    aliases: tuple[str, ...] = ()  # other names users write (--target, OPTION_KILN_TARGET)
    supports_smoothquant: bool = False
    max_tp_degree: int | None = None
    options: tuple[TargetOption, ...] = ()
    install_hint: str = ""
    unsupported: Mapping[str, str] = field(default_factory=dict)  # architecture -> why
    # Versions of Kiln's own code that shape the output (bumped when that code changes).
    static_toolchain: Mapping[str, str] = field(default_factory=dict)
    lmi: LmiFacts = field(default_factory=LmiFacts)
    layouts: tuple[str, ...] = ()  # deployment layouts besides raw (see plan_layout)
    loads_in_process: bool = False  # kiln.load_engine can run its engines in this process
    # True: the compiled engine does not depend on weight values (they are loaded at run time),
    # so it is keyed by the model's architecture digest and every fine-tune of that
    # architecture reuses it; the weights are the artifact's own part (kiln.models._architecture).
    weight_independent: bool = False
    # Consumers (NAME[:VERSION]) whose loaders this target compiles for (the spec's `consumer` option,
    # `--consumer`); a spec read from LMI configuration must name one (LMI's defaults differ by release).
    consumers: tuple[str, ...] = ()
    # config.json fields this target's engine provably does not compute with (name -> why),
    # left out of the architecture digest; PROVENANCE_CONFIG_FIELDS for every target.
    config_fields_without_compute: Mapping[str, str] = field(default_factory=lambda: dict(PROVENANCE_CONFIG_FIELDS))

    # ---------------------------------------------------------------- toolchain
    @property
    def components(self) -> tuple[str, ...]:
        return tuple(sorted([*self.packages, *self.static_toolchain, "hardware"]))

    def key_options(self) -> frozenset[str]:
        return frozenset(o.name for o in self.options if o.in_key)

    def has_option(self, name: str) -> bool:
        return any(o.name == name for o in self.options)

    def hardware(self, spec: BuildSpec) -> str | None:
        """The hardware class a build of ``spec`` would be tied to on this machine."""
        raise NotImplementedError

    def detect_consumer(self) -> tuple[str, str] | None:
        """``(consumer, where it was read)`` when Kiln runs inside one of this target's consumers (an LMI
        image), so a spec that names none builds and looks up what this container loads."""
        return None

    def detect_toolchain(self, spec: BuildSpec) -> dict[str, str | None]:
        """Versions from package metadata (no imports) and the hardware class; None = absent."""
        found: dict[str, str | None] = {}
        for component, dist in self.packages.items():
            found[component] = installed_version(dist)
        found.update(self.static_toolchain)
        found["hardware"] = self.hardware(spec)
        return found

    def installed_toolchain(self, spec: BuildSpec) -> dict[str, str | None]:
        """What is really installed here (a compile must run with the toolchain its key names)."""
        return self.detect_toolchain(spec)

    def toolchain_source(self, spec: BuildSpec, component: str) -> str:
        """Where ``detect_toolchain``'s version of ``component`` comes from (``kiln key --explain``): this
        machine, or a consumer's image."""
        return "detected"

    def step_invocation(self, res: BuildInputs, step: str) -> dict[str, Any] | None:
        """The exact vendor call of a build step (``kiln build --dry-run``); None: its worker argv says it all."""
        return None

    def missing_toolchain(self, spec: BuildSpec) -> list[str]:
        return [c for c, v in self.installed_toolchain(spec).items() if v is None]

    # ---------------------------------------------------------------- building
    def stage_plan(self, res: BuildInputs) -> tuple[Stage, ...]:
        """The intermediate stages a build of ``res`` stores (and reuses), in order."""
        return (self.engine_stage(res),) if self.weight_independent else ()

    def engine_stage(self, res: BuildInputs) -> Stage:
        """A weight-independent target's compiled engine as a build stage, keyed by the model's
        architecture (its tree digest where it has no architecture digest) and everything else
        the build key holds: shape, quantization, keyed options, toolchain."""
        inputs = {k: v for k, v in res.shape.items() if k != "target"}
        toolchain = {k: str(v) for k, v in res.toolchain.items()}
        return Stage(ENGINE_STAGE, self.name, inputs, res.engine_identity(), res.model_summary(), toolchain)

    def build_steps(self, res: BuildInputs, *, calib_file: Path | None = None) -> tuple[Step, ...]:
        """Every step of a build of ``res``; the last one produces the artifact.

        A weight-independent target builds in two steps: ``engine`` compiles (a stored stage
        that every model of the architecture shares), ``weights`` puts this model's weights and
        files beside it (:meth:`weights_argv`), compiling nothing. Raises a KilnError for inputs
        the build cannot use, before any step runs.
        """
        if self.weight_independent:
            return (
                Step(ENGINE_STAGE, f"{self.name} compile", lambda out, _inputs: self.worker_argv(res, out, engine_only=True),
                     stage=self.engine_stage(res)),
                Step("weights", f"{self.name} weights", lambda out, inputs: self.weights_argv(res, out, inputs[ENGINE_STAGE]),
                     inputs=(ENGINE_STAGE,), compiles=False),
            )
        return (Step("compile", f"{self.name} compile", lambda out, _inputs: self.worker_argv(res, out)),)

    def weights_argv(self, res: BuildInputs, out_dir: Path, engine_dir: Path) -> list[str]:
        """A weight-independent target: the worker that completes the stored engine in ``engine_dir`` with
        ``res``'s model (weights, config, tokenizer) into ``out_dir``."""
        raise NotImplementedError(f"{self.name} declares weight independence but has no weights step")

    def worker_argv(self, res: BuildInputs, out_dir: Path, *, engine_only: bool = False) -> list[str]:
        """Arguments after ``python`` for the worker that compiles ``res`` into ``out_dir``
        (``engine_only``: a weight-independent target's engine stage, without the model's files)."""
        raise ToolchainError(
            f"building {self.name} engines is not implemented in this version of Kiln; "
            "lookups of engines built elsewhere work."
        )

    def missing_toolchain_error(self, res: BuildInputs, missing: Sequence[str], stored: Sequence["StoredStep"],
                                where: str) -> KilnError:
        """What a build says when a step needs the toolchain and this machine lacks ``missing``.

        ``stored`` lists the steps already done (their outputs are in the store at ``where``).
        """
        return ToolchainError(
            f"cannot build {self.name} here: {', '.join(missing)} not found on this machine. {self.install_hint}."
        )

    def resources(self, res: BuildInputs, memory_bytes: int) -> dict[str, Any]:
        """What one build of ``res`` asks a cluster scheduler (Ray) for."""
        return {"num_cpus": 1, "memory": memory_bytes}

    # ---------------------------------------------------------------- deployment
    def default_container_dir(self, layout: str, dest: str) -> str:
        """Where the consumer sees DEST when ``--container-dir`` is not given (paths written into the layout)."""
        return dest

    def plan_layout(self, layout: str, entry: IndexEntry, manifest: Manifest, read_blob: Callable[[str], bytes],
                    container: str) -> Layout:
        """The files (and consumer environment) of ``layout`` for one artifact of this target.

        ``container`` is where the consumer will see the directory (paths written into files).
        """
        if layout == RAW:
            return Layout(list(manifest.files))
        if layout in self.layouts:
            return self.plan_consumer_layout(layout, entry, manifest, read_blob, container)
        raise SpecError(f"layout {layout!r} does not apply to {self.name} artifacts"
                        + (f"; {self.name} writes {', '.join((RAW, *self.layouts))}." if self.layouts else "."))

    def plan_consumer_layout(self, layout: str, entry: IndexEntry, manifest: Manifest,
                             read_blob: Callable[[str], bytes], container: str) -> Layout:
        """One of this target's own ``layouts`` (``plan_layout`` has checked the name)."""
        raise NotImplementedError(f"{self.name} lists layout {layout} but does not plan it")

    def load_engine(self, directory: Path, device: str) -> Any:
        """Load a materialised artifact in this process (targets with ``loads_in_process``)."""
        raise NotImplementedError(f"{self.name} engines do not load in-process")

    # ---------------------------------------------------------------- validation
    def validate(self, spec: BuildSpec, config: Mapping[str, Any]) -> ResolvedSpec:
        """Check ``spec`` against the target and the model config; fill in defaults.

        Raises ValidationError naming the bad value and the fix. Runs in milliseconds.
        """
        notes: list[str] = []
        dims = model_dims(config)
        changes: dict[str, Any] = {}
        self._check_options(spec)

        dtype = spec.dtype
        if dtype is None:
            dtype = self.default_dtype
            changes["dtype"] = dtype
            notes.append(f"dtype: default for {self.name} ({dtype})")
        if dtype not in self.dtypes:
            raise ValidationError(
                f"dtype={dtype} is not supported by the {self.name} target; use one of "
                f"{', '.join(self.dtypes)}."
            )

        arch = dims["architecture"]
        if config and arch is None:
            raise ValidationError("the model's config.json names no architecture; is it a causal LM checkpoint?")
        if arch is not None and arch not in self.architectures:
            why = self.unsupported.get(arch, "")
            raise ValidationError(
                f"architecture {arch} is not supported by {self.name} yet{': ' + why if why else ''}; "
                f"supported: {', '.join(self.architectures)}."
            )

        max_pos = dims["max_positions"]
        n_positions = spec.n_positions
        if n_positions is None:
            if max_pos is None:
                raise ValidationError("the model config gives no max_position_embeddings; pass --n-positions.")
            if max_pos > LIMITS["n_positions"]:
                raise ValidationError(
                    f"the model's max_position_embeddings={max_pos} is more than Kiln builds for by default (at most "
                    f"{LIMITS['n_positions']}); pass --n-positions with the context length to build for."
                )
            n_positions = int(max_pos)
            changes["n_positions"] = n_positions
            notes.append(f"n_positions: default from the model's max_position_embeddings ({n_positions})")
        elif max_pos is not None and n_positions > int(max_pos):
            if dims["rope_scaling"]:
                notes.append(
                    f"n_positions={n_positions} exceeds max_position_embeddings={max_pos}; allowed "
                    f"because the model config has RoPE scaling ({dims['rope_scaling']})"
                )
            else:
                raise ValidationError(
                    f"n_positions={n_positions} exceeds the model's max_position_embeddings={max_pos} "
                    f"and the model has no RoPE scaling; use --n-positions {max_pos} or less."
                )

        self._check_tp(spec.tp_degree, dims)
        self._check_quant(spec)
        resolved = spec.replace(**changes) if changes else spec
        return ResolvedSpec(resolved, tuple(notes))

    def _check_options(self, spec: BuildSpec) -> None:
        known = {o.name: o for o in self.options}
        for name, value in spec.options:
            opt = known.get(name)
            if opt is None:
                hint = f"; options of {self.name}: {', '.join(sorted(known))}" if known else f"; {self.name} takes no target options"
                raise ValidationError(f"target option {name}={show(value)} is not known{hint}.")
            # Every option value ends up in a key, a worker's argv and messages: bounded and printable,
            # whatever the target then checks of it.
            if len(value) > _MAX_OPTION_VALUE or not value.isprintable():
                raise ValidationError(
                    f"target option {name}={show(value)} is not a value Kiln takes: at most {_MAX_OPTION_VALUE} "
                    "printable characters."
                )
            if opt.choices and value not in opt.choices:
                raise ValidationError(
                    f"target option {name}={show(value)} is not one of {', '.join(opt.choices)}."
                )

    def _check_tp(self, tp: int, dims: Mapping[str, Any]) -> None:
        if self.max_tp_degree is not None and tp > self.max_tp_degree:
            raise ValidationError(
                f"tp_degree={tp}: the {self.name} target builds for at most {self.max_tp_degree} "
                f"device(s); use --tp-degree {self.max_tp_degree} (or the trtllm/neuron target for sharding)."
            )
        heads, kv = dims["heads"], dims["kv_heads"]
        if heads is None or tp == 1:
            return
        if heads % tp:
            divisors = [d for d in range(1, heads + 1) if heads % d == 0]
            raise ValidationError(
                f"tp_degree={tp} does not divide the model's {heads} attention heads; "
                f"use one of {', '.join(map(str, divisors))}."
            )
        if kv and kv != heads and (kv % tp if tp <= kv else tp % kv):
            raise ValidationError(
                f"tp_degree={tp} is incompatible with the model's {kv} KV heads: each rank needs a "
                f"whole number of KV heads (tp divides {kv}) or whole replicas (tp a multiple of {kv})."
            )

    def _check_quant(self, spec: BuildSpec) -> None:
        q = spec.quant
        if (q.smoothquant or q.int8_kv_cache) and not self.supports_smoothquant:
            raise ValidationError(
                f"quantization {q.describe()} is not supported by the {self.name} target; "
                "SmoothQuant and INT8 KV cache are built by the trtllm target (--target trtllm)."
            )
