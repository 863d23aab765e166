"""``faultline demo`` (what ``make run`` ends with): the platform brought up and shown working.

It grows with the platform: today it checks the broker and the topic catalogue, sends an
event through the bus, plays a fault scenario from the simulator into the telemetry topics,
reads the metrics back from Kafka and ranks services with the n-sigma baseline.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from services.common.bus import Delivery, EventConsumer, Publisher, Route
from services.common.otlp import decode_metrics, iter_metrics
from services.common.pb.faultline.v1 import platform_pb2
from services.common.settings import ServiceSettings, load_settings
from services.common.topics import HEARTBEATS, OTLP_LOGS, OTLP_METRICS, with_dead_letters


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


def play_scenario(settings: ServiceSettings) -> None:
    from loadtests.simulator.live import publish
    from loadtests.simulator.sanity import nsigma_ranking
    from loadtests.simulator.scenario import Scenario, ScenarioSpec

    duration, fault = 300, "cpu:cartservice@180s"
    _step(f"scenario: Online Boutique, {duration} s of traffic, fault {fault}, played into Kafka")
    spec = ScenarioSpec(faults=(fault,), duration_s=duration, seed=1, epoch_s=int(time.time()) - duration)
    scenario = Scenario(spec)
    report = publish(scenario, settings.kafka, speed=0)
    print(
        f"  sent {report.spans:,} spans, {report.records[OTLP_METRICS]} metric and "
        f"{report.records[OTLP_LOGS]} log records in {report.elapsed_s:.1f} s"
    )
    _step("telemetry read back from Kafka (otlp_metrics, by time), n-sigma ranking of services")
    frame = read_service_metrics(settings, spec.epoch_s * 1000, (spec.epoch_s + duration) * 1000)
    truth = scenario.ground_truth()
    ranking = nsigma_ranking(frame, int(truth["inject_time"]))
    print(f"  injected: {truth['fault_type']} on {truth['root_cause_service']}; n-sigma top 3: {ranking[:3]}")


def read_service_metrics(settings: ServiceSettings, start_ms: int, end_ms: int) -> pd.DataFrame:
    """Per-service gauges in RCAEval's wide shape, from the otlp_metrics records of [start, end)."""
    consumer = KafkaConsumer(**settings.kafka.client_config())
    partitions = [TopicPartition(OTLP_METRICS, p) for p in consumer.partitions_for_topic(OTLP_METRICS)]
    consumer.assign(partitions)
    for tp, found in consumer.offsets_for_times(dict.fromkeys(partitions, start_ms)).items():
        if found is not None:
            consumer.seek(tp, found.offset)
    ends = consumer.end_offsets(partitions)
    rows: dict[int, dict[str, float]] = {}
    while any(consumer.position(tp) < ends[tp] for tp in partitions):
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                if record.timestamp >= end_ms:
                    continue
                for scoped in iter_metrics(decode_metrics(record.value)):
                    if "k8s.pod.name" in scoped.resource:
                        continue  # pod series; the ranking works per service
                    for point in scoped.item.gauge.data_points:
                        row = rows.setdefault(point.time_unix_nano // 1_000_000_000, {})
                        row[f"{scoped.service}_{scoped.item.name}"] = point.as_double
    consumer.close()
    frame = pd.DataFrame.from_dict(rows, orient="index").sort_index()
    return frame.rename_axis("time").reset_index()


RETRIEVAL_MODEL = Path(__file__).resolve().parent / "inference" / "checkpoints" / "retrieval-lm"


@contextmanager
def running_service(name: str, args: list[str], ready: Callable[[], bool], log: Path) -> Iterator[None]:
    """A service as its own process (``faultline serve``), for the length of the block."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", name, *args], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 120
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not become ready; see {log}")
            time.sleep(0.5)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def check_inference(run_dir: Path) -> None:
    import numpy as np
    import openai
    import tritonclient.grpc as grpcclient

    model = RETRIEVAL_MODEL
    if not (model / "model.safetensors").is_file():
        from services.inference.shapes import make_random_checkpoint

        model = make_random_checkpoint("tiny", run_dir / "tiny-random")
    _step(f"inference service: {model.name}, KServe v2 gRPC on :8001, OpenAI HTTP on :8000")
    client = grpcclient.InferenceServerClient("127.0.0.1:8001")

    def ready() -> bool:
        try:
            return client.is_server_ready()
        except Exception:
            return False

    with running_service("inference", ["--model", str(model)], ready, run_dir / "inference.log"):
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
    started = time.monotonic()
    run_dir = Path(".run")
    check_topics(settings)
    check_bus(settings)
    play_scenario(settings)
    check_inference(run_dir)
    _step(f"summary ({time.monotonic() - started:.1f} s)")
    print("  Kafka, the bus and the telemetry topics work; the simulated fault is visible in the data;")
    print("  the inference service answers tritonclient and the openai client, with certified attention.")
    print("  still to come: embedding, detector, rca and kg-builder (each adds itself to this demo)")
    return 0
