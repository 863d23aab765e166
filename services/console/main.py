"""``faultline serve console``: the web console over the platform's event topics (and kg-builder, inference)."""

from __future__ import annotations

import argparse
import uuid

import grpc
from pydantic import Field

from services.common.http import HttpServer
from services.common.pb.faultline.v1 import kg_pb2, kg_pb2_grpc
from services.common.runtime import ServiceRuntime
from services.common.settings import GrpcSettings, ServiceSettings, load_settings
from services.console.app import create_app
from services.console.inference_figures import InferenceFigures
from services.console.store import ConsoleStore


class ConsoleSettings(ServiceSettings):
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    grpc: GrpcSettings = GrpcSettings(port=50057)  # health and service info, like every Faultline process
    kg_address: str | None = None  # kg-builder's gRPC host:port, for the knowledge-graph pages
    inference_metrics_url: str | None = None  # e.g. http://127.0.0.1:9101/metrics
    keep: int = Field(1000, ge=1)  # incidents and alerts held in memory


def build(settings: ConsoleSettings) -> tuple[ServiceRuntime, ConsoleStore]:
    runtime = ServiceRuntime("console", settings)
    store = ConsoleStore(settings.keep)
    # A group of its own each start: the history is rebuilt from the topics' retention, not resumed.
    runtime.add_consumer(f"faultline-console-{uuid.uuid4().hex[:8]}", store.routes())
    neighbours = None
    if settings.kg_address:
        stub = kg_pb2_grpc.KnowledgeGraphServiceStub(grpc.insecure_channel(settings.kg_address))

        # One release, one token: with auth on, kg-builder wants the same bearer token the console checks.
        token = settings.grpc.auth_token
        metadata = [("authorization", f"Bearer {token.get_secret_value()}")] if token else None

        def neighbours(entity: str) -> kg_pb2.NeighboursResponse:
            return stub.Neighbours(kg_pb2.NeighboursRequest(entity=entity, limit=50), timeout=5, metadata=metadata)

    app = create_app(store, InferenceFigures(settings.inference_metrics_url), neighbours)
    http = HttpServer(app, settings.http_host, settings.http_port, token=settings.grpc.auth_token)
    runtime.add_lifecycle(http.start, http.stop)
    return runtime, store


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faultline serve console")
    parser.add_argument("--http-port", type=int)
    parser.add_argument("--kg", help="kg-builder gRPC address (host:port)")
    parser.add_argument("--inference-metrics", help="the inference service's Prometheus URL")
    args = parser.parse_args(argv)
    overrides: dict[str, object] = {}
    if args.http_port is not None:
        overrides["http_port"] = args.http_port
    if args.kg:
        overrides["kg_address"] = args.kg
    if args.inference_metrics:
        overrides["inference_metrics_url"] = args.inference_metrics
    runtime, _store = build(load_settings(ConsoleSettings, **overrides))
    runtime.run()
    return 0
