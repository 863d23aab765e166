"""Checkpoints in the Hugging Face layout: ``config.json`` + ``*.safetensors`` (sharded too), no downloads."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from services.inference.config import CheckpointError, ModelConfig
from services.inference.model import Transformer
from services.inference.rope import RotaryEmbedding

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _shards(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return sorted({path / name for name in weight_map.values()})
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(path.glob("*.safetensors"))
    if not found:
        raise CheckpointError(f"no *.safetensors in {path}")
    return found


def load_model(path: Path | str, dtype: str | torch.dtype | None = None, device: str = "cpu") -> Transformer:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    config = ModelConfig.from_dir(path)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else DTYPES.get(dtype or config.torch_dtype, torch.float32)
    with torch.device("meta"):
        model = Transformer(config)
    state: dict[str, torch.Tensor] = {}
    for shard in _shards(path):
        if not shard.is_file():
            raise CheckpointError(f"shard {shard.name} named in the index is missing")
        with safe_open(str(shard), framework="pt", device=device) as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                state[name] = f.get_tensor(name).to(torch_dtype)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    expected = {k for k in model.state_dict() if not (config.tie_word_embeddings and k == "lm_head.weight")}
    missing, unexpected = expected - set(state), set(state) - expected
    unexpected = {k for k in unexpected if not k.endswith("rotary_emb.inv_freq")}
    if missing or unexpected:
        raise CheckpointError(
            f"weights do not match config.json: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.rotary = RotaryEmbedding(config).to(device)  # its buffer is computed, not stored
    return model.eval()


def save_model(model: Transformer, path: Path | str) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("rotary.")}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2))
