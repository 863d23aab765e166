"""Operand dtype choice for ``tl.dot``, shared by the HATA kernels."""

from __future__ import annotations

import torch
import triton


def dot_needs_fp32(*dtypes: torch.dtype) -> bool:
    """True when the operands of a ``tl.dot`` must be upcast to fp32 inside a kernel.

    ``tl.dot`` needs equal operand dtypes, so mixed inputs are upcast (exact). The Triton interpreter
    (``TRITON_INTERPRET=1``) reads bf16 ``tl.dot`` operands as raw integers, so bf16 is upcast there too; on a GPU
    bf16 stays on the tensor cores. Either way the products are exact in fp32, so only speed differs.
    """
    if len(set(dtypes)) > 1:
        return True
    return dtypes[0] == torch.bfloat16 and bool(triton.knobs.runtime.interpret)
