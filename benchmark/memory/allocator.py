"""A second instrument for peak training memory on CPU: the allocator's own count, not tensors.

The tracker (``tracker.py``) sees the tensors that ops return. This instrument sees allocations: PyTorch's
profiler with ``profile_memory=True`` is told of every allocation and free made through c10's CPU allocator,
whichever op or kernel made it (kernel scratch and workspaces included), with the allocator's running total
of bytes allocated since profiling began. The peak it reads is

    bytes of the tensor storages alive when training starts (found by walking the garbage collector's
    objects) + the highest running total the allocator reported while training.

It shares nothing with the tracker: no dispatch mode, no weak references, no categories. What neither
instrument sees: memory that libraries allocate outside c10 (a BLAS library's or oneDNN's own buffers when not
routed through c10). What this one cannot see: the free of a storage allocated before training began (the
profiler does not know its size), so a storage made before training and freed during it would read as still
held. Profiling slows every op, so this runs in a pass of its own, never in a timed one.
"""
from __future__ import annotations

import gc

import torch

try:
    import lightning.pytorch as pl
    _Callback = pl.Callback
except ImportError:  # pragma: no cover
    _Callback = object


def live_cpu_tensor_bytes() -> int:
    """Bytes of the distinct CPU storages of every tensor the garbage collector can reach now."""
    from benchmark.memory.storage import unique_storage_bytes

    gc.collect()
    return unique_storage_bytes(o for o in gc.get_objects()
                                if isinstance(o, torch.Tensor) and o.device.type == "cpu" and not o.is_meta)


def allocation_events(prof) -> list[tuple[int, int, int]]:
    """(time ns, bytes (+ allocated, - freed), allocator's running total) of every CPU allocation event a
    finished ``torch.profiler.profile`` recorded, in time order."""
    from torch._C._profiler import _EventType

    out, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        kind, fields = node.typed
        if kind == _EventType.Allocation and fields.device.type == "cpu":
            out.append((node.start_time_ns, int(fields.alloc_size), int(fields.total_allocated)))
    return sorted(out)


def peak_rise(prof) -> int:
    """The highest number of bytes the CPU allocator held above what it held when profiling began."""
    events = allocation_events(prof)
    return max((total for _, _, total in events), default=0)


class AllocatorPeak(_Callback):
    """Peak training memory of a Lightning fit read from the CPU allocator (module docstring). Profiling
    starts when training starts and stops when it ends; ``peak_bytes`` is then the baseline plus the rise."""

    def __init__(self):
        super().__init__()
        self.baseline_bytes = self.rise_bytes = self.peak_bytes = None
        self._prof = None

    def on_train_start(self, trainer, pl_module):
        from torch.profiler import ProfilerActivity, profile

        self.baseline_bytes = live_cpu_tensor_bytes()
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._prof.start()

    def on_train_end(self, trainer, pl_module):
        if self._prof is None:
            return
        self._prof.stop()
        self.rise_bytes = peak_rise(self._prof)
        self.peak_bytes = self.baseline_bytes + self.rise_bytes
        self._prof = None
