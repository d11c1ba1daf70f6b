"""A model's architecture, apart from its weight values: what a weight-independent engine is keyed by.

Some engines take the weights when they are loaded, not when they are compiled: a torch-aoti
package built with ``aot_inductor.package_constants_in_so=False`` (measured: an engine compiled
for model A, loaded with model B's weights of the same architecture, gives B's eager tokens
exactly), transformers-neuronx's NEFFs. Such an engine is the same for every fine-tune of a base
model, so it is keyed by the model's **architecture digest**, and the weights are their own part,
keyed by the tree digest (``kiln.spec.key_inputs``).

The architecture digest is sha256 over

* config.json, parsed and written back canonically (sorted keys, no whitespace; ints and floats
  stay distinct, ``10000`` is not ``10000.0``), with only the fields a target names as unable to
  change its computation left out (``Target.config_fields_without_compute``: each with why);
* the weights' **tensor signature**: every tensor's name, dtype and shape, over the files
  transformers loads — ``model.safetensors``, else the shards ``model.safetensors.index.json``
  names (transformers' own order: ``modeling_utils._get_resolved_checkpoint_files``). A renamed,
  added, dropped, reshaped or re-typed tensor is another architecture; how tensors are split
  into shards is not.

Where the signature cannot be read without the weights' code or values — no safetensors
weights (``pytorch_model.bin`` is a pickle; a GGUF file's tensors are not transformers'), or a
config.json that points transformers at other config files (``configuration_files``) — there
is no architecture digest, and a weight-independent engine is keyed by the tree digest instead:
never a wrong hit, only a missed reuse (:func:`architecture_or_why` says which and why).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from .._input import read_small_file
from ..errors import ModelError
from ._safetensors import INDEX_FILE, MAX_INDEX_BYTES, WEIGHTS_FILE, TensorInfo, safetensors_tensors, shard_names

__all__ = ["SIGNATURE_SCHEME", "ARCHITECTURE_SCHEME", "TensorSignature", "weight_files", "signature_of",
           "local_signature", "architecture_or_why", "canonical_config"]

SIGNATURE_SCHEME = "kiln.tensors/v1"
ARCHITECTURE_SCHEME = "kiln.architecture/v1"
# config.json fields that make transformers read other files than config.json and the weights the
# signature covers (transformers 5.24: configuration_utils get_configuration_file picks
# config.<version>.json by the installed version; modeling_utils loads the file transformers_weights names).
_OTHER_FILES = {"configuration_files": "another config file instead, chosen by its own version",
                "transformers_weights": "the weights file it names instead of model.safetensors"}
_OUTPUT_HEAD = "lm_head.weight"


def _may_tie(config: Mapping[str, Any]) -> bool:
    """tie_word_embeddings set, or absent (then the model class's default, which may be true)."""
    text = config.get("text_config")
    values = [config.get("tie_word_embeddings")] + ([text.get("tie_word_embeddings")] if isinstance(text, dict) else [])
    return any(v is not False for v in values)
_FIX = "re-download the model, or fix the file"


@dataclass(frozen=True)
class TensorSignature:
    """``sha256:<hex>`` over every tensor's (name, dtype, shape) of the weights transformers loads."""

    digest: str
    tensors: int  # how many (shown by `kiln key --explain`)
    # A tensor named lm_head.weight is among them: whether transformers ties it to the input
    # embeddings then depends on the two tensors' *values* (architecture_or_why).
    output_head: bool

    def to_json(self) -> dict[str, Any]:
        return {"scheme": SIGNATURE_SCHEME, "digest": self.digest, "count": self.tensors,
                "output_head": self.output_head}

    @classmethod
    def from_record(cls, data: Mapping[str, Any] | None) -> "TensorSignature | None":
        """The signature a model record keeps (None: it keeps none, or one of another scheme)."""
        if not data or data.get("scheme") != SIGNATURE_SCHEME:
            return None
        return cls(str(data["digest"]), int(data["count"]), bool(data["output_head"]))


def weight_files(names: Iterable[str], read_index: Any) -> tuple[list[str] | None, str | None]:
    """The safetensors files transformers loads of a model whose files are ``names``, or (None, why).

    ``read_index()`` returns ``model.safetensors.index.json``'s bytes (called only when it is used).
    """
    present = set(names)
    if WEIGHTS_FILE in present:
        return [WEIGHTS_FILE], None
    if INDEX_FILE in present:
        shards = shard_names(read_index(), INDEX_FILE)
        missing = [s for s in shards if s not in present]
        if missing:
            raise ModelError(f"{INDEX_FILE} names the shard {missing[0]}, which is not in the model; {_FIX}.")
        if not shards:
            raise ModelError(f"{INDEX_FILE} maps no tensor to a shard; {_FIX}.")
        return shards, None
    return None, (f"the model has no {WEIGHTS_FILE} (nor {INDEX_FILE}): its tensors cannot be listed without "
                  "loading the weights")


def signature_of(tables: Iterable[Mapping[str, TensorInfo]]) -> TensorSignature:
    """The signature of the tensors of every weight file (a name in two files counts twice: never merged)."""
    rows = sorted([name, dtype, list(shape)] for table in tables for name, (dtype, shape) in table.items())
    doc = json.dumps({"scheme": SIGNATURE_SCHEME, "tensors": rows}, separators=(",", ":"), ensure_ascii=False)
    head = any(name == _OUTPUT_HEAD or name.endswith("." + _OUTPUT_HEAD) for name, _dtype, _shape in rows)
    return TensorSignature("sha256:" + hashlib.sha256(doc.encode()).hexdigest(), len(rows), head)


def local_signature(root: Path, names: Iterable[str]) -> tuple[TensorSignature | None, str | None]:
    """The tensor signature of a model directory (headers only), or (None, why there is none).

    A weight file whose header is damaged gives no signature (its message is the why), not an
    error: resolving stays as lenient as hashing, and a build refuses the file before any work
    (:func:`kiln.models.check_weight_files`), naming it.
    """

    def read_index() -> bytes:
        return read_small_file(root / INDEX_FILE, MAX_INDEX_BYTES, "shard index", ModelError, _FIX)

    try:
        files, why = weight_files(names, read_index)
        if files is None:
            return None, why
        return signature_of(safetensors_tensors(root / f) for f in files), None
    except ModelError as e:
        return None, str(e)


def canonical_config(config: Mapping[str, Any], omitted: Iterable[str]) -> str:
    """config.json without the ``omitted`` top-level fields, as one canonical string."""
    left_out = set(omitted)
    kept = {k: v for k, v in config.items() if k not in left_out}
    # Python's float repr round-trips and is what json writes: one string per value. NaN and
    # Infinity (json.loads accepts them) are written as json reads them back.
    return json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def architecture_or_why(config: Mapping[str, Any], signature: TensorSignature | None, why: str | None,
                        omitted: Iterable[str]) -> tuple[str | None, str | None]:
    """``(sha256:<architecture digest>, None)``, or ``(None, why the model has none)``."""
    if not config:
        return None, "the model has no config.json"
    for field, what in _OTHER_FILES.items():
        if field in config:
            return None, f"its config.json has {field}: transformers may read {what}"
    if signature is None:
        return None, why or "its tensors are not known"
    if signature.output_head and _may_tie(config):
        # transformers 5.24 modeling_utils.py (tie_weights): with tie_word_embeddings, a checkpoint
        # holding both lm_head.weight and the input embeddings is tied only where the two are equal
        # in value, and a tied engine has one constant fewer: the values decide the graph.
        return None, ("its config ties the output embeddings to the input ones and its weights hold lm_head.weight "
                      "too, so whether they are tied depends on their values")
    doc = json.dumps({"scheme": ARCHITECTURE_SCHEME, "config": canonical_config(config, omitted),
                      "tensors": signature.digest}, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(doc.encode()).hexdigest(), None
