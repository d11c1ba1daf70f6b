"""Kiln's ``postprocessing`` model for Triton's Python backend: ``tensorrt_llm``'s token ids back to text.

Kiln's own code (not tensorrtllm_backend's model.py); the tensor names follow the backend's ensemble interface
(triton-inference-server/tensorrtllm_backend all_models/inflight_batcher_llm/postprocessing/config.pbtxt@v0.19.0
L33 TOKENS_BATCH [-1, -1], L38 SEQUENCE_LENGTH [-1], L45 OUTPUT TYPE_STRING). Kiln writes this file into the model
repository as ``postprocessing/1/model.py``; it runs inside Triton, where ``triton_python_backend_utils`` exists.

Each call decodes one ``tensorrt_llm`` response. Streaming (a decoupled ``tensorrt_llm``), every response holds only
the tokens new since the last one, and the ensemble calls this model once per response, each call on its own: so a
piece is decoded so that its leading space survives (see ``_decode``), and the pieces concatenate to the text.
Without streaming the backend returns the prompt before the generated tokens unless exclude_input_in_output is set
(tensorrtllm_backend inflight_batcher_llm/src/model_instance_state.cc@v0.19.0 L797-807: the default is false;
L1390-1393: not while streaming); the optional REQUEST_INPUT_LEN input, when the ensemble gives it, is the number
of prompt tokens to skip.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.tokenizer = AutoTokenizer.from_pretrained(config["parameters"]["tokenizer_dir"]["string_value"])
        # SentencePiece-style decoders drop the space a piece starts with at the start of a sequence ("▁world"
        # alone decodes to "world"), so decoding streamed pieces one by one would glue words together. Decoding
        # behind a fixed prefix and cutting the prefix's text off keeps that space.
        self.prefix_ids = self.tokenizer.encode("a", add_special_tokens=False)
        self.prefix_text = self.tokenizer.decode(self.prefix_ids, skip_special_tokens=True)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=[self._output(request)]))
            except ValueError as e:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(e))))
        return responses

    def _output(self, request):
        lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()  # [batch, beams]
        tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()  # [batch, beams, tokens]
        if tokens.shape[:-1] != lengths.shape:
            raise ValueError(f"TOKENS_BATCH {tokens.shape} does not match SEQUENCE_LENGTH {lengths.shape}")
        prompt = pb_utils.get_input_tensor_by_name(request, "REQUEST_INPUT_LEN")
        skip = np.zeros(lengths.shape[0], dtype=np.int64) if prompt is None else prompt.as_numpy().reshape(-1)
        if len(skip) != lengths.shape[0]:
            raise ValueError(f"REQUEST_INPUT_LEN has {len(skip)} values for a batch of {lengths.shape[0]}")
        text = np.empty(lengths.shape, dtype=np.object_)
        for index in np.ndindex(*lengths.shape):
            end = min(int(lengths[index]), tokens.shape[-1])
            ids = tokens[index][min(int(skip[index[0]]), end): end]
            text[index] = self._decode(ids.tolist()).encode("utf-8")
        return pb_utils.Tensor("OUTPUT", text)

    def _decode(self, ids):
        if not ids:
            return ""  # a streaming response may carry no new token (the final one, for instance)
        text = self.tokenizer.decode(self.prefix_ids + ids, skip_special_tokens=True)
        if text.startswith(self.prefix_text):
            return text[len(self.prefix_text):]
        return self.tokenizer.decode(ids, skip_special_tokens=True)  # a decoder that rewrote the prefix: plain decode

    def finalize(self):
        self.tokenizer = None
