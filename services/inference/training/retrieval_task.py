"""A synthetic key–value retrieval task: the workload for checking what sparse attention keeps.

Vocabulary, ids in this order (``Vocabulary`` below; text form is whitespace-separated token names):

* ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3 — special tokens; ``<bos>`` starts every sequence.
* ``k0`` … ``k{keys-1}`` — key tokens.
* ``v0`` … ``v{values-1}`` — value tokens.
* ``f0`` … ``f{fillers-1}`` — filler tokens, distractors that never belong to a pair.

A *pair* is a key token immediately followed by its value token. An evaluation prompt is ``<bos>``, a context
of pairs with distinct keys scattered through filler, then one of those keys again (the query); the answer is
the value that followed it. Nothing else in the prompt names the answer, so a model can only get it right by
attending to that one value token among thousands of others.

Training sequences use the same layout, but keys recur: every recurrence of a key is followed by the value it
had the first time, and those values are the supervised targets (many per sequence). Keys are drawn afresh
for each sequence, so the binding can only be read from the context, never memorised.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from services.inference.model import Transformer

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = range(len(SPECIAL_TOKENS))
IGNORE = -100  # target for positions whose next token is not determined by the context

NextToken = Callable[[Sequence[int]], int]  # prompt token ids -> the predicted next token id


@dataclass(frozen=True)
class Vocabulary:
    keys: int = 512
    values: int = 512
    fillers: int = 512

    @property
    def size(self) -> int:
        return len(SPECIAL_TOKENS) + self.keys + self.values + self.fillers

    def key(self, index: int) -> int:
        return len(SPECIAL_TOKENS) + index

    def value(self, index: int) -> int:
        return len(SPECIAL_TOKENS) + self.keys + index

    def filler(self, index: int) -> int:
        return len(SPECIAL_TOKENS) + self.keys + self.values + index

    def is_key(self, token: int) -> bool:
        return self.key(0) <= token < self.value(0)

    def is_value(self, token: int) -> bool:
        return self.value(0) <= token < self.filler(0)

    def names(self) -> list[str]:
        """Token names in id order."""
        return [
            *SPECIAL_TOKENS,
            *(f"k{i}" for i in range(self.keys)),
            *(f"v{i}" for i in range(self.values)),
            *(f"f{i}" for i in range(self.fillers)),
        ]

    def encode(self, text: str) -> list[int]:
        """Whitespace-separated token names to ids (no ``<bos>`` added; unknown names become ``<unk>``)."""
        ids = {name: i for i, name in enumerate(self.names())}
        return [ids.get(name, UNK) for name in text.split()]

    def decode(self, tokens: Iterable[int]) -> str:
        names = self.names()
        return " ".join(names[t] for t in tokens)


VOCAB = Vocabulary()


# --- training sequences -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingShape:
    """The sequences of one curriculum stage."""

    length: int  # tokens per sequence, <bos> included
    pair_fraction: float = 0.5  # share of context tokens that sit in key–value pairs; the rest is filler
    repeat_fraction: float = 0.5  # chance that a pair repeats an earlier key (its value is then a target)
    max_span: int = 0  # > length: positions are spread over up to this many, so short sequences see long distances


@dataclass(frozen=True)
class TrainingBatch:
    tokens: torch.Tensor  # (batch, length)
    positions: torch.Tensor  # (batch, length), strictly increasing per row
    targets: torch.Tensor  # (batch, length): the next token where the context determines it, else IGNORE


def _spread_positions(rng: np.random.Generator, unit_of_token: np.ndarray, units: int, span: int) -> np.ndarray:
    """Positions over [0, span): random gaps go between units (a filler or a whole pair) but never inside a pair,
    so a value always sits right after its key, as in a real long context."""
    slack = np.sort(rng.integers(0, span - len(unit_of_token) + 1, size=units + 1))
    slack[0] = 0  # unit 0 is <bos>, kept at position 0
    return np.arange(len(unit_of_token)) + slack[unit_of_token]


def training_sequence(
    rng: np.random.Generator, shape: TrainingShape, vocab: Vocabulary = VOCAB
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sequence: (tokens, positions, targets)."""
    context = shape.length - 1
    pairs = round(shape.pair_fraction * context / 2)
    is_pair = np.zeros(context - pairs, dtype=bool)  # one entry per unit: pairs take two tokens
    is_pair[:pairs] = True
    rng.shuffle(is_pair)
    fresh_keys = rng.permutation(vocab.keys)
    value_of = rng.integers(vocab.values, size=vocab.keys)
    fillers = rng.integers(vocab.fillers, size=len(is_pair))
    repeats = rng.random(len(is_pair)) < shape.repeat_fraction
    tokens, targets, unit_of_token = [BOS], [IGNORE], [0]
    seen = 0
    for unit, pair in enumerate(is_pair, start=1):
        if not pair:
            tokens.append(vocab.filler(int(fillers[unit - 1])))
            targets.append(IGNORE)
            unit_of_token.append(unit)
            continue
        repeat = seen == vocab.keys or (seen > 0 and bool(repeats[unit - 1]))
        key = int(fresh_keys[rng.integers(seen)] if repeat else fresh_keys[seen])
        seen += not repeat
        value = vocab.value(int(value_of[key]))
        tokens += [vocab.key(key), value]
        targets += [value if repeat else IGNORE, IGNORE]
        unit_of_token += [unit, unit]
    unit_index = np.array(unit_of_token)
    if shape.max_span > shape.length:
        span = int(rng.integers(shape.length, shape.max_span + 1))
        positions = _spread_positions(rng, unit_index, len(is_pair), span)
    else:
        positions = np.arange(shape.length)
    return np.array(tokens), positions, np.array(targets)


def training_batch(
    rng: np.random.Generator, shape: TrainingShape, batch: int, vocab: Vocabulary = VOCAB
) -> TrainingBatch:
    rows = [training_sequence(rng, shape, vocab) for _ in range(batch)]
    tokens, positions, targets = (torch.from_numpy(np.stack(column)).long() for column in zip(*rows, strict=True))
    return TrainingBatch(tokens, positions, targets)


# --- evaluation prompts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrievalPrompt:
    tokens: list[int]  # <bos>, the context, the query key
    answer: int  # the value token that followed the query key in the context
    needle_position: int  # index of that value token in ``tokens``

    def text(self, vocab: Vocabulary = VOCAB) -> str:
        """The prompt as text for a tokenizer that adds ``<bos>`` itself."""
        return vocab.decode(self.tokens[1:])


def retrieval_prompt(
    rng: np.random.Generator, length: int, pairs: int = 256, vocab: Vocabulary = VOCAB
) -> RetrievalPrompt:
    """A prompt of exactly ``length`` tokens whose needle pair sits at a uniformly random depth."""
    context = length - 2
    if not 1 <= pairs <= vocab.keys or 2 * pairs > context:
        raise ValueError(f"{pairs} pairs do not fit a {length}-token prompt with {vocab.keys} keys")
    keys = rng.choice(vocab.keys, size=pairs, replace=False)
    values = rng.integers(vocab.values, size=pairs)
    # Units: -1 is a filler token, i >= 0 is pair i. Pair 0, the needle, goes into a uniformly random slot.
    units = np.concatenate([np.arange(1, pairs), np.full(context - 2 * pairs, -1)])
    rng.shuffle(units)
    units = np.insert(units, rng.integers(len(units) + 1), 0)
    fillers = rng.integers(vocab.fillers, size=len(units))
    tokens, needle_position = [BOS], -1
    for unit, filler in zip(units.tolist(), fillers.tolist(), strict=True):
        if unit < 0:
            tokens.append(vocab.filler(filler))
            continue
        if unit == 0:
            needle_position = len(tokens) + 1
        tokens += [vocab.key(int(keys[unit])), vocab.value(int(values[unit]))]
    tokens.append(vocab.key(int(keys[0])))
    return RetrievalPrompt(tokens, vocab.value(int(values[0])), needle_position)


def retrieval_prompts(
    length: int, n: int, seed: int = 0, pairs: int = 256, vocab: Vocabulary = VOCAB
) -> Iterator[RetrievalPrompt]:
    """The same ``n`` prompts for a given (length, seed, pairs), whatever else is evaluated alongside."""
    rng = np.random.default_rng([seed, length, pairs])
    for _ in range(n):
        yield retrieval_prompt(rng, length, pairs, vocab)


def greedy_next_token(model: Transformer) -> NextToken:
    """Dense reference: the model's arg-max next token after a whole prompt (causal SDPA)."""

    @torch.inference_mode()
    def predict(tokens: Sequence[int]) -> int:
        logits = model(torch.tensor([list(tokens)], device=model.lm_head.weight.device))
        return int(logits[0, -1].argmax())

    return predict


def evaluate(
    model_or_predict: Transformer | NextToken,
    lengths: Iterable[int] = (4096, 8192, 16384),
    n: int = 50,
    seed: int = 0,
    pairs: int = 256,
    vocab: Vocabulary = VOCAB,
) -> dict[int, float]:
    """Accuracy of greedy next-token prediction of the needle's value, per prompt length."""
    predict = greedy_next_token(model_or_predict) if isinstance(model_or_predict, Transformer) else model_or_predict
    accuracy = {}
    for length in lengths:
        hits = sum(predict(p.tokens) == p.answer for p in retrieval_prompts(length, n, seed, pairs, vocab))
        accuracy[length] = hits / n
    return accuracy


# --- tokenizer ----------------------------------------------------------------------------------------------


def build_tokenizer(directory: Path | str, vocab: Vocabulary = VOCAB, max_length: int = 16384) -> Tokenizer:
    """Write ``tokenizer.json`` and ``tokenizer_config.json``: whitespace-split word level, ``<bos>`` prepended."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.WordLevel({name: i for i, name in enumerate(vocab.names())}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "add_bos_token": True,
        "model_max_length": max_length,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return tokenizer
