"""``faultline eval eager``: EAGER against the same backbone without contrastive training, same knowledge base.

Knowledge base and thresholds come from the training seeds' labelled runs (built here for both encoders
by the same code); evaluation runs come from held-out seeds. Per system it reports run-level detection
P/R/F1 (an alert on a failure run is a TP, on a success run an FP), diagnosis macro-F1 over the types of
the detected failure runs, detection latency after the injected step (in steps, and in seconds of the
run's own clock), the online scoring time
per step (backbone included, cold text cache), and Recall@10 of same-failure traces among the knowledge
base's trace cases. A second set injects only failure types held out of training and of the knowledge
base: diagnosis cannot name them, but detection can still fire.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np

from services.detector.detection import Detector, Thresholds, diagnose, embed_run, first_alert, score_run
from services.detector.encoder import CHECKPOINT, DEFAULT_CACHE, Backbone, BackboneEncoder, StepEncoder, load_encoder
from services.detector.knowledge_base import TRACE, KnowledgeBase
from services.detector.train import (
    HELD_OUT_TYPES,
    RUNS_PER_SEED,
    SYSTEMS,
    TRAIN_SEEDS,
    LabelledRun,
    calibrate_all,
    seed_knowledge_base,
    seen_types,
    simulated_runs,
)

EVAL_SEEDS = (101, 102)
HELD_OUT_SEED = 201
RESULTS = Path(__file__).resolve().parents[2] / "bench-results"


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def macro_f1(pairs: list[tuple[str, str]]) -> float:
    """Macro F1 over the true types of (true, predicted) pairs."""
    if not pairs:
        return 0.0
    scores = []
    for label in sorted({t for t, _ in pairs}):
        tp = sum(t == label and p == label for t, p in pairs)
        predicted = sum(p == label for _, p in pairs)
        actual = sum(t == label for t, _ in pairs)
        scores.append(2 * tp / (predicted + actual) if tp else 0.0)
    return float(np.mean(scores))


def recall_at_10(kb: KnowledgeBase, system: str, queries: list[tuple[str, np.ndarray]]) -> float:
    """Mean share of the same-type trace cases found in the top 10 (of at most 10 there are)."""
    available = Counter(c.failure_type for c in kb.list(system=system, level=TRACE))
    values = []
    for failure_type, vector in queries:
        if available[failure_type] == 0:
            continue
        top = kb.search(TRACE, system, vector, 10)
        values.append(sum(m.case.failure_type == failure_type for m in top) / min(10, available[failure_type]))
    return float(np.mean(values)) if values else 0.0


def evaluate_set(
    kb: KnowledgeBase, encoder: StepEncoder, thresholds: dict[str, Thresholds], runs: list[LabelledRun], system: str
) -> dict:
    chosen = [r for r in runs if r.run.system == system]
    tp = fp = fn = 0
    diagnosis: list[tuple[str, str]] = []
    latency_steps: list[int] = []
    latency_s: list[float] = []
    early = trace_level = unknown = 0
    queries = []
    for labelled in chosen:
        steps, prefixes = embed_run(encoder, labelled.features)
        agents = [s.agent for s in labelled.run.steps]
        limits = thresholds[system]
        ungrounded = limits.ungrounded_steps(labelled.run.steps, labelled.features)
        scores = score_run(kb, system, agents, steps, prefixes[-1], None, ungrounded)
        alert = first_alert(scores, limits)
        failed = labelled.failure_step >= 0
        if failed:
            queries.append((labelled.failure_type, prefixes[-1]))
        if alert is None:
            fn += failed
            continue
        if not failed:
            fp += 1
            continue
        tp += 1
        index, _kind, matches = alert
        predicted = diagnose(matches)[0]  # "unknown" for a deviation alert that no known failure explains
        unknown += predicted == "unknown"
        diagnosis.append((labelled.failure_type, predicted))
        steps_run = labelled.run.steps
        if index < 0:
            trace_level += 1
            index = len(steps_run) - 1
        if index < labelled.failure_step:
            early += 1
        else:
            latency_steps.append(index - labelled.failure_step)
            # the run's own clock: the failure step ended → the alerting step ended (scoring time comes on top)
            latency_s.append((steps_run[index].end_ns - steps_run[labelled.failure_step].end_ns) / 1e9)
    return {
        "runs": len(chosen),
        "failure_runs": sum(r.failure_step >= 0 for r in chosen),
        "detection": _prf(tp, fp, fn),
        "diagnosis_macro_f1": macro_f1(diagnosis),
        "diagnosis_accuracy": float(np.mean([t == p for t, p in diagnosis])) if diagnosis else 0.0,
        "latency_steps_mean": float(np.mean(latency_steps)) if latency_steps else None,
        "latency_steps_median": float(np.median(latency_steps)) if latency_steps else None,
        "latency_s_median": float(np.median(latency_s)) if latency_s else None,
        "alerts_before_injected_step": early,
        "trace_level_detections": trace_level,
        "diagnosed_unknown": unknown,
        "recall_at_10": recall_at_10(kb, system, queries),
    }


def step_latency_ms(
    encoder: StepEncoder, kb: KnowledgeBase, thresholds: dict[str, Thresholds], runs: list[LabelledRun], threads: int
) -> dict:
    """Online scoring time per step through :meth:`Detector.observe`, the backbone's text cache empty."""
    detector = Detector(encoder, Backbone(None, threads=threads), kb, thresholds)
    times = []
    for labelled in runs:
        for step in labelled.run.steps:
            times.append(detector.observe(step).latency_ms)
        detector.end_run(labelled.run.run_id)
    times.sort()
    return {"mean": statistics.fmean(times), "p50": times[len(times) // 2], "p95": times[int(len(times) * 0.95)]}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    labels = [f"{system}\n{metric}" for system in SYSTEMS for metric in ("detect F1", "diagnose F1", "R@10")]
    x = np.arange(len(labels))
    for offset, name in ((-0.2, "eager"), (0.2, "untrained")):
        values = [
            v
            for system in SYSTEMS
            for v in (
                results[name][system]["detection"]["f1"],
                results[name][system]["diagnosis_macro_f1"],
                results[name][system]["recall_at_10"],
            )
        ]
        axes[0].bar(x + offset, values, width=0.4, label=name)
    axes[0].set_xticks(x, labels, fontsize=7)
    axes[0].set_ylim(0, 1)
    axes[0].axhline(0.9, color="grey", lw=0.5, ls="--")
    axes[0].legend(loc="lower left")
    axes[0].set_title("held-out seeds")
    held = [results[n]["held_out_types"][s]["detection"]["f1"] for s in SYSTEMS for n in ("eager", "untrained")]
    axes[1].bar(range(4), held, color=["C0", "C1"] * 2)
    axes[1].set_xticks(range(4), [f"{s}\n{n}" for s in SYSTEMS for n in ("eager", "untrained")], fontsize=7)
    axes[1].set_ylim(0, 1)
    axes[1].set_title("held-out failure types: detection F1")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faultline eval eager", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--runs-per-seed", type=int, default=RUNS_PER_SEED, help="training runs per seed")
    parser.add_argument("--eval-runs-per-seed", type=int, default=40)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-runs", type=int, default=6, help="runs per system timed through observe()")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]

    backbone = Backbone(args.cache, threads=args.threads)
    train_runs, test_runs, held_runs = [], [], []
    for system in SYSTEMS:
        train_runs += simulated_runs(backbone, system, TRAIN_SEEDS, args.runs_per_seed, seen_types(system))
        test_runs += simulated_runs(backbone, system, EVAL_SEEDS, args.eval_runs_per_seed, seen_types(system))
        held_runs += simulated_runs(
            backbone, system, (HELD_OUT_SEED,), args.eval_runs_per_seed, list(HELD_OUT_TYPES[system])
        )
        backbone.save()
    encoders: dict[str, StepEncoder] = {"eager": load_encoder(args.checkpoint), "untrained": BackboneEncoder()}
    results: dict = {
        "train_seeds": TRAIN_SEEDS,
        "eval_seeds": EVAL_SEEDS,
        "held_out_seed": HELD_OUT_SEED,
        "held_out_types": HELD_OUT_TYPES,
    }
    for name, encoder in encoders.items():
        started = time.perf_counter()
        kb = KnowledgeBase(":memory:", encoder_version=encoder.version)
        seed_knowledge_base(kb, encoder, train_runs)
        thresholds = calibrate_all(kb, encoder, train_runs)
        results[name] = {"thresholds": {s: t.as_dict() for s, t in thresholds.items()}, "held_out_types": {}}
        for system in SYSTEMS:
            results[name][system] = evaluate_set(kb, encoder, thresholds, test_runs, system)
            results[name]["held_out_types"][system] = evaluate_set(kb, encoder, thresholds, held_runs, system)
            timed = [r for r in test_runs if r.run.system == system][: args.latency_runs]
            results[name][system]["step_latency_ms"] = step_latency_ms(encoder, kb, thresholds, timed, args.threads)
        print(f"  {name}: evaluated in {time.perf_counter() - started:.0f}s", flush=True)

    header = (
        f"{'encoder':10} {'system':6} {'P':>5} {'R':>5} {'F1':>5} {'diagF1':>6} {'lat.steps':>9} {'lat.s':>6} "
        f"{'ms/step':>8} {'R@10':>5} | held-out types: {'F1':>5} {'R':>5}"
    )
    print(header)
    for name in encoders:
        for system in SYSTEMS:
            r, h = results[name][system], results[name]["held_out_types"][system]
            d = r["detection"]
            lat, lat_s = r["latency_steps_mean"], r["latency_s_median"]
            print(
                f"{name:10} {system:6} {d['precision']:5.2f} {d['recall']:5.2f} {d['f1']:5.2f} "
                f"{r['diagnosis_macro_f1']:6.2f} {lat if lat is None else round(lat, 2)!s:>9} "
                f"{lat_s if lat_s is None else round(lat_s, 1)!s:>6} "
                f"{r['step_latency_ms']['mean']:8.1f} {r['recall_at_10']:5.2f} | "
                f"{'':15} {h['detection']['f1']:5.2f} {h['detection']['recall']:5.2f}"
            )
    from loadtests.bench import stamp

    results |= stamp(load)  # machine, settings, load, date: the README's Figures table shows them
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "eager-eval.json").write_text(json.dumps(results, indent=2))
    plot(results, RESULTS / "eager-eval.png")
    print(f"wrote {RESULTS / 'eager-eval.json'} and {RESULTS / 'eager-eval.png'}")
    return 0
