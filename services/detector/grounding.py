"""Grounding features: does a step's output follow from what the agent received?

The backbone's sentence embeddings smooth over the few tokens where a wrong step differs from a right
one (a requirement left out of a plan, another service named in a report, a revision that changes
nothing). These features compare a step's output with its input and with the same agent's earlier
output, token by token, the checks MAST's inter-agent failure modes describe:

- coverage: how much of each item of a list the agent received (requirements, findings) its output
  repeats; the least-covered item and the mean;
- focus: whether the name the output is about is the name its input is about. A *name* is a word the
  backbone's vocabulary does not hold whole (service, pod, module and function names); the one a text
  is about is the one it mentions most (the first on ties);
- revision: whether the output's fenced artefact (code, config) is the same as the one the agent
  produced before, although it was asked for a change.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from services.detector.steps import Step

GROUNDING_DIM = 7
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*[A-Za-z0-9]|[A-Za-z]")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")
_ITEM = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+(.*)$")
_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)
_SHORT = 3  # words this short carry no content ("a", "to", "of")


def content_words(text: str) -> set[str]:
    """Words longer than ``_SHORT`` and numbers ("from 1" against "from 0"), list markers left out."""
    text = "\n".join(m.group(1) if (m := _ITEM.match(line)) else line for line in text.splitlines())
    return {w.lower() for w in _WORD.findall(text) if len(w) > _SHORT} | set(_NUMBER.findall(text))


def list_items(text: str) -> list[str]:
    """The items of the bulleted or numbered lists in ``text``."""
    return [m.group(1) for line in text.splitlines() if (m := _ITEM.match(line))]


def coverage(received: str, produced: str) -> tuple[float, float]:
    """(least, mean) share of each received list item's content words that ``produced`` repeats; (1, 1)
    when the input holds no list."""
    said = content_words(produced)
    shares = [len(words & said) / len(words) for item in list_items(received) if (words := content_words(item))]
    return (min(shares), float(np.mean(shares))) if shares else (1.0, 1.0)


def focus(text: str, is_name: Callable[[str], bool]) -> tuple[str | None, Counter[str]]:
    """The name ``text`` mentions most (first on ties) and the count of every name in it."""
    names = Counter(w.lower() for w in _WORD.findall(text) if is_name(w))
    if not names:
        return None, names
    top = max(names.values())
    first = next(w.lower() for w in _WORD.findall(text) if names.get(w.lower()) == top)
    return first, names


def artefact(text: str) -> str | None:
    blocks = _FENCE.findall(text)
    return "\n".join(b.strip() for b in blocks) if blocks else None


def grounding(step: Step, earlier: Sequence[Step], is_name: Callable[[str], bool]) -> np.ndarray:
    """The ``GROUNDING_DIM`` features of ``step`` given the run's ``earlier`` steps."""
    least, mean = coverage(step.input_text, step.output_text)
    out_focus, _ = focus(step.output_text, is_name)
    in_focus, in_names = focus(step.input_text, is_name)
    share = in_names[out_focus] / sum(in_names.values()) if out_focus and in_names else 1.0
    on_focus = float(out_focus is None or out_focus == in_focus)
    produced = artefact(step.output_text)
    before = next((a for s in reversed(earlier) if s.agent == step.agent and (a := artefact(s.output_text))), None)
    revised = produced is not None and before is not None
    unchanged = float(revised and produced == before)
    changed = len(set(produced.splitlines()) ^ set(before.splitlines())) if revised else 0  # type: ignore[union-attr]
    return np.array([least, mean, share, on_focus, float(revised), unchanged, np.log1p(changed) / 3.0], np.float32)


def vocabulary_names(vocabulary: set[str]) -> Callable[[str], bool]:
    """A name test from a word-piece vocabulary: a word it lacks whole (or one with digits, ``-`` or ``_``)."""

    def is_name(word: str) -> bool:
        return len(word) > _SHORT and (word.lower() not in vocabulary or not word.isalpha())

    return is_name


@dataclass(frozen=True)
class Envelope:
    """The range each grounding feature takes over one agent's normal steps."""

    low: np.ndarray
    high: np.ndarray

    @classmethod
    def fit(cls, rows: np.ndarray) -> Envelope:
        return cls(rows.min(axis=0), rows.max(axis=0))

    def outside(self, features: np.ndarray) -> float:
        """How far ``features`` lie outside the range, summed over the features, 0 inside it."""
        return float(np.sum(np.maximum(self.low - features, 0) + np.maximum(features - self.high, 0)))

    def as_dict(self) -> dict[str, list[float]]:
        return {"low": [round(float(v), 6) for v in self.low], "high": [round(float(v), 6) for v in self.high]}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> Envelope:
        return cls(np.asarray(d["low"], np.float32), np.asarray(d["high"], np.float32))
