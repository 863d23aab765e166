"""Light task heads over the state vector, conditioned on the runtime state.

Each head is a shared linear map plus a small per-state correction (zero at start and kept
small by weight decay), so a rare state falls back on the shared head. The root-cause head
scores each service of a window from its own deviations (the window's per-service breakdown)
together with the window's state vector; a softmax over the window's services ranks them.
"""

from __future__ import annotations

import torch
from torch import nn


class StateHead(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, states: int) -> None:
        super().__init__()
        self.shared = nn.Linear(dim_in, dim_out)
        self.delta = nn.Parameter(torch.zeros(states, dim_in, dim_out))
        self.delta_bias = nn.Parameter(torch.zeros(states, dim_out))

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self.shared(x) + torch.einsum("bi,bio->bo", x, self.delta[state]) + self.delta_bias[state]


class RootCauseHead(nn.Module):
    def __init__(self, features: int, dim_state: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features + dim_state, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, services: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """services: (batch, n_services, features); state: (batch, dim) → (batch, n_services) scores."""
        expanded = state[:, None, :].expand(-1, services.shape[1], -1)
        return self.net(torch.cat([services, expanded], dim=-1)).squeeze(-1)


class TaskHeads(nn.Module):
    def __init__(self, dim: int, states: int, failure_types: list[str], service_features: int) -> None:
        super().__init__()
        self.failure_types = list(failure_types)
        self.anomaly = StateHead(dim, 1, states)
        self.failure_type = StateHead(dim, len(failure_types), states)
        self.root_cause = RootCauseHead(service_features, dim)

    def penalty(self) -> torch.Tensor:
        return sum((h.delta**2).sum() + (h.delta_bias**2).sum() for h in (self.anomaly, self.failure_type))
