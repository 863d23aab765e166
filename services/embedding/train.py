"""``faultline train slicer``: contrastive pre-training on unlabelled windows, then states and task heads.

1. Windows: simulator scenarios (seeds and fault kinds chosen here), sliced through the same
   OTLP path as the service; optionally windows of RCAEval-layout cases (unlabelled, only for
   the contrastive stage).
2. The frozen backbone embeds each window's three views (cached).
3. L_modal + L_temp train the projections and the fusion; no label is read.
4. k-means over the state vectors (k by silhouette) gives the runtime states.
5. The state-conditioned heads are fitted on the labelled training windows: anomaly,
   failure type (anomalous windows only), root-cause service (anomalous windows only).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.common.text_encoder import SentenceEncoder
from services.embedding.checkpoint import DEFAULT_DIR, Heads, RuntimeSlicerModel, largest_deviation, service_tensor
from services.embedding.contrastive import modal_loss, overlap_weights, temporal_loss
from services.embedding.data import NORMAL, CaseSpec, LabelledSlice, cases, slices
from services.embedding.heads import TaskHeads
from services.embedding.model import SlicerModel
from services.embedding.states import StatePartition
from services.embedding.windows import FEATURES, WindowConfig

FAULT_KINDS = ("cpu", "memory", "disk", "delay", "loss", "pod-kill", "code")
TRAIN_SEEDS = range(1, 6)
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "slicer-windows"


@dataclass
class Corpus:
    """Labelled windows with their view embeddings and numeric summaries, row-aligned."""

    items: list[LabelledSlice]
    views: torch.Tensor  # (n, 3, backbone_dim)
    numeric: torch.Tensor  # (n, 2 * features)
    groups: torch.Tensor  # run id per window (temporal pairs never cross runs)
    starts: torch.Tensor  # window start (s)

    def subset(self, mask: np.ndarray) -> Corpus:
        index = torch.as_tensor(np.nonzero(mask)[0])
        return Corpus(
            [self.items[i] for i in index.tolist()],
            self.views[index],
            self.numeric[index],
            self.groups[index],
            self.starts[index],
        )

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.items])

    @property
    def ambiguous(self) -> np.ndarray:
        return np.array([s.ambiguous for s in self.items])


def build_corpus(specs: list[CaseSpec], backbone: SentenceEncoder, config: WindowConfig, log=print) -> Corpus:  # type: ignore[no-untyped-def]
    items: list[LabelledSlice] = []
    groups: list[int] = []
    began = time.time()
    for n, (_case, found) in enumerate(slices(specs, config, CACHE), 1):
        groups += [n] * len(found)
        items += found
        if n % 8 == 0 or n == len(specs):
            log(f"  sliced {n}/{len(specs)} runs, {len(items)} windows ({time.time() - began:.0f}s)")
    texts = [t for s in items for t in s.slice.views.texts()]
    began = time.time()
    flat = backbone.encode(texts)
    log(f"  backbone: {len(texts)} views, {backbone.misses} distinct encoded ({time.time() - began:.0f}s)")
    return Corpus(
        items,
        torch.as_tensor(flat).view(len(items), 3, -1),
        torch.as_tensor(np.stack([s.slice.summary() for s in items])),
        torch.as_tensor(groups),
        torch.as_tensor([s.slice.window.start_s for s in items], dtype=torch.float64),
    )


def train_projection(
    corpus: Corpus,
    window_s: float,
    steps: int = 400,
    numeric: bool = False,
    runs_per_batch: int = 8,
    temporal_weight: float = 1.0,
    seed: int = 0,
    log=print,  # type: ignore[no-untyped-def]
) -> tuple[SlicerModel, dict[str, list[float]]]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = SlicerModel(corpus.views.shape[-1], numeric_dim=corpus.numeric.shape[-1] if numeric else 0)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    runs = corpus.groups.unique().numpy()
    curve: dict[str, list[float]] = {"modal": [], "temporal": [], "total": []}
    starts = (corpus.starts - corpus.starts.min()).float()
    for step in range(1, steps + 1):
        chosen = torch.as_tensor(rng.choice(runs, size=min(runs_per_batch, len(runs)), replace=False))
        index = torch.nonzero(torch.isin(corpus.groups, chosen)).squeeze(1)
        state, modal = model(corpus.views[index], corpus.numeric[index] if numeric else None)
        l_modal = modal_loss(modal)
        l_temp = temporal_loss(state, overlap_weights(starts[index], corpus.groups[index], window_s))
        loss = l_modal + temporal_weight * l_temp
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        for key, value in (("modal", l_modal), ("temporal", l_temp), ("total", loss)):
            curve[key].append(float(value.detach()))
        if step % 50 == 0 or step == 1:
            log(f"  step {step:4d}/{steps}  L_modal {float(l_modal):.3f}  L_temp {float(l_temp):.3f}")
    return model.eval(), curve


def fit_heads(
    vectors: torch.Tensor, corpus: Corpus, failure_types: list[str], steps: int = 300, seed: int = 0
) -> tuple[Heads, dict[int, float]]:
    """States by k-means on the vectors, then the three heads on the labelled windows."""
    torch.manual_seed(seed)
    partition, silhouettes = StatePartition.fit(vectors.numpy(), seed=seed)
    states = torch.as_tensor(partition.assign(vectors.numpy()))
    heads = TaskHeads(vectors.shape[1], partition.k, failure_types, len(FEATURES))
    labels = corpus.labels
    clear = ~corpus.ambiguous
    y_anomaly = torch.as_tensor((labels != NORMAL).astype(np.float32))
    faulty = np.nonzero(clear & (labels != NORMAL))[0]
    y_type = torch.as_tensor([failure_types.index(labels[i]) for i in faulty])
    services = [service_tensor(corpus.items[i].slice) for i in faulty]
    width = max((len(s) for s in services), default=1)
    padded = torch.zeros(len(faulty), width, len(FEATURES))
    mask = torch.full((len(faulty), width), float("-inf"))
    for row, s in enumerate(services):
        padded[row, : len(s)] = s
        mask[row, : len(s)] = 0
    y_root = torch.as_tensor([corpus.items[i].slice.services.index(corpus.items[i].root_cause) for i in faulty])
    culprit = padded[torch.arange(len(faulty)), y_root]
    deviation = torch.stack([largest_deviation(service_tensor(item.slice)) for item in corpus.items])
    clear_t = torch.as_tensor(np.nonzero(clear)[0])
    faulty_t = torch.as_tensor(faulty)
    positive = float(y_anomaly[clear_t].mean())
    pos_weight = torch.tensor((1 - positive) / max(positive, 1e-3))
    optimiser = torch.optim.Adam(heads.parameters(), lr=1e-2)
    for _ in range(steps):
        l_anomaly = nn.functional.binary_cross_entropy_with_logits(
            heads.anomaly(vectors[clear_t], deviation[clear_t], states[clear_t]),
            y_anomaly[clear_t],
            pos_weight=pos_weight,
        )
        # Teacher forcing: the type head learns from the true culprit's deviations; at prediction
        # time it reads the service the root-cause head ranks first.
        l_type = nn.functional.cross_entropy(heads.failure_type(culprit, states[faulty_t]), y_type)
        l_root = nn.functional.cross_entropy(heads.root_cause(padded, vectors[faulty_t]) + mask, y_root)
        loss = l_anomaly + l_type + l_root + 1e-3 * heads.penalty()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    heads.eval()
    with torch.no_grad():
        scores = torch.sigmoid(heads.anomaly(vectors[clear_t], deviation[clear_t], states[clear_t])).numpy()
    threshold = best_threshold(scores, y_anomaly[clear_t].numpy())
    return Heads(partition, heads, threshold), silhouettes


def best_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """The cut with the best F1 on the training windows."""
    best, cut = -1.0, 0.5
    for candidate in np.unique(np.round(scores, 4)):
        predicted = scores >= candidate
        tp = float((predicted & (truth > 0)).sum())
        f1 = 2 * tp / max(1.0, predicted.sum() + (truth > 0).sum())
        if f1 > best:
            best, cut = f1, float(candidate)
    return cut


def loss_plot(curve: dict[str, list[float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, values in curve.items():
        smooth = np.convolve(values, np.ones(10) / 10, mode="valid") if len(values) >= 10 else values
        ax.plot(smooth, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (10-step mean)")
    ax.set_title("RuntimeSlicer contrastive training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def train(
    corpus: Corpus,
    backbone: SentenceEncoder,
    config: WindowConfig,
    failure_types: list[str],
    steps: int = 400,
    numeric: bool = False,
    seed: int = 0,
    log=print,  # type: ignore[no-untyped-def]
) -> tuple[RuntimeSlicerModel, dict[str, list[float]]]:
    model, curve = train_projection(corpus, config.window_s, steps, numeric=numeric, seed=seed, log=log)
    with torch.no_grad():
        vectors = model(corpus.views, corpus.numeric if numeric else None)[0]
    heads, silhouettes = fit_heads(vectors, corpus, failure_types, seed=seed)
    by_k = ", ".join(f"{k}:{v:.2f}" for k, v in silhouettes.items())
    log(f"  states: k={heads.partition.k} (silhouette by k: {by_k})")
    meta = {
        "version": datetime.now(UTC).strftime("slicer-%Y%m%d-%H%M%S"),
        "trained_at": datetime.now(UTC).isoformat(),
        "windows": len(corpus.items),
        "steps": steps,
        "numeric_channel": numeric,
    }
    return RuntimeSlicerModel(backbone, model, heads, config, meta), curve


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faultline train slicer", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="checkpoint directory")
    parser.add_argument("--backbone", type=Path, help="local sentence encoder directory (default: the MiniLM package)")
    parser.add_argument("--system", default="online-boutique")
    parser.add_argument("--seeds", type=int, default=len(TRAIN_SEEDS), help="training seeds per fault kind")
    parser.add_argument("--kinds", default=",".join(FAULT_KINDS), help="fault kinds to train on")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--numeric", action="store_true", help="add the numeric deviation channel to the fusion")
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--stride", type=float, default=15.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    began = time.time()
    config = WindowConfig(args.window, args.stride)
    kinds = [k for k in args.kinds.split(",") if k]
    backbone = SentenceEncoder(args.backbone)
    specs = cases(args.system, kinds, range(1, args.seeds + 1), normal=args.seeds)
    print(f"slicing {len(specs)} simulator runs ({', '.join(kinds)} + normal)", flush=True)
    corpus = build_corpus(specs, backbone, config)
    print(f"contrastive training on {len(corpus.items)} windows", flush=True)
    trained, curve = train(corpus, backbone, config, kinds, args.steps, args.numeric)
    trained.save(args.out)
    plot = loss_plot(curve, args.out / "loss.png")
    print(f"saved {args.out} (loss curve {plot}) in {time.time() - began:.0f}s")
    return 0
