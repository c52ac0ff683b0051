"""Session-wide: on a machine without a GPU, Triton is first imported with its interpreter on.

`triton.jit` decides when a function is decorated whether it is interpreted, and triton.language
decorates its own functions (tl.sigmoid, ...) when it is first imported. Whichever test module
imports triton first (directly, or through nvidia-modelopt) would otherwise fix them as compiled
functions for the whole session, and the kernels in tests/kernels, run by the interpreter, could
not call them. Only the import happens here; the variable is set again by tests/kernels alone.
"""

import importlib.util
import os

if importlib.util.find_spec("triton") is not None:
    import torch

    if not torch.cuda.is_available():
        _previous = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            import triton.language  # noqa: F401
        finally:
            if _previous is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = _previous
