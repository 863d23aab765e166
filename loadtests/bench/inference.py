"""Inference engine: time to first token and decode tokens/s against ``transformers.generate`` on the
same checkpoint and prompt, and the dense backend's decode step time from 1K to 64K tokens of context
(the baseline the sparse attention backends must beat). Writes a plot beside the JSON.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from loadtests.bench import RESULTS, loglog_plot
from services.inference.attention import create_backend
from services.inference.engine import Engine, EngineSettings
from services.inference.kv_cache import SequenceCache
from services.inference.model import Segment
from services.inference.sampling import SamplingParams
from services.inference.shapes import make_random_checkpoint
from services.inference.tokenizer import Tokenizer
from services.inference.weights import load_model

REPEATS = int(os.environ.get("FAULTLINE_BENCH_REPEATS", "3"))
PROMPT_TOKENS, NEW_TOKENS = 512, 64
CONTEXTS = [1024, 4096, 16384, 65536]
COMMAND = "make bench BENCH=inference  (or: faultline bench inference)"


def _engine_run(engine: Engine, prompt: list[int]) -> tuple[float, float]:
    """(time to first token s, decode tokens/s after it)."""
    start = time.perf_counter()
    handle = engine.submit(prompt, SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True))
    first = None
    for event in handle:
        if first is None and event.token_ids:
            first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None and event.completion_tokens == NEW_TOKENS
    return first - start, (NEW_TOKENS - 1) / (end - first)


def _hf_run(model, prompt: list[int]) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    ids = torch.tensor([prompt])
    kwargs = {"do_sample": False, "pad_token_id": 0}
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
    ttft = time.perf_counter() - start
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, **kwargs)
    total = time.perf_counter() - start
    return ttft, (NEW_TOKENS - 1) / max(total - ttft, 1e-9)


def decode_step_times(model, contexts: list[int]) -> dict[int, dict[str, float]]:  # type: ignore[no-untyped-def]
    """Median time of one decode step (whole model, and attention alone) over a cache of each length."""
    config = model.config
    backend = create_backend("dense")
    out: dict[int, dict[str, float]] = {}
    for length in contexts:
        cache = SequenceCache.empty(
            config.num_hidden_layers, config.num_key_value_heads, config.head_dim, torch.float32
        )
        for layer in cache.layers:  # dense attention's cost does not depend on the values
            layer.append(
                torch.randn(config.num_key_value_heads, length, config.head_dim),
                torch.randn(config.num_key_value_heads, length, config.head_dim),
            )
        steps, attention = [], []
        q = torch.randn(config.num_attention_heads, 1, config.head_dim)
        kv = torch.randn(config.num_key_value_heads, 1, config.head_dim)
        for _ in range(5):
            start = time.perf_counter()
            model.forward_packed(torch.tensor([5]), torch.tensor([length]), [Segment(cache, 0, 1, backend)])
            steps.append(time.perf_counter() - start)
            with torch.inference_mode():
                start = time.perf_counter()
                backend.decode(0, q, kv, kv, cache.layers[0])
                attention.append(time.perf_counter() - start)
        out[length] = {
            "step_ms": statistics.median(steps) * 1e3,
            "attention_ms": statistics.median(attention) * 1e3,
            "kv_bytes": cache.nbytes(),
        }
        print(
            f"  dense decode @ {length:>6} tokens: step {out[length]['step_ms']:8.2f} ms, "
            f"attention/layer {out[length]['attention_ms']:7.3f} ms, KV {cache.nbytes() / 2**20:7.1f} MiB",
            flush=True,
        )
    return out


def run() -> dict:
    from transformers import LlamaForCausalLM

    # One thread: with two, OpenMP stalls whenever the other core is busy (a shared 2-core machine),
    # which measures the neighbours, not the code. Both engines run under the same setting.
    torch.set_num_threads(int(os.environ.get("FAULTLINE_BENCH_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        path = make_random_checkpoint("llama3-8b-like", Path(tmp) / "llama3-8b-like")
        model = load_model(path)
        tokenizer = Tokenizer(path)
        reference = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompt = torch.randint(5, model.config.vocab_size, (PROMPT_TOKENS,), generator=torch.Generator().manual_seed(0))
    prompt_ids = prompt.tolist()
    engine = Engine(model, tokenizer, EngineSettings(max_batch_size=1, prefill_chunk=PROMPT_TOKENS))
    engine.start()
    ours, theirs = [], []
    for i in range(REPEATS):  # interleaved, so that machine noise hits both alike
        ours.append(_engine_run(engine, prompt_ids))
        with torch.inference_mode():
            theirs.append(_hf_run(reference, prompt_ids))
        print(
            f"  round {i + 1}/{REPEATS}: engine TTFT {ours[-1][0] * 1e3:7.1f} ms, {ours[-1][1]:6.1f} tok/s | "
            f"transformers TTFT {theirs[-1][0] * 1e3:7.1f} ms, {theirs[-1][1]:6.1f} tok/s",
            flush=True,
        )
    engine.stop()
    ttft = (statistics.median(t for t, _ in ours), statistics.median(t for t, _ in theirs))
    tps = (statistics.median(r for _, r in ours), statistics.median(r for _, r in theirs))
    contexts = decode_step_times(model, CONTEXTS)
    plot = loglog_plot(
        {
            "decode step (4 layers)": {n: t["step_ms"] for n, t in contexts.items()},
            "attention, one layer": {n: t["attention_ms"] for n, t in contexts.items()},
        },
        RESULTS / "inference_decode_vs_context.png",
        "ms",
        "dense backend, llama3-8b-like shape, CPU",
    )
    print(f"  {PROMPT_TOKENS}-token prompt, {NEW_TOKENS} new tokens, greedy, fp32, batch 1, medians of {REPEATS}:")
    print(
        f"  TTFT: engine {ttft[0] * 1e3:.1f} ms vs transformers {ttft[1] * 1e3:.1f} ms (ratio {ttft[1] / ttft[0]:.2f}x)"
    )
    print(f"  decode: engine {tps[0]:.1f} tok/s vs transformers {tps[1]:.1f} tok/s (ratio {tps[0] / tps[1]:.2f}x)")
    print(f"  plot: {plot}\n  command: {COMMAND}")
    return {
        "command": COMMAND,
        "shape": "llama3-8b-like (4 layers, d=1024, 8 q heads / 2 kv heads, head_dim 128), random weights, fp32",
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": NEW_TOKENS,
        "engine_ttft_ms": ttft[0] * 1e3,
        "transformers_ttft_ms": ttft[1] * 1e3,
        "engine_decode_tokens_per_s": tps[0],
        "transformers_decode_tokens_per_s": tps[1],
        "decode_speed_ratio_engine_vs_transformers": tps[0] / tps[1],
        "ttft_ratio_transformers_vs_engine": ttft[1] / ttft[0],
        "dense_decode_vs_context": contexts,
        "plot": str(plot),
    }
