"""``python -m benchmark.memory.predict --calibrate``: the H100 reference runs of docs/memory.md predicted under
fake tensors and printed beside the bytes measured there, to check what the predictor leaves out."""
from __future__ import annotations

import warnings
from contextlib import ExitStack

from benchmark.memory.architecture import CONFIG_DIR, config_from_json
from benchmark.memory.caching import CachingAllocatorModel, cublas_workspaces
from benchmark.memory.fake import swappable_params, target_choices

# docs/memory.md: H100 80GB, T5ForConditionalGeneration from the t5-base config (random init), batch 100,
# source length 128, target length 8, fp32, AdamW, max_memory_allocated over 4 training steps
# the three reference runs: every weight trains, LoRA r=32 on q and v trains, nothing trains (no_grad)
REFERENCE_H100 = {"all-weights": 16_328_735_744, "lora-r32": 10_434_619_904, "frozen": 2_187_279_360}


REFERENCE_SHAPE = {"batch_size": 100, "max_length": 128, "target_length": 8, "precision": "32-true"}


def _reference_peak(kind: str, target: str, order: str, batch_size: int = 100, max_length: int = 128,
                    target_length: int = 8, precision: str = "32-true") -> tuple[int, int, int]:
    """One reference run (docs/memory.md) under FakeTensorMode, at its shape or another one; ``order``:
    ``plain`` (forward, backward, step, zero_grad) or ``lightning`` (zero_grad between forward and backward,
    inside the step's closure). Returns (the tensors' peak, predicted ``max_memory_allocated``: the caching
    allocator's blocks plus cuBLAS's workspaces on ``target=cuda``, predicted ``max_memory_reserved``)."""
    from contextlib import nullcontext

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import T5ForConditionalGeneration

    from benchmark.memory.tracker import MemoryTracker

    config = config_from_json(CONFIG_DIR / "t5-base.json")
    with ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        mode = stack.enter_context(FakeTensorMode())
        stack.enter_context(swappable_params(mode))
        stack.enter_context(target_choices(target, fake=True))
        model = T5ForConditionalGeneration(config)
        if kind == "lora-r32":
            import benchmark.bnb_preload  # noqa: F401  (before peft: benchmark/bnb.py)
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=32, lora_alpha=32, target_modules=["q", "v"]))
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4,
                                foreach=target == "cuda")
        tracker = MemoryTracker(model, opt)
        caching = CachingAllocatorModel()
        tracker.listener = caching.event
        autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16-mixed" else nullcontext
        workspaces = cublas_workspaces(caching) if target == "cuda" else nullcontext()
        with tracker, workspaces:
            model.train(kind != "frozen")
            for _ in range(2 if kind == "frozen" else 4):
                # no padding, so no attention mask: on real tensors transformers drops an all-ones mask and
                # hands SDPA the position bias alone, [1, heads, L, L]; on fake ones it cannot see the ones and
                # would build a [batch, heads, L, L] mask in every layer, which the reference run never held
                batch = {"input_ids": torch.randint(0, config.vocab_size, (batch_size, max_length)),
                         "labels": torch.randint(0, config.vocab_size, (batch_size, target_length))}
                if kind == "frozen":
                    with torch.no_grad(), autocast():
                        model(**batch)
                    continue

                def closure():
                    with autocast():
                        loss = model(**batch).loss
                    if order == "lightning":
                        opt.zero_grad()
                    loss.backward()
                    return loss

                opt.step(closure=closure)
                if order == "plain":
                    opt.zero_grad()
    return tracker.peak_bytes, caching.peak_allocated, caching.peak_reserved


def calibrate(target: str = "cuda", **shape) -> int:
    """Predict the H100 reference runs of docs/memory.md (or the same model at another ``shape``: batch_size,
    max_length, target_length, precision) and print each prediction beside the measured bytes where the
    reference has them (its shape only)."""
    shape = {**REFERENCE_SHAPE, **shape}
    measured_here = shape == REFERENCE_SHAPE
    print("run | loop order | tensors' peak | predicted allocated | predicted reserved | H100 max_memory_allocated "
          "| predicted allocated / measured")
    print("--- | --- | --- | --- | --- | --- | ---")
    for kind, measured in REFERENCE_H100.items():
        for order in ("plain",) if kind == "frozen" else ("plain", "lightning"):
            tensors, allocated, reserved = _reference_peak(kind, target, order, **shape)
            ratio = f"{allocated / measured:.3f}" if measured_here else "-"
            print(f"{kind} | {order} | {tensors:,} | {allocated:,} | {reserved:,} | "
                  f"{f'{measured:,}' if measured_here else '-'} | {ratio}", flush=True)
    print(f"\nT5-base encoder-decoder, batch {shape['batch_size']}, source {shape['max_length']}, target "
          f"{shape['target_length']}, {shape['precision']}, AdamW, 4 steps; target {target}"
          + ("" if measured_here else "; the H100 reference was measured at batch 100, source 128, target 8, fp32 only"))
    return 0
