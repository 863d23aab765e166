"""Agent steps: OpenTelemetry GenAI spans (or gRPC ``AgentStep`` messages) → steps, grouped into runs.

A span is one step when it carries ``gen_ai.operation.name`` and has a parent; the parentless
``invoke_agent`` span of the orchestrator is the run's root, which ends with the run, so its arrival
is the end-of-run signal. The run is keyed by ``gen_ai.conversation.id`` (the trace id when absent).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from services.common import otlp
from services.common.pb.faultline.v1 import detector_pb2

OPERATIONS = ("invoke_agent", "chat", "execute_tool")


@dataclass(frozen=True)
class Step:
    run_id: str
    system: str
    agent: str
    operation: str
    index: int
    input_text: str = ""
    output_text: str = ""
    role: str = "assistant"
    tool: str = ""
    received_from: tuple[str, ...] = ()
    trace_id: str = ""
    start_ns: int = 0
    end_ns: int = 0
    is_error: bool = False
    end_of_run: bool = False


@dataclass(frozen=True)
class RunEnd:
    """The root span of a run arrived: the run is over."""

    run_id: str
    system: str
    trace_id: str
    end_ns: int


@dataclass
class Run:
    run_id: str
    system: str
    steps: list[Step] = field(default_factory=list)


class StepError(ValueError):
    """An input that cannot be read as an agent step (a reason for the DLQ or INVALID_ARGUMENT)."""


def _message_text(raw: Any) -> tuple[str, str]:
    """(role, text) of a ``gen_ai.*.messages`` attribute: JSON ``[{role, parts: [{type, content}]}]``."""
    if not raw:
        return "", ""
    try:
        messages = json.loads(raw) if isinstance(raw, str) else raw
        role = str(messages[-1].get("role", "")) if messages else ""
        text = "\n".join(
            str(part.get("content", ""))
            for message in messages
            for part in message.get("parts", ())
            if part.get("type", "text") == "text"
        )
    except (ValueError, TypeError, AttributeError) as error:
        raise StepError(f"gen_ai messages attribute is not the GenAI JSON form: {error}") from error
    return role, text


def system_of(resource: dict[str, Any]) -> str:
    """The multi-agent system a span belongs to: ``faultline.system``, else ``service.name`` without ``mas-``."""
    name = str(resource.get("faultline.system") or resource.get("service.name") or "")
    return name.removeprefix("mas-")


def from_span(span: Span, resource: dict[str, Any]) -> Step | RunEnd | None:
    """The step (or run end) a span describes; None for spans that are not GenAI agent steps."""
    attrs = otlp.attributes(span.attributes)
    operation = attrs.get("gen_ai.operation.name")
    if not operation:
        return None
    trace_id = span.trace_id.hex()
    run_id = str(attrs.get("gen_ai.conversation.id") or trace_id)
    system = system_of(resource)
    if not span.parent_span_id:
        return RunEnd(run_id, system, trace_id, span.end_time_unix_nano)
    agent = attrs.get("gen_ai.agent.name")
    if not agent:
        raise StepError(f"span {span.span_id.hex()} has gen_ai.operation.name but no gen_ai.agent.name")
    _, input_text = _message_text(attrs.get("gen_ai.input.messages"))
    role, output_text = _message_text(attrs.get("gen_ai.output.messages"))
    received = attrs.get("faultline.step.received_from") or ()
    return Step(
        run_id=run_id,
        system=system,
        agent=str(agent),
        operation=str(operation),
        index=int(attrs.get("faultline.step.index", -1)),
        input_text=input_text,
        output_text=output_text,
        role=role or ("tool" if operation == "execute_tool" else "assistant"),
        tool=str(attrs.get("gen_ai.tool.name") or ""),
        received_from=tuple(str(r) for r in (received if isinstance(received, list) else [received])),
        trace_id=trace_id,
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        is_error=span.status.code == Status.STATUS_CODE_ERROR,
    )


def from_request(request: ExportTraceServiceRequest) -> Iterator[Step | RunEnd]:
    """Steps and run ends of one OTLP export request, in span order."""
    for scoped in otlp.iter_spans(request):
        item = from_span(scoped.item, scoped.resource)
        if item is not None:
            yield item


def from_proto(message: detector_pb2.AgentStep) -> Step:
    if not message.agent or not (message.run_id or message.trace_id):
        raise StepError("an AgentStep needs agent and run_id (or trace_id)")
    if message.operation and message.operation not in OPERATIONS:
        raise StepError(f"operation {message.operation!r} is not one of {OPERATIONS}")
    return Step(
        run_id=message.run_id or message.trace_id,
        system=message.system,
        agent=message.agent,
        operation=message.operation or "chat",
        index=message.index,
        input_text=message.input_text,
        output_text=message.output_text,
        role=message.role or "assistant",
        tool=message.tool,
        received_from=tuple(message.received_from),
        trace_id=message.trace_id,
        start_ns=message.started_at.ToNanoseconds(),
        end_ns=message.ended_at.ToNanoseconds(),
        is_error=message.is_error,
        end_of_run=message.end_of_run,
    )


def to_proto(step: Step) -> detector_pb2.AgentStep:
    message = detector_pb2.AgentStep(
        run_id=step.run_id,
        trace_id=step.trace_id,
        system=step.system,
        agent=step.agent,
        role=step.role,
        operation=step.operation,
        tool=step.tool,
        input_text=step.input_text,
        output_text=step.output_text,
        received_from=list(step.received_from),
        index=step.index,
        is_error=step.is_error,
        end_of_run=step.end_of_run,
    )
    message.started_at.FromNanoseconds(step.start_ns)
    message.ended_at.FromNanoseconds(step.end_ns)
    return message


def group_runs(items: Iterable[Step | RunEnd]) -> list[Run]:
    """Whole runs from a stream of steps (offline: training, evaluation); ordered by step index."""
    runs: dict[str, Run] = {}
    for item in items:
        if isinstance(item, Step):
            runs.setdefault(item.run_id, Run(item.run_id, item.system)).steps.append(item)
    for run in runs.values():
        run.steps.sort(key=lambda s: s.index)
        run.steps = [replace(s, index=i) for i, s in enumerate(run.steps)]
    return list(runs.values())
