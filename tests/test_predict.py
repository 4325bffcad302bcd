"""Memory prediction under FakeTensorMode: the predicted peak must be the peak the same steps reach with
real tensors (tiny models, CPU), for every registered method."""
from __future__ import annotations

import pytest
import torch

import methods  # noqa: F401  (registers)
from benchmark.memory import CATEGORIES
from benchmark.memory.architecture import backbone_config, build_backbone
from benchmark.memory.fake import FakeUnsupported, data_dependent_policy
from benchmark.memory.predict import main
from benchmark.memory.simulate import simulate
from benchmark.memory.table import COLUMNS, MEASURED_ONLY
from methods.base import METHODS

TINY = {"batch_size": "4", "max_length": "16", "target": "cpu", "steps": "2"}
# tiny-t5 runs as the seq2seq kind by default (encoder-decoder, LM head); "tiny-t5/classifier": its encoder + head
ROWS = [(bb, m, "") for bb in ("tiny-bert", "tiny-t5", "tiny-t5/classifier") for m in METHODS.names()]
ROWS += [("tiny-bert", "mpismoe", "mpismoe-4bit"), ("tiny-bert", "full", "adamw8bit"), ("tiny-bert", "qlora", "checkpointing")]
_RUNS: dict[tuple, tuple[dict, dict]] = {}


def predicted_and_real(backbone: str, method: str, variant: str = "") -> tuple[dict, dict]:
    key = (backbone, method, variant)
    if key not in _RUNS:
        backbone, _, head = backbone.partition("/")
        overrides = {**TINY, "backbone": backbone, "method": method, "variant": variant, **({"head": head} if head else {})}
        _RUNS[key] = simulate(overrides, fake=True), simulate(overrides, fake=False)
    return _RUNS[key]


@pytest.mark.parametrize("backbone,method,variant", ROWS, ids=[f"{b}-{v or m}" for b, m, v in ROWS])
def test_predicted_peak_matches_real_tracker(backbone, method, variant):
    predicted, real = predicted_and_real(backbone, method, variant)
    assert abs(predicted["peak_train_bytes"] / real["peak_train_bytes"] - 1) <= 0.05
    for cat in CATEGORIES:  # the breakdown too (activations are small next to the vocabulary here)
        assert abs(predicted[cat] - real[cat]) <= max(0.05 * real[cat], 8192), cat
    assert predicted["backbone_storage_bytes"] == real["backbone_storage_bytes"]
    assert predicted["trainable_params"] == real["trainable_params"]


def test_quantized_backbone_reports_packed_bytes():
    """Shape-only GNP-IQ under fake tensors keeps the packed layout: 4 bits store less than 8 < fp32 / 3."""
    eight, four, fp32 = (predicted_and_real("tiny-bert", m, v)[0]["backbone_storage_bytes"]
                         for m, v in (("mpismoe", ""), ("mpismoe", "mpismoe-4bit"), ("sherl", "")))
    assert four < eight < fp32 / 3
    assert "balanced MoE routing" in predicted_and_real("tiny-bert", "mpismoe")[0]["notes"]


def test_data_dependent_op_fails_with_one_line_reason():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(), data_dependent_policy():
        x = torch.empty(8)
        with pytest.raises(FakeUnsupported, match=r"_local_scalar_dense.*depends on tensor values.*test_predict"):
            float(x.sum())
        with pytest.raises(FakeUnsupported, match=r"nonzero.*output shape depends on tensor values"):
            (x > 0).nonzero()


def test_backbones_from_shipped_configs_or_a_path(tmp_path):
    from torch._subclasses.fake_tensor import FakeTensorMode

    expected = {"t5-base": 109_628_544, "bert-base-uncased": 108_891_648}  # encoders, no pooler
    for name, n in expected.items():
        label, config, _ = backbone_config(name)
        with FakeTensorMode():
            assert sum(p.numel() for p in build_backbone(config, label, "cls").model.parameters()) == n
    (tmp_path / "config.json").write_text('{"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 1, '
                                          '"num_attention_heads": 2, "intermediate_size": 128}')
    label, config, pooling = backbone_config(str(tmp_path / "config.json"))
    assert config.hidden_size == 64 and pooling == "cls"


def test_cli_one_process_per_row_writes_memory_columns(tmp_path, capsys):
    out = tmp_path / "predicted.csv"
    rc = main(["backbone=tiny-t5", "batch_size=4", "max_length=16", "target=cpu", "steps=2", "methods=full,lora",
               f"out={out}", "jobs=2"])
    assert rc == 0
    import pandas as pd

    df = pd.read_csv(out)
    assert set(COLUMNS) - set(MEASURED_ONLY) <= set(df.columns) and set(df["source"]) == {"predicted"}
    assert list(df["variant"]) == ["full", "lora"] and df["ratio_to_full"].iloc[0] == 1.0
    assert "GiB = 1024^3" in capsys.readouterr().out


def test_compare_cuda_without_a_gpu_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["--compare-cuda", "backbone=tiny-bert"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a CUDA device" in err[0]


# --- bf16 predictions follow CUDA's autocast policy (benchmark/memory/autocast.py) ------------------------------
def _autocast_dtypes():
    x, w = torch.randn(4, 8, requires_grad=True), torch.randn(8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = x @ w
        return {"matmul": h.dtype, "softmax": torch.softmax(h, -1).dtype,
                "layer_norm": torch.nn.functional.layer_norm(h, (8,)).dtype, "pow": h.pow(2).dtype,
                "sum": h.sum(-1).dtype, "exp": h.exp().dtype, "log_softmax": torch.log_softmax(h, -1).dtype,
                "relu": h.relu().dtype}


def test_inside_the_cuda_policy_cpu_autocast_casts_as_cuda_does_and_only_there():
    from benchmark.memory.autocast import cuda_policy

    bf16, fp32 = torch.bfloat16, torch.float32
    cpu_rules = _autocast_dtypes()
    assert cpu_rules["softmax"] == cpu_rules["layer_norm"] == cpu_rules["pow"] == bf16  # what CPU autocast does
    with cuda_policy():
        cuda_rules = _autocast_dtypes()
    assert cuda_rules == {"matmul": bf16, "softmax": fp32, "layer_norm": fp32, "pow": fp32, "sum": fp32,
                          "exp": fp32, "log_softmax": fp32, "relu": bf16}
    assert _autocast_dtypes() == cpu_rules  # removed on exit


def test_a_bf16_cuda_prediction_holds_what_cuda_autocast_keeps_in_fp32(monkeypatch):
    """The same bf16 row predicted for CUDA with and without the policy: with it, the side network's layer
    norms and softmaxes on bf16 activations run in fp32 and what they save is fp32, so the peak is larger.
    (HF's BERT and T5 blocks cast to fp32 themselves; side networks and the losses are where it shows.)"""
    from contextlib import nullcontext

    from benchmark.memory import autocast

    row = {**TINY, "backbone": "tiny-bert", "method": "unipt", "precision": "bf16-mixed", "target": "cuda",
           "batch_size": "32", "max_length": "64"}  # activations dominate
    with_policy = simulate(row)["peak_train_bytes"]
    monkeypatch.setattr(autocast, "cuda_policy", nullcontext)
    without = simulate(row)["peak_train_bytes"]
    assert with_policy > without


# --- max_memory_reserved: CUDA's caching allocator replayed (benchmark/memory/caching.py) --------------------
MIB = 2**20


def test_the_caching_allocator_model_follows_the_documented_rules():
    from benchmark.memory.caching import CachingAllocatorModel

    m = CachingAllocatorModel()
    m.alloc("a", 1000)  # rounded to 1,024 B; small pool: a 2 MiB segment
    assert (m.allocated, m.reserved) == (1024, 2 * MIB)
    m.alloc("b", 3000)  # split off the same segment
    assert (m.allocated, m.reserved) == (1024 + 3072, 2 * MIB)
    for k in "cdef":  # large requests under 10 MiB: one 20 MiB segment, split while more than 1 MiB is left
        m.alloc(k, 5 * MIB)
    assert m.reserved == 22 * MIB and m.allocated == 4096 + 20 * MIB
    m.free("d"), m.free("e")  # neighbours: merged into one free 10 MiB block
    m.alloc("g", 9 * MIB)  # best fit: the 10 MiB block; 1 MiB left is not split off (it must exceed 1 MiB)
    assert m.reserved == 22 * MIB and m.allocated == 4096 + 10 * MIB + 10 * MIB
    m.alloc("h", 12 * MIB + 1)  # 10 MiB and more: its own segment, rounded up to 2 MiB
    assert m.reserved == 22 * MIB + 14 * MIB
    m.free("h")
    m.alloc("i", 13 * MIB)  # the cached 14 MiB block is reused: nothing new reserved
    assert m.reserved == m.peak_reserved == 36 * MIB
    assert m.peak_allocated == 4096 + 20 * MIB + 14 * MIB


def test_a_prediction_reports_what_cuda_would_reserve_and_nvidia_smi_show():
    from benchmark.memory.caching import CUDA_CONTEXT_BYTES

    row = simulate({**TINY, "backbone": "tiny-bert", "method": "lora", "target": "cuda"})
    assert row["peak_train_bytes"] <= row["predicted_allocated_bytes"] <= row["predicted_reserved_bytes"]
    assert row["predicted_reserved_bytes"] % (2 * MIB) == 0
    assert row["nvidia_smi_bytes"] == row["predicted_reserved_bytes"] + CUDA_CONTEXT_BYTES


def test_cublas_workspaces_are_one_per_thread_that_runs_cublas_and_count_as_allocated():
    """PyTorch keeps one cuBLAS workspace per thread's handle, from the caching allocator: a training step
    holds two (the caller's forward, autograd's device thread's backward), a no-grad forward one; on
    ``target=cuda`` the predicted allocated and reserved peaks include them, the tensors' peak does not."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from benchmark.memory.caching import CUBLAS_WORKSPACE_BYTES, CachingAllocatorModel, cublas_workspaces

    ws = CUBLAS_WORKSPACE_BYTES["sm90"]
    assert ws == 32 * MIB
    for grad, threads in ((True, ["caller", "autograd"]), (False, ["caller"])):
        m = CachingAllocatorModel()
        with FakeTensorMode():
            lin = torch.nn.Linear(64, 64)
            x = torch.randn(8, 64)
            with cublas_workspaces(m) as mode, torch.set_grad_enabled(grad):
                y = lin(x).relu().sum()
                if grad:
                    y.backward()
        assert mode.threads == threads
        assert m.allocated == m.peak_allocated == len(threads) * ws  # every tensor here is freed, they stay
    row = simulate({**TINY, "backbone": "tiny-bert", "method": "lora", "target": "cuda"})
    cpu = simulate({**TINY, "backbone": "tiny-bert", "method": "lora", "target": "cpu"})
    assert row["predicted_allocated_bytes"] >= row["peak_train_bytes"] + 2 * ws
    assert cpu["predicted_allocated_bytes"] < cpu["peak_train_bytes"] + ws  # no cuBLAS on a CPU target


def test_calibrate_holds_the_masks_the_reference_run_held(monkeypatch):
    """The reference batch has no padding: transformers gives SDPA the position bias alone ([1, heads, L, L]) on
    real tensors. A fake run must too, not a [batch, heads, L, L] mask per layer (about 1 GB at T5-base b100)."""
    import torch.nn.functional as F

    from benchmark.memory.calibrate import _reference_peak

    shapes, sdpa = [], F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        shapes.append((q.shape[2], k.shape[2], None if attn_mask is None else attn_mask.shape[0]))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    _reference_peak("frozen", "cuda", "plain", batch_size=3, max_length=8, target_length=2)
    assert shapes and all(batch == 1 for _, _, batch in shapes), shapes


def test_calibrate_predicts_the_reference_model_at_other_shapes_and_refuses_bad_ones(capsys):
    """The seq2seq reference (T5-base, LoRA r=32) at a small shape: a longer target holds more; reserved is
    at least the allocated peak; a bad option is one line, exit 2."""
    from benchmark.memory.calibrate import _reference_peak

    short = _reference_peak("lora-r32", "cuda", "plain", batch_size=2, max_length=8, target_length=2)
    long_ = _reference_peak("lora-r32", "cuda", "plain", batch_size=2, max_length=8, target_length=16)
    assert long_[0] > short[0] and all(t <= a <= r for t, a, r in (short, long_))
    assert main(["--calibrate", "precision=fp16"]) == 2
    assert main(["--calibrate", "target_length=0"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and "precision" in err and "target_length" in err


def test_compare_cuda_writes_a_table_of_allocator_figures_and_the_kernels_the_real_run_ran(tmp_path):
    """The comparison's rows, from a prediction and a real run (here a CPU one stands for the CUDA run): the
    allocated ratio uses the allocator model (blocks plus cuBLAS's workspaces), not the tensors' peak, and the
    real run's notes name the SDPA kernels ATen chose."""
    from benchmark.memory.predict import COMPARE_COLUMNS, compare_rows

    o = {**TINY, "backbone": "tiny-t5", "method": "lora"}
    predicted, real = simulate({**o, "target": "cuda"}), simulate(o, fake=False)
    assert "SDPA kernels: math x" in real["notes"] or "SDPA kernels: flash_attention x" in real["notes"]
    assert "SDPA kernels" not in predicted["notes"]
    real = {**real, "cuda_max_allocated": 2 * predicted["predicted_allocated_bytes"], "cuda_max_reserved": 10 ** 9}
    (row,) = compare_rows(["lora"], {("lora", "predicted"): ("ok", predicted), ("lora", "measured"): ("ok", real)})
    assert set(row) == set(COMPARE_COLUMNS) and row["allocated_ratio"] == 0.5
    assert row["predicted_allocated_bytes"] > row["predicted_tensors_bytes"] and row["sdpa_kernels"].startswith(("math", "flash"))
    (failed,) = compare_rows(["lora"], {("lora", "predicted"): ("ok", predicted), ("lora", "measured"): ("failed", "OOM")})
    assert failed["allocated_ratio"] is None and failed["error"] == "measured: OOM"
