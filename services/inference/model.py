"""A Llama-family decoder in plain PyTorch (gpt-fast style): RMSNorm, RoPE, GQA attention, SwiGLU.

Module names follow the Hugging Face checkpoints, so weights load without renaming. Two
entry points: :meth:`Transformer.forward` runs whole sequences with causal SDPA (training,
reference checks); :meth:`Transformer.forward_packed` runs a serving step — tokens of several
sequences packed together, each segment attending over its own KV cache through the chosen
attention backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from services.inference.attention.base import AttentionBackend
from services.inference.config import ModelConfig
from services.inference.kv_cache import SequenceCache
from services.inference.rope import RotaryEmbedding, apply_rotary


@dataclass(frozen=True)
class Segment:
    """A run of consecutive packed tokens that belong to one sequence, and how it attends."""

    cache: SequenceCache
    start: int
    length: int
    backend: AttentionBackend


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.heads, self.kv_heads, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)

    def _qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):  # type: ignore[no-untyped-def]
        shape = x.shape[:-1]
        q = self.q_proj(x).view(*shape, self.heads, self.head_dim)
        k = self.k_proj(x).view(*shape, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(*shape, self.kv_heads, self.head_dim)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Whole sequences, causal: x (batch, tokens, hidden)."""
        q, k, v = (t.transpose(1, 2) for t in self._qkv(x, cos, sin))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.heads != self.kv_heads)
        return self.o_proj(out.transpose(1, 2).flatten(-2))

    def forward_packed(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        segments: Sequence[Segment],
    ) -> torch.Tensor:
        """Packed tokens x (tokens, hidden); each segment appends to and attends over its own cache."""
        q, k, v = self._qkv(x, cos, sin)
        out = torch.empty_like(q)
        for seg in segments:
            span = slice(seg.start, seg.start + seg.length)
            cache = seg.cache.layers[self.layer]
            out[span] = seg.backend.attend(
                self.layer, q[span].transpose(0, 1), k[span].transpose(0, 1), v[span].transpose(0, 1), cache
            ).transpose(0, 1)
        return self.o_proj(out.flatten(-2))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Backbone(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.rotary = RotaryEmbedding(config)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for every position of whole sequences: tokens (batch, tokens)."""
        if positions is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device)
        cos, sin = self.rotary(positions)
        h = self.model.embed_tokens(tokens)
        for layer in self.model.layers:
            h = h + layer.self_attn(layer.input_layernorm(h), cos, sin)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.lm_head(self.model.norm(h))

    @torch.inference_mode()
    def forward_packed(
        self, tokens: torch.Tensor, positions: torch.Tensor, segments: Sequence[Segment]
    ) -> torch.Tensor:
        """One serving step: logits of each segment's last token, shape (segments, vocab)."""
        cos, sin = self.rotary(positions)
        h = self.model.embed_tokens(tokens)
        for layer in self.model.layers:
            h = h + layer.self_attn.forward_packed(layer.input_layernorm(h), cos, sin, segments)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        last = torch.tensor([s.start + s.length - 1 for s in segments], device=tokens.device)
        return self.lm_head(self.model.norm(h[last]))
