"""The ``faultline`` command: one entry point for serving, simulating, training and benchmarking."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each service's entry point, imported only when chosen (a service never imports another).
SERVICES: dict[str, str] = {
    "inference": "services.inference.main:main",
    "embedding": "services.embedding.main:main",
    "detector": "services.detector.main:main",
    "kg-builder": "services.kg_builder.main:main",
    "rca": "services.rca.main:main",
    "console": "services.console.main:main",
}


def _serve(args: argparse.Namespace) -> int:
    if args.service not in SERVICES:
        print(f"unknown service {args.service!r}; available: {', '.join(sorted(SERVICES))}", file=sys.stderr)
        return 2
    return _delegate(SERVICES, args.service, args.extra)


# Sub-commands whose arguments their own module parses: `faultline train <what>`, `faultline eval <what>`.
TRAINERS = {
    "tiny-lm": "services.inference.training.train_retrieval:main",
    "hata": "services.inference.hata_train:main",
    "chelsea": "services.inference.chelsea_calibrate:main",
    "slicer": "services.embedding.train:main",
    "eager": "services.detector.train:main",
}
EVALUATORS = {
    "retrieval": "services.inference.evaluation:main",
    "slicer": "services.embedding.evaluation:main",
    "eager": "services.detector.evaluation:main",
    "incidents": "services.detector.incident_eval:main",
    "kg": "services.kg_builder.evaluation:main",
    "rca": "services.rca.evaluation:main",
}


def _delegate(table: dict[str, str], what: str, argv: list[str]) -> int:
    module, _, func = table[what].partition(":")
    return int(getattr(importlib.import_module(module), func)(argv) or 0)


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


def _loadtest(args: argparse.Namespace) -> int:
    from loadtests.load import main as loadtest_main

    return loadtest_main(args.names)


def _figures(args: argparse.Namespace) -> int:
    from loadtests.figures import run

    return run(args)


def _checkpoint(args: argparse.Namespace) -> int:
    from pathlib import Path

    from services.inference.shapes import SHAPES, make_random_checkpoint

    if args.shape not in SHAPES:
        print(f"unknown shape {args.shape!r}; available: {', '.join(SHAPES)}", file=sys.stderr)
        return 2
    print(make_random_checkpoint(args.shape, Path(args.out)))
    return 0


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

    train = sub.add_parser("train", help="train a model: " + ", ".join(TRAINERS))
    train.add_argument("what", choices=sorted(TRAINERS))
    train.add_argument("extra", nargs=argparse.REMAINDER)
    train.set_defaults(func=lambda a: _delegate(TRAINERS, a.what, a.extra))

    evaluate = sub.add_parser("eval", help="evaluate: " + ", ".join(EVALUATORS))
    evaluate.add_argument("what", choices=sorted(EVALUATORS))
    evaluate.add_argument("extra", nargs=argparse.REMAINDER)
    evaluate.set_defaults(func=lambda a: _delegate(EVALUATORS, a.what, a.extra))

    kg = sub.add_parser("kg", help="knowledge graph tools: export")
    kg.add_argument("extra", nargs=argparse.REMAINDER)
    kg.set_defaults(func=lambda a: _delegate({"kg": "services.kg_builder.tools:main"}, "kg", a.extra))

    rca = sub.add_parser("rca", help="root cause analysis of one case directory (RCAEval or AIOps 2022 layout)")
    rca.add_argument("extra", nargs=argparse.REMAINDER)
    rca.set_defaults(func=lambda a: _delegate({"rca": "services.rca.main:analyze_case"}, "rca", a.extra))

    checkpoint = sub.add_parser("checkpoint", help="write a random-weight checkpoint with a real model shape")
    checkpoint.add_argument("--shape", required=True, help="e.g. llama3-8b-like")
    checkpoint.add_argument("--out", required=True)
    checkpoint.set_defaults(func=_checkpoint)

    from loadtests.simulator.cli import add_parser as add_simulate

    add_simulate(sub)

    bench = sub.add_parser("bench", help="run benchmarks (all, or the ones named)")
    bench.add_argument("names", nargs="*")
    bench.set_defaults(func=_bench)
    loadtest = sub.add_parser("loadtest", help="step up load until the system falls behind (all, or the ones named)")
    loadtest.add_argument("names", nargs="*")
    loadtest.set_defaults(func=_loadtest)
    from loadtests.figures import add_arguments as add_figures_arguments

    figures = sub.add_parser("figures", help="regenerate the README's Figures table from bench-results/")
    add_figures_arguments(figures)
    figures.set_defaults(func=_figures)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
