"""``faultline train chelsea``: find the outlier heads that Chelsea must leave uncompressed.

Heads differ in how much clustering hurts them (the paper: about 4% of heads, at stable
positions across data sets). For each layer and KV head, compress that head alone to the
budget and measure the relative error of the attention output of the last queries against
dense attention; the worst ``share`` of heads are saved as outliers in
``chelsea_outliers.json`` beside the checkpoint, which the service loads.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from services.inference.attention.base import decode_attention
from services.inference.attention.chelsea import OUTLIERS_FILE, ChelseaBackend
from services.inference.hata_train import record
from services.inference.model import Transformer
from services.inference.weights import load_model


def head_errors(model: Transformer, prompts: Sequence[Sequence[int]], budget: float, last: int = 32) -> torch.Tensor:
    """Mean relative attention-output error per (layer, KV head) when only that head is clustered."""
    config = model.config
    group = config.group_size
    errors = torch.zeros(config.num_hidden_layers, config.num_key_value_heads)
    backend = ChelseaBackend(budget=budget)
    for prompt in prompts:
        queries, cache = record(model, prompt)
        for layer in range(config.num_hidden_layers):
            keys, values = cache.layers[layer].keys(), cache.layers[layer].values()
            n = keys.shape[1]
            for head in range(config.num_key_value_heads):
                single = type(cache.layers[layer])(1, config.head_dim, keys.dtype, keys.device)
                single.append(keys[head : head + 1], values[head : head + 1])
                single.write_extra("chelsea_size", 0, torch.ones(1, n))
                backend.compress(layer, single, int(budget * n))
                q = queries[layer][head * group : (head + 1) * group, n - last :]  # (group, last, dim)
                for j in range(q.shape[1]):
                    exact = decode_attention(q[:, j : j + 1], keys[head : head + 1], values[head : head + 1])
                    approx = decode_attention(
                        q[:, j : j + 1], single.keys(), single.values(), bias=torch.log(single.extra("chelsea_size"))
                    )
                    errors[layer, head] += float(((approx - exact).norm() / exact.norm()).item()) / (
                        q.shape[1] * len(prompts)
                    )
    return errors


def outliers(errors: torch.Tensor, share: float) -> dict[str, list[int]]:
    count = math.floor(share * errors.numel())
    chosen = torch.topk(errors.flatten(), count).indices.tolist() if count else []
    out: dict[str, list[int]] = {}
    for flat in chosen:
        layer, head = divmod(flat, errors.shape[1])
        out.setdefault(str(layer), []).append(head)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faultline train chelsea")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--share", type=float, default=0.04, help="share of heads kept whole (the paper: ~4%%)")
    args = parser.parse_args(argv)
    from services.inference.training.retrieval_task import retrieval_prompts

    model = load_model(args.model)
    prompts = [p.tokens for p in retrieval_prompts(args.length, args.prompts, seed=3000)]
    errors = head_errors(model, prompts, args.budget)
    result = {
        "budget": args.budget,
        "share": args.share,
        "outlier_heads": outliers(errors, args.share),
        "errors": errors.tolist(),
    }
    (args.model / OUTLIERS_FILE).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("budget", "outlier_heads")}))
    return 0
