"""``topk_certified``: top-k attention whose every answer carries a total-variation certificate.

Per decode query and head, keep the fewest keys whose discarded softmax mass τ = TV(P, P̂) is at
most the request's budget ε (Lemma 4.1), attend over them, and record τ. Two ways to choose:

- ``exact``: score every key, sort, cut where the tail mass drops to ε (τ is then known exactly);
- ``search``: score keys cell by cell and stop as soon as a certificate τ̂ ≥ τ is within ε, so
  most keys are never scored. Cells are the cache's pages (64 tokens) with a centre c and a
  radius r; q·k ≤ q·c + ‖q‖·r bounds every unscored key, hence the certificate
  τ̂ = (Z_scored − Z_head + Σ_cells |unscored|·e^U) / (Z_scored + Σ_cells |unscored|·e^U).
  With ``candidates="hata"`` the HATA hash proposes the first keys to score (cheap), and the
  search widens the set only while the certificate is over budget.

Prefill is exact attention. Statistics (max and mean τ, share of keys scored) accumulate on
the sequence's cache and come back with the response.
"""

from __future__ import annotations

import torch

from services.inference.attention.base import AttentionBackend, causal_attention, decode_attention
from services.inference.config import ModelConfig
from services.inference.kv_cache import LayerCache

PAGE = 64


def cells_of(keys: torch.Tensor, cell: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and radius of each whole cell of ``cell`` consecutive keys: keys (..., n, d)."""
    whole = keys.shape[-2] // cell * cell
    block = keys[..., :whole, :].reshape(*keys.shape[:-2], whole // cell, cell, keys.shape[-1])
    centres = block.mean(-2)
    return centres, torch.linalg.vector_norm(block - centres.unsqueeze(-2), dim=-1).amax(-1)


def update_cells(cache: LayerCache) -> None:
    """Centre and radius of every full page of keys (recomputed only for pages not yet summarised)."""
    keys = cache.keys()
    pages = cache.length // PAGE
    if "cell_centres" not in cache.summaries:  # no page yet: no cells, every key gets scored
        cache.summaries["cell_centres"] = keys.new_zeros(keys.shape[0], 0, keys.shape[-1])
        cache.summaries["cell_radii"] = keys.new_zeros(keys.shape[0], 0)
    done = cache.summaries["cell_centres"].shape[1]
    if pages == done:
        return
    centres, radii = cells_of(keys[:, done * PAGE : pages * PAGE], PAGE)
    cache.summaries["cell_centres"] = torch.cat([cache.summaries["cell_centres"], centres], 1)
    cache.summaries["cell_radii"] = torch.cat([cache.summaries["cell_radii"], radii], 1)


def kmeans_cells(keys: torch.Tensor, count: int, iters: int = 6, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Content-based cells for keys (n, d) with no positional structure (an encoder's):
    (assignment (n,), centres (count, d), radii (count,)) from a few Lloyd iterations."""
    generator = torch.Generator().manual_seed(seed)
    centres = keys[torch.randperm(keys.shape[0], generator=generator)[:count]].clone()
    for _ in range(iters):
        assignment = torch.cdist(keys, centres).argmin(1)
        for c in range(centres.shape[0]):
            members = keys[assignment == c]
            if len(members):
                centres[c] = members.mean(0)
    assignment = torch.cdist(keys, centres).argmin(1)
    distance = torch.linalg.vector_norm(keys - centres[assignment], dim=-1)
    radii = torch.zeros(centres.shape[0]).scatter_reduce(0, assignment, distance, "amax")
    return assignment, centres, radii


def certified_search(
    q: torch.Tensor,
    keys: torch.Tensor,
    centres: torch.Tensor,
    radii: torch.Tensor,
    epsilon: float,
    candidates: torch.Tensor | None = None,
    cell: int = PAGE,
    assignment: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float, int]:
    """One query: (kept key indices, certified τ̂ ≤ ε, keys scored); keys (n, d), cells (C, d) and (C,).

    Cells are consecutive runs of ``cell`` keys (the cache's pages) unless ``assignment`` (n,)
    names each key's cell (-1: in no cell). Keys in no cell, and ``candidates``, are scored first.
    """
    n, dim = keys.shape
    scale = dim**-0.5
    cells = centres.shape[0]
    if assignment is None:
        assignment = torch.arange(n) // cell
        assignment[cells * cell :] = -1  # past the last whole page: the recent keys
    members = [torch.nonzero(assignment == c).squeeze(1) for c in range(cells)]
    scored = assignment < 0
    if candidates is not None:
        scored[candidates] = True
    logits = torch.full((n,), float("-inf"), dtype=torch.float64)
    logits[scored] = (keys[scored] @ q).double() * scale
    upper = ((centres @ q) + torch.linalg.vector_norm(q) * radii).double() * scale
    order = torch.argsort(upper, descending=True).tolist()
    unscored = torch.bincount(assignment[~scored], minlength=cells).double() if cells else torch.zeros(0)
    visited = 0
    while True:
        known = logits[scored]
        m = max(float(known.max()) if known.numel() else -1e300, float(upper.max()) if cells else -1e300)
        bound = float((unscored * torch.exp(upper - m)).sum()) if cells else 0.0
        weights = torch.sort(torch.exp(known - m), descending=True)
        total = float(weights.values.sum()) + bound
        needed = (1 - epsilon) * total
        prefix = weights.values.cumsum(0)
        if prefix.numel() and float(prefix[-1]) >= needed:
            k = min(int(torch.searchsorted(prefix, torch.tensor(needed, dtype=prefix.dtype))) + 1, prefix.numel())
            tau_hat = (total - float(prefix[k - 1])) / total
            kept = torch.nonzero(scored).squeeze(1)[weights.indices[:k]]
            return kept, tau_hat, int(scored.sum())
        if visited == cells:  # everything scored: the certificate is exact
            return torch.nonzero(scored).squeeze(1)[weights.indices], 0.0, n
        chosen = order[visited]
        visited += 1
        fresh = members[chosen][~scored[members[chosen]]]
        logits[fresh] = (keys[fresh] @ q).double() * scale
        scored[fresh] = True
        unscored[chosen] = 0


class CertifiedTopKBackend(AttentionBackend):
    name = "topk_certified"

    def __init__(
        self, tv_budget: float = 0.01, mode: str = "exact", candidates: str | None = None, **candidate_options: object
    ) -> None:
        if not 0 < tv_budget < 1:
            raise ValueError(f"tv_budget must be in (0, 1), got {tv_budget}")
        if mode not in ("exact", "search"):
            raise ValueError(f"mode must be 'exact' or 'search', got {mode!r}")
        self.epsilon, self.mode = tv_budget, mode
        self.proposer = None
        if candidates is not None:
            from services.inference.attention import create_backend

            self.proposer = create_backend(candidates, **candidate_options)

    def adopt(self, layer: int, cache: LayerCache) -> None:
        if self.proposer is not None:
            self.proposer.adopt(layer, cache)

    def validate(self, config: ModelConfig) -> None:
        if self.proposer is not None:
            self.proposer.validate(config)

    def prefill(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        if self.proposer is not None:
            return self.proposer.prefill(layer, q, k, v, cache)
        cache.append(k, v)
        return causal_attention(q, cache.keys(), cache.values())

    def decode(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        if self.proposer is not None:
            proposals = self.proposer.propose(layer, q, k, v, cache)  # appends k, v (and its own state)
        else:
            cache.append(k, v)
            proposals = None
        keys, values = cache.keys(), cache.values()
        heads, kv_heads = q.shape[0], keys.shape[0]
        group = heads // kv_heads
        out = torch.empty_like(q)
        taus, scored, kept_total = [], 0, 0
        if self.mode == "search":
            update_cells(cache)
        for h in range(heads):
            kv = h // group
            query = q[h, 0]
            if self.mode == "exact":
                logits = (keys[kv] @ query).double() * keys.shape[-1] ** -0.5
                p, order = torch.sort(torch.softmax(logits, -1), descending=True)
                keep = int((1 - p.cumsum(0) > self.epsilon).sum()) + 1
                kept, tau, count = order[:keep], float(1 - p[:keep].sum()), keys.shape[1]
            else:
                kept, tau, count = certified_search(
                    query,
                    keys[kv],
                    cache.summaries["cell_centres"][kv],
                    cache.summaries["cell_radii"][kv],
                    self.epsilon,
                    None if proposals is None else proposals[kv],
                )
            out[h] = decode_attention(q[h : h + 1], keys[kv : kv + 1, kept], values[kv : kv + 1, kept])[0]
            taus.append(max(tau, 0.0))
            scored += count
            kept_total += len(kept)
        stats = cache.stats
        stats["tv_max"] = max(stats.get("tv_max", 0.0), max(taus))
        stats["tv_sum"] = stats.get("tv_sum", 0.0) + sum(taus)
        stats["tv_count"] = stats.get("tv_count", 0.0) + len(taus)
        stats["keys_scored"] = stats.get("keys_scored", 0.0) + scored
        stats["keys_kept"] = stats.get("keys_kept", 0.0) + kept_total
        stats["keys_total"] = stats.get("keys_total", 0.0) + heads * keys.shape[1]
        return out
