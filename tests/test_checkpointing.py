"""Activation checkpointing, a switch of every method (``checkpointing=true``, results under
``<method>@checkpointing``): the same loss and gradients as without it, fewer tensors kept for backward
where layers run with autograd."""
import pytest
import torch

import methods  # noqa: F401
from helpers import build_module, tiny_batch
from methods.base import METHODS

CONFIG = {"lora": {"r": 2}, "lst": {"init": "random"}}


def loss_grads_and_saved(method: str, backbone: str, head: str, checkpointing: bool):
    module = build_module(method, backbone, head=head, checkpointing=checkpointing, **CONFIG.get(method, {}))
    module.eval()  # no dropout: both runs compute the same function
    batch = tiny_batch(module.method.backbone, n=3, length=12)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = module.head.loss(module.method, module.inputs(batch), batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss.detach(), grads, sum(saved)


@pytest.mark.parametrize("backbone,head", [("tiny-bert", "classifier"), ("tiny-t5", "seq2seq"), ("tiny-mpnet", "classifier")])
@pytest.mark.parametrize("method", METHODS.names())
def test_checkpointing_changes_no_loss_or_gradient(method, backbone, head):
    plain, grads, kept = loss_grads_and_saved(method, backbone, head, False)
    ckpt, grads_ckpt, kept_ckpt = loss_grads_and_saved(method, backbone, head, True)
    torch.testing.assert_close(ckpt, plain)
    assert grads.keys() == grads_ckpt.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert kept_ckpt <= kept
    if method in ("full", "lora", "bitfit", "lst", "side_tuning", "unipt"):  # layers with autograd: fewer kept
        # (on tiny-t5 the LM head's [batch, target, 30522] scores outweigh its width-32 layers, and UniPT's
        # width-8 branches over 8 target positions are a sliver of them)
        factor = 0.9 if head == "classifier" else 1.0 if method == "unipt" else 0.99
        assert kept_ckpt < factor * kept, (kept_ckpt, kept)


def test_checkpointing_is_a_variant_of_every_method():
    from benchmark.run import plan

    for name in METHODS.names():
        p = plan({"method": name, "variant": "checkpointing"})
        assert p.method_cfg.checkpointing and p.run.label == f"{name}@checkpointing"


@pytest.mark.parametrize("method", ["full", "lst"])
def test_a_checkpointed_row_is_predicted(method):
    """Fake tensors: the prediction equals the real tracker (target=cpu), and target=cuda (whose kernel choices
    are a torch-function mode that backward does not keep) recomputes what its forward saved."""
    from benchmark.memory.simulate import simulate

    row = {"batch_size": "4", "max_length": "16", "steps": "2", "backbone": "tiny-bert", "method": method,
           "checkpointing": "true", **({"init": "random"} if method == "lst" else {})}
    predicted, real = simulate({**row, "target": "cpu"}), simulate({**row, "target": "cpu"}, fake=False)
    assert abs(predicted["peak_train_bytes"] / real["peak_train_bytes"] - 1) <= 0.05
    cuda = simulate({**row, "target": "cuda"})
    plain = simulate({**row, "target": "cuda", "checkpointing": "false"})
    assert 0 < cuda["peak_train_bytes"] <= plain["peak_train_bytes"]
