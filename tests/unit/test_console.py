"""The console's store joins events that arrive in any order, and its evidence graph follows the trace tree."""

from __future__ import annotations

import itertools
import re

import pytest

from services.common.pb.faultline.v1 import detector_pb2, kg_pb2, rca_pb2
from services.console.evidence_svg import evidence_svg
from services.console.store import ConsoleStore


def _messages() -> tuple[detector_pb2.Incident, rca_pb2.RcaReport, kg_pb2.KgUpdate, detector_pb2.MitigationPlan]:
    incident = detector_pb2.Incident(id="i1", system="ob", status=detector_pb2.INCIDENT_STATUS_OPEN)
    report = rca_pb2.RcaReport(id="r1", incident_id="i1")
    report.candidates.add(rank=1, service="cartservice")
    update = kg_pb2.KgUpdate(source_id="r1", nodes_added=3)
    plan = detector_pb2.MitigationPlan(id="p1", incident_id="i1", action=detector_pb2.MITIGATION_ACTION_ESCALATE)
    return incident, report, update, plan


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_an_incident_collects_its_report_graph_update_and_plan_in_any_arrival_order(order: tuple[int, ...]) -> None:
    store = ConsoleStore()
    messages = _messages()
    adders = (store.add_incident, store.add_report, store.add_kg_update, store.add_plan)
    for i in order:
        adders[i](messages[i])  # type: ignore[operator]
    view = store.incident("i1")
    assert view is not None
    assert [r.id for r in view.reports] == ["r1"] and [u.source_id for u in view.kg_updates] == ["r1"]
    assert [p.id for p in view.mitigations] == ["p1"]
    assert [e.kind for e in view.timeline()].count("rca-report") == 1


def test_a_resolved_incident_replaces_the_open_one_and_keeps_its_report() -> None:
    store = ConsoleStore()
    incident, report, _, _ = _messages()
    store.add_incident(incident)
    store.add_report(report)
    resolved = detector_pb2.Incident(id="i1", system="ob", status=detector_pb2.INCIDENT_STATUS_RESOLVED)
    store.add_incident(resolved)
    view = store.incident("i1")
    assert view is not None and view.incident.status == detector_pb2.INCIDENT_STATUS_RESOLVED and view.reports
    assert len(store.incident_list()) == 1


def test_the_store_keeps_only_the_most_recent_incidents() -> None:
    store = ConsoleStore(keep=3)
    for i in range(5):
        store.add_incident(detector_pb2.Incident(id=f"i{i}"))
    assert [v.incident.id for v in store.incident_list()] == ["i4", "i3", "i2"]


def test_the_evidence_graph_draws_one_box_per_agent_with_parents_above_children() -> None:
    report = rca_pb2.RcaReport(id="r")
    report.candidates.add(service="db")
    report.evidence.roots.append("a")
    report.evidence.nodes.add(span_id="a", service="web", children=["b"])
    report.evidence.nodes.add(span_id="b", service="api", children=["c"], is_abnormal=True)
    report.evidence.nodes.add(span_id="c", service="db", is_abnormal=True, symptoms=["self time 40x"])
    svg = evidence_svg(report)
    assert svg.count('class="agent"') == 3 and svg.count("<line") == 2
    depth = {
        s: float(re.search(rf'data-service="{s}".*?<rect x="[^"]+" y="([^"]+)"', svg).group(1))
        for s in ["web", "api", "db"]
    }  # type: ignore[union-attr]
    assert depth["web"] < depth["api"] < depth["db"]  # one level per depth, the root on top
    assert 'data-service="db" data-abnormal="true"' in svg and "self time 40x" in svg
    assert "no evidence graph" in evidence_svg(rca_pb2.RcaReport())
