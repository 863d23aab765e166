"""CloudEvents 1.0 over Kafka, binary content mode: attributes in ``ce_*`` headers, protobuf body.

The event ``type`` is the protobuf message's full name (``faultline.v1.Heartbeat``), so a
consumer can check that a record carries what its topic promises before parsing it.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf.message import DecodeError, Message

SPEC_VERSION = "1.0"
PROTOBUF_CONTENT_TYPE = "application/protobuf"
Headers = Sequence[tuple[str, bytes]]


class EventDecodeError(ValueError):
    """The record is not a well-formed CloudEvent carrying the expected protobuf message."""


def new_event_id() -> str:
    # A random (version 4) UUID from the PRNG: ids need uniqueness, not secrecy, and
    # os.urandom costs tens of microseconds per call on some VMs, on the publish hot path.
    return str(uuid.UUID(int=random.getrandbits(128), version=4))


@dataclass(frozen=True)
class CloudEvent:
    type: str
    source: str
    data: bytes
    id: str = field(default_factory=new_event_id)
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    subject: str | None = None
    content_type: str = PROTOBUF_CONTENT_TYPE

    @classmethod
    def from_message(cls, message: Message, source: str, **attributes: object) -> CloudEvent:
        return cls(
            type=message.DESCRIPTOR.full_name,
            source=source,
            data=message.SerializeToString(deterministic=True),
            **attributes,  # type: ignore[arg-type]
        )

    def headers(self) -> list[tuple[str, bytes]]:
        headers = [
            ("ce_specversion", SPEC_VERSION.encode()),
            ("ce_id", self.id.encode()),
            ("ce_type", self.type.encode()),
            ("ce_source", self.source.encode()),
            ("ce_time", self.time.astimezone(UTC).isoformat().replace("+00:00", "Z").encode()),
            ("content-type", self.content_type.encode()),
        ]
        if self.subject:
            headers.append(("ce_subject", self.subject.encode()))
        return headers

    @classmethod
    def from_record(cls, headers: Headers | None, value: bytes | None) -> CloudEvent:
        attrs: dict[str, str] = {}
        for key, raw in headers or ():
            if key.startswith("ce_") or key == "content-type":
                try:
                    attrs[key] = raw.decode("utf-8")
                except (UnicodeDecodeError, AttributeError) as error:
                    raise EventDecodeError(f"header {key} is not UTF-8") from error
        missing = [k for k in ("ce_specversion", "ce_id", "ce_type", "ce_source") if not attrs.get(k)]
        if missing:
            raise EventDecodeError(f"missing CloudEvents header(s): {', '.join(missing)}")
        if attrs["ce_specversion"] != SPEC_VERSION:
            raise EventDecodeError(f"unsupported ce_specversion {attrs['ce_specversion']!r}")
        if value is None:
            raise EventDecodeError("record has no value")
        time = datetime.now(UTC)
        if "ce_time" in attrs:
            try:
                time = datetime.fromisoformat(attrs["ce_time"].replace("Z", "+00:00"))
            except ValueError as error:
                raise EventDecodeError(f"ce_time is not RFC 3339: {attrs['ce_time']!r}") from error
        return cls(
            type=attrs["ce_type"],
            source=attrs["ce_source"],
            data=value,
            id=attrs["ce_id"],
            time=time,
            subject=attrs.get("ce_subject"),
            content_type=attrs.get("content-type", PROTOBUF_CONTENT_TYPE),
        )

    def parse(self, message_type: type[Message]) -> Message:
        """The body as ``message_type``; a type or content-type mismatch is a decode error."""
        expected = message_type.DESCRIPTOR.full_name
        if self.type != expected:
            raise EventDecodeError(f"ce_type {self.type!r} where {expected!r} was expected")
        if not self.content_type.startswith(PROTOBUF_CONTENT_TYPE):
            raise EventDecodeError(f"content-type {self.content_type!r} is not {PROTOBUF_CONTENT_TYPE}")
        return parse_protobuf(message_type, self.data)


def parse_protobuf(message_type: type[Message], data: bytes) -> Message:
    message = message_type()
    try:
        message.ParseFromString(data)
    except DecodeError as error:
        raise EventDecodeError(f"body is not a valid {message_type.DESCRIPTOR.full_name}: {error}") from error
    return message
