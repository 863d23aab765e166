"""``faultline simulate``: a scenario to Kafka (live or as load) or to a dataset directory."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from loadtests.simulator.agents import SYSTEMS, AgentRun, generate_runs
from loadtests.simulator.dataset import write_agent_runs, write_native, write_rcaeval
from loadtests.simulator.live import PublishReport, publish, publish_agent_runs
from loadtests.simulator.scenario import DEFAULT_EPOCH_S, Scenario, ScenarioSpec

_RATE = re.compile(r"^(?P<n>[\d.]+)(?P<k>k?)(spans)?(/s)?$")


def parse_rate(text: str) -> float:
    match = _RATE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"rate {text!r} is not like 20000spans/s or 20kspans/s")
    return float(match["n"]) * (1000 if match["k"] else 1)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate a microservice system with injected faults")
    p.add_argument("--system", default="online-boutique", help="shipped system name or a topology YAML path")
    p.add_argument("--fault", action="append", default=[], help="kind:target@start[+duration], repeatable")
    p.add_argument("--duration", type=float, default=1200.0, help="scenario length in seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="'kafka' or a directory for the datasets")
    p.add_argument("--format", choices=("rcaeval", "native", "both"), default="both", help="dataset layout(s)")
    p.add_argument("--speed", type=float, default=1.0, help="kafka: scenario seconds per wall second (0: max)")
    p.add_argument("--rate", type=parse_rate, help="kafka load: sustain this many spans/s (e.g. 20000spans/s)")
    p.add_argument("--max-spans", type=int, default=10_000_000, help="load: stop after this many spans")
    p.add_argument("--agents", type=parse_agents, default={}, help="multi-agent runs too, e.g. code:50,rca:50")
    p.add_argument("--agent-failure-rate", type=float, default=0.5, help="share of agent runs with a failure")
    p.set_defaults(func=run)


def parse_agents(text: str) -> dict[str, int]:
    """``code:50,rca:20`` -> {"code": 50, "rca": 20}."""
    out: dict[str, int] = {}
    for part in filter(None, text.split(",")):
        system, _, count = part.partition(":")
        if system not in SYSTEMS or not count.isdigit():
            raise argparse.ArgumentTypeError(f"{part!r} is not SYSTEM:COUNT with SYSTEM in {SYSTEMS}")
        out[system] = int(count)
    return out


def _spans_per_second(spec: ScenarioSpec) -> float:
    """Spans one second of this system's traffic makes at rate scale 1 (measured, not guessed)."""
    probe = Scenario(ScenarioSpec(system=spec.system, duration_s=30.0, seed=spec.seed, epoch_s=spec.epoch_s))
    return sum(len(c.spans) for c in probe.chunks(10.0)) / 30.0


def _progress(report: PublishReport) -> None:
    print(
        f"\r  t={report.scenario_s:7.0f}s  spans={report.spans:>10,}  records={sum(report.records.values()):>7,}"
        f"  {report.spans_per_s:9,.0f} spans/s",
        end="",
        file=sys.stderr,
        flush=True,
    )


def run(args: argparse.Namespace) -> int:
    to_kafka = args.out == "kafka"
    if args.rate and not to_kafka:
        print("--rate drives load into Kafka: use it with --out kafka", file=sys.stderr)
        return 2
    now = int(time.time())
    # Live data is "now"; a fast replay is the recent past, so Kafka keeps it and time queries work.
    epoch = (now if args.speed > 0 else now - int(args.duration)) if to_kafka else DEFAULT_EPOCH_S
    spec = ScenarioSpec(args.system, tuple(args.fault), args.duration, args.seed, epoch)
    speed = args.speed
    if args.rate:
        base = _spans_per_second(spec)
        duration = min(args.duration, args.max_spans / args.rate)
        spec = ScenarioSpec(args.system, tuple(args.fault), duration, args.seed, now, rate_scale=args.rate / base)
        speed = 1.0
        print(f"load: {args.rate:,.0f} spans/s = {args.rate / base:.1f}x {spec.system}'s traffic for {duration:.0f}s")
    runs: list[AgentRun] = [
        run
        for system, count in args.agents.items()
        for run in generate_runs(system, count, args.seed, args.agent_failure_rate, start_ns=epoch * 1_000_000_000)
    ]
    if runs:
        failed = sum(not r.succeeded for r in runs)
        print(f"agent runs: {len(runs)} ({failed} with an injected failure)")
        if to_kafka:
            from services.common.settings import ServiceSettings, load_settings

            report = publish_agent_runs(runs, load_settings(ServiceSettings).kafka, speed=speed)
            print(f"sent {report.spans:,} agent spans in {report.records['otlp_spans']:,} step records")
        else:
            write_agent_runs(runs, Path(args.out) / "agents")
    if spec.duration_s <= 0:
        return 0
    scenario = Scenario(spec)
    truth = scenario.ground_truth()
    print(f"scenario: {spec.system}, {spec.duration_s:.0f}s, seed {spec.seed}, faults: {list(spec.faults) or 'none'}")
    if to_kafka:
        from services.common.settings import ServiceSettings, load_settings

        kafka = load_settings(ServiceSettings).kafka
        report = publish(scenario, kafka, speed=speed, progress=_progress)
        print(file=sys.stderr)
        print(
            f"sent {report.spans:,} spans in {sum(report.records.values()):,} records "
            f"({report.bytes / 1e6:.1f} MB) to {kafka.bootstrap_servers} in {report.elapsed_s:.1f}s: "
            f"{report.spans_per_s:,.0f} spans/s achieved" + (f" (target {args.rate:,.0f})" if args.rate else "")
        )
    else:
        out = Path(args.out)
        if args.format in ("rcaeval", "both"):
            write_rcaeval(scenario, scenario.run(), out / "rcaeval" if args.format == "both" else out)
        if args.format in ("native", "both"):
            counts = write_native(scenario, out / "native" if args.format == "both" else out)
            print(f"records: {counts}")
        print(f"wrote {out}")
    print(f"ground truth: root cause {truth['root_cause_service']} ({truth['fault_type']}) at {truth['inject_time']}")
    return 0
