"""SageMaker LMI (DJL Serving) configuration → Kiln spec fields.

Two ways LMI users write the same settings, both read here into one intermediate form
(property name → value and where it was written), then interpreted once, so the env form
and the file form of a configuration always give the same spec and key:

* ``serving.properties`` is read the way DJL Serving's Java server reads it —
  ``java.util.Properties.load``: ``=``, ``:`` or whitespace separate key and value; ``#`` and
  ``!`` start comment lines; a trailing backslash continues a line; ``\\t \\n \\uXXXX`` and
  ``\\=``-style escapes; the last duplicate wins. Two deliberate generosities: trailing
  whitespace is stripped (Java keeps it and then fails on ``=4 ``; LMI's Python tools strip
  it), and the file is decoded as UTF-8 with a Latin-1 fallback.
* ``OPTION_*`` environment variables map like DJL's ``ModelInfo``: ``OPTION_FOO_BAR`` →
  ``option.foo_bar`` (lowercased when written in caps), ``OPTION_ENTRYPOINT`` →
  ``option.entryPoint``, ``OPTION_ENGINE`` → ``engine``; empty values are skipped.
  ``HF_MODEL_ID``, ``HF_REVISION``, ``TENSOR_PARALLEL_DEGREE`` and the SageMaker/TGI names
  the LMI entrypoint translates (``SM_NUM_GPUS``, ``MAX_BATCH_SIZE``, ``HF_MODEL_QUANTIZE``)
  are honoured as fallbacks. When both are given, the file wins, as in DJL Serving.

Settings that do not change an engine are ignored on purpose and reported (``--explain``);
values Kiln cannot honour raise :class:`ConfigSourceError` naming the property and the fix.

What is the same for every LMI backend lives here; what differs per backend (which entry
point or rolling-batch name selects it, its defaults, the properties it reads) is each
target's :class:`~kiln.targets.base.LmiFacts`.
"""

from ._interpret import LmiConfig, interpret
from ._read import Prop, parse_properties_text, properties_from_env, read_serving_properties

__all__ = ["LmiConfig", "Prop", "interpret", "parse_properties_text", "properties_from_env", "read_serving_properties"]
