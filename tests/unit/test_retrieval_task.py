"""The synthetic key–value retrieval task, its tokenizer, and the committed retrieval checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from services.inference.training.retrieval_task import (
    BOS,
    IGNORE,
    VOCAB,
    TrainingShape,
    build_tokenizer,
    evaluate,
    retrieval_prompts,
    training_batch,
)

CHECKPOINT = Path(__file__).resolve().parents[2] / "services/inference/checkpoints/retrieval-lm"
SHAPE = TrainingShape(256, pair_fraction=0.5, repeat_fraction=0.5, max_span=16384)


def test_training_batches_depend_only_on_the_seed() -> None:
    first = training_batch(np.random.default_rng(7), SHAPE, 4)
    again = training_batch(np.random.default_rng(7), SHAPE, 4)
    other = training_batch(np.random.default_rng(8), SHAPE, 4)
    for name in ("tokens", "positions", "targets"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    assert not torch.equal(first.tokens, other.tokens)


def test_training_targets_are_the_values_bound_earlier() -> None:
    batch = training_batch(np.random.default_rng(1), SHAPE, 8)
    assert batch.tokens.shape == (8, SHAPE.length)
    assert (batch.targets != IGNORE).sum() > 8 * 20  # dense supervision, not one query per sequence
    for tokens, positions, targets in zip(batch.tokens.tolist(), batch.positions, batch.targets.tolist(), strict=True):
        assert tokens[0] == BOS and positions[0] == 0
        assert bool((positions.diff() > 0).all()) and int(positions[-1]) < SHAPE.max_span
        bound: dict[int, int] = {}
        for i, token in enumerate(tokens[:-1]):
            if not VOCAB.is_key(token):
                assert targets[i] == IGNORE
                continue
            assert VOCAB.is_value(tokens[i + 1]) and positions[i + 1] == positions[i] + 1  # pairs stay adjacent
            if token in bound:
                assert targets[i] == tokens[i + 1] == bound[token]
            else:
                assert targets[i] == IGNORE
                bound[token] = tokens[i + 1]


@pytest.mark.parametrize("length", [64, 4096])
def test_prompt_holds_the_needle_once_and_has_the_requested_length(length: int) -> None:
    for prompt in retrieval_prompts(length, 5, seed=3, pairs=16):
        query = prompt.tokens[-1]
        assert len(prompt.tokens) == length and prompt.tokens[0] == BOS and VOCAB.is_key(query)
        assert prompt.tokens[:-1].count(query) == 1
        assert prompt.tokens[prompt.needle_position - 1] == query
        assert prompt.tokens[prompt.needle_position] == prompt.answer
        assert sum(map(VOCAB.is_key, prompt.tokens[:-1])) == 16


def test_prompts_are_reproducible_and_the_needle_depth_varies() -> None:
    prompts = list(retrieval_prompts(512, 40, seed=5, pairs=32))
    assert [p.tokens for p in prompts] == [p.tokens for p in retrieval_prompts(512, 40, seed=5, pairs=32)]
    depths = [p.needle_position / 512 for p in prompts]
    assert min(depths) < 0.2 and max(depths) > 0.8


def test_evaluate_scores_a_next_token_callable() -> None:
    def oracle(tokens: list[int]) -> int:
        return tokens[tokens.index(tokens[-1]) + 1]

    assert evaluate(oracle, [128, 256], n=10, pairs=32) == {128: 1.0, 256: 1.0}
    assert evaluate(lambda tokens: BOS, [128], n=10, pairs=32) == {128: 0.0}


def test_tokenizer_round_trips_the_text_form(tmp_path: Path) -> None:
    build_tokenizer(tmp_path)
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    prompt = next(retrieval_prompts(300, 1, seed=2, pairs=20))
    text = prompt.text()
    assert text.startswith("k") or text.startswith("f")
    assert tokenizer.encode(text).ids == prompt.tokens  # <bos> is added by the tokenizer
    assert tokenizer.decode(prompt.tokens) == text
    assert VOCAB.encode(text) == prompt.tokens[1:] and VOCAB.decode(prompt.tokens[1:]) == text
    assert tokenizer.get_vocab_size() == VOCAB.size


@pytest.mark.skipif(not (CHECKPOINT / "model.safetensors").is_file(), reason=f"no trained checkpoint at {CHECKPOINT}")
def test_committed_checkpoint_retrieves_at_4k_with_dense_attention() -> None:
    from services.inference.weights import load_model

    model = load_model(CHECKPOINT)
    tokenizer = Tokenizer.from_file(str(CHECKPOINT / "tokenizer.json"))
    prompt = next(retrieval_prompts(4096, 1, seed=11))
    assert tokenizer.encode(prompt.text()).ids == prompt.tokens
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 4K prompt is too small to gain from more, and loses under contention
    try:
        assert evaluate(model, [4096], n=20, seed=11)[4096] >= 0.95
    finally:
        torch.set_num_threads(threads)
