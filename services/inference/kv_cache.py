"""Per-sequence KV cache: one growable buffer pair per layer, plus whatever a backend keeps beside it.

Buffers grow by doubling, so a long context costs amortised O(1) per token and never a
fixed up-front reservation; a backend stores its own per-token state (hash codes, cluster
sizes) in ``extras`` and accounts for it in :meth:`LayerCache.nbytes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LayerCache:
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    k: torch.Tensor = field(init=False)
    v: torch.Tensor = field(init=False)
    length: int = 0
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.k = torch.empty(self.kv_heads, 16, self.head_dim, dtype=self.dtype, device=self.device)
        self.v = torch.empty_like(self.k)

    @property
    def capacity(self) -> int:
        return self.k.shape[1]

    def _grow(self, needed: int) -> None:
        capacity = self.capacity
        while capacity < needed:
            capacity *= 2
        for name in ("k", "v"):
            old = getattr(self, name)
            new = torch.empty(self.kv_heads, capacity, self.head_dim, dtype=self.dtype, device=self.device)
            new[:, : self.length] = old[:, : self.length]
            setattr(self, name, new)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: (kv_heads, tokens, head_dim)."""
        end = self.length + k.shape[1]
        if end > self.capacity:
            self._grow(end)
        self.k[:, self.length : end] = k
        self.v[:, self.length : end] = v
        self.length = end

    def keys(self) -> torch.Tensor:
        return self.k[:, : self.length]

    def values(self) -> torch.Tensor:
        return self.v[:, : self.length]

    def replace(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Swap in a compacted cache (e.g. after clustering): k, v (kv_heads, tokens, head_dim)."""
        self.length = 0
        self.k = torch.empty_like(k[:, :16]) if k.shape[1] < 16 else torch.empty_like(k)
        self.v = torch.empty_like(self.k)
        self.append(k, v)

    def nbytes(self) -> int:
        """Bytes held for the tokens in the cache (not the spare capacity)."""
        per_token = 2 * self.kv_heads * self.head_dim * self.k.element_size()
        extra = sum(t.element_size() * t.numel() for t in self.extras.values())
        return self.length * per_token + extra


@dataclass
class SequenceCache:
    layers: list[LayerCache]

    @classmethod
    def empty(
        cls, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device | str = "cpu"
    ) -> SequenceCache:
        device = torch.device(device)
        return cls([LayerCache(kv_heads, head_dim, dtype, device) for _ in range(num_layers)])

    @property
    def length(self) -> int:
        return self.layers[0].length

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)
