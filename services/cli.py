"""The ``faultline`` command: one entry point for serving, simulating, training and benchmarking."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each service's entry point, imported only when chosen (a service never imports another).
SERVICES: dict[str, str] = {
    "inference": "services.inference.main:main",
}


def _serve(args: argparse.Namespace) -> int:
    if args.service not in SERVICES:
        available = ", ".join(sorted(SERVICES)) or "none yet"
        print(f"unknown service {args.service!r}; available: {available}", file=sys.stderr)
        return 2
    module, _, func = SERVICES[args.service].partition(":")
    return int(getattr(importlib.import_module(module), func)(args.extra) or 0)


def _topics(args: argparse.Namespace) -> int:
    from services.common.admin import ensure_topics
    from services.common.settings import ServiceSettings, load_settings

    settings = load_settings(ServiceSettings)
    created = ensure_topics(settings.kafka, replication_factor=args.replication_factor)
    print(f"created {len(created)} topic(s): {', '.join(created) or '-'}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from loadtests.bench import main as bench_main

    return bench_main(args.names)


def _demo(_args: argparse.Namespace) -> int:
    from services.demo import main as demo_main

    return demo_main()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faultline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run one service in the foreground")
    serve.add_argument("service", help="service name")
    serve.add_argument("extra", nargs=argparse.REMAINDER, help="arguments for the service")
    serve.set_defaults(func=_serve)

    topics = sub.add_parser("topics", help="create the platform's Kafka topics and their DLQs")
    topics.add_argument("--replication-factor", type=int, default=1)
    topics.set_defaults(func=_topics)

    demo = sub.add_parser("demo", help="show the platform working on the local broker (make run)")
    demo.set_defaults(func=_demo)

    from loadtests.simulator.cli import add_parser as add_simulate

    add_simulate(sub)

    bench = sub.add_parser("bench", help="run benchmarks (all, or the ones named)")
    bench.add_argument("names", nargs="*")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
