"""bitsandbytes, imported the one way this suite allows (QLoRA's NF4 layers, the 8-bit AdamW, the NF4 row of
the quantization report; peft imports it too when it is installed).

Why not a plain ``import bitsandbytes``: on CPUs with native bf16 instructions its import asks the Hugging Face
hub for a compiled kernel (``kernels-community/quantization-bitsandbytes``, through the ``kernels`` package
that transformers installs). That is a download at run time, which no default run or test may make, and it
would make results depend on CPU flags and network. Hidden from that import, bitsandbytes falls back to the
CPU kernels it ships (the same ones every other CPU uses); the one-line warning it logs then is silenced.
"""
from __future__ import annotations

import logging
import sys
from types import ModuleType

_HIDDEN = object()


def import_bitsandbytes() -> ModuleType:
    """bitsandbytes without hub kernels (see the module docstring); ImportError when it is not installed."""
    if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is not None:
        return sys.modules["bitsandbytes"]
    saved = sys.modules.get("kernels", _HIDDEN)
    log = logging.getLogger("bitsandbytes")
    level = log.level
    sys.modules["kernels"] = None  # "from kernels import get_kernel" raises ImportError: no hub lookup
    log.setLevel(logging.ERROR)
    try:
        import bitsandbytes
    finally:
        log.setLevel(level)
        if saved is _HIDDEN:
            del sys.modules["kernels"]
        else:
            sys.modules["kernels"] = saved
    return bitsandbytes
