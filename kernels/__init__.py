"""GPU kernels (Triton) with plain-PyTorch references of the same signature; imports nothing of the project.

HATA (hash-aware top-k attention) decode path: :mod:`kernels.hata_encode` (keys/queries -> packed sign codes and key
norms), :mod:`kernels.hata_score` (Hamming score per KV head, for top-k) and :mod:`kernels.hata_sparse_decode`
(attention over the selected positions); :mod:`kernels.hata_cpu` has the same three steps as fused CPU kernels
(numba) for machines without a GPU. Importing this package imports Triton. To run the Triton kernels on CPU
tensors set ``TRITON_INTERPRET=1`` before Triton is first imported anywhere in the process: ``@triton.jit``, also
inside ``triton.language``, picks interpreter or GPU compiler at import time.

Chelsea KV-cache clustering: :mod:`kernels.chelsea_match` (Chunked Soft Matching: each A token's most cosine-similar
B token of its chunk).
"""

from .chelsea_match import soft_matching, soft_matching_reference
from .hata_cpu import hamming_score_cpu, hash_top_positions_cpu, sparse_attention_cpu, top_positions_cpu
from .hata_encode import hash_encode, hash_encode_reference, hash_encode_with_norms, hash_encode_with_norms_reference
from .hata_score import FORCED_SCORE, hamming_score, hamming_score_reference
from .hata_sparse_decode import sparse_decode_attention, sparse_decode_attention_reference

__all__ = [
    "FORCED_SCORE",
    "hamming_score",
    "hamming_score_cpu",
    "hamming_score_reference",
    "hash_encode",
    "hash_encode_reference",
    "hash_encode_with_norms",
    "hash_encode_with_norms_reference",
    "hash_top_positions_cpu",
    "soft_matching",
    "soft_matching_reference",
    "sparse_attention_cpu",
    "sparse_decode_attention",
    "sparse_decode_attention_reference",
    "top_positions_cpu",
]
