"""The rca service: incidents in (faultline.incidents.v1), RcaReports out (faultline.rca-reports.v1), gRPC API."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc

from services.common.bus import Delivery, PermanentError, Publisher
from services.common.pb.faultline.v1 import detector_pb2, rca_pb2, rca_pb2_grpc
from services.rca.agents import Reasoner
from services.rca.analysis import AnalysisOptions, analyze
from services.rca.telemetry import Telemetry, TelemetryError

WindowLoader = Callable[[str, float, float], Telemetry]  # (system, start s, end s) -> telemetry


@dataclass
class RcaApp:
    loader: WindowLoader
    reasoners: dict[str, Callable[[], Reasoner]]  # mode -> a fresh reasoner (its usage counts one analysis)
    publisher: Publisher | None
    reports_topic: str
    options: AnalysisOptions = field(default_factory=AnalysisOptions)
    keep_reports: int = 500

    def __post_init__(self) -> None:
        self._reports: OrderedDict[str, rca_pb2.RcaReport] = OrderedDict()
        self._by_incident: dict[str, str] = {}
        self._lock = threading.Lock()

    def analyze(
        self,
        system: str,
        start_s: float,
        end_s: float,
        mode: str = "evidence",
        trace_ids: list[str] | None = None,
        incident_id: str = "",
        on_result: Callable[[rca_pb2.AgentVerdict, int, int], None] | None = None,
        report_id: str = "",
    ) -> rca_pb2.RcaReport:
        """One analysis, remembered and published; ``report_id`` (default: a new one) is also its event id."""
        if mode not in self.reasoners:
            raise ValueError(f"mode {mode!r} is not available; available: {', '.join(sorted(self.reasoners))}")
        if end_s <= start_s:
            raise ValueError("the window's end must be after its start")
        telemetry = self.loader(system, start_s, end_s)
        report = analyze(
            telemetry,
            self.reasoners[mode](),
            self.options,
            trace_ids=trace_ids or None,
            incident_id=incident_id,
            on_result=(lambda _r, verdict, done, total: on_result(verdict, done, total)) if on_result else None,
        ).report
        if report_id:
            report.id = report_id
        self._remember(report)
        if self.publisher is not None:
            self.publisher.publish(
                self.reports_topic,
                report,
                key=system,
                subject=incident_id or report.id,
                event_id=report_id or None,
                wait=True,
            )
        return report

    def _remember(self, report: rca_pb2.RcaReport) -> None:
        with self._lock:
            self._reports[report.id] = report
            if report.incident_id:
                self._by_incident[report.incident_id] = report.id
            while len(self._reports) > self.keep_reports:
                self._reports.popitem(last=False)

    def report(self, key: str) -> rca_pb2.RcaReport | None:
        with self._lock:
            return self._reports.get(key) or self._reports.get(self._by_incident.get(key, ""))

    def handle_incident(self, delivery: Delivery) -> None:
        incident = delivery.message
        assert isinstance(incident, detector_pb2.Incident)
        if incident.status == detector_pb2.INCIDENT_STATUS_RESOLVED:
            return  # the report was made when it opened
        start, end = _window(incident)
        if end <= start:
            raise PermanentError(f"incident {incident.id} has an empty window")
        try:
            # The incident's report has an id derived from the incident's: if a crash makes the service take
            # the incident again after the report went out, the second one is the same report (and event).
            self.analyze(incident.system, start, end, incident_id=incident.id, report_id=report_id(incident.id))
        except TelemetryError as error:
            raise PermanentError(str(error)) from error


def report_id(incident_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"faultline:rca-report/{incident_id}"))


def _window(incident: detector_pb2.Incident) -> tuple[float, float]:
    start = incident.window.start.ToNanoseconds() / 1e9 if incident.HasField("window") else 0.0
    end = incident.window.end.ToNanoseconds() / 1e9 if incident.HasField("window") else 0.0
    if not start and incident.HasField("opened_at"):
        start = incident.opened_at.ToNanoseconds() / 1e9
    return start, end


class RcaServicer(rca_pb2_grpc.RcaServiceServicer):
    def __init__(self, app: RcaApp) -> None:
        self.app = app

    def Analyze(
        self, request: rca_pb2.AnalyzeRequest, context: grpc.ServicerContext
    ) -> Iterator[rca_pb2.AnalyzeProgress]:
        target = request.WhichOneof("target")
        if target == "incident":
            system, incident_id, trace_ids = request.incident.system, request.incident.id, []
            start, end = _window(request.incident)
        elif target == "window":
            system, incident_id = request.window.system, ""
            trace_ids = list(request.window.trace_ids)
            start = request.window.window.start.ToNanoseconds() / 1e9
            end = request.window.window.end.ToNanoseconds() / 1e9
        else:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give an incident or an explicit window")
            return
        mode = request.mode or "evidence"
        problem = (
            "the window needs a start and an end after it"
            if not start or end <= start
            else (f"unknown mode {mode!r}" if mode not in self.app.reasoners else "")
        )
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
            return
        # The analysis runs in its own thread; its agents' verdicts stream out as they finish.
        updates: list[rca_pb2.AnalyzeProgress] = []
        ready = threading.Condition()
        outcome: dict[str, object] = {}

        def progress(verdict: rca_pb2.AgentVerdict, done: int, total: int) -> None:
            with ready:
                updates.append(rca_pb2.AnalyzeProgress(agents_finished=done, agents_total=total, latest=verdict))
                ready.notify()

        def work() -> None:
            try:
                outcome["report"] = self.app.analyze(system, start, end, mode, trace_ids, incident_id, progress)
            except Exception as error:
                outcome["error"] = error
            with ready:
                outcome["done"] = True
                ready.notify()

        threading.Thread(target=work, name="rca-analyze", daemon=True).start()
        while True:
            with ready:
                while not updates and "done" not in outcome:
                    ready.wait(timeout=1.0)
                batch, updates[:] = list(updates), []
                finished = "done" in outcome
            yield from batch
            if finished:
                break
        error = outcome.get("error")
        if isinstance(error, TelemetryError | ValueError):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        elif error is not None:
            context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
        report = outcome["report"]
        assert isinstance(report, rca_pb2.RcaReport)
        yield rca_pb2.AnalyzeProgress(
            agents_finished=report.timings.agents, agents_total=report.timings.agents, report=report
        )

    def GetReport(self, request: rca_pb2.GetReportRequest, context: grpc.ServicerContext) -> rca_pb2.RcaReport:
        if not request.id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "id is required")
        report = self.app.report(request.id)
        if report is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no report {request.id!r}")
        return report
