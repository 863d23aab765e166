"""The model's shape, read from a Hugging Face ``config.json`` (Llama, Qwen2 and Mistral families)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED = {"llama", "qwen2", "mistral"}


class CheckpointError(ValueError):
    """The checkpoint directory is missing, incomplete or not a model this engine runs."""


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10_000.0
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False  # Qwen2 has biases on q, k and v
    tie_word_embeddings: bool = False
    sliding_window: int | None = None  # Mistral; read but served with full attention
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    torch_dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def group_size(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        model_type = raw.get("model_type", "")
        if model_type not in SUPPORTED:
            raise CheckpointError(f"model_type {model_type!r} is not supported (supported: {sorted(SUPPORTED)})")
        try:
            heads = int(raw["num_attention_heads"])
            hidden = int(raw["hidden_size"])
            kv_heads = int(raw.get("num_key_value_heads") or heads)
            eos = raw.get("eos_token_id")
            # transformers 5 writes "rope_parameters" (theta inside); older checkpoints "rope_scaling".
            rope = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
            theta = float(rope.pop("rope_theta", raw.get("rope_theta", 10_000.0)))
            scaling = rope if rope.get("rope_type", rope.get("type", "default")) not in ("default", None) else None
            config = cls(
                model_type=model_type,
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(raw["intermediate_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=kv_heads,
                head_dim=int(raw.get("head_dim") or hidden // heads),
                max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                rope_theta=theta,
                rope_scaling=scaling,
                attention_bias=bool(raw.get("attention_bias", model_type == "qwen2")),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                sliding_window=raw.get("sliding_window"),
                bos_token_id=raw.get("bos_token_id"),
                eos_token_id=tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),)),
                torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"config.json is malformed: {error!r}") from error
        if heads % kv_heads:
            raise CheckpointError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
        return config

    @classmethod
    def from_dir(cls, path: Path) -> ModelConfig:
        file = Path(path) / "config.json"
        if not file.is_file():
            raise CheckpointError(f"no config.json in {path}")
        try:
            raw = json.loads(file.read_text())
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{file} is not valid JSON: {error}") from error
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` for this shape (a Llama-architecture checkpoint)."""
        return {
            "architectures": [
                {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}[
                    self.model_type
                ]
            ],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "attention_bias": self.attention_bias,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if len(self.eos_token_id) != 1 else self.eos_token_id[0],
            "hidden_act": "silu",
            "torch_dtype": self.torch_dtype,
        }
