"""The MPNet family on a tiny random MPNet: the relative position bias computed once per stack (the backbone's
from the encoder's table, a side stack's from its first narrow layer's own), LST's Fisher init copying the
encoder's table, SHERL's late layer seeing the stack's bias, LoRA on q/v, every table quantized by GNP-IQ.
(Our layer-by-layer forward against HF's and every method's trained parameters: test_backbones.py and
test_methods.py, parametrized over tiny-mpnet.)"""
import pytest
import torch
from torch import nn
from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

from benchmark.backbones import load_backbone
from helpers import build_module, inputs, tiny_batch, toy_task


@pytest.fixture
def bias_calls(monkeypatch):
    """Every ``compute_position_bias`` call, by the table (encoder) that made it."""
    calls = []
    original = MPNetEncoder.compute_position_bias

    def counted(self, x, *a, **kw):
        calls.append(self)
        return original(self, x, *a, **kw)

    monkeypatch.setattr(MPNetEncoder, "compute_position_bias", counted)
    return calls


def test_the_backbones_bias_is_computed_once_per_stack_as_hf_computes_it(bias_calls):
    bb = load_backbone("tiny-mpnet")
    batch = inputs(tiny_batch(bb, n=3, length=10))
    with torch.no_grad():
        _, ctx = bb.hidden_states(batch)
    assert bias_calls == [bb.model.encoder]  # two layers, one computation
    (bias,) = [v for k, v in ctx.extra.items() if isinstance(k, tuple)]
    x = torch.zeros(3, 10, bb.hidden_size)
    torch.testing.assert_close(bias.expand(3, -1, -1, -1), MPNetEncoder.compute_position_bias(bb.model.encoder, x))


@pytest.mark.parametrize("method", ["lst", "side_tuning"])
def test_a_side_stack_computes_its_own_bias_once_from_its_first_layer(method, bias_calls):
    module = build_module(method, "tiny-mpnet", reduction=4, **({"init": "random"} if method == "lst" else {}))
    side = module.method.side_layers
    assert isinstance(side[0].relative_position, MPNetEncoder) and not hasattr(side[1], "relative_position")
    table = side[0].relative_position.relative_attention_bias
    assert table.weight.shape == (32, 4) and table.weight.requires_grad  # narrow layers keep the 4 heads
    module.method(inputs(tiny_batch(module.method.backbone)))
    assert bias_calls == [module.method.backbone.model.encoder, side[0].relative_position]


def test_lst_fisher_init_copies_the_encoders_table_into_the_first_side_layer():
    method = build_module("lst", "tiny-mpnet", reduction=4).method
    bb = method.backbone
    method.prepare([tiny_batch(bb, n=8, seed=s) for s in range(2)], toy_task())
    assert method.prune_plan.left_as_initialised == []
    own = method.side_layers[0].relative_position.relative_attention_bias.weight
    assert torch.equal(own, bb.model.encoder.relative_attention_bias.weight) and own.requires_grad
    side, src, plan = method.side_layers[1], bb.layers[1], method.prune_plan
    attn_idx = plan.inner[1][0]  # 4 heads of size 8 -> 4 heads of size 2: two dimensions of every head
    assert torch.equal(attn_idx // 8, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    assert torch.equal(side.attention.attn.q.weight, src.attention.attn.q.weight[attn_idx][:, plan.hidden])


def test_sherls_late_layer_sees_the_stacks_bias():
    """Run alone in the stack's context (SHERL's late route), the last layer computes what it computed inside
    the stack; with a zero bias it would not."""
    bb = load_backbone("tiny-mpnet")
    with torch.no_grad():
        nn.init.normal_(bb.model.encoder.relative_attention_bias.weight, std=1.0)
        states, ctx = bb.hidden_states(inputs(tiny_batch(bb)))
        late = bb.run_layer(bb.layers[-1], states[-2], ctx)
        torch.testing.assert_close(late, states[-1])
        fresh = bb.layer_context(ctx.attention_mask, late.dtype)  # a new context finds the encoder's table
        torch.testing.assert_close(bb.run_layer(bb.layers[-1], states[-2], fresh), states[-1])
        zero = bb.layer_context(ctx.attention_mask, late.dtype)
        zero.extra[("mpnet_position_bias", 4)] = torch.zeros(1, 4, 12, 12)
        assert not torch.allclose(bb.run_layer(bb.layers[-1], states[-2], zero), states[-1], atol=1e-3)


def test_lora_targets_mpnets_query_and_value():
    names = [n for n, p in build_module("lora", "tiny-mpnet", r=2).named_parameters() if p.requires_grad and "lora_" in n]
    assert len(names) == 2 * 2 * 2 and all((".attn.q." in n or ".attn.v." in n) for n in names)


def test_gnpiq_quantizes_every_mpnet_table_and_linear():
    from methods.mpismoe.qlinear import QuantEmbedding

    method = build_module("mpismoe", "tiny-mpnet").method
    model = method.backbone.model
    assert not any(type(m) in (nn.Linear, nn.Embedding) for m in model.modules())
    assert isinstance(model.encoder.relative_attention_bias, QuantEmbedding)
    out = method(inputs(tiny_batch(method.backbone)))
    assert out.shape[0] == 4 and torch.isfinite(out).all()


def test_mpnet_base_architecture_takes_512_tokens():
    from benchmark.backbones import _family
    from benchmark.memory.architecture import backbone_config

    _, config, _ = backbone_config("mpnet-base")
    assert _family(config.model_type, "mpnet-base").max_length(config) == 512
