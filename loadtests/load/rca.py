"""gRPC load on the rca service: concurrent ``RcaService.Analyze`` calls at 1, 2, 4, … clients in flight, each
client asking for the next fault case's analysis as soon as the last one streamed back. Per step: analyses/s,
latency p50/p95/p99 (request sent to report received), errors (failed RPCs and malformed reports), where the
server's time went (reading the window back vs the agent tree), and how many top-1 answers stayed right. The
knee is the concurrency beyond which more analyses in flight stop raising throughput.

Why: an analysis is a burst of CPU-bound Python (one agent per span, eight threads per case) that a storm of
incidents can ask for many times at once; this shows how many concurrent analyses one replica can take before
queueing only adds latency, and whether answers degrade (partial reports, deadlines) under that load.

The service runs in this process on a loopback port, built as ``faultline serve rca`` builds it (evidence mode:
the rule reasoner, no LLM, no network). ``Analyze`` names a window, not its data: the served replica reads the
window back from Kafka, so by default a private broker in a temporary directory holds the simulator's
telemetry of every case (``FAULTLINE_LOAD_RCA_STORE=kafka``). ``FAULTLINE_LOAD_RCA_STORE=local`` serves the
same cases from RCAEval-layout case directories instead (the layout ``faultline rca --case`` reads): no
broker, so the read-back cost drops out and the analysis itself is measured. The clients are grpcio stubs
generated from protos/faultline/v1/rca.proto, one channel per client thread.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from deploy.kafka.broker import KafkaBroker, free_port
from loadtests.load import knee, knee_plot
from loadtests.simulator.scenario import Scenario, ScenarioSpec
from services.common.grpc_server import GrpcService
from services.common.pb.faultline.v1 import rca_pb2, rca_pb2_grpc
from services.common.runtime import ServiceRuntime
from services.common.settings import GrpcSettings, KafkaSettings
from services.rca.main import RCA_SERVICE, RcaSettings, build, options, reasoners
from services.rca.service import RcaApp, RcaServicer
from services.rca.telemetry import Telemetry, TelemetryError, load_rcaeval

LEVELS = [int(x) for x in os.environ.get("FAULTLINE_LOAD_RCA_CONCURRENCY", "1,2,4,8,16").split(",")]
STEP_S = float(os.environ.get("FAULTLINE_LOAD_RCA_STEP_S", "10"))  # per level; in-flight calls then finish
N_CASES = int(os.environ.get("FAULTLINE_LOAD_RCA_CASES", "4"))
STORE = os.environ.get("FAULTLINE_LOAD_RCA_STORE", "kafka")  # kafka | local
RPC_TIMEOUT_S = 120.0
COMMAND = "make loadtest LOAD=rca  (or: faultline loadtest rca)"

SYSTEM = "online-boutique"
DURATION_S, FAULT_AT_S, RATE_SCALE = 240, 150, 0.3  # as tests/integration/test_rca_service.py
# (fault kind, service): distinct services and kinds; cases cycle through them with their own seeds.
FAULTS = (
    ("cpu", "productcatalogservice"),
    ("delay", "cartservice"),
    ("memory", "recommendationservice"),
    ("loss", "currencyservice"),
    ("cpu", "shippingservice"),
    ("delay", "paymentservice"),
)


@dataclass(frozen=True)
class Case:
    """One fault case: ``DURATION_S`` of simulated traffic, the fault from ``FAULT_AT_S`` to the end."""

    kind: str
    service: str
    seed: int
    epoch_s: int

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.service}/s{self.seed}"

    def spec(self) -> ScenarioSpec:
        fault = f"{self.kind}:{self.service}@{FAULT_AT_S}s+{DURATION_S - FAULT_AT_S}s"
        return ScenarioSpec(
            system=SYSTEM,
            faults=(fault,),
            duration_s=DURATION_S,
            seed=self.seed,
            epoch_s=self.epoch_s,
            rate_scale=RATE_SCALE,
        )

    def request(self) -> rca_pb2.AnalyzeRequest:
        request = rca_pb2.AnalyzeRequest(mode="evidence")
        request.window.system = SYSTEM
        request.window.window.start.FromSeconds(self.epoch_s + FAULT_AT_S)
        request.window.window.end.FromSeconds(self.epoch_s + DURATION_S)
        return request


def make_cases(n: int, base_s: int | None = None) -> list[Case]:
    """``n`` cases in disjoint stretches of time (oldest first), by default ending two hours ago: inside the
    telemetry topics' retention, and a window read back from them holds its own case only."""
    if base_s is None:
        base_s = (int(time.time()) // 3600 - 2) * 3600 - 1800 * n
    return [Case(*FAULTS[i % len(FAULTS)], seed=100 + i, epoch_s=base_s + 1800 * i) for i in range(n)]


# -- the server --------------------------------------------------------------------------------------------


def _settings(**kwargs: object) -> RcaSettings:
    return RcaSettings(
        grpc=GrpcSettings(port=free_port(), shutdown_grace_s=1.0),
        metrics_port=0,
        heartbeat_s=0,
        group_id=f"rca-load-{uuid.uuid4().hex[:6]}",
        baseline_s=FAULT_AT_S,
        max_traces=10,
        **kwargs,  # type: ignore[arg-type]
    )


@contextlib.contextmanager
def kafka_server(cases: list[Case], workdir: Path) -> Iterator[str]:
    """The rca service as ``faultline serve rca`` builds it, on a private broker holding the cases' telemetry."""
    from loadtests.simulator.live import publish
    from services.common.admin import ensure_topics
    from services.common.topics import CATALOGUE

    with KafkaBroker.ephemeral(workdir / "kafka") as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, poll_timeout_ms=100, retry_backoff_ms=10)
        ensure_topics(kafka, CATALOGUE)
        for case in sorted(cases, key=lambda c: c.epoch_s):  # in time order: offsets-for-times seeks stay exact
            publish(Scenario(case.spec()), kafka, speed=0, chunk_s=30)
        runtime, _app = build(_settings(kafka=kafka))
        port = runtime.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            runtime.stop()


@contextlib.contextmanager
def local_server(cases: list[Case], workdir: Path) -> Iterator[str]:
    """The same gRPC service and app, its windows read from RCAEval-layout case directories (no Kafka)."""
    from loadtests.simulator.dataset import write_rcaeval

    directories: dict[int, Path] = {}
    for case in cases:
        scenario = Scenario(case.spec())
        directories[case.epoch_s + FAULT_AT_S] = write_rcaeval(
            scenario, scenario.run(), workdir / case.name.replace("/", "-")
        )

    def loader(system: str, start_s: float, end_s: float) -> Telemetry:
        directory = directories.get(int(start_s))
        if directory is None:
            raise TelemetryError(f"no case for the window starting at {start_s}")
        return load_rcaeval(directory, end_s)

    settings = _settings()
    runtime = ServiceRuntime("rca", settings)
    app = RcaApp(loader, reasoners(settings), None, settings.reports_topic, options(settings))  # type: ignore[arg-type]
    runtime.add_grpc_service(
        GrpcService(RCA_SERVICE, lambda server: rca_pb2_grpc.add_RcaServiceServicer_to_server(RcaServicer(app), server))
    )
    port = runtime.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        runtime.stop()


SERVERS: dict[str, Callable[[list[Case], Path], contextlib.AbstractContextManager[str]]] = {
    "kafka": kafka_server,
    "local": local_server,
}


# -- the clients ------------------------------------------------------------------------------------------


def check_report(report: rca_pb2.RcaReport) -> str:
    """Why ``report`` is not a real analysis ("" when it is): ranked candidates, analysed traces, evidence."""
    if not report.candidates:
        return "no ranked root causes"
    if [c.rank for c in report.candidates] != list(range(1, len(report.candidates) + 1)):
        return "ranks are not 1..n"
    if any(not c.service for c in report.candidates):
        return "a candidate without a service"
    confidences = [c.confidence for c in report.candidates]
    if any(not 0 <= x <= 1 for x in confidences) or any(b > a + 1e-6 for a, b in itertools.pairwise(confidences)):
        return "confidences not in [0, 1] and descending"
    if not report.trace_ids or not report.evidence.nodes:
        return "no traces analysed"
    if report.mode != "evidence":
        return f"mode {report.mode!r}"
    return ""


@dataclass
class Sample:
    latency_s: float
    error: str = ""  # "" for a good report
    top1: str = ""
    expected: str = ""
    load_ms: float = 0.0
    total_ms: float = 0.0
    partial: bool = False


def call(stub: rca_pb2_grpc.RcaServiceStub, case: Case) -> Sample:
    """One Analyze, its progress stream read to the end; the last message must carry a real report."""
    start = time.perf_counter()
    last: rca_pb2.AnalyzeProgress | None = None
    responses = stub.Analyze(case.request(), timeout=RPC_TIMEOUT_S)
    try:
        for message in responses:
            if message.agents_finished > message.agents_total:
                responses.cancel()
                return Sample(time.perf_counter() - start, "malformed: progress past its total", expected=case.service)
            last = message
    except grpc.RpcError as error:
        return Sample(time.perf_counter() - start, f"rpc {error.code().name}", expected=case.service)
    latency = time.perf_counter() - start
    if last is None or not last.HasField("report"):
        return Sample(latency, "malformed: the stream ended without a report", expected=case.service)
    report = last.report
    problem = check_report(report)
    if problem:
        return Sample(latency, f"malformed: {problem}", expected=case.service)
    return Sample(
        latency,
        top1=report.candidates[0].service,
        expected=case.service,
        load_ms=report.timings.load_ms,
        total_ms=report.timings.total_ms,
        partial=report.partial,
    )


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) * 1e3 if values else None


def step(address: str, cases: list[Case], concurrency: int, seconds: float) -> dict[str, Any]:
    """``concurrency`` client threads, each with its own channel, calling back to back for ``seconds``;
    calls in flight at the end finish and count. Client ``i`` starts at case ``i`` and walks the list."""
    samples: list[Sample] = []
    lock = threading.Lock()
    clock: dict[str, float] = {}

    def start_clock() -> None:  # run once every client is connected, before any is let go
        clock["start"] = time.perf_counter()
        clock["until"] = clock["start"] + seconds

    ready = threading.Barrier(concurrency, action=start_clock, timeout=60)

    def client(index: int) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = rca_pb2_grpc.RcaServiceStub(channel)
            try:
                grpc.channel_ready_future(channel).result(timeout=30)
            except grpc.FutureTimeoutError:
                ready.abort()
                raise
            ready.wait()
            n = index
            while time.perf_counter() < clock["until"]:
                sample = call(stub, cases[n % len(cases)])
                n += 1
                with lock:
                    samples.append(sample)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if "start" not in clock:
        raise RuntimeError(f"the clients could not connect to {address}")
    elapsed = time.perf_counter() - clock["start"]
    good = [s for s in samples if not s.error]
    latency = [s.latency_s for s in good]
    errors: dict[str, int] = {}
    for s in samples:
        if s.error:
            errors[s.error] = errors.get(s.error, 0) + 1
    return {
        "concurrency": concurrency,
        "requests": len(samples),
        "ok": len(good),
        "errors": len(samples) - len(good),
        "error_kinds": errors,
        "elapsed_s": elapsed,
        "requests_per_s": len(good) / elapsed,
        "latency_p50_ms": _percentile(latency, 50),
        "latency_p95_ms": _percentile(latency, 95),
        "latency_p99_ms": _percentile(latency, 99),
        "server_load_ms_mean": float(np.mean([s.load_ms for s in good])) if good else None,
        "server_total_ms_mean": float(np.mean([s.total_ms for s in good])) if good else None,
        "partial_reports": sum(s.partial for s in good),
        "top1_correct": sum(s.top1 == s.expected for s in good),
    }


def _ms(value: object) -> str:
    return f"{value:7.0f}" if isinstance(value, float) else "      -"


def run() -> dict:
    if STORE not in SERVERS:
        raise SystemExit(f"FAULTLINE_LOAD_RCA_STORE={STORE!r}: choose one of {', '.join(SERVERS)}")
    cases = make_cases(N_CASES)
    print(f"  {len(cases)} cases ({', '.join(c.name for c in cases)}), store: {STORE}", flush=True)
    with tempfile.TemporaryDirectory() as tmp, SERVERS[STORE](cases, Path(tmp)) as address:
        # Warm-up, one call per case: first-call costs are not load, and every case must analyse cleanly.
        with grpc.insecure_channel(address) as channel:
            warm = [call(rca_pb2_grpc.RcaServiceStub(channel), case) for case in cases]
        for case, sample in zip(cases, warm, strict=True):
            print(
                f"  warm-up {case.name}: {sample.error or 'top-1 ' + sample.top1} "
                f"({sample.latency_s * 1e3:.0f} ms, read-back {sample.load_ms:.0f} ms)",
                flush=True,
            )
        if any(s.error for s in warm):
            raise RuntimeError("a case did not analyse cleanly before load; see the warm-up lines")
        rows = []
        for concurrency in LEVELS:
            row = step(address, cases, concurrency, STEP_S)
            rows.append(row)
            print(
                f"  {concurrency:>3} in flight: {row['requests_per_s']:5.2f} analyses/s ({row['ok']} ok, "
                f"{row['errors']} errors) | latency p50 {_ms(row['latency_p50_ms'])} p95 {_ms(row['latency_p95_ms'])}"
                f" p99 {_ms(row['latency_p99_ms'])} ms | server: read-back {_ms(row['server_load_ms_mean'])}, "
                f"analysis {_ms(row['server_total_ms_mean'])} ms | top-1 right {row['top1_correct']}/{row['ok']}, "
                f"partial {row['partial_reports']}",
                flush=True,
            )
            if row["error_kinds"]:
                print(f"      errors: {row['error_kinds']}", flush=True)
    level_knee = knee([r["concurrency"] for r in rows], [r["requests_per_s"] for r in rows])
    print(f"  knee: {level_knee:g} analyses in flight (beyond it throughput grows < 10% per step)")
    plot = _plot(rows)
    print(f"  plot: {plot}\n  command: {COMMAND}")
    return {
        "command": COMMAND,
        "store": STORE,
        "mode": "evidence",
        "cases": [c.name for c in cases],
        "case_duration_s": DURATION_S,
        "rate_scale": RATE_SCALE,
        "step_s": STEP_S,
        "levels": rows,
        "knee_concurrency": level_knee,
    }


def _plot(rows: list[dict[str, Any]]) -> Path:
    return knee_plot(
        [r["concurrency"] for r in rows],
        [r["requests_per_s"] for r in rows],
        [(r["concurrency"], r["latency_p95_ms"]) for r in rows if r["latency_p95_ms"] is not None],
        ("concurrent Analyze calls in flight", "analyses/s", "latency p95 (ms)"),
        f"rca under gRPC load (evidence mode, {STORE} store)",
        "rca",
    )
