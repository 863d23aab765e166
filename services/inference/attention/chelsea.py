"""``chelsea``: KV-cache clustering by Chunked Soft Matching (Hu, Wang et al., 2025).

Nearby keys are highly similar, so the cache can merge them instead of evicting them:

- the keys between the attention sinks and the recent window are cut into chunks of ``chunk``
  tokens; inside a chunk, tokens alternate between sets A and B, and each A token is matched
  to its most cosine-similar B token (the alternating split is the optimal one when similarity
  falls convexly with distance, the paper's Theorem 6.1) — ``kernels.chelsea_match``, the
  Triton kernel on a GPU and its PyTorch reference on the CPU;
- the most similar edges are kept (as many as the round must remove; the rest are pruned) and
  each A token merges into its B token: K and V become size-weighted means, sizes add up;
- at attention time a merged entry's logit gets + log(size), so it weighs as the tokens it
  stands for (ToMe's proportional attention).

It runs after prefill and then, during decode, whenever the cache exceeds budget + ``interval``
entries, compressing back to the budget (several rounds when one halving is not enough). Prefill
merges over the whole middle; a decode round merges only the newest span of it (the tokens that
left the recent window since the last round and as many older entries), so each round costs
O(interval) instead of O(cache) — at 64K a whole-middle round took ~100 ms every 32 steps, more
than the attention it saves.
Outlier heads, found by a calibration pass and saved with the model, stay uncompressed; their
uncompressed length is kept by padding the compressed heads with size-0 entries, which attend
with weight zero and are not counted as held memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kernels import soft_matching, soft_matching_reference
from services.inference.attention.base import AttentionBackend, causal_attention, decode_attention
from services.inference.kv_cache import LayerCache

OUTLIERS_FILE = "chelsea_outliers.json"


def merge_round(
    k: torch.Tensor, v: torch.Tensor, size: torch.Tensor, merges: int, chunk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Remove ``merges`` entries per head by merging the most similar matched pairs (size-weighted)."""
    match = soft_matching if k.is_cuda else soft_matching_reference
    a_index, b_index, similarity = match(k, chunk)
    merges = min(merges, a_index.shape[1])
    keep_edges = torch.topk(similarity, merges, dim=-1).indices  # prune the low-similarity edges
    a = a_index.gather(1, keep_edges)
    b = b_index.gather(1, keep_edges)
    weight = size.unsqueeze(-1)
    k_sum, v_sum, total = k * weight, v * weight, size.clone()
    for tensor, source in ((k_sum, k * weight), (v_sum, v * weight)):
        tensor.scatter_add_(
            1,
            b.unsqueeze(-1).expand(-1, -1, k.shape[-1]),
            source.gather(1, a.unsqueeze(-1).expand(-1, -1, k.shape[-1])),
        )
    total.scatter_add_(1, b, size.gather(1, a))
    keep = torch.ones_like(size, dtype=torch.bool).scatter_(1, a, False)
    heads, dim = k.shape[0], k.shape[-1]
    total_kept = total[keep].view(heads, -1)
    denominator = total_kept.clamp_min(1e-9).unsqueeze(-1)
    return (
        (k_sum[keep].view(heads, -1, dim) / denominator).to(k.dtype),
        (v_sum[keep].view(heads, -1, dim) / denominator).to(v.dtype),
        total_kept,
    )


class ChelseaBackend(AttentionBackend):
    name = "chelsea"

    def __init__(
        self,
        budget: float = 0.2,
        chunk: int = 64,
        sinks: int = 16,
        recent: int = 64,
        interval: int = 32,
        outliers: str | None = None,
    ) -> None:
        if budget <= 0:
            raise ValueError(f"budget must be a ratio in (0, 1] or a token count, got {budget}")
        if chunk < 2 or chunk % 2:
            raise ValueError(f"chunk must be an even number >= 2, got {chunk}")
        self.budget, self.chunk, self.sinks, self.recent, self.interval = budget, chunk, sinks, recent, interval
        self.outliers: dict[int, list[int]] = {}
        if outliers:
            raw = json.loads(Path(outliers).read_text())
            self.outliers = {int(layer): heads for layer, heads in raw["outlier_heads"].items()}

    def _target(self, seen: int) -> int:
        return int(self.budget * seen) if self.budget <= 1 else int(self.budget)

    def adopt(self, layer: int, cache: LayerCache) -> None:
        self._admitted(layer, cache, 0, cache.length)
        self.compress(layer, cache, self._target(cache.length))

    def prefill(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        start = cache.length
        cache.append(k, v)
        self._admitted(layer, cache, start, k.shape[1])
        # A later prefill chunk sees merged entries: attend with their sizes.
        out = self._attend_chunk(q, cache) if start else causal_attention(q, cache.keys(), cache.values())
        self.compress(layer, cache, self._target(self._seen(cache)))
        return out

    def decode(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        self.admit(layer, k, v, cache)
        return decode_attention(q, cache.keys(), cache.values(), bias=self._bias(cache))

    def admit(self, layer: int, k: torch.Tensor, v: torch.Tensor, cache: LayerCache) -> None:
        """Append one decode token and, once the cache is ``interval`` entries over budget, merge back to it."""
        start = cache.length
        cache.append(k, v)
        self._admitted(layer, cache, start, k.shape[1])
        target = self._target(self._seen(cache))
        if self._held(layer, cache) <= target + self.interval:
            return
        if self.outliers.get(layer):  # padded heads: the whole-middle path knows their layout
            self.compress(layer, cache, target)
        else:
            self.compress_newest(layer, cache, target)

    # -- hooks for backends that keep more per entry ----------------------------------------------

    def _admitted(self, layer: int, cache: LayerCache, start: int, count: int) -> None:
        """New tokens [start, start+count) entered the cache, each standing for itself."""
        self._sizes(cache, start, count)

    def _rewritten(self, layer: int, cache: LayerCache, start: int, count: int) -> None:
        """Entries [start, start+count) were replaced by merged ones (their K/V and sizes are set)."""
        return

    # -- state ---------------------------------------------------------------------------------

    @staticmethod
    def _sizes(cache: LayerCache, start: int, count: int) -> None:
        cache.write_extra("chelsea_size", start, torch.ones(cache.kv_heads, count))

    @staticmethod
    def _seen(cache: LayerCache) -> int:
        """Tokens the cache stands for: the largest total size over heads (outlier heads hold them all)."""
        return int(cache.extra("chelsea_size").sum(1).max())

    def _held(self, layer: int, cache: LayerCache) -> int:
        """Entries a compressed head holds: the cache length, less the padding when the layer has outlier heads."""
        if not self.outliers.get(layer):
            return cache.length
        compressed = self._compressed_heads(layer, cache.kv_heads)
        return int((cache.extra("chelsea_size")[compressed[0]] > 0).sum()) if compressed else 0

    def _compressed_heads(self, layer: int, kv_heads: int) -> list[int]:
        outliers = self.outliers.get(layer, [])
        return [h for h in range(kv_heads) if h not in outliers]

    @staticmethod
    def _bias(cache: LayerCache) -> torch.Tensor:
        return torch.log(cache.extra("chelsea_size"))  # log 0 = -inf: padding attends with weight 0

    def _attend_chunk(self, q: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        new, total = q.shape[1], cache.length
        mask = torch.zeros(new, total).masked_fill(
            ~torch.ones(new, total, dtype=torch.bool).tril(total - new), float("-inf")
        )
        bias = self._bias(cache)  # (kv_heads, total)
        group = q.shape[0] // cache.kv_heads
        attn_mask = mask + bias.repeat_interleave(group, 0)[:, None, :]
        return torch.nn.functional.scaled_dot_product_attention(
            q.unsqueeze(0),
            cache.keys().repeat_interleave(group, 0).unsqueeze(0),
            cache.values().repeat_interleave(group, 0).unsqueeze(0),
            attn_mask=attn_mask.unsqueeze(0),
        ).squeeze(0)

    def compress(self, layer: int, cache: LayerCache, target: int) -> None:
        """Merge middle entries (never sinks or the recent window) until at most ``target`` remain."""
        length = cache.length
        middle_end = length - self.recent
        if length <= target or middle_end - self.sinks < 2:
            return
        keys, values, sizes = cache.keys(), cache.values(), cache.extra("chelsea_size")
        outliers = self.outliers.get(layer, [])
        compressed = self._compressed_heads(layer, cache.kv_heads)
        if not compressed:
            return
        idx = torch.tensor(compressed)
        k_mid = keys[idx, self.sinks : middle_end]
        v_mid = values[idx, self.sinks : middle_end]
        s_mid = sizes[idx, self.sinks : middle_end]
        real = s_mid[0] > 0  # padding (size 0) sits only at the end of the middle, same for all compressed heads
        k_mid, v_mid, s_mid = k_mid[:, real], v_mid[:, real], s_mid[:, real]
        goal = max(2, target - self.sinks - self.recent)
        while k_mid.shape[1] > goal:  # one round can at most halve
            k_mid, v_mid, s_mid = merge_round(k_mid, v_mid, s_mid, k_mid.shape[1] - goal, self.chunk)
        kept = k_mid.shape[1]
        full_mid = middle_end - self.sinks if outliers else kept
        new_k = keys.new_zeros(cache.kv_heads, self.sinks + full_mid + self.recent, keys.shape[-1])
        new_v, new_s = torch.zeros_like(new_k), sizes.new_zeros(cache.kv_heads, new_k.shape[1])
        for tensor, source in ((new_k, keys), (new_v, values), (new_s, sizes)):
            tensor[:, : self.sinks] = source[:, : self.sinks]
            tensor[:, self.sinks + full_mid :] = source[:, middle_end:]
            if outliers:
                tensor[outliers, self.sinks : self.sinks + full_mid] = source[outliers, self.sinks : middle_end]
        new_k[idx, self.sinks : self.sinks + kept] = k_mid
        new_v[idx, self.sinks : self.sinks + kept] = v_mid
        new_s[idx, self.sinks : self.sinks + kept] = s_mid
        cache.rewrite(new_k, new_v, {"chelsea_size": new_s})
        self._rewritten(layer, cache, 0, cache.length)
        self._count_round(cache)

    def compress_newest(self, layer: int, cache: LayerCache, target: int) -> None:
        """Merge down to ``target`` inside the newest span of the middle only (no outlier heads in the layer)."""
        middle_end = cache.length - self.recent
        remove = cache.length - target
        span = min(middle_end - self.sinks, max(self.chunk, 2 * remove))  # one round can at most halve
        if remove <= 0 or span < 2:
            return
        start = middle_end - span
        k_mid = cache.keys()[:, start:middle_end]
        v_mid = cache.values()[:, start:middle_end]
        s_mid = cache.extra("chelsea_size")[:, start:middle_end]
        goal = max(1, span - remove)
        while k_mid.shape[1] > goal:
            k_mid, v_mid, s_mid = merge_round(k_mid, v_mid, s_mid, k_mid.shape[1] - goal, self.chunk)
        cache.splice(start, middle_end, k_mid, v_mid, {"chelsea_size": s_mid})
        self._rewritten(layer, cache, start, k_mid.shape[1])
        self._count_round(cache)

    @staticmethod
    def _count_round(cache: LayerCache) -> None:
        cache.stats["chelsea_compressions"] = cache.stats.get("chelsea_compressions", 0) + 1
