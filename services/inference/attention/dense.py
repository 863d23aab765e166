"""``dense``: exact attention over the whole cache with PyTorch SDPA — the reference and the baseline."""

from __future__ import annotations

import torch

from services.inference.attention.base import AttentionBackend, causal_attention, decode_attention
from services.inference.kv_cache import LayerCache


class DenseBackend(AttentionBackend):
    name = "dense"

    def prefill(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        cache.append(k, v)
        return causal_attention(q, cache.keys(), cache.values())

    def decode(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        cache.append(k, v)
        return decode_attention(q, cache.keys(), cache.values())
