"""The engine's model against the reference implementation (transformers), and checkpoint errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from services.inference.attention import create_backend
from services.inference.config import CheckpointError
from services.inference.kv_cache import SequenceCache
from services.inference.model import Segment
from services.inference.weights import load_model

SHAPE = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)
CASES = {
    "llama": (LlamaForCausalLM, LlamaConfig, {}),
    "llama3-rope": (
        LlamaForCausalLM,
        LlamaConfig,
        {
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 128,
            }
        },
    ),
    "llama-linear-rope-tied": (
        LlamaForCausalLM,
        LlamaConfig,
        {"rope_scaling": {"rope_type": "linear", "factor": 4.0}, "tie_word_embeddings": True},
    ),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, {}),
    "mistral": (MistralForCausalLM, MistralConfig, {"sliding_window": None}),
}


def _checkpoint(tmp_path: Path, case: str) -> tuple[torch.nn.Module, Path]:
    model_cls, config_cls, extra = CASES[case]
    torch.manual_seed(0)
    reference = model_cls(config_cls(**SHAPE, **extra)).eval()
    reference.save_pretrained(tmp_path)
    return reference, tmp_path


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers_in_fp32(tmp_path: Path, case: str) -> None:
    reference, path = _checkpoint(tmp_path, case)
    ours = load_model(path)
    tokens = torch.randint(0, SHAPE["vocab_size"], (2, 300), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (reference(tokens).logits - ours(tokens)).abs().max().item()
    assert diff < 1e-4, f"max |Δlogit| = {diff}"


def test_prefill_then_decode_through_the_cache_matches_a_full_forward(tmp_path: Path) -> None:
    reference, path = _checkpoint(tmp_path, "qwen2")
    ours = load_model(path)
    tokens = torch.randint(0, SHAPE["vocab_size"], (1, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(tokens).logits[0]
    config = ours.config
    caches = [SequenceCache.empty(2, config.num_key_value_heads, config.head_dim, torch.float32) for _ in range(2)]
    backend = create_backend("dense")
    # Two sequences in one packed step: a 40-token prefill and a 20-token one.
    packed = torch.cat([tokens[0, :40], tokens[0, :20]])
    positions = torch.cat([torch.arange(40), torch.arange(20)])
    segments = [Segment(caches[0], 0, 40, backend), Segment(caches[1], 40, 20, backend)]
    logits = ours.forward_packed(packed, positions, segments)
    assert torch.allclose(logits[0], expected[39], atol=1e-4) and torch.allclose(logits[1], expected[19], atol=1e-4)
    for i in range(40, 64):  # decode the first sequence token by token
        step = ours.forward_packed(tokens[0, i : i + 1], torch.tensor([i]), [Segment(caches[0], 0, 1, backend)])
        assert torch.allclose(step[0], expected[i], atol=1e-4)
    assert caches[0].length == 64 and caches[1].length == 20
    assert caches[0].nbytes() == 64 * 2 * 2 * config.num_key_value_heads * config.head_dim * 4


def test_checkpoint_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="not supported"):
        load_model(tmp_path)
    _checkpoint(tmp_path, "llama")
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match="missing"):
        load_model(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors"):
        load_model(tmp_path)
