"""``faultline eval kg``: extraction quality on the labelled set (replayed LLM), the structured path,
and SimilarFailures Recall@3 with the graph vs plain embedding search, on simulator-style incident histories.

The LLM answers in ``data/llm_answers.yaml`` are hand-written (no live LLM ran here);
``--write-recording`` turns them into ``data/recording.jsonl`` with the exact prompts this code sends.
Without ``--llm URL`` the inference service is started as a subprocess on that recording (replay mode).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from deploy.kafka.broker import free_port
from services.common.llm import LLMClient
from services.common.pb.faultline.v1 import detector_pb2, kg_pb2, rca_pb2
from services.common.text_encoder import SentenceEncoder, shared_encoder
from services.kg_builder.concepts import conceptualise
from services.kg_builder.extraction import extract_document
from services.kg_builder.retrieval import incident_query
from services.kg_builder.service import KnowledgeGraph
from services.kg_builder.store import KgStore

DATA = Path(__file__).resolve().parent / "data"
LABELLED, ANSWERS, RECORDING = DATA / "labelled.yaml", DATA / "llm_answers.yaml", DATA / "recording.jsonl"
ROOT = Path(__file__).resolve().parents[2]


def load_documents() -> list[tuple[kg_pb2.Document, dict[str, Any]]]:
    out = []
    for item in yaml.safe_load(LABELLED.read_text()):
        doc = kg_pb2.Document(
            id=item["id"], title=item["title"], text=item["text"], kind=item["kind"], source="labelled"
        )
        out.append((doc, item))
    return out


# -- the recording ----------------------------------------------------------------------------------------


class _Scripted(LLMClient):
    """Answers from the hand-written list in call order, remembering each exact request."""

    def __init__(self, answers: list[str]) -> None:  # no endpoint: nothing is sent anywhere
        super().__init__("http://unused.invalid/v1")
        self._answers, self.entries = list(answers), []  # type: ignore[var-annotated]

    def chat(self, messages: list[dict[str, str]]) -> str:
        if not self._answers:
            raise RuntimeError("the hand-written answers ran out: llm_answers.yaml is missing a completion")
        answer = self._answers.pop(0)
        self.entries.append({"messages": messages, "completion": answer})
        return answer


def write_recording(path: Path = RECORDING) -> int:
    answers = yaml.safe_load(ANSWERS.read_text())
    entries = []
    for doc, _ in load_documents():
        llm = _Scripted(answers[doc.id])
        conceptualise(extract_document(doc, llm), llm)
        if llm._answers:
            raise RuntimeError(f"{doc.id}: {len(llm._answers)} hand-written answer(s) were never asked for")
        entries += llm.entries
    path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    return len(entries)


@contextmanager
def replay_server(recording: Path = RECORDING) -> Iterator[str]:
    """The inference service in replay mode, as its own process (a service never imports another)."""
    port = free_port()
    env = os.environ | {"FAULTLINE_METRICS_PORT": "0", "FAULTLINE_HEARTBEAT_S": "0"}
    command = [sys.executable, "-m", "services.cli", "serve", "inference", "--replay", str(recording),
               "--http-port", str(port), "--grpc-port", "0"]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the replay inference service did not start: {process.stderr.read()[-2000:]!r}")
            time.sleep(0.2)
        yield url + "/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


# -- extraction quality -----------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(the|a|an)\b")


def _canon(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", re.sub(r"[^\w\s%.-]", " ", text.lower())).split())


def _entity_match(a: str, b: str) -> bool:
    a, b = _canon(a), _canon(b)
    return a == b or (bool(a) and bool(b) and (set(a.split()) <= set(b.split()) or set(b.split()) <= set(a.split())))


def triple_scores(
    predicted: list[tuple[str, str, str]], gold: list[tuple[str, str, str]], encoder: SentenceEncoder
) -> dict[str, float]:
    """Strict (normalised strings equal) and lenient (entities contain each other, relations cosine >= 0.7)."""
    strict = len({tuple(map(_canon, t)) for t in predicted} & {tuple(map(_canon, t)) for t in gold})
    relations = sorted({r for _, r, _ in predicted} | {r for _, r, _ in gold})
    vectors = dict(zip(relations, encoder.encode(relations), strict=True))
    used: set[int] = set()
    lenient = 0
    for g in gold:
        for i, p in enumerate(predicted):
            if i in used or not (_entity_match(p[0], g[0]) and _entity_match(p[2], g[2])):
                continue
            if _canon(p[1]) == _canon(g[1]) or float(vectors[p[1]] @ vectors[g[1]]) >= 0.7:
                used.add(i)
                lenient += 1
                break
    n_pred, n_gold = max(len(predicted), 1), max(len(gold), 1)
    return {"strict_tp": strict, "lenient_tp": lenient, "predicted": len(predicted), "gold": len(gold),
            "strict_precision": strict / n_pred, "strict_recall": strict / n_gold,
            "lenient_precision": lenient / n_pred, "lenient_recall": lenient / n_gold}  # fmt: skip


def evaluate_extraction(llm_url: str, merge_threshold: float = 0.85) -> dict[str, Any]:
    encoder = shared_encoder()
    llm = LLMClient(llm_url)
    kg = KnowledgeGraph(KgStore(), encoder, llm, merge_threshold=merge_threshold)
    predicted_all, gold_all = [], []
    growth = []
    for doc, item in load_documents():
        _update, _dup, extraction = kg.ingest(doc)
        assert extraction is not None
        predicted_all += [(t.head, t.relation, t.tail) for t in extraction.triples if t.kind == "entity"]
        gold_all += [tuple(t) for t in item["gold"]]
        counts = kg.store.counts()
        growth.append({"documents": len(growth) + 1, "concepts": counts["concepts"], "raw_concepts": counts["aliases"]})
    scores = triple_scores(predicted_all, gold_all, encoder)  # type: ignore[arg-type]
    # concept quality: the share of gold types found among the item's (merged) concepts
    concepts = kg.store.item_concepts()
    exact = semantic = total = 0
    for _, item in load_documents():
        for entity, gold_type in item["types"].items():
            total += 1
            found = concepts.get((entity, "entity"), [])
            if gold_type in found:
                exact += 1
            if found and float(np.max(encoder.encode(found) @ encoder.encode([gold_type])[0])) >= 0.8:
                semantic += 1
    counts = kg.store.counts()
    return {
        "documents": len(growth),
        "triples": scores,
        "event_triples": sum(1 for e in kg.store.edges() if e[0].kind == "event"),
        "event_entity_edges": sum(1 for e in kg.store.edges() if e[0].kind == "event-entity"),
        "concept_type_recovery_exact": exact / total,
        "concept_type_recovery_semantic": semantic / total,
        "gold_types": total,
        "schema": {"concepts": counts["concepts"], "raw_concepts": counts["aliases"], "growth": growth},
        "llm": vars(llm.usage),
    }


# -- simulator-style incident histories ------------------------------------------------------------------

# Two phrasings per fault kind: past RCA reports use the first, new incidents the second, so a hit is
# never a literal repeat of the past text.
SYMPTOMS: dict[str, tuple[list[str], list[str]]] = {
    "cpu": (["cpu usage 4 sigma above baseline", "self time 9x normal", "container cpu throttled"],
            ["processor pegged near 100 percent", "requests queue inside the service", "cfs quota throttling"]),
    "memory": (["memory working set keeps growing", "pod oom-killed and restarted", "garbage collection pauses"],
               ["heap climbs until the limit", "out of memory kill", "gc stalls lengthen"]),
    "disk": (["disk io wait high", "filesystem write latency up", "operations wait on io"],
             ["storage reads and writes slow", "iowait dominates the node", "fsync takes seconds"]),
    "delay": (["callers see added latency", "own spans normal while callers slow", "network round trip grew"],
              ["responses arrive late at the client", "server time unchanged but client time up", "rtt jump"]),
    "loss": (["tcp retransmissions", "intermittent timeouts at the caller", "packets dropped"],
             ["retransmitted segments spike", "some calls hang then time out", "lossy link"]),
    "pod-kill": (["pod restarted", "connection refused from the pod", "calls fail until the pod is back"],
                 ["container exited and came back", "refused connections for a minute", "endpoint briefly missing"]),
    "code": (["exception thrown in the operation", "error originates here", "http 500 responses"],
             ["stack traces in the logs", "the handler raises", "internal server errors returned"]),
}  # fmt: skip
SIGNALS = {
    "cpu": ["container_cpu_usage_seconds", "cpu_throttled_periods"],
    "memory": ["container_memory_working_set_bytes", "oom_kills_total"],
    "disk": ["disk_io_time_seconds", "fs_write_latency_ms"],
    "delay": ["client_latency_ms", "network_rtt_ms"],
    "loss": ["tcp_retransmits_total", "client_timeouts_total"],
    "pod-kill": ["pod_restarts_total", "connection_refused_total"],
    "code": ["span_error_rate", "exceptions_total"],
}


def _services(system: str) -> list[str]:
    from loadtests.simulator.topology import load

    return list(load(system).services)


def past_report(rng: random.Random, number: int, system: str, services: list[str], kind: str, service: str):  # type: ignore[no-untyped-def]
    symptoms = rng.sample(SYMPTOMS[kind][0], 2)
    others = rng.sample([s for s in services if s != service], 2)
    report = rca_pb2.RcaReport(
        id=f"rca-{system}-{number:05d}",
        incident_id=f"inc-{system}-{number:05d}",
        system=system,
        mode="evidence",
        summary=f"{service}: {symptoms[0]}; callers {others[0]} slowed down",
    )
    report.candidates.add(service=service, fault_type=kind, confidence=0.8, rank=1, reason=symptoms[1],
                          pod=f"{service}-{rng.randint(0, 2)}")  # fmt: skip
    report.candidates.add(service=others[1], fault_type=rng.choice(list(SYMPTOMS)), confidence=0.2, rank=2)
    report.evidence.nodes.add(service=service, is_abnormal=True, symptoms=symptoms)
    report.evidence.nodes.add(service=others[0], is_abnormal=True, symptoms=["latency up"])
    return report


def new_incident(rng: random.Random, number: int, system: str, services: list[str], kind: str, service: str):  # type: ignore[no-untyped-def]
    """As the detector reports it: the root cause among its suspects (not always first), a noisy type."""
    symptom = rng.choice(SYMPTOMS[kind][1])
    others = rng.sample([s for s in services if s != service], 3)
    suspects = others[:2]
    suspects.insert(rng.randint(0, 2), service)
    failure_type = kind if rng.random() < 0.6 else rng.choice(["unknown", *SYMPTOMS])
    incident = detector_pb2.Incident(
        id=f"new-{system}-{number:05d}", system=system, failure_type=failure_type,
        summary=f"{symptom} at {service}; {others[2]} error rate up",
    )  # fmt: skip
    for rank, name in enumerate(suspects):
        incident.suspected_services.add(service=name)
        incident.suspected_scores.append(round(0.9 - 0.25 * rank, 2))
    incident.evidence.add(service=service, name=rng.choice(SIGNALS[kind]), score=5.0, modality="metrics")
    noise = rng.choice(list(SIGNALS))
    incident.evidence.add(service=others[2], name=rng.choice(SIGNALS[noise]), score=3.0, modality="metrics")
    return incident


def histories(n_past: int, n_new: int, seed: int = 7, system: str = "online-boutique"):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    services = _services(system)
    combos = [(k, s) for k in SYMPTOMS for s in services]
    past = [past_report(rng, i, system, services, *rng.choice(combos)) for i in range(n_past)]
    seen = sorted({(r.candidates[0].fault_type, r.candidates[0].service) for r in past})
    new = []
    for i in range(n_new):
        kind, service = rng.choice(seen)  # a root cause the history has seen (else no hit is possible)
        new.append((new_incident(rng, i, system, services, kind, service), kind, service))
    return past, new


def evaluate_similar(n_past: int = 300, n_new: int = 150, seed: int = 7) -> dict[str, Any]:
    past, new = histories(n_past, n_new, seed)
    kg = KnowledgeGraph(KgStore(), shared_encoder())
    for report in past:
        kg.ingest(report)
    out: dict[str, Any] = {"past_incidents": n_past, "queries": n_new}
    for method in ("graph", "embedding"):
        same_cause = same_kind = 0
        for incident, kind, service in new:
            top = kg.retriever.search(incident_query(incident), 3, method)
            same_cause += any(f.fault_type == kind and f.service == service for f, _ in top)
            same_kind += any(f.fault_type == kind for f, _ in top)
        out[method] = {
            "recall_at_3_same_root_cause": same_cause / n_new,
            "recall_at_3_same_fault_type": same_kind / n_new,
        }
    return out


def structured_path(n: int = 200) -> dict[str, Any]:
    """RCA reports in, triples from their fields: no LLM is asked, every report yields its root cause."""
    past, _ = histories(n, 0, seed=11)
    kg = KnowledgeGraph(KgStore(), shared_encoder())
    started = time.perf_counter()
    triples = correct = 0
    for report in past:
        _, _, extraction = kg.ingest(report)
        assert extraction is not None and extraction.failure is not None
        triples += len(extraction.triples)
        top = report.candidates[0]
        correct += (extraction.failure.service, extraction.failure.fault_type) == (top.service, top.fault_type)
    return {"reports": n, "triples_per_report": triples / n, "root_cause_recorded": correct / n,
            "llm_calls": 0, "reports_per_s": n / (time.perf_counter() - started)}  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faultline eval kg")
    parser.add_argument("--llm", help="OpenAI-compatible base URL (default: replay data/recording.jsonl)")
    parser.add_argument("--write-recording", action="store_true", help="regenerate data/recording.jsonl and exit")
    parser.add_argument("--past", type=int, default=300)
    parser.add_argument("--queries", type=int, default=150)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.write_recording:
        print(f"wrote {write_recording()} entries to {RECORDING}")
        return 0
    results: dict[str, Any] = {}
    if args.llm:
        results["extraction"] = evaluate_extraction(args.llm)
    else:
        with replay_server() as url:
            results["extraction"] = evaluate_extraction(url)
    results["structured"] = structured_path()
    results["similar_failures"] = evaluate_similar(args.past, args.queries)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0
