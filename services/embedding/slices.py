"""From a closed window to what the model reads: scored deviations, text views, per-service features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.embedding.baseline import Baseline, Deviation, deviations
from services.embedding.ingest import Slicer
from services.embedding.views import NOTABLE_Z, Views, render
from services.embedding.windows import FEATURES, Window

# z-scores are clipped and log-compressed before a head sees them: a 300-sigma jump and a
# 30-sigma one mean the same thing, and unbounded inputs make light heads brittle.
Z_CLIP = 200.0


def squash(z: np.ndarray) -> np.ndarray:
    return np.sign(z) * np.log1p(np.minimum(np.abs(z), Z_CLIP))


@dataclass
class Slice:
    """One runtime slice, ready for the encoder and the heads."""

    window: Window
    views: Views
    deviations: list[Deviation]
    services: list[str]
    service_z: np.ndarray  # (services, FEATURES) signed robust z-scores
    warm: bool

    def evidence(self, limit: int = 8) -> list[Deviation]:
        return [d for d in self.deviations if abs(d.z) >= NOTABLE_Z][:limit]

    def summary(self) -> np.ndarray:
        """The numeric channel: per feature, the largest squashed |z| and its sign over services."""
        if not len(self.services):
            return np.zeros(2 * len(FEATURES), np.float32)
        squashed = squash(self.service_z)
        return np.concatenate([np.abs(squashed).max(0), squashed.max(0) + squashed.min(0)]).astype(np.float32)


def make_slice(window: Window, baseline: Baseline, slicer: Slicer, learn: bool = True) -> Slice:
    zs, medians, warm = baseline.score(window)
    if learn:
        baseline.learn(window, zs)
    found = deviations(zs, medians, window)
    services = sorted(window.services)
    matrix = np.stack([zs[s] for s in services]) if services else np.zeros((0, len(FEATURES)))
    views = render(window, found, slicer.templates, warm)
    return Slice(window, views, found, services, matrix, warm)
