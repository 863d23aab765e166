"""Sampling parameters, validated, and the sampler (greedy, temperature, top-k, top-p, seeded)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    attention: dict[str, object] = field(default_factory=dict)  # backend name and options for this request

    def validate(self) -> SamplingParams:
        """Raises ValueError naming the first bad field."""
        if not 1 <= self.max_tokens <= 1_000_000:
            raise ValueError(f"max_tokens must be between 1 and 1000000, got {self.max_tokens}")
        if not 0 <= self.temperature <= 100:
            raise ValueError(f"temperature must be between 0 and 100, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if any(not isinstance(s, str) or not s for s in self.stop) or len(self.stop) > 16:
            raise ValueError("stop must be up to 16 non-empty strings")
        return self

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> SamplingParams:
        """From a JSON object as clients send it (Triton's vLLM backend sends numbers as strings)."""
        known = {"max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos", "attention"}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {', '.join(sorted(unknown))}")
        kwargs: dict[str, object] = {}
        casts = {"max_tokens": int, "temperature": float, "top_p": float, "top_k": int, "seed": int}
        for name, cast in casts.items():
            if raw.get(name) is not None:
                try:
                    kwargs[name] = cast(raw[name])  # type: ignore[operator]
                except (TypeError, ValueError) as error:
                    raise ValueError(f"{name} must be a number, got {raw[name]!r}") from error
        if "stop" in raw and raw["stop"] is not None:
            stop = raw["stop"]
            kwargs["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)  # type: ignore[arg-type]
        if "ignore_eos" in raw:
            value = raw["ignore_eos"]
            kwargs["ignore_eos"] = value if isinstance(value, bool) else str(value).lower() == "true"
        if "attention" in raw:
            if not isinstance(raw["attention"], dict):
                raise ValueError('attention must be an object such as {"backend": "hata", "budget": 0.03}')
            kwargs["attention"] = dict(raw["attention"])
        return cls(**kwargs).validate()  # type: ignore[arg-type]


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from logits (vocab,)."""
    if params.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits.float() / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always the first token).
        drop = sorted_probs.cumsum(0) - sorted_probs >= params.top_p
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))
