"""Chelsea Chunked Soft Matching: the Triton kernel (run by the Triton interpreter on CPU tensors) against its
PyTorch reference, both against planted matches and a float64 brute force, plus semantic checks."""

from collections.abc import Callable

import pytest
import torch

from kernels import soft_matching, soft_matching_reference
from tests.unit.triton_interpreter import require_interpreter

require_interpreter()

BOTH = [soft_matching, soft_matching_reference]
Matcher = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pair_chunk(m: int, chunk: int) -> torch.Tensor:
    """Chunk of each pair p (A token 2p + 1, B token 2p)."""
    return torch.arange(m) // (chunk // 2)


def _planted(
    heads: int, n: int, dim: int, chunk: int, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian keys where every A token is a rescaled, slightly perturbed copy of a random B token of its chunk.

    That B has cosine ~0.99 with it, every other B ~N(0, 1/dim): the planted B wins by a wide margin in every dtype.
    Returns the keys and the planted B positions (heads, m).
    """
    gen = _gen(seed)
    m = n // 2
    keys = torch.randn(heads, n, dim, generator=gen)
    first = _pair_chunk(m, chunk) * (chunk // 2)  # first pair of each pair's chunk
    size = torch.clamp(first + chunk // 2, max=m) - first  # pairs in that chunk
    target = first + (torch.rand(heads, m, generator=gen) * size).long()  # a pair of the same chunk
    scale = 0.5 + 2 * torch.rand(heads, m, 1, generator=gen)
    source = keys[:, : 2 * m : 2].gather(1, target[..., None].expand(-1, -1, dim))
    keys[:, 1 : 2 * m : 2] = scale * (source + 0.05 * torch.randn(heads, m, dim, generator=gen))
    return keys.to(dtype), 2 * target


def _brute_force(keys: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 cosines of every A against every B, other chunks masked: (best B, best cosine, gap to runner-up)."""
    m = keys.shape[1] // 2
    normed = torch.nn.functional.normalize(keys[:, : 2 * m].double(), dim=-1)
    cosine = normed[:, 1::2] @ normed[:, 0::2].transpose(1, 2)  # (heads, m A, m B)
    pair_chunk = _pair_chunk(m, chunk)
    cosine = cosine.masked_fill(pair_chunk[:, None] != pair_chunk[None, :], float("-inf"))
    cosine = torch.cat([cosine, torch.full_like(cosine[..., :1], -2.0)], -1)  # the runner-up of a lone B
    values, order = cosine.topk(2, dim=-1)
    return 2 * order[..., 0], values[..., 0], values[..., 0] - values[..., 1]


def _check_layout(a_index: torch.Tensor, b_index: torch.Tensor, similarity: torch.Tensor, heads: int, n: int) -> None:
    m = n // 2
    assert a_index.shape == b_index.shape == similarity.shape == (heads, m)
    assert a_index.dtype == b_index.dtype == torch.int64 and similarity.dtype == torch.float32
    assert b_index.is_contiguous() and similarity.is_contiguous()
    assert torch.equal(a_index, (2 * torch.arange(m) + 1).expand(heads, m))


@pytest.mark.parametrize(
    ("n", "chunk", "heads", "dtype", "dim"),
    [
        (2, 2, 1, torch.float32, 64),
        (3, 8, 2, torch.float16, 64),
        (7, 16, 8, torch.bfloat16, 64),
        (7, 2, 2, torch.float32, 16),
        (64, 8, 8, torch.float32, 64),
        (64, 64, 2, torch.bfloat16, 128),
        (100, 16, 2, torch.float16, 48),  # dim not a power of two: padded, masked
        (100, 64, 8, torch.float32, 64),
        (100, 256, 1, torch.bfloat16, 64),  # one partial chunk
        (257, 2, 2, torch.bfloat16, 64),
        (257, 256, 8, torch.float16, 64),  # two A tiles and two B steps per chunk
        (1000, 64, 2, torch.bfloat16, 128),
        (1000, 256, 1, torch.float32, 64),
        (1000, 8, 1, torch.float16, 32),
        (1000, 2, 1, torch.float32, 16),
        (1000, 24, 1, torch.float32, 32),  # chunk / 2 not a power of two: programs straddle chunks
        (1000, 200, 1, torch.float16, 32),
    ],
)
def test_kernel_and_reference_find_planted_matches(
    n: int, chunk: int, heads: int, dtype: torch.dtype, dim: int
) -> None:
    keys, planted = _planted(heads, n, dim, chunk, dtype, seed=n * chunk + heads)
    a_index, b_index, similarity = soft_matching(keys, chunk)
    ref_a, ref_b, ref_sim = soft_matching_reference(keys, chunk)
    _check_layout(a_index, b_index, similarity, heads, n)
    _check_layout(ref_a, ref_b, ref_sim, heads, n)
    assert torch.equal(ref_b, planted)
    assert torch.equal(b_index, planted)
    torch.testing.assert_close(similarity, ref_sim, atol=1e-6, rtol=0)
    assert float(similarity.min()) > 0.95


@pytest.mark.parametrize("n", [7, 100, 257, 1000])
@pytest.mark.parametrize("chunk", [2, 16, 64, 256])
def test_random_keys_match_reference_and_brute_force(n: int, chunk: int) -> None:
    """Gaussian keys: similarities to fp32 rounding; indices wherever the best leads the runner-up by > 1e-3."""
    dtype = [torch.float32, torch.float16, torch.bfloat16][(n + chunk) % 3]
    keys = torch.randn(2, n, 64, generator=_gen(n + chunk)).to(dtype)
    _, b_index, similarity = soft_matching(keys, chunk)
    _, ref_b, ref_sim = soft_matching_reference(keys, chunk)
    exact_b, exact_sim, gap = _brute_force(keys, chunk)
    clear = gap > 1e-3
    assert float(clear.float().mean()) > 0.8  # the comparison below covers most tokens
    assert torch.equal(b_index[clear], exact_b[clear])
    assert torch.equal(ref_b[clear], exact_b[clear])
    torch.testing.assert_close(similarity, ref_sim, atol=1e-6, rtol=0)
    torch.testing.assert_close(ref_sim.double(), exact_sim, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fn", BOTH)
@pytest.mark.parametrize(("n", "chunk"), [(101, 16), (1000, 64), (777, 256), (9, 256)])
def test_every_a_pairs_with_a_b_of_its_own_chunk(fn: Matcher, n: int, chunk: int) -> None:
    keys = torch.randn(2, n, 32, generator=_gen(n)).half()
    a_index, b_index, similarity = fn(keys, chunk)
    assert bool((a_index % 2 == 1).all()) and bool((b_index % 2 == 0).all())
    assert bool((b_index >= 0).all()) and bool((b_index < n - n % 2).all())
    assert torch.equal(b_index // chunk, a_index // chunk)
    assert bool((similarity.abs() <= 1 + 1e-6).all())


@pytest.mark.parametrize("fn", BOTH)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_planted_duplicate_is_found(fn: Matcher, dtype: torch.dtype) -> None:
    """An A token that is an exact copy (times 4: exact in every dtype) of a B token of its chunk: cosine 1."""
    n, chunk = 300, 64
    keys = torch.randn(2, n, 64, generator=_gen(5))
    keys[0, 2 * 70 + 1] = 4 * keys[0, 2 * 90]  # pair 70 and pair 90 share chunk 2 (pairs 64..95)
    keys[1, 2 * 145 + 1] = keys[1, 2 * 128]  # pair 145 in the partial last chunk (pairs 128..149), its first B
    keys = keys.to(dtype)
    _, b_index, similarity = fn(keys, chunk)
    assert int(b_index[0, 70]) == 180 and int(b_index[1, 145]) == 256
    torch.testing.assert_close(similarity[0, 70], torch.tensor(1.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(similarity[1, 145], torch.tensor(1.0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("fn", BOTH)
def test_ties_go_to_the_lowest_position(fn: Matcher) -> None:
    """Exact ties: every B token of a chunk is a power-of-two multiple of e_0, so each normalises to e_0 exactly and
    every A token's cosines with them are the same float in any summation order (one nonzero product)."""
    n, chunk = 300, 256  # chunk 256: the tie spans the kernel's two B steps; then a partial chunk of 44
    keys = torch.randn(2, n, 32, generator=_gen(6))
    keys[:, 0::2] = 0.0
    keys[:, 0::2, 0] = 2.0 ** torch.randint(-3, 4, (2, n // 2), generator=_gen(7)).float()
    _, b_index, similarity = fn(keys, chunk)
    assert torch.equal(b_index, (torch.arange(n // 2) // (chunk // 2) * chunk).expand(2, -1))
    a_keys = keys[:, 1::2]
    torch.testing.assert_close(similarity, a_keys[..., 0] / a_keys.norm(dim=-1), atol=1e-6, rtol=0)
    zero = torch.zeros(2, 40, 16)  # zero keys: cosine 0 everywhere
    _, b_index, similarity = fn(zero, 8)
    assert torch.equal(b_index, (torch.arange(20) // 4 * 8).expand(2, -1))
    assert torch.equal(similarity, torch.zeros(2, 20))


def test_kernel_output_is_identical_across_runs() -> None:
    keys = torch.randn(2, 333, 64, generator=_gen(7)).bfloat16()
    first = soft_matching(keys, 64)
    for _ in range(2):
        again = soft_matching(keys, 64)
        assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))


def test_kernel_reads_strided_cache_layout() -> None:
    """A (n, heads, dim) cache passed as a (heads, n, dim) view is read in place."""
    cache = torch.randn(257, 2, 64, generator=_gen(8)).half()
    keys = cache.transpose(0, 1)
    assert not keys.is_contiguous()
    _, b_index, similarity = soft_matching(keys, 16)
    _, ref_b, ref_sim = soft_matching_reference(keys.contiguous(), 16)
    clear = _brute_force(keys, 16)[2] > 1e-3
    assert torch.equal(b_index[clear], ref_b[clear])
    torch.testing.assert_close(similarity, ref_sim, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fn", BOTH)
def test_fewer_than_two_tokens_give_empty_outputs(fn: Matcher) -> None:
    for heads, n in [(2, 0), (2, 1), (0, 5)]:
        a_index, b_index, similarity = fn(torch.randn(heads, n, 16), 4)
        _check_layout(a_index, b_index, similarity, heads, n)


@pytest.mark.parametrize("fn", BOTH)
@pytest.mark.parametrize(
    ("keys", "chunk", "match"),
    [
        (torch.zeros(4, 16), 4, "heads, n, dim"),
        (torch.zeros(1, 4, 16, dtype=torch.int32), 4, "fp16/bf16/fp32"),
        (torch.zeros(1, 4, 16), 3, "even int"),
        (torch.zeros(1, 4, 16), 0, "even int"),
        (torch.zeros(1, 4, 16), 4.0, "even int"),
        (torch.zeros(1, 4, 16), True, "even int"),
    ],
)
def test_rejects_bad_inputs(fn: Matcher, keys: torch.Tensor, chunk: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fn(keys, chunk)  # type: ignore[arg-type]
