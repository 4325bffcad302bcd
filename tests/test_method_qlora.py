"""QLoRA (bitsandbytes NF4 + peft LoRA) and the 8-bit AdamW switch (``optimizer=adamw8bit``)."""
import pytest
import torch

import methods  # noqa: F401
from helpers import build_module, one_step, tiny_batch

bnb = pytest.importorskip("benchmark.bnb").import_bitsandbytes()


@pytest.mark.parametrize("backbone,head", [("tiny-bert", "classifier"), ("tiny-t5", "seq2seq"), ("tiny-mpnet", "classifier")])
def test_the_4bit_weights_never_change_and_only_lora_trains(backbone, head):
    module = build_module("qlora", backbone, head=head)
    quantized = module.method.quantized
    assert quantized and all(isinstance(q, bnb.nn.Linear4bit) for q in quantized)
    frozen = {id(q): (q.weight.data.clone(), q.weight.quant_state.absmax.clone(),
                      q.weight.quant_state.state2.absmax.clone()) for q in quantized}
    batch = tiny_batch(module.method.backbone)
    changed, _ = one_step(module, batch, steps=3)
    assert changed and all("lora_" in n or n.startswith("head.") for n in changed)
    for q in module.method.quantized:
        data, absmax, absmax2 = frozen[id(q)]
        assert q.weight.dtype == torch.uint8 and torch.equal(q.weight.data, data)
        assert torch.equal(q.weight.quant_state.absmax, absmax)
        assert torch.equal(q.weight.quant_state.state2.absmax, absmax2)


def test_qlora_is_lora_over_nf4_with_double_quant():
    lora, qlora = build_module("lora", "tiny-bert"), build_module("qlora", "tiny-bert")
    assert ({n: p.shape for n, p in lora.named_parameters() if p.requires_grad}
            == {n: p.shape for n, p in qlora.named_parameters() if p.requires_grad})
    q = qlora.method.quantized[0]
    assert q.weight.quant_state.quant_type == "nf4" and q.weight.quant_state.nested
    # every encoder linear is 4-bit; the stored weights are ~1/7 of fp32 (4 bits + double-quantized absmax)
    from benchmark.backbones import load_backbone

    assert len(qlora.method.quantized) == len(load_backbone("tiny-bert").linear_modules())
    assert qlora.method.backbone_storage_bytes() < lora.method.backbone_storage_bytes()
    # the same number of weights, counted as weights (not as packed bytes)
    from methods.base import logical_parameter_count

    assert logical_parameter_count(qlora.method) == logical_parameter_count(lora.method)


def test_t5_keeps_what_transformers_keeps_in_full_precision():
    """T5's ``wo`` (``_keep_in_fp32_modules``) and the tied LM head stay nn.Linear, as transformers does."""
    module = build_module("qlora", "tiny-t5", head="seq2seq")
    names = {n for n, m in module.method.backbone.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    plain = {n for n, m in module.method.backbone.model.named_modules() if type(m) is torch.nn.Linear}
    assert names and all(not n.endswith(".wo") for n in names)
    assert any(n.endswith(".wo") for n in plain) and "lm_head" in plain


def test_the_tracker_counts_the_quantization_constants():
    from benchmark.memory.tracker import MemoryTracker

    module = build_module("qlora", "tiny-bert")
    consts = module.method.extra_weight_tensors()
    assert consts
    with MemoryTracker(module) as tracker:
        pass
    params = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes()
              for p in list(module.parameters()) + list(module.buffers())}
    extra = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in consts}
    assert tracker.peak_breakdown["weights"] == sum({**params, **extra}.values()) > sum(params.values())


def test_adamw8bit_keeps_8bit_moments_and_less_optimizer_memory():
    from benchmark.memory.tracker import MemoryTracker

    states = {}
    for opt_name in ("adamw", "adamw8bit"):
        module = build_module("full", "tiny-bert", optimizer=opt_name)
        module.trainer = type("T", (), {"estimated_stepping_batches": 10})()
        opt = module.configure_optimizers()["optimizer"]
        batch = tiny_batch(module.method.backbone)
        with MemoryTracker(module, opt) as tracker:
            loss = module.head.loss(module.method, module.inputs(batch), batch)
            loss.backward()
            opt.step()
        emb = module.method.backbone.model.embeddings.word_embeddings.weight  # >= 4096 weights: 8-bit moments
        states[opt_name] = (type(opt).__name__, opt.state[emb]["exp_avg" if opt_name == "adamw" else "state1"].dtype,
                            tracker.current_breakdown["optimizer"])
    assert states["adamw"][:2] == ("AdamW", torch.float32)
    assert states["adamw8bit"][:2] == ("AdamW8bit", torch.uint8)
    assert states["adamw8bit"][2] < 0.5 * states["adamw"][2]


def test_adamw8bit_is_a_variant_of_every_method():
    from benchmark.run import plan
    from methods.base import METHODS

    for name in METHODS.names():
        p = plan({"method": name, "variant": "adamw8bit"})
        assert p.method_cfg.optimizer == "adamw8bit" and p.run.label == f"{name}@adamw8bit"


def test_eval_never_repacks_for_the_cpus_bf16_kernel(monkeypatch):
    """bitsandbytes repacks a 4-bit weight for a bf16 gemv kernel when the CPU has native bf16 and the layer
    runs in eval: scores would depend on the CPU (and training would resume on the repacked weight)."""
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)  # as such a CPU answers
    module = build_module("qlora", "tiny-bert")
    module.eval()
    batch = tiny_batch(module.method.backbone)
    with torch.no_grad():
        module.head.scores(module.method, module.inputs(batch), batch)
    assert not any(getattr(q.weight.quant_state, "packing_format_for_cpu", False) for q in module.method.quantized)
