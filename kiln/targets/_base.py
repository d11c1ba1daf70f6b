"""The Target interface and the checks every target shares.

A target answers four questions (DESIGN.md): is it available here and what is its toolchain?
is this spec valid for this model (before any expensive work)? build it into a directory;
load and run it. This module holds the light half — metadata, toolchain detection through
package metadata (never importing the toolchain), and validation — so that `kiln lookup`
can use it in a serving container that has no compiler.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ToolchainError, ValidationError
from ..spec import BuildSpec

__all__ = ["Target", "TargetOption", "ResolvedSpec", "model_dims"]


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


def model_dims(config: Mapping[str, Any]) -> dict[str, Any]:
    """The shape facts validation needs, across config spellings (Llama, GPT-2, …)."""
    text = config.get("text_config") or {}
    cfg = {**text, **config} if text else config
    heads = cfg.get("num_attention_heads", cfg.get("n_head"))
    kv_heads = cfg.get("num_key_value_heads") or heads
    max_pos = cfg.get("max_position_embeddings", cfg.get("n_positions"))
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or None
    rope_type = None
    if isinstance(rope, Mapping):
        rope_type = rope.get("rope_type") or rope.get("type")
        if rope_type in (None, "default"):
            rope_type = None
    archs = cfg.get("architectures") or []
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
    supports_smoothquant: bool = False
    max_tp_degree: int | None = None
    options: tuple[TargetOption, ...] = ()
    install_hint: str = ""
    unsupported: Mapping[str, str] = field(default_factory=dict)  # architecture -> why
    # Versions of Kiln's own code that shape the output (bumped when that code changes).
    static_toolchain: Mapping[str, str] = field(default_factory=dict)

    # ---------------------------------------------------------------- toolchain
    @property
    def components(self) -> tuple[str, ...]:
        return tuple(sorted([*self.packages, *self.static_toolchain, "hardware"]))

    def key_options(self) -> frozenset[str]:
        return frozenset(o.name for o in self.options if o.in_key)

    def hardware(self, spec: BuildSpec) -> str | None:
        """The hardware class a build of ``spec`` would be tied to on this machine."""
        raise NotImplementedError

    def detect_toolchain(self, spec: BuildSpec) -> dict[str, str | None]:
        """Versions from package metadata (no imports) and the hardware class; None = absent."""
        found: dict[str, str | None] = {}
        for component, dist in self.packages.items():
            try:
                found[component] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                found[component] = None
        found.update(self.static_toolchain)
        found["hardware"] = self.hardware(spec)
        return found

    def missing_toolchain(self, spec: BuildSpec) -> list[str]:
        return [c for c, v in self.detect_toolchain(spec).items() if v is None]

    # ---------------------------------------------------------------- building
    def worker_argv(self, res: Any, out_dir: Any) -> list[str]:
        """Arguments after ``python`` for the worker that compiles ``res`` into ``out_dir``."""
        raise ToolchainError(
            f"building {self.name} engines is not implemented in this version of Kiln; "
            "lookups of engines built elsewhere work."
        )

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
                raise ValidationError(f"target option {name}={value!r} is not known{hint}.")
            if opt.choices and value not in opt.choices:
                raise ValidationError(
                    f"target option {name}={value!r} is not one of {', '.join(opt.choices)}."
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
