"""HATA hash training: labels, triples from recorded prefills, and a loss that goes down."""

from __future__ import annotations

import numpy as np
import torch

from services.inference.config import ModelConfig
from services.inference.hata_train import build_triples, labels_for, record, train_layer
from services.inference.model import Transformer
from services.inference.shapes import SHAPES


def test_labels_weight_the_top_tenth_by_rank() -> None:
    scores = torch.arange(50, dtype=torch.float32)  # key 49 scores highest
    s = labels_for(scores)
    assert s[49] == 20 and s[45] == 1  # top 5 keys: 20 ... 1 by rank
    assert (s[:45] == -1).all()


def test_triples_come_from_recorded_prefills_and_training_lowers_the_loss() -> None:
    torch.manual_seed(0)
    config = ModelConfig(model_type="llama", vocab_size=64, max_position_embeddings=512, **SHAPES["tiny"])  # type: ignore[arg-type]
    model = Transformer(config).eval()
    rng = np.random.default_rng(0)
    recorded = [record(model, rng.integers(0, 64, 200).tolist()) for _ in range(2)]
    assert recorded[0][0][1].shape == (config.num_attention_heads, 200, config.head_dim)
    triples = build_triples(recorded, layer=1, group=config.group_size, rng=rng, queries_per_prompt=4)
    assert len(triples.q) == config.num_key_value_heads
    for q, k, s in zip(triples.q, triples.k, triples.s, strict=True):
        assert q.shape == k.shape and len(s) == len(q)
        positives = (s > 0).sum().item()
        assert positives > 0 and (s < 0).sum().item() <= 2 * positives  # negatives subsampled 2:1
    _, short = train_layer(triples, config.head_dim, rbit=16, epochs=1, steps=2, seed=0)
    _, long = train_layer(triples, config.head_dim, rbit=16, epochs=4, steps=20, seed=0)
    assert long < short
