"""``faultline serve rca`` (the service) and ``faultline rca --case DIR`` (one offline analysis)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from google.protobuf.json_format import MessageToDict
from pydantic import Field

from services.common import topics
from services.common.bus import Route
from services.common.grpc_server import GrpcService
from services.common.pb.faultline.v1 import detector_pb2, rca_pb2, rca_pb2_grpc
from services.common.runtime import ServiceRuntime
from services.common.settings import GrpcSettings, ServiceSettings, load_settings
from services.rca.agents import EvidenceReasoner, LlmReasoner, Reasoner
from services.rca.analysis import AnalysisOptions, analyze
from services.rca.service import RcaApp, RcaServicer
from services.rca.telemetry import Telemetry, load_case, load_kafka

RCA_SERVICE = rca_pb2.DESCRIPTOR.services_by_name["RcaService"].full_name


class RcaSettings(ServiceSettings):
    grpc: GrpcSettings = GrpcSettings(port=50055)
    group_id: str = "rca"
    incidents_topic: str = topics.INCIDENTS
    reports_topic: str = topics.RCA_REPORTS
    baseline_s: float = Field(600.0, gt=0)  # normal behaviour read back before the incident's window
    max_traces: int = Field(20, ge=1)
    max_agents_parallel: int = Field(8, ge=1)
    agent_deadline_s: float = Field(30.0, gt=0)
    case_deadline_s: float = Field(120.0, gt=0)
    # Any OpenAI-compatible endpoint (the inference service's HTTP front end, or a replay server).
    llm_base_url: str | None = None
    llm_model: str = "faultline"
    llm_api_key: str = "unused"  # the endpoint's bearer token (this release's inference: its auth token)
    llm_timeout_s: float = Field(30.0, gt=0)
    llm_retries: int = Field(2, ge=0)


def reasoners(settings: RcaSettings) -> dict[str, object]:
    out: dict[str, object] = {"evidence": EvidenceReasoner}
    if settings.llm_base_url:
        out["llm"] = lambda: LlmReasoner(
            settings.llm_base_url or "",
            settings.llm_model,
            api_key=settings.llm_api_key,
            timeout_s=settings.llm_timeout_s,
            retries=settings.llm_retries,
        )
    return out


def options(settings: RcaSettings) -> AnalysisOptions:
    return AnalysisOptions(
        max_traces=settings.max_traces,
        max_workers=settings.max_agents_parallel,
        agent_deadline_s=settings.agent_deadline_s,
        case_deadline_s=settings.case_deadline_s,
    )


def build(settings: RcaSettings) -> tuple[ServiceRuntime, RcaApp]:
    runtime = ServiceRuntime("rca", settings)

    def loader(system: str, start_s: float, end_s: float) -> Telemetry:
        return load_kafka(settings.kafka, system, start_s, end_s, baseline_s=settings.baseline_s)

    app = RcaApp(loader, reasoners(settings), runtime.publisher, settings.reports_topic, options(settings))  # type: ignore[arg-type]
    runtime.add_grpc_service(
        GrpcService(RCA_SERVICE, lambda server: rca_pb2_grpc.add_RcaServiceServicer_to_server(RcaServicer(app), server))
    )
    runtime.add_consumer(
        settings.group_id, [Route(settings.incidents_topic, detector_pb2.Incident, app.handle_incident)]
    )
    return runtime, app


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faultline serve rca")
    parser.add_argument("--grpc-port", type=int)
    args = parser.parse_args(argv)
    settings = load_settings(RcaSettings, grpc_port=args.grpc_port)
    runtime, _app = build(settings)
    runtime.run()
    return 0


def analyze_case(argv: list[str]) -> int:
    """``faultline rca --case DIR``: one case directory (RCAEval or AIOps 2022 layout), report as JSON."""
    parser = argparse.ArgumentParser(prog="faultline rca")
    parser.add_argument("--case", type=Path, required=True)
    parser.add_argument("--mode", choices=("evidence", "llm"), default="evidence")
    parser.add_argument("--evidence-graph", action="store_true", help="include every agent's verdict")
    args = parser.parse_args(argv)
    settings = load_settings(RcaSettings)
    reasoner: Reasoner
    if args.mode == "llm":
        if not settings.llm_base_url:
            raise SystemExit("--mode llm needs FAULTLINE_LLM_BASE_URL (an OpenAI-compatible endpoint)")
        reasoner = LlmReasoner(
            settings.llm_base_url, settings.llm_model, api_key=settings.llm_api_key, timeout_s=settings.llm_timeout_s
        )
    else:
        reasoner = EvidenceReasoner()
    report = analyze(load_case(args.case), reasoner, options(settings)).report
    if not args.evidence_graph:
        report.ClearField("evidence")
    print(json.dumps(MessageToDict(report, preserving_proto_field_name=True), indent=2))
    return 0
