"""Shared test helpers: tiny task, tiny batches, one optimizer step and what it changed."""
from __future__ import annotations

import torch
from torchmetrics import Accuracy

from tasks.base import MetricSpec, Task, TextToText


def toy_task(num_labels: int = 2) -> Task:
    words = ("no", "yes", "maybe", "never", "always")[:num_labels]
    return Task(name="toy", version=1, family="test", problem="classification", num_labels=num_labels,
                metrics=(MetricSpec("acc", lambda: Accuracy(task="multiclass", num_classes=num_labels)),),
                score_of=("acc",), loader=lambda task, options: None,
                text_to_text=TextToText("toy", ("sentence",), words))


def tiny_batch(backbone, n: int = 4, length: int = 12, num_labels: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    texts = [" ".join(["word"] * int(k)) for k in torch.randint(2, length - 2, (n,), generator=g)]
    batch = dict(backbone.tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                                    return_tensors="pt"))
    batch["labels"] = torch.randint(0, num_labels, (n,), generator=g)
    return batch


def build_module(method: str, backbone: str = "tiny-bert", task: Task | None = None, wrap=None,
                 head: str = "classifier", **cfg):
    """``wrap``: a function of the loaded backbone returning the backbone to use (e.g. a VL wrapper);
    ``head=seq2seq`` loads the encoder-decoder and reads it through the task's label words."""
    import methods  # noqa: F401
    from benchmark.backbones import load_backbone
    from benchmark.module import METLModule
    from methods.base import METHODS

    torch.manual_seed(0)
    cls = METHODS.get(method)
    config = cls.config_class(**cfg)
    bb = load_backbone(backbone, head=head)
    if wrap is not None:
        bb = wrap(bb)
    m = cls(bb, config)
    return METLModule(m, task or toy_task(), lr=config.lr, weight_decay=0.0, warmup_steps=0, head_dropout=0.0)


def one_step(module, batch, lr: float = 1e-2, steps: int = 2):
    """``steps`` AdamW steps (no weight decay, so only a gradient moves a weight); returns
    (names of parameters that changed, names that ever received a non-zero gradient).
    Two steps by default: LoRA's A gets its first gradient only once B has left zero."""
    module.train()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    with_grad: set[str] = set()
    for _ in range(steps):
        opt.zero_grad()
        loss = module.head.loss(module.method, module.inputs(batch), batch)
        extra = module.method.extra_loss()
        if extra is not None:
            loss = loss + extra
        loss.backward()
        with_grad |= {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        opt.step()
    changed = {n for n, p in module.named_parameters() if not torch.equal(before[n], p.detach())}
    return changed, with_grad


def inputs(batch: dict) -> dict:
    """The batch as a method sees it (no labels)."""
    return {k: v for k, v in batch.items() if k != "labels"}


def backbone_outputs(method, batch) -> list[tuple[bool, bool]]:
    """(grad mode, output.requires_grad) of every backbone layer call during one forward."""
    seen = []
    hooks = [layer.register_forward_hook(
        lambda m, i, o: seen.append((torch.is_grad_enabled(), (o[0] if isinstance(o, tuple) else o).requires_grad)))
        for layer in method.backbone.layers]
    try:
        method(inputs(batch))
    finally:
        for h in hooks:
            h.remove()
    return seen
