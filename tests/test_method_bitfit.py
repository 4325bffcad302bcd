"""BitFit: exactly the backbone's bias terms train (LayerNorm scales on bias-free T5, or a clear error)."""
import pytest
import torch

from helpers import build_module, one_step, tiny_batch

# Imported inside the tests: registering "bitfit" while pytest collects would add it to
# tests/test_methods.py's table before that table knows what BitFit trains.


def build(backbone="tiny-bert", **cfg):
    return build_module("bitfit", backbone, **cfg)


def test_only_the_biases_train_on_bert():
    module = build("tiny-bert")
    names = {n for n, _ in module.named_parameters()}
    biases = {n for n in names if n.startswith("method.backbone.model.") and n.endswith(".bias")}
    assert len(biases) == 2 * 8 + 1  # per layer: q, k, v, attn-out, attn-LN, FFN in, FFN out, out-LN; + embedding LN
    expected = biases | {n for n in names if n.startswith("head.")}
    assert {n for n, p in module.named_parameters() if p.requires_grad} == expected
    changed, with_grad = one_step(module, tiny_batch(module.method.backbone))
    assert changed == expected, f"unchanged: {sorted(expected - changed)[:5]}, unexpected: {sorted(changed - expected)[:5]}"
    assert with_grad == expected
    # every other backbone weight received no gradient at all
    assert all(p.grad is None for n, p in module.named_parameters() if n not in expected)


def test_t5_has_no_biases_so_its_layernorm_scales_train_with_a_warning():
    with pytest.warns(UserWarning, match="no bias terms"):
        module = build("tiny-t5")
    names = {n for n, _ in module.named_parameters()}
    assert not any(n.endswith(".bias") for n in names if n.startswith("method."))
    norms = {n for n in names if n.startswith("method.backbone.model.") and "layer_norm" in n}
    assert len(norms) == 2 * 2 + 1  # two per block, the final one
    expected = norms | {n for n in names if n.startswith("head.")}
    assert {n for n, p in module.named_parameters() if p.requires_grad} == expected
    changed, _ = one_step(module, tiny_batch(module.method.backbone))
    assert changed == expected


def test_t5_can_refuse_instead():
    from benchmark.errors import UserError

    with pytest.raises(UserError) as e:
        build("tiny-t5", if_no_biases="error")
    assert "\n" not in str(e.value) and "if_no_biases=layernorm" in str(e.value)


def test_defaults_and_bad_config():
    from methods.base import ConfigError, METHODS

    cfg = METHODS.get("bitfit").config_class()
    assert cfg.lr == 3e-4 and cfg.if_no_biases == "layernorm"
    with pytest.raises(ConfigError, match="if_no_biases"):
        METHODS.get("bitfit").config_class(if_no_biases="nope")
