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
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # per-token backend state, aligned with K/V
    summaries: dict[str, torch.Tensor] = field(default_factory=dict)  # backend state per page or cluster
    # What approximate backends measured while serving the sequence (e.g. the TV distance);
    # one dict shared by all layers of a sequence.
    stats: dict[str, float] = field(default_factory=dict)

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
        for name, old in self.extras.items():
            new = old.new_empty((old.shape[0], capacity, *old.shape[2:]))
            new[:, : self.length] = old[:, : self.length]
            self.extras[name] = new

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: (kv_heads, tokens, head_dim)."""
        end = self.length + k.shape[1]
        if end > self.capacity:
            self._grow(end)
        self.k[:, self.length : end] = k
        self.v[:, self.length : end] = v
        self.length = end

    def write_extra(self, name: str, start: int, values: torch.Tensor) -> None:
        """Per-token state of a backend for tokens [start, start+t): values (kv_heads, t, ...).

        Stored with the cache's capacity and grown with it, so it stays aligned with K/V.
        """
        buffer = self.extras.get(name)
        if buffer is None:  # later growth happens in _grow, with K/V
            buffer = self.extras[name] = values.new_empty((values.shape[0], self.capacity, *values.shape[2:]))
        buffer[:, start : start + values.shape[1]] = values

    def rewrite(self, k: torch.Tensor, v: torch.Tensor, extras: dict[str, torch.Tensor]) -> None:
        """Replace the whole content by a compacted one (fewer tokens), e.g. after merging keys."""
        self.length = k.shape[1]
        self.k[:, : self.length] = k
        self.v[:, : self.length] = v
        for name, values in extras.items():
            self.extras[name][:, : self.length] = values

    def splice(self, start: int, end: int, k: torch.Tensor, v: torch.Tensor, extras: dict[str, torch.Tensor]) -> None:
        """Replace entries [start, end) by the shorter run ``k``/``v`` and close the gap (later entries move down).

        Extras named in ``extras`` get those values for the new run; the others move with their
        tokens too, but their values over the new run are stale until the caller rewrites them.
        """
        count, tail = k.shape[1], self.length - end
        if count > end - start:
            raise ValueError(f"splice may only shrink the cache: {count} entries for [{start}, {end})")
        buffers = {"k": self.k, "v": self.v, **self.extras}
        new = {"k": k, "v": v, **extras}
        for name, buffer in buffers.items():
            buffer[:, start + count : start + count + tail] = buffer[:, end : self.length].clone()  # overlapping
            if name in new:
                buffer[:, start : start + count] = new[name]
        self.length = start + count + tail

    def extra(self, name: str) -> torch.Tensor:
        return self.extras[name][:, : self.length]

    def keys(self) -> torch.Tensor:
        return self.k[:, : self.length]

    def values(self) -> torch.Tensor:
        return self.v[:, : self.length]

    def nbytes(self) -> int:
        """Bytes held for the tokens in the cache (not the spare capacity), backend state included."""
        summaries = sum(t.element_size() * t.numel() for t in self.summaries.values())
        return self.length * (self.kv_bytes_per_token() + self.extra_bytes_per_token()) + summaries

    def kv_bytes_per_token(self) -> int:
        return 2 * self.kv_heads * self.head_dim * self.k.element_size()

    def extra_bytes_per_token(self) -> int:
        return sum(t.element_size() * t[:, :1].numel() for t in self.extras.values())


@dataclass
class SequenceCache:
    layers: list[LayerCache]

    @classmethod
    def empty(
        cls, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device | str = "cpu"
    ) -> SequenceCache:
        device = torch.device(device)
        stats: dict[str, float] = {}
        return cls([LayerCache(kv_heads, head_dim, dtype, device, stats=stats) for _ in range(num_layers)])

    @property
    def stats(self) -> dict[str, float]:
        return self.layers[0].stats

    @property
    def length(self) -> int:
        return self.layers[0].length

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)
