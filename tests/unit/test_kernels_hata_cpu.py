"""The fused CPU kernels of HATA's decode path against the PyTorch references they replace."""

from __future__ import annotations

import pytest
import torch

from kernels import (
    FORCED_SCORE,
    hamming_score_cpu,
    hamming_score_reference,
    hash_top_positions_cpu,
    sparse_attention_cpu,
    sparse_decode_attention_reference,
    top_positions_cpu,
)


def _cache_slice(buffer: torch.Tensor, n: int) -> torch.Tensor:
    """What ``LayerCache.keys()`` hands a backend: the first n rows of a larger buffer, strided per head."""
    return buffer[:, :n]


@pytest.mark.parametrize(("group", "rbit", "n"), [(1, 64, 7), (4, 128, 1000), (8, 128, 33), (2, 256, 129)])
@pytest.mark.parametrize(("sink", "recent"), [(0, 0), (2, 3), (50, 50)])
def test_hamming_score_is_bit_identical_to_the_reference(group: int, rbit: int, n: int, sink: int, recent: int) -> None:
    words = rbit // 32
    q = torch.randint(-(2**31), 2**31 - 1, (2, group, words), dtype=torch.int32)
    k = _cache_slice(torch.randint(-(2**31), 2**31 - 1, (2, 2 * n + 5, words), dtype=torch.int32), n)
    norms = torch.rand(2, n).half()
    expected = hamming_score_reference(q, k.contiguous(), norms, rbit, sink, recent)
    assert torch.equal(hamming_score_cpu(q, k, norms, rbit, sink, recent), expected)


def test_hamming_score_of_a_query_against_itself_is_the_group_size_times_the_norm() -> None:
    codes = torch.randint(-(2**31), 2**31 - 1, (1, 5, 4), dtype=torch.int32)
    q = codes[:, 2:3].expand(1, 3, 4)  # three query heads with key 2's code
    scores = hamming_score_cpu(q, codes, torch.full((1, 5), 2.0).half(), 128)
    assert scores[0, 2] == 3 * 2.0 and bool((scores[0, [0, 1, 3, 4]] < 6.0).all())


@pytest.mark.parametrize("n", [10, 999, 5000])
@pytest.mark.parametrize("k", [1, 7, 64])
def test_top_positions_are_the_exact_top_k_in_ascending_order(n: int, k: int) -> None:
    scores = torch.randn(3, n)
    scores[1, : n // 2] = FORCED_SCORE  # forced sinks crowd the top
    chosen = top_positions_cpu(scores, k)
    assert chosen.shape == (3, min(k, n))
    for row in range(3):
        assert bool((chosen[row].diff() > 0).all())
        best = torch.topk(scores[row], min(k, n)).values
        assert torch.equal(torch.sort(scores[row, chosen[row]]).values, torch.sort(best).values)


def test_top_positions_break_ties_towards_earlier_positions_and_survive_a_flat_row() -> None:
    # A flat row defeats the sampled threshold (every score equals it): the exact fallback must still hold.
    flat = torch.zeros(1, 4096)
    assert torch.equal(top_positions_cpu(flat, 100)[0], torch.arange(100))
    steps = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.5]])
    assert top_positions_cpu(steps, 2).tolist() == [[1, 2]]


def test_top_positions_with_a_heavy_tail_the_sample_misses() -> None:
    scores = torch.zeros(1, 8192)
    scores[0, 5::1024] = 10.0  # eight spikes, all off the sample's stride
    assert top_positions_cpu(scores, 8)[0].tolist() == list(range(5, 8192, 1024))


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(8, 2, 128), (4, 4, 64), (12, 3, 40)])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("budget", [60, 63, 3])  # whole steps of four rows, a remainder, only the remainder
def test_sparse_attention_matches_the_reference_on_cache_slices(
    heads: int, kv_heads: int, dim: int, with_bias: bool, budget: int
) -> None:
    n = 700
    keys = _cache_slice(torch.randn(kv_heads, 1024, dim), n)
    values = _cache_slice(torch.randn(kv_heads, 1024, dim), n)
    q = torch.randn(heads, dim) * 2
    indices = torch.stack([torch.sort(torch.randperm(n)[:budget]).values for _ in range(kv_heads)])
    bias = torch.rand(kv_heads, n).log() if with_bias else None
    expected = sparse_decode_attention_reference(q, keys, values, indices, bias=bias)
    assert torch.allclose(sparse_attention_cpu(q, keys, values, indices, bias=bias), expected, atol=1e-5)


def test_sparse_attention_over_every_key_is_dense_attention() -> None:
    keys, values, q = torch.randn(2, 300, 32), torch.randn(2, 300, 32), torch.randn(4, 32)
    every = torch.arange(300).expand(2, -1)
    logits = torch.einsum("hgd,hnd->hgn", q.view(2, 2, 32), keys) / 32**0.5
    dense = (torch.softmax(logits, -1) @ values).reshape(4, 32)
    assert torch.allclose(sparse_attention_cpu(q, keys, values, every), dense, atol=1e-5)


def test_sparse_attention_on_a_half_precision_cache_takes_the_reference_path() -> None:
    keys, values = torch.randn(2, 50, 16).bfloat16(), torch.randn(2, 50, 16).bfloat16()
    q, indices = torch.randn(4, 16).bfloat16(), torch.arange(0, 50, 5).expand(2, -1)
    out = sparse_attention_cpu(q, keys, values, indices)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, sparse_decode_attention_reference(q, keys, values, indices))


@pytest.mark.parametrize(("n", "k", "sink", "recent"), [(5000, 150, 4, 64), (300, 299, 0, 0), (64, 64, 0, 0)])
def test_fused_hash_selection_is_scoring_then_selecting(n: int, k: int, sink: int, recent: int) -> None:
    q = torch.randint(-(2**31), 2**31 - 1, (2, 4, 4), dtype=torch.int32)
    codes = _cache_slice(torch.randint(-(2**31), 2**31 - 1, (2, n + 100, 4), dtype=torch.int32), n)
    norms = torch.rand(2, n).half()
    expected = top_positions_cpu(hamming_score_cpu(q, codes, norms, 128, sink, recent), k)
    assert torch.equal(hash_top_positions_cpu(q, codes, norms, 128, k, sink, recent), expected)
