"""``faultline demo`` (what ``make run`` ends with): the platform brought up and shown working.

It checks the broker and the topic catalogue, sends an event through the bus, starts all five
services as their own processes (:mod:`services.demo_services`), asks the inference service
through tritonclient and the openai client, and then shows the closed loop on simulated
telemetry and agent runs (:mod:`services.demo_loop`), ending with a summary (also .run/summary.json).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

from kafka.admin import KafkaAdminClient

from services.common.bus import Delivery, EventConsumer, Publisher, Route
from services.common.pb.faultline.v1 import platform_pb2
from services.common.settings import ServiceSettings, load_settings
from services.common.topics import HEARTBEATS, with_dead_letters
from services.demo_loop import print_summary, run_loop
from services.demo_services import platform, running


def _step(text: str) -> None:
    print(f"\n▶ {text}", flush=True)


def check_topics(settings: ServiceSettings) -> None:
    _step(f"Kafka at {settings.kafka.bootstrap_servers}: topic catalogue")
    admin = KafkaAdminClient(**settings.kafka.client_config())
    try:
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics()}
    finally:
        admin.close()
    for spec in with_dead_letters():
        state = f"{described[spec.name]} partition(s)" if spec.name in described else "MISSING"
        print(f"  {spec.name:<34} {state}")
    missing = [s.name for s in with_dead_letters() if s.name not in described]
    if missing:
        raise SystemExit(f"missing topics: {missing} (run: faultline topics)")


def check_bus(settings: ServiceSettings) -> None:
    _step("bus round trip: a Heartbeat CloudEvent out and back")
    publisher = Publisher(settings.kafka, source="faultline/demo")
    received: list[Delivery] = []
    consumer = EventConsumer(
        settings.kafka.model_copy(update={"auto_offset_reset": "latest"}),
        f"demo-{time.time_ns()}",
        [Route(HEARTBEATS, platform_pb2.Heartbeat, received.append)],
        publisher,
    )
    stop = threading.Event()
    deadline = time.monotonic() + 30
    while not consumer._consumer.assignment() and time.monotonic() < deadline:
        consumer.poll_once(stop)
    # "latest" is looked up lazily; looked up after the heartbeat is sent, it would skip it (a fresh broker is
    # slow enough for that to happen)
    for partition in consumer._consumer.assignment():
        consumer._consumer.position(partition)
    beat = platform_pb2.Heartbeat(service=platform_pb2.ServiceInfo(name="demo"))
    beat.time.GetCurrentTime()
    sent_at = time.perf_counter()
    event = publisher.publish(HEARTBEATS, beat, key="demo", wait=True)
    while not any(d.event and d.event.id == event.id for d in received) and time.monotonic() < deadline:
        consumer.poll_once(stop)
    elapsed = (time.perf_counter() - sent_at) * 1000
    consumer.close()
    publisher.close()
    if not any(d.event and d.event.id == event.id for d in received):
        raise SystemExit("the event did not come back within 30 s")
    print(f"  event {event.id} ({event.type}) came back in {elapsed:.0f} ms")


RETRIEVAL_MODEL = Path(__file__).resolve().parent / "inference" / "checkpoints" / "retrieval-lm"


def inference_model(run_dir: Path) -> Path:
    """The trained retrieval checkpoint, or a tiny random one where it is missing (answers are then noise)."""
    if (RETRIEVAL_MODEL / "model.safetensors").is_file():
        return RETRIEVAL_MODEL
    from services.inference.shapes import make_random_checkpoint

    return make_random_checkpoint("tiny", run_dir / "tiny-random")


def check_inference(model: Path) -> None:
    import numpy as np
    import openai
    import tritonclient.grpc as grpcclient

    _step(f"inference service: {model.name}, KServe v2 gRPC on :8001, OpenAI HTTP on :8000")
    client = grpcclient.InferenceServerClient("127.0.0.1:8001")
    prompt, answer = _retrieval_prompt() if model == RETRIEVAL_MODEL else ("root cause: cpu hog on", None)
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    started = time.perf_counter()
    result = client.infer(model.name, [text])
    print(
        f"  tritonclient ModelInfer: {result.as_numpy('num_input_tokens')[0]} prompt tokens -> "
        f"{result.as_numpy('text_output')[0].decode()[len(prompt) :][:40]!r} "
        f"({(time.perf_counter() - started) * 1e3:.0f} ms)" + (f"; expected {answer!r}" if answer else "")
    )
    http = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    for attention in ({"backend": "dense"}, {"backend": "topk_certified", "tv_budget": 0.01}):
        completion = http.completions.create(
            model=model.name, prompt=prompt, max_tokens=1, temperature=0, extra_body={"attention": attention}
        )
        measured = (completion.model_extra or {}).get("faultline", {}).get("attention", {})
        print(
            f"  openai completions, attention={attention['backend']}: {completion.choices[0].text!r}"
            + (f", certified TV distance ≤ {measured['tv_max']:.4f}" if measured else "")
        )


def _retrieval_prompt() -> tuple[str, str]:
    from services.inference.training.retrieval_task import VOCAB, retrieval_prompts

    prompt = next(retrieval_prompts(4096, 1, seed=7))
    return prompt.text(), VOCAB.decode([prompt.answer])


def main() -> int:
    settings = load_settings(ServiceSettings)
    started, load = time.monotonic(), os.getloadavg()[0]
    run_dir, state_dir = Path(".run"), Path(".run/demo")
    check_topics(settings)
    check_bus(settings)
    shutil.rmtree(state_dir, ignore_errors=True)  # a fresh knowledge graph and detector state for every run
    run_id = time.strftime("%Y%m%d-%H%M%S")
    model = inference_model(run_dir)
    services = platform(run_id, state_dir, ("--model", str(model)))
    _step(f"starting the five services (faultline serve ...; logs in {run_dir}/<service>.log)")
    with running(services, settings.kafka, run_dir):
        check_inference(model)
        result = run_loop(settings.kafka, f"demo-{run_id}", run_dir, time.time())
    _step(f"summary ({time.monotonic() - started:.0f} s in all, the loop {result.elapsed_s:.0f} s)")
    print_summary(result, run_dir / "summary.json", load)
    return 0
