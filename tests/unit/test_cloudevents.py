from datetime import UTC, datetime

import pytest

from services.common.cloudevents import CloudEvent, EventDecodeError
from services.common.pb.faultline.v1 import common_pb2, platform_pb2


def _beat() -> platform_pb2.Heartbeat:
    beat = platform_pb2.Heartbeat(service=platform_pb2.ServiceInfo(name="detector", version="1"))
    beat.attributes["zone"] = "a"
    return beat


def test_binary_mode_headers_round_trip() -> None:
    event = CloudEvent.from_message(_beat(), "faultline/test", subject="detector")
    headers = dict(event.headers())
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_type"] == b"faultline.v1.Heartbeat"
    assert headers["content-type"] == b"application/protobuf"
    assert headers["ce_time"].endswith(b"Z")

    back = CloudEvent.from_record(event.headers(), event.data)
    assert (back.id, back.type, back.source, back.subject) == (event.id, event.type, event.source, "detector")
    assert abs((back.time - event.time).total_seconds()) < 1e-3
    assert back.parse(platform_pb2.Heartbeat) == _beat()


def test_missing_headers_are_named() -> None:
    with pytest.raises(EventDecodeError, match="ce_id, ce_type"):
        CloudEvent.from_record([("ce_specversion", b"1.0"), ("ce_source", b"x")], b"")


def test_wrong_type_and_truncated_body_are_decode_errors() -> None:
    event = CloudEvent.from_message(_beat(), "faultline/test")
    with pytest.raises(EventDecodeError, match=r"faultline\.v1\.TimeWindow"):
        event.parse(common_pb2.TimeWindow)
    truncated = CloudEvent.from_record(event.headers(), event.data[:-3])
    with pytest.raises(EventDecodeError, match=r"not a valid faultline\.v1\.Heartbeat"):
        truncated.parse(platform_pb2.Heartbeat)


def test_bad_header_values_are_decode_errors() -> None:
    headers = dict(CloudEvent.from_message(_beat(), "s").headers())
    with pytest.raises(EventDecodeError, match="not UTF-8"):
        CloudEvent.from_record([*headers.items(), ("ce_subject", b"\xff\xfe")], b"")
    headers["ce_time"] = b"yesterday"
    with pytest.raises(EventDecodeError, match="RFC 3339"):
        CloudEvent.from_record(list(headers.items()), b"")
    headers["ce_specversion"] = b"0.3"
    with pytest.raises(EventDecodeError, match="specversion"):
        CloudEvent.from_record(list(headers.items()), b"")


def test_explicit_time_is_kept_in_utc() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    event = CloudEvent(type="t", source="s", data=b"", time=when)
    assert dict(event.headers())["ce_time"] == b"2026-01-02T03:04:05Z"
    assert CloudEvent.from_record(event.headers(), b"").time == when
