"""Baselines the sparse backends are measured against, at the same budget.

- ``oracle_topk``: exact top-k — score every key with the true q·k (summed over the GQA group,
  like HATA's selection), keep the best; the accuracy ceiling of any top-k selector.
- ``window``: StreamingLLM — attention sinks plus the most recent tokens; no selection at all.
"""

from __future__ import annotations

import torch

from kernels import sparse_attention_cpu
from services.inference.attention.base import AttentionBackend, causal_attention, decode_attention
from services.inference.attention.hata import select_budget
from services.inference.kv_cache import LayerCache


class _DecodeOnly(AttentionBackend):
    """Exact prefill; the approximation is in decode only, as for HATA."""

    def __init__(self, budget: float = 0.03, dense_layers: int = 0) -> None:
        if budget <= 0:
            raise ValueError(f"budget must be a ratio in (0, 1] or a token count, got {budget}")
        self.budget, self.dense_layers = budget, dense_layers

    def prefill(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        cache.append(k, v)
        return causal_attention(q, cache.keys(), cache.values())

    def decode(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        cache.append(k, v)
        keep = select_budget(self.budget, cache.length)
        if layer < self.dense_layers or keep >= cache.length:
            return decode_attention(q, cache.keys(), cache.values())
        return sparse_attention_cpu(q[:, 0], cache.keys(), cache.values(), self.select(q, cache, keep)).unsqueeze(1)

    def select(self, q: torch.Tensor, cache: LayerCache, keep: int) -> torch.Tensor:
        raise NotImplementedError


class OracleTopKBackend(_DecodeOnly):
    name = "oracle_topk"

    def select(self, q: torch.Tensor, cache: LayerCache, keep: int) -> torch.Tensor:
        keys = cache.keys()
        grouped = q.reshape(cache.kv_heads, -1, q.shape[-1])
        logits = (grouped @ keys.transpose(1, 2)).sum(1)  # (kv_heads, n): the group's summed q·k
        return torch.sort(torch.topk(logits, keep, dim=-1).indices, dim=-1).values


class WindowBackend(_DecodeOnly):
    name = "window"

    def __init__(self, budget: float = 0.03, sinks: int = 4, dense_layers: int = 0) -> None:
        super().__init__(budget, dense_layers)
        self.sinks = sinks

    def select(self, q: torch.Tensor, cache: LayerCache, keep: int) -> torch.Tensor:
        n = cache.length
        sinks = min(self.sinks, keep)
        positions = torch.cat([torch.arange(sinks), torch.arange(n - (keep - sinks), n)])
        return positions.expand(cache.kv_heads, -1)
