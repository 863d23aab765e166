"""HATA hash encoding: ``codes = packbits(x @ W > 0)``, optionally with the per-token L2 norm.

HATA (Gong et al., 2025) replaces the q·k score of top-k attention by a Hamming score between learned binary
codes. Every key (at prefill and at each decode step) and every decode query is encoded once by this kernel.

Layout (shared by the reference and the Triton launcher):

- ``x``: ``(heads, n, dim)`` fp16 / bf16 / fp32 — keys per KV head, or queries per query head.
- ``weight``: ``(weight_heads, dim, rbit)`` float, ``rbit`` a multiple of 32. ``heads`` must be a multiple of
  ``weight_heads``; row ``h`` of ``x`` uses ``weight[h // (heads // weight_heads)]``. So keys pass the per-KV-head
  weight as is, queries of a GQA model (query head ``h`` in KV group ``h // group``, the Hugging Face
  ``repeat_kv`` order) pass the same per-KV-head weight unexpanded, and a weight shared by all heads is
  ``weight[None]``.
- ``codes``: ``(heads, n, rbit // 32)`` int32. Bit ``j`` of word ``w`` is set iff
  ``(x @ W)[..., 32 * w + j] > 0``; bit 31 is the sign bit (two's complement), so a word is
  ``sum_j bit_j * 2**j`` wrapped to int32.
- ``norms``: ``(heads, n)`` float32, ``‖x‖₂`` per token, computed from the fp32-upcast values. HATA stores them
  as fp16 (2 B per token); cast with ``norms.half()`` for such a cache.

The projection is the fp32 dot product of the given values (16-bit products are exact in fp32). The Triton
kernel sums in a different order than the reference, so a bit whose projection is within rounding error of
zero may differ between the two; elsewhere the codes are identical.

Any strides are accepted (the Triton kernel reads through strides, nothing is copied); outputs are contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._dot import dot_needs_fp32

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_WORD_BITS = 32
_BLOCK_M = 32  # tokens per program: a tl.dot M-tile


def _check_inputs(x: torch.Tensor, weight: torch.Tensor) -> tuple[int, int]:
    """Validate ``x`` and ``weight``; return ``(group, words)``."""
    if x.dim() != 3:
        raise ValueError(f"x must be (heads, n, dim), got shape {tuple(x.shape)}")
    if weight.dim() != 3:
        raise ValueError(f"weight must be (weight_heads, dim, rbit), got shape {tuple(weight.shape)}")
    if x.dtype not in _FLOAT_DTYPES or weight.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"x and weight must be fp16/bf16/fp32, got {x.dtype} and {weight.dtype}")
    if x.device != weight.device:
        raise ValueError(f"x and weight must be on one device, got {x.device} and {weight.device}")
    heads, _, dim = x.shape
    weight_heads, weight_dim, rbit = weight.shape
    if weight_dim != dim:
        raise ValueError(f"weight dim {weight_dim} != x dim {dim}")
    if weight_heads == 0 or heads % weight_heads != 0:
        raise ValueError(f"x heads {heads} must be a multiple of weight heads {weight_heads}")
    if rbit == 0 or rbit % _WORD_BITS != 0:
        raise ValueError(f"rbit must be a positive multiple of {_WORD_BITS}, got {rbit}")
    return heads // weight_heads, rbit // _WORD_BITS


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a bool ``(..., rbit)`` tensor into int32 ``(..., rbit // 32)`` words, bit j of a word = 2**j."""
    words = bits.reshape(*bits.shape[:-1], -1, _WORD_BITS).to(torch.int64)
    shifts = torch.arange(_WORD_BITS, device=bits.device, dtype=torch.int64)
    packed = (words << shifts).sum(dim=-1)  # in [0, 2**32): exact in int64
    # Wrap to int32 explicitly (bit 31 -> sign) rather than rely on an out-of-range cast.
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def _expand_weight(weight: torch.Tensor, group: int) -> torch.Tensor:
    """``(weight_heads, dim, rbit)`` -> ``(weight_heads * group, dim, rbit)`` in the GQA head order."""
    return weight.repeat_interleave(group, dim=0) if group > 1 else weight


def hash_encode_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """PyTorch reference of :func:`hash_encode`: ``(heads, n, dim)`` -> int32 ``(heads, n, rbit // 32)``."""
    group, _ = _check_inputs(x, weight)
    projection = torch.bmm(x.float(), _expand_weight(weight, group).float())
    return _pack_bits(projection > 0)


def hash_encode_with_norms_reference(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch reference of :func:`hash_encode_with_norms`: codes ``(heads, n, rbit // 32)`` int32 and
    norms ``(heads, n)`` float32."""
    codes = hash_encode_reference(x, weight)
    return codes, torch.linalg.vector_norm(x.float(), dim=-1)


@triton.jit
def _hash_encode_kernel(
    x_ptr,
    w_ptr,
    codes_ptr,
    norms_ptr,
    n,
    dim,
    stride_xh,
    stride_xn,
    stride_xd,
    stride_wh,
    stride_wd,
    stride_wr,
    GROUP: tl.constexpr,
    WORDS: tl.constexpr,
    UPCAST: tl.constexpr,
    WITH_NORMS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One program encodes BLOCK_M tokens of one head: grid ``(heads, cdiv(n, BLOCK_M))``."""
    head = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    row_mask = rows < n
    col_mask = cols < dim

    x_tile = tl.load(
        x_ptr + head * stride_xh + rows[:, None] * stride_xn + cols[None, :] * stride_xd,
        mask=row_mask[:, None] & col_mask[None, :],
        other=0.0,
    )
    if WITH_NORMS:
        x32 = x_tile.to(tl.float32)
        tl.store(norms_ptr + head * n + rows, tl.sqrt(tl.sum(x32 * x32, axis=1)), mask=row_mask)
    if UPCAST:
        # Exact: see kernels._dot.dot_needs_fp32.
        x_tile = x_tile.to(tl.float32)

    bit_cols = tl.arange(0, 32)
    # 1 << 31 is INT32_MIN, so the int32 sum of the set bits is the two's-complement word.
    bit_values = 1 << bit_cols
    w_base = w_ptr + (head // GROUP) * stride_wh + cols[:, None] * stride_wd
    for word in tl.static_range(WORDS):
        w_tile = tl.load(w_base + (word * 32 + bit_cols[None, :]) * stride_wr, mask=col_mask[:, None], other=0.0)
        if UPCAST:
            w_tile = w_tile.to(tl.float32)
        # "ieee" keeps fp32 operands out of TF32 (whose rounding would flip near-zero bits); 16-bit operands
        # use tensor cores with exact products either way.
        projection = tl.dot(x_tile, w_tile, input_precision="ieee")
        packed = tl.sum(tl.where(projection > 0, bit_values[None, :], 0), axis=1)
        tl.store(codes_ptr + (head * n + rows) * WORDS + word, packed.to(tl.int32), mask=row_mask)


def _launch(x: torch.Tensor, weight: torch.Tensor, with_norms: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    group, words = _check_inputs(x, weight)
    heads, n, dim = x.shape
    codes = torch.empty((heads, n, words), dtype=torch.int32, device=x.device)
    norms = torch.empty((heads, n), dtype=torch.float32, device=x.device) if with_norms else None
    if n == 0 or heads == 0:
        return codes, norms
    grid = (heads, triton.cdiv(n, _BLOCK_M))
    _hash_encode_kernel[grid](
        x,
        weight,
        codes,
        norms if norms is not None else codes,  # placeholder pointer, never written when WITH_NORMS is False
        n,
        dim,
        *x.stride(),
        *weight.stride(),
        GROUP=group,
        WORDS=words,
        UPCAST=dot_needs_fp32(x.dtype, weight.dtype),
        WITH_NORMS=with_norms,
        BLOCK_M=_BLOCK_M,
        BLOCK_D=max(16, triton.next_power_of_2(dim)),  # tl.dot needs K >= 16
    )
    return codes, norms


def hash_encode(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Triton: hash codes of ``x`` (``(heads, n, dim)``) -> int32 ``(heads, n, rbit // 32)``.

    See the module docstring for the layout and the GQA weight sharing. Raises ValueError on bad shapes/dtypes.
    """
    codes, _ = _launch(x, weight, with_norms=False)
    return codes


def hash_encode_with_norms(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton: codes ``(heads, n, rbit // 32)`` int32 and ``‖x‖₂`` ``(heads, n)`` float32, in one pass over ``x``."""
    codes, norms = _launch(x, weight, with_norms=True)
    assert norms is not None
    return codes, norms
