"""Certified top-k: the certificate never under-reports, the search scores fewer keys on peaked attention."""

from __future__ import annotations

import pytest
import torch

from services.inference.attention import create_backend
from services.inference.attention.base import decode_attention
from services.inference.attention.certified import PAGE, certified_search, update_cells
from services.inference.kv_cache import SequenceCache


def _clustered(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys that drift page by page (like real key states), and values."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(1, n // PAGE + 1, 1, d, generator=g).repeat(1, 1, PAGE, 1).reshape(1, -1, d)[:, :n]
    return centres + 0.2 * torch.randn(1, n, d, generator=g), torch.randn(1, n, d, generator=g)


@pytest.mark.parametrize("epsilon", [0.1, 0.01, 0.001])
@pytest.mark.parametrize("sharpness", [1.0, 4.0])
def test_search_certificate_bounds_the_true_tail_and_stays_within_budget(epsilon: float, sharpness: float) -> None:
    keys, _ = _clustered(2048 + 17, 32, seed=int(epsilon * 1000))
    cache = SequenceCache.empty(1, 1, 32, torch.float32).layers[0]
    cache.append(keys, keys)
    update_cells(cache)
    for i in range(5):
        q = keys[0, 100 * i] * sharpness  # attention peaks near a past key, as in retrieval
        kept, tau_hat, scored = certified_search(
            q, keys[0], cache.summaries["cell_centres"][0], cache.summaries["cell_radii"][0], epsilon
        )
        p = torch.softmax((keys[0] @ q).double() / 32**0.5, -1)
        true_tau = 1 - float(p[kept].sum())
        assert true_tau <= tau_hat + 1e-9 <= epsilon + 1e-9  # never under-reports, never over budget
        assert scored <= keys.shape[1]


def test_search_scores_a_fraction_of_the_keys_when_attention_is_peaked() -> None:
    keys, _ = _clustered(4096, 32, seed=1)
    cache = SequenceCache.empty(1, 1, 32, torch.float32).layers[0]
    cache.append(keys, keys)
    update_cells(cache)
    q = keys[0, 1000] * 6
    _, _, scored = certified_search(
        q, keys[0], cache.summaries["cell_centres"][0], cache.summaries["cell_radii"][0], 0.01
    )
    assert scored < keys.shape[1] / 2


@pytest.mark.parametrize("mode", ["exact", "search"])
def test_backend_output_error_is_bounded_by_the_certified_tv(mode: str) -> None:
    keys, values = _clustered(1024, 32, seed=3)
    keys, values = keys.repeat(2, 1, 1), values.repeat(2, 1, 1)
    backend = create_backend("topk_certified", tv_budget=0.02, mode=mode)
    cache = SequenceCache.empty(1, 2, 32, torch.float32)
    cache.layers[0].append(keys[:, :-1], values[:, :-1])
    q = torch.stack([keys[0, 10], keys[0, 500], keys[1, 900], keys[1, 5]]).unsqueeze(1) * 3
    out = backend.decode(0, q, keys[:, -1:], values[:, -1:], cache.layers[0])
    exact = decode_attention(q, keys, values)
    # ‖Attn − Attn_k‖ = τ‖μ_tail − μ_head‖ ≤ 2·τ·max‖v‖ (Prop. 5.1)
    bound = 2 * cache.stats["tv_max"] * values.norm(dim=-1).max()
    assert ((out - exact).norm(dim=-1) <= bound + 1e-4).all()
    assert cache.stats["tv_max"] <= 0.02 and cache.stats["tv_count"] == 4
