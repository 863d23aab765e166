"""Chelsea KV clustering: matching inside chunks, size-weighted merges, log-size bias, budgets, outlier heads."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from kernels import hash_encode_reference
from kernels import soft_matching_reference as soft_matching
from services.inference.attention import create_backend
from services.inference.attention.base import decode_attention
from services.inference.attention.chelsea import merge_round
from services.inference.chelsea_calibrate import head_errors, outliers
from services.inference.config import ModelConfig
from services.inference.engine import Engine, EngineSettings
from services.inference.kv_cache import SequenceCache
from services.inference.model import Transformer
from services.inference.sampling import SamplingParams
from services.inference.shapes import SHAPES, make_random_checkpoint
from services.inference.tokenizer import Tokenizer
from services.inference.weights import load_model


def test_odd_tokens_match_even_tokens_of_their_own_chunk() -> None:
    keys = torch.randn(2, 100, 8)
    a, b, similarity = soft_matching(keys, chunk=16)
    assert (a % 2 == 1).all() and (b % 2 == 0).all()
    assert (a // 16 == b // 16).all()  # never across chunks
    assert (similarity <= 1 + 1e-6).all()


def test_merging_duplicate_tokens_with_the_log_size_bias_is_exact() -> None:
    base_k, base_v = torch.randn(2, 64, 16), torch.randn(2, 64, 16)
    keys, values = base_k.repeat_interleave(2, 1), base_v.repeat_interleave(2, 1)  # each token twice, side by side
    size = torch.ones(2, 128)
    k, v, s = merge_round(keys, values, size, merges=64, chunk=16)
    assert k.shape[1] == 64 and torch.allclose(s, torch.full_like(s, 2.0))
    q = torch.randn(4, 1, 16)
    merged = decode_attention(q, k, v, bias=torch.log(s))
    assert torch.allclose(merged, decode_attention(q, keys, values), atol=1e-5)


def test_merge_is_a_size_weighted_mean_and_conserves_tokens() -> None:
    keys, values = torch.randn(1, 32, 4), torch.randn(1, 32, 4)
    size = torch.randint(1, 5, (1, 32)).float()
    k, v, s = merge_round(keys, values, size, merges=10, chunk=8)
    assert s.sum() == size.sum() and k.shape[1] == 22
    assert torch.allclose((k * s[..., None]).sum(1), (keys * size[..., None]).sum(1), atol=1e-4)
    assert torch.allclose((v * s[..., None]).sum(1), (values * size[..., None]).sum(1), atol=1e-4)


def test_prefill_compresses_to_budget_and_keeps_sinks_and_recent() -> None:
    keys, values = torch.randn(2, 1000, 8), torch.randn(2, 1000, 8)
    backend = create_backend("chelsea", budget=0.2, sinks=4, recent=16)
    cache = SequenceCache.empty(1, 2, 8, torch.float32).layers[0]
    backend.prefill(0, torch.randn(4, 1000, 8), keys, values, cache)
    assert cache.length <= 200
    assert torch.equal(cache.keys()[:, :4], keys[:, :4]) and torch.equal(cache.keys()[:, -16:], keys[:, -16:])
    assert cache.extra("chelsea_size").sum(1).tolist() == [1000.0, 1000.0]
    for _ in range(60):  # decode grows the cache; past budget + interval it is compressed back
        backend.decode(0, torch.randn(4, 1, 8), torch.randn(2, 1, 8), torch.randn(2, 1, 8), cache)
    assert cache.length <= int(0.2 * 1060) + 32
    assert cache.extra("chelsea_size").sum(1).tolist() == [1060.0, 1060.0]


def test_splice_replaces_a_run_and_moves_later_entries_down() -> None:
    cache = SequenceCache.empty(1, 1, 2, torch.float32).layers[0]
    keys = torch.arange(20.0).view(1, 10, 2)
    cache.append(keys, -keys)
    cache.write_extra("size", 0, torch.ones(1, 10))
    cache.write_extra("code", 0, torch.arange(10).view(1, 10))
    cache.splice(3, 7, torch.full((1, 2, 2), 99.0), torch.full((1, 2, 2), -99.0), {"size": torch.full((1, 2), 2.0)})
    assert cache.length == 8
    assert cache.keys()[0, :, 0].tolist() == [0, 2, 4, 99, 99, 14, 16, 18]
    assert cache.values()[0, :, 0].tolist() == [0, -2, -4, -99, -99, -14, -16, -18]
    assert cache.extra("size")[0].tolist() == [1, 1, 1, 2, 2, 1, 1, 1]
    assert cache.extra("code")[0, [0, 1, 2, 5, 6, 7]].tolist() == [0, 1, 2, 7, 8, 9]  # moved with their tokens


def test_decode_rounds_merge_only_the_newest_span_and_conserve_tokens() -> None:
    keys, values = torch.randn(2, 4000, 8), torch.randn(2, 4000, 8)
    backend = create_backend("chelsea", budget=0.2, sinks=4, recent=16, interval=32, chunk=16)
    cache = SequenceCache.empty(1, 2, 8, torch.float32).layers[0]
    backend.prefill(0, torch.randn(4, 4000, 8), keys, values, cache)
    after_prefill = cache.keys().clone()
    rounds = cache.stats["chelsea_compressions"]
    for _ in range(200):
        backend.decode(0, torch.randn(4, 1, 8), torch.randn(2, 1, 8), torch.randn(2, 1, 8), cache)
    assert cache.stats["chelsea_compressions"] - rounds >= 4
    assert cache.length <= int(0.2 * 4200) + 32
    assert cache.extra("chelsea_size").sum(1).tolist() == [4200.0, 4200.0]
    # The older middle is left as it was: each round only reaches back one span from the newest tokens.
    untouched = after_prefill.shape[1] - 16 - 2 * 3 * 40
    assert torch.equal(cache.keys()[:, :untouched], after_prefill[:, :untouched])


def test_a_layer_with_outlier_heads_compresses_once_per_interval(tmp_path: Path) -> None:
    (tmp_path / "outliers.json").write_text(json.dumps({"outlier_heads": {"0": [1]}}))
    backend = create_backend("chelsea", budget=0.25, sinks=4, recent=16, outliers=str(tmp_path / "outliers.json"))
    cache = SequenceCache.empty(1, 2, 8, torch.float32).layers[0]
    backend.prefill(0, torch.randn(4, 400, 8), torch.randn(2, 400, 8), torch.randn(2, 400, 8), cache)
    rounds = cache.stats["chelsea_compressions"]
    for _ in range(60):  # the padded cache stays longer than the budget; only real entries count
        backend.decode(0, torch.randn(4, 1, 8), torch.randn(2, 1, 8), torch.randn(2, 1, 8), cache)
    assert cache.stats["chelsea_compressions"] - rounds == 1
    assert cache.extra("chelsea_size").sum(1).tolist() == [460.0, 460.0]


def test_outlier_heads_stay_whole_and_padding_carries_no_weight(tmp_path: Path) -> None:
    (tmp_path / "outliers.json").write_text(json.dumps({"outlier_heads": {"0": [1]}}))
    keys, values = torch.randn(2, 400, 8), torch.randn(2, 400, 8)
    backend = create_backend("chelsea", budget=0.25, sinks=4, recent=16, outliers=str(tmp_path / "outliers.json"))
    cache = SequenceCache.empty(1, 2, 8, torch.float32).layers[0]
    backend.prefill(0, torch.randn(4, 400, 8), keys, values, cache)
    sizes = cache.extra("chelsea_size")
    assert torch.equal(cache.keys()[1][sizes[1] > 0], keys[1])  # head 1 untouched
    assert (sizes[0] > 0).sum() <= 100 and sizes[0].sum() == 400  # head 0 compressed, padded with size 0
    q = torch.randn(4, 1, 8)
    out = decode_attention(q, cache.keys(), cache.values(), bias=torch.log(sizes))
    assert torch.allclose(out[2:], decode_attention(q[2:], keys[1:], values[1:]), atol=1e-5)


def test_a_partial_last_chunk_never_matches_padding() -> None:
    keys = -torch.ones(1, 10, 4)  # all alike
    keys[0, 9] = 1.0  # the last A token points away from every B: its best cosine is negative
    a, b, similarity = soft_matching(keys, chunk=8)
    assert a[0, -1] == 9 and b.max() < 10 and b[0, -1] == 8 and similarity[0, -1] < 0


def test_calibration_marks_the_heads_that_clustering_hurts_most() -> None:
    torch.manual_seed(0)
    config = ModelConfig(model_type="llama", vocab_size=64, max_position_embeddings=1024, **SHAPES["tiny"])  # type: ignore[arg-type]
    errors = head_errors(Transformer(config).eval(), [torch.randint(0, 64, (400,)).tolist()], budget=0.2)
    assert errors.shape == (config.num_hidden_layers, config.num_key_value_heads) and (errors > 0).all()
    worst = divmod(int(errors.argmax()), errors.shape[1])
    assert outliers(errors, share=0.25) == {str(worst[0]): [worst[1]]}
    assert outliers(errors, share=0.04) == {}  # 4% of 4 heads rounds down to none


def test_chelsea_hata_selects_among_merged_entries(tmp_path: Path) -> None:
    save_file(
        {"layers.0.hash_weight": torch.randn(2, 8, 64)}, str(tmp_path / "h.safetensors"), metadata={"dense_layers": "0"}
    )
    keys, values = torch.randn(2, 2000, 8), torch.randn(2, 2000, 8)
    outputs = {}
    for hash_budget in (1.0, 0.25):
        backend = create_backend(
            "chelsea_hata", weights=str(tmp_path / "h.safetensors"), hash_budget=hash_budget, budget=0.2
        )
        cache = SequenceCache.empty(1, 2, 8, torch.float32).layers[0]
        backend.prefill(0, torch.randn(4, 2000, 8), keys, values, cache)
        assert cache.extra("hata_codes").shape[1] == cache.length <= 400  # codes follow the merged entries
        q = keys[[0, 0, 1, 1], 1500][:, None] * 3
        outputs[hash_budget] = backend.decode(0, q, torch.zeros(2, 1, 8), torch.zeros(2, 1, 8), cache)
    hashed = cache
    chelsea = create_backend("chelsea", budget=0.2)
    cache = SequenceCache.empty(1, 2, 8, torch.float32).layers[0]
    chelsea.prefill(0, torch.randn(4, 2000, 8), keys, values, cache)
    reference = chelsea.decode(
        0, keys[[0, 0, 1, 1], 1500][:, None] * 3, torch.zeros(2, 1, 8), torch.zeros(2, 1, 8), cache
    )
    assert torch.allclose(outputs[1.0], reference, atol=1e-5)  # a full hash budget is plain Chelsea
    for _ in range(100):  # decode rounds splice merged entries in: their codes are recomputed, the rest move along
        backend.decode(0, torch.randn(4, 1, 8), torch.randn(2, 1, 8), torch.randn(2, 1, 8), hashed)
    assert hashed.stats["chelsea_compressions"] >= 3
    assert torch.equal(hashed.extra("hata_codes"), hash_encode_reference(hashed.keys(), backend.hata.weights[0]))
    assert ((outputs[0.25] - reference).norm(dim=-1) / reference.norm(dim=-1)).max() < 0.5


def test_engine_reports_held_and_dense_equivalent_kv_bytes(tmp_path: Path) -> None:
    path = make_random_checkpoint("tiny", tmp_path / "m", max_context=4096)
    engine = Engine(load_model(path), Tokenizer(path), EngineSettings(max_batch_size=1))
    params = SamplingParams(
        max_tokens=3, temperature=0, ignore_eos=True, attention={"backend": "chelsea", "budget": 0.2}
    )
    engine.submit(list(range(5, 400)) * 3, params)
    while not engine._running or engine._running[0].output == []:  # through prefill to the first token
        engine.step()
    stats = engine.stats()
    assert stats["kv_cache_bytes"] < 0.3 * stats["kv_cache_dense_equivalent_bytes"]  # ~80% held back
