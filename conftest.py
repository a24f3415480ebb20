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


import pytest  # after the environment is set (TRITON_INTERPRET before triton is imported)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The size="tiny" local sentiment world, built once per test session in a temporary cache."""
    from scar.demo.sentiment import build

    return build(tmp_path_factory.mktemp("scar-cache"), size="tiny", progress=False)
