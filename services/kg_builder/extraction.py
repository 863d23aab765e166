"""Triples from sources. Documents: atlas-rag's three LLM stages per chunk. Records: their fields, no LLM.

Stages (the paper's prompts, a system prompt asking for a JSON array and nothing else):
1. entity–relation–entity;  2. event–entity (each pair becomes ``event --is participated by--> entity``);
3. event–relation–event with before / after / at the same time / because / as a result.
Each answer is validated item by item: a malformed item is dropped (and counted), a malformed answer is
repaired or re-asked by :mod:`services.common.llm`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from services.common.llm import LLMClient, SchemaError
from services.common.pb.faultline.v1 import detector_pb2, kg_pb2, rca_pb2
from services.kg_builder.chunking import CHUNK_CHARS, chunk_text

SYSTEM = "You are a helpful assistant who always response in a valid array of JSON objects without any explanation"
PASSAGE = "Here is the passage."

ENTITY_RELATION = (
    "Given a passage, summarize all the important entities and the relations between them in a concise manner. "
    "Relations should briefly capture the connections between entities, without repeating information from the "
    "head and tail entities. The entities should be as specific as possible. Exclude pronouns from being "
    "considered as entities. The output should strictly adhere to the following JSON format: "
    '[{"Head": "{a noun}", "Relation": "{a verb}", "Tail": "{a noun}"}]'
)
EVENT_ENTITY = (
    "Please analyze and summarize the participation relations between the events and entities in the given "
    "paragraph. Each event is a single independent sentence. Additionally, identify all the entities that "
    "participated in the events. Do not use pronouns as entities. The output should strictly adhere to the "
    'following JSON format: [{"Event": "{a simple sentence describing an event}", "Entity": ["entity 1", "entity 2"]}]'
)
EVENT_RELATION = (
    "Please analyze and summarize the relationships between the events in the paragraph. Each event is a single "
    "independent sentence. Identify temporal and causal relationships between the events using the following "
    "types: before, after, at the same time, because, and as a result. Each extracted triple should be specific, "
    "meaningful, and able to stand alone. Do not use pronouns. The output should strictly adhere to the following "
    'JSON format: [{"Head": "{a simple sentence describing the event 1}", '
    '"Relation": "{temporal or causality relation between the events}", '
    '"Tail": "{a simple sentence describing the event 2}"}]'
)
EVENT_RELATIONS = ("before", "after", "at the same time", "because", "as a result")
PARTICIPATED_BY = "is participated by"

_PUNCT_END = re.compile(r"[\s.;:,!?]+$")
_SPACES = re.compile(r"\s+")


def norm(name: str) -> str:
    """A node's identity: lower case, single spaces, no trailing punctuation."""
    return _PUNCT_END.sub("", _SPACES.sub(" ", name.strip().lower()))


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not norm(value):
        raise SchemaError(f"{what} must be a non-empty string")
    return norm(value)


def _items(value: Any, parse_item) -> tuple[list[Any], int]:  # type: ignore[no-untyped-def]
    """Valid items of a JSON array, and how many were dropped; a non-array is a SchemaError (re-ask)."""
    if isinstance(value, dict):  # a lone object where an array was asked for: a common slip
        value = [value]
    if not isinstance(value, list):
        raise SchemaError(f"expected a JSON array, got {type(value).__name__}")
    good, dropped = [], 0
    for item in value:
        try:
            good.append(parse_item(item))
        except (SchemaError, AttributeError, TypeError):
            dropped += 1
    return good, dropped


def _relation_triple(item: Any) -> tuple[str, str, str]:
    return _text(item.get("Head"), "Head"), _text(item.get("Relation"), "Relation"), _text(item.get("Tail"), "Tail")


def _event_triple(item: Any) -> tuple[str, str, str]:
    head, relation, tail = _relation_triple(item)
    if relation not in EVENT_RELATIONS:
        raise SchemaError(f"relation {relation!r} is not one of {', '.join(EVENT_RELATIONS)}")
    return head, relation, tail


def _event_entities(item: Any) -> tuple[str, list[str]]:
    entities = item.get("Entity")
    if not isinstance(entities, list):
        raise SchemaError("Entity must be an array")
    return _text(item.get("Event"), "Event"), [_text(e, "entity") for e in entities]


def messages(instruction: str, chunk: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{instruction}{PASSAGE}\n{chunk}"}]


@dataclass
class Extraction:
    source_id: str
    kind: str  # "document", "rca-report", "alert", "failure-case"
    triples: list[kg_pb2.Triple] = field(default_factory=list)
    failure: FailureRecord | None = None
    dropped_items: int = 0

    def add(self, head: str, relation: str, tail: str, head_type: str, tail_type: str, kind: str, chunk: int = 0):  # type: ignore[no-untyped-def]
        if head and tail:
            self.triples.append(
                kg_pb2.Triple(
                    head=norm(head),
                    relation=norm(relation),
                    tail=norm(tail),
                    head_type=head_type,
                    tail_type=tail_type,
                    kind=kind,
                    provenance=kg_pb2.Provenance(source_id=self.source_id, chunk=chunk),
                )
            )

    def items(self) -> dict[str, list[str]]:
        """Distinct entities, events and relations, in order of appearance: what conceptualisation types."""
        out: dict[str, dict[str, None]] = {"entity": {}, "event": {}, "relation": {}}
        for t in self.triples:
            for name, typ in ((t.head, t.head_type), (t.tail, t.tail_type)):
                out["event" if typ == "event" else "entity"][name] = None
            if t.kind == "entity":
                out["relation"][t.relation] = None
        return {k: list(v) for k, v in out.items()}


@dataclass(frozen=True)
class FailureRecord:
    """A past failure as SimilarFailures returns it; ``text`` is what its embedding is made of."""

    source_id: str
    node: str
    system: str
    incident_id: str
    service: str
    fault_type: str
    mitigation: str
    summary: str
    text: str


def extract_document(document: kg_pb2.Document, llm: LLMClient, max_chars: int = CHUNK_CHARS) -> Extraction:
    if not document.id or not document.text.strip():
        raise ValueError("a document needs an id and text")
    out = Extraction(document.id, "document")
    for chunk_no, chunk in enumerate(chunk_text(document.text, max_chars)):
        triples, dropped = llm.json_call(messages(ENTITY_RELATION, chunk), lambda v: _items(v, _relation_triple))
        out.dropped_items += dropped
        for head, relation, tail in triples:
            out.add(head, relation, tail, "entity", "entity", "entity", chunk_no)
        pairs, dropped = llm.json_call(messages(EVENT_ENTITY, chunk), lambda v: _items(v, _event_entities))
        out.dropped_items += dropped
        for event, entities in pairs:
            for entity in entities:
                out.add(event, PARTICIPATED_BY, entity, "event", "entity", "event-entity", chunk_no)
        events, dropped = llm.json_call(messages(EVENT_RELATION, chunk), lambda v: _items(v, _event_triple))
        out.dropped_items += dropped
        for head, relation, tail in events:
            out.add(head, relation, tail, "event", "event", "event", chunk_no)
    return out


# -- structured records: the triples are their fields ------------------------------------------------------


def failure_node(source_id: str) -> str:
    return norm(f"failure {source_id}")


def extract_rca_report(report: rca_pb2.RcaReport) -> Extraction:
    if not report.id:
        raise ValueError("an RcaReport needs an id")
    if not report.candidates:
        raise ValueError(f"RcaReport {report.id} has no root-cause candidates")
    out = Extraction(report.id, "rca-report")
    node = failure_node(report.id)
    top = min(report.candidates, key=lambda c: c.rank if c.rank > 0 else 1 << 30)
    fault = top.fault_type or "unknown"
    out.add(node, "has root cause", top.service, "failure", "service", "entity")
    out.add(node, "has fault type", fault, "failure", "fault type", "entity")
    out.add(top.service, "suffered", fault, "service", "fault type", "entity")
    if report.system:
        out.add(node, "occurred in", report.system, "failure", "system", "entity")
        out.add(top.service, "is part of", report.system, "service", "system", "entity")
    if report.incident_id:
        out.add(node, "analyses incident", report.incident_id, "failure", "incident", "entity")
    if top.pod:
        out.add(node, "root cause pod", top.pod, "failure", "pod", "entity")
        out.add(top.pod, "runs", top.service, "pod", "service", "entity")
    if top.node:
        out.add(node, "root cause node", top.node, "failure", "node", "entity")
    for other in report.candidates:
        if other is not top and other.service and other.service != top.service:
            out.add(node, "also suspected", other.service, "failure", "service", "entity")
    symptoms: list[str] = []
    for verdict in report.evidence.nodes:
        if not verdict.is_abnormal:
            continue
        if verdict.service and verdict.service != top.service:
            out.add(node, "affected", verdict.service, "failure", "service", "entity")
        for symptom in verdict.symptoms:
            out.add(node, "showed symptom", symptom, "failure", "symptom", "entity")
            symptoms.append(symptom)
    summary = report.summary or top.reason or f"{fault} fault in {top.service}"
    out.failure = FailureRecord(
        source_id=report.id,
        node=node,
        system=report.system,
        incident_id=report.incident_id,
        service=top.service,
        fault_type=fault,
        mitigation="",
        summary=summary,
        text=_failure_text(summary, top.reason, symptoms),
    )
    return out


def _failure_text(summary: str, reason: str, symptoms: Iterable[str]) -> str:
    parts = [summary] + ([reason] if reason and reason != summary else []) + sorted(set(symptoms))
    return ". ".join(p.strip().rstrip(".") for p in parts if p.strip())


def _agent_failure(out: Extraction, source_id: str, agent: str, system: str, failure_type: str) -> tuple[str, str]:
    """The triples every failure of an agent run states (confirmed alert or knowledge-base case):
    (failure node, the agent it is blamed on, or the system when no agent is named)."""
    node, target = failure_node(source_id), agent or system
    out.add(node, "has root cause", target, "failure", "agent", "entity")
    out.add(node, "has fault type", failure_type, "failure", "fault type", "entity")
    out.add(target, "suffered", failure_type, "agent", "fault type", "entity")
    if system:
        out.add(node, "occurred in", system, "failure", "system", "entity")
    return node, target


def extract_alert(alert: detector_pb2.Alert) -> Extraction:
    if not alert.id or not alert.failure_type:
        raise ValueError("a confirmed alert needs an id and a failure_type")
    out = Extraction(alert.id, "alert")
    node, target = _agent_failure(out, alert.id, alert.agent, alert.system, alert.failure_type)
    for case in alert.matched:
        out.add(node, "resembles", failure_node(case.case_id), "failure", "failure", "entity")
    summary = f"{alert.failure_type} at step {alert.step_index} of agent {alert.agent} in {alert.system}"
    out.failure = FailureRecord(
        alert.id, node, alert.system, alert.run_id, target, alert.failure_type, "", summary, summary
    )
    return out


def extract_failure_case(case: detector_pb2.FailureCase) -> Extraction:
    if not case.id or not case.failure_type:
        raise ValueError("a failure case needs an id and a failure_type")
    out = Extraction(case.id, "failure-case")
    node, target = _agent_failure(out, case.id, case.agent, case.system, case.failure_type)
    if case.mitigation:
        out.add(node, "mitigated by", case.mitigation, "failure", "mitigation", "entity")
        out.add(case.failure_type, "mitigated by", case.mitigation, "fault type", "mitigation", "entity")
    summary = case.description or f"{case.failure_type} in agent {case.agent} of {case.system}"
    out.failure = FailureRecord(
        case.id, node, case.system, case.run_id, target, case.failure_type, case.mitigation, summary, summary
    )
    return out
