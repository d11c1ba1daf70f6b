"""`kiln build --sign-key --push`: a real torch-aoti build (a tiny random-weight Llama, CPU) is
signed with its engine stage, the signatures travel with the push, and a builder elsewhere with
a trust policy reuses the signed engine stage for a fine-tune while a deployment is served the
artifact."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_kiln
from tests.remote.conftest import file_view  # noqa: F401
from tests.tiny_models import make_tiny_model

from .conftest import write_policy

SPEC = ["--target", "torch-aoti", "--n-positions", "32"]


def test_build_signs_the_artifact_and_its_engine_and_push_carries_them(tmp_path: Path, keys, file_view) -> None:  # noqa: F811
    model = make_tiny_model("llama", tmp_path / "m", seed=3)
    r = run_kiln("--remote", file_view.url, "build", str(model), *SPEC, "--push", "--sign-key",
                 str(keys["release"].private), "--json", timeout=900)
    assert r.returncode == 0, r.stderr
    built = json.loads(r.stdout)
    sig_objects = [k for k in file_view.objects() if k.startswith("signatures/") and k.endswith(".sig")]
    # The artifact and its compiled engine stage (both pushed), each signed by the release key.
    assert len(sig_objects) == 2 and all(keys["release"].fingerprint[7:] in k for k in sig_objects)
    assert any(built["manifest"][7:] in k for k in sig_objects)

    policy = write_policy(tmp_path / "p.yaml", [{"name": "ci", "public_key": str(keys["release"].public)}])
    deploy = {"KILN_HOME": str(tmp_path / "deploy")}
    dest = tmp_path / "dest"
    r = run_kiln("--remote", file_view.url, "fetch", "--key", built["key"], "--dest", str(dest),
                 "--trust-policy", str(policy), env=deploy)
    assert r.returncode == 0, r.stderr
    assert (dest / "model.sig").is_file()

    # A fine-tune (same architecture, other weights) built elsewhere under the policy reuses the
    # signed engine stage from the remote: nothing is compiled.
    tuned = make_tiny_model("llama", tmp_path / "tuned", seed=4)
    r = run_kiln("--remote", file_view.url, "build", str(tuned), *SPEC, "--json", "--trust-policy", str(policy),
                 env={"KILN_HOME": str(tmp_path / "builder2")}, timeout=900)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["compiled"] is False
