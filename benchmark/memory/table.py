"""The memory rows (every registered method and each of its variants) and the one table that both
``make memory`` (measured) and ``make memory PREDICT=1`` (predicted) write and print."""
from __future__ import annotations

import math
from pathlib import Path

from benchmark.errors import UserError

COLUMNS = ["method", "variant", "peak_train_bytes", "peak_train_gib", "ratio_to_full", "weights", "grads",
           "optimizer", "activations", "other", "trainable_params", "backbone_storage_bytes", "step_seconds",
           "step_seconds_min", "step_ratio_to_plain", "peak_source", "tracker_peak_bytes", "allocator_peak_bytes", "allocator_to_tracker",
           "cuda_max_allocated", "cuda_max_reserved", "batch_size", "max_length",
           "precision", "backbone", "device", "task"]
MEASURED_ONLY = ["tracker_peak_bytes", "allocator_peak_bytes", "allocator_to_tracker"]  # make memory's two instruments
PREDICTED_COLUMNS = ["predicted_allocated_bytes", "predicted_reserved_bytes", "nvidia_smi_bytes", "source", "target", "steps", "notes", "error", "sim_seconds"]  # after COLUMNS
INT_COLUMNS = ["peak_train_bytes", "weights", "grads", "optimizer", "activations", "other", "trainable_params",
               "backbone_storage_bytes", "tracker_peak_bytes", "allocator_peak_bytes", "cuda_max_allocated", "cuda_max_reserved", "batch_size", "max_length", "steps",
               "predicted_allocated_bytes", "predicted_reserved_bytes", "nvidia_smi_bytes"]
BREAKDOWN = ("weights", "grads", "optimizer", "activations", "other")


def reference_row_label() -> str:
    """The row every ``ratio_to_full`` divides by."""
    from methods import reference_method

    return reference_method().name


def memory_rows() -> list[tuple[str, str, dict[str, str]]]:
    """(row label, method name, method overrides) for every registered method and its variants."""
    from methods import METHODS

    from methods.base import GENERIC_VARIANTS

    rows = []
    for name, cls in METHODS.items():
        rows.append((name, name, {}))
        for variant, extra in cls.variants.items():
            rows.append((cls.row_label(name, variant), name, dict(extra)))
        for variant, extra in GENERIC_VARIANTS.items():  # every method's (checkpointing): "<method>@<variant>"
            rows.append((f"{name}@{variant}", name, dict(extra)))
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


def row_overrides(overrides: dict[str, str], label: str, method: str) -> dict[str, str]:
    """A row's run overrides: ``method=`` and, for a variant row, ``variant=``."""
    variant = "" if label == method else label.removeprefix(f"{method}@")
    return {**overrides, "method": method, "variant": variant}


def write_table(rows: list[dict], out: str | Path, failed: list[dict] = (), predicted: bool = False):
    """The table of ``rows`` (largest peak first, ratios to the reference row; ``failed`` rows after,
    with their error), written to ``out`` as csv; returns it (a DataFrame)."""
    import pandas as pd

    from benchmark.results import atomic_write

    df = pd.DataFrame(rows)
    ref = df.loc[df["variant"] == reference_row_label(), "peak_train_bytes"]
    df["ratio_to_full"] = df["peak_train_bytes"] / ref.iloc[0] if len(ref) else float("nan")
    df["peak_train_gib"] = df["peak_train_bytes"] / 2**30
    if "step_seconds" in df.columns:  # what a generic variant (checkpointing, adamw8bit) costs in time
        df["step_ratio_to_plain"] = [_ratio_to_plain(df, r) for _, r in df.iterrows()]
    df = df.sort_values("peak_train_bytes", ascending=False)
    if failed:
        df = pd.concat([df, pd.DataFrame(list(failed))], ignore_index=True)
    df = df[[c for c in COLUMNS + (PREDICTED_COLUMNS if predicted else []) if c in df.columns]]
    if predicted:
        for c in INT_COLUMNS:  # stay integers (bytes) beside the empty cells of failed rows
            if c in df.columns:
                df[c] = df[c].astype("Int64")
    atomic_write(out, lambda f: df.to_csv(f, index=False), binary=False)
    return df


def _ratio_to_plain(df, r) -> float | None:
    """A ``<method>@<generic variant>`` row's median step time over its plain ``<method>`` row's."""
    from methods import GENERIC_VARIANTS

    method, _, variant = str(r["variant"]).partition("@")
    plain = df.loc[df["variant"] == method, "step_seconds"]
    if variant not in GENERIC_VARIANTS or plain.empty or not r.get("step_seconds") or not plain.iloc[0]:
        return None
    return float(r["step_seconds"]) / float(plain.iloc[0])


def format_table(df) -> str:
    """The table as markdown-style rows: GiB per category, then step times (measured) or notes
    (predicted, where a failed row says why)."""
    predicted = "source" in df.columns
    gib = lambda b: "" if b is None or (isinstance(b, float) and math.isnan(b)) else f"{b / 2**30:.3f}"  # noqa: E731
    head = ["row", "peak GiB", "ratio to full", *BREAKDOWN, "trainable",
            *(["reserved GiB", "nvidia-smi GiB", "notes"] if predicted else ["step s (median)", "step s (min)", "step time / plain row", "allocator GiB", "allocator / tracker"])]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for _, r in df.iterrows():
        if isinstance(r.get("error"), str) and r["error"]:
            lines.append(" | ".join([r["variant"], f"failed: {r['error']}"] + [""] * (len(head) - 2)))
            continue
        cells = [r["variant"], gib(r["peak_train_bytes"]), f"{r['ratio_to_full']:.2f}",
                 *(gib(r.get(k, 0) or 0) for k in BREAKDOWN), f"{int(r['trainable_params']):,}"]
        if predicted:
            cells += [gib(r.get("predicted_reserved_bytes")), gib(r.get("nvidia_smi_bytes")), r.get("notes") or ""]
        else:
            ratio = r.get("allocator_to_tracker")
            step_ratio = r.get("step_ratio_to_plain")
            cells += [f"{(r['step_seconds'] or 0):.3f}", f"{(r.get('step_seconds_min') or 0):.3f}",
                      "" if step_ratio is None or step_ratio != step_ratio else f"{step_ratio:.2f}x",
                      gib(r.get("allocator_peak_bytes")), "" if ratio is None or ratio != ratio else f"{ratio:.4f}"]
        lines.append(" | ".join(cells))
    return "\n".join(lines)
