"""Random-weight checkpoints with real model shapes, for speed and memory measurements.

Accuracy needs trained weights (the retrieval checkpoint, or a real model on a GPU node);
timing and memory only need the right shapes, so these are generated, never downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from services.inference.config import ModelConfig
from services.inference.model import Transformer
from services.inference.weights import save_model

SHAPES: dict[str, dict[str, object]] = {
    # Llama-3-8B's attention geometry (head_dim 128, GQA 4:1) at a size a CPU can step through.
    "llama3-8b-like": dict(
        hidden_size=1024,
        intermediate_size=3584,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=128,
        rope_theta=500_000.0,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=10_000.0,
    ),
}
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_CORPUS = [
    "the service cartservice is slow because redis is saturated",
    "checkout failed: payment timed out after 1000 ms",
    "root cause: cpu hog on the currency service pod",
    "restart the deployment, then watch the error rate and latency",
    "hello world, this is a small tokenizer for tests and benchmarks",
]


def build_byte_tokenizer(out: Path, vocab_size: int = 512) -> None:
    """A byte-level BPE tokenizer (any text encodes) with a chat template, written beside a checkpoint."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|bos|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(_CORPUS * 20, trainer=trainer)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    config = {"bos_token": "<|bos|>", "eos_token": "<|end|>", "add_bos_token": True, "chat_template": CHAT_TEMPLATE}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def make_random_checkpoint(shape: str, out: Path, max_context: int = 131_072, seed: int = 0) -> Path:
    """A checkpoint of ``shape`` with random weights and the byte-level tokenizer."""
    build_byte_tokenizer(out)
    vocab = Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size()
    config = ModelConfig(
        model_type="llama",
        vocab_size=vocab,
        max_position_embeddings=max_context,
        bos_token_id=0,
        eos_token_id=(1,),
        **SHAPES[shape],  # type: ignore[arg-type]
    )
    torch.manual_seed(seed)
    model = Transformer(config)
    for name, param in model.named_parameters():
        if name.endswith("weight") and param.dim() == 2:
            torch.nn.init.normal_(param, std=0.02)
    save_model(model, out)
    return out
