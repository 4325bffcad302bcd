"""GNP-IQ (methods/mpismoe/quant.py, qlinear.py) and the quantization report: packing, the paper's
min/max init, error never above round-to-nearest, real storage bytes, QuantLinear, determinism."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import tiny_batch
from methods.mpismoe import quant
from methods.mpismoe.qlinear import QuantLinear, quantize_linears
from methods.mpismoe.quant import (QuantizedTensor, gnpiq_quantize, mse, pack, packed_nbytes, quant_error,
                                   rtn_quantize, unpack)

BITS = (2, 3, 4, 8)


@pytest.fixture(scope="module")
def minilm():
    from benchmark.backbones import load_backbone

    return load_backbone("minilm")


def _group_sse(w: torch.Tensor, qt: QuantizedTensor) -> torch.Tensor:
    return (w - qt.dequantize()).square().reshape(w.shape[0], -1, qt.group_size).sum(-1)


# --- packing -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 63, 1001, 4099])
def test_pack_unpack_round_trip(bits, n):
    codes = torch.randint(0, 1 << bits, (n,), generator=torch.Generator().manual_seed(n), dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == packed_nbytes(n, bits) == {8: n, 4: math.ceil(n / 2), 2: math.ceil(n / 4),
                                                       3: 3 * math.ceil(n / 8)}[bits]
    assert packed.untyped_storage().nbytes() == packed.numel()  # compact, not a view of something bigger
    assert torch.equal(unpack(packed, bits, n), codes)
    assert torch.equal(unpack(packed, bits, n, torch.float32), codes.float())


def test_pack_is_dense_and_checks_its_input():
    assert torch.equal(pack(torch.tensor([1, 2, 3, 0]), 2), torch.tensor([0b00111001], dtype=torch.uint8))
    assert torch.equal(pack(torch.tensor([5, 10]), 4), torch.tensor([0xA5], dtype=torch.uint8))
    assert torch.equal(pack(torch.arange(8), 3), torch.tensor([0x88, 0xC6, 0xFA], dtype=torch.uint8))
    with pytest.raises(ValueError, match="out of range"):
        pack(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="not supported"):
        pack(torch.tensor([1]), 5)
    with pytest.raises(ValueError, match="fewer"):
        unpack(torch.zeros(2, dtype=torch.uint8), 4, 5)


# --- the min/max init -----------------------------------------------------------------------------
def test_minmax_init_spans_each_group():
    # two groups of 4, 2 bits (qmax = 3); every number is exact in fp16
    w = torch.tensor([[-1.0, -0.5, 0.2, 0.5, 0.5, 1.0, 1.5, 2.0]])
    qt = rtn_quantize(w, bits=2, group_size=4)
    # group 1: s = 1.5 / 3 = 0.5, z = 3 / 2 - (min + max) / (2 s) = 1.5 + 0.5 = 2 (the paper's z too)
    # group 2 (all positive): s = 0.5, z = 1.5 - 2.5 = -1: levels 0.5, 1, 1.5, 2. The paper's formula
    # taken literally clamps z to 0 and saturates the codes (levels 0 .. 1.5, 2.0 -> 1.5)
    assert qt.scales.dtype == torch.float16 and qt.scales.tolist() == [[0.5, 0.5]]
    assert qt.zeros.tolist() == [[2.0, -1.0]]
    assert qt.codes().tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]
    expected = torch.tensor([[-1.0, -0.5, 0.0, 0.5, 0.5, 1.0, 1.5, 2.0]])
    assert torch.equal(qt.dequantize(), expected)
    assert quant_error(w, qt) == pytest.approx((0.2 ** 2) / 8)


def test_minmax_matches_an_independent_implementation():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, 128, generator=g)
    for bits in BITS:
        qmax = 2 ** bits - 1
        wg = w.reshape(-1, 32)
        hi, lo = wg.max(1).values[:, None], wg.min(1).values[:, None]
        s = ((hi - lo) / qmax).half()
        s = torch.where(s.float() < (hi - lo) / qmax, torch.nextafter(s, torch.tensor(math.inf).half()), s).float()
        z = (qmax / 2 - (hi + lo) / 2 / s).half().float()  # |z| < 2048: no widening
        q = torch.clamp(torch.round(wg / s + z), 0, qmax)
        qt = rtn_quantize(w, bits, 32)
        torch.testing.assert_close(qt.dequantize(), (s * (q - z)).reshape(w.shape), rtol=0, atol=1e-6)


def _group_max_error(w: torch.Tensor, qt: QuantizedTensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per group of ``qt`` (padding excluded): max |w - w_d|, range and max |w|."""
    w2 = w.reshape(qt.shape)
    err = (w2 - qt.dequantize()).abs()
    pad = (-qt.shape[1]) % qt.group_size
    if pad:  # pad by repeating the last weight: no error, same range
        w2 = torch.cat([w2, w2[:, -1:].expand(-1, pad)], 1)
        err = torch.cat([err, err.new_zeros(qt.shape[0], pad)], 1)
    wg = w2.reshape(-1, qt.group_size)
    return err.reshape(-1, qt.group_size).amax(1), wg.amax(1) - wg.amin(1), wg.abs().amax(1)


def _assert_within_a_step(w: torch.Tensor, qt: QuantizedTensor, half: bool) -> None:
    """Every group's max error <= half a step (range / (2 qmax)) or <= one step (range / qmax),
    up to fp16's rounding of s (up, 2^-10 relative) and float32 arithmetic."""
    err, rng, amax = _group_max_error(w, qt)
    step = rng / ((1 << qt.bits) - 1)
    bound = (step / 2 if half else step) * (1 + 2 ** -9) + amax * 2 ** -20
    worst = int(torch.argmax(err - bound))
    assert bool((err <= bound).all()), (f"{qt.method} {qt.bits}-bit group {worst}: max error {float(err[worst]):.3g} "
                                        f"> {'half ' if half else ''}step bound {float(bound[worst]):.3g} "
                                        f"(range {float(rng[worst]):.3g})")


def _one_signed(seed: int = 0) -> torch.Tensor:
    """Rows of groups of 16 whose values all have one sign, plus a row around 0 (the usual case)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(6, 64, generator=g)
    return torch.stack([0.9 + 0.2 * u[0],  # LayerNorm-like, all positive
                        -(0.9 + 0.2 * u[1]),  # all negative
                        3.0 + 5.0 * u[2],  # positive, wide
                        -0.05 - 0.01 * u[3],  # negative, small
                        (u[4] - 0.5) * 0.1,  # straddles 0
                        torch.where(u[5] > 0.5, 0.2 + u[5], -0.2 - u[5])])  # groups of either sign


@pytest.mark.parametrize("bits", BITS)
def test_one_signed_groups_are_quantized_within_a_step(bits):
    w = _one_signed(bits)
    r, g = rtn_quantize(w, bits, 16), gnpiq_quantize(w, bits, 16)
    _assert_within_a_step(w, r, half=True)  # the init: nearest of levels spanning [min, max]
    _assert_within_a_step(w, g, half=False)  # GNP-IQ minimises the MSE, it may trade the extremes
    assert bool((_group_sse(w, g) <= _group_sse(w, r) * (1 + 1e-5) + 1e-12).all())  # never worse than its init
    for qt in (r, g):
        _assert_within_a_step(-w, quant.quantize(-w, bits, 16, method=qt.method), half=qt.method == "rtn")


@pytest.mark.parametrize("bits", BITS)
def test_layernorm_like_weight(bits):
    # a 1-D LayerNorm weight near 1, quantized as QuantLayerNorm does (weight.view(1, -1)), and 1-D as is
    w = 1.0 + 0.08 * torch.randn(384, generator=torch.Generator().manual_seed(bits))
    w[7], w[100] = 1.9, 0.35  # a few outliers, as trained LayerNorms have
    for method in ("rtn", "gnpiq"):
        qt = quant.quantize(w.view(1, -1), bits, 64, method=method)
        _assert_within_a_step(w, qt, half=method == "rtn")
        err, rng, _ = _group_max_error(w, qt)
        if bits == 8:  # the issue: ~0.57 max error on MiniLM's LayerNorms at 8 bits
            assert float(err.max()) < float(rng.max()) / 255
        qt1 = quant.quantize(w, bits, 64, method=method)
        assert qt1.shape == (1, 384) and torch.equal(qt1.dequantize(), qt.dequantize())


@pytest.mark.parametrize("bits", BITS)
def test_narrow_groups_far_from_zero(bits):
    # |z| ~ |min| / s beyond fp16's exact integers (2048): the step widens so that z's rounding
    # cannot push a value out of the levels; a full step holds down to range ~ |centre| 2^-9
    g = torch.Generator().manual_seed(bits)
    u = torch.rand(5, 32, generator=g)
    centre = torch.tensor([[1.0], [-1.0], [300.0], [-1000.0], [0.01]])
    rel = torch.tensor([[0.01], [0.003], [0.002], [0.0025], [0.004]])
    w = centre * (1 + rel * (u - 0.5))
    for method in ("rtn", "gnpiq"):
        qt = quant.quantize(w, bits, 32, method=method)
        _assert_within_a_step(w, qt, half=False)


@pytest.mark.parametrize("cols,group", [(5, 64), (100, 32), (70, 64), (3, 0)])
def test_short_and_ragged_rows(cols, group):
    # a row shorter than the group (one group per row), a last group of 4 (100 = 3 * 32 + 4) or 6,
    # per channel: all-positive and all-negative values, every bit width
    u = torch.rand(4, cols, generator=torch.Generator().manual_seed(cols))
    w = torch.cat([0.9 + 0.2 * u[:2], -(1.0 + 0.5 * u[2:])])
    for bits in BITS:
        for method in ("rtn", "gnpiq"):
            qt = quant.quantize(w, bits, group, method=method)
            assert qt.dequantize().shape == w.shape
            _assert_within_a_step(w, qt, half=method == "rtn")


def test_constant_groups_are_exact_and_zero_scale_is_guarded():
    # constant groups (values the fp16 scale holds) come back exactly, next to non-constant groups,
    # in a row shorter than the group and a padded last group; a LayerNorm's initial all-ones weight
    w = torch.tensor([[0.0] * 8 + [0.375] * 8 + [-2.5] * 8 + [1.0] * 8 + [-2.0 ** -13] * 8 + [1000.0] * 8,
                      [0.9, 1.0] * 4 + [1.0] * 8 + [-1.0, -2.0] * 4 + [-7.0] * 8 + [2.0, 3.0] * 4 + [0.5] * 8])
    for bits in BITS:
        for fn in (rtn_quantize, gnpiq_quantize):
            qt = fn(w, bits, 8)
            assert bool((qt.scales > 0).all()) and bool(torch.isfinite(qt.zeros.float()).all())
            const = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 0, 1]], dtype=torch.bool).repeat_interleave(8, 1)
            assert torch.equal(qt.dequantize()[const], w[const])
            _assert_within_a_step(w, qt, half=fn is rtn_quantize)
            ones = torch.ones(384)
            assert torch.equal(fn(ones, bits, 64).dequantize(), ones.view(1, -1))
            for row in (torch.full((1, 5), -0.75), torch.full((1, 70), 0.125)):  # short, and padded
                assert torch.equal(fn(row, bits, 64).dequantize(), row)


# --- GNP-IQ vs round to nearest -----------------------------------------------------------------
@pytest.mark.parametrize("bits", BITS)
def test_gnpiq_never_worse_than_rtn_per_group(bits):
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(bits)) * 0.05
    g, r = gnpiq_quantize(w, bits), rtn_quantize(w, bits)
    assert bool((_group_sse(w, g) <= _group_sse(w, r) * (1 + 1e-5) + 1e-12).all())
    limit = {2: 0.7, 3: 0.85, 4: 0.92, 8: 0.95}[bits]
    assert quant_error(w, g) < limit * quant_error(w, r)


def test_gnpiq_beats_rtn_on_a_real_minilm_weight(minilm):
    w = minilm.linear_modules()["encoder.layer.0.attention.self.query"].weight.detach()
    ratios = {b: quant_error(w, gnpiq_quantize(w, b)) / quant_error(w, rtn_quantize(w, b)) for b in (2, 4)}
    assert ratios[2] < 0.6 and ratios[4] < 0.9, ratios


def test_seeded_and_deterministic(monkeypatch):
    w = torch.randn(40, 192, generator=torch.Generator().manual_seed(0))
    a, b = gnpiq_quantize(w, 3, seed=7), gnpiq_quantize(w, 3, seed=7)
    for k in ("packed", "scales", "zeros"):
        assert torch.equal(getattr(a, k), getattr(b, k))
    monkeypatch.setattr(quant, "_CHUNK_ELEMENTS", 4096)  # chunking must not change the result
    c = gnpiq_quantize(w, 3, seed=7)
    assert all(torch.equal(getattr(a, k), getattr(c, k)) for k in ("packed", "scales", "zeros"))
    d = gnpiq_quantize(w, 3, seed=8)
    assert not torch.equal(a.scales, d.scales)  # the restarts really are random
    assert quant_error(w, d) <= quant_error(w, rtn_quantize(w, 3))


def test_granularity_and_padding():
    w = torch.randn(6, 100, generator=torch.Generator().manual_seed(1))
    for gs in (0, -1):
        qt = gnpiq_quantize(w, 4, gs)
        assert qt.group_size == 100 and tuple(qt.scales.shape) == (6, 1)
    qt = gnpiq_quantize(w, 4, 32)  # 100 = 3 * 32 + 4: the last group is padded
    assert qt.dequantize().shape == w.shape and tuple(qt.scales.shape) == (6, 4)
    assert quant_error(w, qt) <= quant_error(w, rtn_quantize(w, 4, 32))
    with pytest.raises(ValueError):
        gnpiq_quantize(w, 5)
    with pytest.raises(ValueError):
        quant.quantize(w, 4, method="nope")


# --- storage -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits,code_bytes", [(8, 1.0), (4, 0.5), (3, 0.375), (2, 0.25)])
def test_storage_bytes_come_from_the_tensors(bits, code_bytes):
    w = torch.randn(256, 512)
    qt = gnpiq_quantize(w, bits, 64, restarts=0, iters=1)
    real = sum(t.untyped_storage().nbytes() for t in (qt.packed, qt.scales, qt.zeros))
    assert qt.storage_bytes() == real
    assert qt.bytes_per_weight() == pytest.approx(code_bytes + 2 * 2 / 64)  # fp16 scale + zero per 64
    lin = nn.Linear(512, 256)
    ql = QuantLinear.from_linear(lin, bits, 64, method="rtn")
    assert ql.logical_numel() == 256 * 512 + 256
    assert ql.storage_bytes() == real + 256 * 4
    assert {n for n, _ in ql.named_buffers()} == {"packed", "scales", "zeros"}
    assert [n for n, _ in ql.named_parameters()] == ["bias"] and not ql.bias.requires_grad


# --- QuantLinear ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", BITS)
def test_quant_linear_equals_dequantize_then_matmul(bits):
    torch.manual_seed(0)
    lin = nn.Linear(100, 48)  # 100 is not a multiple of the group: padding path
    ql = QuantLinear.from_linear(lin, bits, 32)
    x = torch.randn(3, 5, 100)
    ref_w = ql.quantized().dequantize()
    with torch.no_grad():
        torch.testing.assert_close(ql(x), F.linear(x, ref_w, lin.bias), rtol=0, atol=1e-6)
    assert torch.equal(ql.weight, ref_w)
    assert mse(lin.weight, ref_w) == pytest.approx(quant_error(lin.weight, ql.quantized()))

    # with a gradient: same values and input gradient, and no fp32 weight is saved for backward
    saved = []

    def keep(t):
        saved.append((t.dtype, tuple(t.shape)))
        return t

    xg = x.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        y = ql(xg)
    assert (torch.float32, (48, 100)) not in saved
    y.square().sum().backward()
    xr = x.clone().requires_grad_(True)
    F.linear(xr, ref_w, lin.bias).square().sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-5, atol=1e-5)


def test_quant_linear_under_autocast_and_state_dict():
    lin = nn.Linear(64, 32)
    ql = QuantLinear.from_linear(lin, 4, 64)
    x = torch.randn(2, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, ref = ql(x), lin(x)
    assert y.dtype == ref.dtype == torch.bfloat16
    other = QuantLinear.from_linear(nn.Linear(64, 32), 4, 64)
    with torch.no_grad():
        assert not torch.equal(other(x), ql(x))
    other.load_state_dict(ql.state_dict())
    with torch.no_grad():
        assert torch.equal(other(x), ql(x))


def test_quantize_linears_replaces_exactly_the_named_linears():
    from benchmark.backbones import load_backbone

    bb = load_backbone("tiny-bert")
    linears = list(bb.linear_modules())
    norms = bb.layer_norms()
    ln_name = next(iter(norms))
    ln_before = {n: (m, m.weight.detach().clone()) for n, m in norms.items()}
    chosen = linears[:3] + [linears[-1]]
    batch = tiny_batch(bb, n=2, length=9)
    batch.pop("labels")
    with torch.no_grad():
        ref = bb(batch)
    stats = quantize_linears(bb.model, chosen + [ln_name], bits=8, group_size=32)
    assert stats["replaced"] == chosen and stats["skipped"] == [ln_name]
    mods = dict(bb.model.named_modules())
    assert all(isinstance(mods[n], QuantLinear) for n in chosen)
    assert all(type(mods[n]) is nn.Linear for n in linears if n not in chosen)
    for n, (m, w) in ln_before.items():
        assert mods[n] is m and m.weight.dtype == torch.float32 and torch.equal(m.weight, w)
    assert stats["bytes_after"] < 0.3 * stats["bytes_before"] and stats["mse"] > 0
    with torch.no_grad():
        torch.testing.assert_close(bb(batch), ref, rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match="no submodule"):
        quantize_linears(bb.model, ["encoder.nope"])
    with pytest.raises(ValueError, match="not an nn.Linear"):
        quantize_linears(bb.model, ["embeddings"])


# --- the report ----------------------------------------------------------------------------------
def test_report_end_to_end_on_a_tiny_backbone(tmp_path, capsys):
    import pandas as pd

    from methods.mpismoe import quant_report

    texts = quant_report.real_texts(8)
    assert len(texts) == 8 and all(isinstance(t, str) and t for t in texts)
    out = tmp_path / "q.csv"
    assert quant_report.main(out, bits=(4, 8), quantizers=["gnpiq"], backbone="tiny-bert", texts=8) == 0
    df = pd.read_csv(out)
    assert set(quant_report.COLUMNS) <= set(df.columns)
    assert sorted(df["quantizer"].unique()) == ["gnpiq", "gnpiq-layernorm", "rtn", "rtn-layernorm"]
    assert (df.groupby("tensors")["quantizer"].nunique() == 2).all()
    g = df[df.quantizer == "gnpiq"].set_index("bits")
    assert (g["mse_ratio_to_rtn"] <= 1.0).all() and (g["output_error"] > 0).all()
    # worst group: RTN within half a step of every weight, GNP-IQ within one step
    steps = (2.0 ** df["bits"] - 1) * df["worst_group_error_over_range"]
    assert (steps[df.quantizer.str.startswith("rtn")] <= 0.501).all() and (steps <= 1.0).all()
    assert (df["worst_group_max_error"] > 0).where(df.tensors == "linear", True).all()
    ln = df[df.tensors == "layernorm"]  # tiny-bert's LayerNorms are untrained all-ones: exact
    assert (ln["mse"] == 0).all() and (ln["mse_ratio_to_rtn"] == 1.0).all() and ln["output_error"].isna().all()
    # tiny-bert rows are 32 or 64 long: groups of 64 shrink to the row, so 2 x fp16 per 32 or 64 weights
    assert 0.5 + 4 / 64 <= g.loc[4, "bytes_per_weight"] <= 0.5 + 4 / 32
    assert "storage of the quantized layers vs fp32" in capsys.readouterr().out
