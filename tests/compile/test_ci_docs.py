"""docs/ci.md and its workflow stay true: the matrix format is documented completely, every example
parses, and the workflow has what a real run needs (scripts/check_workflows.sh runs actionlint on it).

Before: docs/ci.md told users to `pip install 'kiln[s3]'` (PyPI's `kiln` is another project), its
workflow had no AWS credentials step, no Hugging Face token or cache, and never installed
tensorrt_llm (every trtllm row ended incomplete), and the file format was documented only in a
module docstring.
"""

from __future__ import annotations

import re

import yaml

from kiln.compile.matrix import _KEYS, _ROW_FIELDS, expand_matrix, load_matrix
from kiln.targets import get_target

from ..conftest import REPO

CI_MD = REPO / "docs" / "ci.md"
WORKFLOW = REPO / "docs" / "ci" / "kiln-matrix.yml"
EXAMPLE = REPO / "docs" / "ci" / "kiln-matrix.yaml"


def _yaml_blocks(text: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.S)


def test_every_key_and_row_field_is_documented() -> None:
    text = CI_MD.read_text()
    for key in [*_KEYS, *_ROW_FIELDS, "start", "stop", "step", "factor", "smoothquant", "per_token", "per_channel",
                "int8_kv_cache", "10,000", "1 MiB", "merged", "--row", "~"]:
        assert re.search(rf"(?<![\w-]){re.escape(key)}(?![\w-])", text), key


def test_the_examples_parse_and_pin_every_toolchain_component_they_need() -> None:
    text = CI_MD.read_text()
    assert EXAMPLE.read_text() in text  # the full example in the doc is the file itself
    matrices = [yaml.safe_load(b) for b in _yaml_blocks(text)]
    matrices = [m for m in matrices if isinstance(m, dict) and ({"models", "include", "presets"} & set(m))]
    assert len(matrices) >= 2
    for doc in matrices:
        for row in expand_matrix(doc, origin="docs/ci.md"):
            target = get_target(row.target)
            open_ = set(target.packages) - set(row.toolchain)
            assert not open_, (row.id, open_)  # a plan job without the toolchain computes exact keys
    assert len(load_matrix(EXAMPLE)) == 29  # as the doc says


def test_the_workflow_has_credentials_models_and_the_toolchain() -> None:
    wf = yaml.safe_load(WORKFLOW.read_text())
    assert wf["permissions"]["id-token"] == "write"
    jobs = wf["jobs"]
    assert set(jobs) == {"plan", "build"}
    for name, job in jobs.items():
        uses = {s.get("uses", "").split("@")[0]: s for s in job["steps"]}
        aws = uses["aws-actions/configure-aws-credentials"]["with"]
        assert aws["role-to-assume"].startswith("${{") and "aws-region" in aws, name
        assert "huggingface" in uses["actions/cache"]["with"]["path"], name
    assert wf["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    build = "\n".join(s.get("run", "") for s in jobs["build"]["steps"])
    pinned = yaml.safe_load(EXAMPLE.read_text())["toolchain"]["trtllm"]["tensorrt_llm"]
    assert f'"tensorrt_llm=={pinned}" --extra-index-url https://pypi.nvidia.com' in build  # the version the keys pin
    assert 'kiln matrix build kiln-matrix.yaml --row "$ROWS" --push' in build
    assert "kiln-engines[s3]" in wf["env"]["KILN_PACKAGE"]
    assert "kiln matrix ci kiln-matrix.yaml" in "\n".join(s.get("run", "") for s in jobs["plan"]["steps"])


def test_no_doc_installs_the_wrong_distribution() -> None:
    # Kiln's own messages too ("pip install 'kiln[s3]'" named a distribution that is not Kiln).
    for path in [REPO / "README.md", CI_MD, WORKFLOW, *sorted((REPO / "kiln").rglob("*.py"))]:
        text = path.read_text()
        assert not re.search(r"pip install ['\"]?kiln(\[|['\"\s]|$)", text, flags=re.M), path
    assert "docs/ci/kiln-matrix.yml" in CI_MD.read_text() or "(ci/kiln-matrix.yml)" in CI_MD.read_text()


def test_the_json_schemas_are_valid_and_linked() -> None:
    import json

    import jsonschema

    text = CI_MD.read_text()
    for command in ("plan", "build", "ci"):
        path = REPO / "docs" / "ci" / f"matrix-{command}.schema.json"
        schema = json.loads(path.read_text())
        jsonschema.validators.validator_for(schema).check_schema(schema)
        assert f"(ci/matrix-{command}.schema.json)" in text
