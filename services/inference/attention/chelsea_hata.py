"""``chelsea_hata``: cluster the cache (Chelsea), then hash-select among the centroids (HATA).

Neither paper combines the two, and cluster-level selection such as ClusterKV does not merge.
Here clustering shrinks what has to be stored and scanned, and the hash picks, among the
merged entries and the recent tokens, the few worth attending to: the work per decode step
falls with both the cache ratio and the hash budget.

A merged entry stands for ``size`` tokens, so its selection score is the hash estimate of its
logit plus log(size): ‖k‖·mean‖q‖·(group-mean cosine estimate)/√d + log(size). The hash
codes of merged entries are recomputed after each compression.
"""

from __future__ import annotations

import torch

from kernels import hamming_score_cpu, hash_encode_reference, sparse_attention_cpu, top_positions_cpu
from services.inference.attention.base import decode_attention
from services.inference.attention.chelsea import ChelseaBackend
from services.inference.attention.hata import HataBackend, select_budget
from services.inference.config import ModelConfig
from services.inference.kv_cache import LayerCache


class ChelseaHataBackend(ChelseaBackend):
    name = "chelsea_hata"

    def __init__(
        self, weights: str | None = None, hash_budget: float = 0.25, budget: float = 0.2, **chelsea: object
    ) -> None:
        super().__init__(budget=budget, **chelsea)  # type: ignore[arg-type]
        self.hata = HataBackend(weights=weights, budget=hash_budget)

    def validate(self, config: ModelConfig) -> None:
        self.hata.validate(config)

    def _admitted(self, layer: int, cache: LayerCache, start: int, count: int) -> None:
        super()._admitted(layer, cache, start, count)
        self._encode(layer, cache, start, count)

    def _rewritten(self, layer: int, cache: LayerCache, start: int, count: int) -> None:
        self._encode(layer, cache, start, count)  # a merged entry's code is its mean key's

    def _encode(self, layer: int, cache: LayerCache, start: int, count: int) -> None:
        if self.hata.hashed(layer):
            self.hata.encode_keys(layer, cache.keys()[:, start : start + count], cache, start)

    def decode(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        self.admit(layer, k, v, cache)
        bias = self._bias(cache)
        keep = select_budget(self.hata.budget, cache.length)
        if not self.hata.hashed(layer) or keep >= cache.length:
            return decode_attention(q, cache.keys(), cache.values(), bias=bias)
        kv_heads, group = cache.kv_heads, q.shape[0] // cache.kv_heads
        q_codes = hash_encode_reference(q, self.hata.weights[layer]).view(kv_heads, group, -1)
        cosine_sum = hamming_score_cpu(q_codes, cache.extra("hata_codes"), cache.extra("hata_norms"), self.hata.rbit)
        q_norm = q.float().norm(dim=-1).view(kv_heads, group).mean(1, keepdim=True)
        estimate = cosine_sum * q_norm / (group * q.shape[-1] ** 0.5) + bias  # ≈ the entry's logit
        indices = top_positions_cpu(estimate, keep)
        return sparse_attention_cpu(q[:, 0], cache.keys(), cache.values(), indices, bias=bias).unsqueeze(1)
