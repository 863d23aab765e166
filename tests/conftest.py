"""Test-session settings that must exist before anything is imported."""

import os

# Triton decides between the interpreter and the GPU on its first import. Tests run the kernels
# on CPU tensors through the interpreter unless the caller says otherwise (TRITON_INTERPRET=0 on
# a GPU machine runs them compiled).
os.environ.setdefault("TRITON_INTERPRET", "1")
