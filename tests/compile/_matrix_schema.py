"""Validate `kiln matrix plan|build|ci --json` against docs/ci/matrix-*.schema.json."""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema
from referencing import Registry, Resource

from ..conftest import REPO

SCHEMAS = REPO / "docs" / "ci"


@functools.lru_cache(maxsize=None)
def _validator(command: str) -> Any:
    schemas = [json.loads(p.read_text()) for p in sorted(SCHEMAS.glob("matrix-*.schema.json"))]
    registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas)
    schema = json.loads((SCHEMAS / f"matrix-{command}.schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, registry=registry, format_checker=cls.FORMAT_CHECKER)


def check_matrix_json(command: str, data: Any) -> Any:
    """``data`` after checking it against the command's schema (a clear message where it differs)."""
    error = jsonschema.exceptions.best_match(_validator(command).iter_errors(data))
    assert error is None, (f"kiln matrix {command} --json does not match docs/ci/matrix-{command}.schema.json at "
                           f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message[:500]}")
    return data
