"""HATA Hamming score: ``score[h, i] = ‖k_i‖ · Σ_g (1 − 2·popcount(q_g XOR k_i) / rbit)`` per KV head.

``1 − 2·ham/rbit`` estimates the cosine between query and key hash codes, so the score estimates
``Σ_g ‖k‖·cos(q_g, k)`` for the query heads ``g`` of a GQA group; top-k keeps the largest. The selection is per KV
head and shared by its query heads, as in HATA's ``HammingScoreCUDA`` with ``use_key_norm``.

Layout (shared by the reference and the Triton launcher):

- ``q_codes``: ``(kv_heads, group, words)`` int32 — codes of the query heads of each KV group, e.g.
  ``hash_encode(q[:, None, :], weight).view(kv_heads, group, words)`` for ``q`` of shape ``(heads, dim)``.
- ``k_codes``: ``(kv_heads, n, words)`` int32; ``k_norms``: ``(kv_heads, n)`` fp16/bf16/fp32.
- ``rbit`` must equal ``32 * words``.
- ``scores``: ``(kv_heads, n)`` float32. Positions ``i < sink`` and ``i >= n - recent`` score ``+inf``
  (:data:`FORCED_SCORE`), above any real score, so a top-k with ``k >= sink + recent`` always keeps them (among
  equal ``+inf`` scores a smaller top-k picks arbitrarily). HATA writes 65504 instead, which a real score with
  large key norms could exceed.

Cost per key: ``4 * words`` bytes of code (16 B at rbit 128) plus the norm (2 B fp16 or 4 B fp32), against
``2 * dim`` bytes for an fp16 key (256 B at dim 128).

Both implementations compute ``norm * (float32(group * rbit − 2 * ham) * float32(1 / rbit))`` with fp32 rounding
at each step, so given identical codes and norms the scores are bit-identical. Any strides are accepted; the
output is contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FORCED_SCORE = float("inf")
_WORD_BITS = 32
_BLOCK_N = 128  # keys per program
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_inputs(
    q_codes: torch.Tensor, k_codes: torch.Tensor, k_norms: torch.Tensor, rbit: int, sink: int, recent: int
) -> None:
    if q_codes.dim() != 3 or k_codes.dim() != 3:
        raise ValueError(
            f"q_codes must be (kv_heads, group, words) and k_codes (kv_heads, n, words), "
            f"got {tuple(q_codes.shape)} and {tuple(k_codes.shape)}"
        )
    if q_codes.dtype != torch.int32 or k_codes.dtype != torch.int32:
        raise ValueError(f"codes must be int32, got {q_codes.dtype} and {k_codes.dtype}")
    kv_heads, _, words = q_codes.shape
    if k_codes.shape[0] != kv_heads or k_codes.shape[2] != words:
        raise ValueError(f"k_codes {tuple(k_codes.shape)} does not match q_codes {tuple(q_codes.shape)}")
    if tuple(k_norms.shape) != tuple(k_codes.shape[:2]):
        raise ValueError(f"k_norms must be (kv_heads, n) = {tuple(k_codes.shape[:2])}, got {tuple(k_norms.shape)}")
    if k_norms.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"k_norms must be fp16/bf16/fp32, got {k_norms.dtype}")
    if rbit != _WORD_BITS * words:
        raise ValueError(f"rbit {rbit} != 32 * words ({words} words)")
    if sink < 0 or recent < 0:
        raise ValueError(f"sink and recent must be >= 0, got {sink} and {recent}")
    if not q_codes.device == k_codes.device == k_norms.device:
        raise ValueError("q_codes, k_codes and k_norms must be on one device")


def _popcount32_reference(words: torch.Tensor) -> torch.Tensor:
    """Set bits per int32 element (int32 result).

    torch has no popcount and no uint32 arithmetic, so: SWAR on the low 31 bits, where every intermediate stays in
    [0, 2**31) (no signed overflow, and >> on a non-negative value is a logical shift), plus the sign bit.
    """
    v = words & 0x7FFFFFFF
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    v = v + (v >> 8)
    v = v + (v >> 16)
    return (v & 0x3F) + (words < 0).to(torch.int32)


def hamming_score_reference(
    q_codes: torch.Tensor, k_codes: torch.Tensor, k_norms: torch.Tensor, rbit: int, sink: int = 0, recent: int = 0
) -> torch.Tensor:
    """PyTorch reference of :func:`hamming_score`: float32 ``(kv_heads, n)`` (see the module docstring)."""
    _check_inputs(q_codes, k_codes, k_norms, rbit, sink, recent)
    group, n = q_codes.shape[1], k_codes.shape[1]
    xor = q_codes[:, :, None, :] ^ k_codes[:, None, :, :]  # (kv_heads, group, n, words)
    ham = _popcount32_reference(xor).sum(dim=(1, 3), dtype=torch.int32)  # (kv_heads, n)
    inv_rbit = torch.tensor(1.0 / rbit, dtype=torch.float32, device=k_codes.device)
    scores = k_norms.float() * ((group * rbit - 2 * ham).float() * inv_rbit)
    positions = torch.arange(n, device=k_codes.device)
    forced = (positions < sink) | (positions >= n - recent)
    return scores.masked_fill(forced, FORCED_SCORE)


@triton.jit
def _popcount32(x):
    """Set bits per int32 element. SWAR on the uint32 bit pattern: unsigned shifts are logical."""
    v = x.to(tl.uint32, bitcast=True)
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    v = v + (v >> 8)
    v = v + (v >> 16)
    return (v & 0x3F).to(tl.int32)


@triton.jit
def _hamming_score_kernel(
    q_ptr,
    k_ptr,
    norms_ptr,
    out_ptr,
    n,
    group,
    sink,
    recent,
    stride_qh,
    stride_qg,
    stride_qw,
    stride_kh,
    stride_kn,
    stride_kw,
    stride_nh,
    stride_nn,
    RBIT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """One program scores BLOCK_N keys of one KV head: grid ``(kv_heads, cdiv(n, BLOCK_N))``."""
    head = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_W)
    row_mask = rows < n
    col_mask = cols < RBIT // 32

    # Padded words load as 0 in both operands, so their XOR adds no bits.
    k_tile = tl.load(
        k_ptr + head * stride_kh + rows[:, None] * stride_kn + cols[None, :] * stride_kw,
        mask=row_mask[:, None] & col_mask[None, :],
        other=0,
    )
    ham = tl.zeros([BLOCK_N], dtype=tl.int32)
    for g in range(group):
        q_row = tl.load(q_ptr + head * stride_qh + g * stride_qg + cols * stride_qw, mask=col_mask, other=0)
        ham += tl.sum(_popcount32(k_tile ^ q_row[None, :]), axis=1)

    norms = tl.load(norms_ptr + head * stride_nh + rows * stride_nn, mask=row_mask, other=0.0).to(tl.float32)
    scores = norms * ((group * RBIT - 2 * ham).to(tl.float32) * (1.0 / RBIT))
    forced = (rows < sink) | (rows >= n - recent)
    tl.store(out_ptr + head * n + rows, tl.where(forced, float("inf"), scores), mask=row_mask)


def hamming_score(
    q_codes: torch.Tensor, k_codes: torch.Tensor, k_norms: torch.Tensor, rbit: int, sink: int = 0, recent: int = 0
) -> torch.Tensor:
    """Triton: HATA scores float32 ``(kv_heads, n)`` of ``k_codes`` against ``q_codes`` (see the module docstring).

    Raises ValueError on bad shapes/dtypes.
    """
    _check_inputs(q_codes, k_codes, k_norms, rbit, sink, recent)
    kv_heads, group, words = q_codes.shape
    n = k_codes.shape[1]
    scores = torch.empty((kv_heads, n), dtype=torch.float32, device=k_codes.device)
    if n == 0 or kv_heads == 0:
        return scores
    _hamming_score_kernel[(kv_heads, triton.cdiv(n, _BLOCK_N))](
        q_codes,
        k_codes,
        k_norms,
        scores,
        n,
        group,
        sink,
        recent,
        *q_codes.stride(),
        *k_codes.stride(),
        *k_norms.stride(),
        RBIT=rbit,
        BLOCK_N=_BLOCK_N,
        BLOCK_W=triton.next_power_of_2(words),
    )
    return scores
