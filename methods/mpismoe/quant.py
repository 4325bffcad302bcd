"""GNP-IQ, the quantizer of MP-ISMoE's frozen backbone, as a standalone component (no training needed).

The paper (docs/methods.md, GNP-IQ) initialises every weight group with asymmetric uniform min/max
quantization and measures the error as the MSE between w and the dequantized w_d = s (q - z).
Quantization-time error minimisation, as this project builds it:

1. ``rtn_quantize``: the min/max init (``_minmax``: 2^n levels spanning each group's [min, max], with
   a real-valued zero point; the paper's integer formula, taken literally, saturates every group of
   one sign), round to nearest, nothing else (the baseline). Every weight is within half a step
   (max - min) / (2 (2^n - 1)) of its level (see ``_minmax`` for fp16's limits).
2. Iterative refinement: alternate between the codes q given (s, z) (nearest level) and a
   per-group closed-form least-squares fit of w ~ s q - s z given q (a linear regression of w on q).
   Each half-step cannot increase the error, and every iterate is scored with the (s, z) it would be
   stored with; per group the best iterate is kept, the min/max init included (offered first, and
   only a strictly lower error replaces it), so GNP-IQ is not worse than RTN on any group (both
   code the init with ``_codes``; up to float rounding of the scored error).
3. Gaussian-perturbed restarts: ``restarts`` candidates s (1 + sigma_s eps), z + sigma_z eps are drawn
   around the current best (a seeded ``torch.Generator``, so the result is deterministic), each is
   refined for ``restart_iters`` steps, and per group the lowest-error candidate wins. ``rounds``
   repeats this around the new best with sigma halved.
4. A guard on the extremes: a candidate that would leave any weight of a group more than
   ``max_error_steps`` (default 1) steps (max - min) / (2^n - 1) from its level is not taken for that
   group. Without it the MSE fit clipped some groups' extreme weights by up to 1.43 steps (MiniLM),
   for no measurable MSE gain (same ratios to RTN to 3 digits); with it every weight stays within one
   step, as it is within half a step after RTN.

Choices where the paper is silent (all arguments of ``gnpiq_quantize``):

- Granularity: ``group_size=G`` groups G consecutive input weights of a row (default 64);
  ``group_size=0`` or ``-1`` is per output channel (one group per row), as is a G longer than the
  row. Rows whose length is not a multiple of G are padded at the end by repeating the row's last
  weight; the pad takes no part in the fit or the error (a mask) and is cut off by ``dequantize``.
- Storage: scales and zero points in float16. bfloat16's 8-bit mantissa costs error at 8 bits
  (MiniLM, group 64: GNP-IQ 0.91x the fp16 RTN MSE with bf16 scales vs 0.81x with fp16); float32
  would add 4 bytes per group. Zero points are real-valued, the init's as well as the refined ones
  (a "float zero point", same 2 bytes): before the init was fixed, rounding the fitted zero to an
  integer gave 0.60/0.84/0.94x RTN at 2/3/4 bits after plain refinement, against 0.56/0.79/0.87x
  kept real.
- Search budget (``GNPIQSettings``): 6 refinement steps, then 2 rounds of 8 candidates refined 3
  steps each; sigma_s = 0.15 scaled by sqrt(3 / qmax) (a relative change of s moves the outer
  levels by ~qmax times as many steps), sigma_z = 0.5 levels: ~70 candidate scorings per weight,
  batched over candidates per chunk of groups. Measured on all 36 MiniLM linears, group 64
  (``make quant-report``): 0.49 / 0.73 / 0.81 / 0.81x the RTN MSE at 2 / 3 / 4 / 8 bits, ~5-6 s of
  one CPU core per bit width (plain refinement alone: 0.52 / 0.79 / 0.87 / 0.94x). Before the init
  was fixed: 0.49 / 0.71 / 0.79 / 0.79x, against an RTN whose one-signed groups saturated.
- Codes: really packed (``pack``/``unpack``): 8-bit one per byte, 4-bit two per byte, 2-bit four per
  byte, 3-bit eight codes in three bytes. ``QuantizedTensor.storage_bytes`` reads the stored tensors.
"""
from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from methods.mpismoe.packing import (  # noqa: F401  (re-exported: the stored form is part of this API)
    _BYTES_PER_UNIT, _CODES_PER_UNIT, DEFAULT_GROUP_SIZE, SCALE_DTYPES, SUPPORTED_BITS, QuantizedTensor,
    _check_bits, _one_intraop_thread, dequantize_packed, mse, pack, packed_nbytes, quant_error, unpack)

_CHUNK_ELEMENTS = 1 << 22  # per candidate batch, bounds the temporaries of a big layer


# ---------------------------------------------------------------------------------------------
# quantizers
# ---------------------------------------------------------------------------------------------
_SHAPE_ONLY = threading.local()


@contextmanager
def shape_only():
    """Within: ``rtn_quantize`` and ``gnpiq_quantize`` skip the fit and return zero codes, scales and
    zeros with the dtypes, shapes and packed layout of a real result. For memory prediction under
    ``FakeTensorMode``, where no fit can run (it reads values) and only storage sizes matter."""
    prev = getattr(_SHAPE_ONLY, "on", False)
    _SHAPE_ONLY.on = True
    try:
        yield
    finally:
        _SHAPE_ONLY.on = prev


def _shape_only_result(w: torch.Tensor, bits: int, group_size: int, scale_dtype: torch.dtype,
                       method: str) -> QuantizedTensor:
    rows = w.shape[0] if w.dim() != 1 else 1
    cols = w.numel() // max(rows, 1)
    g = effective_group(cols, group_size)
    ngroups = -(-cols // g)
    return QuantizedTensor(torch.zeros(packed_nbytes(rows * ngroups * g, bits), dtype=torch.uint8, device=w.device),
                           torch.zeros(rows, ngroups, dtype=scale_dtype, device=w.device),
                           torch.zeros(rows, ngroups, dtype=scale_dtype, device=w.device),
                           (rows, cols), bits, g, method)


def effective_group(cols: int, group_size: int) -> int:
    """The group length used: ``group_size``, or the whole row for 0 / -1 or a row shorter than it."""
    if group_size in (0, -1):
        return cols
    if group_size < 1:
        raise ValueError(f"group_size={group_size!r}: use a positive group length, or 0/-1 for per output channel")
    return min(group_size, cols)


def _grouped(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int], int]:
    """[rows, cols] -> [rows * ngroups, G] float32, plus a 0/1 mask when the rows had to be padded."""
    if w.dim() < 1 or w.numel() == 0:
        raise ValueError("cannot quantize an empty tensor")
    w2 = w.detach().reshape(w.shape[0], -1) if w.dim() != 1 else w.detach().reshape(1, -1)
    rows, cols = w2.shape
    g = effective_group(cols, group_size)
    pad = (-cols) % g
    w2 = w2.float()
    mask = None
    if pad:
        w2 = torch.cat([w2, w2[:, -1:].expand(rows, pad)], 1)
        mask = torch.cat([w2.new_ones(rows, cols), w2.new_zeros(rows, pad)], 1).reshape(-1, g)
    return w2.reshape(-1, g).contiguous(), mask, (rows, cols), g


def _store(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round to the storage dtype and back, so every error is that of the stored parameters."""
    return x.to(dtype).float()


def _store_up(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The smallest value of ``dtype`` >= ``x`` (``x`` >= 0), back in float32."""
    st = x.to(dtype)
    up = torch.nextafter(st, torch.full_like(st, math.inf))
    return torch.where(st.float() < x, up, st).float()


def _minmax(wg: torch.Tensor, bits: int, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The min/max init per group: the 2^n levels s (k - z), k = 0..qmax, span the group's [min, max].

    The paper's z = clamp(round(qmax - max / s), 0, qmax), taken literally, fails for a group whose
    values all have one sign: z clamps to 0 and every code saturates (MiniLM's LayerNorm weights, up
    to 1.55, came back with max errors of 0.58 at every bit width, 1234 steps at 8 bits). Widening
    [min, max] to contain 0, as integer-zero-point quantizers do, would repair that at the price of
    a coarser step: max / qmax instead of (max - min) / qmax, 5.5x for values in [0.9, 1.1], so
    errors up to 2.75 steps of the group's own grid. The zero point is
    real-valued instead (the refined one is anyway; same 2 bytes): s = (max - min) / qmax rounded
    *up* to the storage dtype, z = qmax / 2 - (min + max) / (2 s), which centres the levels on the
    group (z = -min / s when s qmax = max - min). Every weight is within s / 2 of a level:
    error <= (max - min) / (2 qmax) (1 + 2^-10 in fp16).

    The catch is z's own precision: |z| ~ |min| / s is large for a group narrow and far from 0
    (0.9 / (0.2 / 255) ~ 1150) and z is stored in the scale dtype. While the dtype's spacing at z is
    <= 1 level (|z| < 2048 in fp16, < 256 in bf16), rounding z shifts the levels by <= half a step,
    and no weight ends up more than s / 2 beyond an end level: the bound above holds. Where the
    spacing is u > 1 levels, the step is widened to s = (max - min) / (qmax - u + 1): its u - 1
    levels of slack absorb z's rounding, and the error stays <= s / 2 <= (max - min) / qmax while
    u <= qmax / 2 + 1. Per group the smallest s among u = 1, 2, 4, ... <= qmax is taken, each with
    the least s for which |z| fits under u's limit (and under the dtype's largest value).

    In fp16 that gives, per group (checked on 80k random groups, every bit width): error <=
    (max - min) / (2 qmax) (1 + 2^-10) while max - min >= qmax |centre| / (2047 - qmax / 2) (8 bits:
    a range >= 13 % of |centre|); <= (max - min) / qmax while max - min >= |centre| 2^-9; below
    that, <= |centre| 2^-13, which is finer than fp16's own resolution of the values. (Scales in
    fp16's subnormal range, s < 6.1e-5, add up to 2^-25 in absolute terms.) Constant groups get
    s = |w| (1 if w = 0) and z = -sign(w): code 0 gives w exactly wherever the dtype holds |w|.
    ``rtn_quantize`` and GNP-IQ's refinement start from this (s, z)."""
    qmax = (1 << bits) - 1
    wmax, wmin = wg.amax(-1), wg.amin(-1)
    rng = wmax - wmin
    half_sum = wmax * 0.5 + wmin * 0.5  # the group's centre (no overflow of max + min)
    info = torch.finfo(scale_dtype)
    fits = 2.0 / info.eps  # |z| below this: spacing <= 1 (2^11 in fp16)
    best = torch.full_like(rng, math.inf)
    u = 1
    while u <= qmax:
        # |z| <= |centre| / s + qmax / 2 must stay below the limit where z's spacing exceeds u levels
        zlim = min(fits * u, float(info.max)) - qmax / 2 - 1
        s_u = torch.maximum(rng / (qmax - u + 1), half_sum.abs() / zlim)
        best = torch.minimum(best, s_u)
        u *= 2
    s = _store_up(best, scale_dtype)
    const = rng == 0
    if bool(const.any()):
        c = _store(wmax.abs(), scale_dtype)
        s = torch.where(const, torch.where(c > 0, c, torch.ones_like(c)), s)
        # s (0 - z) = |w| sign(w) = w: code 0 (z = 0 when |w| underflows the dtype: code 0 gives 0)
        z_const = torch.where(c > 0, -torch.sign(wmax), torch.zeros_like(wmax))
    z = qmax / 2 - half_sum / s
    if bool(const.any()):
        z = torch.where(const, z_const, z)
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"a weight range overflows {scale_dtype} scales; use scale_dtype=torch.float32")
    return s, _store(z, scale_dtype)


def _codes(wg: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest of the 2^n levels s (k - z): q = clamp(round(w / s + z), 0, qmax) as float codes,
    with the continuous code r = w / s + z. Scoring and storing both go through here."""
    r = torch.addcmul(z.unsqueeze(-1), wg, s.reciprocal().unsqueeze(-1))
    return torch.round(r).clamp_(0, qmax), r


class _Fitter:
    """Scoring and least-squares refitting of (s, z) for a fixed chunk of groups.

    Tensors carry a leading candidate axis: w is [N, G]; s, z are [C, N]; codes are [C, N, G].
    The error is s^2 sum (q - r)^2 (r = w / s + z), which equals sum (s (q - z) - w)^2 without the
    cancellation of expanding it; reductions are matmuls (much faster than ``sum`` on CPU).
    ``limit`` [N]: a candidate whose error on any weight of a group may exceed it scores inf there.
    Only clamped codes err by more than half a level, and their error grows towards the group's
    extremes, so the worst error is max(half a level, the errors of the group's min and max weight):
    O(candidates x groups), not a pass over every weight."""

    def __init__(self, wg: torch.Tensor, mask: torch.Tensor | None, bits: int, scale_dtype: torch.dtype,
                 limit: torch.Tensor | None = None):
        self.w, self.mask, self.qmax, self.dtype, self.limit = wg, mask, (1 << bits) - 1, scale_dtype, limit
        self.ones = wg.new_ones(wg.shape[1])
        self.n = wg.new_full((wg.shape[0],), wg.shape[1]) if mask is None else mask.sum(-1)
        self.sw = (wg if mask is None else wg * mask) @ self.ones
        self.ends = torch.stack([wg.amin(-1), wg.amax(-1)])  # [2, N]: padding repeats a weight

    def step(self, s: torch.Tensor, z: torch.Tensor, refit: bool):
        """Score each candidate (sum of squared errors); with ``refit``, also the least-squares
        (s, z) for its codes: w ~ a q + b per group, s = a, z = -b / a. Where the regression is
        undefined (constant codes) or a <= 0, the old (s, z) is kept."""
        q, r = _codes(self.w, s, z, self.qmax)
        e = r.sub_(q)
        if self.mask is not None:
            e.mul_(self.mask)
        err = torch.einsum("cng,cng->cn", e, e) * s * s
        if self.limit is not None:
            r_end = torch.addcmul(z, self.ends.unsqueeze(1), s.reciprocal())  # [2, C, N]
            worst = (r_end - torch.round(r_end).clamp_(0, self.qmax)).abs_().amax(0).clamp_min_(0.5) * s
            err = torch.where(worst <= self.limit, err, math.inf)
        if not refit:
            return err, None
        del e, r
        qm = q if self.mask is None else q * self.mask
        sq = qm @ self.ones
        sqq = torch.einsum("cng,cng->cn", qm, q)
        sqw = torch.einsum("cng,ng->cn", qm, self.w)
        n = self.n
        var = sqq - sq * sq / n
        cov = sqw - sq * self.sw / n
        ok = var > 1e-6 * n
        a = cov / torch.where(ok, var, torch.ones_like(var))
        b = (self.sw - a * sq) / n
        a_st = _store(a, self.dtype)
        ok = ok & (a_st > 0) & torch.isfinite(a_st)
        z_new = _store(-b / torch.where(ok, a_st, torch.ones_like(a_st)), self.dtype)
        ok = ok & torch.isfinite(z_new)
        return err, (torch.where(ok, a_st, s), torch.where(ok, z_new, z))


class _Best:
    """Per-group best (s, z, error) over every candidate seen so far."""

    def __init__(self, s: torch.Tensor, z: torch.Tensor):
        self.s, self.z, self.err = s.clone(), z.clone(), torch.full_like(s, math.inf)

    def offer(self, s: torch.Tensor, z: torch.Tensor, err: torch.Tensor) -> None:
        e, idx = err.min(0)  # over candidates
        better = e < self.err
        pick = idx.unsqueeze(0)
        self.s = torch.where(better, s.gather(0, pick)[0], self.s)
        self.z = torch.where(better, z.gather(0, pick)[0], self.z)
        self.err = torch.where(better, e, self.err)


def _refine(fit: _Fitter, best: _Best, s: torch.Tensor, z: torch.Tensor, iters: int) -> None:
    """Score the candidates and ``iters`` refits of them, offering every iterate to ``best``."""
    for i in range(iters + 1):
        err, nxt = fit.step(s, z, refit=i < iters)
        best.offer(s, z, err)
        if nxt is not None:
            s, z = nxt


def _finish(wg: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, shape: tuple[int, int], g: int,
            scale_dtype: torch.dtype, method: str) -> QuantizedTensor:
    q = _codes(wg, s, z, (1 << bits) - 1)[0].to(torch.uint8)
    rows = shape[0]
    return QuantizedTensor(
        packed=pack(q, bits),
        scales=s.to(scale_dtype).reshape(rows, -1).contiguous(),
        zeros=z.to(scale_dtype).reshape(rows, -1).contiguous(),
        shape=shape, bits=bits, group_size=g, method=method,
    )


def rtn_quantize(w: torch.Tensor, bits: int, group_size: int = DEFAULT_GROUP_SIZE,
                 scale_dtype: torch.dtype = torch.float16) -> QuantizedTensor:
    """Round-to-nearest from the min/max init (``_minmax``): q = clamp(round(w / s + z), 0, 2^n - 1),
    the same codes GNP-IQ scores its init with (so GNP-IQ is never worse than this on any group)."""
    _check_bits(bits)
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype must be one of {SCALE_DTYPES}")
    if getattr(_SHAPE_ONLY, "on", False):
        return _shape_only_result(w, bits, group_size, scale_dtype, "rtn")
    with _one_intraop_thread(w.device):
        wg, _, shape, g = _grouped(w, group_size)
        s, z = _minmax(wg, bits, scale_dtype)
        return _finish(wg, s, z, bits, shape, g, scale_dtype, "rtn")


@dataclass(frozen=True)
class GNPIQSettings:
    """The search budget of ``gnpiq_quantize`` (defaults tuned on MiniLM, group 64; see the module doc)."""

    iters: int = 6  # refinement alternations from the min/max init
    restarts: int = 8  # Gaussian candidates per round
    restart_iters: int = 3  # refinement alternations of each candidate
    rounds: int = 2  # rounds of restarts, sigma halved each round
    sigma_s: float = 0.15  # relative std of the scale perturbation
    sigma_z: float = 0.5  # std of the zero-point perturbation, in code levels
    seed: int = 0
    # a candidate whose error on any weight of a group exceeds this many steps (max - min) / qmax of
    # the group is not taken for it (inf: MSE alone decides, outliers may be clipped)
    max_error_steps: float = 1.0

    def __post_init__(self):
        for name in ("iters", "restarts", "restart_iters", "rounds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.sigma_s < 0 or self.sigma_z < 0:
            raise ValueError("sigma_s and sigma_z must be >= 0")
        if not self.max_error_steps > 0:
            raise ValueError("max_error_steps must be > 0 (inf for no limit)")


def gnpiq_quantize(w: torch.Tensor, bits: int, group_size: int = DEFAULT_GROUP_SIZE,
                   settings: GNPIQSettings | None = None, scale_dtype: torch.dtype = torch.float16,
                   **overrides) -> QuantizedTensor:
    """GNP-IQ: min/max init, least-squares refinement, Gaussian-perturbed restarts, best per group.

    ``overrides`` are ``GNPIQSettings`` fields (``iters=``, ``restarts=``, ``seed=``, ...).
    Deterministic for a given seed; the noise is drawn once for all groups, so chunking (done to
    bound memory on big layers) does not change the result. On CPU it runs on one intra-op thread
    (see ``_one_intraop_thread``): ~6 s of one core for all 36 MiniLM linears at any bit width,
    while two threads on a busy 2-core machine took 10x longer."""
    _check_bits(bits)
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype must be one of {SCALE_DTYPES}")
    cfg = settings or GNPIQSettings()
    if overrides:
        cfg = GNPIQSettings(**{**cfg.__dict__, **overrides})
    if getattr(_SHAPE_ONLY, "on", False):
        return _shape_only_result(w, bits, group_size, scale_dtype, "gnpiq")
    with _one_intraop_thread(w.device):
        return _gnpiq(w, bits, group_size, cfg, scale_dtype)


def _gnpiq(w: torch.Tensor, bits: int, group_size: int, cfg: GNPIQSettings, scale_dtype: torch.dtype):
    wg, mask, shape, g = _grouped(w, group_size)
    s0, z0 = _minmax(wg, bits, scale_dtype)
    ngroups = wg.shape[0]
    limit = None
    if math.isfinite(cfg.max_error_steps):
        # the init (error <= s0 / 2) always qualifies; below the limit by more than float32's rounding
        steps = (wg.amax(-1) - wg.amin(-1)) * (cfg.max_error_steps / ((1 << bits) - 1))
        limit = torch.maximum(steps * (1 - 2 ** -12), s0 / 2 * (1 + 2 ** -8) + wg.abs().amax(-1) * 2 ** -20)
    gen = torch.Generator().manual_seed(cfg.seed)
    noise = torch.randn(cfg.rounds, 2, cfg.restarts, ngroups, generator=gen).to(wg.device)
    # a relative change of s moves the outer levels by ~qmax times as many steps, so the scale noise
    # shrinks with the level count (sqrt: measured best on MiniLM among exponents 0, 0.5, 1)
    sigma_s = cfg.sigma_s * math.sqrt(3 / ((1 << bits) - 1))
    chunk = max(1, _CHUNK_ELEMENTS // (max(cfg.restarts, 1) * g))
    s_out, z_out = torch.empty_like(s0), torch.empty_like(z0)
    for lo in range(0, ngroups, chunk):
        sl = slice(lo, min(lo + chunk, ngroups))
        fit = _Fitter(wg[sl], None if mask is None else mask[sl], bits, scale_dtype,
                      None if limit is None else limit[sl])
        best = _Best(s0[sl], z0[sl])
        _refine(fit, best, s0[sl].unsqueeze(0), z0[sl].unsqueeze(0), cfg.iters)
        for r in range(cfg.rounds if cfg.restarts else 0):
            shrink = 0.5 ** r
            eps_s, eps_z = noise[r, 0, :, sl], noise[r, 1, :, sl]
            cs = _store(best.s * (1 + sigma_s * shrink * eps_s).clamp_min(0.05), scale_dtype)
            cz = _store(best.z + cfg.sigma_z * shrink * eps_z, scale_dtype)
            _refine(fit, best, cs, cz, cfg.restart_iters)
        s_out[sl], z_out[sl] = best.s, best.z
    return _finish(wg, s_out, z_out, bits, shape, g, scale_dtype, "gnpiq")


QUANTIZERS = {"gnpiq": gnpiq_quantize, "rtn": rtn_quantize}


def quantize(w: torch.Tensor, bits: int, group_size: int = DEFAULT_GROUP_SIZE, method: str = "gnpiq",
             **kwargs) -> QuantizedTensor:
    """Quantize ``w`` (2-D, or anything reshaped to [dim 0, rest]) with ``method`` (gnpiq | rtn)."""
    if method not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {method!r}; choose one of {', '.join(QUANTIZERS)}")
    return QUANTIZERS[method](w, bits, group_size, **kwargs)
