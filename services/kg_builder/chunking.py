"""Chunking as atlas-rag's TextChunker: a character budget derived from the LLM's token limit.

atlas-rag slices naively; here a chunk ends at the last sentence boundary inside the budget when
there is one, so that no triple is cut in half (a chunk is still never longer than the budget).
"""

from __future__ import annotations

import re

TOKEN_LIMIT = 1024
INSTRUCTION_TOKEN_ESTIMATE = 200
CHAR_TO_TOKEN_RATIO = 3.5
CHUNK_CHARS = int((TOKEN_LIMIT - INSTRUCTION_TOKEN_ESTIMATE) * CHAR_TO_TOKEN_RATIO)  # 2,884 as in the paper

_SPACES = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"[.!?](?=\s)")


def normalise_spaces(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def chunk_text(text: str, max_chars: int = CHUNK_CHARS) -> list[str]:
    if max_chars < 16:
        raise ValueError(f"max_chars must be at least 16, got {max_chars}")
    text = normalise_spaces(text)
    chunks: list[str] = []
    while len(text) > max_chars:
        window = text[: max_chars + 1]  # a sentence ending exactly at the budget still counts
        ends = [m.end() for m in _SENTENCE_END.finditer(window)]
        cut = ends[-1] if ends and ends[-1] > max_chars // 2 else max_chars
        chunks.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        chunks.append(text)
    return chunks
