"""Figures from the committed results only (``results/runs``, ``results/memory.csv``,
``results/quantization.csv``), so anyone can redraw them without a GPU or a training run.

(a) score vs peak training memory per task, version, backbone, budget and device (the paper's teaser, ours
highlighted: ``names.OURS``), (b) the memory breakdown of every ``memory.csv`` row, (c) quantization error
vs bits (``names.OURS_QUANTIZER`` highlighted), (d) learning curves from the records' ``val_curve``. A missing or unreadable input skips its figure with a note;
it never fails the command. Plot functions return the ``Figure`` (tests read labels from it);
``write_figures`` saves small PNGs and a ``figures.json`` manifest that the HTML page (``publish.page``) reads.
"""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from benchmark.publish.fmt import GIB, is_percent, isnan
from benchmark.publish.leaderboard import PARETO_GROUP, build_leaderboard, current_records, is_ablation_row
from benchmark.publish.names import ABLATION_ROWS, OURS, OURS_QUANTIZER, QUANT_TITLE, is_alternative
from benchmark.results import BREAKDOWN, atomic_write_text, budget_label, load_results, method_label, slug

DPI = 120
PLAIN = FuncFormatter(lambda v, _: f"{v:g}")
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
ALT_COLORS = ["#17becf", "#008080", "#5fd3bc", "#2f6f8f", "#66c2a5", "#1b9e77"]  # memory alternatives
OURS_COLORS = ["#d62728", "#8b0000", "#ff7f7f", "#e6550d", "#b03060", "#fd8d3c"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
PART_COLORS = {"weights": "#4c72b0", "grads": "#dd8452", "optimizer": "#55a868", "activations": "#c44e52",
               "other": "#8c8c8c"}
PART_LABELS = {"weights": "weights", "grads": "gradients", "optimizer": "optimizer state",
               "activations": "activations", "other": "other"}


def _figure(width: float = 7.5, height: float = 4.8) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    return fig


# --- (a) score vs memory ---------------------------------------------------------------------------
def _seeds(g: pd.DataFrame) -> str:
    lo, hi = int(g["n"].min()), int(g["n"].max())
    return f"n = {lo} seed{'s' if lo != 1 else ''} per method" if lo == hi else f"n = {lo}–{hi} seeds per method"


def accuracy_memory_figure(group: pd.DataFrame) -> Figure:
    """One task x version x backbone x budget x device: each method a labelled point with ±std bars, the Pareto
    front as a step line. ``group`` is a slice of ``build_leaderboard``'s table."""
    g = group.sort_values("peak_train_gib")
    higher = bool(g["higher_is_better"].iloc[0])
    percent = is_percent(higher, *g["score_mean"])
    scale = 100.0 if percent else 1.0
    fig = _figure(10.5, 4.8)  # the legend sits beside the axes
    ax = fig.add_subplot()
    mem = g["peak_train_gib"]
    log = len(g) > 1 and mem.min() > 0 and mem.max() / mem.min() >= 4
    y_span = float(g["score_mean"].max() - g["score_mean"].min()) * scale or 1.0
    x_span = float(mem.max() - mem.min()) or 1.0

    def near(x, y, x2, y2) -> bool:
        close_x = max(x, x2) / max(min(x, x2), 1e-12) < 5 if log else abs(x - x2) < 0.25 * x_span
        return close_x and abs(y - y2) < 0.05 * y_span

    placed: list[tuple[float, float]] = []
    n_ours = n_alt = 0
    for i, (_, r) in enumerate(g.iterrows()):
        alt = is_alternative(r["method"])
        ours = not alt and str(r["method"]).split("@")[0] == OURS
        std = r["score_std"]
        color = (ALT_COLORS[n_alt % len(ALT_COLORS)] if alt else
                 OURS_COLORS[n_ours % len(OURS_COLORS)] if ours else COLORS[i % len(COLORS)])
        n_ours += ours
        n_alt += alt
        ax.errorbar([r["peak_train_gib"]], [r["score_mean"] * scale],
                    yerr=None if isnan(std) else [[std * scale], [std * scale]],
                    fmt="*" if ours else MARKERS[i % len(MARKERS)], markersize=14 if ours else 7,
                    color=color, capsize=3, zorder=3, mfc="none" if alt else color,
                    label=f"{r['method']} (n={int(r['n'])}){' — memory alternative' if alt else ''}")
        x, y = r["peak_train_gib"], r["score_mean"] * scale
        stack = sum(near(x, y, x2, y2) for x2, y2 in placed)  # labels of nearby points go one line up each
        placed.append((x, y))
        ax.annotate(str(r["method"]), (x, y), textcoords="offset points", xytext=(6, 5 + 12 * stack), fontsize=8,
                    fontweight="bold" if ours else "normal")
    front = g[g["pareto"].astype(bool)].sort_values("peak_train_gib")
    if len(front):
        # Held flat to the largest memory: everything below the line and right of a front point is dominated.
        xs = list(front["peak_train_gib"]) + [g["peak_train_gib"].max()]
        ys = list(front["score_mean"] * scale) + [front["score_mean"].iloc[-1] * scale]
        ax.step(xs, ys, where="post", color="black", alpha=0.55,
                linestyle="--", linewidth=1.2, zorder=2, label="Pareto front")
        ax.scatter(front["peak_train_gib"], front["score_mean"] * scale, s=170, facecolors="none",
                   edgecolors="black", linewidths=1.0, zorder=4)
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(PLAIN)  # 0.2, not 2x10^-1
        ax.xaxis.set_minor_formatter(PLAIN)
        ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(f"peak training memory (GiB{', log scale' if log else ''})")
    ax.set_ylabel(f"test score{' (%)' if percent else ''}, mean ± std"
                  + ("" if higher else " (lower is better)"))
    r0 = g.iloc[0]
    ax.set_title(f"{r0['task']} v{r0['task_version']} · {r0['backbone']} · {r0['device']}\n"
                 f"budget {r0['budget']}; {_seeds(g)}; "
                 f"○ = Pareto front" + ("; hollow teal = memory alternatives" if n_alt else ""), fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.margins(x=0.12, y=0.15)
    # beside the axes: with the memory alternatives there are too many rows for a free corner inside
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


# --- (b) memory breakdown ----------------------------------------------------------------------------
MEMORY_GROUP = ["backbone", "batch_size", "max_length", "precision", "device"]


def _row_label(r: pd.Series) -> str:
    variant = r.get("variant")
    return str(r["method"]) if isnan(variant) or variant in ("", r["method"]) else f"{r['method']}@{variant}"


def memory_breakdown_figure(rows: pd.DataFrame) -> Figure:
    """Stacked horizontal bars (GiB) of weights, gradients, optimizer state, activations and other for one
    backbone/batch/length/precision/device; a tick marks each row's measured peak."""
    rows = rows.sort_values("peak_train_bytes", ascending=True)
    labels = [_row_label(r) for _, r in rows.iterrows()]
    fig = _figure(7.5, max(2.8, 0.42 * len(rows) + 1.8))
    ax = fig.add_subplot()
    left = [0.0] * len(rows)
    for part in BREAKDOWN:
        values = [0.0 if isnan(v) else float(v) / GIB
                  for v in (rows[part] if part in rows else [float("nan")] * len(rows))]
        ax.barh(labels, values, left=left, color=PART_COLORS[part], label=PART_LABELS[part], height=0.65)
        left = [a + b for a, b in zip(left, values)]
    peaks = [float(v) / GIB for v in rows["peak_train_bytes"]]
    ax.scatter(peaks, labels, marker="|", s=250, color="black", zorder=3, label="measured peak")
    for y, p in enumerate(peaks):
        ax.annotate(f"{p:.2f}", (max(p, left[y]), y), textcoords="offset points", xytext=(5, -3), fontsize=7)
    r0 = rows.iloc[0]
    source = ", ".join(sorted({str(s) for s in rows.get("peak_source", pd.Series(dtype=str)).dropna()}))
    ax.set_xlabel("peak training memory (GiB)")
    ax.set_ylabel("method (or method@variant)")
    ax.set_title(f"Memory at the training peak: {r0['backbone']}\nbatch {r0['batch_size']}, length "
                 f"{r0['max_length']}, {r0['precision']}, {r0['device']}" + (f" ({source})" if source else ""),
                 fontsize=10)
    ax.margins(x=0.12)
    ax.grid(True, axis="x", alpha=0.25)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


# --- (c) quantization error --------------------------------------------------------------------------
def quantization_figure(q: pd.DataFrame) -> Figure:
    """Weight MSE and MSE relative to round-to-nearest vs bits, per quantizer (log y), one group size."""
    fig = _figure(10, 4.3)
    ax_mse, ax_ratio = fig.subplots(1, 2)
    for i, (name, g) in enumerate(q.sort_values("bits").groupby("quantizer", sort=True)):
        style = dict(marker=MARKERS[i % len(MARKERS)], color="#d62728" if name == OURS_QUANTIZER else COLORS[i % len(COLORS)],
                     linewidth=2.2 if name == OURS_QUANTIZER else 1.3, label=str(name))
        ax_mse.plot(g["bits"], g["mse"], **style)
        if "mse_ratio_to_rtn" in g:
            ax_ratio.plot(g["bits"], g["mse_ratio_to_rtn"], **style)
    ax_ratio.axhline(1.0, color="black", linestyle=":", linewidth=1, label="= round-to-nearest")
    bits = sorted({int(b) for b in q["bits"]})
    for ax in (ax_mse, ax_ratio):
        ax.set_yscale("log")
        ax.set_xticks(bits)
        ax.set_xlabel("bits per weight (n)")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    ax_mse.set_ylabel("weight MSE (mean squared error, log scale)")
    ax_mse.set_title("quantization error", fontsize=10)
    ax_ratio.yaxis.set_major_formatter(PLAIN)  # 0.9, not 9x10^-1
    ax_ratio.yaxis.set_minor_formatter(PLAIN)
    ax_ratio.tick_params(axis="y", which="minor", labelsize=7)
    ax_ratio.set_ylabel("MSE / round-to-nearest MSE (log scale)")
    ax_ratio.set_title("relative to round-to-nearest (lower is better)", fontsize=10)
    r0 = q.iloc[0]
    what = f"group size {r0['group_size']}"
    if "layers" in q and "weights" in q:
        what += f", {int(r0['layers'])} layers, {int(r0['weights']):,} weights"
    fig.suptitle(f"{QUANT_TITLE} ({what})", fontsize=11)
    fig.tight_layout()
    return fig


# --- writing -----------------------------------------------------------------------------------------
# --- (d) learning curves ---------------------------------------------------------------------------
def curve_groups(records: list[dict]) -> dict[tuple, dict[str, list[list[dict]]]]:
    """(task, version, backbone, budget, device, higher_is_better) -> method label -> one ``val_curve`` per
    seed, from the runs the leaderboard averages (ablation rows and runs without a curve left out)."""
    groups: dict[tuple, dict[str, list[list[dict]]]] = {}
    for rec in current_records(records):
        run, metrics = rec["run"], rec["metrics"]
        label = method_label(run)
        if not metrics.get("val_curve") or label.startswith(ABLATION_ROWS):
            continue
        key = (run["task"], run["task_version"], run["backbone"], budget_label(run), rec["efficiency"]["device"],
               bool(metrics["higher_is_better"]))
        groups.setdefault(key, {}).setdefault(label, []).append(metrics["val_curve"])
    return groups


def _mean_curve(curves: list[list[dict]]) -> list[tuple[float, float, float, float]]:
    """(step, seconds, mean score, std score) per validation index, over the seeds that reached it (an
    until-plateau run that stopped early simply ends sooner)."""
    out = []
    for i in range(max(len(c) for c in curves)):
        points = [c[i] for c in curves if len(c) > i]
        scores = [p["score"] for p in points]
        out.append((statistics.fmean(p["step"] for p in points), statistics.fmean(p["seconds"] for p in points),
                    statistics.fmean(scores), statistics.stdev(scores) if len(scores) > 1 else 0.0))
    return out


def learning_curve_figure(key: tuple, methods: dict[str, list[list[dict]]]) -> Figure:
    """Each method's validation score vs training steps and vs wall-clock seconds, mean over seeds with a
    ±1 std band: which method is slow to start and which is worse at the end."""
    task, version, backbone, budget, device, higher_is_better = key
    means = {m: _mean_curve(c) for m, c in sorted(methods.items())}
    percent = is_percent(higher_is_better, *(p[2] for pts in means.values() for p in pts))
    scale = 100.0 if percent else 1.0
    fig = _figure(11, 4.4)
    axes = fig.subplots(1, 2, sharey=True)
    for i, (method, pts) in enumerate(means.items()):
        ours = method.split("@")[0] == OURS
        color = OURS_COLORS[0] if ours else COLORS[i % len(COLORS)]
        n = len(methods[method])
        for ax, x in zip(axes, (0, 1)):
            xs = [p[x] for p in pts]
            ax.plot(xs, [p[2] * scale for p in pts], marker="o", markersize=3, color=color,
                    linewidth=2.2 if ours else 1.3, label=f"{method} (n={n})")
            if n > 1:
                ax.fill_between(xs, [(p[2] - p[3]) * scale for p in pts], [(p[2] + p[3]) * scale for p in pts],
                                color=color, alpha=0.15, linewidth=0)
    axes[0].set_xlabel("training steps")
    axes[1].set_xlabel("wall-clock seconds since training began")
    axes[0].set_ylabel(f"validation score{' (%)' if percent else ''}")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(f"Learning curves — {task} v{version}, {backbone}, budget {budget}, {device}\n"
                 f"mean over seeds, band ±1 std", fontsize=10)
    fig.tight_layout()
    return fig


def _read_csv(path: Path, needed: list[str]) -> pd.DataFrame | None:
    """The CSV, or None with a printed note when it is missing, unreadable or lacks a needed column."""
    if not path.is_file():
        print(f"figures: skipped {path.name}: {path} not found")
        return None
    try:
        df = pd.read_csv(path)
    except Exception as e:  # a half-written or hand-edited file must not stop the other figures
        print(f"figures: skipped {path.name}: unreadable ({type(e).__name__}: {e})")
        return None
    missing = [c for c in needed if c not in df.columns]
    if missing or df.empty:
        print(f"figures: skipped {path.name}: " + (f"no column {', '.join(missing)}" if missing else "no rows"))
        return None
    return df


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=DPI, format="png")
    os.replace(tmp, path)
    return path


def scale_figure(comp) -> Figure:
    """A ``budgets.compare(axis="backbone")`` comparison: each method's score and peak memory on the small
    backbone (hollow) and the large one (filled), joined by an arrow; ranks in the labels."""
    fig = _figure(9.0, 5.0)
    ax = fig.add_subplot()
    t = comp.table
    for i, r in enumerate(t.itertuples()):
        color = OURS_COLORS[0] if r.method == OURS else COLORS[i % len(COLORS)]
        x0, y0, x1, y1 = r.before_gib, 100 * r.before_mean, r.after_gib, 100 * r.after_mean
        ax.scatter([x0], [y0], facecolors="none", edgecolors=color, s=40)
        ax.scatter([x1], [y1], color=color, s=40, label=f"{r.method} (#{r.before_rank} -> #{r.after_rank})")
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops={"arrowstyle": "->", "color": color, "lw": 1})
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(PLAIN)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("peak training memory (GiB, log)")
    ax.set_ylabel("test score (%)" if comp.split == "test" else "best validation score (%)")
    ax.set_title(f"{comp.task}: {comp.before} (hollow) -> {comp.after} (filled)", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def write_figures(results_dir: str | os.PathLike = "results", out: str | os.PathLike | None = None, *,
                  df: pd.DataFrame | None = None, report=None, records: list[dict] | None = None) -> list[Path]:
    """Draw every figure the inputs allow into ``out`` (default ``<results_dir>/figures``); return the PNGs.
    ``df``/``report``/``records``: the leaderboard and the records already read from ``<results_dir>/runs``
    (else read here)."""
    results_dir = Path(results_dir)
    out = Path(out) if out is not None else results_dir / "figures"
    entries: list[dict] = []

    def emit(make, name: str, kind: str, **meta) -> None:
        try:
            fig = make()
        except Exception as e:  # one bad group never costs the others
            print(f"figures: skipped {name}: {type(e).__name__}: {e}")
            return
        _save(fig, out / name)
        title = fig.get_suptitle() or fig.axes[0].get_title()
        entries.append({"file": name, "kind": kind, "title": title.replace("\n", " — "), **meta})

    if df is None or records is None:
        records, bad = load_results(results_dir)
        df, report = build_leaderboard(records, bad) if df is None else (df, report)
    if df.empty:
        print(f"figures: skipped score vs memory: no ok runs under {results_dir / 'runs'}"
              + (f" ({report.lines()[0]})" if report.dropped else ""))
    else:
        print(f"figures: {report.lines()[0]}")
        df = df[~is_ablation_row(df)]  # they have tables of their own
        for (task, version, backbone, budget, device), g in df.groupby(PARETO_GROUP, sort=True):
            name = f"score_vs_memory__{slug(task)}-v{version}__{slug(backbone)}__{slug(budget)}__{slug(device)}.png"
            emit(lambda g=g: accuracy_memory_figure(g), name, "score_vs_memory", task=task, backbone=backbone,
                 budget=budget, device=device, version=int(version))

    for key, methods in sorted(curve_groups(records).items()):
        task, version, backbone, budget, device, _ = key
        name = f"learning_curves__{slug(task)}-v{version}__{slug(backbone)}__{slug(budget)}__{slug(device)}.png"
        emit(lambda k=key, m=methods: learning_curve_figure(k, m), name, "learning_curves", task=task,
             backbone=backbone, budget=budget, device=device, version=int(version))

    from benchmark.publish.budgets import SCALE_DEFAULTS, compare

    small, large, budget = SCALE_DEFAULTS
    for comp in compare(records, small, large, results_dir=results_dir, axis="backbone", budget=budget):
        name = f"scale__{slug(comp.task)}__{slug(comp.before)}__{slug(comp.after)}__{slug(comp.device)}.png"
        emit(lambda c=comp: scale_figure(c), name, "scale", task=comp.task, device=comp.device)

    mem = _read_csv(results_dir / "memory.csv", ["method", "peak_train_bytes"] + MEMORY_GROUP)
    if mem is not None:
        for key, g in mem.groupby(MEMORY_GROUP, sort=True, dropna=False):
            backbone, batch, length, precision, device = key
            name = f"memory_breakdown__{slug(str(backbone))}__b{batch}-l{length}-{slug(str(precision))}__" \
                   f"{slug(str(device))}.png"
            emit(lambda g=g: memory_breakdown_figure(g), name, "memory_breakdown", backbone=str(backbone),
                 device=str(device))

    quant = _read_csv(results_dir / "quantization.csv", ["quantizer", "bits", "group_size", "mse"])
    if quant is not None and "tensors" in quant:
        quant = quant[quant["tensors"].fillna("linear") == "linear"]  # the LayerNorm rows are a table check
    if quant is not None:
        sizes = sorted(quant["group_size"].unique())
        for size in sizes:
            name = "quantization_error.png" if len(sizes) == 1 else f"quantization_error__g{size}.png"
            emit(lambda s=size: quantization_figure(quant[quant["group_size"] == s]), name, "quantization")

    manifest = out / "figures.json"
    written = {e["file"] for e in entries}
    try:  # figures of groups that no longer exist would otherwise linger on the page
        for old in json.loads(manifest.read_text(encoding="utf-8")):
            stale = out / str(old.get("file", ""))
            if old.get("file") not in written and stale.suffix == ".png" and stale.parent == out and stale.is_file():
                stale.unlink()
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    if entries:
        atomic_write_text(manifest, json.dumps(entries, indent=1) + "\n")
    return [out / e["file"] for e in entries]
