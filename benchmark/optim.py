"""The optimizers a run may use (``optimizer=`` on every method's config; ``<method>@adamw8bit`` rows):
torch's AdamW, and bitsandbytes' AdamW8bit (Dettmers et al., 2022: both moments in 8 bits, blockwise
dynamic quantization with an fp32 absmax per block of 256; tensors under 4,096 elements keep fp32 moments).
"""
from __future__ import annotations

import torch


def build_optimizer(name: str, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    if name == "adamw8bit":
        from benchmark.bnb import import_bitsandbytes

        return import_bitsandbytes().optim.AdamW8bit(groups, lr=lr)
    return torch.optim.AdamW(groups, lr=lr)


def fake_scalars(name: str) -> dict:
    """For the memory predictor (fake tensors read no values): code objects of the optimizer that read
    values only to build a constant (the 8-bit code book of ``create_dynamic_map``, from ``linspace(...)
    .tolist()``), answered with a placeholder; the book's shape, and so the memory, stays the real one."""
    if name != "adamw8bit":
        return {}
    from benchmark.bnb import import_bitsandbytes

    return {import_bitsandbytes().functional.create_dynamic_map.__code__: "8-bit code book"}
