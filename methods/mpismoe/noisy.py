"""GNP-IQ's training-time part: ``NoisyQuantLinear`` for the backbone weights the base method trains
(SHERL's late layer; ``noise_on=trained``), ``PerturbedQuantLinear`` for the frozen quantized backbone
linears themselves (``noise_on=backbone``, the reading of the paper's Table 4 numbers; see below).

The paper: such weights keep changing, so every M epochs a random p % of the quantized weights get
their scale and zero recomputed, after the weights are perturbed by Gaussian noise N(mu, sigma^2)
with learnable mu and sigma. What we build (docs/methods.md, GNP-IQ):

- a full-precision master weight (trainable), as mixed-precision training does;
- the forward uses the master fake-quantized with the per-group (s, z) held as buffers, gradients
  pass straight through the rounding (STE) to the master;
- with ``noise`` on, the weights are perturbed by eps ~ N(mu, sigma^2) (reparameterized, so mu and
  log sigma learn from the task loss), one learnable mu and sigma per layer, both **in units of each
  group's quantization step** s_g: eps = s_g (mu + sigma N(0, 1)). Training forwards see
  master + eps; evaluation sees master + s_g mu, the noise's mean, so the model that is validated and
  tested is the expectation of the one trained (a mean used only in training would shift every weight
  by mu between train and eval). Step units keep mu and sigma on the scale the re-quantization acts on
  (a shift of one step moves a code by one level, whatever the layer's magnitude) instead of an
  absolute scalar that an lr of 3e-3 can push past the weights' own scale; sigma starts at half a step,
  the rounding interval (the previous 1 % of the weight std was ~0.4 step at 8 bits, and never moved);
- ``requantize(p)`` refits (s, z) of a random fraction p of the groups with GNP-IQ on the perturbed
  master; the other groups keep theirs exactly.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.memory.storage import unique_storage_bytes

from methods.mpismoe.qlinear import QuantLinear
from methods.mpismoe.quant import DEFAULT_GROUP_SIZE, QuantizedTensor, gnpiq_quantize, pack


class NoisyQuantLinear(nn.Module):
    def __init__(self, linear: nn.Linear, bits: int, group_size: int = DEFAULT_GROUP_SIZE, noise: bool = True,
                 init_sigma: float = 0.5, seed: int = 0):
        super().__init__()
        w = linear.weight.detach().float()
        self.bits, self.noise = bits, noise
        self.out_features, self.in_features = w.shape
        self.weight = nn.Parameter(w.clone())  # the full-precision master
        self.bias = nn.Parameter(linear.bias.detach().float().clone()) if linear.bias is not None else None
        qt = gnpiq_quantize(w, bits, group_size, seed=seed)
        self.group = qt.group_size
        self.register_buffer("scales", qt.scales.clone())
        self.register_buffer("zeros", qt.zeros.clone())
        # mu and sigma in quantization steps of each group; sigma log-parameterised so it stays positive
        self.noise_mu = nn.Parameter(torch.zeros(())) if noise else None
        self.noise_log_sigma = nn.Parameter(torch.tensor(math.log(init_sigma))) if noise else None
        self.generator = torch.Generator().manual_seed(seed)

    # --- grouping helpers -------------------------------------------------------------------
    def _pad(self) -> int:
        return (-self.in_features) % self.group

    def _grouped(self, w: torch.Tensor) -> torch.Tensor:
        pad = self._pad()
        if pad:
            w = torch.cat([w, w[:, -1:].expand(-1, pad)], 1)
        return w.reshape(self.out_features, -1, self.group)

    def step_size(self) -> torch.Tensor:
        """Each weight's group scale s_g (its quantization step), [out, in]."""
        s = self.scales.float().unsqueeze(-1).expand(-1, -1, self.group)
        return s.reshape(self.out_features, -1)[:, : self.in_features]

    def perturbed(self) -> torch.Tensor:
        """master + s_g (mu + sigma eps) in training, master + s_g mu in evaluation (the noise's mean)."""
        w = self.weight
        if not self.noise:
            return w
        z = self.noise_mu
        if self.training:
            z = z + self.noise_log_sigma.exp() * torch.randn_like(w)
        return w + self.step_size() * z

    def noise_stats(self) -> dict[str, float]:
        """mu and sigma (in quantization steps) for the logs; empty without noise."""
        if not self.noise:
            return {}
        return {"mu": float(self.noise_mu.detach()), "sigma": float(self.noise_log_sigma.detach().exp())}

    def fake_quant(self, w: torch.Tensor) -> torch.Tensor:
        """s (clamp(round(w / s + z)) - z) per group, with a straight-through gradient to ``w``."""
        qmax = (1 << self.bits) - 1
        wg = self._grouped(w)
        s = self.scales.float().unsqueeze(-1)
        z = self.zeros.float().unsqueeze(-1)
        wd = (torch.round(wg / s + z).clamp(0, qmax) - z) * s
        wq = wg + (wd - wg).detach()
        return wq.reshape(self.out_features, -1)[:, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fake_quant(self.perturbed())
        return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    @torch.no_grad()
    def requantize(self, fraction: float) -> torch.Tensor:
        """Refit (s, z) of a random ``fraction`` of the groups on the (perturbed) master; returns the
        flat indices of the groups that were refit."""
        was = self.training
        self.train(True)
        w = self.perturbed().detach()
        self.train(was)
        groups = self._grouped(w).reshape(-1, self.group)  # [rows * ngroups, G]
        n = groups.shape[0]
        k = max(1, int(round(fraction * n)))
        chosen = torch.randperm(n, generator=self.generator)[:k].to(w.device)
        qt = gnpiq_quantize(groups[chosen], self.bits, self.group, seed=int(torch.randint(0, 2**31 - 1, (1,),
                                                                              generator=self.generator)))
        self.scales.view(-1)[chosen] = qt.scales.view(-1).to(self.scales.dtype)
        self.zeros.view(-1)[chosen] = qt.zeros.view(-1).to(self.zeros.dtype)
        return chosen

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, bits={self.bits}, group={self.group}, noise={self.noise}"


class PerturbedQuantLinear(QuantLinear):
    """A frozen packed n-bit backbone linear with learnable Gaussian noise per output channel c, in units
    of each group's step s_g: the training forward sees W_d + s_g (mu_c + sigma_c N(0, 1)), evaluation
    W_d + s_g mu_c (the noise's mean, as ``NoisyQuantLinear``). mu and sigma train through the forward
    pass, so the backbone runs with autograd and every such linear keeps its input for backward: the
    paper's Table 4 cost of the noise (+0.1 M parameters, +3 GB on a base with no trained backbone weight).

    The sampled weight is never kept: the training forward runs under activation checkpointing
    (``checkpoint_call``: its input, mu and sigma are saved; W_d, the noise and the matmul are recomputed
    in backward with the same RNG state), so the memory over a frozen ``QuantLinear`` is the saved input,
    at the price of one more matmul per linear in backward. ``requantize(p)`` refits a random fraction p
    of the groups (codes, scales, zeros) with GNP-IQ on the perturbed weights; the others keep theirs."""

    def __init__(self, qt: QuantizedTensor, bias: torch.Tensor | None = None, init_sigma: float = 0.5,
                 seed: int = 0):
        super().__init__(qt, bias)
        dev = qt.packed.device
        self.noise_mu = nn.Parameter(torch.zeros(self.out_features, device=dev))
        self.noise_log_sigma = nn.Parameter(torch.full((self.out_features,), math.log(init_sigma), device=dev))
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_quant(cls, q: QuantLinear, **kwargs) -> "PerturbedQuantLinear":
        return cls(q.quantized(), q.bias, **kwargs)

    def step_size(self) -> torch.Tensor:
        """Each weight's group scale s_g, [out, in]."""
        s = self.scales.float().unsqueeze(-1).expand(-1, -1, self.group_size)
        return s.reshape(self.out_features, -1)[:, : self.in_features]

    def perturbed(self, mu: torch.Tensor, log_sigma: torch.Tensor, sample: bool) -> torch.Tensor:
        """W_d + s_g (mu + sigma eps) (``sample``) or W_d + s_g mu, fp32 [out, in]."""
        z = mu.unsqueeze(-1)
        if sample:
            z = z + log_sigma.exp().unsqueeze(-1) * torch.randn(self.shape, device=self.packed.device)
        return self.dequantize() + self.step_size() * z

    def _linear(self, x: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor, sample: bool) -> torch.Tensor:
        dev = x.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.linear(x.to(dtype), self.perturbed(mu, log_sigma, sample).to(dtype), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            from benchmark.backbones.base import checkpoint_call

            return checkpoint_call(lambda a, m, s: self._linear(a, m, s, True), x, self.noise_mu, self.noise_log_sigma)
        return self._linear(x, self.noise_mu, self.noise_log_sigma, self.training)

    def noise_stats(self) -> dict[str, float]:
        """mu and sigma (in quantization steps), averaged over the output channels, for the logs."""
        return {"mu": float(self.noise_mu.detach().mean()), "sigma": float(self.noise_log_sigma.detach().exp().mean())}

    def logical_numel(self) -> int:
        """The weights and bias it stands for plus its own noise parameters (real parameters, trained)."""
        return super().logical_numel() + self.noise_mu.numel() + self.noise_log_sigma.numel()

    def storage_bytes(self) -> int:
        return super().storage_bytes() + unique_storage_bytes([self.noise_mu, self.noise_log_sigma])

    @torch.no_grad()
    def requantize(self, fraction: float) -> torch.Tensor:
        """Refit codes, scales and zeros of a random ``fraction`` of the groups on a sample of the perturbed
        weight; returns the flat indices of the groups that were refit."""
        g = self.group_size
        w = self.perturbed(self.noise_mu, self.noise_log_sigma, sample=True)
        pad = self.scales.shape[1] * g - self.in_features
        if pad:
            w = torch.cat([w, w[:, -1:].expand(-1, pad)], 1)
        groups = w.reshape(-1, g)  # [rows * ngroups, G]
        n = groups.shape[0]
        k = max(1, int(round(fraction * n)))
        chosen = torch.randperm(n, generator=self.generator)[:k].to(w.device)
        qt = gnpiq_quantize(groups[chosen], self.bits, g,
                            seed=int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator)))
        codes = self.quantized().codes().reshape(-1, g)
        codes[chosen] = qt.codes().reshape(k, g)
        self.packed.copy_(pack(codes.reshape(self.out_features, -1), self.bits))
        self.scales.view(-1)[chosen] = qt.scales.view(-1).to(self.scales.dtype)
        self.zeros.view(-1)[chosen] = qt.zeros.view(-1).to(self.zeros.dtype)
        return chosen

    def extra_repr(self) -> str:
        return super().extra_repr() + ", noise per output channel"
