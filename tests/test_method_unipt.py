"""UniPT: only its side modules train, the backbone runs without autograd, confidence is a per-layer
softmax, and the token interaction does what the reference code does."""
import pytest
import torch

from helpers import build_module, one_step, tiny_batch

# Imported inside the tests, not at module level: registering "unipt" while pytest collects would
# add it to tests/test_methods.py's table before that table knows what UniPT trains.
BACKBONES = ["tiny-bert", "tiny-t5"]


def build(backbone="tiny-bert", **cfg):
    return build_module("unipt", backbone, **cfg)


def grad_mode_per_layer(method, batch):
    """Whether autograd was on in each backbone layer call during one forward."""
    seen = []
    hooks = [layer.register_forward_hook(lambda m, i, o: seen.append(torch.is_grad_enabled()))
             for layer in method.backbone.layers]
    try:
        method({k: v for k, v in batch.items() if k != "labels"})
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("backbone", BACKBONES)
def test_only_unipt_parameters_change(backbone):
    module = build(backbone)
    batch = tiny_batch(module.method.backbone)
    names = {n for n, _ in module.named_parameters()}
    expected = {n for n in names if n.startswith("head.")
                or (n.startswith("method.") and not n.startswith("method.backbone."))}
    assert {n for n, p in module.named_parameters() if p.requires_grad} == expected
    changed, with_grad = one_step(module, batch)
    assert changed == expected, f"unchanged: {sorted(expected - changed)[:5]}, unexpected: {sorted(changed - expected)[:5]}"
    assert not any(n.startswith("method.backbone.") for n in with_grad)
    module.train()
    assert grad_mode_per_layer(module.method, batch) == [False] * module.method.backbone.num_layers


@pytest.mark.parametrize("backbone", BACKBONES)
def test_confidence_is_a_softmax_over_the_tapped_layers(backbone):
    module = build(backbone)
    method = module.method
    batch = tiny_batch(method.backbone, n=3)
    feats = method({k: v for k, v in batch.items() if k != "labels"})
    assert feats.shape == (3, method.backbone.hidden_size)
    conf = method.last_confidence
    n = method.backbone.num_layers
    assert method.taps == list(range(n))  # embeddings + every layer but the last (the anchor)
    assert conf.shape == (3, n)
    assert torch.all(conf > 0)
    assert torch.allclose(conf.sum(1), torch.ones(3), atol=1e-6)


def test_token_interaction_matches_hand_computation():
    from methods.unipt.method import token_interaction

    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    c = torch.tensor([[[2.0, 0.0], [1.0, 3.0], [5.0, 5.0]]])
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding: never attended to
    out = token_interaction(q, c, mask, eps=0.0)
    # raw scores q c^T: row0 (2, 1, 5), row1 (0, 3, 5), row2 (2, 4, 10); padded key dropped, L1-normalised
    w = torch.tensor([[2 / 3, 1 / 3, 0.0], [0.0, 1.0, 0.0], [2 / 6, 4 / 6, 0.0]])
    expected = w @ c[0] + c[0]  # plus identity: each token keeps its own tapped feature
    assert torch.allclose(out[0], expected, atol=1e-6)


def test_tap_layers_and_ffn_slot():
    from methods.base import ConfigError

    module = build("tiny-bert", tap_layers="0,2")  # 2 = the last layer: the anchor may also be tapped
    method = module.method
    assert method.taps == [0, 2] and len(method.down) == 2
    with pytest.raises(ConfigError, match="tap_layers"):
        build("tiny-bert", tap_layers="3")
    with pytest.raises(ConfigError, match="reduction"):
        method.config_class(reduction=0)
    (parent, attr), = method.side_ffn_slots()
    ffn = getattr(parent, attr)
    x = torch.randn(2, 5, method.d_side)
    assert ffn(x).shape == x.shape
    setattr(parent, attr, torch.nn.Identity())  # MP-ISMoE swaps the FFN this way
    batch = tiny_batch(method.backbone, n=2)
    assert method({k: v for k, v in batch.items() if k != "labels"}).shape == (2, method.backbone.hidden_size)
