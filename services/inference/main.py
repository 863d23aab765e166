"""``faultline serve inference --model DIR``: the engine behind KServe v2 gRPC and OpenAI-compatible HTTP."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

from pydantic import Field

from services.common.http import HttpServer
from services.common.runtime import ServiceRuntime
from services.common.settings import GrpcSettings, ServiceSettings, load_settings
from services.inference.attention.chelsea import OUTLIERS_FILE as CHELSEA_OUTLIERS
from services.inference.attention.hata import WEIGHTS_FILE as HATA_WEIGHTS
from services.inference.engine import Engine, EngineSettings
from services.inference.kserve import KServeServicer, kserve_service
from services.inference.openai_http import create_app
from services.inference.replay import ReplayEngine
from services.inference.tokenizer import Tokenizer
from services.inference.weights import load_model


class InferenceSettings(ServiceSettings):
    model_path: Path | None = None
    # Serve recorded LLM answers instead of a model (tests and demos of the LLM-using services).
    replay_path: Path | None = None
    record_from: str | None = None  # on a replay miss, ask this OpenAI-compatible endpoint and record it
    model_name: str | None = None  # defaults to the checkpoint directory's name
    dtype: Literal["float32", "bfloat16", "float16"] | None = None  # defaults to the checkpoint's
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    grpc: GrpcSettings = GrpcSettings(port=8001)  # Triton's ports: 8000 HTTP, 8001 gRPC
    max_batch_size: int = Field(8, ge=1)
    max_context: int = Field(65_536, ge=16)
    prefill_chunk: int = Field(2048, ge=1)
    attention_backend: str = "dense"
    default_max_tokens: int = Field(256, ge=1)


def saved_backend_options(model_path: Path) -> dict[str, dict[str, object]]:
    """What backends trained or calibrated for this checkpoint left beside it."""
    options: dict[str, dict[str, object]] = {}
    if (model_path / HATA_WEIGHTS).is_file():
        options["hata"] = {"weights": str(model_path / HATA_WEIGHTS)}
    if (model_path / CHELSEA_OUTLIERS).is_file():
        options["chelsea"] = {"outliers": str(model_path / CHELSEA_OUTLIERS)}
    return options


def build(settings: InferenceSettings) -> tuple[ServiceRuntime, Engine | ReplayEngine]:
    engine: Engine | ReplayEngine
    if settings.replay_path is not None:
        engine, name = ReplayEngine(settings.replay_path, settings.record_from), settings.model_name or "replay"
        return _serve(settings, engine, name), engine
    if settings.model_path is None:
        raise SystemExit("no model: pass --model DIR (or --replay FILE) or set FAULTLINE_MODEL_PATH")
    model = load_model(settings.model_path, dtype=settings.dtype)
    tokenizer = Tokenizer(settings.model_path)
    name = settings.model_name or settings.model_path.resolve().name
    engine = Engine(
        model,
        tokenizer,
        EngineSettings(
            max_batch_size=settings.max_batch_size,
            max_context=min(settings.max_context, model.config.max_position_embeddings),
            prefill_chunk=settings.prefill_chunk,
            attention_backend=settings.attention_backend,
            backend_options=saved_backend_options(settings.model_path),
        ),
    )
    return _serve(settings, engine, name), engine


def _serve(settings: InferenceSettings, engine: Engine | ReplayEngine, name: str) -> ServiceRuntime:
    runtime = ServiceRuntime("inference", settings)
    runtime.add_grpc_service(kserve_service(KServeServicer(engine, name)))
    runtime.add_lifecycle(engine.start, engine.stop)
    app = create_app(engine, name, settings.default_max_tokens)
    http = HttpServer(app, settings.http_host, settings.http_port, token=settings.grpc.auth_token)
    runtime.add_lifecycle(http.start, http.stop)
    return runtime


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faultline serve inference")
    parser.add_argument("--model", type=Path, help="checkpoint directory (config.json, *.safetensors, tokenizer.json)")
    parser.add_argument("--replay", type=Path, help="serve recorded completions (JSONL) instead of a model")
    parser.add_argument("--record-from", help="with --replay: record misses from this OpenAI-compatible URL")
    parser.add_argument("--name", help="model name clients use (default: the directory name, or 'replay')")
    parser.add_argument("--grpc-port", type=int)
    parser.add_argument("--http-port", type=int)
    parser.add_argument("--attention", help="default attention backend (dense, ...)")
    args = parser.parse_args(argv)
    overrides: dict[str, object] = {}
    if args.model:
        overrides["model_path"] = args.model
    if args.replay:
        overrides["replay_path"] = args.replay
    if args.record_from:
        overrides["record_from"] = args.record_from
    if args.name:
        overrides["model_name"] = args.name
    if args.http_port is not None:
        overrides["http_port"] = args.http_port
    if args.attention:
        overrides["attention_backend"] = args.attention
    settings = load_settings(InferenceSettings, grpc_port=args.grpc_port, **overrides)
    runtime, _engine = build(settings)
    runtime.run()
    return 0
