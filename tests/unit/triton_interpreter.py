"""Shared guard for the kernel tests: they run Triton through its interpreter on CPU tensors.

tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton. If triton was
nevertheless compiled-mode (the variable set to 0, or imported earlier), the kernels cannot run
on CPU tensors, and the kernel test modules skip with this reason rather than fail.
"""

import pytest

pytest.importorskip("triton", reason="triton is not installed")

import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

INTERPRETED = isinstance(tl.sum, InterpretedFunction)


def require_interpreter() -> None:
    if not INTERPRETED:
        pytest.skip(
            "triton is in compiled mode (TRITON_INTERPRET is not 1 at its first import): these tests use CPU tensors",
            allow_module_level=True,
        )
