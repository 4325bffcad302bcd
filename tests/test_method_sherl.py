"""SHERL: as published only the side modules train (gradient passes through the frozen last layer);
``sherl@late-layer`` trains exactly that layer too; the redundancy weighting and the tanh gate do what the
reference code does."""
import math

import pytest
import torch

from helpers import backbone_outputs, build_module, inputs, one_step, tiny_batch

# Imported inside the tests, not at module level: registering "sherl" while pytest collects would
# add it to tests/test_methods.py's table before that table knows what SHERL trains.
BACKBONES = ["tiny-bert", "tiny-t5", "tiny-mpnet"]


def build(backbone="tiny-bert", **cfg):
    return build_module("sherl", backbone, **cfg)




def late_prefix(method) -> str:
    names = method.late_parameters()
    prefix = names[0].rsplit(".", 2)[0]  # e.g. encoder.layer.1 or encoder.block.1
    while not all(n.startswith(prefix + ".") for n in names):
        prefix = prefix.rsplit(".", 1)[0]
    return f"method.backbone.model.{prefix}."


@pytest.mark.parametrize("backbone", BACKBONES)
def test_by_default_only_the_side_modules_train(backbone):
    """The public code unfreezes only modules named "side": the late layer stays frozen."""
    from methods.sherl.method import SHERL

    module = build(backbone)
    names = {n for n, _ in module.named_parameters()}
    side = {n for n in names if n.startswith("head.") or (n.startswith("method.") and not n.startswith("method.backbone."))}
    assert {n for n, p in module.named_parameters() if p.requires_grad} == side
    changed, with_grad = one_step(module, tiny_batch(module.method.backbone))
    assert changed == side
    assert SHERL.variants["late-layer"] == {"train_late_layer": "true"} and SHERL.version >= 2


@pytest.mark.parametrize("backbone", BACKBONES)
def test_late_layer_variant_trains_the_side_modules_and_the_late_layer_nothing_else(backbone):
    module = build(backbone, train_late_layer=True)
    method = module.method
    batch = tiny_batch(method.backbone)
    late = late_prefix(method)
    names = {n for n, _ in module.named_parameters()}
    side = {n for n in names if n.startswith("head.") or (n.startswith("method.") and not n.startswith("method.backbone."))}
    late_names = {n for n in names if n.startswith(late)}
    assert late_names and {f"method.backbone.model.{n}" for n in method.late_parameters()} == late_names
    expected = side | late_names
    assert {n for n, p in module.named_parameters() if p.requires_grad} == expected
    changed, with_grad = one_step(module, batch)
    assert changed == expected, f"unchanged: {sorted(expected - changed)[:5]}, unexpected: {sorted(changed - expected)[:5]}"
    backbone_grads = {n for n in with_grad if n.startswith("method.backbone.")}
    assert backbone_grads == late_names  # the late layer does get gradient, no other backbone weight


@pytest.mark.parametrize("backbone", BACKBONES)
def test_only_the_late_layer_runs_with_autograd(backbone):
    method = build(backbone).method
    assert method.late_layer is method.backbone.layers[-1]
    calls = []  # (layer index, grad enabled)
    hooks = [layer.register_forward_hook(lambda m, i, o, k=k: calls.append((k, torch.is_grad_enabled())))
             for k, layer in enumerate(method.backbone.layers)]
    method.train()
    method(inputs(tiny_batch(method.backbone)))
    for h in hooks:
        h.remove()
    n = method.backbone.num_layers
    assert [c for c in calls if c[1]] == [(n - 1, True)]  # once, with autograd: the late route
    assert sorted(k for k, g in calls if not g) == list(range(n))  # the frozen pass, without


def test_frozen_late_layer_option_still_backpropagates_through_it():
    module = build("tiny-t5", train_late_layer=False)
    assert not any(p.requires_grad for p in module.method.late_layer.parameters())
    changed, _ = one_step(module, tiny_batch(module.method.backbone))
    assert not any(n.startswith("method.backbone.") for n in changed)
    assert any(n.startswith("method.adapters.") for n in changed)  # gradient reached them through the layer


def test_redundancy_and_guidance_weights_by_hand():
    from methods.sherl.method import Guidance

    g = Guidance(d_side=2, eps=0.0)
    s1, s2, s3 = [1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]  # 3 shallow layers for one token
    shallow = torch.tensor([[s1, s2, s3]])
    # cos(s1,s2) = 1/sqrt2, cos(s1,s3) = -1 -> 0 after ReLU, cos(s2,s3) = -1/sqrt2 -> 0; cos(s,s) = 1
    r = 1 / math.sqrt(2)
    expected_redundancy = torch.tensor([1 + r, r + 1, 1.0])
    assert torch.allclose(g.redundancy(shallow).flatten(), expected_redundancy, atol=1e-6)
    with torch.no_grad():
        g.fc_attn.weight.copy_(torch.tensor([[1.0, 1.0]]))
        g.fc_attn.bias.zero_()
    guide = torch.tensor([[[1.0, 1.0]]])
    # cross-attention logits w.(s * guide) = (1, 2, -1) -> ReLU (1, 2, 0) -> / redundancy -> L1-normalise
    raw = torch.tensor([1.0, 2.0, 0.0]) / expected_redundancy
    weights = raw / raw.sum()
    assert torch.allclose(weights, torch.tensor([1 / 3, 2 / 3, 0.0]), atol=1e-6)
    assert torch.allclose(g.weights(guide, shallow).flatten(), weights, atol=1e-6)
    agg = g(guide, shallow)
    assert torch.allclose(agg.flatten(), torch.tensor([1 / 3 + 2 / 3 + 1, 2 / 3 + 1]), atol=1e-6)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_tanh_gate_starts_at_zero(backbone):
    """At init the gate is 0: the late layer sees only the side feature (reference order). With the
    gate open and the side output zeroed, the late route reproduces the backbone's own last feature."""
    from methods.side import frozen_hidden_states

    method = build(backbone).method
    method.eval()  # no dropout, so paths compare exactly
    bb = method.backbone
    batch = inputs(tiny_batch(bb))
    assert method.gate_param.item() == 0.0 and method.gate().item() == 0.0
    states, ctx = frozen_hidden_states(bb, batch)
    with torch.no_grad():
        side = method.early_route(states)
        by_hand = bb.salient(bb.finish(bb.run_layer(bb.layers[-1], side, ctx)), batch["attention_mask"])
        assert torch.allclose(method(batch), by_hand, atol=1e-5)
        method.fc_out.weight.zero_()
        method.fc_out.bias.zero_()
        method.gate_param.fill_(10.0)  # tanh(10 / 0.1) = 1
        backbone_feature = bb.salient(states[-1], batch["attention_mask"])
        assert torch.allclose(method(batch), backbone_feature, atol=1e-5)


def test_gate_after_late_layer_option():
    from methods.side import frozen_hidden_states

    method = build("tiny-bert", gate_position="after_late").method
    method.eval()
    bb = method.backbone
    batch = inputs(tiny_batch(bb))
    states, ctx = frozen_hidden_states(bb, batch)
    with torch.no_grad():
        late = bb.finish(bb.run_layer(bb.layers[-1], method.early_route(states), ctx))
        assert torch.allclose(method(batch), bb.salient(late, batch["attention_mask"]), atol=1e-5)
        method.gate_param.fill_(0.05)
        mixed = late + math.tanh(0.5) * states[-1]
        assert torch.allclose(method(batch), bb.salient(mixed, batch["attention_mask"]), atol=1e-5)


def test_ffn_slots_and_config_checks():
    from methods.base import ConfigError

    method = build("tiny-bert").method
    slots = method.side_ffn_slots()
    assert len(slots) == len(method.taps) == method.backbone.num_layers
    x = torch.randn(2, 5, method.d_side)
    for parent, attr in slots:
        assert getattr(parent, attr)(x).shape == x.shape
    with pytest.raises(ConfigError, match="tap_layers"):
        build("tiny-bert", tap_layers="0,2")  # 2 = the late layer's output: not an input to it
    with pytest.raises(ConfigError, match="gate_position"):
        method.config_class(gate_position="middle")


# --- the seq2seq kind, as SHERL's T5 code builds it -----------------------------------------------------------
def seq2seq(**cfg):
    module = build_module("sherl", "tiny-t5", head="seq2seq", reduction=4, **cfg)
    module.eval()  # no dropout: paths compare exactly
    return module


def seq2seq_inputs(module, n=2, length=10):
    targets = torch.tensor([[0, 5, 6, 7], [0, 8, 9, 1]])[:n]  # teacher forcing, as the LM head's loss feeds it
    return {**module.inputs(tiny_batch(module.method.backbone, n=n, length=length)), "decoder_input_ids": targets}


def test_seq2seq_late_decoder_block_gets_the_stacks_position_bias():
    """The late block is not the first of its stack, so it owns no relative position bias: the T5 code passes it
    the bias decoder block 0 computed, not a fresh (all-zero) one."""
    module = seq2seq()
    method, bb = module.method, module.method.backbone
    assert not method.late_layer.layer[0].SelfAttention.has_relative_attention_bias
    seen = []
    hook = method.late_layer.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["position_bias"].detach().clone()) if torch.is_grad_enabled() else None,
        with_kwargs=True)
    batch = seq2seq_inputs(module)
    try:
        method(batch)
    finally:
        hook.remove()
    T = batch["decoder_input_ids"].shape[1]
    expected = bb.decoder_layers[0].layer[0].SelfAttention.compute_bias(T, T)
    assert len(seen) == 1 and expected.abs().max() > 0
    torch.testing.assert_close(seen[0], expected)


def test_seq2seq_both_final_side_norms_train():
    """The T5 code trains every module named "side", its final side LayerNorms too."""
    module = build_module("sherl", "tiny-t5", head="seq2seq", reduction=4)
    method = module.method
    norms = {f"method.{n}.{p}" for n in ("enc_norm", "dec_norm") for p, _ in getattr(method, n).named_parameters()}
    assert norms and all(p.requires_grad for p in list(method.enc_norm.parameters()) + list(method.dec_norm.parameters()))
    changed, _ = one_step(module, tiny_batch(method.backbone, n=4, length=12))
    assert norms <= changed


def test_seq2seq_encoder_guide_is_the_raw_last_block_output():
    """The T5 code's last encoder tap is the last block's output, before the encoder's final LayerNorm."""
    module = seq2seq()
    method, bb = module.method, module.method.backbone
    raw, read = [], []
    hooks = [bb.layers[-1].register_forward_hook(lambda m, i, o: raw.append(o[0] if isinstance(o, tuple) else o)),
             method.adapters[-1].register_forward_pre_hook(lambda m, args: read.append(args[0]))]
    try:
        with torch.no_grad():
            method(seq2seq_inputs(module))
    finally:
        for h in hooks:
            h.remove()
    assert method.taps[-1] == bb.num_layers and len(raw) == 1 and len(read) == 1
    torch.testing.assert_close(read[0], raw[0])
    assert not torch.allclose(bb.finish(raw[0]), raw[0], atol=1e-3)  # the two readings differ on T5


def test_paper_layers_are_the_t5_base_scripts_taps():
    """[1,2,3,5,6,7,9,10,11] are 0-based T5 blocks whose outputs feed an adapter after the embedding output;
    the decoder drops the late block's own. On a shallower stack: the listed blocks it has."""
    from methods.sherl.method import SHERL

    assert SHERL.variants["paper-layers"] == {"tap_layers": "paper", "decoder_tap_layers": "paper"}
    method = build_module("sherl", "tiny-t5", head="seq2seq", reduction=4, tap_layers="paper",
                          decoder_tap_layers="paper").method
    assert method.taps == [0, 2] and method.decoder_taps == [0]  # 2 blocks: block 1's output; none below the late one
    assert build("tiny-bert", tap_layers="Paper").method.taps == [0]  # the classifier kind stops at the late input
    # what the constructor resolves on T5-base's 12-block stacks
    assert method._taps("paper", "tap_layers", 12, [], "") == [0, 2, 3, 4, 6, 7, 8, 10, 11, 12]
    assert method._taps("paper", "decoder_tap_layers", 11, [], "") == [0, 2, 3, 4, 6, 7, 8, 10, 11]
