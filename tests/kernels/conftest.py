"""Run the Triton kernels on CPU through Triton's interpreter when no GPU is present.

Triton decides at ``@triton.jit`` time whether a function is interpreted, and the interpreter
reads TRITON_INTERPRET again while it runs. So the kernel modules are imported here with the
variable set, and an autouse fixture sets it only for the duration of each test in this
directory; nothing outside tests/kernels sees it.
"""

import importlib
import importlib.util
import os

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = HAS_TRITON and not torch.cuda.is_available()
KERNEL_MODULES = ("triton_moe", "triton_nvfp4", "triton_mamba", "triton_attention")

if INTERPRET:
    _previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        for _name in KERNEL_MODULES:
            importlib.import_module(f"nemodeploy.engine.kernels.{_name}")
    finally:
        if _previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _previous


@pytest.fixture(autouse=True)
def _triton_interpreter(monkeypatch):
    if INTERPRET:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> str:
    """Where the small-shape tests run: the interpreter on CPU, else the GPU."""
    return "cpu" if INTERPRET else "cuda"
