"""One row of a memory prediction: the row's method, task head, loss and AdamW built from the run plan
and a backbone from its architecture config, and its training steps run under the ``MemoryTracker`` on
fake tensors (a prediction) or real ones (the reference a prediction is checked against).

The loop is Lightning's automatic optimisation, step for step: ``optimizer.step(closure)`` whose
closure runs ``training_step`` (under autocast for ``bf16-mixed``), ``zero_grad`` (to None) and
``backward``; then the LR scheduler and the method's ``after_step``. Inputs are [batch, length], every
token attended. No validation, no ``after_epoch`` (the tracker of ``make memory`` also stops there).
``Method.prepare`` (data-dependent initialisation that changes values, not shapes) is not run.
"""
from __future__ import annotations

import dataclasses

import time
import warnings
from contextlib import ExitStack, nullcontext

from benchmark.errors import UserError
from benchmark.memory.architecture import backbone_config, build_backbone
from benchmark.memory.fake import SdpaKernels, data_dependent_policy, swappable_params, target_choices
from benchmark.memory.caching import CUDA_CONTEXT_BYTES, CachingAllocatorModel, cublas_workspaces

DEFAULTS = {"backbone": "t5-base", "batch_size": "100", "max_length": "128",
            "precision": "32-true", "steps": "3", "target": "cuda"}
PREDICT_KEYS = ("backbone", "steps", "target")  # handled here; everything else goes to the run plan
PRECISIONS = ("32-true", "32", "bf16-mixed")
TARGETS = ("cuda", "cpu")


def _batch(config, task, batch_size: int, length: int, device, seed: int) -> dict:
    """[batch, length] inputs, every token attended (values matter only to a real run's MoE routing)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, max(4, config.vocab_size), (batch_size, length), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones(batch_size, length, dtype=torch.long)}
    if getattr(config, "type_vocab_size", 0) > 1:  # BERT-style tokenizers return segment ids
        batch["token_type_ids"] = torch.zeros(batch_size, length, dtype=torch.long)
    if task.problem == "regression":
        batch["labels"] = torch.rand(batch_size, generator=g)
    else:
        batch["labels"] = torch.randint(0, task.num_labels, (batch_size,), generator=g)
    return {k: v.to(device) for k, v in batch.items()}


def _split(overrides: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    own = {k: overrides.get(k, DEFAULTS[k]) for k in PREDICT_KEYS}
    rest = {k: v for k, v in overrides.items() if k not in PREDICT_KEYS}
    from tasks import default_task

    rest.setdefault("task", default_task().name)
    if not rest.get("head"):  # the predicted backbone's default kind (seq2seq for the T5 names)
        from benchmark.backbones import default_head

        rest["head"] = default_head(own["backbone"])
    for k in ("batch_size", "max_length", "precision"):
        rest.setdefault(k, DEFAULTS[k])
    return own, rest


def check(overrides: dict[str, str]):
    """Validate a row's overrides before anything is built; returns the run plan."""
    from benchmark.run import plan

    own, rest = _split(overrides)
    if own["target"] not in TARGETS:
        raise UserError(f"bad value target={own['target']!r}: must be cuda or cpu")
    try:
        if int(own["steps"]) < 2:
            raise ValueError
    except ValueError:
        raise UserError(f"bad value steps={own['steps']!r}: must be an integer >= 2 (the second step "
                        f"runs beside the optimizer state)") from None
    p = plan({**rest, "warmup_steps": "0", "wandb": "disabled"})
    if p.run.precision not in PRECISIONS:
        raise UserError(f"precision={p.run.precision!r} cannot be predicted; use 32-true or bf16-mixed")
    if p.task.images_per_example:
        raise UserError(f"task {p.task.name!r} has images; prediction covers text tasks only")
    backbone_config(own["backbone"])
    return p


def simulate(overrides: dict[str, str], fake: bool = True, device: str = "cpu") -> dict:
    """Build one row's configuration and run its training steps under the tracker: fake tensors
    (a prediction) or real ones on ``device`` (the reference a prediction is checked against)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from benchmark.memory.tracker import MemoryTracker, device_name
    from benchmark.module import METLModule
    from benchmark.run import parameter_counts
    from methods.base import Method

    own, _ = _split(overrides)
    p = check(overrides)
    r, steps, target = p.run, int(own["steps"]), own["target"]
    label, config, pooling = backbone_config(own["backbone"])
    t0 = time.perf_counter()
    notes: list[str] = []
    hints = p.method_cls.fake_tensor_hints()
    if fake:  # the optimizer's constants (8-bit code books) as well as the method's
        from benchmark.optim import fake_scalars

        hints = dataclasses.replace(hints, placeholder_scalars={**hints.placeholder_scalars,
                                                                **fake_scalars(p.method_cfg.optimizer)})
    policy = data_dependent_policy(hints) if fake else None
    with ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        if fake:
            mode = stack.enter_context(FakeTensorMode())
            stack.enter_context(swappable_params(mode))
            stack.enter_context(policy)
        stack.enter_context(target_choices(target, fake))
        torch.manual_seed(r.seed)
        with ExitStack() as build:
            for context in hints.build_contexts if fake else ():
                build.enter_context(context())
            backbone = build_backbone(config, label, r.pooling or pooling, r.head)
            method = p.method_cls(backbone, p.method_cfg)
        if type(method).prepare is not Method.prepare:
            notes.append("prepare() skipped")
        module = METLModule(method, p.task, lr=p.method_cfg.lr, weight_decay=p.method_cfg.weight_decay,
                            warmup_steps=0, head_dropout=p.method_cfg.head_dropout,
                            target_length=r.target_length, pad_targets=True)  # every target padded, as a memory run
        module.to(device)
        module._trainer = type("Trainer", (), {"estimated_stepping_batches": steps})()
        conf = module.configure_optimizers()
        module._trainer = None  # self.log is then a no-op, as with logger=False
        opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
        if fake and target == "cuda":
            for group in opt.param_groups:
                group["foreach"] = True  # AdamW's default for CUDA tensors
        if policy is not None:
            policy.watch(module)
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        tracker = MemoryTracker(module, device="cuda" if cuda else None)
        tracker.attach_optimizer(opt)
        caching = CachingAllocatorModel()  # what CUDA's caching allocator would reserve for these tensors
        tracker.listener = caching.event
        autocast = (lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)) \
            if r.precision == "bf16-mixed" else nullcontext
        # cuBLAS's workspaces count in max_memory_allocated too (caching.py); the tracker sees tensors only
        workspaces = cublas_workspaces(caching) if fake and target == "cuda" else nullcontext()
        kernels = SdpaKernels()  # a real run says which attention kernels it ran; a fake one follows target_choices
        with tracker, workspaces, kernels.mode() if not fake else nullcontext():
            module.train()
            for step in range(steps):
                batch = _batch(config, p.task, r.batch_size, r.max_length, device, r.seed + step)
                tracker.track(batch, category="other")

                def closure():
                    with autocast():
                        loss = module.training_step(batch, step)
                    opt.zero_grad()
                    loss.backward()
                    return loss

                opt.step(closure=closure)
                sched.step()
                module.method.after_step(step + 1)
                del batch
        if cuda:
            torch.cuda.synchronize()
        counts = parameter_counts(module, method)
    if policy is not None:
        notes.extend(sorted(policy.notes))
    if kernels.summary():
        notes.append(f"SDPA kernels: {kernels.summary()}")
    bd = tracker.peak_breakdown
    return {"method": r.method, "variant": p.method_cls.row_label(r.method, r.variant), "peak_train_bytes": tracker.peak_bytes, **bd,
            "trainable_params": counts["trainable_params"], "total_params": counts["total_params"],
            "backbone_storage_bytes": counts["backbone_storage_bytes"], "step_seconds": None,
            "step_seconds_min": None,
            "peak_source": "tracker",
            "predicted_allocated_bytes": caching.peak_allocated, "predicted_reserved_bytes": caching.peak_reserved,
            "nvidia_smi_bytes": caching.peak_reserved + CUDA_CONTEXT_BYTES,
            "cuda_max_allocated": torch.cuda.max_memory_allocated() if cuda else None,
            "cuda_max_reserved": torch.cuda.max_memory_reserved() if cuda else None,
            "batch_size": r.batch_size, "max_length": r.max_length, "precision": r.precision,
            "backbone": f"{label}:seq2seq" if r.head == "seq2seq" else label,
            "device": "fake cpu" if fake else device_name(device), "task": r.task,
            "source": "predicted" if fake else "measured", "target": target if fake else torch.device(device).type,
            "steps": steps, "notes": "; ".join(notes), "sdpa_kernels": kernels.summary(), "error": None,
            "sim_seconds": round(time.perf_counter() - t0, 2)}

