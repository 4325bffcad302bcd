"""What a comparison between rows rests on (issue 13): one precision for every row whatever the CPU
reports, MP-ISMoE's base row identical to SHERL, and the model validated being the model tested."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import one_step, tiny_batch, toy_task

ROOT = Path(__file__).resolve().parent.parent
# (reading /proc/cpuinfo's model name for the record's device name is fine; its flags are not)
PROBES = ("avx512", "amx_", "avx2", "get_cpu_capability", "_is_avx512", "_is_amx", '"flags"')
# lines that switch a library's CPU-flag path *off* (so that it cannot depend on the CPU), not probes
SWITCHED_OFF = ("q.support_avx512bf16_for_cpu = False",)


def test_no_code_asks_the_cpu_what_it_can_do():
    """A method's precision must not depend on CPU flags: nothing in the suite reads them."""
    def text(p: Path) -> str:
        return "\n".join(line for line in p.read_text().splitlines() if line.strip() not in SWITCHED_OFF)

    hits = [f"{p.relative_to(ROOT)}: {probe}" for folder in ("benchmark", "methods", "tasks")
            for p in (ROOT / folder).rglob("*.py") for probe in PROBES if probe in text(p)]
    assert hits == []


def cpu_says(monkeypatch, yes: bool) -> None:
    """Make every CPU-capability probe we know of answer ``yes`` (avx512_bf16 / AMX present) or no."""
    import builtins

    flags = ("model name : test cpu\nflags : fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n" if yes
             else "model name : test cpu\nflags : fpu avx2\n")
    real_read_text, real_open = Path.read_text, builtins.open

    def read_text(self, *a, **k):
        return flags if str(self) == "/proc/cpuinfo" else real_read_text(self, *a, **k)

    def fake_open(file, *a, **k):
        if str(file) == "/proc/cpuinfo":
            import io

            return io.StringIO(flags)
        return real_open(file, *a, **k)

    monkeypatch.setattr(Path, "read_text", read_text)
    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512" if yes else "AVX2")
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_avx512_supported"):
        if hasattr(torch.cpu, name):
            monkeypatch.setattr(torch.cpu, name, lambda yes=yes: yes)


def step(method: str, **cfg):
    """Logits (in fp32) and the parameters one AdamW step changed, for a fresh module on tiny-bert."""
    from helpers import build_module

    module = build_module(method, "tiny-bert", **cfg)
    batch = tiny_batch(module.method.backbone)
    module.eval()
    with torch.no_grad():
        logits = module({k: v for k, v in batch.items() if k != "labels"})
    changed, _ = one_step(module, batch)
    return logits, changed, {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["full", "lora", "bitfit", "side_tuning", "lst", "unipt", "sherl", "mpismoe"])
def test_every_method_computes_the_same_whatever_the_cpu_reports(monkeypatch, method):
    """The same fp32 logits and the same update, bit for bit, with the capability probes answering yes and no
    (a method that picked bf16 from the CPU's flags would differ, and on a CPU with the flag its tests failed)."""
    results = {}
    for yes in (False, True):
        with monkeypatch.context() as m:
            cpu_says(m, yes)
            results[yes] = step(method)
    (la, ca, pa), (lb, cb, pb) = results[False], results[True]
    assert la.dtype == torch.float32 and torch.equal(la, lb)
    assert ca == cb and all(torch.equal(pa[n], pb[n]) for n in pa)


def _module(overrides: dict, backbone: str = "tiny-bert"):
    from benchmark.backbones import load_backbone
    from benchmark.module import METLModule
    from benchmark.run import plan

    p = plan({"backbone": backbone, **overrides})
    torch.manual_seed(0)
    method = p.method_cls(load_backbone(backbone), p.method_cfg)
    return METLModule(method, toy_task(), lr=p.method_cfg.lr, weight_decay=0.0, warmup_steps=0, head_dropout=0.0)


# the first row of each MP-ISMoE ablation chain and the base method it names (the paper's on UniPT, ours on SHERL)
TABLE3_BASES = [("table3-base", "unipt"), ("ext-sherl-table3-base", "sherl")]


@pytest.mark.parametrize("variant,base", TABLE3_BASES)
def test_mpismoe_table3_base_is_bit_identical_to_its_base(variant, base):
    """Under default settings, same seed: identical logits, gradients and trainable parameter names."""
    a, b = _module({"method": "mpismoe", "variant": variant}), _module({"method": base})
    names = lambda m: [n.replace("method.base.", "method.") for n, p in m.named_parameters() if p.requires_grad]  # noqa: E731
    assert names(a) == names(b)
    batch = tiny_batch(a.method.backbone)
    grads = []
    for m in (a, b):
        m.train()
        torch.manual_seed(1)
        logits = m({k: v for k, v in batch.items() if k != "labels"})
        m.task.loss(logits, batch["labels"]).backward()
        grads.append((logits.detach(), [p.grad for p in m.parameters() if p.requires_grad]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.equal(x, y) for x, y in zip(grads[0][1], grads[1][1]))
    for pa, pb in zip((p for p in a.parameters() if p.requires_grad), (p for p in b.parameters() if p.requires_grad)):
        assert torch.equal(pa, pb)  # same initial values


def test_the_model_tested_is_the_model_validated(tmp_path, monkeypatch):
    """GNP-IQ re-quantizes at the end of every epoch: it must happen before that epoch's validation, so the
    checkpoint saved after validation (and tested) holds exactly the weights and scales validated."""
    from benchmark.module import METLModule
    from benchmark.run import run

    snaps = {}

    def snapshot(stage):
        def hook(self):
            keep = self.trainable_state_names()
            snaps.setdefault(stage, []).append({k: v.detach().clone() for k, v in self.state_dict().items() if k in keep})
        return hook

    monkeypatch.setattr(METLModule, "on_validation_epoch_start", snapshot("val"), raising=False)
    monkeypatch.setattr(METLModule, "on_test_epoch_start", snapshot("test"), raising=False)
    calls = []
    real = METLModule.on_train_batch_end

    def spy(self, *a):
        real(self, *a)
        calls.append(self.trainer.is_last_batch)
    monkeypatch.setattr(METLModule, "on_train_batch_end", spy)
    run({"backbone": "tiny-bert", "method": "mpismoe", "task": "rotten_tomatoes", "wandb": "disabled",
         "progress": "false", "epochs": "1", "batch_size": "16", "limit_train_samples": "32",
         "limit_eval_samples": "16", "max_length": "16", "warmup_steps": "0", "base.train_late_layer": "true",
         "requant_fraction": "1.0", "results_dir": str(tmp_path / "results"), "run_dir": str(tmp_path / "runs")})
    assert calls[-1] is True  # the epoch's last batch was seen, so the re-quantization ran
    (val,), (test,) = snaps["val"], snaps["test"]
    assert any(k.endswith(".scales") for k in val)
    assert val.keys() == test.keys() and all(torch.equal(val[k], test[k]) for k in val)


@pytest.mark.parametrize("variant,base", TABLE3_BASES)
def test_mpismoe_table3_base_holds_the_same_memory_as_its_base(variant, base):
    """The same computation holds the same tensors: a training step of ``mpismoe@table3-base`` peaks at
    its base's bytes exactly (no salient-token vector kept when the prior is off: a mean-pooled backbone
    makes that vector a tensor of its own)."""
    from benchmark.memory import MemoryTracker

    peaks = []
    for overrides in ({"method": "mpismoe", "variant": variant}, {"method": base}):
        m = _module(overrides, backbone="tiny-t5")
        m.train()
        batch = tiny_batch(m.method.backbone)
        with MemoryTracker(m) as tracker:  # the forward: where a side network's activations peak
            logits = m({k: v for k, v in batch.items() if k != "labels"})
        peaks.append(tracker.peak_breakdown)
        m.task.loss(logits, batch["labels"]).backward()
    assert peaks[0] == peaks[1]
