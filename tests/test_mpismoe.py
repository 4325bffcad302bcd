"""MP-ISMoE as a whole: every base (LST, UniPT, SHERL) at 8 and 4 bits, embeddings quantized, the FFN slots
(LST's narrow backbone layers included) and the Fisher init reaching the experts, each ablation switch
changing exactly what it names, real storage, re-quantization, checkpoints and the named experiments."""
import pytest
import torch
from torch import nn

from helpers import build_module, inputs, one_step, tiny_batch, toy_task

BASES = ("lst", "unipt", "sherl")
# SHERL's late layer trained (the Table 4 rows): the backbone weights GNP-IQ's noise and re-quantization act on
LATE = {"base_overrides": {"train_late_layer": "true"}}


def build(backbone="tiny-bert", **cfg):
    return build_module("mpismoe", backbone, **cfg)


_CACHE: dict = {}


def built(backbone="tiny-bert", **cfg):
    """A shared module for tests that only inspect it (building quantizes the 30522-row table: ~0.5 s)."""
    key = (backbone, repr(sorted(cfg.items())))
    if key not in _CACHE:
        _CACHE[key] = build(backbone, **cfg)
    return _CACHE[key]


def fake_loader(backbone, batches=2, n=8):
    return [tiny_batch(backbone, n=n, seed=s) for s in range(batches)]


def storage_from_tensors(module: nn.Module) -> int:
    """Bytes of every distinct storage behind the module's parameters and buffers."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()
    return total


def trainable(module) -> dict[str, int]:
    return {n: p.numel() for n, p in module.named_parameters() if p.requires_grad}


def quant_types():
    from methods.mpismoe.method import QuantLayerNorm
    from methods.mpismoe.noisy import NoisyQuantLinear
    from methods.mpismoe.qlinear import QuantEmbedding, QuantLinear

    return QuantLinear, QuantEmbedding, QuantLayerNorm, NoisyQuantLinear


def is_side(name: str) -> bool:
    return name.startswith("head.") or (name.startswith("method.") and not name.startswith("method.backbone."))


# --- every base, both bit widths -----------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("base,late_layer", [("lst", False), ("unipt", False), ("sherl", False), ("sherl", True)])
def test_every_base_builds_and_trains_only_its_parameters(base, late_layer, bits):
    from methods.mpismoe.ismoe import ISMoE

    module = build(base=base, bits=bits, **(LATE if late_layer else {}))
    method = module.method
    QuantLinear, QuantEmbedding, _, NoisyQuantLinear = quant_types()
    mods = list(method.backbone.model.modules())
    assert not any(type(m) in (nn.Linear, nn.Embedding) for m in mods)  # every backbone weight quantized
    assert all(m.bits == bits for m in mods if isinstance(m, (QuantLinear, QuantEmbedding, NoisyQuantLinear)))
    assert len(method.moes) == len(method.slots) > 0 and all(isinstance(m, ISMoE) for m in method.moes)
    assert (len(method.noisy) > 0) is late_layer  # as published, SHERL trains no backbone weight
    late = {id(p) for p in method.backbone.layers[-1].parameters()} if late_layer else set()
    expected = {n for n, p in module.named_parameters() if is_side(n) or id(p) in late}
    assert set(trainable(module)) == expected
    changed, _ = one_step(module, tiny_batch(method.backbone))
    may_stay = {n for n in expected if ".experts." in n}  # an expert no token was routed to
    assert changed <= expected and expected - may_stay <= changed, sorted(expected - changed)[:5]
    assert {n for n in changed if n.startswith("method.backbone.")} == \
        {n for n in expected if n.startswith("method.backbone.")}  # only SHERL's late layer (+ its noise)


# UniPT's and SHERL's slots do not depend on the backbone family; LST's are the family's own layers
@pytest.mark.parametrize("base,backbone", [("lst", "tiny-bert"), ("lst", "tiny-t5"), ("lst", "tiny-mpnet"), ("unipt", "tiny-bert"),
                                           ("sherl", "tiny-bert")])
def test_one_expert_without_quantization_is_the_base_method(base, backbone):
    """N = 1, k = 1, no perturbation: the MoE is its FFN, so every slot (LST's split BERT FFN, T5's dense
    block, UniPT/SHERL's ffn) computes exactly what the base computed."""
    ours = build(backbone, base=base, quantize_backbone=False, num_experts=1, top_k=1, expert_perturb=0.0).eval()
    plain = build_module(base, backbone).eval()
    assert len(ours.method.moes) > 0
    batch = inputs(tiny_batch(plain.method.backbone))
    with torch.no_grad():
        torch.testing.assert_close(ours.method(batch), plain.method(batch), rtol=1e-5, atol=1e-6)


# --- FFN slots -------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-t5", "tiny-mpnet"])
def test_ffn_slot_install_and_restore_keep_the_layer(backbone):
    from benchmark.backbones import load_backbone

    bb = load_backbone(backbone)
    layer = bb.layers[0]
    x = torch.randn(2, 5, bb.hidden_size)
    mask = torch.ones(2, 5, dtype=torch.long)

    def run():  # a fresh layer context each time (T5 caches its position bias in it)
        return bb.run_layer(layer, x, bb.layer_context(mask, x.dtype))

    with torch.no_grad():
        ref = run()
        slot = bb.ffn_slot(layer)
        ffn = slot.get()
        assert ffn(x).shape == x.shape  # one module, [.., d] -> [.., d]
        before = {n: id(p) for n, p in layer.named_parameters()}
        slot.install(ffn)
        torch.testing.assert_close(run(), ref)
        if backbone != "tiny-t5":  # a split FFN cannot be read back while something is installed
            with pytest.raises(RuntimeError, match="restore"):
                slot.get()
        slot.restore(ffn)
        assert {n: id(p) for n, p in layer.named_parameters()} == before  # the very same modules are back
        torch.testing.assert_close(run(), ref)


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-t5", "tiny-mpnet"])
def test_lst_fisher_init_reaches_expert_zero(backbone, quantized):
    from methods.lst.pruning import pruned
    from methods.mpismoe.ismoe import ISMoE

    module = build(backbone, base="lst", quantize_backbone=quantized)
    method, lst = module.method, module.method.base
    assert lst.config.init == "fisher"
    old = list(method.moes)
    method.prepare(fake_loader(method.backbone), toy_task())
    plan = lst.prune_plan
    assert plan is not None and plan.left_as_initialised == []
    assert len(method.moes) == len(lst.side_layers) and all(m is not o for m, o in zip(method.moes, old))
    QuantLinear = quant_types()[0]
    if quantized:  # prepare put the quantized modules back
        assert not any(type(m) in (nn.Linear, nn.Embedding) for m in method.backbone.model.modules())
        assert any(isinstance(m, QuantLinear) for m in method.backbone.layers[0].modules())
    for j, k in enumerate(lst.source_layers):
        slot, moe = method.slots[j], method.moes[j]
        assert any(m is moe for m in lst.side_layers[j].modules())  # installed in the side layer
        assert all(isinstance(m, ISMoE) is (m is moe) for m in lst.side_layers[j].modules() if isinstance(m, ISMoE))
        slot.restore(moe.experts[0])  # expert 0 back in place: every side parameter is its pruned slice
        try:
            with method.full_precision_layers():  # the (dequantized) backbone the slices came from
                # the layer's own slices, and what the stack owns outside its layers (MPNet's position bias)
                src = {**method.backbone.stack_parameters(), **dict(method.backbone.layers[k].named_parameters())}
                for name, p in lst.side_layers[j].named_parameters():
                    assert torch.equal(p, pruned(src[name], plan.axes.roles.get(name), plan, k).to(p.dtype)), name
        finally:
            slot.install(moe)
        for e in moe.experts[1:]:  # the other experts: small perturbations of expert 0
            d = [(a - b).abs().max() for a, b in zip(e.parameters(), moe.experts[0].parameters()) if a.ndim >= 2]
            assert max(d) > 0
    changed, _ = one_step(module, tiny_batch(method.backbone))
    assert changed and all(is_side(n) for n in changed)


# --- quantized embeddings --------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("shape,group", [((50, 32), 64), ((40, 100), 32), ((37, 5), 64), ((9, 12), 8)])
def test_quant_embedding_dequantizes_the_looked_up_rows(bits, shape, group):
    from methods.mpismoe.qlinear import QuantEmbedding
    from methods.mpismoe.quant import _BYTES_PER_UNIT, _CODES_PER_UNIT, quantize

    torch.manual_seed(0)
    emb = nn.Embedding(*shape, padding_idx=0)
    q = QuantEmbedding.from_embedding(emb, bits, group)
    full = quantize(emb.weight.detach(), bits, group).dequantize()  # the same (seeded) GNP-IQ fit
    ids = torch.randint(0, shape[0], (3, 7))
    assert torch.equal(q(ids), full[ids]) and q(ids).dtype == torch.float32
    assert torch.equal(q.weight, full) and torch.equal(q.to_float().weight, full)
    assert q(torch.zeros(0, dtype=torch.long)).shape == (0, shape[1])
    # codes, scales and zeros are frozen buffers, their bytes are the storage; rows start on a unit
    assert [n for n, _ in q.named_parameters()] == [] and {n for n, _ in q.named_buffers()} == {"packed", "scales", "zeros"}
    assert q.storage_bytes() == storage_from_tensors(q) and q.logical_numel() == shape[0] * shape[1]
    per = _CODES_PER_UNIT[bits]
    row = q.scales.shape[1] * q.group_size
    assert q.packed.numel() == shape[0] * -(-row // per) * _BYTES_PER_UNIT[bits]
    assert q.storage_bytes() < 4 * shape[0] * shape[1] or bits == 8 and shape[1] < 8
    other = QuantEmbedding.from_embedding(nn.Embedding(*shape), bits, group)
    other.load_state_dict(q.state_dict())
    assert torch.equal(other(ids), q(ids))


@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-t5"])
def test_every_embedding_is_quantized_once_and_the_backbone_still_agrees(backbone):
    QuantEmbedding = quant_types()[1]
    q = built(backbone, base="unipt").method
    fp = built(backbone, base="unipt", quantize_backbone=False).method
    embs = {n: m for n, m in q.backbone.model.named_modules(remove_duplicate=False) if isinstance(m, QuantEmbedding)}
    fp_embs = [n for n, m in fp.backbone.model.named_modules(remove_duplicate=False) if isinstance(m, nn.Embedding)]
    assert sorted(embs) == sorted(fp_embs)
    if backbone == "tiny-t5":  # the shared table and embed_tokens are one tied weight: one QuantEmbedding
        assert embs["shared"] is embs["encoder.embed_tokens"]
        assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias" in embs
    assert q.quant_stats["embeddings"] == len({id(m) for m in embs.values()})
    batch = inputs(tiny_batch(q.backbone))
    with torch.no_grad():
        a, b = q.backbone(batch), fp.backbone(batch)
    assert (a - b).abs().max() < 0.05 * b.abs().max()


# --- the ablation switches ---------------------------------------------------------------------------
def test_storage_at_4_bits_below_8_bits_below_fp32():
    sizes = {}
    for key, cfg in {"fp32": {"quantize_backbone": False}, 8: {"bits": 8}, 4: {"bits": 4}}.items():
        method = built(base="unipt", **cfg).method
        sizes[key] = storage_from_tensors(method.backbone)
        assert method.backbone_storage_bytes() == sizes[key]
    from benchmark.backbones import load_backbone

    assert sizes["fp32"] == storage_from_tensors(load_backbone("tiny-bert"))  # untouched
    assert sizes[4] < sizes[8] < 0.3 * sizes["fp32"]


def test_no_quantized_backbone_is_the_fp32_backbone():
    from methods.mpismoe.ismoe import ISMoE

    method = built(quantize_backbone=False).method
    assert not any(isinstance(m, quant_types()) for m in method.backbone.model.modules())
    assert method.quant_stats == {} and method.noisy == []
    plain = build_module("sherl").method
    assert method.backbone_storage_bytes() == plain.backbone_storage_bytes()
    assert any(isinstance(m, ISMoE) for m in method.modules())  # the rest is as usual


def test_quantized_layernorm_changes_only_the_layernorms():
    QuantLayerNorm = quant_types()[2]
    a = built(**LATE).method
    b = built(quantize_layernorm=True, **LATE).method
    ta = dict(a.backbone.model.named_modules())
    tb = dict(b.backbone.model.named_modules())
    late = {id(m) for m in b.backbone.layers[-1].modules()}
    lns = {n for n, m in ta.items() if isinstance(m, nn.LayerNorm)}
    # frozen LayerNorms become QuantLayerNorm; the late layer's (trained by SHERL) stay fp32
    assert {n for n in lns if isinstance(tb[n], QuantLayerNorm)} == {n for n in lns if id(tb[n]) not in late}
    assert all(isinstance(tb[n], nn.LayerNorm) and tb[n].weight.requires_grad for n in lns if id(tb[n]) in late)
    # everything else is the same module type holding the same quantized tensors
    for n, m in ta.items():
        if n in lns or any(n.startswith(ln + ".") for ln in lns):
            continue
        assert type(tb[n]) is type(m), n
        for k, buf in m.named_buffers(recurse=False):
            assert torch.equal(buf, dict(tb[n].named_buffers(recurse=False))[k]), (n, k)
    assert trainable(a) == trainable(b)
    assert b.backbone_storage_bytes() < a.backbone_storage_bytes()
    assert b.quant_stats["layernorms"] == sum(isinstance(m, QuantLayerNorm) for m in tb.values()) > 0
    # a quantized LayerNorm is its dequantized LayerNorm
    ln = next(m for m in tb.values() if isinstance(m, QuantLayerNorm))
    x = torch.randn(2, 3, ln.shape[0])
    with torch.no_grad():
        torch.testing.assert_close(ln(x), ln.to_float()(x))


def test_no_noise_drops_exactly_the_noise_parameters():
    a = dict(built(**LATE).method.named_parameters())
    b = dict(built(noise=False, **LATE).method.named_parameters())
    noise = {n for n in a if n.endswith(("noise_mu", "noise_log_sigma"))}
    assert noise and not any(n.endswith(("noise_mu", "noise_log_sigma")) for n in b)
    assert set(b) == set(a) - noise
    assert all(a[n].shape == b[n].shape and a[n].requires_grad == b[n].requires_grad for n in b)


@pytest.mark.parametrize("base", BASES)
def test_no_moe_trains_what_the_base_trains(base):
    from methods.mpismoe.ismoe import ISMoE

    module = build(base=base, moe=False, noise=False)
    assert not any(isinstance(m, ISMoE) for m in module.modules()) and len(module.method.moes) == 0
    plain = build_module(base)
    assert sum(trainable(module.method).values()) == sum(trainable(plain.method).values())
    if base == "sherl":  # late layer trained, with noise: + mu and log sigma of every trained (noisy) linear
        noisy = build(base=base, moe=False, **LATE).method
        late = build_module(base, train_late_layer=True)
        assert sum(trainable(noisy).values()) == sum(trainable(late.method).values()) + 2 * len(noisy.noisy)


def test_no_prior_has_no_expert_tokens_and_ignores_h0():
    torch.manual_seed(0)
    for prior in (False, True):
        method = built(**({} if prior else {"prior": False})).method
        assert all((m.expert_tokens is not None) is prior for m in method.moes)
        assert any(n.endswith("expert_tokens") for n, _ in method.named_parameters()) is prior
        moe = method.moes[0]
        x = torch.randn(2, 5, moe.router.in_features)
        routes = []
        for h0 in (torch.zeros(2, method.backbone.hidden_size), 100 * torch.randn(2, method.backbone.hidden_size)):
            moe.set_prior_input(h0)
            with torch.no_grad():
                routes.append(moe.routing(x))
        same = all(torch.equal(u, v) for u, v in zip(*routes))
        assert same is not prior


# --- GNP-IQ during training ------------------------------------------------------------------------
def test_requantize_refits_only_the_returned_groups():
    from methods.mpismoe.noisy import NoisyQuantLinear

    torch.manual_seed(0)
    layer = NoisyQuantLinear(nn.Linear(128, 16), bits=4, group_size=32)
    with torch.no_grad():
        layer.weight.add_(0.05 * torch.randn_like(layer.weight))  # as if training had moved the master
    s0, z0 = layer.scales.clone(), layer.zeros.clone()
    chosen = layer.requantize(0.25)
    n = s0.numel()
    assert chosen.numel() == round(0.25 * n) and chosen.unique().numel() == chosen.numel()
    others = torch.ones(n, dtype=torch.bool)
    others[chosen] = False
    assert torch.equal(layer.scales.view(-1)[others], s0.view(-1)[others])
    assert torch.equal(layer.zeros.view(-1)[others], z0.view(-1)[others])
    moved = (layer.scales.view(-1)[chosen] != s0.view(-1)[chosen]) | (layer.zeros.view(-1)[chosen] != z0.view(-1)[chosen])
    assert moved.any()


@pytest.mark.parametrize("every,requantize", [(0, True), (3, True), (0, False), (3, False)])
def test_requantization_schedule(monkeypatch, every, requantize):
    from methods.mpismoe.noisy import NoisyQuantLinear

    calls = []
    monkeypatch.setattr(NoisyQuantLinear, "requantize", lambda self, p: calls.append(p))
    method = build(requant_every_steps=every, requantize=requantize, requant_fraction=0.2, **LATE).method
    per_call = len(method.noisy)
    assert per_call > 0
    for step in range(1, 7):
        method.after_step(step)
    after_steps = len(calls)
    method.after_epoch(0)
    if not requantize:
        assert calls == []
    elif every == 0:  # once per epoch (the paper's M = 1 epoch)
        assert after_steps == 0 and len(calls) == per_call
    else:  # every M steps: steps 3 and 6
        assert after_steps == 2 * per_call and len(calls) == after_steps
    assert all(p == 0.2 for p in calls)


def test_checkpoint_keeps_the_refitted_scales():
    module = build(**LATE)
    method = module.method
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in method.noisy_layers():
            layer.weight.add_(0.1 * torch.randn_like(layer.weight))
    method.requantize()
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    kept = set(ckpt["state_dict"])
    for name in method.noisy:
        for buf in ("scales", "zeros"):
            assert f"method.backbone.model.{name}.{buf}" in kept
    assert not any(k.endswith(".packed") for k in kept)  # frozen codes are not checkpointed
    fresh = build(**LATE)
    key = f"method.backbone.model.{method.noisy[0]}.scales"
    assert not torch.equal(fresh.state_dict()[key], ckpt["state_dict"][key])
    fresh.load_state_dict(ckpt["state_dict"], strict=False)
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_logical_parameter_count_equals_the_fp32_model():
    from methods.base import logical_parameter_count

    fp = built(quantize_backbone=False).method
    for noise in (False, True):
        q = built(quantize_layernorm=True, noise=noise, **LATE).method
        extra = 2 * len(q.noisy) if noise else 0  # noise mu, log sigma: real parameters of their own
        assert logical_parameter_count(q) == logical_parameter_count(fp) + extra
        assert logical_parameter_count(q.backbone) == logical_parameter_count(fp.backbone) + extra
    assert logical_parameter_count(fp.backbone) == sum(p.numel() for p in fp.backbone.parameters())


# --- named experiments ------------------------------------------------------------------------------
def test_named_experiments_are_valid_configs_and_memory_rows():
    from benchmark.config import build as build_config
    from benchmark.memory.table import memory_rows
    from methods.mpismoe.experiments import EXPERIMENTS
    from methods.mpismoe.method import MPISMoE, MPISMoEConfig

    for name in ("table3-base", "table3-moe-no-prior", "table3-moe-prior", "table4-unified-low-precision",
                 "table4-mixed-precision", "table4-mixed-noise", "ext-sherl-table3-base", "ext-sherl-table3-moe-prior",
                 "ext-sherl-table4-full-precision", "ext-sherl-table4-mixed-noise", "mpismoe-prior-logit"):
        assert name in EXPERIMENTS and EXPERIMENTS[name].about
    assert MPISMoE.variants == {n: e.overrides for n, e in EXPERIMENTS.items()}
    rows = {label: (method, extra) for label, method, extra in memory_rows()}
    cfgs = {}
    for name, e in EXPERIMENTS.items():
        assert rows[MPISMoE.row_label("mpismoe", name)] == ("mpismoe", e.overrides)
        cfgs[name] = build_config(MPISMoEConfig, e.overrides, "mpismoe")
    assert {"mpismoe-bf16"} & set(EXPERIMENTS) == set()  # precision is the run's, never a variant


def resolved(overrides: dict) -> dict:
    """A row's full configuration: its own keys plus every key of the base method it builds."""
    from benchmark.config import as_dict, build as build_config
    from methods.mpismoe.method import MPISMoEConfig

    cfg = build_config(MPISMoEConfig, overrides, "mpismoe")
    flat = {k: v for k, v in as_dict(cfg).items() if k != "base_overrides"}
    flat.update({f"base.{k}": v for k, v in as_dict(cfg.base_config()).items()})
    return flat


def test_each_ablation_row_differs_from_the_row_before_by_exactly_its_switch():
    from methods.mpismoe.experiments import EXPERIMENTS, PAPER_ROWS, TABLE_CHAINS

    for chain in TABLE_CHAINS:
        for prev, row in zip(chain, chain[1:]):
            a, b = resolved(EXPERIMENTS[prev].overrides), resolved(EXPERIMENTS[row].overrides)
            changed = {k for k in a if a[k] != b[k]}
            assert changed == set(EXPERIMENTS[row].switch), (prev, row, changed)
    assert set(PAPER_ROWS) == {r for chain in TABLE_CHAINS for r in chain}
    # every row resolves to a configuration of its own: no row's runs can stand in for another's
    configs = [resolved(EXPERIMENTS[r].overrides) for r in PAPER_ROWS] + [resolved({})]
    assert all(a != b for i, a in enumerate(configs) for b in configs[i + 1:])
    assert len(PAPER_ROWS) == len(configs) - 1 <= 14  # the paper's rows and our SHERL extension, once each


def test_the_paper_tables_run_on_unipt_and_table4_without_ismoe():
    """The paper's setting: both tables on a UniPT base, ISMoE ablated on the full-precision
    backbone, GNP-IQ ablated without ISMoE, Table 4's first row Table 3's; the mixed-precision rows train
    fp32 LayerNorms and the noise row perturbs the backbone itself. The SHERL chain is the extension."""
    from methods.mpismoe import CARDS
    from methods.mpismoe.experiments import EXPERIMENTS, TABLE_CHAINS

    t3, t4, ext3, ext4 = TABLE_CHAINS
    rows = {name: resolved(EXPERIMENTS[name].overrides) for chain in TABLE_CHAINS for name in chain}
    assert all(rows[n]["base"] == "unipt" for n in t3 + t4) and all(rows[n]["base"] == "sherl" for n in ext3 + ext4)
    assert t4[0] == t3[0] == "table3-base"
    assert all(not rows[n]["quantize_backbone"] for n in t3)
    assert all(not rows[n]["moe"] and not rows[n]["prior"] for n in t4)
    assert [rows[n]["train_layernorm"] for n in t4] == [False, False, True, True]
    assert rows["table4-mixed-noise"]["noise_on"] == "backbone" and rows["table4-mixed-noise"]["noise"]
    assert all(rows[n]["moe"] and rows[n]["base.train_late_layer"] for n in ext4[1:])
    assert all(n.startswith("ext-sherl-") for n in ext3 + ext4)
    tables = {t.label: t for t in CARDS[0].tables}
    assert [n for n, _ in tables["Table 3"].rows] == list(t3) and [n for n, _ in tables["Table 4"].rows] == list(t4)
    assert tables["Table 4"].rows[0][1].startswith("Table 4 row 1: full precision")
    for t in tables.values():  # each table's own rows carry its prefix (the publisher's ablation labels)
        assert all(n.startswith(t.prefix) for n, _ in t.rows[1 if t.label == "Table 4" else 0:])


def test_table3_base_is_unipt_and_the_extension_base_is_sherl_as_published():
    from benchmark.config import as_dict
    from methods.mpismoe.experiments import EXPERIMENTS
    from methods.sherl.method import SherlConfig
    from methods.unipt.method import UniPTConfig

    for name, base_name, cfg in (("table3-base", "unipt", UniPTConfig()), ("ext-sherl-table3-base", "sherl", SherlConfig())):
        base = resolved(EXPERIMENTS[name].overrides)
        assert {k[5:]: v for k, v in base.items() if k.startswith("base.")} == as_dict(cfg)
        assert not base["moe"] and not base["quantize_backbone"] and base["base"] == base_name
    assert not SherlConfig().train_late_layer  # the public code trains only the side modules


def test_base_settings_from_the_command_line():
    from benchmark.errors import UserError as ConfigError  # either ConfigError (run or method config)
    from benchmark.run import plan

    p = plan({"method": "mpismoe", "backbone": "tiny-bert", "base.reduction": "16", "base.train_late_layer": "true"})
    assert p.method_cfg.base_overrides == {"reduction": "16", "train_late_layer": "true"}
    assert p.method_cfg.base_config().reduction == 16 and p.method_cfg.base_config().train_late_layer
    with pytest.raises(ConfigError, match="unknown config key 'base.nope'.*base.reduction"):
        plan({"method": "mpismoe", "backbone": "tiny-bert", "base.nope": "1"})
    with pytest.raises(ConfigError, match="reduction"):
        plan({"method": "mpismoe", "backbone": "tiny-bert", "base.reduction": "x"})
    with pytest.raises(ConfigError, match="unknown config key 'base.reduction'"):
        plan({"method": "lora", "backbone": "tiny-bert", "base.reduction": "16"})
    module = build(**{"base_overrides": {"reduction": "16"}})
    assert module.method.base.d_side == module.method.backbone.hidden_size // 16


def test_noise_mean_is_applied_in_eval_too_in_quantization_steps():
    from methods.mpismoe.noisy import NoisyQuantLinear

    torch.manual_seed(0)
    layer = NoisyQuantLinear(nn.Linear(64, 8), bits=8, group_size=32)
    step = layer.step_size()
    assert torch.equal(step[:, :32], layer.scales[:, :1].float().expand(-1, 32))  # each weight's group step
    with torch.no_grad():
        layer.noise_mu.fill_(0.7)
    layer.eval()
    torch.testing.assert_close(layer.perturbed(), layer.weight + 0.7 * step)  # eval sees the noise's mean
    layer.train()
    with torch.no_grad():
        mean = torch.stack([layer.perturbed() for _ in range(4000)]).mean(0)
    assert ((mean - layer.weight) / step - 0.7).abs().max() < 0.1  # training's noise has that mean
    assert layer.noise_stats() == pytest.approx({"mu": 0.7, "sigma": 0.5})


def test_training_stats_log_router_entropy_load_and_the_noise():
    module = build(**LATE)
    one_step(module, tiny_batch(module.method.backbone))
    stats = module.method.training_stats()
    assert any(k.endswith("/router_entropy") for k in stats) and "moe0/expert0" in stats
    noise = {k for k in stats if k.startswith("gnpiq/")}
    assert noise == {f"gnpiq/{n}/{s}" for n in module.method.noisy for s in ("mu", "sigma")}


# --- seq2seq ---------------------------------------------------------------------------------------
def test_t5s_tied_lm_head_is_quantized_stored_and_counted_once():
    """T5 ties its LM head to ``shared``: one quantized table in both places, counted and stored once, and
    the head still computes the (dequantized) table's logits."""
    from methods.base import logical_parameter_count
    from methods.mpismoe.qlinear import TiedQuantLinear

    cfg = {"base_overrides": {"reduction": "4"}}
    q = build_module("mpismoe", "tiny-t5", head="seq2seq", **cfg).method
    fp = build_module("mpismoe", "tiny-t5", head="seq2seq", quantize_backbone=False, **cfg).method
    model = q.backbone.model
    assert fp.backbone.model.lm_head.weight is fp.backbone.model.shared.weight  # tied in the fp32 model
    assert isinstance(model.lm_head, TiedQuantLinear) and model.lm_head.table is model.shared
    assert q.quant_stats["tied"] == 1
    assert logical_parameter_count(q) == logical_parameter_count(fp)
    assert storage_from_tensors(q.backbone) == q.backbone_storage_bytes()
    assert q.backbone_storage_bytes() < fp.backbone_storage_bytes() / 3  # 8 bits, the table stored once
    x = torch.randn(2, 3, model.config.d_model, requires_grad=True)
    y = model.lm_head(x)
    torch.testing.assert_close(y, x @ model.shared.dequantize().t())
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(y) @ model.shared.dequantize())


def test_lst_base_runs_and_prepares_on_seq2seq():
    """MP-ISMoE on LST on the seq2seq kind: the Fisher init reads every layer of both stacks, the
    decoder's too, dequantized for the time of the init and quantized again after it."""
    from methods.mpismoe.qlinear import QuantLinear

    module = build_module("mpismoe", "tiny-t5", head="seq2seq", base="lst",
                          base_overrides={"reduction": "2", "fisher_samples": "8"})
    m = module.method
    m.prepare([tiny_batch(m.backbone, n=4, length=10, seed=s) for s in range(2)], toy_task())
    assert m.base.prune_plan is not None and m.base.decoder_prune_plan is not None
    for layer in list(m.backbone.layers) + list(m.backbone.decoder_layers):
        assert not any(type(x) is nn.Linear for x in layer.modules())
        assert any(isinstance(x, QuantLinear) for x in layer.modules())
    changed, _ = one_step(module, tiny_batch(m.backbone, n=2, length=10))
    assert changed and all(is_side(n) for n in changed)
