"""A small JSON Schema checker: the subset Kiln's published schemas use, with no dependency.

Kiln publishes the build record's JSON Schema (``build_record.schema.json``) and must check
records pulled from a remote against it at run time, in serving containers that install only
Kiln's light core. The ``jsonschema`` package is a development dependency only (the tests
compare this checker's verdicts with it), so this module implements the keywords the schema
uses, with draft 2020-12 meaning:

``type const enum required properties additionalProperties items minItems maxItems
minProperties maxProperties pattern minLength maxLength minimum maximum allOf anyOf oneOf
$ref`` (to ``#/$defs/…``), and the annotations ``$schema $id $defs title description``.

A schema that uses any other keyword is refused when the checker is built (a test builds the
shipped schema), so a later edit of the schema can never be silently half-checked.
Values are expected from :func:`~kiln.manifests._json.load_json` (bounded depth): the walk
recurses only as deep as the schema does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

from .._input import show

__all__ = ["SchemaChecker", "SchemaDefinitionError", "json_equal", "shipped_schema"]


def shipped_schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped beside this module (a fresh copy: callers may change it).

    Read from the package directory, not through ``importlib.resources``: Kiln is installed
    as files (a wheel or an editable install), and importlib.resources' readers import zipfile
    and tempfile, ~3 ms of every `kiln lookup` (docs/benchmarks.md, issue 18, "Lookup").
    """
    data: dict[str, Any] = json.loads((Path(__file__).parent / name).read_text())
    return data

_ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description", "$comment"}
_KEYWORDS = {
    "type", "const", "enum", "required", "properties", "additionalProperties", "items", "minItems", "maxItems",
    "minProperties", "maxProperties", "pattern", "minLength", "maxLength", "minimum", "maximum",
    "allOf", "anyOf", "oneOf", "$ref",
}
_SCHEMA_VALUED = {"additionalProperties", "items"}
_SCHEMA_LISTS = {"allOf", "anyOf", "oneOf"}


class SchemaDefinitionError(ValueError):
    """The schema itself uses something this checker does not implement (a Kiln bug)."""


def _is_type(value: Any, name: str) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if isinstance(value, bool):  # True is an int in Python, never a number in JSON
        return False
    if name == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if name == "number":
        return isinstance(value, (int, float))
    raise SchemaDefinitionError(f"unknown JSON Schema type {name!r}")


def json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON means it: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _show(value: Any) -> str:
    return show(value)  # one home for values quoted in messages (bounded, one line)


class SchemaChecker:
    """``SchemaChecker(schema).first_error(value)``: None if ``value`` conforms, else why not."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.root = schema
        self._patterns: dict[str, re.Pattern[str]] = {}
        self._check_definition(schema, "#")

    # ------------------------------------------------------------------ the schema itself
    def _check_definition(self, schema: Any, where: str) -> None:
        if isinstance(schema, bool):
            return
        if not isinstance(schema, dict):
            raise SchemaDefinitionError(f"{where}: a schema must be an object or a boolean")
        unknown = set(schema) - _KEYWORDS - _ANNOTATIONS
        if unknown:
            raise SchemaDefinitionError(f"{where}: keyword(s) {sorted(unknown)} are not implemented by Kiln's checker")
        for name, sub in schema.get("$defs", {}).items():
            self._check_definition(sub, f"{where}/$defs/{name}")
        for name, sub in schema.get("properties", {}).items():
            self._check_definition(sub, f"{where}/properties/{name}")
        for key in _SCHEMA_VALUED & set(schema):
            self._check_definition(schema[key], f"{where}/{key}")
        for key in _SCHEMA_LISTS & set(schema):
            for i, sub in enumerate(schema[key]):
                self._check_definition(sub, f"{where}/{key}/{i}")
        if "$ref" in schema:
            self._resolve(schema["$ref"])
        if "pattern" in schema:
            self._patterns[schema["pattern"]] = re.compile(schema["pattern"])

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#/"):
            raise SchemaDefinitionError(f"$ref {ref!r}: only references inside the schema (#/...) are implemented")
        node: Any = self.root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise SchemaDefinitionError(f"$ref {ref!r} points at nothing")
            node = node[part]
        return node

    # ------------------------------------------------------------------ values
    def first_error(self, value: Any) -> str | None:
        return self._check(self.root, value, "$")

    def _check(self, schema: Any, value: Any, path: str) -> str | None:
        if schema is True:
            return None
        if schema is False:
            return f"{path}: no value is allowed here"
        if "$ref" in schema:
            err = self._check(self._resolve(schema["$ref"]), value, path)
            if err:
                return err
        if "type" in schema:
            types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            if not any(_is_type(value, t) for t in types):
                return f"{path}: {_show(value)} is not of type {' or '.join(types)}"
        if "const" in schema and not json_equal(value, schema["const"]):
            return f"{path}: {_show(value)} is not {schema['const']!r}"
        if "enum" in schema and not any(json_equal(value, v) for v in schema["enum"]):
            return f"{path}: {_show(value)} is not one of {', '.join(map(repr, schema['enum']))}"
        err = (self._check_object(schema, value, path) if isinstance(value, dict)
               else self._check_array(schema, value, path) if isinstance(value, list)
               else self._check_scalar(schema, value, path))
        if err:
            return err
        for sub in schema.get("allOf", ()):
            err = self._check(sub, value, path)
            if err:
                return err
        if "anyOf" in schema:
            errors = [self._check(sub, value, path) for sub in schema["anyOf"]]
            if all(errors):
                return f"{path}: matches none of the allowed forms ({errors[0]})"
        if "oneOf" in schema:
            errors = [self._check(sub, value, path) for sub in schema["oneOf"]]
            passing = sum(e is None for e in errors)
            if passing == 0:
                return "; or ".join(e for e in errors if e)
            if passing > 1:
                return f"{path}: matches more than one of the allowed forms"
        return None

    def _check_object(self, schema: Mapping[str, Any], value: dict, path: str) -> str | None:
        for name in schema.get("required", ()):
            if name not in value:
                return f"{path}: required field {name!r} is missing"
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            return f"{path}: fewer than {schema['minProperties']} fields"
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            return f"{path}: more than {schema['maxProperties']} fields"
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            sub = props.get(name, extra)
            err = self._check(sub, item, f"{path}.{name}")
            if err:
                return f"{path}: field {name!r} is not allowed" if sub is False else err
        return None

    def _check_array(self, schema: Mapping[str, Any], value: list, path: str) -> str | None:
        if "minItems" in schema and len(value) < schema["minItems"]:
            return f"{path}: fewer than {schema['minItems']} items"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            return f"{path}: more than {schema['maxItems']} items"
        if "items" in schema:
            for i, item in enumerate(value):
                err = self._check(schema["items"], item, f"{path}[{i}]")
                if err:
                    return err
        return None

    def _check_scalar(self, schema: Mapping[str, Any], value: Any, path: str) -> str | None:
        if isinstance(value, str):
            if "minLength" in schema and len(value) < schema["minLength"]:
                return f"{path}: {_show(value)} is shorter than {schema['minLength']} characters"
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                return f"{path}: {_show(value)} is longer than {schema['maxLength']} characters"
            if "pattern" in schema and not self._patterns[schema["pattern"]].search(value):
                return f"{path}: {_show(value)} does not match {schema['pattern']}"
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                return f"{path}: {_show(value)} is less than {schema['minimum']}"
            if "maximum" in schema and value > schema["maximum"]:
                return f"{path}: {_show(value)} is more than {schema['maximum']}"
        return None
