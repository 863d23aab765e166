"""gRPC load on the inference service: concurrent KServe v2 streams (tritonclient.grpc.aio) at
1, 2, 4, … clients, each sending requests back to back; tokens/s, time to first token and request
latency percentiles per level, and the knee where more streams stop adding throughput.

The service runs in this process on loopback with the project's retrieval checkpoint (a real model,
small enough for this CPU); the clients are the real tritonclient.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient

from deploy.kafka.broker import free_port
from loadtests.load import knee, knee_plot
from services.common.settings import GrpcSettings
from services.inference.main import InferenceSettings, build
from services.inference.tokenizer import Tokenizer
from services.inference.training.retrieval_task import retrieval_prompt

CHECKPOINT = Path(__file__).resolve().parents[2] / "services" / "inference" / "checkpoints" / "retrieval-lm"
LEVELS = [int(x) for x in os.environ.get("FAULTLINE_LOAD_STREAMS", "1,2,4,8,16").split(",")]
SECONDS = float(os.environ.get("FAULTLINE_LOAD_SECONDS", "8"))  # per level
PROMPT_TOKENS, NEW_TOKENS = 512, 32
COMMAND = "make loadtest LOAD=inference  (or: faultline loadtest inference)"


def _inputs(prompt: str) -> list[grpcclient.InferInput]:
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    sampling = grpcclient.InferInput("sampling_parameters", [1], "BYTES")
    sampling.set_data_from_numpy(
        np.array([f'{{"max_tokens": {NEW_TOKENS}, "temperature": 0, "ignore_eos": true}}'.encode()], dtype=np.object_)
    )
    stream = grpcclient.InferInput("stream", [1], "BOOL")
    stream.set_data_from_numpy(np.array([True], dtype=bool))
    return [text, sampling, stream]


async def _client(address: str, model: str, prompt: str, until: float, samples: list[tuple[float, float, int]]) -> None:
    """One stream: requests back to back until ``until``; (time to first token, latency, tokens) each."""
    client = aiogrpcclient.InferenceServerClient(address)
    try:
        while time.perf_counter() < until:
            start, first, tokens = time.perf_counter(), None, 0

            async def requests():  # type: ignore[no-untyped-def]
                yield {"model_name": model, "inputs": _inputs(prompt), "request_id": uuid.uuid4().hex}

            async for result, error in client.stream_infer(requests()):
                if error is not None:
                    raise RuntimeError(f"inference failed under load: {error}")
                if first is None:
                    first = time.perf_counter()
                tokens += 1
                if result.get_response().parameters["triton_final_response"].bool_param:
                    break
            samples.append((first - start if first else 0.0, time.perf_counter() - start, tokens))
    finally:
        await client.close()


def _level(address: str, model: str, prompt: str, streams: int) -> dict[str, float]:
    samples: list[tuple[float, float, int]] = []
    start = time.perf_counter()

    async def run() -> None:
        until = time.perf_counter() + SECONDS
        await asyncio.gather(*(_client(address, model, prompt, until, samples) for _ in range(streams)))

    asyncio.run(run())
    elapsed = time.perf_counter() - start
    ttft = sorted(s[0] for s in samples)
    latency = sorted(s[1] for s in samples)
    return {
        "streams": streams,
        "requests": len(samples),
        "requests_per_s": len(samples) / elapsed,
        "tokens_per_s": NEW_TOKENS * len(samples) / elapsed,
        "ttft_p50_ms": statistics.median(ttft) * 1e3,
        "ttft_p95_ms": ttft[int(0.95 * (len(ttft) - 1))] * 1e3,
        "latency_p50_ms": statistics.median(latency) * 1e3,
        "latency_p95_ms": latency[int(0.95 * (len(latency) - 1))] * 1e3,
    }


def run() -> dict:
    http_port = free_port()
    settings = InferenceSettings(
        model_path=CHECKPOINT,
        metrics_port=0,
        heartbeat_s=0,
        http_port=http_port,
        max_batch_size=max(LEVELS),
        grpc=GrpcSettings(port=0, shutdown_grace_s=0.5),
    )
    runtime, _engine = build(settings)
    address, model = f"127.0.0.1:{runtime.start()}", CHECKPOINT.name
    # A retrieval prompt as the checkpoint was trained on (keys, values, filler; the needle's key last).
    tokens = retrieval_prompt(np.random.default_rng(0), PROMPT_TOKENS, pairs=64).tokens
    prompt = Tokenizer(CHECKPOINT).decode(tokens[1:])  # the tokenizer adds <bos> itself
    try:
        _level(address, model, prompt, 1)  # warm-up: first-call costs are not load
        rows = []
        for streams in LEVELS:
            row = _level(address, model, prompt, streams)
            rows.append(row)
            print(
                f"  {streams:>3} streams: {row['tokens_per_s']:7.1f} tok/s, {row['requests_per_s']:5.2f} req/s | "
                f"TTFT p50 {row['ttft_p50_ms']:6.1f} p95 {row['ttft_p95_ms']:6.1f} ms | "
                f"latency p50 {row['latency_p50_ms']:6.1f} p95 {row['latency_p95_ms']:6.1f} ms",
                flush=True,
            )
    finally:
        runtime.stop()
    level_knee = knee([r["streams"] for r in rows], [r["tokens_per_s"] for r in rows])
    print(f"  knee: {level_knee:g} concurrent streams (beyond it throughput grows < 10% per step)")
    plot = _plot(rows)
    print(f"  plot: {plot}\n  command: {COMMAND}")
    return {
        "command": COMMAND,
        "model": model,
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": NEW_TOKENS,
        "levels": rows,
        "knee_streams": level_knee,
    }


def _plot(rows: list[dict[str, float]]) -> Path:
    return knee_plot(
        [r["streams"] for r in rows],
        [r["tokens_per_s"] for r in rows],
        [(r["streams"], r["ttft_p95_ms"]) for r in rows],
        ("concurrent gRPC streams", "tokens/s", "TTFT p95 (ms)"),
        "inference under gRPC load (retrieval-lm, CPU)",
        "inference",
    )
