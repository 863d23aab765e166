"""Unified runtime contrastive learning: modal consistency (InfoNCE) and temporal consistency.

L_modal: the metric, trace and log views of one window are positives for each other; the
other windows of the batch are negatives (symmetric InfoNCE over every pair of modalities).

L_temp: windows that overlap in time should be close. With ω_ij = overlap(i, j) / window
length (0 for different systems or runs), each window's target distribution over the other
windows of the batch is ω_i· normalised, and the loss is the cross-entropy between it and the
softmax of the state similarities, so heavier overlap pulls harder and nothing collapses
(the other windows still push away).
"""

from __future__ import annotations

import torch
from torch import nn


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between row-aligned unit vectors: row i of a and row i of b are the pair."""
    logits = a @ b.T / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target))


def modal_loss(modal: dict[str, torch.Tensor], temperature: float = 0.1) -> torch.Tensor:
    names = list(modal)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    return sum(info_nce(modal[a], modal[b], temperature) for a, b in pairs) / len(pairs)


def overlap_weights(starts: torch.Tensor, groups: torch.Tensor, window_s: float) -> torch.Tensor:
    """ω_ij ∈ [0, 1]: the share of a window that i and j have in common (0 across groups and on the diagonal)."""
    overlap = (window_s - (starts[:, None] - starts[None, :]).abs()).clamp(min=0) / window_s
    same = groups[:, None] == groups[None, :]
    return overlap * same * (1 - torch.eye(len(starts), device=starts.device))


def temporal_loss(states: torch.Tensor, weights: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    rows = weights.sum(1) > 0
    if not rows.any():
        return states.sum() * 0
    logits = states @ states.T / temperature
    logits = logits.masked_fill(torch.eye(len(states), dtype=torch.bool, device=states.device), float("-inf"))
    target = weights[rows] / weights[rows].sum(1, keepdim=True)
    log_p = nn.functional.log_softmax(logits[rows], dim=1).masked_fill(target == 0, 0.0)
    return -(target * log_p).sum(1).mean()
