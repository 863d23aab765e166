"""Needle retrieval accuracy of every attention backend on the project's retrieval checkpoint.

Each prompt is prefilled once with exact attention; every backend then answers the final
query token from a copy of that cache (HATA's codes computed, Chelsea's clustering applied,
as the backend would have after its own prefill). The decode step is where the backends
differ, so this measures each one on identical prompts at a fraction of the cost;
``FAULTLINE_BENCH_STREAM=N`` decodes the last N prompt tokens one by one before the question.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from pathlib import Path

import torch

from loadtests.bench import RESULTS
from services.inference.attention import create_backend
from services.inference.attention.dense import DenseBackend
from services.inference.kv_cache import SequenceCache
from services.inference.main import saved_backend_options
from services.inference.model import Segment, Transformer
from services.inference.weights import load_model

CHECKPOINT = Path(
    os.environ.get(
        "FAULTLINE_RETRIEVAL_MODEL", Path(__file__).parents[2] / "services/inference/checkpoints/retrieval-lm"
    )
)
LENGTHS = [int(x) for x in os.environ.get("FAULTLINE_BENCH_LENGTHS", "4096,8192,16384").split(",")]
PROMPTS = int(os.environ.get("FAULTLINE_BENCH_PROMPTS", "40"))
# The last STREAM prompt tokens go through decode steps one at a time, so that what a backend does
# while decoding (Chelsea's compression rounds) acts on the cache before the question is answered.
STREAM = int(os.environ.get("FAULTLINE_BENCH_STREAM", "0"))
COMMAND = "make bench BENCH=retrieval  (or: faultline bench retrieval)"


def configurations(checkpoint: Path) -> dict[str, dict[str, object]]:
    saved = saved_backend_options(checkpoint)
    hata = saved.get("hata", {})
    configs: dict[str, dict[str, object]] = {"dense": {"backend": "dense"}}
    for budget in (0.015, 0.03, 0.06):
        configs[f"hata@{budget:.1%}"] = {"backend": "hata", "budget": budget, **hata}
        configs[f"oracle_topk@{budget:.1%}"] = {"backend": "oracle_topk", "budget": budget}
        configs[f"window@{budget:.1%}"] = {"backend": "window", "budget": budget}
    for budget in (0.2, 0.1):
        configs[f"chelsea@{budget:.0%}"] = {"backend": "chelsea", "budget": budget, **saved.get("chelsea", {})}
        configs[f"window@{budget:.0%}"] = {"backend": "window", "budget": budget}
    configs["chelsea_hata@20%x15%"] = {
        "backend": "chelsea_hata",
        "budget": 0.2,
        "hash_budget": 0.15,
        **hata,
        **saved.get("chelsea", {}),
    }
    configs["certified@eps0.01"] = {"backend": "topk_certified", "tv_budget": 0.01}
    configs["certified@eps0.001"] = {"backend": "topk_certified", "tv_budget": 0.001}
    configs["certified_search+hata@eps0.01"] = {
        "backend": "topk_certified",
        "tv_budget": 0.01,
        "mode": "search",
        "candidates": "hata",
        "budget": 0.03,
        **hata,
    }
    return configs


def prefilled(model: Transformer, tokens: list[int]) -> SequenceCache:
    config = model.config
    cache = SequenceCache.empty(config.num_hidden_layers, config.num_key_value_heads, config.head_dim, torch.float32)
    model.forward_packed(
        torch.tensor(tokens), torch.arange(len(tokens)), [Segment(cache, 0, len(tokens), DenseBackend())]
    )
    return cache


def adopted(backend, cache: SequenceCache) -> SequenceCache:  # type: ignore[no-untyped-def]
    """A copy of the dense cache as ``backend`` would hold it after its own prefill."""
    cache = copy.deepcopy(cache)
    for layer, layer_cache in enumerate(cache.layers):
        backend.adopt(layer, layer_cache)
    return cache


def run() -> dict:
    from services.inference.training.retrieval_task import retrieval_prompts

    torch.set_num_threads(int(os.environ.get("FAULTLINE_BENCH_THREADS", "1")))
    model = load_model(CHECKPOINT)
    configs = configurations(CHECKPOINT)
    if only := os.environ.get("FAULTLINE_BENCH_CONFIGS"):  # e.g. "dense,chelsea": names starting with these
        configs = {name: c for name, c in configs.items() if name.startswith(tuple(only.split(",")))}
    backends = {
        name: create_backend(**{"name": c["backend"], **{k: v for k, v in c.items() if k != "backend"}})
        for name, c in configs.items()
    }
    accuracy: dict[str, dict[int, float]] = {name: {} for name in configs}
    decode_ms: dict[str, list[float]] = {name: [] for name in configs}
    certified: dict[str, dict[str, list[float]]] = {}
    for length in LENGTHS:
        hits = dict.fromkeys(configs, 0)
        for prompt in retrieval_prompts(length, PROMPTS, seed=0):
            streamed = prompt.tokens[-1 - STREAM : -1]
            base = prefilled(model, prompt.tokens[: -1 - STREAM])
            for name, backend in backends.items():
                cache = adopted(backend, base)
                for offset, token in enumerate(streamed):
                    position = length - 1 - STREAM + offset
                    model.forward_packed(
                        torch.tensor([token]), torch.tensor([position]), [Segment(cache, 0, 1, backend)]
                    )
                start = time.perf_counter()
                logits = model.forward_packed(
                    torch.tensor(prompt.tokens[-1:]), torch.tensor([length - 1]), [Segment(cache, 0, 1, backend)]
                )
                decode_ms[name].append((time.perf_counter() - start) * 1e3)
                hits[name] += int(logits[0].argmax()) == prompt.answer
                if name.startswith("certified"):
                    stats = certified.setdefault(name, {"tv_max": [], "scored": [], "kept": []})
                    stats["tv_max"].append(cache.stats["tv_max"])
                    stats["scored"].append(cache.stats["keys_scored"] / cache.stats["keys_total"])
                    stats["kept"].append(cache.stats["keys_kept"] / cache.stats["keys_total"])
        for name in configs:
            accuracy[name][length] = hits[name] / PROMPTS
        print(
            f"  {length:>6} tokens, {PROMPTS} prompts: "
            + ", ".join(f"{name} {accuracy[name][length]:.2f}" for name in configs),
            flush=True,
        )
    result = {
        "command": COMMAND,
        "checkpoint": str(CHECKPOINT),
        "prompts_per_length": PROMPTS,
        "streamed_decode_tokens": STREAM,
        "accuracy": accuracy,
        "decode_step_ms_median": {name: statistics.median(t) for name, t in decode_ms.items()},
        "certified": {
            name: {
                "tv_max_over_prompts": max(v["tv_max"]),
                "tv_max_median": statistics.median(v["tv_max"]),
                "mean_keys_kept_fraction": statistics.mean(v["kept"]),
                "mean_keys_scored_fraction": statistics.mean(v["scored"]),
            }
            for name, v in certified.items()
        },
    }
    for name, row in result["certified"].items():
        print(
            f"  {name}: k/n {row['mean_keys_kept_fraction']:.4f}, keys scored {row['mean_keys_scored_fraction']:.3f} "
            f"({1 / row['mean_keys_scored_fraction']:.1f}x fewer than n), TV max {row['tv_max_over_prompts']:.4f}, "
            f"decode {result['decode_step_ms_median'][name]:.1f} ms vs oracle_topk@3.0% "
            f"{result['decode_step_ms_median']['oracle_topk@3.0%']:.1f} ms"
        )
    _plot(accuracy, RESULTS / f"retrieval_accuracy{'_' + only if only else ''}.png")
    print(f"  command: {COMMAND}")
    return result


def _plot(accuracy: dict[str, dict[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = list(accuracy)
    lengths = sorted(next(iter(accuracy.values())))
    width = 0.8 / len(lengths)
    for i, length in enumerate(lengths):
        ax.bar(
            [x + i * width for x in range(len(names))],
            [accuracy[n][length] for n in names],
            width,
            label=f"{length} tokens",
        )
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("needle accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
