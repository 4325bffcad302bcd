"""Side-Tuning: only the side network and the blend train, the backbone runs without autograd, and the
output is alpha * b(x) + (1 - alpha) * s(x) with alpha starting at its configured value."""
import pytest
import torch

from helpers import backbone_outputs, build_module, inputs, one_step, tiny_batch

# Imported inside the tests: registering "side_tuning" while pytest collects would add it to
# tests/test_methods.py's table before that table knows what it trains.
BACKBONES = ["tiny-bert", "tiny-t5"]


def build(backbone="tiny-bert", **cfg):
    return build_module("side_tuning", backbone, **cfg)






@pytest.mark.parametrize("backbone", BACKBONES)
def test_only_side_tuning_parameters_change(backbone):
    module = build(backbone)
    batch = tiny_batch(module.method.backbone)
    names = {n for n, _ in module.named_parameters()}
    expected = {n for n in names if n.startswith("head.")
                or (n.startswith("method.") and not n.startswith("method.backbone."))}
    assert {n for n, p in module.named_parameters() if p.requires_grad} == expected
    assert "method.alpha_logit" in expected and any(".side_layers.1." in n for n in expected)
    changed, with_grad = one_step(module, batch)
    assert changed == expected, f"unchanged: {sorted(expected - changed)[:5]}, unexpected: {sorted(changed - expected)[:5]}"
    assert not any(n.startswith("method.backbone.") for n in with_grad)
    assert all(p.grad is None for p in module.method.backbone.parameters())
    module.train()
    assert backbone_outputs(module.method, batch) == [(False, False)] * module.method.backbone.num_layers


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_alpha_starts_at_the_configured_value(alpha):
    method = build(alpha_init=alpha).method
    assert method.alpha.item() == pytest.approx(alpha, abs=1e-6)


def test_output_is_the_alpha_blend_of_backbone_and_side():
    method = build("tiny-t5", alpha_init=0.3).method.eval()
    batch = inputs(tiny_batch(method.backbone, n=3))
    with torch.no_grad():
        states, _ = method.backbone.hidden_states(batch)
        b = method.backbone.salient(states[-1], batch["attention_mask"])
        s = method.side(states[0], batch["attention_mask"])  # the side net sees only the input embeddings
        assert torch.allclose(method(batch), 0.3 * b + 0.7 * s, atol=1e-5)
        assert not torch.allclose(b, s)


def test_side_width_and_depth_follow_the_config():
    method = build("tiny-bert", reduction=4, side_layers=3).method
    assert len(method.side_layers) == 3 and method.d_side == 32 // 4
    assert method.down.out_features == 8 and method.up.out_features == 32


def test_bad_config_is_refused():
    from methods.base import ConfigError, METHODS

    cls = METHODS.get("side_tuning").config_class
    for bad in ({"alpha_init": 1.0}, {"reduction": 0}, {"side_layers": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            cls(**bad)
