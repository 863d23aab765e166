"""``faultline serve kg-builder``: AutoSchemaKG over RCA reports, confirmed failures and documents."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from pydantic import Field

from services.common import topics
from services.common.bus import Route
from services.common.grpc_server import GrpcService
from services.common.llm import LLMClient
from services.common.pb.faultline.v1 import detector_pb2, kg_pb2, kg_pb2_grpc, rca_pb2
from services.common.runtime import ServiceRuntime
from services.common.settings import GrpcSettings, ServiceSettings, load_settings
from services.common.text_encoder import shared_encoder
from services.kg_builder.service import KnowledgeGraph, KnowledgeGraphServicer
from services.kg_builder.store import KgStore

KG_SERVICE = kg_pb2.DESCRIPTOR.services_by_name["KnowledgeGraphService"].full_name


class KgBuilderSettings(ServiceSettings):
    grpc: GrpcSettings = GrpcSettings(port=50056)
    store_path: Path = Path(".run/kg-builder/kg.sqlite")
    export_root: Path = Path(".run/kg-builder/exports")  # gRPC Export writes only below this
    # Any OpenAI-compatible endpoint: the inference service (its replay backend in tests) or a vendor's.
    llm_base_url: str | None = None  # None: documents are refused (dead-lettered), records still flow
    llm_model: str = "replay"
    llm_api_key: str = "unused"
    llm_timeout_s: float = Field(60.0, gt=0)
    merge_threshold: float = Field(0.85, gt=0, le=1)  # cosine at which two concepts are one
    torch_threads: int = Field(1, ge=1)
    group_id: str = "kg-builder"
    rca_reports_topic: str = topics.RCA_REPORTS
    documents_topic: str = topics.DOCUMENTS
    # Expert-confirmed failures (FailureCase events); no platform topic carries them yet, so off by default.
    failure_cases_topic: str | None = None
    updates_topic: str = topics.KG_UPDATES


def build(settings: KgBuilderSettings) -> tuple[ServiceRuntime, KnowledgeGraph]:
    llm = None
    if settings.llm_base_url:
        llm = LLMClient(settings.llm_base_url, settings.llm_model, settings.llm_api_key, settings.llm_timeout_s)
    runtime = ServiceRuntime("kg-builder", settings)
    torch.set_num_threads(settings.torch_threads)
    kg = KnowledgeGraph(
        KgStore(settings.store_path),
        shared_encoder(),
        llm,
        runtime.publisher,
        settings.updates_topic,
        settings.merge_threshold,
    )
    servicer = KnowledgeGraphServicer(kg, settings.export_root)
    add = kg_pb2_grpc.add_KnowledgeGraphServiceServicer_to_server
    runtime.add_grpc_service(GrpcService(KG_SERVICE, lambda server: add(servicer, server)))
    routes = [
        Route(settings.rca_reports_topic, rca_pb2.RcaReport, kg.handle),
        Route(settings.documents_topic, kg_pb2.Document, kg.handle),
    ]
    if settings.failure_cases_topic:
        routes.append(Route(settings.failure_cases_topic, detector_pb2.FailureCase, kg.handle))
    # Records and documents in separate groups: a slow LLM never holds up RCA reports.
    runtime.add_consumer(f"{settings.group_id}-records", [r for r in routes if r.message_type is not kg_pb2.Document])
    runtime.add_consumer(f"{settings.group_id}-documents", [routes[1]])
    return runtime, kg


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faultline serve kg-builder")
    parser.add_argument("--grpc-port", type=int)
    parser.add_argument("--store", type=Path, help="SQLite file of the graph")
    parser.add_argument("--llm", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", help="model name at that endpoint")
    args = parser.parse_args(argv)
    overrides: dict[str, object] = {}
    if args.store:
        overrides["store_path"] = args.store
    if args.llm:
        overrides["llm_base_url"] = args.llm
    if args.model:
        overrides["llm_model"] = args.model
    settings = load_settings(KgBuilderSettings, grpc_port=args.grpc_port, **overrides)
    runtime, _kg = build(settings)
    runtime.run()
    return 0
