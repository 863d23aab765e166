"""``faultline train eager``: contrastive training on unlabelled simulator runs, then the seed knowledge base.

1. Simulated runs of both systems from ``TRAIN_SEEDS`` (the held-out failure types are never injected)
   are encoded as OTLP GenAI spans and read back through :mod:`services.detector.steps`, as the service
   reads them.
2. The head is trained with ``L_intra + L_inter + L_rank`` (:mod:`services.detector.contrastive`) on the
   unlabelled runs, plus ``L_sup`` on the labels the seed knowledge base holds for them (which steps are
   normal and which failure each later step belongs to; ``--supervised-weight 0`` leaves it out).
3. The labelled seed knowledge base is built from the same runs (the failure step and the steps after it
   as failure cases, the steps before it and of success runs as normal references, the whole run as a
   trace case) and the detection thresholds are calibrated on it, each run left out of its own search.

Writes ``encoder.pt``/``encoder.json``, ``kb.sqlite``, ``calibration.json`` and ``loss.png`` under
``services/detector/checkpoints/eager/``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from services.detector import contrastive
from services.detector.detection import RunScores, Thresholds, calibrate, embed_run, grounding_block, score_run
from services.detector.encoder import (
    CHECKPOINT,
    DEFAULT_CACHE,
    Backbone,
    EagerEncoder,
    StepEncoder,
    TrainedEncoder,
    save_encoder,
    step_features,
)
from services.detector.grounding import Envelope
from services.detector.knowledge_base import MITIGATIONS, NORMAL, STEP, TRACE, Case, KnowledgeBase
from services.detector.steps import Run, Step, from_request, group_runs

SYSTEMS = ("code", "rca")
TRAIN_SEEDS = (1, 2, 3)
RUNS_PER_SEED = 60
# Never injected into training runs nor put in the knowledge base: the evaluation's unseen types.
HELD_OUT_TYPES = {"code": ("premature_termination",), "rca": ("information_withholding",)}
KB_FILE, CALIBRATION_FILE = "kb.sqlite", "calibration.json"


@dataclass
class LabelledRun:
    run: Run
    features: np.ndarray
    failure_type: str  # "" for a success run
    failure_agent: str
    failure_step: int  # -1 for a success run
    seed: int = 0


def simulated_runs(
    backbone: Backbone, system: str, seeds: tuple[int, ...], per_seed: int, failure_types: list[str] | None = None
) -> list[LabelledRun]:
    """Simulator runs read back from their OTLP encoding, with features and ground truth."""
    from loadtests.simulator.agents import generate_runs, run_to_otlp

    out = []
    for seed in seeds:
        for sim in generate_runs(system, per_seed, seed, failure_types=failure_types):
            (run,) = group_runs(from_request(run_to_otlp(sim)))
            failure = sim.failure
            out.append(
                LabelledRun(
                    run,
                    step_features(backbone, run.steps),
                    failure.failure_type if failure else "",
                    failure.agent if failure else "",
                    failure.step if failure else -1,
                    seed,
                )
            )
    return out


def state_of(labelled: LabelledRun, step: Step) -> str:
    """What the knowledge base files a step under: the run's failure from its failure step on, else normal.

    The steps after the failure step are its consequences (a failing test, a repeated request, a report
    on the wrong service): they are what makes many failures visible at all, and they belong to that
    failure's type, not to normal behaviour.
    """
    failed = labelled.failure_step >= 0
    return labelled.failure_type if failed and step.index >= labelled.failure_step else NORMAL


def seen_types(system: str) -> list[str]:
    from loadtests.simulator.agents import FAILURE_TYPES

    return [n for n, t in FAILURE_TYPES.items() if t.applies_to(system) and n not in HELD_OUT_TYPES[system]]


def sender_index(steps: list[Step]) -> list[int]:
    """For each step, the most recent earlier step whose output its input holds (-1: the user's task)."""
    out = []
    for i, step in enumerate(steps):
        best = -1
        for sender in step.received_from:
            for j in range(i - 1, best, -1):
                other = steps[j]
                if other.agent == sender or other.tool == sender or (sender == step.agent and other.agent == sender):
                    best = j
                    break
        out.append(best)
    return out


def train_encoder(
    runs: list[LabelledRun],
    epochs: int,
    batch_runs: int = 24,
    seed: int = 0,
    log_every: int = 5,
    supervised_weight: float = 1.0,
) -> tuple[EagerEncoder, list[dict[str, float]]]:
    """The head on ``runs``: ``L_intra + L_inter + L_rank``, plus ``supervised_weight · L_sup`` on the step
    classes (system, agent, :func:`state_of`) and the trace classes (system, failure type)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = EagerEncoder()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    agents = {key: i for i, key in enumerate(sorted({(r.run.system, s.agent) for r in runs for s in r.run.steps}))}
    classes: dict[tuple[str, ...], int] = {}
    prepared = [
        (
            torch.from_numpy(r.features),
            torch.tensor([agents[(r.run.system, s.agent)] for s in r.run.steps]),
            sender_index(r.run.steps),
            torch.tensor(
                [classes.setdefault((r.run.system, s.agent, state_of(r, s)), len(classes)) for s in r.run.steps]
            ),
            classes.setdefault(("trace", r.run.system, r.failure_type), len(classes)),
        )
        for r in runs
    ]
    history = []
    for epoch in range(epochs):
        order = list(range(len(prepared)))
        rng.shuffle(order)
        sums = {"intra": 0.0, "inter": 0.0, "rank": 0.0, "sup": 0.0, "total": 0.0}
        batches = 0
        model.train()
        for start in range(0, len(order), batch_runs):
            chosen = [prepared[i] for i in order[start : start + batch_runs]]
            lengths = torch.tensor([len(c[0]) for c in chosen])
            flat = torch.cat([c[0] for c in chosen])
            agent_ids = torch.cat([c[1] for c in chosen])
            view_a = model.steps(flat + 0.02 * torch.randn_like(flat))
            view_b = model.steps(flat + 0.02 * torch.randn_like(flat))
            offsets = torch.cumsum(lengths, 0) - lengths
            pairs = [
                (int(off) + i, int(off) + j)
                for off, c in zip(offsets, chosen, strict=True)
                for i, j in enumerate(c[2])
                if j >= 0
            ]
            receivers = torch.tensor([p[0] for p in pairs], dtype=torch.long)
            senders = torch.tensor([p[1] for p in pairs], dtype=torch.long)
            padded = torch.zeros((len(chosen), int(lengths.max()), view_a.shape[1]))
            for b, (off, length) in enumerate(zip(offsets, lengths, strict=True)):
                padded[b, :length] = view_a[off : off + length]
            prefixes, _ = model.prefixes(padded)
            intra = contrastive.intra_loss(view_a, view_b, agent_ids)
            inter = contrastive.inter_loss(model.inter_head(view_a), view_a, receivers, senders)
            rank = contrastive.rank_loss(prefixes, lengths)
            loss = contrastive.total_loss(intra, inter, rank)
            sup = loss.new_zeros(())
            if supervised_weight:
                traces = prefixes[torch.arange(len(chosen)), lengths - 1]
                sup = contrastive.supervised_loss(view_a, torch.cat([c[3] for c in chosen]))
                sup = sup + contrastive.supervised_loss(traces, torch.tensor([c[4] for c in chosen]))
                loss = loss + supervised_weight * sup
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            for name, value in (("intra", intra), ("inter", inter), ("rank", rank), ("sup", sup), ("total", loss)):
                sums[name] += float(value.detach())
            batches += 1
        history.append({k: v / batches for k, v in sums.items()} | {"epoch": epoch + 1})
        if (epoch + 1) % log_every == 0 or epoch == 0:
            h = history[-1]
            print(
                f"  epoch {epoch + 1:3d}/{epochs}  L={h['total']:.3f}  intra={h['intra']:.3f}  "
                f"inter={h['inter']:.3f}  rank={h['rank']:.3f}  sup={h['sup']:.3f}",
                flush=True,
            )
    return model.eval(), history


def seed_knowledge_base(kb: KnowledgeBase, encoder: StepEncoder, runs: list[LabelledRun]) -> dict[str, np.ndarray]:
    """Failure step cases (the failure step and its consequences, see :func:`state_of`), trace cases and normal
    references from labelled runs; returns each run's prefix embeddings."""
    cases: list[Case] = []
    vectors: list[np.ndarray] = []
    traces = {}
    for labelled in runs:
        run = labelled.run
        steps, prefixes = embed_run(encoder, labelled.features)
        traces[run.run_id] = prefixes
        for step, vector in zip(run.steps, steps, strict=True):
            failure_type = state_of(labelled, step)
            after = failure_type != NORMAL and step.index > labelled.failure_step
            cases.append(
                Case(
                    "",
                    STEP,
                    run.system,
                    failure_type,
                    step.agent,
                    step.index,
                    run.run_id,
                    MITIGATIONS.get(failure_type, ""),
                    "seed",
                    f"after {labelled.failure_agent}'s step {labelled.failure_step}" if after else "",
                )
            )
            vectors.append(vector)
        cases.append(
            Case(
                "",
                TRACE,
                run.system,
                labelled.failure_type,
                labelled.failure_agent,
                labelled.failure_step,
                run.run_id,
                MITIGATIONS.get(labelled.failure_type, ""),
                "seed",
            )
        )
        vectors.append(prefixes[-1])
    kb.add(cases, np.stack(vectors))
    return traces


def fit_envelopes(runs: list[LabelledRun]) -> dict[str, Envelope]:
    """Each agent's normal range of the grounding features, over the normal steps of ``runs``."""
    rows: dict[str, list[np.ndarray]] = {}
    for labelled in runs:
        block = grounding_block(labelled.features)
        for step, row in zip(labelled.run.steps, block, strict=True):
            if state_of(labelled, step) == NORMAL:
                rows.setdefault(step.agent, []).append(row)
    return {agent: Envelope.fit(np.stack(r)) for agent, r in rows.items()}


def held_out_ungrounded(runs: list[LabelledRun], folds: int = 3) -> dict[str, list[float]]:
    """Per run, its steps' ``ungrounded`` against the normal ranges of the other seeds' runs (of the other
    folds of runs when they share one seed): a range fitted on a run itself would never put its own steps
    outside, and thresholds calibrated on that would be too low."""
    seeds = {r.seed for r in runs}
    fold_of = {id(r): r.seed if len(seeds) > 1 else i % folds for i, r in enumerate(runs)}
    out = {}
    for fold in sorted(set(fold_of.values())):
        limits = Thresholds(envelopes=fit_envelopes([r for r in runs if fold_of[id(r)] != fold]))
        for labelled in (r for r in runs if fold_of[id(r)] == fold):
            out[labelled.run.run_id] = limits.ungrounded_steps(labelled.run.steps, labelled.features)
    return out


def loo_scores(kb: KnowledgeBase, encoder: StepEncoder, runs: list[LabelledRun]) -> list[RunScores]:
    ungrounded = held_out_ungrounded(runs)
    out = []
    for labelled in runs:
        steps, prefixes = embed_run(encoder, labelled.features)
        agents = [s.agent for s in labelled.run.steps]
        run_id = labelled.run.run_id
        out.append(score_run(kb, labelled.run.system, agents, steps, prefixes[-1], run_id, ungrounded[run_id]))
    return out


def calibrate_all(kb: KnowledgeBase, encoder: StepEncoder, runs: list[LabelledRun]) -> dict[str, Thresholds]:
    out = {}
    for system in SYSTEMS:
        chosen = [r for r in runs if r.run.system == system]
        limits = calibrate(loo_scores(kb, encoder, chosen), [r.failure_step >= 0 for r in chosen])
        out[system] = replace(limits, envelopes=fit_envelopes(chosen))
    return out


def save_thresholds(thresholds: dict[str, Thresholds], path: Path) -> None:
    path.write_text(json.dumps({s: t.as_dict() for s, t in thresholds.items()}, indent=2))


def load_thresholds(path: Path) -> dict[str, Thresholds]:
    if not path.is_file():
        return {}
    return {s: Thresholds.from_dict(t) for s, t in json.loads(path.read_text()).items()}


def plot_losses(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [h["epoch"] for h in history]
    for name in ("total", "intra", "inter", "rank", "sup"):
        ax.plot(epochs, [h[name] for h in history], label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("EAGER reasoning-scoped contrastive training")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faultline train eager", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CHECKPOINT)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--runs-per-seed", type=int, default=RUNS_PER_SEED)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="backbone embedding cache (.npz)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--supervised-weight", type=float, default=1.0, help="λ of L_sup (0: unsupervised only)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    backbone = Backbone(args.cache, threads=args.threads)
    runs: list[LabelledRun] = []
    for system in SYSTEMS:
        runs += simulated_runs(backbone, system, TRAIN_SEEDS, args.runs_per_seed, seen_types(system))
        backbone.save()
        print(f"  {system}: {sum(r.run.system == system for r in runs)} runs featurised", flush=True)
    steps = sum(len(r.run.steps) for r in runs)
    print(f"training on {len(runs)} unlabelled runs ({steps} steps), {args.epochs} epochs", flush=True)
    trained_at = time.perf_counter()
    model, history = train_encoder(runs, args.epochs, supervised_weight=args.supervised_weight)
    train_s = time.perf_counter() - trained_at
    meta = {
        "seeds": TRAIN_SEEDS,
        "runs": len(runs),
        "steps": steps,
        "epochs": args.epochs,
        "supervised_weight": args.supervised_weight,
        "train_seconds": round(train_s, 1),
        "held_out_types": HELD_OUT_TYPES,
        "final_loss": history[-1],
    }
    version = save_encoder(model, args.out, meta)
    plot_losses(history, args.out / "loss.png")
    encoder = TrainedEncoder(model, version)
    kb_path = args.out / KB_FILE
    kb_path.unlink(missing_ok=True)
    kb = KnowledgeBase(kb_path, encoder_version=version)
    seed_knowledge_base(kb, encoder, runs)
    thresholds = calibrate_all(kb, encoder, runs)
    save_thresholds(thresholds, args.out / CALIBRATION_FILE)
    print(f"encoder {version}: head trained in {train_s:.0f}s; total {time.perf_counter() - started:.0f}s")
    for system, limits in thresholds.items():
        scalars = {k: round(v, 4) for k, v in limits.as_dict().items() if k != "envelopes"}
        print(f"  {system} thresholds: {scalars}; normal grounding ranges of {len(limits.envelopes)} agents")
    print(f"wrote {args.out}/ ({', '.join(sorted(p.name for p in args.out.iterdir()))})")
    return 0
