"""The HATA backend: codes in the cache, dense below budget, hash-selected sparse decode, through the engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from services.inference.attention import create_backend
from services.inference.attention.base import decode_attention
from services.inference.engine import Engine, EngineSettings
from services.inference.kv_cache import SequenceCache
from services.inference.main import saved_backend_options
from services.inference.sampling import SamplingParams
from services.inference.shapes import make_random_checkpoint
from services.inference.tokenizer import Tokenizer
from services.inference.weights import load_model

DIM, KV, GROUP, RBIT = 32, 2, 2, 128


def _weights(path: Path, layers: range, dim: int = DIM) -> str:
    torch.manual_seed(0)
    tensors = {f"layers.{i}.hash_weight": torch.randn(KV, dim, RBIT) for i in layers}
    save_file(tensors, str(path), metadata={"rbit": str(RBIT), "dense_layers": "0"})
    return str(path)


def _prefilled(backend, n: int) -> tuple[SequenceCache, torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    keys, values = torch.randn(KV, n, DIM), torch.randn(KV, n, DIM)
    cache = SequenceCache.empty(1, KV, DIM, torch.float32)
    backend.prefill(0, torch.randn(KV * GROUP, n, DIM), keys, values, cache.layers[0])
    return cache, keys, values


def test_codes_and_norms_sit_beside_kv_at_the_expected_overhead(tmp_path: Path) -> None:
    backend = create_backend("hata", weights=_weights(tmp_path / "h.safetensors", range(1)), budget=0.1)
    cache, keys, _ = _prefilled(backend, 300)
    layer = cache.layers[0]
    assert layer.extra("hata_codes").shape == (KV, 300, RBIT // 32)
    assert torch.allclose(layer.extra("hata_norms").float(), keys.norm(dim=-1), rtol=1e-3)
    assert layer.extra_bytes_per_token() == KV * (16 + 2)  # 16 B of code + 2 B of norm per KV head


def test_overhead_is_about_three_and_a_half_percent_for_fp16_head_dim_128(tmp_path: Path) -> None:
    save_file({"layers.0.hash_weight": torch.randn(KV, 128, 128)}, str(tmp_path / "h.safetensors"))
    backend = create_backend("hata", weights=str(tmp_path / "h.safetensors"), dense_layers=0)
    cache = SequenceCache.empty(1, KV, 128, torch.float16).layers[0]
    k = torch.randn(KV, 64, 128, dtype=torch.float16)
    backend.prefill(0, torch.randn(KV, 64, 128, dtype=torch.float16), k, k, cache)
    assert cache.extra_bytes_per_token() / cache.kv_bytes_per_token() == pytest.approx(18 / 512)  # 3.5%


def test_full_budget_equals_dense_and_small_budget_keeps_the_peak(tmp_path: Path) -> None:
    weights = _weights(tmp_path / "h.safetensors", range(1))
    full = create_backend("hata", weights=weights, budget=1.0)
    cache, keys, values = _prefilled(full, 500)
    q = torch.randn(KV * GROUP, 1, DIM)
    new_k, new_v = torch.randn(KV, 1, DIM), torch.randn(KV, 1, DIM)
    out = full.decode(0, q, new_k, new_v, cache.layers[0])
    dense = decode_attention(q, torch.cat([keys, new_k], 1), torch.cat([values, new_v], 1))
    assert torch.allclose(out, dense, atol=1e-5)

    sparse = create_backend("hata", weights=weights, budget=0.05)
    cache, keys, values = _prefilled(sparse, 2000)
    target = keys[:, 1234].repeat_interleave(GROUP, 0)[:, None] * 8  # queries that point at one key per KV head
    out = sparse.decode(0, target, torch.zeros(KV, 1, DIM), torch.zeros(KV, 1, DIM), cache.layers[0])
    dense = decode_attention(
        target, torch.cat([keys, torch.zeros(KV, 1, DIM)], 1), torch.cat([values, torch.zeros(KV, 1, DIM)], 1)
    )
    assert ((out - dense).norm(dim=-1) / dense.norm(dim=-1)).max() < 0.1


def test_engine_serves_hata_requests_with_saved_weights(tmp_path: Path) -> None:
    path = make_random_checkpoint("tiny", tmp_path / "model", max_context=4096)
    _weights(path / "hata.safetensors", range(2), dim=16)
    engine = Engine(load_model(path), Tokenizer(path), EngineSettings(backend_options=saved_backend_options(path)))
    engine.start()
    try:
        prompt = list(range(5, 400))
        dense = engine.submit(prompt, SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)).result()
        hata = engine.submit(
            prompt,
            SamplingParams(max_tokens=5, temperature=0, ignore_eos=True, attention={"backend": "hata", "budget": 1.0}),
        ).result()
        assert hata[1].error is None and hata[0] == dense[0]  # a budget of the whole context is exact
        with pytest.raises(ValueError, match="hash weights"):
            Engine(load_model(path), Tokenizer(path)).submit(prompt, SamplingParams(attention={"backend": "hata"}))
        wrong = _weights(tmp_path / "wrong.safetensors", range(2), dim=DIM)
        with pytest.raises(ValueError, match="this model needs"):  # refused before it could break a batch
            engine.submit(prompt, SamplingParams(attention={"backend": "hata", "weights": wrong}))
    finally:
        engine.stop()


def test_oracle_topk_keeps_the_best_keys_and_window_the_ends() -> None:
    keys, values = torch.randn(KV, 1000, DIM), torch.randn(KV, 1000, DIM)
    q = keys[:, 400].repeat_interleave(GROUP, 0)[:, None] * 3
    exact = decode_attention(q, torch.cat([keys, keys[:, :1]], 1), torch.cat([values, values[:, :1]], 1))
    errors = {}
    for name in ("oracle_topk", "window"):
        cache = SequenceCache.empty(1, KV, DIM, torch.float32).layers[0]
        cache.append(keys, values)
        out = create_backend(name, budget=0.05).decode(0, q, keys[:, :1], values[:, :1], cache)
        errors[name] = float(((out - exact).norm(dim=-1) / exact.norm(dim=-1)).max())
    assert errors["oracle_topk"] < 0.05 < errors["window"]  # the needle at 400 is outside the window
