"""Reasoning-scoped contrastive learning: ``L = λ1·L_intra + λ2·L_inter + λ3·L_rank`` on unlabelled runs.

The paper names the three scopes but not their formulas; these are the ones used here. All use
InfoNCE, ``NCE(a, P, y) = -log softmax(a·Pᵀ/τ)[y]`` over L2-normalised vectors, τ = ``TAU``.

- ``L_intra`` (intra-agent scope): two views of every step in the batch (dropout in the head plus
  Gaussian noise on the backbone features, a stand-in for the same reasoning on a reworded question);
  each view must find its other view among the *same agent's* steps of the batch (other agents'
  steps are masked out of the softmax), so the embedding separates one agent's correct reasoning
  from its other reasoning instead of merely telling agents apart. Symmetrised over the two views.
- ``L_inter`` (inter-agent scope): a step that received another agent's (or a tool's) output must
  predict that sender's step: ``NCE(W·h_recv, {h_send}, y)`` over the distinct sender steps of the
  batch, ``W`` a learnt linear map. This keeps hand-off (coordination) semantics in the space.
- ``L_rank`` (prefix-to-full ranking): the prefix embedding ``z_t`` of run r must pick its own
  full-trace embedding ``Z_r`` among the batch's traces, ``NCE(z_t, {Z}, r)`` for every t < T_r-1, plus a
  monotonicity hinge ``mean(relu(z_t·Z_r - z_{t+1}·Z_r))``: a longer prefix is never farther from the
  full trace. This is what lets a half-finished run be compared with finished ones.

λ1 = λ2 = λ3 = 1 by default.

``L_sup`` (failure-aware scope, optional, weight λ4): the three losses above never see a label, so nothing
tells the head which of the backbone's many directions separate a failing step from a correct one (a
dropped requirement, a wrong service name); the seed knowledge base's labels do. A supervised
contrastive loss (SupCon: each anchor's positives are the batch's other items of its class) pulls steps of
one (agent, state) class together, the state being normal or the failure the run is in, and likewise
full traces of one failure type, which is what the knowledge base's kNN matching reads.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

TAU = 0.1


def info_nce(
    anchors: torch.Tensor, candidates: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean ``NCE`` of each anchor against ``candidates``; ``mask`` (n, m) False removes candidates."""
    logits = anchors @ candidates.T / TAU
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return F.cross_entropy(logits, targets)


def intra_loss(view_a: torch.Tensor, view_b: torch.Tensor, agent_ids: torch.Tensor) -> torch.Tensor:
    """(n, d) two views of n steps; ``agent_ids`` (n,) says which steps share an agent."""
    same_agent = agent_ids[:, None] == agent_ids[None, :]
    targets = torch.arange(len(view_a), device=view_a.device)
    return 0.5 * (info_nce(view_a, view_b, targets, same_agent) + info_nce(view_b, view_a, targets, same_agent))


def inter_loss(
    predicted: torch.Tensor, steps: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor
) -> torch.Tensor:
    """``predicted`` = W·h for every step; pairs (receivers[i], senders[i]) index into the batch's steps."""
    if len(receivers) == 0:
        return steps.new_zeros(())
    unique, targets = torch.unique(senders, return_inverse=True)  # one candidate per distinct sender step
    anchors = F.normalize(predicted[receivers], dim=-1)
    return info_nce(anchors, steps[unique], targets)


def rank_loss(prefixes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``prefixes`` (B, T, d) prefix embeddings of B padded runs of ``lengths``."""
    batch = torch.arange(len(lengths), device=prefixes.device)
    full = prefixes[batch, lengths - 1]  # (B, d)
    steps = torch.arange(prefixes.shape[1], device=prefixes.device)
    partial = steps[None, :] < (lengths - 1)[:, None]  # (B, T): proper prefixes
    runs = batch[:, None].expand_as(partial)[partial]
    nce = info_nce(prefixes[partial], full, runs)
    to_full = (prefixes * full[:, None, :]).sum(-1)  # (B, T) similarity of each prefix to its full trace
    valid_next = steps[None, 1:] < lengths[:, None]  # pairs (t, t+1) inside the run
    hinge = F.relu(to_full[:, :-1] - to_full[:, 1:])[valid_next[:, : to_full.shape[1] - 1]]
    return nce + (hinge.mean() if hinge.numel() else prefixes.new_zeros(()))


def supervised_loss(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SupCon over L2-normalised ``embeddings`` (n, d) with class ``labels`` (n,); anchors without a positive
    in the batch are skipped (zero when none has one)."""
    n = len(embeddings)
    eye = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    logits = (embeddings @ embeddings.T / TAU).masked_fill(eye, float("-inf"))
    positives = (labels[:, None] == labels[None, :]) & ~eye
    anchors = positives.any(1)
    if not anchors.any():
        return embeddings.new_zeros(())
    log_prob = logits - torch.logsumexp(logits, 1, keepdim=True)
    log_prob = log_prob.masked_fill(~positives, 0.0)
    return -(log_prob.sum(1)[anchors] / positives.sum(1)[anchors]).mean()


def total_loss(
    intra: torch.Tensor, inter: torch.Tensor, rank: torch.Tensor, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
) -> torch.Tensor:
    return weights[0] * intra + weights[1] * inter + weights[2] * rank
