"""Decode-step attention time against context length, dense vs the sparse backends, one layer of
Llama-3-8B's attention geometry (8 query heads, 2 KV heads, head_dim 128), fp32 on this CPU.

Timing only needs the shapes, so the caches hold random keys and values and HATA random hash
weights (accuracy is measured on trained models by ``bench retrieval``). Each backend is timed
on the same cache contents in the same run; the ratios are what to read.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from loadtests.bench import RESULTS, loglog_plot
from services.inference.attention import create_backend
from services.inference.kv_cache import LayerCache

HEADS, KV_HEADS, DIM, RBIT = 8, 2, 128, 128
CONTEXTS = [int(x) for x in os.environ.get("FAULTLINE_BENCH_CONTEXTS", "4096,16384,65536,131072").split(",")]
BUDGET = 0.03  # HATA's share of the context (1.5–3% in the paper)
CHELSEA_BUDGET = 0.2
COMMAND = "make bench BENCH=attention  (or: faultline bench attention)"


def _cache(keys: torch.Tensor, values: torch.Tensor) -> LayerCache:
    cache = LayerCache(KV_HEADS, DIM, torch.float32, torch.device("cpu"))
    cache.append(keys, values)
    return cache


def _time(cases: dict[str, tuple[object, LayerCache]], repeats: int = 7, steps: int = 64) -> dict[str, float]:
    """Median over repeats of the mean ms per decode step over ``steps`` steps of each (backend, cache).

    A window of steps, not one call, so that Chelsea's compression rounds (one every ~interval
    steps) are paid in the figure; windows interleave so machine drift hits all backends alike.
    """
    q, kv = torch.randn(HEADS, 1, DIM), torch.randn(KV_HEADS, 1, DIM)
    times: dict[str, list[float]] = {name: [] for name in cases}
    with torch.inference_mode():
        for _ in range(repeats + 1):
            for name, (backend, cache) in cases.items():
                start = time.perf_counter()
                for _ in range(steps):
                    backend.decode(1, q, kv, kv, cache)  # type: ignore[attr-defined]
                times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t[1:]) * 1e3 for name, t in times.items()}  # the first window warms up


def run() -> dict:
    torch.set_num_threads(int(os.environ.get("FAULTLINE_BENCH_THREADS", "1")))
    torch.manual_seed(0)
    results: dict[str, dict[int, float]] = {"dense": {}, "hata": {}, "chelsea": {}, "chelsea_hata": {}}
    memory: dict[int, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "hata.safetensors"
        hash_weight = {"layers.1.hash_weight": torch.randn(KV_HEADS, DIM, RBIT)}  # random: timing needs only shapes
        save_file(hash_weight, str(weights), metadata={"dense_layers": "1"})
        backends = {
            "dense": create_backend("dense"),
            "hata": create_backend("hata", weights=str(weights), budget=BUDGET),
            "chelsea": create_backend("chelsea", budget=CHELSEA_BUDGET),
            # Cluster to 20%, then attend to the hash's best 15% of the entries: ~3% of the context.
            "chelsea_hata": create_backend(
                "chelsea_hata", weights=str(weights), budget=CHELSEA_BUDGET, hash_budget=BUDGET / CHELSEA_BUDGET
            ),
        }
        for n in CONTEXTS:
            keys, values = torch.randn(KV_HEADS, n, DIM), torch.randn(KV_HEADS, n, DIM)
            # Each backend takes over a dense cache as it would hold it after its own prefill.
            hashed, clustered, both = _cache(keys, values), _cache(keys, values), _cache(keys, values)
            backends["hata"].adopt(1, hashed)
            backends["chelsea"].adopt(1, clustered)
            backends["chelsea_hata"].adopt(1, both)
            timed = _time(
                {
                    "dense": (backends["dense"], _cache(keys, values)),
                    "hata": (backends["hata"], hashed),
                    "chelsea": (backends["chelsea"], clustered),
                    "chelsea_hata": (backends["chelsea_hata"], both),
                }
            )
            for name, ms in timed.items():
                results[name][n] = ms
            memory[n] = {
                "dense": _cache(keys, values).nbytes(),
                "hata": hashed.nbytes(),
                "chelsea": clustered.nbytes(),
                "chelsea_hata": both.nbytes(),
            }
            print(
                f"  {n:>7} tokens: dense {results['dense'][n]:8.2f} ms | "
                f"hata@{BUDGET:.0%} {results['hata'][n]:7.2f} ms "
                f"({results['dense'][n] / results['hata'][n]:5.1f}x) | chelsea@{CHELSEA_BUDGET:.0%} "
                f"{results['chelsea'][n]:7.2f} ms ({results['dense'][n] / results['chelsea'][n]:5.1f}x) | "
                f"both {results['chelsea_hata'][n]:6.2f} ms ({results['dense'][n] / results['chelsea_hata'][n]:5.1f}x)",
                flush=True,
            )
    for n, held in memory.items():
        print(
            f"  KV memory at {n:>7} tokens (fp32, one layer): "
            + ", ".join(f"{name} {b / 2**20:.1f} MiB ({b / held['dense'] - 1:+.1%})" for name, b in held.items())
        )
    plot = loglog_plot(
        results,
        RESULTS / "attention_decode_vs_context.png",
        "decode attention, one layer (ms)",
        "8 q / 2 kv heads, head_dim 128, fp32, CPU 1 thread",
    )
    code_bytes, norm_bytes, key_bytes = RBIT // 8, 2, DIM * 2
    print(
        f"  bytes read to score a key: HATA {code_bytes + norm_bytes} B (code + fp16 norm) vs a dense fp16 key "
        f"{key_bytes} B ({key_bytes / (code_bytes + norm_bytes):.0f}x less); fp32 here: {DIM * 4} B"
    )
    print(f"  plot: {plot}\n  command: {COMMAND}")
    return {
        "command": COMMAND,
        "shape": f"{HEADS} query heads, {KV_HEADS} KV heads, head_dim {DIM}, fp32, one layer, 1 thread",
        "timing": "median of 7 windows of the mean ms per step over 64 decode steps (compression rounds included)",
        "hata_budget": BUDGET,
        "chelsea_budget": CHELSEA_BUDGET,
        "decode_attention_ms": results,
        "kv_bytes_one_layer": memory,
        "speedup_vs_dense": {
            name: {n: results["dense"][n] / t for n, t in times.items()} for name, times in results.items()
        },
        "hata_score_bytes_per_key": code_bytes + norm_bytes,
        "dense_fp16_bytes_per_key": key_bytes,
        "plot": str(plot),
    }
