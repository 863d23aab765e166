"""``faultline eval slicer``: RuntimeSlicer against the untrained backbone and a metrics-only n-sigma detector.

Split. Training runs use seeds 1..5 (every fault kind plus fault-free runs); evaluation runs
use seeds 101..103, whose fault targets, traffic level and noise are all new. Two settings:
- held-out seeds: every fault kind was seen in training (the failure-type head needs that);
- held-out fault type: ``disk`` is removed from *all* training (contrastive stage, states,
  heads) and the models are asked to detect and localise disk faults they never saw.
Windows the fault only grazes (active for less than half of the window) are left out of the
scores; windows before the baseline is warm are never scored.

Methods, all with the same windows, baseline and heads:
- RuntimeSlicer: contrastively trained projections + fusion over the frozen MiniLM views
  (and, as a separate row, with the numeric deviation channel in the fusion);
- untrained backbone: the raw MiniLM embeddings of the same three views, concatenated;
- n-sigma: max robust |z| over the metric features only, threshold tuned on the training
  windows; root cause = the service with the largest metric |z|; no failure type.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from services.common.text_encoder import SentenceEncoder
from services.embedding.checkpoint import Encoder, Heads, service_tensor
from services.embedding.data import NORMAL, cases
from services.embedding.train import FAULT_KINDS, Corpus, best_threshold, build_corpus, fit_heads, loss_plot, train
from services.embedding.views import MODALITY_OF
from services.embedding.windows import FEATURES, WindowConfig

RESULTS = Path(__file__).resolve().parents[2] / "bench-results"
EVAL_SEEDS = range(101, 104)
HELD_OUT_KIND = "disk"
_METRIC_COLUMNS = np.array([MODALITY_OF[f] == "metrics" for f in FEATURES])


def _prf(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    tp = float((predicted & truth).sum())
    precision = tp / max(1.0, predicted.sum())
    recall = tp / max(1.0, truth.sum())
    return precision, recall, 2 * precision * recall / max(1e-9, precision + recall)


def _silhouette(vectors: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(vectors, labels, metric="cosine")) if len(set(labels)) > 1 else float("nan")


def score_heads(heads: Heads, vectors: torch.Tensor, corpus: Corpus, typed: bool = True) -> dict[str, float]:
    clear = ~corpus.ambiguous
    predictions = heads.predict(
        vectors, [service_tensor(s.slice) for s in corpus.items], [s.slice.services for s in corpus.items]
    )
    truth = corpus.labels != NORMAL
    flagged = np.array([p.anomalous for p in predictions])
    precision, recall, f1 = _prf(flagged[clear], truth[clear])
    faulty = np.nonzero(clear & truth)[0]
    ranks = [[r[0] for r in predictions[i].root_causes].index(corpus.items[i].root_cause) + 1 for i in faulty]
    out = {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "type_accuracy": float(np.mean([predictions[i].failure_type == corpus.labels[i] for i in faulty]))
        if typed
        else float("nan"),
        "rc_top1": float(np.mean(np.array(ranks) <= 1)),
        "rc_top3": float(np.mean(np.array(ranks) <= 3)),
        "silhouette": _silhouette(vectors.numpy()[clear], corpus.labels[clear]),
        "windows": int(clear.sum()),
        "anomalous_windows": int(truth[clear].sum()),
    }
    return out


def _nsigma_scores(corpus: Corpus) -> tuple[np.ndarray, list[list[str]]]:
    scores, rankings = [], []
    for item in corpus.items:
        z = np.abs(item.slice.service_z[:, _METRIC_COLUMNS]) if len(item.slice.services) else np.zeros((1, 1))
        per_service = z.max(1)
        scores.append(float(per_service.max()))
        rankings.append([item.slice.services[i] for i in np.argsort(-per_service)])
    return np.array(scores), rankings


def score_nsigma(train_corpus: Corpus, corpus: Corpus) -> dict[str, float]:
    train_scores, _ = _nsigma_scores(train_corpus)
    clear_train = ~train_corpus.ambiguous
    n = best_threshold(train_scores[clear_train], (train_corpus.labels != NORMAL)[clear_train].astype(float))
    scores, rankings = _nsigma_scores(corpus)
    clear, truth = ~corpus.ambiguous, corpus.labels != NORMAL
    precision, recall, f1 = _prf(scores[clear] >= n, truth[clear])
    faulty = np.nonzero(clear & truth)[0]
    ranks = [rankings[i].index(corpus.items[i].root_cause) + 1 for i in faulty]
    metric_z = np.stack([np.sign(s.slice.service_z) * np.log1p(np.abs(s.slice.service_z)) for s in corpus.items])[
        :, :, _METRIC_COLUMNS
    ].reshape(len(corpus.items), -1)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "type_accuracy": float("nan"),
        "rc_top1": float(np.mean(np.array(ranks) <= 1)),
        "rc_top3": float(np.mean(np.array(ranks) <= 3)),
        "silhouette": _silhouette(metric_z[clear], corpus.labels[clear]),
        "n": n,
    }


def projection_plot(series: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    fig, axes = plt.subplots(1, len(series), figsize=(5.5 * len(series), 4.5))
    kinds = [NORMAL, *FAULT_KINDS]
    colours = plt.get_cmap("tab10")
    for ax, (title, (vectors, labels)) in zip(np.atleast_1d(axes), series.items(), strict=True):
        points = PCA(n_components=2, random_state=0).fit_transform(vectors)
        for k, kind in enumerate(kinds):
            chosen = labels == kind
            if chosen.any():
                ax.scatter(points[chosen, 0], points[chosen, 1], s=10, color=colours(k), label=kind, alpha=0.75)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluate(system: str = "online-boutique", steps: int = 400, log=print) -> dict:  # type: ignore[no-untyped-def]
    torch.set_num_threads(2)
    config = WindowConfig()
    backbone = SentenceEncoder()
    log(f"training windows (seeds 1..5, {len(FAULT_KINDS)} fault kinds + normal)")
    train_corpus = build_corpus(cases(system, FAULT_KINDS, range(1, 6), normal=5), backbone, config, log)
    log(f"held-out windows (seeds {EVAL_SEEDS.start}..{EVAL_SEEDS.stop - 1})")
    test_corpus = build_corpus(cases(system, FAULT_KINDS, EVAL_SEEDS, normal=3), backbone, config, log)
    kinds = list(FAULT_KINDS)
    results: dict[str, dict] = {"held_out_seeds": {}, "held_out_type": {}}
    vectors_for_plot: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    clear_test = ~test_corpus.ambiguous

    def run_setting(setting: str, train_set: Corpus, test_set: Corpus, types: list[str], typed: bool) -> None:
        for name, numeric in (("RuntimeSlicer (text views)", False), ("RuntimeSlicer (+numeric channel)", True)):
            began = time.time()
            model, curve = train(train_set, backbone, config, types, steps, numeric, log=lambda *_: None)
            vectors = Encoder(model.model)(test_set.views, test_set.numeric)
            results[setting][name] = score_heads(model.heads, vectors, test_set, typed) | {
                "train_s": time.time() - began,
                "states": model.heads.partition.k,
            }
            if setting == "held_out_seeds":
                RESULTS.mkdir(exist_ok=True)
                loss_plot(curve, RESULTS / f"slicer_loss{'_numeric' if numeric else ''}.png")
                vectors_for_plot[name] = (vectors.numpy()[clear_test], test_set.labels[clear_test])
        raw_train = Encoder(None)(train_set.views, train_set.numeric)
        heads, _ = fit_heads(raw_train, train_set, types)
        raw_test = Encoder(None)(test_set.views, test_set.numeric)
        results[setting]["untrained backbone (raw MiniLM views)"] = score_heads(heads, raw_test, test_set, typed) | {
            "states": heads.partition.k
        }
        if setting == "held_out_seeds":
            vectors_for_plot["untrained MiniLM"] = (raw_test.numpy()[clear_test], test_set.labels[clear_test])
        results[setting]["n-sigma (metrics only)"] = score_nsigma(train_set, test_set)

    log("setting 1: held-out seeds")
    run_setting("held_out_seeds", train_corpus, test_corpus, kinds, True)
    log(f"setting 2: held-out fault type ({HELD_OUT_KIND} never in training)")
    train_wo = train_corpus.subset(train_corpus.labels != HELD_OUT_KIND)
    train_wo = train_wo.subset(np.array([s.case.kind != HELD_OUT_KIND for s in train_wo.items]))
    test_only = test_corpus.subset(np.array([s.case.kind in (HELD_OUT_KIND, NORMAL) for s in test_corpus.items]))
    run_setting("held_out_type", train_wo, test_only, [k for k in kinds if k != HELD_OUT_KIND], False)
    plot = projection_plot(vectors_for_plot, RESULTS / "slicer_embeddings_pca.png")
    results["plot"] = str(plot)
    results["train_windows"] = len(train_corpus.items)
    results["test_windows"] = int(clear_test.sum())
    return results


def table(results: dict) -> str:
    lines = []
    for setting in ("held_out_seeds", "held_out_type"):
        lines.append(f"-- {setting.replace('_', ' ')}")
        lines.append(
            f"{'method':40s} {'P':>5s} {'R':>5s} {'F1':>5s} {'type':>5s} {'top1':>5s} {'top3':>5s} {'silh':>6s}"
        )
        for name, row in results[setting].items():
            cells = [row["precision"], row["recall"], row["f1"], row["type_accuracy"], row["rc_top1"], row["rc_top3"]]
            text = " ".join("    -" if np.isnan(c) else f"{c:5.2f}" for c in cells)
            lines.append(f"{name:40s} {text} {row['silhouette']:6.3f}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faultline eval slicer", description=__doc__)
    parser.add_argument("--system", default="online-boutique")
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args(argv)
    began, load = time.time(), os.getloadavg()[0]
    results = evaluate(args.system, args.steps, log=lambda *a: print(*a, flush=True))
    print(table(results))
    from loadtests.bench import stamp

    results |= {"wall_s": time.time() - began} | stamp(load)  # shown in the README's Figures table
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "slicer_eval.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"plot: {results['plot']}; json: {RESULTS / 'slicer_eval.json'}; {time.time() - began:.0f}s")
    return 0
