"""Peak training memory: measured (``make memory``), predicted on fake tensors (``make memory
PREDICT=1``), and the tracker and Lightning meter both use. Modules, each for one job:

- ``tracker``: ``MemoryTracker``, live tensor storage during training and its peak's breakdown;
- ``meter``: ``MemoryMeter``, the Lightning callback of every run (CUDA figures, tracker, step time);
- ``storage``: ``unique_storage_bytes``, the one count of stored bytes;
- ``table``: the memory rows (every method and variant) and the one table writer and formatter;
- ``measure``: ``make memory``, one fresh process per row;
- ``fake``: the generic fake-tensor runtime (data-dependent ops, fake parameters, CUDA kernel choices);
- ``architecture``: a random-init backbone from its architecture config alone;
- ``simulate``: one row's training steps under the tracker, fake or real;
- ``predict``: ``python -m benchmark.memory.predict``, every row predicted (and ``--compare-cuda``);
- ``calibrate``: the H100 reference runs of docs/memory.md predicted beside their measured bytes.

The names below are re-exported lazily, so ``import benchmark.memory`` stays light (no torch) for the
command-line parent processes that only start rows.
"""
from __future__ import annotations

_EXPORTS = {"CATEGORIES": "tracker", "MemoryTracker": "tracker", "batch_size_of": "tracker",
            "device_name": "tracker", "MemoryMeter": "meter", "pl_module_device": "meter",
            "unique_storage_bytes": "storage"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'benchmark.memory' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"benchmark.memory.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
