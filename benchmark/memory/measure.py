"""``make memory``: peak training memory of every registered method, one fresh process per row.

Every row trains the same few steps at the same padded shape (batch x length) on the same task, so
the numbers differ only by method. Rows come from the registry: a method may list extra rows
(``variants``, e.g. 4-bit or ablation settings) and they join the table automatically.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmark.memory.table import format_table, row_overrides, select_rows, write_table

MARK = "METL_MEMORY_JSON "
DEFAULTS = {"backbone": "minilm", "batch_size": "32", "max_length": "128",
            "steps": "12"}  # 11 timed steps after the warm-up one: a median that holds to a few %


def measure_one(overrides: dict[str, str], instrument: str = "tracker") -> dict:
    """Train ``steps`` steps of one configuration (no validation) and print its memory as JSON, measured by
    ``instrument``: the tracker (and CUDA's allocator on a GPU), timed; or the CPU allocator
    (``allocator.py``), a pass of its own because profiling slows every op."""
    import lightning as L

    from benchmark.memory.allocator import AllocatorPeak
    from benchmark.memory.meter import MemoryMeter
    from benchmark.run import parameter_counts, plan, build_components

    steps = int(overrides.pop("steps", DEFAULTS["steps"]))
    batch = int(overrides.get("batch_size", DEFAULTS["batch_size"]))
    from tasks import default_task

    overrides = {"task": default_task().name, **{k: v for k, v in DEFAULTS.items() if k != "steps"}, **overrides,
                 "pad_to_max_length": "true", "limit_train_samples": str(batch * steps), "limit_eval_samples": "8",
                 "warmup_steps": "0", "wandb": "disabled"}
    p = plan(overrides)
    r = p.run
    if instrument != "tracker" and _on_cuda(r):  # CUDA's allocator is the primary figure there already
        row = {"variant": p.method_cls.row_label(r.method, r.variant), "allocator_peak_bytes": None}
        print(MARK + json.dumps(row), flush=True)
        return row
    L.seed_everything(r.seed, workers=True, verbose=False)
    dm, method, module = build_components(p)
    meter = MemoryMeter(track=True) if instrument == "tracker" else AllocatorPeak()
    trainer = L.Trainer(accelerator=r.accelerator, devices=r.devices_value(), strategy=r.strategy,
                        num_nodes=r.num_nodes, precision=r.precision, max_steps=steps, limit_val_batches=0,
                        callbacks=[meter], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    if instrument != "tracker":
        row = {"variant": p.method_cls.row_label(r.method, r.variant), "allocator_peak_bytes": meter.peak_bytes,
               "allocator_baseline_bytes": meter.baseline_bytes}
        print(MARK + json.dumps(row), flush=True)
        return row
    s = meter.summary()
    keys = ("peak_train_bytes", "peak_source", "tracker_peak_bytes", "cuda_max_allocated", "cuda_max_reserved",
            "step_seconds", "step_seconds_min", "device")
    row = {"method": r.method, "variant": p.method_cls.row_label(r.method, r.variant), **{k: s.get(k) for k in keys},
           **s.get("memory_breakdown", {}), **parameter_counts(module, method),
           "batch_size": r.batch_size, "max_length": r.max_length, "precision": r.precision,
           "backbone": p.backbone_label, "task": r.task}
    print(MARK + json.dumps(row), flush=True)
    return row


def _kept_rows(out: str | Path, overrides: dict[str, str]) -> list[dict]:
    """The measured rows of the table at ``out``, checked to be of the shape ``overrides`` asks for."""
    import pandas as pd

    from benchmark.errors import UserError

    try:
        df = pd.read_csv(out)
    except (OSError, ValueError) as e:
        raise UserError(f"--only allocator adds to an existing table: cannot read {out} ({type(e).__name__}); "
                        f"run make memory without --only first") from None
    want = {k: str(overrides.get(k, DEFAULTS.get(k, ""))) for k in ("backbone", "batch_size", "max_length")}
    have = {k: str(df[k].iloc[0]) for k in want}
    if have != want:
        raise UserError(f"--only allocator: {out} was measured at {have}, not {want}; give the same shape")
    df = df.astype(object).where(df.notna(), None)
    rows = [{k: v for k, v in r.items() if k not in ("allocator_peak_bytes", "allocator_to_tracker")}
            for r in df.to_dict("records")]
    for r in rows:  # a table from before the column: on CPU the tracker's peak is the peak
        if r.get("tracker_peak_bytes") is None and r.get("peak_source") == "tracker":
            r["tracker_peak_bytes"] = r["peak_train_bytes"]
    return rows


def _on_cuda(run) -> bool:
    import torch

    return run.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def measure_all(overrides: dict[str, str], methods: list[str] | None = None,
                out: str | Path = "results/memory.csv", only: str = "") -> int:
    """Every row (or those named in ``methods``) in its own process, one after another (rows are timed:
    never two at once); on CPU a second process per row reads the allocator (``allocator.py``) beside the
    tracker. ``only="allocator"``: the allocator passes alone, added to the rows of the table already at
    ``out`` (measured at the same shape; its timed tracker rows are kept). A bad input (exit code 2) stops
    at once."""
    from benchmark import jobs

    rows = select_rows(methods)
    env = {"WANDB_MODE": "disabled"}
    kept = _kept_rows(out, overrides) if only == "allocator" else None

    def job(label, method, instrument):
        return jobs.Job(f"{label} ({instrument})", [
            sys.executable, "-m", "benchmark", "memory", "--one", "--instrument", instrument,
            *(f"{k}={v}" for k, v in row_overrides(overrides, label, method).items())], env=env, data=label)

    passes = ("allocator",) if kept is not None else ("tracker", "allocator")
    todo = [job(label, method, p) for label, method, _ in rows for p in passes]
    results, allocator, failures = list(kept or []), {}, []

    def done(i: int, d: jobs.Done) -> None:
        line = next((ln for ln in d.stdout.splitlines() if ln.startswith(MARK)), None)
        if d.returncode == 2:
            print(d.last_line() or "no output", file=sys.stderr)
        elif d.returncode != 0 or line is None:
            failures.append((d.job.name, d.last_line() or "no output"))
            print(f"  failed: {failures[-1][1]}", file=sys.stderr)
        elif d.job.name.endswith("(allocator)"):
            allocator[d.job.data] = json.loads(line[len(MARK):])
        else:
            results.append(json.loads(line[len(MARK):]))

    def start(i: int, j: jobs.Job) -> None:
        print(f"measuring {j.name} ...", flush=True)

    finished = jobs.run(todo, workers=1, stop_on=2, on_start=start, on_done=done)
    if any(d.returncode == 2 for d in finished):  # a bad input is the same for every row
        return 2
    if not results:
        print("no memory row could be measured", file=sys.stderr)
        return 1
    for r in results:
        a = allocator.get(r["variant"], {})
        r["allocator_peak_bytes"] = a.get("allocator_peak_bytes")
        r["allocator_to_tracker"] = (a["allocator_peak_bytes"] / r["tracker_peak_bytes"]
                                     if a.get("allocator_peak_bytes") and r.get("tracker_peak_bytes") else None)
    df = write_table(results, out)
    print(format_table(df))
    print(f"\npeak training memory: bytes of live tensors ({df['peak_source'].iloc[0]}), GiB = 1024^3 bytes; "
          f"batch {df['batch_size'].iloc[0]}, length {df['max_length'].iloc[0]}, {df['precision'].iloc[0]}, "
          f"{df['device'].iloc[0]}; allocator: the CPU allocator's peak read by the profiler, a second pass"
          f"\nwritten: {out}")
    for label, err in failures:
        print(f"failed row {label}: {err}", file=sys.stderr)
    return 1 if failures else 0
