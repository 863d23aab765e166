"""State-aware partitioning: runtime states as clusters of the state embeddings.

k-means on the unit vectors, with k chosen from the data by the silhouette score over a
range; the centroids are kept so a new window gets the state of its nearest centroid.
"""

from __future__ import annotations

import numpy as np


class StatePartition:
    def __init__(self, centroids: np.ndarray) -> None:
        self.centroids = centroids.astype(np.float32)

    @property
    def k(self) -> int:
        return len(self.centroids)

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        distances = ((vectors[:, None, :] - self.centroids[None]) ** 2).sum(-1)
        return distances.argmin(1)

    @classmethod
    def fit(cls, vectors: np.ndarray, k_range: range = range(2, 11), seed: int = 0) -> tuple[StatePartition, dict]:
        """The k-means partition with the best silhouette; also returns the score per k."""
        from sklearn.cluster import KMeans
        from sklearn.metrics import silhouette_score

        scores: dict[int, float] = {}
        best: tuple[float, np.ndarray] | None = None
        sample = min(len(vectors), 2000)
        for k in k_range:
            if k >= len(vectors):
                break
            model = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(vectors)
            if len(set(model.labels_)) < 2:
                continue
            score = float(silhouette_score(vectors, model.labels_, sample_size=sample, random_state=seed))
            scores[k] = score
            if best is None or score > best[0]:
                best = (score, model.cluster_centers_)
        if best is None:
            return cls(vectors.mean(0, keepdims=True)), scores
        return cls(best[1]), scores
