"""HATA kernels: each Triton kernel (run by the Triton interpreter on CPU tensors) against its PyTorch reference,
plus semantic checks of the references (the hash score ranks keys like q·k; sparse decode is attention)."""

import math
from collections.abc import Callable

import pytest
import torch

from kernels import (
    hamming_score,
    hamming_score_reference,
    hash_encode,
    hash_encode_reference,
    hash_encode_with_norms,
    hash_encode_with_norms_reference,
    sparse_decode_attention,
    sparse_decode_attention_reference,
)
from tests.unit.triton_interpreter import require_interpreter

require_interpreter()

LENGTHS = [1, 7, 33, 257, 1000]
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# (atol, rtol) for attention outputs: the kernel rounds probabilities to the value dtype, then the output.
ATTN_TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (3e-3, 3e-3), torch.bfloat16: (2e-2, 2e-2)}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _small_ints(shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Integers in [-4, 4]: exact in every float dtype, so x @ W is exact whatever the summation order."""
    return torch.randint(-4, 5, shape, generator=gen).to(dtype)


def _random_codes(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randint(-(2**31), 2**31, shape, generator=gen, dtype=torch.int64).to(torch.int32)


def _unpack(codes: torch.Tensor) -> torch.Tensor:
    """int32 words (..., words) -> bool bits (..., 32 * words), bit j of word w at 32 * w + j."""
    bits = (codes.to(torch.int64)[..., None] >> torch.arange(32)) & 1
    return bits.flatten(-2).bool()


# ---------------------------------------------------------------- encode


@pytest.mark.parametrize(
    ("n", "dtype", "weight_dtype", "group", "rbit", "dim"),
    [
        (1, torch.float16, torch.float16, 1, 128, 128),
        (7, torch.bfloat16, torch.bfloat16, 4, 64, 64),
        (33, torch.float32, torch.float32, 8, 32, 64),
        (257, torch.float16, torch.bfloat16, 4, 128, 128),
        (1000, torch.bfloat16, torch.float32, 1, 128, 64),
        (33, torch.float32, torch.bfloat16, 1, 96, 48),  # dim not a power of two: padded, masked
    ],
)
def test_encode_matches_reference_exactly(
    n: int, dtype: torch.dtype, weight_dtype: torch.dtype, group: int, rbit: int, dim: int
) -> None:
    gen = _gen(n + rbit)
    weight = _small_ints((2, dim, rbit), gen, weight_dtype)
    x = _small_ints((2 * group, n, dim), gen, dtype)  # query-like rows: group rows per weight head
    codes, norms = hash_encode_with_norms(x, weight)
    ref_codes, ref_norms = hash_encode_with_norms_reference(x, weight)
    assert codes.dtype == torch.int32 and codes.shape == (2 * group, n, rbit // 32)
    assert norms.dtype == torch.float32 and norms.shape == (2 * group, n)
    assert torch.equal(codes, ref_codes)
    assert torch.equal(hash_encode(x, weight), ref_codes)
    assert torch.equal(hash_encode_reference(x, weight), ref_codes)
    torch.testing.assert_close(norms, ref_norms, atol=0, rtol=1e-6)


def test_encode_bit_order_and_sign_bit() -> None:
    dim, rbit = 16, 64
    x = torch.zeros(1, 1, dim)
    x[0, 0, 0] = 1.0
    for bit in (0, 5, 31, 32, 63):
        weight = torch.full((1, dim, rbit), -1.0)
        weight[0, 0, bit] = 1.0  # only projection `bit` is positive
        expected = torch.zeros(rbit // 32, dtype=torch.int64)
        expected[bit // 32] = 1 << (bit % 32)
        expected = torch.where(expected >= 2**31, expected - 2**32, expected).to(torch.int32)  # bit 31 -> INT32_MIN
        assert torch.equal(hash_encode_reference(x, weight)[0, 0], expected)
        assert torch.equal(hash_encode(x, weight)[0, 0], expected)
    # A zero projection is not > 0: no bit.
    assert torch.equal(hash_encode(x, torch.zeros(1, dim, rbit)), torch.zeros(1, 1, 2, dtype=torch.int32))


def test_encode_gaussian_differs_only_at_rounding_level() -> None:
    """With real-valued data the two summation orders may flip a bit whose projection is ~0, and nothing else."""
    gen = _gen(1)
    x = torch.randn(4, 257, 128, generator=gen)
    weight = torch.randn(2, 128, 128, generator=gen)
    diff = _unpack(hash_encode(x, weight)) != _unpack(hash_encode_reference(x, weight))
    projection = torch.bmm(x.double(), weight.double().repeat_interleave(2, dim=0))
    assert bool((projection.abs()[diff] < 1e-4).all())
    # And the packing agrees with the sign of the exact projection.
    assert bool(((projection > 0) == _unpack(hash_encode_reference(x, weight)))[projection.abs() > 1e-4].all())


def test_encode_reads_strided_cache_layout() -> None:
    """A (n, heads, dim) cache passed as a (heads, n, dim) view is read in place."""
    gen = _gen(2)
    cache = _small_ints((33, 2, 64), gen, torch.float16)
    weight = _small_ints((2, 64, 64), gen, torch.float16)
    x = cache.transpose(0, 1)
    assert not x.is_contiguous()
    codes, norms = hash_encode_with_norms(x, weight)
    ref_codes, ref_norms = hash_encode_with_norms_reference(x.contiguous(), weight)
    assert torch.equal(codes, ref_codes)
    torch.testing.assert_close(norms, ref_norms, atol=0, rtol=1e-6)


@pytest.mark.parametrize("fn", [hash_encode, hash_encode_reference, hash_encode_with_norms])
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "x_dtype", "match"),
    [
        ((2, 4, 16), (2, 16), torch.float32, "weight must be"),
        ((2, 16), (2, 16, 32), torch.float32, "x must be"),
        ((2, 4, 16), (2, 8, 32), torch.float32, "dim"),
        ((3, 4, 16), (2, 16, 32), torch.float32, "multiple of weight heads"),
        ((2, 4, 16), (2, 16, 48), torch.float32, "rbit"),
        ((2, 4, 16), (2, 16, 32), torch.int32, "fp16/bf16/fp32"),
    ],
)
def test_encode_rejects_bad_inputs(
    fn: Callable[..., object], x_shape: tuple[int, ...], w_shape: tuple[int, ...], x_dtype: torch.dtype, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        fn(torch.zeros(x_shape, dtype=x_dtype), torch.zeros(w_shape))


# ---------------------------------------------------------------- score


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize(("group", "rbit"), [(1, 32), (4, 128), (8, 64)])
def test_score_matches_reference_exactly(n: int, group: int, rbit: int) -> None:
    gen = _gen(n * group)
    q_codes = _random_codes((2, group, rbit // 32), gen)
    k_codes = _random_codes((2, n, rbit // 32), gen)
    k_norms = (torch.rand(2, n, generator=gen) * 8).half()
    for sink, recent in [(0, 0), (3, 16), (64, 64)]:
        scores = hamming_score(q_codes, k_codes, k_norms, rbit, sink, recent)
        ref = hamming_score_reference(q_codes, k_codes, k_norms, rbit, sink, recent)
        assert scores.dtype == torch.float32 and scores.shape == (2, n)
        assert torch.equal(scores, ref)
        forced = (torch.arange(n) < sink) | (torch.arange(n) >= n - recent)
        assert bool(torch.isinf(ref[:, forced]).all()) and bool(torch.isfinite(ref[:, ~forced]).all())


def test_score_formula_by_hand() -> None:
    q_codes = torch.tensor([[[0], [0x000000FF]]], dtype=torch.int32)  # one KV head, group 2, rbit 32
    k_codes = torch.tensor([[[0], [0x0000FFFF], [-1]]], dtype=torch.int32)
    k_norms = torch.tensor([[2.0, 3.0, 0.5]])
    # Hamming sums over the group: 0 + 8, 16 + 8, 32 + 24.
    expected = k_norms * (2 - 2 * torch.tensor([[8.0, 24.0, 56.0]]) / 32)
    for fn in (hamming_score, hamming_score_reference):
        assert torch.equal(fn(q_codes, k_codes, k_norms, 32), expected)


def test_score_reads_strided_inputs() -> None:
    gen = _gen(3)
    k_codes = _random_codes((33, 2, 4), gen).transpose(0, 1)  # (n, kv_heads, words) cache layout
    k_norms = torch.rand(33, 2, generator=gen).t()
    q_codes = _random_codes((2, 4, 4), gen)
    expected = hamming_score_reference(q_codes, k_codes.contiguous(), k_norms.contiguous(), 128, 1, 2)
    assert torch.equal(hamming_score(q_codes, k_codes, k_norms, 128, 1, 2), expected)


@pytest.mark.parametrize("fn", [hamming_score, hamming_score_reference])
def test_score_rejects_bad_inputs(fn: Callable[..., object]) -> None:
    q = torch.zeros(2, 4, 4, dtype=torch.int32)
    k = torch.zeros(2, 9, 4, dtype=torch.int32)
    norms = torch.zeros(2, 9)
    for args, match in [
        ((q, k, norms, 64), "rbit"),
        ((q.long(), k, norms, 128), "int32"),
        ((q, k[:1], norms[:1], 128), "does not match"),
        ((q, k, norms[:, :3], 128), "k_norms"),
        ((q, k, norms, 128, -1), "sink"),
    ]:
        with pytest.raises(ValueError, match=match):
            fn(*args)


def _correlated_keys(gen: torch.Generator, n: int, dim: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries near one direction and keys whose cosine with it is uniform in [-1, 1], norms in [0.5, 1.5]."""
    base = torch.nn.functional.normalize(torch.randn(dim, generator=gen), dim=0)
    queries = base + 0.3 * torch.randn(group, dim, generator=gen) / math.sqrt(dim)
    cos = torch.rand(n, 1, generator=gen) * 2 - 1
    noise = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1)
    keys = (cos * base + (1 - cos**2).sqrt() * noise) * (0.5 + torch.rand(n, 1, generator=gen))
    return queries, keys


@pytest.mark.parametrize("group", [1, 4])
def test_hash_score_ranks_like_dot_product(group: int) -> None:
    """Random-hyperplane codes (HATA's untrained W): ‖k‖·cos estimate tracks Σ_g q_g·k and its top-k."""
    gen = _gen(4)
    dim, n, rbit, top = 128, 1000, 128, 32
    queries, keys = _correlated_keys(gen, n, dim, group)
    weight = torch.randn(1, dim, rbit, generator=gen)
    k_codes, k_norms = hash_encode_with_norms_reference(keys[None], weight)
    q_codes = hash_encode_reference(queries[None], weight).view(1, group, rbit // 32)
    estimate = hamming_score_reference(q_codes, k_codes, k_norms, rbit)[0]
    exact = (queries @ keys.T).sum(0)

    assert torch.corrcoef(torch.stack([estimate, exact]))[0, 1] > 0.95
    exact_top = set(exact.topk(top).indices.tolist())
    assert len(exact_top & set(estimate.topk(top).indices.tolist())) >= 0.5 * top
    assert len(exact_top & set(estimate.topk(3 * top).indices.tolist())) >= 0.85 * top


# ---------------------------------------------------------------- sparse decode


def _decode_inputs(
    gen: torch.Generator, kv_heads: int, group: int, n: int, dim: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q = torch.randn(kv_heads * group, dim, generator=gen).to(dtype)
    k = torch.randn(kv_heads, n, dim, generator=gen).to(dtype)
    v = torch.randn(kv_heads, n, dim, generator=gen).to(dtype)
    return q, k, v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("group", "n", "budget", "with_bias"),
    [(1, 1, 1, False), (4, 7, 7, True), (8, 33, 1, False), (4, 257, 100, True), (1, 1000, 1000, False)],
)
def test_sparse_decode_matches_reference(dtype: torch.dtype, group: int, n: int, budget: int, with_bias: bool) -> None:
    gen = _gen(n + budget)
    q, k, v = _decode_inputs(gen, 2, group, n, 64, dtype)
    indices = torch.stack([torch.randperm(n, generator=gen)[:budget] for _ in range(2)])
    bias = torch.randn(2, n, generator=gen) if with_bias else None
    out = sparse_decode_attention(q, k, v, indices, 0.2, bias)
    ref = sparse_decode_attention_reference(q, k, v, indices, 0.2, bias)
    assert out.dtype == dtype and out.shape == (2 * group, 64)
    atol, rtol = ATTN_TOL[dtype]
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)


def test_sparse_decode_full_budget_is_dense_attention() -> None:
    gen = _gen(5)
    q, k, v = _decode_inputs(gen, 2, 4, 257, 64, torch.float32)
    dense = torch.nn.functional.scaled_dot_product_attention(
        q.view(2, 4, 1, 64), k[:, None], v[:, None]
    )  # (kv_heads, group, 1, dim): the group broadcasts over one KV head
    indices = torch.arange(257).flip(0).expand(2, 257)  # order does not matter
    for fn in (sparse_decode_attention, sparse_decode_attention_reference):
        torch.testing.assert_close(fn(q, k, v, indices), dense.view(8, 64), atol=1e-5, rtol=1e-5)


def test_sparse_decode_bias_is_log_multiplicity() -> None:
    """A token listed twice weighs the same as a token listed once with bias log 2 (merged-cluster correction)."""
    gen = _gen(6)
    q, k, v = _decode_inputs(gen, 1, 4, 33, 32, torch.float32)
    bias = torch.zeros(1, 33)
    bias[0, 5] = math.log(2.0)
    twice = torch.tensor([[5, 5, 9, 20]])
    once = torch.tensor([[5, 9, 20]])
    expected = sparse_decode_attention_reference(q, k, v, once, bias=bias)
    for fn in (sparse_decode_attention, sparse_decode_attention_reference):
        torch.testing.assert_close(fn(q, k, v, twice), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_sparse_decode_padding_and_masking(index_dtype: torch.dtype) -> None:
    gen = _gen(7)
    q, k, v = _decode_inputs(gen, 2, 4, 33, 64, torch.float16)
    padded = torch.tensor([[3, -1, 30, 33], [-1, -1, -1, -1]], dtype=index_dtype)  # 33 == n: out of range
    bias = torch.zeros(2, 33)
    bias[0, 30] = float("-inf")  # masks token 30
    out = sparse_decode_attention(q, k, v, padded, bias=bias)
    ref = sparse_decode_attention_reference(q, k, v, padded, bias=bias)
    torch.testing.assert_close(out, ref, atol=3e-3, rtol=3e-3)
    # Only token 3 survives for KV head 0, so its heads return v[0, 3]; KV head 1 selected nothing: zeros.
    torch.testing.assert_close(out[:4].float(), v[0, 3].float().expand(4, 64), atol=1e-3, rtol=0)
    assert bool((out[4:] == 0).all())
    empty = torch.zeros(2, 0, dtype=index_dtype)
    for fn in (sparse_decode_attention, sparse_decode_attention_reference):
        assert bool((fn(q, k, v, empty) == 0).all())


def test_sparse_decode_reads_strided_cache_layout() -> None:
    gen = _gen(8)
    q = torch.randn(8, 64, generator=gen).half()
    k_cache = torch.randn(257, 2, 64, generator=gen).half()  # (n, kv_heads, dim)
    v_cache = torch.randn(257, 2, 64, generator=gen).half()
    indices = torch.randint(0, 257, (2, 64), generator=gen)
    out = sparse_decode_attention(q, k_cache.transpose(0, 1), v_cache.transpose(0, 1), indices)
    ref = sparse_decode_attention_reference(
        q, k_cache.transpose(0, 1).contiguous(), v_cache.transpose(0, 1).contiguous(), indices
    )
    torch.testing.assert_close(out, ref, atol=3e-3, rtol=3e-3)


@pytest.mark.parametrize("fn", [sparse_decode_attention, sparse_decode_attention_reference])
def test_sparse_decode_rejects_bad_inputs(fn: Callable[..., object]) -> None:
    q, k, v = torch.zeros(8, 16), torch.zeros(2, 9, 16), torch.zeros(2, 9, 16)
    idx = torch.zeros(2, 3, dtype=torch.int64)
    for args, match in [
        ((q[0], k, v, idx), "q must be"),
        ((q, k, v[:, :4], idx), "k and v"),
        ((q.half(), k, v, idx), "share"),
        ((q[:7], k, v, idx), "multiple of kv_heads"),
        ((q, k, v, idx.float()), "indices"),
        ((q, k, v, idx[:1]), "indices"),
        ((q, k, v, idx, None, torch.zeros(2, 8)), "bias"),
    ]:
        with pytest.raises(ValueError, match=match):
            fn(*args)


def test_pipeline_recovers_dense_attention_with_sharp_keys() -> None:
    """encode -> score -> top-k -> sparse decode (all Triton) matches dense attention when a few keys dominate."""
    gen = _gen(9)
    kv_heads, group, n, dim, rbit, budget = 2, 4, 1000, 64, 128, 64
    _, k, v = _decode_inputs(gen, kv_heads, group, n, dim, torch.float16)
    base = torch.randn(kv_heads, 1, dim, generator=gen)
    q = (base + 0.3 * torch.randn(kv_heads, group, dim, generator=gen)).view(-1, dim).half()  # a GQA group agrees
    needles = torch.randint(0, n, (kv_heads, 16), generator=gen)
    for h in range(kv_heads):  # keys along the group's query direction dominate its softmax
        k[h, needles[h]] = (2 * base[h]).half()
    weight = torch.randn(kv_heads, dim, rbit, generator=gen).half()

    k_codes, k_norms = hash_encode_with_norms(k, weight)
    q_codes = hash_encode(q[:, None, :], weight).view(kv_heads, group, rbit // 32)
    scores = hamming_score(q_codes, k_codes, k_norms.half(), rbit, sink=4, recent=8)
    indices = scores.topk(budget, dim=-1).indices
    for h in range(kv_heads):
        assert set(needles[h].tolist()) <= set(indices[h].tolist())
        assert set(range(4)) | set(range(n - 8, n)) <= set(indices[h].tolist())
    dense = torch.nn.functional.scaled_dot_product_attention(
        q.view(kv_heads, group, 1, dim).float(), k[:, None].float(), v[:, None].float()
    ).view(kv_heads * group, dim)
    torch.testing.assert_close(sparse_decode_attention(q, k, v, indices).float(), dense, atol=2e-2, rtol=2e-2)
