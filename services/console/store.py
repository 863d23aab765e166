"""What the console shows, assembled from the platform's event topics.

The console holds no state of its own: it reads faultline.states/incidents/alerts/mitigations/
rca-reports/kg-updates like any other consumer and keeps the recent history in memory, so a
restart rebuilds it from Kafka (a fresh consumer group reads from the start of retention).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf.message import Message

from services.common import topics
from services.common.bus import Route
from services.common.pb.faultline.v1 import detector_pb2, embedding_pb2, kg_pb2, rca_pb2


def _time(ts) -> datetime | None:  # type: ignore[no-untyped-def]
    return ts.ToDatetime(tzinfo=UTC) if ts.seconds or ts.nanos else None


@dataclass
class TimelineEntry:
    at: datetime | None
    kind: str  # "state", "incident", "rca-report", "kg-update", "mitigation"
    text: str


@dataclass
class IncidentView:
    incident: detector_pb2.Incident
    reports: list[rca_pb2.RcaReport] = field(default_factory=list)
    kg_updates: list[kg_pb2.KgUpdate] = field(default_factory=list)
    mitigations: list[detector_pb2.MitigationPlan] = field(default_factory=list)

    def timeline(self) -> list[TimelineEntry]:
        inc = self.incident
        out = [TimelineEntry(_time(inc.opened_at), "incident", f"opened: {inc.summary or inc.failure_type}")]
        if inc.status == detector_pb2.INCIDENT_STATUS_RESOLVED:
            out.append(TimelineEntry(_time(inc.resolved_at), "incident", "resolved"))
        for report in self.reports:
            top = report.candidates[0].service if report.candidates else "no candidate"
            out.append(TimelineEntry(_time(report.created_at), "rca-report", f"RCA report: {top} ranked first"))
        for update in self.kg_updates:
            text = f"knowledge graph: +{update.nodes_added} nodes, +{update.edges_added} edges"
            out.append(TimelineEntry(_time(update.created_at), "kg-update", text))
        for plan in self.mitigations:
            name = detector_pb2.MitigationAction.Name(plan.action)
            out.append(TimelineEntry(_time(plan.created_at), "mitigation", f"{name} {plan.target}"))
        return sorted(out, key=lambda e: e.at or datetime.min.replace(tzinfo=UTC))


class ConsoleStore:
    """Recent platform events, indexed the way the pages look them up. Thread-safe: the consumer writes,
    the web server reads."""

    def __init__(self, keep: int = 1000) -> None:
        self._lock = threading.Lock()
        self.incidents: OrderedDict[str, IncidentView] = OrderedDict()
        self.alerts: OrderedDict[str, detector_pb2.Alert] = OrderedDict()
        self.plans_by_alert: dict[str, list[detector_pb2.MitigationPlan]] = {}
        self.states: dict[str, deque[embedding_pb2.StateEmbedding]] = {}
        self.kg_updates: deque[kg_pb2.KgUpdate] = deque(maxlen=keep)
        self._orphans: dict[str, list[Message]] = {}  # reports/plans that arrived before their incident
        self.keep = keep

    def routes(self) -> list[Route]:
        """One route per topic shown; each hands its decoded message to the matching ``add_*``."""
        adders = (
            (topics.STATES, embedding_pb2.StateEmbedding, self.add_state),
            (topics.INCIDENTS, detector_pb2.Incident, self.add_incident),
            (topics.ALERTS, detector_pb2.Alert, self.add_alert),
            (topics.MITIGATIONS, detector_pb2.MitigationPlan, self.add_plan),
            (topics.RCA_REPORTS, rca_pb2.RcaReport, self.add_report),
            (topics.KG_UPDATES, kg_pb2.KgUpdate, self.add_kg_update),
        )
        return [Route(topic, kind, lambda d, add=add: add(d.message)) for topic, kind, add in adders]

    def _trim(self, table: OrderedDict) -> None:  # type: ignore[type-arg]
        while len(table) > self.keep:
            table.popitem(last=False)

    def add_state(self, state: embedding_pb2.StateEmbedding) -> None:
        with self._lock:
            self.states.setdefault(state.system, deque(maxlen=self.keep)).append(state)

    def add_incident(self, incident: detector_pb2.Incident) -> None:
        with self._lock:
            view = self.incidents.get(incident.id)
            if view is None:  # the first event of an incident; later ones (resolved) replace the message
                view = self.incidents[incident.id] = IncidentView(incident)
                for orphan in self._orphans.pop(incident.id, []):
                    self._attach(view, orphan)
            view.incident = incident
            self._trim(self.incidents)

    def add_report(self, report: rca_pb2.RcaReport) -> None:
        with self._lock:
            self._attach_or_hold(report.incident_id, report)

    def add_plan(self, plan: detector_pb2.MitigationPlan) -> None:
        with self._lock:
            if plan.alert_id:
                self.plans_by_alert.setdefault(plan.alert_id, []).append(plan)
            if plan.incident_id:
                self._attach_or_hold(plan.incident_id, plan)

    def add_alert(self, alert: detector_pb2.Alert) -> None:
        with self._lock:
            self.alerts[alert.id] = alert
            self._trim(self.alerts)

    def add_kg_update(self, update: kg_pb2.KgUpdate) -> None:
        with self._lock:
            self.kg_updates.append(update)
            for view in self.incidents.values():  # a report's update belongs to the report's incident
                if any(r.id == update.source_id for r in view.reports):
                    view.kg_updates.append(update)

    def _attach_or_hold(self, incident_id: str, message: Message) -> None:
        view = self.incidents.get(incident_id)
        if view is None:
            self._orphans.setdefault(incident_id, []).append(message)
        else:
            self._attach(view, message)

    def _attach(self, view: IncidentView, message: Message) -> None:
        if isinstance(message, rca_pb2.RcaReport):
            view.reports.append(message)
            # Topics are read in no fixed order: the graph may have recorded the report before we saw it.
            view.kg_updates += [u for u in self.kg_updates if u.source_id == message.id]
        else:
            view.mitigations.append(message)  # type: ignore[arg-type]

    # -- reads -------------------------------------------------------------------------------------

    def incident(self, incident_id: str) -> IncidentView | None:
        with self._lock:
            return self.incidents.get(incident_id)

    def incident_list(self) -> list[IncidentView]:
        with self._lock:
            return list(reversed(self.incidents.values()))

    def alert_list(self) -> list[tuple[detector_pb2.Alert, list[detector_pb2.MitigationPlan]]]:
        with self._lock:
            return [(a, list(self.plans_by_alert.get(a.id, []))) for a in reversed(self.alerts.values())]

    def latest_states(self) -> dict[str, embedding_pb2.StateEmbedding]:
        with self._lock:
            return {system: states[-1] for system, states in self.states.items() if states}
