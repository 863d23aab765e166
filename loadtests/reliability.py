"""Reliability under crashes: each service SIGKILLed once in the middle of a fault scenario, then counted.

``make chaos`` (or ``make loadtest LOAD=reliability``): a private Kafka broker, the five services as
``faultline serve`` processes (:mod:`services.demo_services`, on ports beside a running demo), and the
demo's scenario (:mod:`services.demo_loop`: healthy, a delay fault, healthy again, the same fault; then
one failing multi-agent run). While it plays, every service is killed once with SIGKILL at a moment it
has work in flight, and started again at once with the same consumer groups and state paths:

- embedding while the first half's telemetry streams in (windows half built, offsets uncommitted),
- detector right after the first fault's incident opened (the fault's windows are still coming),
- kg-builder right after the first fault's RCA report appeared (it is ingesting it),
- rca right after the second fault's incident opened (its analysis is running),
- inference while the second half streams (it is on no topic; it must come back serving).

Once every consumer group's lag is 0 it counts, from the topics themselves: records in, effects out
(a StateEmbedding per window, an incident per fault, a report per incident, a KG update and a stored
failure per report, alerts and plans), duplicates (an effect a second time under another event id: a
window published twice, a second incident for one fault, a second report for one incident) and dead
letters per consumer group. A record repeated under the same CloudEvent id is a redelivery, counted
apart: consumers drop it by id. The windows expected are those of a reference slicer run here over
the same telemetry read back from Kafka in event-time order: a window built from part of its
telemetry counts as lost.

Verdicts: "nothing lost" (every closed window has its state, whole; every fault its incident; every
incident its report; every report its KG update and stored failure) and "no incident twice".
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from deploy.kafka.broker import KafkaBroker
from loadtests.simulator.scenario import Scenario, ScenarioSpec
from services.common import topics
from services.common.admin import ensure_topics
from services.common.pb.faultline.v1 import detector_pb2, embedding_pb2, kg_pb2, rca_pb2
from services.common.settings import KafkaSettings
from services.demo_loop import (
    DURATION_S,
    FAULT_KIND,
    FAULT_LENGTH_S,
    FAULT_SERVICE,
    FAULTS_AT_S,
    HALF_S,
    RATE_SCALE,
    SEED,
    SYSTEM,
    EventTap,
    LoopFailed,
    follow_agent_run,
    free_epoch,
    play,
)
from services.demo_services import Processes, group_lag, platform, running
from services.embedding.ingest import Slicer
from services.embedding.windows import WindowConfig

COMMAND = "make chaos  (or: make loadtest LOAD=reliability, faultline loadtest reliability)"
PORT_OFFSET = 100  # gRPC 8101 and 50153-50156, HTTP 8100, metrics 957x: a `make run` on the defaults is left alone
TELEMETRY = {topics.OTLP_SPANS: "spans", topics.OTLP_METRICS: "metrics", topics.OTLP_LOGS: "logs"}
EFFECTS = (topics.STATES, topics.INCIDENTS, topics.RCA_REPORTS, topics.KG_UPDATES, topics.ALERTS, topics.MITIGATIONS)
# the detector's duplicates: a second incident for a fault, a second plan for an incident, a second alert for a run
DETECTOR_TWICE = ("faults_with_a_second_incident", "incidents_planned_twice", "agent_runs_alerted_twice")
OPEN = detector_pb2.INCIDENT_STATUS_OPEN


@dataclass
class Kill:
    """One SIGKILL: the service, its moment (in words, and as a test on the run so far), a delay after it."""

    service: str
    when: str
    ready: Callable[[Chaos], bool] = field(repr=False)
    delay_s: float = 0.0
    killed_at_s: float | None = None  # seconds into the run (from the first telemetry published)
    restarted_after_s: float | None = None  # from the kill until it answered SERVING again
    in_flight: int | None = None  # records of its consumer groups not committed when it died
    error: str = ""


@dataclass
class Plan:
    services: tuple[str, ...] = ("inference", "embedding", "detector", "rca", "kg-builder")
    halves: int = 2  # 1: the first half only (one fault)
    agent_run: bool = True
    kills: list[Kill] = field(default_factory=list)


def full_plan() -> Plan:
    return Plan(
        kills=[
            Kill("embedding", "8 windows out, telemetry streaming in", lambda c: len(c.tap.all(topics.STATES)) >= 8),
            Kill("detector", "fault 1's incident opened", lambda c: bool(c.incidents_of(0))),
            Kill("kg-builder", "fault 1's RCA report out", lambda c: bool(c.reports_of(0))),
            Kill("rca", "fault 2's incident opened", lambda c: bool(c.incidents_of(1))),
            Kill("inference", "second half streaming in", lambda c: c.halves_started >= 2, delay_s=1.0),
        ]
    )


class Chaos:
    """The run so far as the kills' moments see it; a background thread kills, and restarts in threads."""

    def __init__(self, plan: Plan, processes: Processes, kafka: KafkaSettings, tap: EventTap, epoch: int) -> None:
        self.plan, self.processes, self.kafka, self.tap, self.epoch = plan, processes, kafka, tap, epoch
        self.kills = [k for k in plan.kills if k.service in processes.services]
        self.halves_started = 0
        self.began = time.monotonic()
        self._stop = threading.Event()
        self._restarts: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._watch, name="chaos", daemon=True)
        self._thread.start()

    def fault_span(self, i: int) -> tuple[int, int]:
        """Event time of fault ``i`` and the window after it (its effects last about that long)."""
        at = self.epoch + FAULTS_AT_S[i]
        return at, at + FAULT_LENGTH_S + 60

    def incidents_of(self, i: int) -> list[detector_pb2.Incident]:
        lo, hi = self.fault_span(i)
        found: dict[str, detector_pb2.Incident] = {}
        for incident in self.tap.all(topics.INCIDENTS):
            assert isinstance(incident, detector_pb2.Incident)
            if incident.status == OPEN and lo < incident.window.end.seconds and incident.window.start.seconds < hi:
                found.setdefault(incident.id, incident)
        return list(found.values())

    def reports_of(self, i: int) -> list[rca_pb2.RcaReport]:
        ids = {incident.id for incident in self.incidents_of(i)}
        return [r for r in self.tap.all(topics.RCA_REPORTS) if r.incident_id in ids]  # type: ignore[attr-defined]

    def in_graph(self, i: int) -> bool:
        """Fault ``i`` went around the loop: an incident, its report, and a KG update for the report."""
        reports = {r.id for r in self.reports_of(i)}
        return any(u.source_id in reports for u in self.tap.all(topics.KG_UPDATES))  # type: ignore[attr-defined]

    def _watch(self) -> None:
        pending = list(self.kills)
        while pending and not self._stop.is_set():
            for kill in list(pending):
                if kill.ready(self):
                    pending.remove(kill)
                    self._stop.wait(kill.delay_s)
                    self._kill(kill)
            self._stop.wait(0.1)

    def _kill(self, kill: Kill) -> None:
        self.processes.kill(kill.service)
        killed = time.monotonic()
        kill.killed_at_s = killed - self.began
        kill.in_flight = sum(group_lag(self.kafka, g) for g in self.processes.services[kill.service].groups)
        print(f"  ✖ SIGKILL {kill.service:<10} at {kill.killed_at_s:5.1f} s ({kill.when}): "
              f"{kill.in_flight} record(s) of its groups not committed", flush=True)  # fmt: skip

        def restart() -> None:
            try:
                self.processes.restart(kill.service)
            except SystemExit as error:
                kill.error = f"did not come back: {error}"
                print(f"  ✘ {kill.service} {kill.error}", flush=True)
                return
            kill.restarted_after_s = time.monotonic() - killed
            print(f"  ✔ {kill.service:<10} serving again {kill.restarted_after_s:4.1f} s after its kill", flush=True)

        thread = threading.Thread(target=restart, name=f"restart-{kill.service}", daemon=True)
        thread.start()
        self._restarts.append(thread)

    def finish(self, timeout_s: float) -> None:
        """Waits for the kills still due and for every restart; a kill whose moment never came is an error."""
        deadline = time.monotonic() + timeout_s
        self._thread.join(timeout=timeout_s)
        self._stop.set()
        self._thread.join()
        for thread in self._restarts:
            thread.join(timeout=max(deadline - time.monotonic(), 1.0))
        for kill in self.kills:
            if kill.killed_at_s is None:
                kill.error = f"never killed: its moment ({kill.when}) did not come"


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def settle(kafka: KafkaSettings, groups: list[str], tap: EventTap, quiet_s: float, timeout_s: float) -> float:
    """Waits until every group's lag is 0 and no event came for ``quiet_s``; returns the seconds waited."""
    began = since = time.monotonic()
    seen = -1
    while time.monotonic() - began < timeout_s:
        if len(tap.ids) != seen:
            seen, since = len(tap.ids), time.monotonic()
        if time.monotonic() - since >= quiet_s and all(group_lag(kafka, g) == 0 for g in groups):
            return time.monotonic() - began
        time.sleep(1.0)
    lags = {g: group_lag(kafka, g) for g in groups}
    raise LoopFailed(f"consumer groups still behind after {timeout_s:.0f} s: {lags}")


def read_back(kafka: KafkaSettings, names: list[str]) -> list:  # type: ignore[type-arg]
    """Every record of ``names``, from the beginning (the broker is this run's alone)."""
    consumer = KafkaConsumer(enable_auto_commit=False, **kafka.client_config())
    out = []
    try:
        partitions = [TopicPartition(n, p) for n in names for p in consumer.partitions_for_topic(n) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(partitions)
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in partitions) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out += records
    finally:
        consumer.close()
    return out


def reference_windows(records: list) -> dict[tuple[str, int], tuple[int, int, int]]:  # type: ignore[type-arg]
    """The windows a slicer closes over the telemetry read in event-time order: (system, start) -> what they hold
    (spans, metric points, log records)."""
    slicer = Slicer(WindowConfig())  # the embedding checkpoint's 30 s windows, 15 s stride, 15 s lateness
    for topic, modality in TELEMETRY.items():
        slicer.expect(modality, [str(p) for p in {r.partition for r in records if r.topic == topic}])
    out = {}
    for record in sorted(records, key=lambda r: (r.timestamp, r.topic, r.partition, r.offset)):
        slicer.add_record(record.topic, record.value, str(record.partition))
        for w in slicer.ready():
            out[(w.system, round(w.start_s))] = (w.spans, w.metric_points, w.log_records)
    return out


def dead_letters(kafka: KafkaSettings) -> dict[str, Counter[str]]:
    """Dead-lettered records per consumer group (the faultline_dlq_group header), by the topic they came from."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for record in read_back(kafka, [topics.dlq(t.name) for t in topics.CATALOGUE]):
        headers = {k: v.decode(errors="replace") for k, v in record.headers or []}
        out[headers.get("faultline_dlq_group", "?")][headers.get("faultline_dlq_topic", record.topic)] += 1
    return out


def stored_failures(store: Path) -> Counter[str]:
    """The knowledge graph's failure records per incident id, from its SQLite file."""
    if not store.is_file():
        return Counter()
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return Counter(row[0] for row in db.execute("SELECT incident_id FROM failures"))
    finally:
        db.close()


def counts(state: embedding_pb2.StateEmbedding) -> tuple[int, int, int]:
    return state.spans, state.metric_points, state.log_records


def ledger(chaos: Chaos, kafka: KafkaSettings, state_dir: Path, group: str) -> dict:
    """Events in, effects out, duplicates, losses and dead letters, per service and per topic."""
    tap, services = chaos.tap, chaos.processes.services
    telemetry = read_back(kafka, list(TELEMETRY))
    records = Counter(r.topic for r in telemetry) + Counter(r.topic for r in read_back(kafka, list(EFFECTS)))
    dlq = dead_letters(kafka)

    def dlq_of(service: str) -> int:
        return sum(sum(c.values()) for g, c in dlq.items() if g.startswith(f"{group}-{service}"))

    def events(topic: str) -> dict[str, object]:  # event id -> event (a redelivery shows once)
        return dict(tap.with_ids(topic))

    # embedding: every window a reference slicer closes has one state, built from all of its telemetry
    expected = reference_windows(telemetry)
    windows: dict[tuple[str, int], list[embedding_pb2.StateEmbedding]] = defaultdict(list)
    for state in events(topics.STATES).values():
        assert isinstance(state, embedding_pb2.StateEmbedding)
        windows[(state.system, state.window.start.seconds)].append(state)
    last = {system: start for system, start in sorted(windows)}  # each system's newest window out
    due = {w: c for w, c in expected.items() if w[1] <= last.get(w[0], -1)}  # closed by the service too
    missing = sorted(w for w in due if w not in windows)
    partial = sorted(w for w in due if w in windows and counts(windows[w][0]) != due[w])
    windows_twice = sum(len(s) - 1 for s in windows.values())

    # detector: an incident per fault (and none outside the faults), a plan per incident
    incidents = [i for i in events(topics.INCIDENTS).values() if isinstance(i, detector_pb2.Incident)]
    opened = {i.id: i for i in incidents if i.status == OPEN}
    resolved = {i.id for i in incidents if i.status != OPEN}
    per_fault = {h: [i.id for i in chaos.incidents_of(h)] for h in range(chaos.plan.halves)}
    outside = sorted(set(opened) - {i for found in per_fault.values() for i in found})
    plans = [p for p in events(topics.MITIGATIONS).values() if isinstance(p, detector_pb2.MitigationPlan)]
    plans_per_incident = Counter(p.incident_id for p in plans if p.incident_id)
    alerts = events(topics.ALERTS)
    alerts_per_run = Counter(a.run_id for a in alerts.values() if isinstance(a, detector_pb2.Alert))

    # rca: a report per opened incident
    reports = {r.id: r for r in events(topics.RCA_REPORTS).values() if isinstance(r, rca_pb2.RcaReport)}
    reports_per_incident = Counter(r.incident_id for r in reports.values())

    # kg-builder: an update and a stored failure per report
    updates = [u for u in events(topics.KG_UPDATES).values() if isinstance(u, kg_pb2.KgUpdate)]
    updates_per_report = Counter(u.source_id for u in updates)
    failures = stored_failures(state_dir / "kg-builder" / "kg.sqlite")

    lost = {
        "windows_missing": len(missing),
        "windows_partial": len(partial),
        "faults_without_incident": sum(1 for found in per_fault.values() if not found),
        "incidents_without_report": len(set(opened) - set(reports_per_incident)),
        "reports_without_kg_update": len(set(reports) - set(updates_per_report)),
        "reports_without_stored_failure": len({r.incident_id for r in reports.values()} - set(failures)),
    }
    twice = {
        "windows_published_twice": windows_twice,
        "faults_with_a_second_incident": sum(max(len(found) - 1, 0) for found in per_fault.values()),
        "incidents_planned_twice": sum(n - 1 for n in plans_per_incident.values()),
        "agent_runs_alerted_twice": sum(n - 1 for n in alerts_per_run.values()),
        "incidents_reported_twice": sum(n - 1 for n in reports_per_incident.values()),
        "reports_applied_twice": sum(n - 1 for n in updates_per_report.values()),
        "failures_stored_twice": sum(n - 1 for n in failures.values()),
    }
    kills = {k.service: k for k in chaos.kills}

    def row(service: str, events_in: str, effects_out: str, duplicates: int, lost_: int, note: str = "") -> dict:
        kill = kills.get(service)
        return {
            "service": service,
            "killed_at_s": round(kill.killed_at_s, 1) if kill and kill.killed_at_s is not None else None,
            "restarted_after_s": round(kill.restarted_after_s, 1) if kill and kill.restarted_after_s else None,
            "in_flight_at_kill": kill.in_flight if kill else None,
            "events_in": events_in,
            "effects_out": effects_out,
            "duplicates": duplicates,
            "lost": lost_,
            "dlq": dlq_of(service),
            "note": "; ".join(x for x in (note, kill.error if kill else "") if x),
        }

    rows = []
    if "embedding" in services:
        rows.append(row(
            "embedding",
            f"{sum(records[t] for t in TELEMETRY)} OTLP records",
            f"{len(windows)} windows",
            windows_twice,
            len(missing) + len(partial),
            f"{len(due)} windows due (reference slicer): {len(missing)} missing, {len(partial)} partial",
        ))  # fmt: skip
    if "detector" in services:
        rows.append(row(
            "detector",
            f"{records[topics.STATES]} states, {records[topics.OTLP_SPANS]} span recs",
            f"{len(opened)} incidents ({len(resolved)} resolved), {len(alerts)} alert(s), {len(plans)} plans",
            sum(twice[k] for k in DETECTOR_TWICE),
            lost["faults_without_incident"],
            f"incidents per fault {[len(f) for f in per_fault.values()]}, {len(outside)} outside the faults",
        ))  # fmt: skip
    if "rca" in services:
        rows.append(row(
            "rca",
            f"{len(opened)} incidents ({records[topics.INCIDENTS]} recs)",
            f"{len(reports)} reports",
            twice["incidents_reported_twice"],
            lost["incidents_without_report"],
        ))  # fmt: skip
    if "kg-builder" in services:
        rows.append(row(
            "kg-builder",
            f"{len(reports)} reports",
            f"{len(updates_per_report)} updates, {sum(failures.values())} failures stored",
            twice["reports_applied_twice"] + twice["failures_stored_twice"],
            lost["reports_without_kg_update"] + lost["reports_without_stored_failure"],
        ))  # fmt: skip
    if "inference" in services:
        rows.append(row("inference", "-", "-", 0, 0, "on no topic: must only come back serving"))
    failed_kills = [f"{k.service}: {k.error}" for k in chaos.kills if k.error]
    return {
        "rows": rows,
        "counts": {
            "telemetry_records": sum(records[t] for t in TELEMETRY),
            "windows_due": len(due),
            "windows_whole": len(due) - len(missing) - len(partial),
            "incidents_per_fault": [len(f) for f in per_fault.values()],
            "incidents": len(opened),
            "reports": len(reports),
            "kg_updates": len(updates_per_report),
            "failures_stored": sum(failures.values()),
            "alerts": len(alerts),
            "redelivered": sum(records[t] - len(events(t)) for t in EFFECTS),
            "dead_letters": sum(sum(c.values()) for c in dlq.values()),
        },
        "topics": {
            t: {"records": records[t], "events": len(events(t)), "redelivered": records[t] - len(events(t))}
            for t in EFFECTS
        }
        | {t: {"records": records[t]} for t in TELEMETRY},
        "dead_letters": {g: dict(c) for g, c in dlq.items()},
        "lost": lost,
        "twice": twice,
        "incidents_outside_faults": outside,
        "kills": [{k: v for k, v in asdict(kill).items() if k != "ready"} for kill in chaos.kills],
        "failed_kills": failed_kills,
        "detail": {
            "missing_windows": [f"{s} {w}" for s, w in missing],
            "partial_windows": [f"{s} {w}: {counts(windows[(s, w)][0])}, not {due[(s, w)]}" for s, w in partial],
            "incidents_per_fault": per_fault,
        },
        "nothing_lost": not any(lost.values()) and not failed_kills,
        "no_incident_twice": not any(twice.values()),
    }


def print_report(result: dict) -> None:
    header = ("service", "killed at", "back after", "in flight", "events in", "effects out", "dupl.", "lost", "DLQ")
    lines = [header]
    for r in result["rows"]:
        lines.append((
            r["service"],
            "-" if r["killed_at_s"] is None else f"{r['killed_at_s']:.1f} s",
            "-" if r["restarted_after_s"] is None else f"{r['restarted_after_s']:.1f} s",
            "-" if r["in_flight_at_kill"] is None else f"{r['in_flight_at_kill']} recs",
            r["events_in"],
            r["effects_out"],
            str(r["duplicates"]),
            str(r["lost"]),
            str(r["dlq"]),
        ))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for n, line in enumerate(lines):
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
    for r in result["rows"]:
        if r["note"]:
            print(f"  {r['service']}: {r['note']}")
    described = [
        f"{t} {c['records']}" + (f" ({c['redelivered']} redelivered)" if c.get("redelivered") else "")
        for t, c in result["topics"].items()
    ]
    print(f"  records: {', '.join(described)}")
    print(f"  dead letters: {result['dead_letters'] or 'none'}")
    lost = ", ".join(f"{k} {v}" for k, v in result["lost"].items())
    twice = ", ".join(f"{k} {v}" for k, v in result["twice"].items())
    print(f"  {'✔' if result['nothing_lost'] else '✘'} nothing lost: {lost}"
          + (f"; {result['failed_kills']}" if result["failed_kills"] else ""))  # fmt: skip
    print(f"  {'✔' if result['no_incident_twice'] else '✘'} no incident twice: {twice}")


def chaos_run(plan: Plan, state_dir: Path, port_offset: int = PORT_OFFSET, model: Path | None = None) -> dict:
    """Plays the scenario with ``plan``'s kills against a private broker; the ledger (see :func:`ledger`)."""
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, KafkaBroker.ephemeral(Path(tmp)) as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap)
        ensure_topics(kafka)
        run_id = time.strftime("%Y%m%d-%H%M%S")
        if "inference" in plan.services and model is None:
            from services.demo import inference_model

            model = inference_model(state_dir)
        args = ("--model", str(model)) if model is not None else ()
        services = [s for s in platform(run_id, state_dir, args, port_offset) if s.name in plan.services]
        print(f"  broker {broker.bootstrap}; {', '.join(s.name for s in services)} (logs: {state_dir}/*.log)",
              flush=True)  # fmt: skip
        with running(services, kafka, state_dir) as processes:
            startup_s = time.monotonic() - started
            epoch = free_epoch(kafka, DURATION_S, time.time())
            faults = tuple(f"{FAULT_KIND}:{FAULT_SERVICE}@{at}s+{FAULT_LENGTH_S}s" for at in FAULTS_AT_S)
            spec = ScenarioSpec(SYSTEM, faults, DURATION_S, seed=SEED, epoch_s=epoch, rate_scale=RATE_SCALE)
            scenario = Scenario(spec)
            chunks = scenario.chunks(10.0)
            tap = EventTap(kafka)
            chaos = Chaos(plan, processes, kafka, tap, epoch)
            group = f"demo-{run_id}"
            try:
                for half in range(plan.halves):
                    chaos.halves_started = half + 1
                    spans, took = play(chunks, scenario, kafka, (half + 1) * HALF_S)
                    print(f"  half {half + 1}: {HALF_S} s of telemetry ({spans:,} spans, fault at "
                          f"+{FAULTS_AT_S[half] - half * HALF_S} s) published in {took:.1f} s", flush=True)  # fmt: skip
                    if wait_for(lambda h=half: chaos.in_graph(h), 360):  # type: ignore[misc]
                        print(f"  fault {half + 1}: incident, report and KG update by "
                              f"{time.monotonic() - chaos.began:.1f} s", flush=True)  # fmt: skip
                    else:
                        print(f"  fault {half + 1} did not reach the knowledge graph within 360 s", flush=True)
                if plan.agent_run:
                    try:
                        follow_agent_run(tap, kafka, f"{group}-detector-spans", state_dir, epoch + DURATION_S)
                    except LoopFailed as error:
                        print(f"  agent run: {error}", flush=True)
                chaos.finish(timeout_s=300)
                settled_s = settle(kafka, [g for s in services for g in s.groups], tap, quiet_s=5.0, timeout_s=300)
                run_s = time.monotonic() - chaos.began
                print(f"  every consumer group at lag 0 after {run_s:.0f} s ({settled_s:.0f} s of waiting for it)",
                      flush=True)  # fmt: skip
            finally:
                tap.close()
        result = ledger(chaos, kafka, state_dir, group)
    return result | {
        "scenario": {
            "system": SYSTEM,
            "seed": SEED,
            "faults": [
                f"{FAULT_KIND}:{FAULT_SERVICE} at +{FAULTS_AT_S[h]} s for {FAULT_LENGTH_S} s"
                for h in range(plan.halves)
            ],
            "event_time_s": plan.halves * HALF_S,
            "agent_run": plan.agent_run,
        },
        "startup_s": round(startup_s, 1),
        "run_s": round(run_s, 1),
        "total_s": round(time.monotonic() - started, 1),
    }


def run() -> dict:
    """The full plan (``make chaos``); saved as bench-results/loadtest_reliability.json, logs in .run/chaos."""
    result = chaos_run(full_plan(), Path(".run/chaos"))
    print_report(result)
    print(f"  start-up {result['startup_s']:.0f} s, run {result['run_s']:.0f} s, {result['total_s']:.0f} s in all")
    print(f"  command: {COMMAND}")
    return {"command": COMMAND} | result


def main(argv: list[str] | None = None) -> int:
    """``make chaos``: the run, saved like every load test; exit status 1 unless both verdicts hold."""
    argparse.ArgumentParser(prog="python -m loadtests.reliability", description=__doc__).parse_args(argv)
    from loadtests.bench import RESULTS
    from loadtests.load import main as loadtest_main

    if loadtest_main(["reliability"]):
        return 2
    saved = json.loads((RESULTS / "loadtest_reliability.json").read_text())
    return 0 if saved["nothing_lost"] and saved["no_incident_twice"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
