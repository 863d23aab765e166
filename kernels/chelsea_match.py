"""Chelsea Chunked Soft Matching (arXiv 2506.11418): each A token's most cosine-similar B token of its chunk.

Layout (shared by the reference and the Triton launcher):

- ``keys``: ``(heads, n, dim)`` fp16/bf16/fp32, any strides. Only the first ``n - n % 2`` tokens take part (whole
  pairs); ``m = (n - n % 2) // 2`` pairs.
- ``chunk``: even int ``>= 2``. Tokens ``[c * chunk, (c + 1) * chunk)`` form chunk ``c``; inside it even offsets are
  set B and odd offsets set A, so token ``p`` is in A iff ``p`` is odd. A trailing partial chunk (``n`` not a
  multiple of ``chunk``) is matched within itself, against the B tokens it has: every A token ``p`` has at least
  ``p - 1`` as a candidate.
- ``a_index``: ``(heads, m)`` int64, the A positions ``1, 3, 5, ...``, the same for every head: a read-only
  stride-0 view (``expand``); ``.contiguous()`` gives a writable copy.
- ``b_index``: ``(heads, m)`` int64, the B position of the same chunk with the largest cosine similarity to the A
  token; among equal similarities the lowest position wins. Contiguous.
- ``similarity``: ``(heads, m)`` float32, that cosine. Contiguous.

The cosine is computed as in ``torch.nn.functional.normalize``: each key in fp32 divided by ``max(‖k‖, 1e-12)``,
so a zero key has cosine 0 with everything. NaN/inf keys give unspecified matches.

The Triton kernel numbers pairs ``p`` (A token ``2p + 1``, B token ``2p``, chunk ``p // (chunk / 2)``) and runs
one program per head and ``BLOCK_T`` consecutive pairs, ``BLOCK_T`` the power of two ``>= chunk / 2`` clamped to
[16, 64]; for ``chunk`` 32 to 128 that is one program per (head, chunk), smaller chunks share a program and larger
ones take several. A program loads its A tokens, normalises them in fp32, then walks the B tokens of the chunks they
belong to ``BLOCK_T`` at a time (once for a power-of-two ``chunk <= 128``): normalises them in fp32, forms the A×B
cosine block with ``tl.dot``, masks pairs of different chunks and keeps a running row max/argmax. The ``tl.dot``
operands are the normalised fp32 keys (``input_precision="ieee"``, no TF32) whatever the key dtype, so the bf16
interpreter ``tl.dot`` bug that :func:`kernels._dot.dot_needs_fp32` works around cannot arise here. Kernel and
reference agree on similarities to fp32 rounding (summation order), and on indices wherever the best similarity
leads the runner-up by more than that. Both break exact ties of the computed fp32 cosines towards the lowest
position, but candidates that are equal in exact arithmetic (e.g. duplicate B keys) may round apart by an ulp,
differently in the two; exact ties like zero keys give the lowest position in both.

Cost per token (``d = dim``, ``h = chunk / 2``): reads the key once (``2 * d`` bytes fp16/bf16, ``4 * d`` fp32;
for ``chunk > 128`` each A tile of a chunk re-reads its B keys, mostly from L2) and writes 6 bytes (int64 ``b_index``
and fp32 ``similarity`` per pair; ``a_index`` is a view, not written). Each A token takes ``h * d`` multiply-adds,
so ``h * d`` FLOPs per token for the cosine block plus ``~3 * d`` for the normalisation: at ``chunk = 64, d = 128``
262 B and ~4.5 kFLOP per fp16 token (~17 FLOP/B). For ``chunk < 32`` the smallest ``tl.dot`` block (16×16) costs
``16 * d`` FLOPs per token, ``(16 - h) * d`` of them on pairs of different chunks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_BLOCK_T = 64  # most A tokens per program and B tokens per step
_EPS = 1e-12  # as torch.nn.functional.normalize


def _check_inputs(keys: torch.Tensor, chunk: int) -> None:
    if keys.dim() != 3:
        raise ValueError(f"keys must be (heads, n, dim), got {tuple(keys.shape)}")
    if keys.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"keys must be fp16/bf16/fp32, got {keys.dtype}")
    if not isinstance(chunk, int) or chunk < 2 or chunk % 2:
        raise ValueError(f"chunk must be an even int >= 2, got {chunk!r}")


def _a_index(heads: int, m: int, device: torch.device) -> torch.Tensor:
    return (2 * torch.arange(m, device=device) + 1).expand(heads, m)


def soft_matching_reference(keys: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch reference of :func:`soft_matching`: ``(a_index, b_index, similarity)`` (see the module docstring).

    Raises ValueError on bad shapes/dtypes or chunk.
    """
    _check_inputs(keys, chunk)
    heads, n, dim = keys.shape
    n -= n % 2
    m, half = n // 2, chunk // 2
    chunks = -(-n // chunk)
    normed = torch.nn.functional.normalize(keys[:, :n].float(), dim=-1, eps=_EPS)
    normed = torch.nn.functional.pad(normed, (0, 0, 0, chunks * chunk - n))  # zero tokens complete the last chunk
    pairs = normed.view(heads, chunks, half, 2, dim)
    b_keys, a_keys = pairs[..., 0, :], pairs[..., 1, :]
    cosine = a_keys @ b_keys.transpose(-1, -2)  # (heads, chunks, half A, half B)
    starts = torch.arange(chunks, device=keys.device)[:, None] * chunk
    b_positions = starts + 2 * torch.arange(half, device=keys.device)  # (chunks, half)
    cosine = cosine.masked_fill((b_positions >= n)[None, :, None, :], float("-inf"))  # padding is no candidate
    similarity, best = cosine.max(dim=-1)  # first maximal index on ties
    b_index = (starts[None] + 2 * best).flatten(1)[:, :m].contiguous()
    return _a_index(heads, m, keys.device), b_index, similarity.flatten(1)[:, :m].contiguous()


@triton.jit
def _load_normalised(base, pairs, offset, mask, cols, col_mask, stride_n, stride_d):
    """Tokens ``2 * pairs + offset`` (``offset`` 0: B, 1: A) as fp32 rows divided by max(‖row‖, eps)."""
    x = tl.load(
        base + (2 * pairs + offset).to(tl.int64)[:, None] * stride_n + cols[None, :] * stride_d,
        mask=mask[:, None] & col_mask[None, :],
        other=0.0,
    ).to(tl.float32)
    norm = tl.sqrt(tl.sum(x * x, axis=1))
    return x / tl.maximum(norm, 1e-12)[:, None]


@triton.jit
def _soft_matching_kernel(
    keys_ptr,
    b_index_ptr,
    sim_ptr,
    m,
    half,
    dim,
    stride_h,
    stride_n,
    stride_d,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Grid ``(heads, cdiv(m, BLOCK_T))``: BLOCK_T consecutive pairs ``p`` (A token ``2p + 1``, B token ``2p``;
    pair ``p`` is in chunk ``p // half``) against the B tokens of every chunk they touch, BLOCK_T at a time."""
    head = tl.program_id(0).to(tl.int64)  # 64-bit offsets: caches may exceed 2**31 elements
    base = keys_ptr + head * stride_h
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < dim
    offs = tl.arange(0, BLOCK_T)

    first = tl.program_id(1) * BLOCK_T
    a_pairs = first + offs
    a_mask = a_pairs < m
    a_chunk = a_pairs // half
    a_tile = _load_normalised(base, a_pairs, 1, a_mask, cols, col_mask, stride_n, stride_d)

    best_sim = tl.full([BLOCK_T], float("-inf"), dtype=tl.float32)
    best_pair = tl.zeros([BLOCK_T], dtype=tl.int32)
    b_begin = (first // half) * half  # first pair of the first chunk touched
    b_end = tl.minimum((tl.minimum(first + BLOCK_T, m) - 1) // half * half + half, m)  # past the last one
    for b0 in range(b_begin, b_end, BLOCK_T):
        b_pairs = b0 + offs
        b_mask = b_pairs < b_end
        b_tile = _load_normalised(base, b_pairs, 0, b_mask, cols, col_mask, stride_n, stride_d)
        cosine = tl.dot(a_tile, tl.trans(b_tile), input_precision="ieee")  # (BLOCK_T A, BLOCK_T B)
        same_chunk = (a_chunk[:, None] == (b_pairs // half)[None, :]) & b_mask[None, :]
        cosine = tl.where(same_chunk, cosine, float("-inf"))
        tile_sim, tile_arg = tl.max(cosine, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_sim > best_sim  # strict: on a tie the earlier (lower) B stays
        best_pair = tl.where(better, b0 + tile_arg, best_pair)
        best_sim = tl.where(better, tile_sim, best_sim)

    out = head * m + a_pairs
    tl.store(b_index_ptr + out, 2 * best_pair.to(tl.int64), mask=a_mask)
    tl.store(sim_ptr + out, best_sim, mask=a_mask)


def soft_matching(keys: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton: Chunked Soft Matching of ``keys`` -> ``(a_index, b_index, similarity)`` (see the module docstring).

    Raises ValueError on bad shapes/dtypes or chunk.
    """
    _check_inputs(keys, chunk)
    heads, n, dim = keys.shape
    m = n // 2
    b_index = torch.empty((heads, m), dtype=torch.int64, device=keys.device)
    similarity = torch.empty((heads, m), dtype=torch.float32, device=keys.device)
    if heads and m:
        half = chunk // 2
        block_t = min(_MAX_BLOCK_T, max(16, triton.next_power_of_2(half)))  # tl.dot needs M, N >= 16
        _soft_matching_kernel[(heads, triton.cdiv(m, block_t))](
            keys,
            b_index,
            similarity,
            m,
            half,
            dim,
            *keys.stride(),
            BLOCK_T=block_t,
            BLOCK_D=max(16, triton.next_power_of_2(dim)),  # tl.dot needs K >= 16
        )
    return _a_index(heads, m, keys.device), b_index, similarity
