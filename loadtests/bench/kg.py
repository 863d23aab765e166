"""kg-builder: reports/s on the structured path (no LLM), store bytes per 10,000 incidents, query latency.

The store size is measured on the ingested history and extrapolated linearly to 10,000 incidents (each
incident adds its own failure node, edges and vector; shared nodes — services, fault types, symptoms —
only make the extrapolation an upper bound).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

N_REPORTS = int(os.environ.get("KG_BENCH_REPORTS", "1000"))
N_QUERIES = int(os.environ.get("KG_BENCH_QUERIES", "100"))


def run() -> dict:
    import torch

    from services.common.text_encoder import shared_encoder
    from services.kg_builder.evaluation import histories
    from services.kg_builder.retrieval import incident_query
    from services.kg_builder.service import KnowledgeGraph
    from services.kg_builder.store import KgStore

    torch.set_num_threads(1)
    encoder = shared_encoder()
    past, new = histories(N_REPORTS, N_QUERIES, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kg.sqlite"
        kg = KnowledgeGraph(KgStore(path), encoder)
        kg.ingest(past[0])  # warm-up: the encoder's first call and the concept vectors
        started = time.perf_counter()
        for report in past[1:]:
            kg.ingest(report)
        ingest_s = time.perf_counter() - started
        kg.store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
        latency: dict[str, dict[str, float]] = {}
        for method in ("graph", "embedding"):
            kg.retriever.search(incident_query(new[0][0]), 3, method)  # builds the graph once
            times = []
            for incident, _, _ in new:
                t = time.perf_counter()
                kg.retriever.search(incident_query(incident), 3, method)
                times.append((time.perf_counter() - t) * 1000)
            latency[method] = {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))}
        counts = kg.store.counts()
    result = {
        "reports": N_REPORTS,
        "reports_per_s": (N_REPORTS - 1) / ingest_s,
        "store_bytes": size,
        "store_bytes_per_10k_incidents_extrapolated": size / N_REPORTS * 10_000,
        "nodes": counts["nodes"],
        "edges": counts["edges"],
        "concepts": counts["concepts"],
        "query_latency": latency,
        "queries": N_QUERIES,
    }
    for key, value in result.items():
        print(f"  {key}: {value}")
    return result
