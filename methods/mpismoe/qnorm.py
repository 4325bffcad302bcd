"""The unified-low-precision ablation's LayerNorm: weight and bias stored n-bit, dequantized per forward."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.memory.storage import unique_storage_bytes
from methods.mpismoe.quant import quantize


class QuantLayerNorm(nn.Module):
    """A frozen LayerNorm whose weight and bias are stored n-bit (the unified-precision ablation)."""

    def __init__(self, ln: nn.Module, bits: int, group_size: int):
        super().__init__()
        self.shape = tuple(ln.weight.shape)
        # a weightless copy of the original module (meta tensors): ``to_float`` rebuilds its type
        self._skeleton = [copy.deepcopy(ln).to("meta")]
        self.eps = getattr(ln, "eps", getattr(ln, "variance_epsilon", 1e-6))
        self.rms = not hasattr(ln, "bias") or ln.bias is None  # T5's LayerNorm is an RMSNorm
        self.q = nn.ModuleDict()
        for name in ("weight",) if self.rms else ("weight", "bias"):
            qt = quantize(getattr(ln, name).detach().view(1, -1), bits, group_size)
            holder = nn.Module()
            for k, v in qt.tensors().items():
                holder.register_buffer(k, v)
            holder.meta = (qt.shape, qt.bits, qt.group_size)
            self.q[name] = holder

    def _get(self, name: str) -> torch.Tensor:
        from methods.mpismoe.quant import dequantize_packed

        h = self.q[name]
        shape, bits, g = h.meta
        return dequantize_packed(h.packed, h.scales, h.zeros, bits, shape, g).view(self.shape)

    def logical_numel(self) -> int:
        return sum(int(torch.tensor(self.shape).prod()) for _ in self.q)

    def storage_bytes(self) -> int:
        return unique_storage_bytes(list(self.buffers()))

    def to_float(self) -> nn.Module:
        """A frozen module of the original LayerNorm type with the dequantized weight (and bias)."""
        device = self.q["weight"].packed.device
        ln = copy.deepcopy(self._skeleton[0]).to_empty(device=device)
        with torch.no_grad():
            for name in self.q:
                getattr(ln, name).copy_(self._get(name))
        return ln.requires_grad_(False)

    def forward(self, x):
        w = self._get("weight")
        if self.rms:
            var = x.float().pow(2).mean(-1, keepdim=True)
            return (w * (x.float() * torch.rsqrt(var + self.eps))).to(x.dtype)
        return F.layer_norm(x, self.shape, w.to(x.dtype), self._get("bias").to(x.dtype), self.eps)
