"""Bytes of distinct tensor storages: the one count of "stored bytes" (a backbone's, a quantized
layer's, a prediction's), so every place that reports stored bytes agrees to the byte.

A storage is keyed by its Python object, which torch keeps one per storage while it lives (the
``MemoryTracker`` keys storages the same way): views and tied weights count once, and it works for
fake and meta tensors, whose storages have no data pointer to key by.
"""
from __future__ import annotations


def unique_storage_bytes(tensors) -> int:
    """Sum of ``nbytes`` over the distinct storages of ``tensors`` (``None`` and non-tensors skipped)."""
    seen, total = {}, 0
    for t in tensors:
        if t is None or not hasattr(t, "untyped_storage"):
            continue
        st = t.untyped_storage()
        if id(st) in seen:
            continue
        seen[id(st)] = st  # held, so its id is not reused by a later storage
        total += st.nbytes()
    return total
