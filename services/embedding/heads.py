"""Light task heads over the state vector, conditioned on the runtime state.

Each head is a shared linear map plus a small per-state correction (zero at start and kept
small by weight decay), so a rare state falls back on the shared head. The root-cause head
scores each service of a window from its own deviations (the window's per-service breakdown)
together with the window's state vector; a softmax over the window's services ranks them.
The failure-type head reads the deviation profile of the service the root-cause head blames,
plus a per-state prior: which signals moved on the culprit (CPU, memory, latency without errors,
errors, restarts) is what tells the kinds of fault apart. A head on the window's state vector mixes
that profile with the callers' symptoms: with the untrained backbone's vectors on held-out seeds it
reached 0.69 type accuracy, a state-conditioned map over vector + profile 0.75, the profile with
per-state weights 0.90, the profile with a per-state prior 0.96. Likewise the anomaly head adds a
linear read of each signal's largest deviation to the state-conditioned head on the vector
(F1 0.93 → 0.95 in the same probe).
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


class AnomalyHead(nn.Module):
    """The state-conditioned head on the window's vector plus a linear read of its largest deviations."""

    def __init__(self, dim: int, features: int, states: int) -> None:
        super().__init__()
        self.vector = StateHead(dim, 1, states)
        self.deviation = nn.Linear(features, 1)

    def forward(self, x: torch.Tensor, deviation: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """x: (batch, dim); deviation: (batch, features) each signal's largest |deviation| over services."""
        return (self.vector(x, state) + self.deviation(deviation)).squeeze(-1)


class FailureTypeHead(nn.Module):
    def __init__(self, features: int, failure_types: int, states: int) -> None:
        super().__init__()
        self.profile = nn.Linear(features, failure_types)
        self.prior = nn.Parameter(torch.zeros(states, failure_types))  # per runtime state, kept small

    def forward(self, culprit: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """culprit: (batch, features) the blamed service's deviations → (batch, failure_types) logits."""
        return self.profile(culprit) + self.prior[state]


class TaskHeads(nn.Module):
    def __init__(self, dim: int, states: int, failure_types: list[str], service_features: int) -> None:
        super().__init__()
        self.failure_types = list(failure_types)
        self.service_features = service_features
        self.anomaly = AnomalyHead(dim, service_features, states)
        self.failure_type = FailureTypeHead(service_features, len(failure_types), states)
        self.root_cause = RootCauseHead(service_features, dim)

    def penalty(self) -> torch.Tensor:
        anomaly = self.anomaly.vector
        return (anomaly.delta**2).sum() + (anomaly.delta_bias**2).sum() + (self.failure_type.prior**2).sum()
