"""The peak-training-memory tracker and the Lightning meter (CPU, small models, a few seconds)."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from benchmark.memory import CATEGORIES, MemoryMeter, MemoryTracker, batch_size_of

MiB = 2**20


def storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        if id(st) not in seen:
            seen.add(id(st))
            total += st.nbytes()
    return total


def mlp(width: int = 256, depth: int = 4, trainable: bool = True) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(64, width), nn.LayerNorm(width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 2))
    m = nn.Sequential(*layers)
    m.register_buffer("scale", torch.ones(width))  # a buffer counts as a weight
    m.requires_grad_(trainable)
    return m


def train_step(model, opt, x, zero_grad: bool = True):
    if zero_grad:
        opt.zero_grad()
    loss = model(x).square().mean()
    loss.backward()
    opt.step()
    return loss.detach()


def test_held_tensor_raises_peak_by_its_size():
    x = torch.randn(32, 64)
    peaks = {}
    for held in (False, True):
        model = mlp()
        opt = torch.optim.AdamW(model.parameters())
        with MemoryTracker(model, opt) as tracker:
            keep = torch.empty(MiB, dtype=torch.float32) if held else None  # 4 MiB alive through the step
            train_step(model, opt, x)
            del keep
        peaks[held] = tracker.peak_bytes
        assert tracker.current_bytes < tracker.peak_bytes
    assert peaks[True] - peaks[False] >= 4 * MiB
    assert peaks[True] - peaks[False] < 4 * MiB + 64 * 1024


def test_breakdown_of_mlp_adamw_step():
    model = mlp(width=128)
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(2048, 64)  # activations dominate, so the peak is in forward/backward
    params = list(model.parameters())
    p_bytes = storage_bytes(params)
    with MemoryTracker(model) as tracker:
        tracker.attach_optimizer(opt)  # as in Lightning: the optimizer comes after the module
        train_step(model, opt, x)  # creates grads and the AdamW state (lazily, inside step)
        tracker.reset_peak()
        train_step(model, opt, x, zero_grad=False)  # grads stay alive through the step
    bd = tracker.peak_breakdown
    assert set(bd) == set(CATEGORIES)
    assert sum(bd.values()) == tracker.peak_bytes
    assert bd["weights"] == p_bytes + storage_bytes(model.buffers())
    assert bd["grads"] == storage_bytes([p.grad for p in params])
    step_bytes = storage_bytes([s["step"] for s in opt.state.values()])
    assert bd["optimizer"] == 2 * p_bytes + step_bytes
    assert step_bytes <= 8 * len(params)
    assert bd["activations"] > 2048 * 128 * 4  # at least one layer's output saved for backward


def test_optimizer_state_created_in_first_step_is_optimizer_in_peak():
    """A small batch puts the first step's peak inside optimizer.step, where AdamW creates its state."""
    model = mlp(width=256)
    opt = torch.optim.AdamW(model.parameters(), foreach=False)
    p_bytes = storage_bytes(model.parameters())
    with MemoryTracker(model, opt) as tracker:
        train_step(model, opt, torch.randn(2, 64))
    bd = tracker.peak_breakdown
    assert bd["optimizer"] >= 2 * p_bytes
    assert bd["other"] < p_bytes
    assert sum(bd.values()) == tracker.peak_bytes


def test_views_are_counted_once():
    base_param = nn.Parameter(torch.randn(256, 256))
    with MemoryTracker(nn.ParameterList([base_param])) as tracker:
        before = tracker.current_bytes
        t = torch.randn(MiB // 4)  # 1 MiB
        views = [t[::2], t.view(512, 512), t.view(512, 512).t(), t[10:20], t.unsqueeze(0), base_param.t()]
        assert tracker.current_bytes - before == t.untyped_storage().nbytes() == MiB
        c = views[1].clone()
        assert tracker.current_bytes - before == 2 * MiB
        del t, views
        assert tracker.current_bytes - before == MiB  # the views kept the storage; now only the clone is left
        del c
        assert tracker.current_bytes == before
    assert tracker.peak_breakdown["weights"] == 256 * 256 * 4


def test_pause_keeps_peak_and_ignores_paused_allocations():
    tracker = MemoryTracker()
    with tracker:
        a = torch.zeros(MiB // 4)
        del a
    first = tracker.peak_bytes
    assert first >= MiB
    big = torch.zeros(4 * MiB)  # while paused: not counted
    with tracker:
        b = torch.zeros(1024)
    assert tracker.peak_bytes == first
    del big, b


class _Data(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"input_ids": torch.randn(64, generator=g), "labels": torch.tensor(i % 2)}


class _Tiny(L.LightningModule):
    VAL_BYTES = 64 * MiB

    def __init__(self):
        super().__init__()
        self.net = mlp(width=128)
        self.val_calls = 0

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.net(batch["input_ids"]), batch["labels"])

    def validation_step(self, batch, batch_idx):
        self.val_calls += 1
        big = torch.ones(self.VAL_BYTES // 4)  # a validation-only spike
        return big.sum()

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters())


def test_lightning_validation_spike_is_not_in_training_peak(tmp_path):
    module = _Tiny()
    meter = MemoryMeter(track=True, warmup_steps=1)
    loader = lambda: torch.utils.data.DataLoader(_Data(), batch_size=8)  # noqa: E731
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, val_check_interval=1, limit_val_batches=1,
                        num_sanity_val_steps=1, callbacks=[meter], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=loader(), val_dataloaders=loader())
    assert module.val_calls >= 3  # sanity check + validation between training steps
    s = meter.summary()
    p_bytes = storage_bytes(module.parameters())
    assert s["peak_source"] == "tracker"
    assert s["peak_train_bytes"] == s["tracker_peak_bytes"] == sum(s["memory_breakdown"].values())
    assert s["peak_train_bytes"] < _Tiny.VAL_BYTES
    assert s["memory_breakdown"]["weights"] == p_bytes + storage_bytes(module.buffers())
    assert s["memory_breakdown"]["optimizer"] >= 2 * p_bytes
    assert s["memory_breakdown"]["activations"] > 0
    assert s["cuda_max_allocated"] is None and s["cuda_max_reserved"] is None
    assert s["steps_timed"] == 2 and s["step_seconds"] > 0
    assert 0 < s["step_seconds_min"] <= s["step_seconds"]
    assert s["samples_per_second"] == pytest.approx(8 / s["step_seconds"], rel=0.5)
    assert isinstance(s["device"], str) and s["device"]
    assert not meter.tracker.active


@pytest.mark.filterwarnings("ignore:You defined a `validation_step`")
def test_lightning_interrupted_run_does_not_crash(tmp_path):
    class Boom(_Tiny):
        def training_step(self, batch, batch_idx):
            if batch_idx == 1:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    meter = MemoryMeter()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, limit_val_batches=0, callbacks=[meter],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Boom(), train_dataloaders=torch.utils.data.DataLoader(_Data(), batch_size=8))
    assert not meter.tracker.active
    from torch.utils._python_dispatch import _get_current_dispatch_mode
    assert _get_current_dispatch_mode() is None
    s = meter.summary()
    assert s["peak_train_bytes"] > 0 and s["steps_timed"] == 0 and s["step_seconds"] is None
    assert s["step_seconds_min"] is None


def test_frozen_no_grad_has_almost_no_activations():
    x = torch.randn(512, 64)
    acts = {}
    for trainable in (True, False):
        model = mlp(width=256, depth=8, trainable=trainable)
        with MemoryTracker(model) as tracker:
            if trainable:
                model(x).square().mean().backward()
            else:
                with torch.no_grad():
                    model(x).square().mean()
        acts[trainable] = tracker.peak_breakdown["activations"]
    layer = 512 * 256 * 4
    assert acts[True] >= 8 * layer  # every layer keeps what backward needs
    assert acts[False] <= 3 * layer  # only the layer being computed and its input
    assert acts[False] < 0.25 * acts[True]


def test_frozen_layers_feeding_a_trainable_head_count_as_activations():
    """What a frozen layer hands to a trainable one is saved for backward: an activation, though it has no grad_fn."""
    frozen, head = mlp(width=256, depth=1, trainable=False), nn.Linear(512, 2)
    model = nn.Sequential(frozen, nn.Linear(2, 512), nn.ReLU(), head)
    model[1].requires_grad_(False)
    x = torch.randn(1024, 64)
    with MemoryTracker(model) as tracker:
        model(x).sum().backward()
    assert tracker.peak_breakdown["activations"] >= 1024 * 512 * 4  # the ReLU output saved by the head


def test_tracker_works_on_fake_tensors():
    """Memory prediction without allocating: the same tracker under FakeTensorMode."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        model = nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 8))
        opt = torch.optim.AdamW(model.parameters())
        x = torch.randn(4096, 1024)  # 16 MiB that never exist
        with MemoryTracker(model, opt) as tracker:
            for _ in range(2):  # the second step's forward runs beside the optimizer state
                train_step(model, opt, x)
    p_bytes = sum(p.numel() * 4 for p in model.parameters())
    bd = tracker.peak_breakdown
    assert bd["weights"] == p_bytes and bd["optimizer"] >= 2 * p_bytes
    assert bd["activations"] >= 4096 * 4096 * 4  # the hidden layer saved for backward


class _FakeCuda:
    """Just enough of torch.cuda's peak statistics to check the meter's bookkeeping without a GPU."""

    def __init__(self):
        self.current = self.peak = 0

    def allocate(self, n):
        self.current += n
        self.peak = max(self.peak, self.current)

    def reset_peak_memory_stats(self, device=None):
        self.peak = self.current


def test_cuda_peaks_exclude_validation(monkeypatch):
    fake = _FakeCuda()
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", fake.reset_peak_memory_stats)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: fake.peak)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: fake.peak + 7)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")

    class Module:
        device = torch.device("cuda", 0)

    class Trainer:
        optimizers = []

    meter, trainer, module, batch = MemoryMeter(track=False, warmup_steps=0), Trainer(), Module(), torch.zeros(4, 3)
    fake.allocate(1000)  # the model, before training: its bytes stay in the peak, as they are live
    fake.peak = 10**9  # a spike while building the model must not count
    meter.on_train_start(trainer, module)
    for step, (train_spike, val_spike) in enumerate([(500, 9000), (700, 9000)]):
        meter.on_train_batch_start(trainer, module, batch, step)
        fake.allocate(train_spike)
        fake.allocate(-train_spike)
        meter.on_train_batch_end(trainer, module, None, batch, step)
        meter.on_validation_start(trainer, module)
        fake.allocate(val_spike)
        fake.allocate(-val_spike)
        meter.on_validation_end(trainer, module)
    meter.on_train_end(trainer, module)
    s = meter.summary()
    assert s["peak_source"] == "cuda_max_allocated"
    assert s["peak_train_bytes"] == s["cuda_max_allocated"] == 1700
    assert s["cuda_max_reserved"] == 1707
    assert s["tracker_peak_bytes"] is None and s["device"] == "Fake GPU" and s["steps_timed"] == 2


def test_batch_size_of():
    assert batch_size_of({"input_ids": torch.zeros(5, 3), "labels": torch.zeros(7)}) == 5
    assert batch_size_of({"pixel_values": torch.zeros(4, 3, 8, 8)}) == 4
    assert batch_size_of((torch.zeros(6, 2), torch.zeros(6))) == 6
    assert batch_size_of({"meta": "x"}) is None


def test_unique_storage_bytes_counts_each_storage_once_real_fake_and_meta():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from benchmark.memory import unique_storage_bytes

    w = torch.zeros(4, 8)
    assert unique_storage_bytes([w, w.view(8, 4), w[1], nn.Parameter(w), None, "not a tensor"]) == 4 * 8 * 4
    assert unique_storage_bytes([w, torch.zeros(3, dtype=torch.uint8)]) == 128 + 3
    m = torch.empty(4, 8, device="meta")
    assert unique_storage_bytes([m, m.t(), torch.empty(2, device="meta")]) == 128 + 8
    with FakeTensorMode():
        f = torch.empty(4, 8)
        assert unique_storage_bytes([f, f[0], torch.empty(5, dtype=torch.float16)]) == 128 + 10


# --- the second instrument: the CPU allocator read by the profiler (benchmark/memory/allocator.py) ---------
def test_the_allocator_peak_is_the_highest_running_total_of_allocations():
    """1 MiB allocated and freed, then 2 MiB and 0.5 MiB held together: the rise is 2.5 MiB, to the byte."""
    from torch.profiler import ProfilerActivity, profile

    from benchmark.memory.allocator import peak_rise

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        a = torch.empty(1 << 20, dtype=torch.uint8)
        del a
        b = torch.empty(2 << 20, dtype=torch.uint8)
        c = torch.empty(1 << 19, dtype=torch.uint8)
        del b, c
    assert peak_rise(prof) == (2 << 20) + (1 << 19)


def test_the_allocator_sees_kernel_scratch_that_no_returned_tensor_shows():
    """Sorting 65,536 floats returns values and int64 indices (786,432 bytes), the only tensors the tracker
    sees; the CPU kernel also allocates and frees scratch through c10 inside the op, which the allocator
    reports. (Which ops keep scratch depends on the kernel: this is what make memory's allocator column
    adds to the tracker's.)"""
    from torch.profiler import ProfilerActivity, profile

    from benchmark.memory.allocator import peak_rise

    x = torch.randn(1 << 16)
    tracker = MemoryTracker()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, tracker:
        out = x.sort()
    assert tracker.peak_bytes == (1 << 16) * (4 + 8)
    assert peak_rise(prof) > tracker.peak_bytes
    del out


def test_make_memory_reports_both_instruments_and_they_agree_on_a_tiny_model(tmp_path):
    """``make memory``: each row measured twice, each instrument in a fresh process (the allocator pass counts
    every tensor alive at the start, so it must not share a process); tiny models hold no kernel scratch
    worth the name, so the two peaks agree within 1 %."""
    import subprocess
    import sys

    import pandas as pd

    from benchmark.run import REPO_ROOT

    out = tmp_path / "memory.csv"
    done = subprocess.run([sys.executable, "-m", "benchmark", "memory", "backbone=tiny-bert", "batch_size=8",
                           "max_length=32", "steps=3", "--methods", "full lora", "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    df = pd.read_csv(out).set_index("variant")
    assert set(df.index) == {"full", "lora"} and "allocator / tracker" in done.stdout
    for row in ("full", "lora"):
        assert df.loc[row, "tracker_peak_bytes"] == df.loc[row, "peak_train_bytes"]
        assert abs(df.loc[row, "allocator_peak_bytes"] / df.loc[row, "tracker_peak_bytes"] - 1) < 0.01
        assert df.loc[row, "allocator_to_tracker"] == pytest.approx(
            df.loc[row, "allocator_peak_bytes"] / df.loc[row, "tracker_peak_bytes"])
