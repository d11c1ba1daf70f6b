"""Kiln's ``preprocessing`` model for Triton's Python backend: prompt text in, token ids for ``tensorrt_llm`` out.

Kiln's own code (not tensorrtllm_backend's model.py); only the tensor names follow the backend's ensemble interface
(triton-inference-server/tensorrtllm_backend all_models/inflight_batcher_llm/preprocessing/config.pbtxt@v0.19.0
L39 QUERY, L68 REQUEST_OUTPUT_LEN, L117 INPUT_ID, L122 REQUEST_INPUT_LEN, L157 OUT_END_ID, L162 OUT_PAD_ID), so a
client written for that ensemble's preprocessing model works with this one. Kiln writes this file into the model
repository as ``preprocessing/1/model.py``; it runs inside Triton, where ``triton_python_backend_utils`` exists.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        tokenizer_dir = config["parameters"]["tokenizer_dir"]["string_value"]
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        if self.tokenizer.eos_token_id is None:
            # Without an end id the engine generates until max_tokens on every request: refuse at load instead.
            raise ValueError(f"the tokenizer in {tokenizer_dir} has no eos token: tensorrt_llm needs an end id")
        self.end_id = int(self.tokenizer.eos_token_id)
        # Many causal-LM tokenizers have no pad token; padding is never attended to (input_lengths says where each
        # prompt ends), so the end id serves.
        pad = self.tokenizer.pad_token_id
        self.pad_id = self.end_id if pad is None else int(pad)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._tensors(request)))
            except ValueError as e:  # a bad request fails alone, not the batch Triton handed us
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(e))))
        return responses

    def _tensors(self, request):
        # Triton batches requests along the first axis: QUERY is [batch, 1] of bytes, REQUEST_OUTPUT_LEN [batch, 1].
        texts = [_text(v) for v in pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy().reshape(-1)]
        max_tokens = pb_utils.get_input_tensor_by_name(request, "REQUEST_OUTPUT_LEN").as_numpy().reshape(-1)
        if len(max_tokens) != len(texts):
            raise ValueError(f"{len(texts)} prompts but {len(max_tokens)} max_tokens values")
        if (max_tokens < 1).any():
            raise ValueError("max_tokens must be at least 1")
        ids = [self.tokenizer.encode(t) for t in texts]
        if not all(ids):
            raise ValueError("a prompt tokenises to no tokens")
        longest = max(len(i) for i in ids)
        # One [batch, longest] tensor: shorter prompts are padded; tensorrt_llm reads only input_lengths tokens.
        input_ids = np.full((len(ids), longest), self.pad_id, dtype=np.int32)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
        column = (len(ids), 1)
        return [
            pb_utils.Tensor("INPUT_ID", input_ids),
            pb_utils.Tensor("REQUEST_INPUT_LEN", np.array([len(i) for i in ids], dtype=np.int32).reshape(column)),
            pb_utils.Tensor("REQUEST_OUTPUT_LEN", max_tokens.astype(np.int32).reshape(column)),
            pb_utils.Tensor("OUT_END_ID", np.full(column, self.end_id, dtype=np.int32)),
            pb_utils.Tensor("OUT_PAD_ID", np.full(column, self.pad_id, dtype=np.int32)),
        ]

    def finalize(self):
        self.tokenizer = None


def _text(value):
    """A TYPE_STRING element: bytes from Triton (str where a client library already decoded it)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("text_input is not UTF-8") from None
    return str(value)
