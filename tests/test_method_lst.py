"""LST: only the side network, ladders and gates train; the backbone runs without autograd; the
parameter count matches the paper's structure worked out by hand; gates start at 0.5; layer dropping
removes side layers; the Fisher init copies Fisher-ranked slices of the backbone into the side layers."""
import pytest
import torch

from helpers import backbone_outputs, build_module, inputs, one_step, tiny_batch, toy_task

# Imported inside the tests: registering "lst" while pytest collects would add it to
# tests/test_methods.py's table before that table knows what LST trains.
BACKBONES = ["tiny-bert", "tiny-t5", "tiny-mpnet"]


def build(backbone="tiny-bert", **cfg):
    return build_module("lst", backbone, **cfg)




def fake_loader(backbone, batches=3, n=8):
    return [tiny_batch(backbone, n=n, seed=s) for s in range(batches)]


def side_names(module):
    names = {n for n, _ in module.named_parameters()}
    return {n for n in names if n.startswith("head.") or (n.startswith("method.") and not n.startswith("method.backbone."))}




@pytest.mark.parametrize("backbone", BACKBONES)
def test_only_lst_parameters_change(backbone):
    module = build(backbone, reduction=4)
    batch = tiny_batch(module.method.backbone)
    expected = side_names(module)
    assert {n for n, p in module.named_parameters() if p.requires_grad} == expected
    changed, with_grad = one_step(module, batch)
    assert changed == expected, f"unchanged: {sorted(expected - changed)[:5]}, unexpected: {sorted(changed - expected)[:5]}"
    assert not any(n.startswith("method.backbone.") for n in with_grad)
    assert all(p.grad is None for p in module.method.backbone.parameters())
    module.train()
    assert backbone_outputs(module.method, batch) == [(False, False)] * module.method.backbone.num_layers


def test_trainable_count_on_tiny_bert_by_hand():
    module = build("tiny-bert", reduction=4)
    d, d_ff, layers, r = 32, 64, 2, 4  # tiny-bert: hidden 32, FFN 64, 2 layers
    ds, fs = d // r, d_ff // r  # side widths 8 and 16
    side_layer = (4 * (ds * ds + ds)  # query, key, value, attention output: Linear(8 -> 8) with bias
                  + 2 * ds  # attention LayerNorm (weight, bias)
                  + (ds * fs + fs)  # FFN in: Linear(8 -> 16)
                  + (fs * ds + ds)  # FFN out: Linear(16 -> 8)
                  + 2 * ds)  # output LayerNorm
    assert side_layer == 600
    ladders = layers * (d * ds + ds)  # Down_i: Linear(32 -> 8) with bias, one per side layer
    embed_down = d * ds + ds  # the input-embedding down-projection
    gates = layers  # one alpha_i per side layer
    final_norm = 2 * ds
    up = ds * d + d  # Linear(8 -> 32)
    by_hand = layers * side_layer + ladders + embed_down + gates + final_norm + up
    assert by_hand == 1200 + 528 + 264 + 2 + 16 + 288 == 2298
    assert sum(p.numel() for p in module.method.parameters() if p.requires_grad) == by_hand


def test_gates_start_at_one_half():
    method = build("tiny-bert").method
    assert torch.equal(method.gates(), torch.full((2,), 0.5))
    assert torch.equal(method.gate_alpha.detach(), torch.zeros(2))
    assert method.config.gate_temperature == 0.1 and method.config.lr == 3e-3 and method.config.reduction == 8


def test_layer_dropping_removes_side_layers_and_their_ladders():
    full, dropped = build("tiny-bert", reduction=4).method, build("tiny-bert", reduction=4, drop_layers="0").method
    assert full.source_layers == [0, 1] and dropped.source_layers == [1]
    assert len(dropped.side_layers) == len(dropped.ladders) == dropped.gate_alpha.numel() == 1
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(full) - count(dropped) == 600 + 264 + 1  # one side layer, one ladder, one gate
    out = dropped(inputs(tiny_batch(dropped.backbone)))
    assert out.shape == (4, 32)


@pytest.mark.parametrize("bad", ["2", "-1", "0,1", "x"])
def test_bad_drop_layers_are_refused(bad):
    from methods.base import ConfigError

    with pytest.raises(ConfigError, match="drop_layers"):
        build("tiny-bert", drop_layers=bad)


def test_bad_config_is_refused():
    from methods.base import ConfigError, METHODS

    cls = METHODS.get("lst").config_class
    for bad in ({"init": "magic"}, {"reduction": 0}, {"fisher_samples": 0}, {"gate_temperature": 0.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            cls(**bad)


def test_fisher_init_copies_ranked_backbone_slices():
    from methods.lst.pruning import pruned

    method = build("tiny-bert", reduction=4).method
    bb = method.backbone
    before = {n: p.detach().clone() for n, p in method.side_layers.named_parameters()}
    method.prepare(fake_loader(bb), toy_task())
    plan = method.prune_plan
    assert plan.samples == 24 and plan.left_as_initialised == []
    assert not any(p.requires_grad or p.grad is not None for p in bb.parameters())  # frozen again, grads freed
    hidden = plan.hidden
    assert hidden.numel() == 8 and torch.equal(hidden, hidden.sort().values)
    for j, k in enumerate(method.source_layers):
        side, src = method.side_layers[j], bb.layers[k]
        attn_idx, ffn_idx = plan.inner[k]
        assert ffn_idx.numel() == 16 and attn_idx.numel() == 8
        # one matrix spelled out: FFN in keeps the chosen FFN rows and hidden columns
        assert torch.equal(side.intermediate.dense.weight, src.intermediate.dense.weight[ffn_idx][:, hidden])
        assert torch.equal(side.output.dense.weight, src.output.dense.weight[hidden][:, ffn_idx])
        assert torch.equal(side.attention.self.key.weight, src.attention.self.key.weight[attn_idx][:, hidden])
        assert torch.equal(side.output.LayerNorm.weight, src.output.LayerNorm.weight[hidden])
        # and every side parameter is its backbone slice
        src_params = dict(src.named_parameters())
        for name, p in side.named_parameters():
            assert torch.equal(p, pruned(src_params[name], plan.axes.roles[name], plan, k)), name
    assert any(not torch.equal(before[n], p) for n, p in method.side_layers.named_parameters())
    # the Fisher-initialised side network trains like any other
    module = build("tiny-bert", reduction=4)
    module.method.prepare(fake_loader(module.method.backbone), toy_task())
    changed, _ = one_step(module, tiny_batch(module.method.backbone))
    assert changed == side_names(module)


def test_random_init_keeps_fresh_weights_and_prepare_is_a_no_op():
    from methods.lst.pruning import pruned

    fisher = build("tiny-bert", reduction=4).method
    fisher.prepare(fake_loader(fisher.backbone), toy_task())
    method = build("tiny-bert", reduction=4, init="random").method
    before = {n: p.detach().clone() for n, p in method.state_dict().items()}
    method.prepare(fake_loader(method.backbone), toy_task())
    assert method.prune_plan is None
    assert all(torch.equal(before[n], p) for n, p in method.state_dict().items())
    src = dict(method.backbone.layers[0].named_parameters())
    w = method.side_layers[0].intermediate.dense.weight
    role = fisher.prune_plan.axes.roles["intermediate.dense.weight"]
    assert not torch.equal(w, pruned(src["intermediate.dense.weight"], role, fisher.prune_plan, 0))


def test_fisher_init_on_t5_keeps_heads_and_the_position_bias():
    method = build("tiny-t5", reduction=4, drop_layers="0").method
    bb = method.backbone
    method.prepare(fake_loader(bb), toy_task())
    plan = method.prune_plan
    assert method.source_layers == [1] and plan.left_as_initialised == []
    side, src = method.side_layers[0], bb.layers[1]
    attn_idx, ffn_idx = plan.inner[1]
    # T5 keeps 4 heads and divides d_kv = 8 by r: two dimensions from within each backbone head, in order
    assert attn_idx.numel() == 8 and torch.equal(attn_idx // 8, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    q = side.layer[0].SelfAttention.q.weight
    assert torch.equal(q, src.layer[0].SelfAttention.q.weight[attn_idx][:, plan.hidden])
    wi = side.layer[1].DenseReluDense.wi.weight
    assert torch.equal(wi, src.layer[1].DenseReluDense.wi.weight[ffn_idx][:, plan.hidden])
    # the first side layer owns the stack's relative position bias: copied from backbone layer 0
    assert torch.equal(side.layer[0].SelfAttention.relative_attention_bias.weight,
                       bb.layers[0].layer[0].SelfAttention.relative_attention_bias.weight)


def test_fisher_samples_caps_the_pass():
    method = build("tiny-bert", reduction=4, fisher_samples=10).method
    method.prepare(fake_loader(method.backbone, batches=3, n=8), toy_task())
    assert method.prune_plan.samples == 10


def test_ranking_keeps_the_channels_with_the_most_fisher():
    from methods.lst.pruning import layer_axes, plan_pruning

    method = build("tiny-bert", reduction=4).method
    bb = method.backbone
    axes = layer_axes(bb, bb.layers[0])
    assert [(w.writers, w.readers) for w in axes.inner] == [
        (["attention.self.query", "attention.self.key", "attention.self.value"], ["attention.output.dense"]),
        (["intermediate.dense"], ["output.dense"])]
    fisher = {(k, n): torch.zeros_like(p) for k in (0, 1) for n, p in bb.layers[k].named_parameters()}
    # the side layer keeps tiny-bert's 4 heads with head size 8 / 4 = 2: two dimensions of every head
    hot_hidden, hot_ffn, hot_attn = [1, 5, 9, 13, 17, 21, 25, 29], list(range(40, 56)), [6, 7, 8, 9, 20, 21, 30, 31]
    fisher[(0, "output.LayerNorm.weight")][hot_hidden] = 1.0
    fisher[(1, "output.dense.weight")][:, hot_ffn] = 1.0  # FFN out columns of layer 1
    fisher[(1, "attention.self.value.weight")][hot_attn] = 1.0  # value rows of layer 1
    plan = plan_pruning(bb, method.side_layers, [0, 1], axes, fisher)
    assert plan.hidden.tolist() == hot_hidden
    assert plan.inner[1][1].tolist() == hot_ffn and plan.inner[1][0].tolist() == hot_attn


def test_head_consistent_attention_choice():
    from methods.lst.pruning import pick_attention

    score = torch.arange(12.0)  # 3 heads of 4
    assert pick_attention(score, heads=3, side_heads=2, side_width=8).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]  # whole heads
    assert pick_attention(score, heads=3, side_heads=3, side_width=6).tolist() == [2, 3, 6, 7, 10, 11]  # within heads
    assert pick_attention(score, heads=3, side_heads=1, side_width=3).tolist() == [9, 10, 11]  # one narrow head


# --- the last layer's ladders read its raw output (LST's code reads the block's output) ---------------------
@pytest.mark.parametrize("head", ["classifier", "seq2seq"])
def test_last_ladders_read_the_raw_last_block_output(head):
    """On T5 the stack's final LayerNorm follows the last block: the last ladder of each stack reads the block's
    output before it, as LST's code does."""
    module = build_module("lst", "tiny-t5", head=head, init="random", reduction=4).eval()
    method, bb = module.method, module.method.backbone
    pairs = [(bb.layers[-1], method.ladders[-1])]
    if head == "seq2seq":
        pairs.append((bb.decoder_layers[-1], method.dec_ladders[-1]))
    raw, read, hooks = [], [], []
    for k, (layer, ladder) in enumerate(pairs):
        hooks.append(layer.register_forward_hook(lambda m, i, o, k=k: raw.append((k, o[0] if isinstance(o, tuple) else o))))
        hooks.append(ladder.register_forward_pre_hook(lambda m, args, k=k: read.append((k, args[0]))))
    batch = module.inputs(tiny_batch(bb, n=2, length=10))
    if head == "seq2seq":
        batch["decoder_input_ids"] = torch.tensor([[0, 5, 6, 7], [0, 8, 9, 1]])
    try:
        with torch.no_grad():
            method(batch)
    finally:
        for h in hooks:
            h.remove()
    assert method.source_layers[-1] == bb.num_layers - 1 and len(raw) == len(read) == len(pairs)
    for (k, r), (k2, x) in zip(sorted(raw, key=lambda t: t[0]), sorted(read, key=lambda t: t[0])):
        torch.testing.assert_close(x, r)
        assert not torch.allclose(bb.finish(r), r, atol=1e-3)  # the finished state would differ


def test_final_norms_train_on_seq2seq():
    module = build_module("lst", "tiny-t5", head="seq2seq", init="random", reduction=4)
    m = module.method
    norms = {f"method.{n}.{p}" for n in ("final_norm", "dec_final_norm") for p, _ in getattr(m, n).named_parameters()}
    changed, _ = one_step(module, tiny_batch(m.backbone, n=4, length=12))
    assert norms and norms <= changed


def test_paper_layers_drop_0_4_8_where_the_backbone_has_them():
    from methods.lst.method import LST

    assert LST.variants["paper-layers"] == {"drop_layers": "paper"}
    assert build("tiny-bert", drop_layers="paper").method.source_layers == [1]  # 2 layers: 0 dropped
    m = build_module("lst", "tiny-t5", head="seq2seq", init="random", drop_layers="paper").method
    assert m.source_layers == m.decoder_source_layers == [1]


def test_paper_layers_memory_rows_say_whose_they_are():
    """LST and SHERL both have a ``paper-layers`` variant: one memory row each, labelled by method."""
    from collections import Counter

    from benchmark.memory.table import memory_rows

    labels = Counter(label for label, _, _ in memory_rows())
    assert labels["lst@paper-layers"] == labels["sherl@paper-layers"] == 1 and "paper-layers" not in labels
    assert all(n == 1 for n in labels.values())
