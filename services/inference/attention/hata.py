"""``hata``: hash-aware top-k attention (Gong et al., 2025).

Every key gets a learned binary code, ``sign(k·W)`` packed into int32 words (``rbit`` bits), and
its norm, stored in the cache beside K/V (16 B + 2 B per token and KV head at rbit 128: about
3.5% of an fp16 K/V pair at head_dim 128). At decode the query is encoded the same way and each
key is scored by ``‖k‖·Σ_g(1 − 2·hamming/rbit)`` over the query heads of its GQA group — reading
16 bytes of code instead of a 256-byte key — and attention runs over the top-k keys only.

Prefill is dense, and so are the first ``dense_layers`` layers (2, as in the paper) and any
sequence still within the budget. On a GPU the Triton kernels in ``kernels/`` run; on the CPU
the fused numba kernels of ``kernels.hata_cpu`` (same signatures and results as the references).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from kernels import (
    hamming_score,
    hash_encode,
    hash_encode_reference,
    hash_encode_with_norms,
    hash_encode_with_norms_reference,
    hash_top_positions_cpu,
    sparse_attention_cpu,
    sparse_decode_attention,
)
from services.inference.attention.base import AttentionBackend, causal_attention, decode_attention
from services.inference.config import ModelConfig
from services.inference.kv_cache import LayerCache

WEIGHTS_FILE = "hata.safetensors"


def select_budget(budget: float, n: int) -> int:
    """Tokens to keep: a share of the context (budget <= 1) or a count (> 1), never more than there are."""
    return max(1, min(n, int(budget * n) if budget <= 1 else int(budget)))


class HataBackend(AttentionBackend):
    name = "hata"

    def __init__(
        self,
        weights: str | None = None,
        budget: float = 0.03,
        sink: int = 0,
        recent: int = 0,
        dense_layers: int | None = None,
    ) -> None:
        if weights is None or not Path(weights).is_file():
            raise ValueError(
                f"HATA needs trained hash weights ({WEIGHTS_FILE}; run `faultline train hata`), got {weights!r}"
            )
        if budget <= 0:
            raise ValueError(f"budget must be a ratio in (0, 1) or a token count, got {budget}")
        self.budget, self.sink, self.recent = budget, sink, recent
        self.weights: dict[int, torch.Tensor] = {}
        with safe_open(weights, framework="pt") as f:
            metadata = f.metadata() or {}
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                self.weights[int(name.split(".")[1])] = f.get_tensor(name).float()
        self.rbit = next(iter(self.weights.values())).shape[-1]
        self.dense_layers = int(metadata.get("dense_layers", 2)) if dense_layers is None else dense_layers

    def validate(self, config: ModelConfig) -> None:
        for layer, weight in self.weights.items():
            expected = (config.num_key_value_heads, config.head_dim)
            if layer >= config.num_hidden_layers or tuple(weight.shape[:2]) != expected:
                raise ValueError(
                    f"HATA weights for layer {layer} have shape {tuple(weight.shape)}; this model needs "
                    f"{expected} x rbit for layers < {config.num_hidden_layers}"
                )

    def hashed(self, layer: int) -> bool:
        return layer >= self.dense_layers and layer in self.weights

    def encode_keys(self, layer: int, k: torch.Tensor, cache: LayerCache, start: int) -> None:
        weight = self.weights[layer].to(k.device)
        encode = hash_encode_with_norms if k.is_cuda else hash_encode_with_norms_reference
        codes, norms = encode(k, weight)
        cache.write_extra("hata_codes", start, codes)
        cache.write_extra("hata_norms", start, norms.half())  # 2 B per token, as HATA stores them

    def adopt(self, layer: int, cache: LayerCache) -> None:
        if self.hashed(layer):
            self.encode_keys(layer, cache.keys(), cache, 0)

    def prefill(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        start = cache.length
        cache.append(k, v)
        if self.hashed(layer):
            self.encode_keys(layer, k, cache, start)
        return causal_attention(q, cache.keys(), cache.values())

    def propose(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Append the new token and return the hash top-k positions per KV head, (kv_heads, budget)."""
        start = cache.length
        cache.append(k, v)
        n = cache.length
        if not self.hashed(layer):
            return torch.arange(n, device=k.device).expand(cache.kv_heads, n)
        self.encode_keys(layer, k, cache, start)
        weight = self.weights[layer].to(q.device)
        encode = hash_encode if q.is_cuda else hash_encode_reference
        q_codes = encode(q, weight).view(cache.kv_heads, -1, self.rbit // 32)  # heads grouped by KV head
        codes, norms, k_keep = cache.extra("hata_codes"), cache.extra("hata_norms"), select_budget(self.budget, n)
        if not q.is_cuda:  # scored and selected head by head in one fused CPU kernel
            return hash_top_positions_cpu(q_codes, codes, norms, self.rbit, k_keep, self.sink, self.recent)
        scores = hamming_score(q_codes, codes, norms, self.rbit, self.sink, self.recent)
        return torch.topk(scores, k_keep, dim=-1).indices

    def decode(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        if not self.hashed(layer) or select_budget(self.budget, cache.length + 1) >= cache.length + 1:
            cache.append(k, v)
            if self.hashed(layer):
                self.encode_keys(layer, k, cache, cache.length - 1)
            return decode_attention(q, cache.keys(), cache.values())
        indices = self.propose(layer, q, k, v, cache)
        attend = sparse_decode_attention if q.is_cuda else sparse_attention_cpu
        return attend(q[:, 0], cache.keys(), cache.values(), indices).unsqueeze(1)
