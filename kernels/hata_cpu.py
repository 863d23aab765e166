"""HATA's decode path as fused CPU kernels (numba), beside the same PyTorch references as the Triton kernels.

On a GPU the Triton kernels run; on the CPU the same three steps used to be a dozen numpy/PyTorch
passes each (xor and popcount per word and query head, a partition, per-head row gathers, two
matmuls). Fused, each step reads its input once:

- :func:`hamming_score_cpu` — one pass over the packed codes: xor, popcount, GQA group sum and the
  norm scale per key, 16 bytes of code read per key (:func:`kernels.hamming_score_reference`'s result,
  bit for bit);
- :func:`top_positions_cpu` — the k best positions per row in ascending order: a threshold from a
  sample, one pass to collect the candidates above it, an exact partition of the few candidates
  (:func:`hash_top_positions_cpu` does both steps head by head, the scores never leaving the cache);
- :func:`sparse_attention_cpu` — gather + softmax + weighted sum per KV head, each selected K and V row
  read once for all the query heads of its group, four rows at a time so that four scattered reads are in
  flight together (:func:`kernels.sparse_decode_attention_reference`).

Compiled on first use and cached on disk (``NUMBA_CACHE_DIR`` where the package is read-only).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .hata_score import FORCED_SCORE
from .hata_sparse_decode import sparse_decode_attention_reference


@intrinsic
def _popcount64(typingctx, x):  # type: ignore[no-untyped-def]
    """LLVM's ctpop: one popcnt instruction on any x86-64 since 2008, instead of a SWAR sequence."""
    signature = types.uint64(types.uint64)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        ctpop = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(ctpop, args)

    return signature, codegen


def _buffer(t: torch.Tensor) -> np.ndarray:
    """The C-contiguous array under a cache slice ``buffer[:, :n]`` (kv_heads, n, width), so that numba
    knows rows are dense and vectorises over them; the kernels read only the first n rows."""
    if t.is_contiguous():
        return t.numpy()
    kv_heads, _, width = t.shape
    if t.stride(2) != 1 or t.stride(1) != width or t.stride(0) % width:
        return np.ascontiguousarray(t.numpy())
    return torch.as_strided(t, (kv_heads, t.stride(0) // width, width), (t.stride(0), width, 1)).numpy()


@numba.njit(cache=True, nogil=True)
def _hamming_row(q_words, keys, norms, n, rbit, sink, recent, ham, out):  # type: ignore[no-untyped-def]
    """One KV head's scores into ``out`` (n,); ``ham`` is scratch of n uint32."""
    group, words = q_words.shape
    ham[:] = 0
    # One (query word, code word) pair per pass: the key loop has no dependence between keys,
    # so LLVM vectorises xor + popcount over several keys at once (AVX2: twice the scalar speed).
    for w in range(words):
        for g in range(group):
            query_word = q_words[g, w]
            for i in range(n):
                ham[i] += np.uint32(_popcount64(keys[i, w] ^ query_word))
    inv_rbit = np.float32(1.0 / rbit)
    # The reference's float32 steps in its order (the integer part is exact), so the scores are bit-identical.
    for i in range(n):
        out[i] = norms[i] * (np.float32(group * rbit - 2 * np.int64(ham[i])) * inv_rbit)
    for i in range(min(sink, n)):
        out[i] = FORCED_SCORE
    for i in range(max(n - recent, 0), n):
        out[i] = FORCED_SCORE


@numba.njit(cache=True, nogil=True)
def _hamming_scores(q_words, k_words, k_norms, n, rbit, sink, recent, out):  # type: ignore[no-untyped-def]
    ham = np.empty(n, dtype=np.uint32)
    for h in range(q_words.shape[0]):
        _hamming_row(q_words[h], k_words[h], k_norms[h], n, rbit, sink, recent, ham, out[h])


def hamming_score_cpu(
    q_codes: torch.Tensor, k_codes: torch.Tensor, k_norms: torch.Tensor, rbit: int, sink: int = 0, recent: int = 0
) -> torch.Tensor:
    """HATA scores, float32 ``(kv_heads, n)``: q_codes (kv_heads, group, rbit/32) int32, k_codes (kv_heads, n,
    rbit/32) int32 (the cache's slice), k_norms (kv_heads, n)."""
    kv_heads, n = k_codes.shape[:2]
    out = np.empty((kv_heads, n), dtype=np.float32)
    _hamming_scores(*_score_inputs(q_codes, k_codes, k_norms), n, rbit, sink, recent, out)
    return torch.from_numpy(out)


def _score_inputs(
    q_codes: torch.Tensor, k_codes: torch.Tensor, k_norms: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q_words = q_codes.contiguous().numpy().view(np.uint64)  # two int32 words → one 64-bit popcount
    norms = k_norms.float().numpy()  # numba has no fp16; 4 B per key against the code's 16
    return q_words, _buffer(k_codes).view(np.uint64), norms


@numba.njit(cache=True, nogil=True)
def _select_row(row, k, out):  # type: ignore[no-untyped-def]
    """The k best positions of ``row`` into ``out``, ascending; of equal scores the lower positions win."""
    n = row.shape[0]
    stride = max(n // 1024, 1)
    # A threshold a little below the k-th best score, read off a strided sample.
    sample = np.sort(row[::stride])
    slack = min(len(sample) - 1, int((k / n) * len(sample) * 1.5) + 4)
    threshold = sample[len(sample) - 1 - slack]
    count = 0
    for i in range(n):
        count += row[i] >= threshold
    if count < k:  # the sample misjudged the tail: every score is a candidate
        threshold = -np.inf
        count = n
    candidates = np.empty(count, dtype=np.int64)
    values = np.empty(count, dtype=np.float32)
    c = 0
    for i in range(n):
        if row[i] >= threshold:
            candidates[c] = i
            values[c] = row[i]
            c += 1
    kth = np.partition(values, count - k)[count - k]  # the k-th best score, exactly
    above = 0
    for j in range(count):
        above += values[j] > kth
    ties = k - above
    o = 0
    for j in range(count):
        if values[j] > kth or (values[j] == kth and ties > 0):
            if values[j] == kth:
                ties -= 1
            out[o] = candidates[j]
            o += 1


@numba.njit(cache=True, nogil=True)
def _top_positions(scores, k, out):  # type: ignore[no-untyped-def]
    for r in range(scores.shape[0]):
        _select_row(scores[r], k, out[r])


@numba.njit(cache=True, nogil=True)
def _hash_top_positions(q_words, k_words, k_norms, n, rbit, sink, recent, k, out):  # type: ignore[no-untyped-def]
    ham = np.empty(n, dtype=np.uint32)
    scores = np.empty(n, dtype=np.float32)  # one head's scores, still in cache when selected from
    for h in range(q_words.shape[0]):
        _hamming_row(q_words[h], k_words[h], k_norms[h], n, rbit, sink, recent, ham, scores)
        _select_row(scores, k, out[h])


def hash_top_positions_cpu(
    q_codes: torch.Tensor,
    k_codes: torch.Tensor,
    k_norms: torch.Tensor,
    rbit: int,
    k: int,
    sink: int = 0,
    recent: int = 0,
) -> torch.Tensor:
    """:func:`hamming_score_cpu` then :func:`top_positions_cpu` in one call, head by head, so each head's
    scores are selected from while still in cache instead of making a round trip through memory."""
    kv_heads, n = k_codes.shape[:2]
    if k >= n:
        return torch.arange(n).expand(kv_heads, -1)
    out = np.empty((kv_heads, k), dtype=np.int64)
    _hash_top_positions(*_score_inputs(q_codes, k_codes, k_norms), n, rbit, sink, recent, k, out)
    return torch.from_numpy(out)


def top_positions_cpu(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k best positions per row of ``scores`` (rows, n), ascending, since gathering K/V rows in memory
    order is several times faster than at random; of equal scores the lower positions win."""
    if k >= scores.shape[-1]:
        return torch.arange(scores.shape[-1]).expand(scores.shape[0], -1)
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    _top_positions(np.ascontiguousarray(scores.numpy(), dtype=np.float32), k, out)
    return torch.from_numpy(out)


@numba.njit(cache=True, nogil=True, inline="always")
def _row_shift(bias, h, position):  # type: ignore[no-untyped-def]
    return np.float32(0.0) if bias is None else bias[h, position]


@numba.njit(cache=True, nogil=True, fastmath=True)
def _sparse_attention(q, keys, values, indices, scale, bias, out):  # type: ignore[no-untyped-def]
    kv_heads, budget = indices.shape
    heads, dim = q.shape
    group = heads // kv_heads
    weights = np.empty((group, budget), dtype=np.float32)
    whole = budget - budget % 4
    for h in range(kv_heads):
        q_group = q[h * group : (h + 1) * group]
        idx = indices[h]
        # Four selected rows per step: the rows sit at scattered positions, so the time goes to waiting on
        # memory; four independent row streams keep four times as many loads in flight (2x measured).
        for j in range(0, whole, 4):
            k0, k1, k2, k3 = keys[h, idx[j]], keys[h, idx[j + 1]], keys[h, idx[j + 2]], keys[h, idx[j + 3]]
            for g in range(group):
                a0 = a1 = a2 = a3 = np.float32(0.0)
                for d in range(dim):
                    x = q_group[g, d]
                    a0 += x * k0[d]
                    a1 += x * k1[d]
                    a2 += x * k2[d]
                    a3 += x * k3[d]
                weights[g, j] = a0 * scale + _row_shift(bias, h, idx[j])
                weights[g, j + 1] = a1 * scale + _row_shift(bias, h, idx[j + 1])
                weights[g, j + 2] = a2 * scale + _row_shift(bias, h, idx[j + 2])
                weights[g, j + 3] = a3 * scale + _row_shift(bias, h, idx[j + 3])
        for j in range(whole, budget):
            k0 = keys[h, idx[j]]
            for g in range(group):
                a0 = np.float32(0.0)
                for d in range(dim):
                    a0 += q_group[g, d] * k0[d]
                weights[g, j] = a0 * scale + _row_shift(bias, h, idx[j])
        for g in range(group):
            top = weights[g].max()
            total = np.float32(0.0)
            for j in range(budget):
                p = np.exp(weights[g, j] - top)
                weights[g, j] = p
                total += p
            weights[g] /= total
        o = out[h * group : (h + 1) * group]
        o[:] = 0.0
        for j in range(0, whole, 4):  # the value rows, four streams again
            v0, v1, v2, v3 = values[h, idx[j]], values[h, idx[j + 1]], values[h, idx[j + 2]], values[h, idx[j + 3]]
            for g in range(group):
                p0, p1, p2, p3 = weights[g, j], weights[g, j + 1], weights[g, j + 2], weights[g, j + 3]
                for d in range(dim):
                    o[g, d] += p0 * v0[d] + p1 * v1[d] + p2 * v2[d] + p3 * v3[d]
        for j in range(whole, budget):
            v0 = values[h, idx[j]]
            for g in range(group):
                p0 = weights[g, j]
                for d in range(dim):
                    o[g, d] += p0 * v0[d]


def sparse_attention_cpu(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode attention over the selected positions, :func:`kernels.sparse_decode_attention_reference`'s signature
    and result: q (heads, dim), keys/values (kv_heads, n, dim), indices (kv_heads, budget) all valid, bias
    (kv_heads, n) added to the logits → (heads, dim). Half-precision caches take the reference path."""
    if keys.dtype != torch.float32 or indices.shape[1] == 0:
        return sparse_decode_attention_reference(q, keys, values, indices, scale, bias)
    out = np.empty(q.shape, dtype=np.float32)
    scale = keys.shape[-1] ** -0.5 if scale is None else scale
    _sparse_attention(
        q.float().contiguous().numpy(),
        _buffer(keys),
        _buffer(values),
        indices.contiguous().numpy(),
        np.float32(scale),
        None if bias is None else bias.float().contiguous().numpy(),
        out,
    )
    return torch.from_numpy(out).to(q.dtype)
