"""HATA sparse decode attention: one query per head attends to the keys its KV head selected by top-k.

``out[h] = softmax(scale · q[h] · k[kv, idx]ᵀ + bias[kv, idx]) @ v[kv, idx]`` with ``kv = h // group`` and
``idx = indices[kv]``; the GQA group shares the selection, as in HATA's ``flash_index_decode``.

Layout (shared by the reference and the Triton launcher):

- ``q``: ``(heads, dim)``, one decode query per query head; ``heads = kv_heads * group`` and query head ``h``
  belongs to KV head ``h // group`` (the Hugging Face ``repeat_kv`` order).
- ``k``, ``v``: ``(kv_heads, n, dim)``, same dtype as ``q`` (fp16 / bf16 / fp32).
- ``indices``: ``(kv_heads, budget)`` int32/int64 token positions. Entries outside ``[0, n)`` (e.g. ``-1``) are
  padding and ignored, so ragged budgets fit one tensor. A repeated position counts as many times as it appears.
- ``scale``: logit scale, default ``1 / sqrt(dim)``.
- ``bias``: optional ``(kv_heads, n)`` float, added to the scaled logits of the selected positions (e.g.
  ``log(cluster size)`` for merged-token caches); ``-inf`` masks a token.
- ``out``: ``(heads, dim)`` in ``q.dtype``; a head with no valid selected position gets zeros.

The Triton kernel runs one program per KV head: it loads the group's queries once, gathers BLOCK_B selected keys
and values at a time straight from the cache (no gathered copy) and folds them into an online softmax in fp32.
Like FlashAttention it feeds the probabilities to the second ``tl.dot`` in the value dtype, so 16-bit results
differ from the fp32 reference by about one 16-bit rounding. Any strides are accepted; ``out`` is contiguous.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._dot import dot_needs_fp32

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_INDEX_DTYPES = (torch.int32, torch.int64)
_BLOCK_B = 64  # selected keys per online-softmax step


def _check_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor, bias: torch.Tensor | None
) -> int:
    """Validate the inputs; return the GQA group size."""
    if q.dim() != 2:
        raise ValueError(f"q must be (heads, dim), got shape {tuple(q.shape)}")
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(f"k and v must both be (kv_heads, n, dim), got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.dtype not in _FLOAT_DTYPES or not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must share one of fp16/bf16/fp32, got {q.dtype}, {k.dtype}, {v.dtype}")
    kv_heads, n, dim = k.shape
    if q.shape[1] != dim:
        raise ValueError(f"q dim {q.shape[1]} != k dim {dim}")
    if kv_heads == 0 or q.shape[0] % kv_heads != 0:
        raise ValueError(f"q heads {q.shape[0]} must be a multiple of kv_heads {kv_heads}")
    if indices.dim() != 2 or indices.shape[0] != kv_heads or indices.dtype not in _INDEX_DTYPES:
        raise ValueError(
            f"indices must be int32/int64 (kv_heads={kv_heads}, budget), got {indices.dtype} {tuple(indices.shape)}"
        )
    if bias is not None and (tuple(bias.shape) != (kv_heads, n) or bias.dtype not in _FLOAT_DTYPES):
        raise ValueError(f"bias must be float (kv_heads, n) = {(kv_heads, n)}, got {bias.dtype} {tuple(bias.shape)}")
    tensors = (q, k, v, indices) if bias is None else (q, k, v, indices, bias)
    if len({t.device for t in tensors}) != 1:
        raise ValueError("all inputs must be on one device")
    return q.shape[0] // kv_heads


def sparse_decode_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """PyTorch reference of :func:`sparse_decode_attention` (gathers, then attends in fp32): ``(heads, dim)``."""
    group = _check_inputs(q, k, v, indices, bias)
    kv_heads, n, dim = k.shape
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    if indices.shape[1] == 0:
        return q.new_zeros(q.shape)
    valid = (indices >= 0) & (indices < n)
    safe = torch.where(valid, indices, 0).long()
    rows = torch.arange(kv_heads, device=k.device)[:, None]
    keys, values = k[rows, safe].float(), v[rows, safe].float()  # (kv_heads, budget, dim)

    logits = torch.einsum("hgd,hbd->hgb", q.float().view(kv_heads, group, dim), keys) * scale
    if bias is not None:
        logits = logits + bias.float().gather(1, safe)[:, None, :]
    logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
    shift = logits.amax(dim=-1, keepdim=True)
    # A row with nothing valid has max -inf; shifting by 0 instead keeps exp() at 0 rather than NaN.
    shift = shift.masked_fill(shift == float("-inf"), 0.0)
    weights = torch.exp(logits - shift)
    total = weights.sum(dim=-1, keepdim=True)
    out = torch.where(total > 0, (weights @ values) / total, 0.0)
    return out.reshape(kv_heads * group, dim).to(q.dtype)


@triton.jit
def _sparse_decode_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    idx_ptr,
    bias_ptr,
    out_ptr,
    n,
    budget,
    group,
    dim,
    scale,
    stride_qh,
    stride_qd,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ih,
    stride_ib,
    stride_bh,
    stride_bn,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One program per KV head (grid ``(kv_heads,)``); its query heads are the BLOCK_G rows of every tl.dot."""
    kv_head = tl.program_id(0)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    g_mask = g < group
    d_mask = d < dim
    q_rows = kv_head * group + g

    q = tl.load(
        q_ptr + q_rows[:, None] * stride_qh + d[None, :] * stride_qd, mask=g_mask[:, None] & d_mask[None, :], other=0.0
    )
    if UPCAST:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)

    for start in range(0, budget, BLOCK_B):
        offs = start + tl.arange(0, BLOCK_B)
        # int64 positions: position * stride can pass 2**31 in a long cache.
        idx = tl.load(idx_ptr + kv_head * stride_ih + offs * stride_ib, mask=offs < budget, other=-1).to(tl.int64)
        valid = (idx >= 0) & (idx < n)
        idx = tl.where(valid, idx, 0)  # keep even masked-off addresses inside the cache
        kv_mask = valid[:, None] & d_mask[None, :]

        k_tile = tl.load(
            k_ptr + kv_head * stride_kh + idx[:, None] * stride_kn + d[None, :] * stride_kd, mask=kv_mask, other=0.0
        )
        if UPCAST:
            k_tile = k_tile.to(tl.float32)
        logits = tl.dot(q, tl.trans(k_tile), input_precision="ieee") * scale  # (BLOCK_G, BLOCK_B)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + kv_head * stride_bh + idx * stride_bn, mask=valid, other=0.0)
            logits += bias.to(tl.float32)[None, :]
        logits = tl.where(valid[None, :], logits, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(logits, axis=1))
        # While a row has seen only -inf, shift by 0 so exp() gives 0 rather than exp(-inf + inf) = NaN.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - shift)
        p = tl.exp(logits - shift[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)

        v_tile = tl.load(
            v_ptr + kv_head * stride_vh + idx[:, None] * stride_vn + d[None, :] * stride_vd, mask=kv_mask, other=0.0
        )
        if UPCAST:
            v_tile = v_tile.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v_tile.dtype), v_tile, input_precision="ieee")
        m_i = m_new

    # A head with no valid position has acc = 0 and l = 0: dividing by 1 returns its zeros.
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(
        out_ptr + q_rows[:, None] * dim + d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=g_mask[:, None] & d_mask[None, :],
    )


def sparse_decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton: fused gather + online-softmax decode attention over the selected positions -> ``(heads, dim)``.

    See the module docstring for the layout. Raises ValueError on bad shapes/dtypes.
    """
    group = _check_inputs(q, k, v, indices, bias)
    kv_heads, n, dim = k.shape
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    out = torch.empty((kv_heads * group, dim), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    _sparse_decode_kernel[(kv_heads,)](
        q,
        k,
        v,
        indices,
        bias if bias is not None else k,  # placeholder pointer, never read when HAS_BIAS is False
        out,
        n,
        indices.shape[1],
        group,
        dim,
        scale,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *indices.stride(),
        *(bias.stride() if bias is not None else (0, 0)),
        HAS_BIAS=bias is not None,
        UPCAST=dot_needs_fp32(q.dtype),
        BLOCK_G=max(16, triton.next_power_of_2(group)),  # tl.dot needs M >= 16
        BLOCK_B=_BLOCK_B,
        BLOCK_D=max(16, triton.next_power_of_2(dim)),
    )
    return out
