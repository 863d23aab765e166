"""The total-variation theory of top-k attention, checked numerically on random and peaked logits."""

from __future__ import annotations

import pytest
import torch

from services.inference.attention.tv import (
    blockwise_bound,
    certified_k,
    gaussian_k_fraction,
    kl_renormalised,
    output_error_identity,
    single_gap_bound,
    tail_mass,
)

GEN = torch.Generator().manual_seed(0)


def _logits(n: int, scale: float) -> torch.Tensor:
    return torch.randn(n, generator=GEN, dtype=torch.float64) * scale


@pytest.mark.parametrize("scale", [0.5, 2.0, 6.0])
@pytest.mark.parametrize("k", [1, 7, 64])
def test_tv_is_the_tail_mass_and_one_minus_exp_minus_kl(scale: float, k: int) -> None:
    s = _logits(128, scale)
    p = torch.softmax(s, -1)
    top = torch.topk(s, k).indices
    p_hat = torch.zeros_like(p)
    p_hat[top] = p[top] / p[top].sum()
    tv = 0.5 * (p - p_hat).abs().sum()  # the definition
    assert torch.allclose(tv, tail_mass(s, k), atol=1e-12)
    assert torch.allclose(tv, 1 - torch.exp(-kl_renormalised(s, k)), atol=1e-12)


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_output_error_identity_holds_exactly(scale: float) -> None:
    s = _logits(200, scale)
    v = torch.randn(200, 16, generator=GEN, dtype=torch.float64)
    for k in (1, 10, 199):
        difference, tau, gap = output_error_identity(s, v, k)
        p = torch.softmax(s, -1)
        top = torch.topk(s, k).indices
        attn_k = (p[top, None] * v[top]).sum(0) / p[top].sum()
        assert torch.allclose(p @ v - attn_k, difference, atol=1e-12)
        assert torch.allclose(torch.linalg.vector_norm(difference), tau * gap, atol=1e-10)


def test_every_bound_is_at_least_the_true_tail() -> None:
    for _ in range(200):
        n = int(torch.randint(8, 300, (1,), generator=GEN))
        s = _logits(n, float(torch.rand(1, generator=GEN)) * 8)
        k = int(torch.randint(1, n, (1,), generator=GEN))
        tau = tail_mass(s, k)
        assert single_gap_bound(s, k) >= tau - 1e-12
        order = torch.sort(s, descending=True).values
        tail = order[k:]
        blocks = torch.split(tail, 16)
        upper = torch.stack([b.max() for b in blocks])  # exact block maxima
        loose = upper + torch.rand(len(blocks), generator=GEN, dtype=torch.float64)  # any valid upper bound
        sizes = torch.tensor([len(b) for b in blocks])
        assert blockwise_bound(order[:k], sizes, upper) >= tau - 1e-12
        assert blockwise_bound(order[:k], sizes, loose) >= blockwise_bound(order[:k], sizes, upper)
        singletons = blockwise_bound(order[:k], torch.ones(len(tail)), tail)
        assert torch.allclose(singletons, tau, atol=1e-12)  # one token per block: the bound is exact


def test_certified_k_is_the_smallest_k_within_budget() -> None:
    for epsilon in (0.1, 0.01, 0.001):
        s = _logits(256, 3.0)
        k = int(certified_k(s, epsilon))
        assert tail_mass(s, k) <= epsilon
        assert k == 1 or tail_mass(s, k - 1) > epsilon


@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.0])
def test_gaussian_rule_predicts_k_over_n(sigma: float) -> None:
    n, epsilon = 20_000, 0.01
    measured = certified_k(_logits(n, sigma).unsqueeze(0), epsilon).item() / n
    assert measured == pytest.approx(gaussian_k_fraction(sigma, epsilon), abs=0.02)
    assert gaussian_k_fraction(3.0, 0.01) == pytest.approx(0.25, abs=0.01)  # the paper's worked example
