"""``faultline eval retrieval``: needle accuracy of any checkpoint through the serving engine.

The prediction goes through the same engine, KV cache and attention backend that serve
traffic, so an approximation's effect on accuracy is measured where it would hurt. Any
checkpoint path works: the project's retrieval model here, a real model on a GPU node.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from services.inference.engine import Engine, EngineSettings
from services.inference.main import saved_backend_options
from services.inference.sampling import SamplingParams
from services.inference.tokenizer import Tokenizer
from services.inference.weights import load_model


def engine_predictor(engine: Engine, attention: dict[str, object]):  # type: ignore[no-untyped-def]
    """predict(tokens) -> the greedy next token, served with the given attention options."""
    params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True, attention=attention)

    def predict(tokens: list[int]) -> int:
        (token,) = [t for event in engine.submit(list(tokens), params) for t in event.token_ids]
        return token

    return predict


def main(argv: list[str]) -> int:
    from services.inference.training.retrieval_task import evaluate

    parser = argparse.ArgumentParser(prog="faultline eval retrieval")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--lengths", default="4096,8192,16384")
    parser.add_argument("--n", type=int, default=50, help="prompts per length")
    parser.add_argument("--attention", default="{}", help='JSON, e.g. {"backend": "hata", "budget": 0.03}')
    args = parser.parse_args(argv)
    model = load_model(args.model)
    settings = EngineSettings(max_batch_size=1, max_context=1 << 20, backend_options=saved_backend_options(args.model))
    engine = Engine(model, Tokenizer(args.model), settings)
    engine.start()
    try:
        accuracy = evaluate(
            engine_predictor(engine, json.loads(args.attention)), [int(x) for x in args.lengths.split(",")], n=args.n
        )
    finally:
        engine.stop()
    print(json.dumps({"model": str(args.model), "attention": json.loads(args.attention), "accuracy": accuracy}))
    return 0
