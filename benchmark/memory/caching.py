"""What ``max_memory_reserved`` (and so ``nvidia-smi``) would show: CUDA's caching allocator replayed on the
allocations and frees of a prediction.

The model follows the caching allocator as PyTorch documents it (``CUDACachingAllocator.cpp``, "CUDA
semantics" notes), default settings (no ``expandable_segments``, no ``max_split_size_mb``):

- every request is rounded up to a multiple of 512 bytes (the block's size, what ``allocated`` counts);
- blocks of at most 1 MiB come from the small pool, larger ones from the large pool;
- a request no cached free block of its pool can hold gets a new segment from ``cudaMalloc``: 2 MiB for the
  small pool, 20 MiB for large requests under 10 MiB, else the request rounded up to 2 MiB (what
  ``reserved`` counts; segments are kept, never returned, until ``empty_cache``);
- a request takes the smallest free block of its pool that holds it (best fit), and the block is split when
  the rest is worth keeping (at least 512 bytes in the small pool, more than 1 MiB in the large one);
- a freed block merges with free neighbours of its segment.

cuBLAS's workspace is modelled too (``cublas_workspaces``): PyTorch gives each (cuBLAS handle, stream) one
workspace from the caching allocator, the first time a thread runs a cuBLAS op, and keeps it (it counts in
``max_memory_allocated``); handles are per thread, so a training step holds two: the calling thread's
(forward, optimizer) and the autograd engine's device thread's (backward). Its size is PyTorch's default for
the GPU (``CublasHandlePool.cpp``, ``CUBLAS_WORKSPACE_CONFIG`` unset): 32 MiB on Hopper (sm90, the H100 the
reference runs used), 8 MiB + 128 KiB before it.

Not modelled: the CUDA context and the libraries' code, which ``nvidia-smi`` shows on top
(``CUDA_CONTEXT_BYTES``, an estimate); scratch that single kernels allocate and free inside one op (it can
raise a peak by one op's scratch); streams (one stream here); garbage collection of cached blocks (off by
default).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

KB, MB = 1024, 1024 * 1024
MIN_BLOCK = 512
SMALL_SIZE = 1 * MB
SMALL_BUFFER = 2 * MB
LARGE_BUFFER = 20 * MB
MIN_LARGE_ALLOC = 10 * MB
ROUND_LARGE = 2 * MB
# The CUDA context plus the CUDA libraries' code and handles that a PyTorch training process holds on the
# device before its first tensor: not tensors, not in max_memory_reserved, shown by nvidia-smi. An estimate
# (about 500 MiB with CUDA 12 on an H100; it varies by driver, GPU and loaded libraries), stated as such.
CUDA_CONTEXT_BYTES = 500 * MB
# PyTorch's default cuBLAS workspace per (handle, stream): 4096 KiB x 8 on sm90 and later, else
# 4096 KiB x 2 + 16 KiB x 8 (aten/src/ATen/cuda/CublasHandlePool.cpp); cuBLASLt shares it by default
CUBLAS_WORKSPACE_BYTES = {"sm90": 4096 * KB * 8, "older": 4096 * KB * 2 + 16 * KB * 8}


def round_size(nbytes: int) -> int:
    return max(MIN_BLOCK, (nbytes + MIN_BLOCK - 1) // MIN_BLOCK * MIN_BLOCK)


def segment_size(size: int) -> int:
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return (size + ROUND_LARGE - 1) // ROUND_LARGE * ROUND_LARGE


@dataclass(eq=False)
class _Block:
    segment: int
    offset: int
    size: int
    small: bool
    free: bool = True
    prev: "_Block | None" = field(default=None, repr=False)
    next: "_Block | None" = field(default=None, repr=False)

    def key(self) -> tuple[int, int, int]:
        return self.size, self.segment, self.offset


class CachingAllocatorModel:
    """Replays allocations (``alloc(key, nbytes)``) and frees (``free(key)``) through the caching allocator's
    rules (module docstring); ``peak_allocated`` and ``peak_reserved`` are what ``max_memory_allocated`` and
    ``max_memory_reserved`` would read."""

    def __init__(self):
        self._free = {True: [], False: []}  # small? -> sorted [(size, segment, offset, block)]
        self._live: dict[object, _Block] = {}
        self._segments = 0
        self.allocated = self.reserved = self.peak_allocated = self.peak_reserved = 0

    def event(self, key: object, nbytes: int) -> None:
        """A tracker's listener: ``nbytes > 0`` allocates ``key``, ``< 0`` frees it."""
        if nbytes > 0:
            self.alloc(key, nbytes)
        else:
            self.free(key)

    def alloc(self, key: object, nbytes: int) -> None:
        if key in self._live:
            self.free(key)
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        pool = self._free[small]
        i = bisect.bisect_left(pool, (size, -1, -1))
        if i < len(pool):
            block = pool.pop(i)[3]
        else:  # cudaMalloc a new segment
            seg = segment_size(size)
            block = _Block(self._segments, 0, seg, small)
            self._segments += 1
            self.reserved += seg
            self.peak_reserved = max(self.peak_reserved, self.reserved)
        rest = block.size - size
        if (rest >= MIN_BLOCK) if small else (rest > SMALL_SIZE):
            tail = _Block(block.segment, block.offset + size, rest, small, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = tail
            block.next, block.size = tail, size
            self._insert(tail)
        block.free = False
        self._live[key] = block
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)

    def free(self, key: object) -> None:
        block = self._live.pop(key, None)
        if block is None:
            return
        self.allocated -= block.size
        block.free = True
        for other in (block.prev, block.next):  # merge with free neighbours of the same segment
            if other is not None and other.free:
                self._remove(other)
                if other is block.prev:
                    other.size += block.size
                    other.next = block.next
                    if block.next is not None:
                        block.next.prev = other
                    block = other
                else:
                    block.size += other.size
                    block.next = other.next
                    if other.next is not None:
                        other.next.prev = block
        self._insert(block)

    def _insert(self, block: _Block) -> None:
        bisect.insort(self._free[block.small], (*block.key(), block))

    def _remove(self, block: _Block) -> None:
        pool = self._free[block.small]
        i = bisect.bisect_left(pool, block.key())
        while pool[i][3] is not block:
            i += 1
        pool.pop(i)


def cublas_workspaces(caching: CachingAllocatorModel, nbytes: int = CUBLAS_WORKSPACE_BYTES["sm90"]):
    """A dispatch mode that allocates cuBLAS's workspace in ``caching`` the first time each thread would run a
    cuBLAS op (module docstring): the caller's thread, and the autograd engine's device thread, which runs
    every backward op of CUDA tensors (on CPU, fake or not, backward runs on the caller's thread: an op
    inside a backward node stands for the device thread). Never freed, as in PyTorch."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    cublas = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.addbmm, aten.mv, aten.addmv, aten.dot,
              aten.vdot, aten._addmm_activation}

    class CublasWorkspaces(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.threads: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket in cublas:
                thread = "autograd" if torch._C._current_autograd_node() is not None else "caller"
                if thread not in self.threads:
                    self.threads.append(thread)
                    caching.alloc(("cublas workspace", thread), nbytes)
            return out

    return CublasWorkspaces()
