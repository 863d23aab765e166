"""Top-k attention measured by total variation (Tzachristas et al., 2025): the maths the certified
backend runs on, as plain functions of one query's logits.

With logits sorted s₁ ≥ … ≥ sₙ and p = softmax(s), keeping the top k and renormalising gives P̂:
- TV(P, P̂) equals the discarded mass τ = Σ_{i>k} pᵢ (Lemma 4.1);
- KL(P̂‖P) = −log(1 − τ), so TV = 1 − exp(−KL) (Theorem 4.3);
- the output error is exactly Attn − Attn_k = τ·(μ_tail − μ_head) (Theorem 5.2);
- cheaper upper bounds on τ: the single-gap bound (Theorem 4.5) and a blockwise bound from
  per-block upper bounds on the tail's logits (what the search form uses).
"""

from __future__ import annotations

import torch
from torch.distributions import Normal


def tail_mass(logits: torch.Tensor, k: int) -> torch.Tensor:
    """τ: softmax mass outside the top k (over the last dimension)."""
    p = torch.softmax(logits.double(), dim=-1)
    top = torch.topk(p, k, dim=-1).values.sum(-1)
    return (1 - top).clamp_min(0).to(logits.dtype)


def certified_k(logits: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The smallest k whose discarded mass is ≤ ε, per row (Lemma 4.1 turned into a rule)."""
    p = torch.sort(torch.softmax(logits.double(), dim=-1), dim=-1, descending=True).values
    kept = p.cumsum(-1)
    # k = 1 + number of prefixes that still leave more than ε outside.
    return 1 + (1 - kept > epsilon).sum(-1)


def kl_renormalised(logits: torch.Tensor, k: int) -> torch.Tensor:
    """KL(P̂‖P) computed from the definition (P̂: P restricted to the top k and renormalised)."""
    log_p = torch.log_softmax(logits.double(), dim=-1)
    top = torch.topk(logits.double(), k, dim=-1).indices
    log_p_top = log_p.gather(-1, top)
    log_p_hat = log_p_top - torch.logsumexp(log_p_top, dim=-1, keepdim=True)
    return (log_p_hat.exp() * (log_p_hat - log_p_top)).sum(-1)


def single_gap_bound(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Theorem 4.5: τ ≤ 1 / (1 + (k/(n−k))·e^{Δₖ}), Δₖ = s_k − s_{k+1} (sorted logits)."""
    n = logits.shape[-1]
    if k >= n:
        return torch.zeros(logits.shape[:-1], dtype=logits.dtype)
    s = torch.sort(logits.double(), dim=-1, descending=True).values
    gap = s[..., k - 1] - s[..., k]
    return (1 / (1 + (k / (n - k)) * torch.exp(gap))).to(logits.dtype)


def blockwise_bound(head_logits: torch.Tensor, block_sizes: torch.Tensor, block_upper: torch.Tensor) -> torch.Tensor:
    """τ ≤ Σ_b |B_b|e^{u_b} / (Σ_head e^{s} + Σ_b |B_b|e^{u_b}), for tail blocks with u_b ≥ their max logit.

    head_logits (..., k); block_sizes, block_upper (..., blocks). Exact when every block is
    one token with u_b its logit; looser as blocks grow or bounds loosen.
    """
    m = torch.maximum(head_logits.max(-1).values, block_upper.max(-1).values)[..., None]
    head = torch.exp(head_logits.double() - m).sum(-1)
    tail = (block_sizes.double() * torch.exp(block_upper.double() - m)).sum(-1)
    return (tail / (head + tail)).to(head_logits.dtype)


def output_error_identity(
    logits: torch.Tensor, values: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Attn − Attn_k, τ, ‖μ_tail − μ_head‖) for one query: logits (n,), values (n, d)."""
    p = torch.softmax(logits.double(), dim=-1)
    v = values.double()
    order = torch.argsort(p, descending=True)
    head, tail = order[:k], order[k:]
    tau = p[tail].sum()
    mu_head = (p[head, None] * v[head]).sum(0) / (1 - tau)
    mu_tail = (p[tail, None] * v[tail]).sum(0) / tau if len(tail) else torch.zeros_like(mu_head)
    difference = p @ v - mu_head  # full attention minus attention renormalised over the head
    return difference, tau, torch.linalg.vector_norm(mu_tail - mu_head)


def gaussian_k_fraction(sigma: float, epsilon: float) -> float:
    """k_ε/n ≈ Φc(σ + Φ⁻¹(ε)) for iid Gaussian logits of spread σ."""
    normal = Normal(0.0, 1.0)
    return float(1 - normal.cdf(torch.tensor(sigma + float(normal.icdf(torch.tensor(epsilon))))))
