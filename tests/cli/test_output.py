"""Output people script against: tables that survive a pipe, one JSON vocabulary, progress on stderr.

Real subprocesses throughout; where what matters is what a terminal shows (shortened keys, live
bars) the CLI runs on a real pseudo-terminal.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import run_kiln
from ._helpers import AOTI, PINS, artifact_dir, put, run_on_terminal, until_blocked_on

# --------------------------------------------------------------------------- kiln ls


@pytest.mark.light
def test_ls_piped_prints_whole_keys_and_values(tmp_path: Path, fake_model: Path) -> None:
    # A long model path: the table is far wider than 80 columns.
    deep = fake_model.rename(tmp_path / ("a-model-directory-with-a-long-name-" * 3))
    keys = {put(deep, artifact_dir(tmp_path / "a1", b"one")),
            put(deep, artifact_dir(tmp_path / "a2", b"two"), *AOTI, "--batch-size", "2")}
    r = run_kiln("ls")
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout
    lines = r.stdout.splitlines()
    assert lines[0].split()[0] == "key"
    rows = lines[1:]
    assert {line.split()[0] for line in rows} == keys  # `kiln ls | awk '{print $1}'`
    assert all(str(deep) in line for line in rows)
    # The summary is for people: on stderr when stdout is a pipe, so every stdout line is a row.
    assert "2 artifact(s)" in r.stderr


@pytest.mark.light
def test_ls_quiet_prints_only_keys(tmp_path: Path, fake_model: Path) -> None:
    key = put(fake_model, artifact_dir(tmp_path / "a"))
    for flag in ("-q", "--quiet"):
        r = run_kiln("ls", flag)
        assert r.returncode == 0 and r.stdout == key + "\n", r.stdout + r.stderr
    empty = run_kiln("ls", "-q", "--target", "neuron")
    assert empty.returncode == 0 and empty.stdout == ""


@pytest.mark.light
def test_ls_on_a_terminal_shortens_keys_unless_no_trunc(tmp_path: Path, fake_model: Path) -> None:
    key = put(fake_model, artifact_dir(tmp_path / "a"))
    short = run_on_terminal("ls", columns=100)
    assert short.returncode == 0, short.other
    assert key[:12] in short.terminal and key not in short.terminal
    full = run_on_terminal("ls", "--no-trunc", columns=100)
    assert full.returncode == 0, full.other
    assert key in full.terminal and str(fake_model) in full.terminal


# --------------------------------------------------------------------------- JSON vocabulary


@pytest.mark.light
def test_smoothquant_alpha_is_a_number_in_output_and_a_string_where_stored(tmp_path: Path, fake_model: Path) -> None:
    spec = ["--target", "trtllm", "--n-positions", "128", "--dtype", "fp16", "--smoothquant", "0.5", "--per-token",
            "--toolchain", "tensorrt_llm=0.12.0", "--toolchain", "tensorrt=10.3.0", "--toolchain", "hardware=cuda-sm90"]
    key = put(fake_model, artifact_dir(tmp_path / "a"), *spec)
    listed = json.loads(run_kiln("ls", "--json").stdout)
    assert listed[0]["spec"]["quantization"]["smoothquant_alpha"] == 0.5
    found = run_kiln("lookup", str(fake_model), *spec, "--json")
    assert found.returncode == 0, found.stderr
    data = json.loads(found.stdout)
    for part in (data["spec"], data["query"]["spec"], data["entry"]["spec"]):
        assert part["quantization"]["smoothquant_alpha"] == 0.5
    shown = json.loads(run_kiln("show", key[:12], "--json").stdout)
    assert shown["entry"]["spec"]["quantization"]["smoothquant_alpha"] == 0.5
    # Stored documents are printed as stored: the build record (its own schema) and the key
    # inputs (what is hashed) keep the canonical string.
    assert shown["record"]["key_inputs"]["spec"]["quantization"]["smoothquant_alpha"] == "0.5"
    explained = json.loads(run_kiln("key", str(fake_model), *spec, "--explain", "--json").stdout)
    assert explained["inputs"]["spec"]["quantization"]["smoothquant_alpha"] == "0.5"
    index_file = next((Path(os.environ["KILN_HOME"]) / "index").rglob(f"{key}.json"))
    assert json.loads(index_file.read_text())["spec"]["quantization"]["smoothquant_alpha"] == "0.5"


@pytest.mark.light
def test_push_and_pull_report_in_one_vocabulary(tmp_path: Path, fake_model: Path) -> None:
    remote = tmp_path / "remote"
    key = put(fake_model, artifact_dir(tmp_path / "a", b"one", shared=b"s" * 4000))
    pushed = run_kiln("push", "--all", "--remote", str(remote), "--json")
    assert pushed.returncode == 0, pushed.stderr
    # A second store that already holds the shared weights file: the pull skips that blob.
    other = tmp_path / "other-home"
    env = {"KILN_HOME": str(other)}
    run_kiln("store", "put", str(artifact_dir(tmp_path / "b", b"two", shared=b"s" * 4000)), str(fake_model), *AOTI,
             "--batch-size", "3", env=env)
    pulled = run_kiln("pull", "--key", key[:12], "--remote", str(remote), "--json", env=env)
    assert pulled.returncode == 0, pulled.stderr
    p, q = json.loads(pushed.stdout)[0], json.loads(pulled.stdout)[0]
    assert (p["direction"], q["direction"]) == ("push", "pull")
    shared = {"key", "skipped_blobs", "skipped_bytes"}
    assert shared <= set(p) and shared <= set(q)
    assert "reused_blobs" not in q
    assert (q["downloaded_blobs"], q["skipped_blobs"]) == (1, 1)
    assert q["skipped_bytes"] == 4000 and q["downloaded_bytes"] == 3


@pytest.mark.light
def test_times_in_json_are_iso_8601(tmp_path: Path, fake_model: Path) -> None:
    key = put(fake_model, artifact_dir(tmp_path / "a"))
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
    docs = [json.loads(run_kiln(*args).stdout) for args in
            (["ls", "--json"], ["show", key[:8], "--json"], ["gc", "--dry-run", "--older-than", "0s", "--json"],
             ["rm", key[:8], "--dry-run", "--json"], ["lookup", str(fake_model), *AOTI, "--json"])]

    def times(value: object, name: str = "") -> list[tuple[str, object]]:
        if isinstance(value, dict):
            return [t for k, v in value.items() for t in times(v, k)]
        if isinstance(value, list):
            return [t for v in value for t in times(v, name)]
        return [(name, value)] if name in ("created", "last_used", "started", "finished") or name.endswith("_at") else []

    found = [t for d in docs for t in times(d)]
    assert {n for n, _ in found} >= {"created", "last_used", "started"}
    bad = [(n, v) for n, v in found if v is not None and not iso.match(str(v))]
    assert not bad, bad


def test_lookup_select_reports_the_chosen_engine_and_the_query_apart(tmp_path: Path, fake_model: Path) -> None:
    pins = ["--toolchain", "neuronx-cc=2.15.128.0+56dc5a86,transformers-neuronx=0.12.313,torch-neuronx=2.1.2.2.3.0,libneuronxla=2.0.4986.0"]
    spec = ["--target", "neuron", "--n-positions", "256", "--tp-degree", "2", "--dtype", "fp16",
            "--instance-type", "ml.inf2.xlarge", *pins]
    put(fake_model, artifact_dir(tmp_path / "a", b"b1"), *spec, "--batch-size", "1")
    chosen = put(fake_model, artifact_dir(tmp_path / "b", b"b4"), *spec, "--batch-size", "4")
    r = run_kiln("lookup", str(fake_model), "--target", "neuron", "--instance-type", "ml.inf2.xlarge", "--select", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(r.stdout)
    assert data["key"] == data["entry"]["key"] == chosen
    assert data["spec"] == data["entry"]["spec"] and data["spec"]["batch_size"] == 4
    assert data["toolchain"] == data["entry"]["toolchain"]
    assert data["query"]["spec"]["batch_size"] == 1  # what was asked: the default, not the chosen one
    assert data["status"] == "hit" and data["source"] == "local"


# --------------------------------------------------------------------------- progress


@pytest.mark.light
def test_no_transfer_bar_when_nothing_moves(tmp_path: Path, fake_model: Path) -> None:
    put(fake_model, artifact_dir(tmp_path / "a"))
    local = run_on_terminal("lookup", str(fake_model), *AOTI, stream="stderr")
    assert local.returncode == 0, local.other
    assert "pull" not in local.terminal and "bytes" not in local.terminal, local.terminal
    # The same terminal shows the bar when bytes do move (a remote hit pulled into an empty store).
    remote = tmp_path / "remote"
    assert run_kiln("push", "--all", "--remote", str(remote)).returncode == 0
    moved = run_on_terminal("lookup", str(fake_model), *AOTI, "--remote", str(remote), stream="stderr",
                            env={"KILN_HOME": str(tmp_path / "empty-home")})
    assert moved.returncode == 0, moved.other
    assert "pull" in moved.terminal


def test_build_json_shows_progress_on_stderr_and_the_stage_keys_on_stdout(tmp_path: Path) -> None:
    from ..tiny_models import make_tiny_model

    model = make_tiny_model("llama", tmp_path / "m", seed=5)
    r = run_kiln("build", str(model), "--target", "trtllm", "--n-positions", "64", "--dtype", "fp16", "--json", timeout=600)
    assert r.returncode == 3, r.stdout + r.stderr  # no tensorrt_llm here: the CPU stages are stored
    doc = json.loads(r.stdout)
    assert doc["status"] == "incomplete"
    assert [s["name"] for s in doc["stages"]] == ["checkpoint"]
    # What a script needs to finish elsewhere: the full keys, and both commands.
    for s in doc["stages"]:
        assert run_kiln("show", s["key"]).returncode == 0
        assert s["key"] in doc["push_command"]
    assert doc["finish_command"].startswith("kiln --remote URL build ")
    assert "tensorrt_llm" in doc["missing_toolchain"]
    # Progress while it ran, on stderr (one line per finished stage), and the error last.
    stage_lines = [line for line in r.stderr.splitlines() if re.match(r"^\[\s*\d+\.\d+s\] ", line)]
    assert len(stage_lines) >= 2, r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("kiln: error: conversion stages stored")


def test_build_waiting_for_a_peer_says_who_holds_the_lock(tmp_path: Path, store) -> None:  # type: ignore[no-untyped-def]
    from ..tiny_models import make_tiny_model

    model = make_tiny_model("llama", tmp_path / "m", seed=7)
    spec = ["--target", "torch-aoti", "--n-positions", "32"]
    key = json.loads(run_kiln("key", str(model), *spec, "--json").stdout)["key"]
    lock = store.single_flight(key)
    lock.acquire()  # this test is the peer that is building it
    build = subprocess.Popen([sys.executable, "-m", "kiln.cli", "build", str(model), *spec, "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        try:
            until_blocked_on(lock.path)
            # The peer publishes the artifact, then lets go: the waiter finds it and compiles nothing.
            put(model, artifact_dir(tmp_path / "peer-output"), *spec)
        finally:
            lock.release()
        out, err = build.communicate(timeout=600)
    finally:
        if build.poll() is None:
            build.kill()
            build.communicate()
    assert build.returncode == 0, out + err
    doc = json.loads(out)
    assert doc["status"] == "hit" and doc["waited_for_peer"] is True and doc["compiled"] is False
    waiting = [line for line in err.splitlines() if "waiting for the build lock" in line]
    assert len(waiting) == 1, err
    assert f"held by pid {os.getpid()} on {socket.gethostname()} since " in waiting[0]


# --------------------------------------------------------------------------- ensure / gc / miss advice


def test_ensure_on_miss_build_uses_the_calibration_file(tmp_path: Path) -> None:
    from ..tiny_models import make_tiny_model

    model = make_tiny_model("llama", tmp_path / "m", seed=6)
    calib = tmp_path / "calib.txt"
    calib.write_text("The quick brown fox jumps over the lazy dog.\n\nA second paragraph to calibrate on.\n")
    r = run_kiln("ensure", str(model), "--target", "trtllm", "--n-positions", "64", "--dtype", "fp16",
                 "--smoothquant", "0.5", "--per-token", "--per-channel", "--option", "calib_samples=2",
                 "--option", "calib_seq_len=16", "--calib-file", str(calib), "--on-miss", "build",
                 "--dest", str(tmp_path / "dest"), "--json", timeout=600)
    # The calibration ran on that file (before: "pass that file with --calib-file", exit 2).
    assert r.returncode == 3, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "incomplete" and [s["name"] for s in doc["stages"]] == ["calibration", "checkpoint"]


@pytest.mark.light
def test_gc_says_when_an_artifact_was_last_used(tmp_path: Path, fake_model: Path) -> None:
    key = put(fake_model, artifact_dir(tmp_path / "a"))
    index_file = next((Path(os.environ["KILN_HOME"]) / "index").rglob(f"{key}.json"))
    forty_days = 40 * 86400
    stat = index_file.stat()
    os.utime(index_file, (stat.st_atime - forty_days, stat.st_mtime - forty_days))  # last used 40 days ago
    r = run_kiln("gc", "--older-than", "30d", "--dry-run")
    assert r.returncode == 0, r.stderr
    line = next(line for line in r.stdout.splitlines() if key[:12] in line)
    assert "last used 40d ago" in line, line  # the age of the last use, not of the build (0s)
    data = json.loads(run_kiln("gc", "--older-than", "30d", "--dry-run", "--json").stdout)
    assert data["evicted"][0]["last_used"] < data["evicted"][0]["created"]


@pytest.mark.light
def test_a_miss_on_a_damaged_artifact_says_so(tmp_path: Path, fake_model: Path) -> None:
    key = put(fake_model, artifact_dir(tmp_path / "a", b"engine"))
    home = Path(os.environ["KILN_HOME"])
    manifest = json.loads(run_kiln("show", key, "--json").stdout)["manifest"]
    layer = next(x for x in manifest["layers"] if x["annotations"]["org.opencontainers.image.title"] == "engine.pt2")
    blob = next((home / "blobs").rglob(layer["digest"].split(":", 1)[1]))
    blob.chmod(0o644)
    blob.write_bytes(b"ENGINE")  # same size, other bytes
    r = run_kiln("lookup", str(fake_model), *AOTI)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "failed verification" in r.stdout and "kiln build --force" in r.stdout and "kiln pull --key" in r.stdout
    assert "tied to the compiler version" not in r.stdout, r.stdout  # not the compiler-upgrade advice


# --------------------------------------------------------------------------- --remote after the command


@pytest.mark.light
@pytest.mark.parametrize("where", ["before", "after"])
def test_remote_is_accepted_before_and_after_the_command(tmp_path: Path, fake_model: Path, where: str) -> None:
    remote = str(tmp_path / "remote")
    key = put(fake_model, artifact_dir(tmp_path / "a"))

    def kiln(*args: str, env: dict | None = None):  # type: ignore[no-untyped-def]
        cmd, *rest = args
        full = ["--remote", remote, cmd, *rest] if where == "before" else [cmd, *rest, "--remote", remote]
        return run_kiln(*full, env=env)

    assert kiln("push", "--key", key[:12]).returncode == 0
    empty = {"KILN_HOME": str(tmp_path / "fresh")}
    for args in (["lookup", str(fake_model), *AOTI], ["fetch", str(fake_model), *AOTI, "--dest", str(tmp_path / "d1")],
                 ["ensure", str(fake_model), *AOTI, "--dest", str(tmp_path / "d2")], ["pull", "--key", key[:12]]):
        r = kiln(*args, env={**empty, "KILN_HOME": str(tmp_path / f"fresh-{args[0]}")})
        assert r.returncode == 0, (args, r.stdout + r.stderr)
    # Commands whose --remote means "act on the remote" take the URL there too.
    listed = (run_kiln("--remote", remote, "ls", "--remote", "-q", env=empty) if where == "before"
              else run_kiln("ls", "--remote", remote, "-q", env=empty))
    assert key[:12] in listed.stdout, listed.stdout + listed.stderr
    shown = run_kiln("show", key[:12], "--remote", remote, env=empty) if where == "after" else \
        run_kiln("--remote", remote, "show", "--remote", key[:12], env=empty)
    assert shown.returncode == 0 and key in shown.stdout, shown.stdout + shown.stderr
    # A URL after the command wins over KILN_REMOTE.
    wrong = {**empty, "KILN_REMOTE": str(tmp_path / "elsewhere"), "KILN_HOME": str(tmp_path / "fresh-env")}
    assert run_kiln("lookup", str(fake_model), *AOTI, "--remote", remote, env=wrong).returncode == 0
    assert run_kiln("lookup", str(fake_model), *AOTI, env={**wrong, "KILN_HOME": str(tmp_path / "fresh-env2")}).returncode == 1


@pytest.mark.light
def test_from_env_help_and_readme_document_option_kiln_target() -> None:
    r = run_kiln("lookup", "--help")
    assert "OPTION_KILN_TARGET" in r.stdout and "torch-aoti" in r.stdout
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    lmi = readme.split("### SageMaker LMI configuration", 1)[1].split("\n## ", 1)[0]
    assert "OPTION_KILN_TARGET" in lmi


@pytest.mark.light
def test_from_env_with_option_kiln_target_selects_torch_aoti(tmp_path: Path, fake_model: Path) -> None:
    put(fake_model, artifact_dir(tmp_path / "a"))
    env = {"HF_MODEL_ID": str(fake_model), "OPTION_KILN_TARGET": "torch-aoti", "OPTION_N_POSITIONS": "256"}
    r = run_kiln("lookup", "--from-env", *PINS, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
