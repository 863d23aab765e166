"""``faultline train hata``: learn HATA's hash projections for a checkpoint (Gong et al., 2025).

1. Prefill the model on long prompts through a recording attention backend, keeping each
   layer's post-RoPE queries and keys.
2. Per layer and KV head, build (q, k, s) triples: a query at a random position in the second
   half of a prompt against every earlier key; the top 10% of keys by q·k get rank weights
   ``linspace(20, 1)``, the rest −1 (HATA's labels).
3. Train W (head_dim × rbit) per KV head on the relaxed hash h̃(x) = tanh(σ·xW/2) with HATA's
   loss: ε·Σ s‖h̃(q) − h̃(k)‖²/N (pull top keys close, push the rest away) + λ·‖mean bit‖²
   (balanced bits) + η·‖WᵀW − I‖ (decorrelated bits); SGD with momentum, exponential decay.
4. Report, per layer, the share of the true top-k keys that the hash top-k recovers on held-out
   queries, and save ``hata.safetensors`` beside the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from services.inference.attention.base import AttentionBackend, causal_attention
from services.inference.attention.hata import WEIGHTS_FILE
from services.inference.kv_cache import LayerCache, SequenceCache
from services.inference.model import Segment, Transformer
from services.inference.weights import load_model

POSITIVE_SHARE = 0.1  # HATA labels the top 10% of keys
SIGMA, EPSILON, BALANCE, DECORRELATION = 0.1, 0.01, 1.0, 2.0  # the reference training script's settings


class RecordingBackend(AttentionBackend):
    """Dense attention that keeps every layer's post-RoPE queries and keys of one prefill."""

    name = "recording"

    def __init__(self) -> None:
        self.queries: dict[int, torch.Tensor] = {}

    def prefill(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        cache.append(k, v)
        self.queries[layer] = q
        return causal_attention(q, cache.keys(), cache.values())

    def decode(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        raise NotImplementedError("recording covers prefills only")


@dataclass
class Triples:
    """Per KV head: queries, keys and HATA labels, stacked."""

    q: list[torch.Tensor]
    k: list[torch.Tensor]
    s: list[torch.Tensor]


def record(model: Transformer, prompt: Sequence[int]) -> tuple[dict[int, torch.Tensor], SequenceCache]:
    config = model.config
    backend = RecordingBackend()
    cache = SequenceCache.empty(config.num_hidden_layers, config.num_key_value_heads, config.head_dim, torch.float32)
    model.forward_packed(
        torch.tensor(list(prompt)), torch.arange(len(prompt)), [Segment(cache, 0, len(prompt), backend)]
    )
    return backend.queries, cache


def labels_for(scores: torch.Tensor) -> torch.Tensor:
    """HATA's rank labels for one query's scores over its keys."""
    n = scores.numel()
    top = max(1, int(n * POSITIVE_SHARE))
    order = torch.argsort(scores, descending=True)
    s = torch.full((n,), -1.0)
    s[order[:top]] = torch.linspace(20, 1, top)
    return s


def build_triples(
    recorded: list[tuple[dict[int, torch.Tensor], SequenceCache]],
    layer: int,
    group: int,
    rng: np.random.Generator,
    queries_per_prompt: int = 8,
    negatives_per_positive: int = 2,
) -> Triples:
    """Triples of one layer; negatives are subsampled (all keys of a 16K prompt would not fit)."""
    kv_heads = recorded[0][1].layers[layer].kv_heads
    qs: list[list[torch.Tensor]] = [[] for _ in range(kv_heads)]
    ks: list[list[torch.Tensor]] = [[] for _ in range(kv_heads)]
    ss: list[list[torch.Tensor]] = [[] for _ in range(kv_heads)]
    for queries, cache in recorded:
        keys = cache.layers[layer].keys()
        n = keys.shape[1]
        for j in rng.integers(n // 2, n, queries_per_prompt):
            for head in range(queries[layer].shape[0]):
                kv = head // group
                q = queries[layer][head, j]
                s = labels_for(keys[kv, : j + 1] @ q)
                positive = torch.nonzero(s > 0).squeeze(1)
                negative = torch.nonzero(s < 0).squeeze(1)
                if len(negative) > negatives_per_positive * len(positive):
                    pick = rng.choice(len(negative), negatives_per_positive * len(positive), replace=False)
                    negative = negative[torch.from_numpy(pick)]
                rows = torch.cat([positive, negative])
                qs[kv].append(q.expand(len(rows), -1))
                ks[kv].append(keys[kv, rows])
                ss[kv].append(s[rows])
    return Triples([torch.cat(x) for x in qs], [torch.cat(x) for x in ks], [torch.cat(x) for x in ss])


def train_layer(
    triples: Triples, head_dim: int, rbit: int, epochs: int, steps: int, seed: int
) -> tuple[torch.Tensor, float]:
    """W (kv_heads, head_dim, rbit) for one layer, and the final loss."""
    generator = torch.Generator().manual_seed(seed)
    kv_heads = len(triples.q)
    weight = torch.randn(kv_heads, head_dim, rbit, generator=generator).requires_grad_()
    optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9, weight_decay=1e-6)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.998)
    eye = torch.eye(rbit)
    loss = torch.tensor(0.0)
    for _ in range(epochs * steps):
        optimizer.zero_grad()
        loss = torch.zeros(())
        balance = torch.zeros(())
        for h in range(kv_heads):
            hq = torch.tanh(SIGMA * (triples.q[h] @ weight[h]) / 2)
            hk = torch.tanh(SIGMA * (triples.k[h] @ weight[h]) / 2)
            n = len(triples.s[h])
            loss = loss + EPSILON * (triples.s[h] * (hq - hk).pow(2).sum(-1)).sum() / n
            balance = balance + ((hq + hk).sum(0) / (n * rbit)).pow(2).sum()
        decorrelation = torch.linalg.matrix_norm(weight.transpose(1, 2) @ weight - eye).sum()
        loss = loss + BALANCE * balance + DECORRELATION * decorrelation
        loss.backward()
        optimizer.step()
        scheduler.step()
    return weight.detach(), float(loss.detach())


def hash_recall(
    weight: torch.Tensor,
    recorded: list[tuple[dict[int, torch.Tensor], SequenceCache]],
    layer: int,
    group: int,
    budget: float,
    rng: np.random.Generator,
) -> float:
    """Share of each query's true top-k keys (by q·k) that the hash score's top-k keeps (GQA group sum)."""
    recalls = []
    for queries, cache in recorded:
        keys = cache.layers[layer].keys()
        qs = queries[layer]
        n = keys.shape[1]
        for j in rng.integers(n // 2, n, 4):
            k = max(1, int(budget * (j + 1)))
            for kv in range(keys.shape[0]):
                kk = keys[kv, : j + 1]
                codes_k = (kk @ weight[kv]) > 0
                norms = kk.norm(dim=-1)
                heads = range(kv * group, (kv + 1) * group)
                agree = sum(((qs[h, j] @ weight[kv]) > 0).eq(codes_k).float().mean(-1) for h in heads)
                score = norms * (2 * agree - group)  # ‖k‖·Σ_g(1 − 2·ham/rbit)
                chosen = set(torch.topk(score, k).indices.tolist())
                for h in heads:
                    truth = set(torch.topk(kk @ qs[h, j], k).indices.tolist())
                    recalls.append(len(truth & chosen) / k)
    return float(np.mean(recalls))


def train_hata(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    held_out: Sequence[Sequence[int]],
    rbit: int = 128,
    dense_layers: int = 2,
    epochs: int = 15,
    steps: int = 20,
    budget: float = 0.03,
    seed: int = 0,
    progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> tuple[dict[str, torch.Tensor], dict]:
    config = model.config
    group = config.group_size
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    recorded = [record(model, p) for p in prompts]
    evaluation = [record(model, p) for p in held_out]
    progress(f"recorded {len(prompts)} + {len(held_out)} prefills in {time.perf_counter() - started:.1f}s")
    tensors: dict[str, torch.Tensor] = {}
    report: dict = {"rbit": rbit, "dense_layers": dense_layers, "budget": budget, "layers": {}}
    for layer in range(dense_layers, config.num_hidden_layers):
        began = time.perf_counter()
        triples = build_triples(recorded, layer, group, rng)
        weight, loss = train_layer(triples, config.head_dim, rbit, epochs, steps, seed + layer)
        recall = hash_recall(weight, evaluation, layer, group, budget, rng)
        random_recall = hash_recall(torch.randn_like(weight), evaluation, layer, group, budget, rng)
        tensors[f"layers.{layer}.hash_weight"] = weight.contiguous()
        items = sum(len(s) for s in triples.s)
        report["layers"][layer] = {
            "loss": loss,
            "triples": items,
            "recall": recall,
            "random_recall": random_recall,
            "seconds": time.perf_counter() - began,
        }
        progress(
            f"layer {layer}: {items} triples, loss {loss:.4f}, top-{budget:.0%} recall {recall:.3f} "
            f"(untrained hash {random_recall:.3f}), {time.perf_counter() - began:.1f}s"
        )
    report["seconds"] = time.perf_counter() - started
    return tensors, report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faultline train hata")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--task", choices=("retrieval",), default="retrieval", help="where training prompts come from")
    parser.add_argument("--length", type=int, default=4096, help="prompt length in tokens")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--held-out", type=int, default=4)
    parser.add_argument("--rbit", type=int, default=128)
    parser.add_argument("--dense-layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from services.inference.training.retrieval_task import retrieval_prompts

    model = load_model(args.model)
    prompts = [p.tokens for p in retrieval_prompts(args.length, args.prompts, seed=args.seed + 1000)]
    held_out = [p.tokens for p in retrieval_prompts(args.length, args.held_out, seed=args.seed + 2000)]
    tensors, report = train_hata(
        model, prompts, held_out, rbit=args.rbit, dense_layers=args.dense_layers, seed=args.seed
    )
    metadata = {"rbit": str(args.rbit), "dense_layers": str(args.dense_layers)}
    save_file(tensors, str(args.model / WEIGHTS_FILE), metadata=metadata)
    (args.model / "hata_training.json").write_text(json.dumps(report, indent=2))
    print(f"saved {args.model / WEIGHTS_FILE} in {report['seconds']:.0f}s")
    return 0
