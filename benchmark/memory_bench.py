"""``make memory``: peak training memory of every registered method, one fresh process per row.

Every row trains the same few steps at the same padded shape (batch x length) on the same task, so
the numbers differ only by method. Rows come from the registry: a method may list extra rows
(``variants``, e.g. 4-bit or ablation settings) and they join the table automatically.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmark.errors import UserError

MARK = "METL_MEMORY_JSON "
DEFAULTS = {"backbone": "minilm", "task": "rotten_tomatoes", "batch_size": "32", "max_length": "128",
            "steps": "12"}  # 11 timed steps after the warm-up one: a median that holds to a few %
COLUMNS = ["method", "variant", "peak_train_bytes", "peak_train_gib", "ratio_to_full", "weights", "grads",
           "optimizer", "activations", "other", "trainable_params", "backbone_storage_bytes", "step_seconds",
           "step_seconds_min", "peak_source", "cuda_max_allocated", "cuda_max_reserved", "batch_size", "max_length", "precision",
           "backbone", "device", "task"]


def memory_rows() -> list[tuple[str, str, dict[str, str]]]:
    """(row label, method name, method overrides) for every registered method and its variants."""
    import methods  # noqa: F401
    from methods.base import METHODS

    rows = []
    for name, cls in METHODS.items():
        rows.append((name, name, {}))
        for label, extra in cls.variants.items():
            rows.append((label, name, dict(extra)))
    return rows


def select_rows(methods: list[str] | None) -> list[tuple[str, str, dict[str, str]]]:
    """The memory rows named in ``methods`` (all when None); an unknown name lists the valid ones."""
    rows = memory_rows()
    if methods:
        known = {label for label, _, _ in rows}
        unknown = [m for m in methods if m not in known]
        if unknown:
            raise UserError(f"unknown memory row {unknown[0]!r}; valid rows: {', '.join(sorted(known))}")
        rows = [r for r in rows if r[0] in methods]
    return rows


def measure_one(overrides: dict[str, str]) -> dict:
    """Train ``steps`` steps of one configuration (no validation) and print its memory as JSON."""
    import lightning as L

    from benchmark.memory import MemoryMeter
    from benchmark.run import parameter_counts, plan, build_components

    steps = int(overrides.pop("steps", DEFAULTS["steps"]))
    batch = int(overrides.get("batch_size", DEFAULTS["batch_size"]))
    overrides = {**{k: v for k, v in DEFAULTS.items() if k != "steps"}, **overrides,
                 "pad_to_max_length": "true", "limit_train_samples": str(batch * steps), "limit_eval_samples": "8",
                 "warmup_steps": "0", "wandb": "disabled"}
    p = plan(overrides)
    r = p.run
    L.seed_everything(r.seed, workers=True, verbose=False)
    dm, method, module = build_components(p)
    meter = MemoryMeter(track=True)
    trainer = L.Trainer(accelerator=r.accelerator, devices=r.devices_value(), strategy=r.strategy,
                        num_nodes=r.num_nodes, precision=r.precision, max_steps=steps, limit_val_batches=0,
                        callbacks=[meter], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    s = meter.summary()
    row = {"method": r.method, "variant": r.variant or r.method, **{k: s.get(k) for k in ("peak_train_bytes", "peak_source",
           "cuda_max_allocated", "cuda_max_reserved", "step_seconds", "step_seconds_min",
                                                                      "device")},
           **s.get("memory_breakdown", {}), **parameter_counts(module, method),
           "batch_size": r.batch_size, "max_length": r.max_length, "precision": r.precision, "backbone": p.backbone_label, "task": r.task}
    print(MARK + json.dumps(row), flush=True)
    return row


def measure_all(overrides: dict[str, str], methods: list[str] | None = None,
                out: str | Path = "results/memory.csv") -> int:
    import pandas as pd

    rows = select_rows(methods)
    results, failures = [], []
    for label, method, extra in rows:
        args = [f"{k}={v}" for k, v in {**overrides, "method": method, "variant": "" if label == method else label}.items()]
        print(f"measuring {label} ...", flush=True)
        proc = subprocess.run([sys.executable, "-m", "benchmark", "memory", "--one", *args],
                              capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)), None)
        if proc.returncode != 0 or line is None:
            err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            if proc.returncode == 2:  # a bad input is the same for every row: stop at once
                print(err, file=sys.stderr)
                return 2
            failures.append((label, err))
            print(f"  failed: {err}", file=sys.stderr)
            continue
        results.append(json.loads(line[len(MARK):]))
    if not results:
        print("no memory row could be measured", file=sys.stderr)
        return 1
    df = pd.DataFrame(results)
    full = df.loc[df["variant"] == "full", "peak_train_bytes"]
    df["ratio_to_full"] = df["peak_train_bytes"] / full.iloc[0] if len(full) else float("nan")
    df["peak_train_gib"] = df["peak_train_bytes"] / 2**30
    df = df.sort_values("peak_train_bytes", ascending=False)[[c for c in COLUMNS if c in df.columns]]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, out)
    print(format_table(df))
    print(f"\npeak training memory: bytes of live tensors ({df['peak_source'].iloc[0]}), GiB = 1024^3 bytes; "
          f"batch {df['batch_size'].iloc[0]}, length {df['max_length'].iloc[0]}, {df['precision'].iloc[0]}, "
          f"{df['device'].iloc[0]}\nwritten: {out}")
    for label, err in failures:
        print(f"failed row {label}: {err}", file=sys.stderr)
    return 1 if failures else 0


def format_table(df) -> str:
    gib = lambda b: f"{b / 2**30:.3f}"  # noqa: E731
    head = ["row", "peak GiB", "ratio to full", "weights", "grads", "optimizer", "activations", "other",
            "trainable", "step s (median)", "step s (min)"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for _, r in df.iterrows():
        lines.append(" | ".join([r["variant"], gib(r["peak_train_bytes"]), f"{r['ratio_to_full']:.2f}",
                                 *(gib(r.get(k, 0) or 0) for k in ("weights", "grads", "optimizer", "activations",
                                                                   "other")),
                                 f"{int(r['trainable_params']):,}", f"{(r['step_seconds'] or 0):.3f}",
                                 f"{(r.get('step_seconds_min') or 0):.3f}"]))
    return "\n".join(lines)
