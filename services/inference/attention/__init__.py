"""Attention backends: one interface, one module per backend, chosen by name."""

from __future__ import annotations

import importlib

from services.inference.attention.base import AttentionBackend

# name -> "module:class"; imported on first use so that a backend's extra cost is paid only when chosen.
BACKENDS = {
    "dense": "services.inference.attention.dense:DenseBackend",
    "topk_certified": "services.inference.attention.certified:CertifiedTopKBackend",
    "chelsea": "services.inference.attention.chelsea:ChelseaBackend",
    "hata": "services.inference.attention.hata:HataBackend",
    "chelsea_hata": "services.inference.attention.chelsea_hata:ChelseaHataBackend",
    "oracle_topk": "services.inference.attention.baselines:OracleTopKBackend",
    "window": "services.inference.attention.baselines:WindowBackend",
}


def create_backend(name: str, **options: object) -> AttentionBackend:
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; available: {', '.join(sorted(BACKENDS))}")
    module, _, cls = BACKENDS[name].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)(**options)
    except TypeError as error:  # an option the backend does not take
        raise ValueError(f"bad options for attention backend {name!r}: {error}") from error


__all__ = ["BACKENDS", "AttentionBackend", "create_backend"]
