"""What "usual" is: a rolling, robust baseline of every service feature, per system.

The z-score of a feature is its distance from the median of the last ``history`` windows in
units of the scaled MAD, with a floor so that a feature that never moves (errors at zero)
does not turn one error into an infinite score. Windows that look abnormal are not added
to the history, so an ongoing fault does not become the new normal within minutes; after
``max_frozen`` abnormal windows in a row the baseline follows anyway (a real level change).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from services.embedding.windows import FEATURES, Window

# Smallest spread per feature family: a change below it is not a change worth a word.
_COUNT_FEATURES = {"spans", "span_errors", "log_errors", "log_warnings", "log_lines", "new_templates", "restarts"}
_COUNT_FEATURES |= {"blamed_by_callers", "blamed_in_logs"}
# Events: only more of them is news (fewer errors than usual, or no new log pattern, is not a symptom).
EVENT_FEATURES = {"span_errors", "log_errors", "log_warnings", "new_templates", "restarts", "blamed_by_callers"}
EVENT_FEATURES |= {"blamed_in_logs"}
_SECONDS_FEATURES = {"span_p50", "span_p99", "call_gap_p90", "latency_p50", "latency_p90", "latency_p99"}


def floor_of(feature: str, median: float) -> float:
    if feature in _COUNT_FEATURES:
        return max(2.0, 0.1 * abs(median))
    if feature in _SECONDS_FEATURES:
        return max(0.002, 0.1 * abs(median))
    if feature == "error_rate":
        return 0.05
    return max(1e-6, 0.1 * abs(median))


@dataclass
class Deviation:
    service: str
    feature: str
    value: float
    baseline: float
    z: float


@dataclass
class SystemBaseline:
    history: int
    min_history: int
    max_frozen: int
    windows: deque[dict[str, np.ndarray]] = field(default_factory=deque)
    frozen: int = 0

    @property
    def warm(self) -> bool:
        return len(self.windows) >= self.min_history


_EVENT_MASK = np.array([f in EVENT_FEATURES for f in FEATURES])


class Baseline:
    def __init__(self, history: int = 20, min_history: int = 4, max_frozen: int = 40, abnormal_z: float = 8.0) -> None:
        self.history = history
        self.min_history = min_history
        self.max_frozen = max_frozen
        self.abnormal_z = abnormal_z
        self.systems: dict[str, SystemBaseline] = {}

    def _system(self, name: str) -> SystemBaseline:
        found = self.systems.get(name)
        if found is None:
            found = self.systems[name] = SystemBaseline(self.history, self.min_history, self.max_frozen)
        return found

    @staticmethod
    def vectors(window: Window) -> dict[str, np.ndarray]:
        return {s: np.array([w.features[f] for f in FEATURES]) for s, w in window.services.items()}

    def score(self, window: Window) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], bool]:
        """(z per service, baseline median per service, warm) for a window, without learning from it."""
        state = self._system(window.system)
        values = self.vectors(window)
        zs: dict[str, np.ndarray] = {}
        medians: dict[str, np.ndarray] = {}
        for service, vector in values.items():
            past = [w[service] for w in state.windows if service in w]
            if len(past) < self.min_history:
                zs[service] = np.zeros(len(FEATURES))
                medians[service] = vector.copy()
                continue
            stack = np.stack(past)
            median = np.median(stack, axis=0)
            mad = 1.4826 * np.median(np.abs(stack - median), axis=0)
            floor = np.array([floor_of(f, m) for f, m in zip(FEATURES, median, strict=True)])
            z = (vector - median) / np.maximum(mad, floor)
            zs[service] = np.where(_EVENT_MASK, np.maximum(z, 0.0), z)
            medians[service] = median
        return zs, medians, state.warm

    def learn(self, window: Window, zs: dict[str, np.ndarray]) -> None:
        state = self._system(window.system)
        worst = max((float(np.abs(z).max()) for z in zs.values()), default=0.0)
        if state.warm and worst > self.abnormal_z and state.frozen < self.max_frozen:
            state.frozen += 1
            return
        state.frozen = 0
        state.windows.append(self.vectors(window))
        while len(state.windows) > self.history:
            state.windows.popleft()


def deviations(zs: dict[str, np.ndarray], medians: dict[str, np.ndarray], window: Window) -> list[Deviation]:
    """Every (service, feature) with its z, most deviating first."""
    out = [
        Deviation(service, feature, window.services[service].features[feature], float(medians[service][i]), float(z[i]))
        for service, z in zs.items()
        for i, feature in enumerate(FEATURES)
    ]
    out.sort(key=lambda d: -abs(d.z))
    return out
