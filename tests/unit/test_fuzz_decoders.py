"""Property tests: every decoder and request validator at the platform's edges answers arbitrary input
with its own error type (→ DLQ, INVALID_ARGUMENT, HTTP 4xx), never with a crash of another kind."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common import otlp
from services.common.cloudevents import CloudEvent, EventDecodeError, parse_protobuf
from services.common.pb.faultline.v1 import platform_pb2
from services.common.pb.kserve.v2 import open_inference_pb2 as pb
from services.inference.kserve import InvalidRequest, KServeServicer, _deserialize_bytes
from services.inference.replay import ReplayEngine

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

header_names = st.sampled_from(
    ["ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time", "ce_subject", "content-type", "x-other"]
)
header_values = st.one_of(st.binary(max_size=40), st.sampled_from([b"1.0", b"2026-01-01T00:00:00Z", b"\xff\xfe"]))


@FUZZ
@given(st.lists(st.tuples(header_names, header_values), max_size=8), st.one_of(st.none(), st.binary(max_size=200)))
def test_cloudevent_headers_either_parse_or_raise_a_decode_error(headers: list, value: bytes | None) -> None:
    try:
        event = CloudEvent.from_record(headers, value)
    except EventDecodeError:
        return
    with contextlib.suppress(EventDecodeError):
        event.parse(platform_pb2.Heartbeat)


@FUZZ
@given(st.binary(max_size=600))
@pytest.mark.parametrize("decode", [otlp.decode_spans, otlp.decode_metrics, otlp.decode_logs])
def test_otlp_decoders_and_their_walkers_survive_any_bytes(decode, data: bytes) -> None:  # type: ignore[no-untyped-def]
    try:
        request = decode(data)
    except EventDecodeError:
        return
    walkers = {otlp.decode_spans: otlp.iter_spans, otlp.decode_metrics: otlp.iter_metrics}
    for item in walkers.get(decode, otlp.iter_logs)(request):
        otlp.attributes(item.resource.attributes)
        assert isinstance(item.service, str)


@FUZZ
@given(st.binary(max_size=300))
def test_protobuf_bodies_either_parse_or_raise_a_decode_error(data: bytes) -> None:
    with contextlib.suppress(EventDecodeError):
        parse_protobuf(platform_pb2.ServiceInfo, data)


@FUZZ
@given(st.binary(max_size=64))
def test_triton_bytes_tensors_decode_or_are_invalid(raw: bytes) -> None:
    try:
        items = _deserialize_bytes(raw)
    except InvalidRequest:
        return
    assert sum(4 + len(i) for i in items) == len(raw)


@pytest.fixture(scope="module")
def servicer(tmp_path_factory: pytest.TempPathFactory) -> KServeServicer:
    recording = tmp_path_factory.mktemp("replay") / "r.jsonl"
    recording.write_text(json.dumps({"prompt": "hello", "completion": "world"}) + "\n")
    return KServeServicer(ReplayEngine(recording), "replay")


tensor = st.builds(
    pb.ModelInferRequest.InferInputTensor,
    name=st.sampled_from(["text_input", "sampling_parameters", "stream", "exclude_input_in_output", "other"]),
    datatype=st.sampled_from(["BYTES", "BOOL", "FP32", ""]),
    shape=st.lists(st.integers(min_value=-2, max_value=3), max_size=2),
)


@FUZZ
@given(
    st.sampled_from(["replay", "other", ""]),
    st.lists(tensor, max_size=4),
    st.lists(st.binary(max_size=24), max_size=4),
    st.dictionaries(st.sampled_from(["max_tokens", "temperature", "seed", "attention"]), st.integers(-5, 5)),
)
def test_kserve_requests_are_parsed_or_refused_with_a_reason(
    servicer: KServeServicer, model: str, inputs: list, raw: list[bytes], parameters: dict[str, int]
) -> None:
    request = pb.ModelInferRequest(model_name=model, inputs=inputs, raw_input_contents=raw)
    for key, value in parameters.items():
        request.parameters[key].int64_param = value
    try:
        prompt, _stream, _exclude, params = servicer._parse(request)
    except InvalidRequest as error:
        assert str(error)
        return
    assert isinstance(prompt, str) and params.max_tokens >= 1


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-10, 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
chat_fields = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["replay", "other"]) | json_values,
        "messages": st.lists(
            st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "robot"]), "content": json_values}),
            max_size=2,
        )
        | json_values,
        "max_tokens": json_values,
        "temperature": json_values,
        "stream": json_values,
        "attention": json_values,
    },
)


@pytest.fixture(scope="module")
def http(servicer: KServeServicer):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from services.inference.openai_http import create_app

    return TestClient(create_app(servicer.engine, "replay"), raise_server_exceptions=False)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chat_fields)
def test_openai_chat_answers_any_body_with_a_client_error_or_an_answer(http, body: dict) -> None:  # type: ignore[no-untyped-def]
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code in (200, 400, 404, 422), response.text
    if response.status_code != 200:
        assert response.json()  # a body that says why
