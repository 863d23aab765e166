"""``faultline serve detector``: EAGER on otlp_spans, incidents from faultline.states.v1, the DetectorService API."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import Field

from services.common import topics
from services.common.bus import Route
from services.common.grpc_server import GrpcService
from services.common.pb.faultline.v1 import detector_pb2, detector_pb2_grpc, embedding_pb2
from services.common.runtime import ServiceRuntime
from services.common.settings import GrpcSettings, ServiceSettings, load_settings
from services.detector.detection import MAX_RUNS, Detector
from services.detector.encoder import CHECKPOINT, Backbone, load_encoder
from services.detector.incidents import IncidentPolicy, IncidentTracker
from services.detector.knowledge_base import EncoderMismatch, KnowledgeBase
from services.detector.mitigation import KubernetesActuator
from services.detector.runs import RunStore
from services.detector.service import DetectorApp, DetectorServicer, Topics
from services.detector.train import CALIBRATION_FILE, KB_FILE, load_thresholds

log = logging.getLogger(__name__)
DETECTOR_SERVICE = detector_pb2.DESCRIPTOR.services_by_name["DetectorService"].full_name


class DetectorSettings(ServiceSettings):
    grpc: GrpcSettings = GrpcSettings(port=50054)
    checkpoint: Path = CHECKPOINT
    data_dir: Path = Path(".run/detector")  # the live knowledge base, incidents, open runs, the mitigation audit log
    kb_path: Path | None = None  # default: data_dir/kb.sqlite, first copied from the checkpoint's seed
    backbone_cache: Path | None = None  # persisted text-embedding cache; None keeps it in memory
    torch_threads: int = Field(2, ge=1)
    group_id: str = "detector"
    spans_topic: str = topics.OTLP_SPANS
    states_topic: str = topics.STATES
    alerts_topic: str = topics.ALERTS
    incidents_topic: str = topics.INCIDENTS
    mitigations_topic: str = topics.MITIGATIONS
    incident_threshold: float = Field(0.5, ge=0, le=1)
    incident_open_after: int = Field(2, ge=1)  # consecutive anomalous windows
    incident_resolve_after: int = Field(3, ge=1)  # consecutive normal windows
    kubernetes_enabled: bool = False  # infrastructure actions are dry-run unless this is set
    kubernetes_namespace: str = "default"


def open_knowledge_base(path: Path, seed: Path, encoder_version: str) -> KnowledgeBase:
    """The live knowledge base at ``path``, first copied from the checkpoint's ``seed``.

    One built with another encoder (the chart was upgraded to a new checkpoint) cannot be searched with this
    one: its vectors live in another space and the cases keep no step text to embed again. It is kept aside
    as ``kb.<its encoder>.sqlite`` and the new seed takes its place; cases experts added to it must be confirmed
    again.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(seed, path)
    try:
        return KnowledgeBase(path, encoder_version=encoder_version)
    except EncoderMismatch as mismatch:
        kept = path.with_name(f"{path.stem}.{mismatch.stored}{path.suffix}")
        path.replace(kept)
        log.warning("%s; kept it as %s and started from the checkpoint's seed", mismatch, kept)
        shutil.copyfile(seed, path)
        return KnowledgeBase(path, encoder_version=encoder_version)


def build(settings: DetectorSettings) -> tuple[ServiceRuntime, DetectorApp]:
    encoder = load_encoder(settings.checkpoint)
    kb_path = settings.kb_path or settings.data_dir / KB_FILE
    kb = open_knowledge_base(kb_path, settings.checkpoint / KB_FILE, encoder.version)
    detector = Detector(
        encoder,
        Backbone(settings.backbone_cache, threads=settings.torch_threads),
        kb,
        load_thresholds(settings.checkpoint / CALIBRATION_FILE),
        RunStore(settings.data_dir / "runs.sqlite", keep=MAX_RUNS),  # open agent runs survive a restart
    )
    tracker = IncidentTracker(
        IncidentPolicy(settings.incident_threshold, settings.incident_open_after, settings.incident_resolve_after),
        settings.data_dir / "incidents.sqlite",  # survives a restart: no second incident for one fault
    )
    actuator = KubernetesActuator(settings.kubernetes_enabled, settings.data_dir / "mitigation-audit.jsonl")
    runtime = ServiceRuntime("detector", settings)
    app = DetectorApp(
        detector,
        tracker,
        actuator,
        runtime.publisher,
        Topics(settings.alerts_topic, settings.incidents_topic, settings.mitigations_topic),
        settings.kubernetes_namespace,
    )
    runtime.add_grpc_service(
        GrpcService(
            DETECTOR_SERVICE,
            lambda server: detector_pb2_grpc.add_DetectorServiceServicer_to_server(DetectorServicer(app), server),
        )
    )
    # Separate groups: a burst of spans never delays incidents, and each topic commits on its own.
    runtime.add_consumer(
        f"{settings.group_id}-spans",
        [Route(settings.spans_topic, ExportTraceServiceRequest, app.handle_spans, cloudevents=False)],
    )
    runtime.add_consumer(
        f"{settings.group_id}-states", [Route(settings.states_topic, embedding_pb2.StateEmbedding, app.handle_state)]
    )
    return runtime, app


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faultline serve detector")
    parser.add_argument("--grpc-port", type=int)
    parser.add_argument("--checkpoint", type=Path, help="EAGER checkpoint directory (faultline train eager)")
    parser.add_argument("--kb", type=Path, help="knowledge base (SQLite); created from the checkpoint's seed")
    parser.add_argument("--enable-kubernetes", action="store_true", help="execute infrastructure actions")
    args = parser.parse_args(argv)
    overrides: dict[str, object] = {}
    if args.checkpoint:
        overrides["checkpoint"] = args.checkpoint
    if args.kb:
        overrides["kb_path"] = args.kb
    if args.enable_kubernetes:
        overrides["kubernetes_enabled"] = True
    settings = load_settings(DetectorSettings, grpc_port=args.grpc_port, **overrides)
    runtime, _app = build(settings)
    runtime.run()
    return 0
