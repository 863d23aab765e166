"""The attention backend interface the model calls for every layer of a serving step."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from services.inference.config import ModelConfig
from services.inference.kv_cache import LayerCache


class AttentionBackend(ABC):
    name: str

    def validate(self, config: ModelConfig) -> None:
        """Raise ValueError if this backend cannot serve a model of this shape (checked before any request runs)."""
        return  # most backends serve any shape

    def adopt(self, layer: int, cache: LayerCache) -> None:
        """Take over a cache that holds exact K/V (a dense prefill, a shared prefix): build this
        backend's own state for it, as if it had run the prefill itself."""
        return  # backends that keep nothing beside K/V have nothing to build

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Append k, v to ``cache`` and attend: q (heads, tokens, dim), k/v (kv_heads, tokens, dim).

        One new token is a decode step; several are a prefill (chunk), whose tokens see the
        cache before them and each other causally.
        """
        if q.shape[1] == 1:
            return self.decode(layer, q, k, v, cache)
        return self.prefill(layer, q, k, v, cache)

    @abstractmethod
    def prefill(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache
    ) -> torch.Tensor: ...

    @abstractmethod
    def decode(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache
    ) -> torch.Tensor: ...


def decode_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """One query per head over all ``keys``: q (heads, 1, dim), keys/values (kv_heads, n, dim).

    Two batched matmuls per KV head group: for a single query this beats SDPA's CPU flash
    kernel, which is tuned for long query blocks. ``bias`` (kv_heads, n) is added to the
    logits (a merged key standing for several tokens adds the log of their count).
    """
    kv_heads, dim = keys.shape[0], keys.shape[-1]
    grouped = q.reshape(kv_heads, -1, dim)  # the query heads that share each KV head
    logits = grouped @ keys.transpose(1, 2) * dim**-0.5
    if bias is not None:
        logits = logits + bias.unsqueeze(1)
    out = torch.softmax(logits.float(), dim=-1).to(values.dtype) @ values
    return out.reshape(q.shape)


def causal_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """SDPA of the last ``q.shape[1]`` positions over all ``keys`` (GQA by head groups)."""
    new, total = q.shape[1], keys.shape[1]
    mask = None
    if 1 < new < total:
        # Query i (at position total-new+i) sees keys up to and including its own position.
        mask = torch.ones(new, total, dtype=torch.bool, device=q.device).tril(total - new)
    return torch.nn.functional.scaled_dot_product_attention(
        q.unsqueeze(0),
        keys.unsqueeze(0),
        values.unsqueeze(0),
        attn_mask=mask,
        is_causal=new == total and new > 1,  # a prefill from empty: the fast causal kernel, no mask
        enable_gqa=q.shape[0] != keys.shape[0],
    ).squeeze(0)
