from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from services.common import otlp


def _request() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend(otlp.to_key_values({"service.name": "cartservice", "k8s.pod.name": "cart-0"}))
    ss = rs.scope_spans.add()
    ss.scope.name = "sim"
    span = ss.spans.add(name="GetCart", trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    span.attributes.extend(otlp.to_key_values({"http.status_code": 500, "retry": True, "ratio": 0.5, "tags": ["a"]}))
    return request


def test_values_round_trip_through_any_value() -> None:
    value = {"a": 1, "b": [1.5, "x", False], "c": {"d": b"\x00"}}
    assert otlp.any_value(otlp.to_any_value(value)) == value


def test_export_request_is_wire_identical_to_traces_data() -> None:
    data = _request().SerializeToString()
    assert TracesData.FromString(data).resource_spans[0].scope_spans[0].spans[0].name == "GetCart"


def test_iter_spans_carries_the_resource() -> None:
    (scoped,) = list(otlp.iter_spans(otlp.decode_spans(_request().SerializeToString())))
    assert scoped.service == "cartservice"
    assert scoped.resource["k8s.pod.name"] == "cart-0"
    assert otlp.attributes(scoped.item.attributes) == {
        "http.status_code": 500,
        "retry": True,
        "ratio": 0.5,
        "tags": ["a"],
    }
