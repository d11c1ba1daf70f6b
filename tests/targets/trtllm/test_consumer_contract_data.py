"""The consumer contract data (consumer_contract.py) against the consumers' own files.

The fixtures are hand-read from djl-serving and tensorrtllm_backend; these tests check what can be checked offline:
the required parameter set is consistent with the backend's own v0.19.0 template (a byte-exact copy in data/), the
config.pbtxt reader reads that template and the one-line form Kiln writes, and every fact names its source.
"""

from __future__ import annotations

import hashlib
import re
import string
from pathlib import Path

import pytest

from . import consumer_contract as cc

DATA = Path(__file__).parent / "data"
TEMPLATE = DATA / "tensorrt_llm_config_v0.19.0.pbtxt"
# `git ls-tree v0.19.0 all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt` in tensorrtllm_backend.
TEMPLATE_BLOB = "3d1407a7b45f2bb1da2c6ac7521f6a26110a7112"


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _template() -> str:
    return TEMPLATE.read_text(encoding="utf-8")


def test_template_is_the_backends_file_with_its_licence_header() -> None:
    data = TEMPLATE.read_bytes()
    assert _git_blob_id(data) == TEMPLATE_BLOB
    head = data.decode().splitlines()[:3]
    assert head[0] == "# Copyright 2024, NVIDIA CORPORATION & AFFILIATES. All rights reserved."
    assert "Redistribution and use in source and binary forms" in head[2]


def test_required_parameters_of_v019_are_all_in_its_template() -> None:
    params = cc.parse_pbtxt_parameters(_template())
    rel = cc.TRITON_TRTLLM["v0.19.0"]
    wanted = {p.key for p in rel.required_parameters} | {rel.decoder_engine.key}
    assert wanted == {"gpt_model_type", "tokenizer_dir", "xgrammar_tokenizer_info_path", "guided_decoding_backend",
                      "gpt_model_path"}
    missing = wanted - params.keys()
    assert not missing, f"required by the contract but absent from the backend's own template: {missing}"
    # Each is a placeholder the release's fill_template.py substitutes.
    assert {k: params[k] for k in wanted} == {k: "${%s}" % v for k, v in {
        "gpt_model_type": "batching_strategy", "gpt_model_path": "engine_dir", "tokenizer_dir": "tokenizer_dir",
        "xgrammar_tokenizer_info_path": "xgrammar_tokenizer_info_path",
        "guided_decoding_backend": "guided_decoding_backend"}.items()}


def test_reader_finds_every_parameters_block_of_the_template() -> None:
    text = _template()
    # Independent count: each block opens on its own line in the template.
    blocks = re.findall(r'^parameters:? \{\n  key: "([^"]+)"', text, flags=re.M)
    params = cc.parse_pbtxt_parameters(text)
    assert len(blocks) == 45 and list(params) == blocks
    assert params["FORCE_CPU_ONLY_INPUT_TENSORS"] == "no"


def test_reader_header_of_the_template() -> None:
    assert cc.parse_pbtxt_header(_template()) == {
        "name": "tensorrt_llm", "backend": "${triton_backend}", "platform": None,
        "max_batch_size": "${triton_max_batch_size}", "decoupled": "${decoupled_mode}",
    }


def _filled(**overrides: str) -> str:
    # As the backend's tools/fill_template.py does: string.Template, unknown placeholders left as they are.
    values = {"triton_backend": "tensorrtllm", "triton_max_batch_size": "8", "decoupled_mode": "true",
              "max_queue_delay_microseconds": "0", "max_queue_size": "0", "batching_strategy": "inflight_fused_batching",
              "engine_dir": "/models/tensorrt_llm/1", "tokenizer_dir": "/models/tokenizer",
              "xgrammar_tokenizer_info_path": "", "guided_decoding_backend": "", **overrides}
    return string.Template(_template()).safe_substitute(values)


def test_filled_template_meets_the_v019_contract_and_a_missing_key_is_named() -> None:
    text = _filled()
    assert cc.parse_pbtxt_header(text)["backend"] == "tensorrtllm"
    assert cc.parse_pbtxt_header(text)["decoupled"] == "true"
    assert cc.triton_problems("v0.19.0", cc.parse_pbtxt_parameters(text)) == []
    without = re.sub(r'parameters: \{\n  key: "tokenizer_dir"\n  value: \{\n    string_value: "[^"]*"\n  \}\n\}\n', "", text)
    assert without != text
    problems = cc.triton_problems("v0.19.0", cc.parse_pbtxt_parameters(without))
    assert len(problems) == 1 and "tokenizer_dir" in problems[0]
    # v0.18.2 reads neither tokenizer_dir nor the guided-decoding keys.
    assert cc.triton_problems("v0.18.2", cc.parse_pbtxt_parameters(without)) == []
    bad_type = cc.parse_pbtxt_parameters(_filled(batching_strategy="${batching_strategy}"))
    assert any("gpt_model_type" in p for p in cc.triton_problems("v0.19.0", bad_type))


def test_reader_one_line_form_as_kiln_writes_it() -> None:
    text = (
        'name: "tensorrt_llm"\nbackend: "tensorrtllm"\nmax_batch_size: 4\n'
        "model_transaction_policy { decoupled: false }\n"
        'parameters: { key: "gpt_model_type" value: { string_value: "inflight_fused_batching" } }\n'
        'parameters { key: "gpt_model_path" value { string_value: "/opt/ml/model/tensorrt_llm/1" } }\n'
        'parameters: { key: "max_attention_window_size" value: { string_value: "4096,4096" } }  # per layer\n'
    )
    assert cc.parse_pbtxt_parameters(text) == {
        "gpt_model_type": "inflight_fused_batching", "gpt_model_path": "/opt/ml/model/tensorrt_llm/1",
        "max_attention_window_size": "4096,4096"}
    assert cc.parse_pbtxt_header(text) == {"name": "tensorrt_llm", "backend": "tensorrtllm", "platform": None,
                                           "max_batch_size": "4", "decoupled": "false"}


def test_reader_ensemble_steps_and_errors() -> None:
    ens = (
        'name: "ensemble"\nplatform: "ensemble"\nmax_batch_size: 8\n'
        'input [ { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] }, { name: "max_tokens" dims: [ 1 ] } ]\n'
        "ensemble_scheduling {\n  step [\n"
        '    { model_name: "preprocessing" model_version: -1 input_map { key: "QUERY" value: "text_input" } },\n'
        '    { model_name: "tensorrt_llm" model_version: -1 },\n'
        '    { model_name: "postprocessing" model_version: -1 }\n  ]\n}\n'
    )
    assert cc.ensemble_steps(ens) == list(cc.ENSEMBLE_STEPS)
    assert [i["name"][0] for i in cc.parse_pbtxt(ens)["input"]] == ["text_input", "max_tokens"]
    dup = 'parameters { key: "a" value { string_value: "1" } }\nparameters { key: "a" value { string_value: "2" } }\n'
    with pytest.raises(ValueError, match="given twice"):
        cc.parse_pbtxt_parameters(dup)
    with pytest.raises(ValueError):
        cc.parse_pbtxt('parameters { key: "a" value { string_value: "1" }\n')
    with pytest.raises(ValueError):
        cc.parse_pbtxt('name: "unterminated\n')


def test_release_sets() -> None:
    assert list(cc.LMI_TRTLLM) == ["0.28.0", "0.29.0", "0.30.0", "0.31.0", "0.32.0", "0.33.0", "0.34.0", "0.35.0",
                                   "0.36.0"]
    assert list(cc.TRITON_TRTLLM) == list(cc.TRITON_TAGS)
    assert cc.TRITON_TAGS[0] == "v0.9.0" and cc.TRITON_TAGS[-1] == "v0.19.0"


_CITATION = re.compile(r"^[\w.-]+/[\w.-]+ \S+@(v\d+\.\d+\.\d+|\d+\.\d+\.\d+-dlc) L\d+(-\d+)?(,\d+(-\d+)?)*$")
_OTHER = re.compile(r"^(https://\S+( .*)?|[\w.-]+/[\w.-]+ git .+)$")


def _sources(obj: object) -> list[str]:
    out = []
    for name in ("source",):
        if hasattr(obj, name):
            out += getattr(obj, name).split("; ")
    for value in vars(obj).values():
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if hasattr(item, "__dataclass_fields__"):
                out += _sources(item)
    return out


@pytest.mark.parametrize("record", [*cc.LMI_TRTLLM.values(), *cc.TRITON_TRTLLM.values()],
                         ids=[*cc.LMI_TRTLLM, *cc.TRITON_TRTLLM])
def test_every_fact_names_file_ref_and_lines(record: object) -> None:
    ref = getattr(record, "ref", None) or getattr(record, "tag")
    sources = _sources(record)
    assert len(sources) > 10
    for s in sources:
        m = _CITATION.match(s)
        assert m or _OTHER.match(s), s
        if m:  # a release's facts come from that release's ref
            assert m.group(1) == ref, f"{s} cites another ref than {ref}"


def test_lmi_own_ci_configuration_passes_and_the_sync_design_fails_on_the_async_releases() -> None:
    # The serving.properties LMI's integration tests write for the async service (prepare.py build_trtllm_handler_model).
    ci = {"option.rolling_batch": "disable", "option.async_mode": "True",
          "option.entryPoint": "djl_python.lmi_trtllm.trtllm_async_service", "option.tensor_parallel_degree": "4"}
    for v in ("0.33.0", "0.35.0", "0.36.0"):
        assert cc.lmi_problems(v, ci, tp=4) == []
    assert cc.LMI_TRTLLM["0.33.0"].handler_broken.value is None
    assert "multiple values" in cc.LMI_TRTLLM["0.35.0"].handler_broken.value
    old = {"engine": "MPI", "option.rolling_batch": "trtllm", "option.tensor_parallel_degree": "2"}
    problems = cc.lmi_problems("0.33.0", old, tp=2)
    assert any(p.startswith("option.async_mode missing") for p in problems)
    assert any(p.startswith("engine=MPI") for p in problems)
    # The same keys are the documented extracted-artifacts configuration of the <= 0.32 releases (plus mpi_mode).
    assert cc.lmi_problems("0.28.0", {**old, "option.mpi_mode": "true"}, tp=2) == []
    assert cc.lmi_problems("0.32.0", {**old, "option.mpi_mode": "true"}, tp=4)[0].startswith(
        "option.tensor_parallel_degree=2")
