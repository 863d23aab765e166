"""Projection heads per modality over the frozen backbone, fused into one state vector per window."""

from __future__ import annotations

import torch
from torch import nn

from services.embedding.views import MODALITIES


class Projection(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim_in, hidden), nn.GELU(), nn.Linear(hidden, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net(x), dim=-1)


class SlicerModel(nn.Module):
    """Per-modality projections (aligned by L_modal) and a fusion layer (smoothed by L_temp)."""

    def __init__(self, backbone_dim: int = 384, dim: int = 128, numeric_dim: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.numeric_dim = numeric_dim
        self.project = nn.ModuleDict({m: Projection(backbone_dim, dim) for m in MODALITIES})
        self.numeric = Projection(numeric_dim, dim) if numeric_dim else None
        parts = len(MODALITIES) + (1 if numeric_dim else 0)
        self.fuse = nn.Sequential(nn.Linear(parts * dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def modal(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        """views: (batch, modalities, backbone_dim) → unit vectors per modality."""
        return {m: self.project[m](views[:, i]) for i, m in enumerate(MODALITIES)}

    def forward(self, views: torch.Tensor, numeric: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        modal = self.modal(views)
        parts = [modal[m] for m in MODALITIES]
        if self.numeric is not None:
            if numeric is None:
                raise ValueError("this model was trained with the numeric channel: pass the window's summary")
            parts.append(self.numeric(numeric))
        state = nn.functional.normalize(self.fuse(torch.cat(parts, dim=-1)), dim=-1)
        return state, modal
