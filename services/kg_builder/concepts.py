"""Schema induction: every entity, event and relation is conceptualised into a few abstract phrases at
different levels (LLM), and those phrases are merged by sentence-encoder similarity into canonical
concepts, so that "database", "databases" and "db store" do not become three types.

atlas-rag asks once per item; here one call per document lists all of its items (same instruction and
few-shot examples, a JSON object back) — a document's items share context and the call count stays small.
Structured records need no LLM: their node types are their concepts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.common.llm import LLMClient, SchemaError
from services.common.text_encoder import SentenceEncoder
from services.kg_builder.extraction import Extraction, norm

CONCEPT_SYSTEM = "You are a helpful assistant who always responds with valid JSON without any explanation"
CONCEPT_INSTRUCTION = (
    "I will give you ENTITIES, EVENTS and RELATIONS taken from one passage. For each of them, give several "
    "phrases containing 1-2 words for the abstract concepts it belongs to, at least 3 at different abstract "
    "levels if possible. Examples: entity 'Thinkpad X60' -> Thinkpad, laptop, machine, device, hardware, "
    "computer, brand; event 'the disk of the database host filled up' -> disk exhaustion, capacity problem, "
    "incident; relation 'runs on' -> hosted by, depends on, deployment. Answer with one JSON object that maps "
    "every item, exactly as written, to an array of its concept phrases."
)
MAX_CONCEPTS = 8


def concept_messages(items: dict[str, list[str]]) -> list[dict[str, str]]:
    sections = [
        f"{title}:\n" + "\n".join(f"- {name}" for name in items[kind])
        for kind, title in (("entity", "ENTITIES"), ("event", "EVENTS"), ("relation", "RELATIONS"))
        if items[kind]
    ]
    user = CONCEPT_INSTRUCTION + "\n\n" + "\n\n".join(sections)
    return [{"role": "system", "content": CONCEPT_SYSTEM}, {"role": "user", "content": user}]


def _concept_map(value: Any, wanted: set[str]) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        raise SchemaError(f"expected a JSON object, got {type(value).__name__}")
    out: dict[str, list[str]] = {}
    for key, concepts in value.items():
        name = norm(str(key))
        if name not in wanted or not isinstance(concepts, list):
            continue  # an item the LLM invented or mangled: its concepts cannot be attached anywhere
        phrases = list(dict.fromkeys(norm(c) for c in concepts if isinstance(c, str) and norm(c)))
        out[name] = phrases[:MAX_CONCEPTS]
    return out


def conceptualise(extraction: Extraction, llm: LLMClient | None) -> list[tuple[str, str, str]]:
    """(item, item kind, raw concept) links. LLM concepts for documents; record types for structured sources."""
    if extraction.kind != "document":
        links: list[tuple[str, str, str]] = []
        for t in extraction.triples:
            # a relation between typed records is typed by its ends ("failure to service")
            relation_type = f"{t.head_type} to {t.tail_type}"
            links += [
                (t.head, "entity", t.head_type),
                (t.tail, "entity", t.tail_type),
                (t.relation, "relation", relation_type),
            ]
        return list(dict.fromkeys(links))
    if llm is None:
        raise ValueError("documents need an LLM for conceptualisation")
    items = extraction.items()
    wanted = {name for names in items.values() for name in names}
    if not wanted:
        return []
    answer = llm.json_call(concept_messages(items), lambda v: _concept_map(v, wanted))
    kind_of = {name: kind for kind, names in items.items() for name in names}
    return [(name, kind_of[name], c) for name, concepts in answer.items() for c in concepts]


@dataclass
class Resolution:
    canonical: dict[str, str]  # raw concept -> canonical concept
    new: list[tuple[str, np.ndarray]] = field(default_factory=list)  # canonical concepts new to the schema


class ConceptSchema:
    """Canonical concepts and their vectors; a raw concept joins the nearest one at cosine >= threshold."""

    def __init__(self, encoder: SentenceEncoder, threshold: float = 0.85) -> None:
        self.encoder, self.threshold = encoder, threshold
        self.names: list[str] = []
        self._vectors = np.zeros((0, 384), np.float32)
        self.aliases: dict[str, str] = {}

    def load(self, concepts: Iterable[tuple[str, np.ndarray]], aliases: dict[str, str]) -> None:
        rows = list(concepts)
        self.names = [n for n, _ in rows]
        self._vectors = np.stack([v for _, v in rows]) if rows else np.zeros((0, 384), np.float32)
        self.aliases = dict(aliases)

    def resolve(self, raw: Iterable[str]) -> Resolution:
        """Map raw concepts to canonical ones without changing the schema (see :meth:`commit`)."""
        out = Resolution({})
        todo = [r for r in dict.fromkeys(raw) if r]
        for r in todo:
            if r in self.aliases:
                out.canonical[r] = self.aliases[r]
        missing = [r for r in todo if r not in out.canonical]
        if not missing:
            return out
        names, vectors = list(self.names), self._vectors
        for name, vector in zip(missing, self.encoder.encode(missing), strict=True):
            if len(names):
                sims = vectors @ vector
                best = int(np.argmax(sims))
                if sims[best] >= self.threshold:
                    out.canonical[name] = names[best]
                    continue
            out.canonical[name] = name
            out.new.append((name, vector))
            names.append(name)
            vectors = np.vstack([vectors, vector[None]])
        return out

    def commit(self, resolution: Resolution) -> None:
        for name, vector in resolution.new:
            self.names.append(name)
            self._vectors = np.vstack([self._vectors, vector[None]])
        self.aliases.update(resolution.canonical)
