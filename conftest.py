"""Session-wide test setup for tests/ and bench/.

Triton kernels can only run here under Triton's interpreter, and TRITON_INTERPRET must be set before
any module defines a @triton.jit kernel: setting it inside one test module is too late when another
module (collected earlier) already imported the kernels. A machine with a GPU keeps the real backend.
"""
import os

if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
