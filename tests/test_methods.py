"""The key test per method: exactly the method's parameters change after a training step."""
import pytest
import torch

import methods  # noqa: F401
from methods.base import METHODS
from helpers import build_module, one_step, tiny_batch

HEAD = "head."

SIDE = lambda n, m: n.startswith("method.") and not n.startswith("method.backbone.")  # noqa: E731


# What each method's paper trains (besides the task head), as a predicate on (parameter name, module).
# Every registered method must have an entry.
TRAINS = {
    "full": lambda n, m: n.startswith("method.backbone.model."),
    "lora": lambda n, m: "lora_" in n,
    "qlora": lambda n, m: "lora_" in n,  # LoRA over the NF4 backbone: the 4-bit weights never train
    "bitfit": lambda n, m: n.startswith("method.backbone.model.") and (n.endswith(".bias") or "layer_norm" in n),
    "side_tuning": SIDE,
    "lst": SIDE,
    "unipt": SIDE,
    "sherl": SIDE,  # as published: gradient passes through the frozen last layer, only side modules train
    "mpismoe": SIDE,  # on SHERL as published: no backbone weight trains, so no GNP-IQ noise either
}
# Trainable parameters a two-step toy batch may leave unchanged: an expert no token was routed to.
MAY_STAY = {"mpismoe": lambda n: ".experts." in n}


@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-t5", "tiny-mpnet"])
@pytest.mark.parametrize("method", METHODS.names())
def test_only_the_methods_parameters_change(method, backbone):
    assert method in TRAINS, f"add what {method!r} trains to TRAINS"
    module = build_module(method, backbone)
    batch = tiny_batch(module.method.backbone)
    names = [n for n, _ in module.named_parameters()]
    expected = {n for n in names if n.startswith(HEAD) or TRAINS[method](n, module)}
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == expected
    changed, _ = one_step(module, batch)
    may_stay = {n for n in expected if MAY_STAY.get(method, lambda n: False)(n)}
    assert changed <= expected and expected - may_stay <= changed, f"unchanged: {sorted(expected - changed)[:5]}, unexpected: {sorted(changed - expected)[:5]}"


def test_lora_count_equals_peft():
    from peft import LoraConfig, get_peft_model

    from benchmark.backbones import load_backbone

    module = build_module("lora", "minilm", r=8, alpha=8)
    ours = sum(p.numel() for p in module.method.parameters() if p.requires_grad)
    ref = get_peft_model(load_backbone("minilm").model, LoraConfig(r=8, lora_alpha=8, target_modules=["query", "value"]))
    assert ours == ref.get_nb_trainable_parameters()[0] == 73_728


def test_lora_targets_follow_the_backbone_family():
    t5 = build_module("lora", "tiny-t5", r=2)
    names = [n for n, p in t5.named_parameters() if p.requires_grad and "lora_" in n]
    assert names and all((".q." in n or ".v." in n) for n in names)


def test_bad_method_config_is_refused():
    from methods.base import ConfigError

    with pytest.raises(ConfigError, match="lr"):
        METHODS.get("lora").config_class(lr=-1.0)
    with pytest.raises(ConfigError, match="r="):
        METHODS.get("lora").config_class(r=0)


def test_checkpoint_keeps_only_trainable_state():
    module = build_module("lora", "tiny-bert", r=2)
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(ckpt["state_dict"]) == trainable
    # and it loads back (non-strict) onto a fresh module
    fresh = build_module("lora", "tiny-bert", r=2)
    missing, unexpected = fresh.load_state_dict(ckpt["state_dict"], strict=False)
    assert not unexpected and all(n not in missing for n in trainable)
    with torch.no_grad():
        assert all(torch.equal(fresh.state_dict()[n], ckpt["state_dict"][n]) for n in trainable)
