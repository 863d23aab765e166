"""The KServe v2 / Open Inference Protocol front end, as Triton serves it, for an LLM.

The model contract is the one Triton's vLLM backend uses, so clients written for Triton work
unchanged: input ``text_input`` (BYTES, [1]) plus optional ``stream`` (BOOL),
``sampling_parameters`` (BYTES, a JSON object) and ``exclude_input_in_output`` (BOOL); outputs
``text_output``, ``finish_reason``, ``num_input_tokens`` and ``num_output_tokens``. The model
is decoupled: ``ModelStreamInfer`` with ``stream`` true answers with one response per text
delta, the last one flagged ``triton_final_response``.
"""

from __future__ import annotations

import json
import queue
import struct
import threading
from collections.abc import Iterator

import grpc
import numpy as np

from services.common.grpc_server import GrpcService
from services.common.pb.kserve.v2 import open_inference_pb2 as pb
from services.inference.engine import Engine, RequestHandle, StreamEvent
from services.inference.replay import ReplayEngine
from services.inference.sampling import SamplingParams

TRITON_SERVICE = "inference.GRPCInferenceService"
SERVER_NAME = "faultline-inference"
VERSION = "1"
# Request parameters the Triton client sets itself; never sampling options.
_RESERVED = {
    "sequence_id",
    "sequence_start",
    "sequence_end",
    "priority",
    "timeout",
    "triton_enable_empty_final_response",
}
INPUTS = [
    ("text_input", "BYTES", pb.TYPE_STRING, False),
    ("stream", "BOOL", pb.TYPE_BOOL, True),
    ("sampling_parameters", "BYTES", pb.TYPE_STRING, True),
    ("exclude_input_in_output", "BOOL", pb.TYPE_BOOL, True),
]
OUTPUTS = [
    ("text_output", "BYTES", pb.TYPE_STRING),
    ("finish_reason", "BYTES", pb.TYPE_STRING),
    ("num_input_tokens", "UINT32", pb.TYPE_UINT32),
    ("num_output_tokens", "UINT32", pb.TYPE_UINT32),
    ("tv_distance_max", "FP32", pb.TYPE_FP32),
    ("tv_distance_mean", "FP32", pb.TYPE_FP32),
]
# Outputs that exist only when the request's attention backend measured them.
_MEASURED = {"tv_distance_max": "tv_max", "tv_distance_mean": "tv_mean"}


class InvalidRequest(ValueError):
    """The request is malformed; answered with INVALID_ARGUMENT and this reason."""


def _deserialize_bytes(raw: bytes) -> list[bytes]:
    """Triton's BYTES tensor layout: each element is a 4-byte little-endian length, then the bytes."""
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidRequest("malformed BYTES tensor: truncated length prefix")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InvalidRequest("malformed BYTES tensor: element longer than the data")
        out.append(raw[offset : offset + size])
        offset += size
    return out


def _serialize_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _inputs(request: pb.ModelInferRequest) -> dict[str, list]:
    """Input tensors by name, decoded from raw_input_contents or contents."""
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise InvalidRequest("raw_input_contents must hold one entry per input")
    decoded: dict[str, list] = {}
    for i, tensor in enumerate(request.inputs):
        raw = request.raw_input_contents[i] if request.raw_input_contents else None
        if tensor.datatype == "BYTES":
            values = _deserialize_bytes(raw) if raw is not None else list(tensor.contents.bytes_contents)
        elif tensor.datatype == "BOOL":
            values = [bool(b) for b in raw] if raw is not None else list(tensor.contents.bool_contents)
        else:
            raise InvalidRequest(f"input {tensor.name!r} has datatype {tensor.datatype}; expected BYTES or BOOL")
        if any(d < 0 for d in tensor.shape):
            raise InvalidRequest(f"input {tensor.name!r} has a negative dimension in shape {list(tensor.shape)}")
        expected = int(np.prod(tensor.shape)) if tensor.shape else 1
        if len(values) != expected:
            raise InvalidRequest(f"input {tensor.name!r} has {len(values)} elements but shape {list(tensor.shape)}")
        decoded[tensor.name] = values
    return decoded


def _parameter_value(p: pb.InferParameter) -> object:
    return getattr(p, p.WhichOneof("parameter_choice") or "string_param")


class KServeServicer:
    def __init__(self, engine: Engine | ReplayEngine, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name

    # -- health and metadata --------------------------------------------------------------------

    def ServerLive(self, request, context):  # type: ignore[no-untyped-def]
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):  # type: ignore[no-untyped-def]
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):  # type: ignore[no-untyped-def]
        return pb.ModelReadyResponse(ready=request.name == self.model_name and request.version in ("", VERSION))

    def ServerMetadata(self, request, context):  # type: ignore[no-untyped-def]
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=VERSION, extensions=["model_configuration"])

    def ModelMetadata(self, request, context):  # type: ignore[no-untyped-def]
        self._check_model(request.name, context, grpc.StatusCode.NOT_FOUND)
        return pb.ModelMetadataResponse(
            name=self.model_name,
            versions=[VERSION],
            platform="faultline",
            inputs=[pb.ModelMetadataResponse.TensorMetadata(name=n, datatype=d, shape=[1]) for n, d, _, _ in INPUTS],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(name=n, datatype=d, shape=[-1]) for n, d, _ in OUTPUTS],
        )

    def ModelConfig(self, request, context):  # type: ignore[no-untyped-def]
        self._check_model(request.name, context, grpc.StatusCode.NOT_FOUND)
        config = pb.ModelConfig(
            name=self.model_name,
            backend="faultline",
            max_batch_size=0,
            input=[pb.ModelInput(name=n, data_type=t, dims=[1], optional=o) for n, _, t, o in INPUTS],
            output=[pb.ModelOutput(name=n, data_type=t, dims=[-1]) for n, _, t in OUTPUTS],
            model_transaction_policy=pb.ModelTransactionPolicy(decoupled=True),
        )
        return pb.ModelConfigResponse(config=config)

    def _check_model(self, name: str, context: grpc.ServicerContext, code: grpc.StatusCode) -> None:
        if name != self.model_name:
            context.abort(code, f"unknown model {name!r}; this server serves {self.model_name!r}")

    # -- inference ----------------------------------------------------------------------------

    def _parse(self, request: pb.ModelInferRequest) -> tuple[str, bool, bool, SamplingParams]:
        if request.model_name != self.model_name:
            raise InvalidRequest(f"unknown model {request.model_name!r}; this server serves {self.model_name!r}")
        inputs = _inputs(request)
        if "text_input" not in inputs:
            raise InvalidRequest("input 'text_input' is required")
        unknown = set(inputs) - {n for n, *_ in INPUTS}
        if unknown:
            raise InvalidRequest(f"unknown input(s): {', '.join(sorted(unknown))}")
        for name, values in inputs.items():  # one request is one prompt (Triton's LLM convention: shape [1])
            if len(values) != 1:
                raise InvalidRequest(f"input {name!r} must hold exactly one element, got {len(values)}")
        try:
            prompt = inputs["text_input"][0].decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidRequest("text_input is not valid UTF-8") from error
        stream = bool(inputs.get("stream", [False])[0])
        exclude = inputs.get("exclude_input_in_output", [None])[0]
        if stream and exclude is False:
            raise InvalidRequest("streaming returns deltas: exclude_input_in_output=false is not supported with stream")
        raw: dict[str, object] = {k: _parameter_value(v) for k, v in request.parameters.items() if k not in _RESERVED}
        if "sampling_parameters" in inputs:
            try:
                parsed = json.loads(inputs["sampling_parameters"][0] or b"{}")
            except json.JSONDecodeError as error:
                raise InvalidRequest(f"sampling_parameters is not JSON: {error}") from error
            if not isinstance(parsed, dict):
                raise InvalidRequest("sampling_parameters must be a JSON object")
            raw.update(parsed)
        try:
            params = SamplingParams.from_dict(raw)
        except ValueError as error:
            raise InvalidRequest(str(error)) from error
        return prompt, stream, bool(exclude) or stream, params

    def _submit(self, prompt: str, params: SamplingParams, request_id: str) -> RequestHandle:
        try:
            return self.engine.submit_text(prompt, params, request_id or None)
        except ValueError as error:
            raise InvalidRequest(str(error)) from error

    def _response(
        self, request: pb.ModelInferRequest, text: str, event: StreamEvent, final: bool
    ) -> pb.ModelInferResponse:
        values = {
            "text_output": ("BYTES", _serialize_bytes([text.encode()])),
            "finish_reason": ("BYTES", _serialize_bytes([(event.finish_reason or "").encode()])),
            "num_input_tokens": ("UINT32", np.array([event.prompt_tokens], np.uint32).tobytes()),
            "num_output_tokens": ("UINT32", np.array([event.completion_tokens], np.uint32).tobytes()),
        }
        for output, stat in _MEASURED.items():
            if stat in event.attention:  # every answer carries its fidelity when it has one
                values[output] = ("FP32", np.array([event.attention[stat]], np.float32).tobytes())
        names = [o.name for o in request.outputs] or list(values)
        response = pb.ModelInferResponse(model_name=self.model_name, model_version=VERSION, id=request.id)
        for name in names:
            if name not in values:
                raise InvalidRequest(f"unknown output {name!r}; outputs are {', '.join(values)}")
            datatype, raw = values[name]
            response.outputs.add(name=name, datatype=datatype, shape=[1])
            response.raw_output_contents.append(raw)
        if final:
            response.parameters["triton_final_response"].bool_param = True
        return response

    def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]
        try:
            prompt, _stream, exclude, params = self._parse(request)
            handle = self._submit(prompt, params, request.id)
        except InvalidRequest as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        context.add_callback(handle.cancel)  # client gone or deadline passed: stop generating
        text, final = handle.result()
        if final.error:
            context.abort(grpc.StatusCode.INTERNAL, final.error)
        try:
            return self._response(request, text if exclude else prompt + text, final, final=True)
        except InvalidRequest as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))

    def ModelStreamInfer(self, request_iterator, context) -> Iterator[pb.ModelStreamInferResponse]:  # type: ignore[no-untyped-def]
        """Requests on one stream run concurrently; their responses interleave as they are produced."""
        out: queue.Queue[pb.ModelStreamInferResponse | None] = queue.Queue()
        handles: list[RequestHandle] = []
        context.add_callback(lambda: [h.cancel() for h in handles])
        workers: list[threading.Thread] = []

        def serve(request: pb.ModelInferRequest) -> None:
            try:
                prompt, stream, exclude, params = self._parse(request)
                handle = self._submit(prompt, params, request.id)
                handles.append(handle)
                if not stream:
                    text, final = handle.result()
                    out.put(
                        pb.ModelStreamInferResponse(
                            infer_response=self._response(
                                request, text if exclude else prompt + text, final, final=True
                            )
                        )
                    )
                    return
                for event in handle:
                    if event.error:
                        out.put(pb.ModelStreamInferResponse(error_message=event.error))
                    elif event.text or event.finished:
                        response = self._response(request, event.text, event, final=event.finished)
                        out.put(pb.ModelStreamInferResponse(infer_response=response))
            except InvalidRequest as error:
                out.put(pb.ModelStreamInferResponse(error_message=str(error)))

        def read() -> None:
            for request in request_iterator:
                worker = threading.Thread(target=serve, args=(request,), daemon=True)
                worker.start()
                workers.append(worker)
            for worker in workers:
                worker.join()
            out.put(None)

        threading.Thread(target=read, daemon=True).start()
        while (item := out.get()) is not None:
            yield item


def kserve_service(servicer: KServeServicer) -> GrpcService:
    """Registers the servicer under Triton's service name with this package's message classes."""
    unary = {
        "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelConfig": (pb.ModelConfigRequest, pb.ModelConfigResponse),
        "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name), request_deserializer=req.FromString, response_serializer=resp.SerializeToString
        )
        for name, (req, resp) in unary.items()
    }
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        servicer.ModelStreamInfer,
        request_deserializer=pb.ModelInferRequest.FromString,
        response_serializer=pb.ModelStreamInferResponse.SerializeToString,
    )
    generic = grpc.method_handlers_generic_handler(TRITON_SERVICE, handlers)
    return GrpcService(TRITON_SERVICE, lambda server: server.add_generic_rpc_handlers((generic,)))
