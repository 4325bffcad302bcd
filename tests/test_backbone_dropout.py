"""``backbone_dropout``: the backbone's dropout follows train/eval for every method (the reference code trains
the whole model in train mode), frozen backbones included; off, the backbone is a fixed feature extractor."""
import pytest
import torch

import methods  # noqa: F401
from methods.base import METHODS
from helpers import backbone_outputs, build_module, inputs, tiny_batch

# every method whose backbone has dropout modules on the tiny BERT (QLoRA needs bitsandbytes' CPU path: as LoRA)
NAMES = [m for m in METHODS.names() if m != "qlora"]
FROZEN = ("side_tuning", "lst", "unipt", "sherl", "mpismoe")  # their backbones run without autograd


def _dropouts(module) -> list[torch.nn.Dropout]:
    drops = [m for m in module.method.backbone.model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    assert drops, "the tiny backbone must have dropout for this test to mean anything"
    return drops


@pytest.mark.parametrize("method", NAMES)
def test_the_backbone_dropout_follows_the_training_mode(method):
    module = build_module(method)
    module.train()
    assert all(d.training for d in _dropouts(module))
    module.eval()
    assert not any(d.training for d in _dropouts(module))


@pytest.mark.parametrize("method", ["bitfit", "sherl", "lst"])
def test_off_keeps_the_backbone_in_eval_and_is_a_variant(method):
    module = build_module(method, backbone_dropout=False)
    module.train()
    assert not any(d.training for d in _dropouts(module))
    assert METHODS.get(method).all_variants()["no-backbone-dropout"] == {"backbone_dropout": "false"}


@pytest.mark.parametrize("method", FROZEN)
def test_a_frozen_backbone_in_train_mode_still_runs_without_autograd_and_is_stochastic(method):
    module = build_module(method)
    module.train()
    batch = tiny_batch(module.method.backbone)
    layers = [call for call in backbone_outputs(module.method, batch)]
    # the side methods' frozen layers (SHERL's late layer aside: it runs with autograd by design)
    frozen = layers[:-1] if method in ("sherl", "mpismoe") else layers
    assert frozen and all(not grad and not req for grad, req in frozen)
    torch.manual_seed(1)
    a = module.method(inputs(batch))
    torch.manual_seed(2)
    b = module.method(inputs(batch))
    assert not torch.allclose(a, b), "train-mode forwards with different dropout masks must differ"
    module.eval()
    assert torch.equal(module.method(inputs(batch)), module.method(inputs(batch)))
