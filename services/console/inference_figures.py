"""The inference service's live figures, read from its Prometheus endpoint: tokens/s from two scrapes,
KV-cache memory (and what dense attention would hold), the last certified TV distance, queue length."""

from __future__ import annotations

import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families


class InferenceFigures:
    def __init__(self, metrics_url: str | None) -> None:
        self.url = metrics_url
        self._lock = threading.Lock()
        self._last: tuple[float, float] | None = None  # (monotonic time, tokens generated)

    def read(self) -> dict[str, float] | None:
        """None when no inference service is configured or it does not answer."""
        if not self.url:
            return None
        try:
            text = httpx.get(self.url, timeout=2.0).text
        except httpx.HTTPError:
            return None
        samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}
        tokens = samples.get("faultline_inference_generated_tokens_total", 0.0)
        now = time.monotonic()
        with self._lock:
            previous, self._last = self._last, (now, tokens)
        rate = (tokens - previous[1]) / (now - previous[0]) if previous and now > previous[0] else 0.0
        return {
            "tokens_per_s": max(rate, 0.0),
            "tokens_total": tokens,
            "kv_cache_bytes": samples.get("faultline_inference_kv_cache_bytes", 0.0),
            "kv_dense_bytes": samples.get("faultline_inference_kv_cache_dense_equivalent_bytes", 0.0),
            "tv_distance_max": samples.get("faultline_inference_tv_distance_max", 0.0),
            "queue_length": samples.get("faultline_inference_queue_length", 0.0),
            "running": samples.get("faultline_inference_running_requests", 0.0),
        }
