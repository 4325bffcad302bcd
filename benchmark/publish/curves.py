"""Learning curves: each method's validation score against training steps and against wall-clock seconds,
mean over seeds with a ±1 std band, one figure per (task, version, backbone, budget, device). They show what
a single end-of-budget number hides: which method is slow to start and which is worse at the end.

Read from the records' ``metrics.val_curve`` (kept since issue 19); records without one are left out.
Seeds are aligned by validation index (an until-plateau run that stopped early simply ends sooner)."""
from __future__ import annotations

import statistics
from collections import defaultdict

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmark.publish.fmt import is_percent
from benchmark.publish.names import ABLATION_ROWS, OURS
from benchmark.results import budget_label, method_label

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def curve_groups(records: list[dict]) -> dict[tuple, dict[str, list[list[dict]]]]:
    """(task, version, backbone, budget, device, higher_is_better) -> method label -> one curve per seed
    (ok runs only)."""
    # as the leaderboard counts runs: the newest method version only, the latest run of a seed
    latest: dict[tuple, dict] = {}
    for rec in records:
        run = rec["run"]
        label = method_label(run)
        if run["status"] != "ok" or not rec["metrics"].get("val_curve") or label.startswith(ABLATION_ROWS):
            continue
        key = (run["task"], run["task_version"], run["backbone"], budget_label(run), rec["efficiency"]["device"],
               bool(rec["metrics"]["higher_is_better"]))
        seed = (key, label, run.get("method_version", 1), run["seed"])
        if seed not in latest or run["finished_at"] > latest[seed]["run"]["finished_at"]:
            latest[seed] = rec
    newest = defaultdict(int)
    for key, label, version, _ in latest:
        newest[key, label] = max(newest[key, label], version)
    groups: dict[tuple, dict[str, list[list[dict]]]] = defaultdict(lambda: defaultdict(list))
    for (key, label, version, _), rec in sorted(latest.items(), key=lambda kv: str(kv[0])):
        if version == newest[key, label]:
            groups[key][label].append(rec["metrics"]["val_curve"])
    return {k: dict(v) for k, v in groups.items()}


def _mean_curve(curves: list[list[dict]]) -> list[tuple[float, float, float, float]]:
    """(step, seconds, mean score, std score) per validation index, over the seeds that reached it."""
    out = []
    for i in range(max(len(c) for c in curves)):
        points = [c[i] for c in curves if len(c) > i]
        scores = [p["score"] for p in points]
        out.append((statistics.fmean(p["step"] for p in points), statistics.fmean(p["seconds"] for p in points),
                    statistics.fmean(scores), statistics.stdev(scores) if len(scores) > 1 else 0.0))
    return out


def learning_curve_figure(key: tuple, methods: dict[str, list[list[dict]]]) -> Figure:
    task, version, backbone, budget, device, higher_is_better = key
    means = {m: _mean_curve(c) for m, c in sorted(methods.items())}
    percent = is_percent(higher_is_better, *(p[2] for pts in means.values() for p in pts))
    scale = 100.0 if percent else 1.0
    fig = Figure(figsize=(11, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    for i, (method, pts) in enumerate(means.items()):
        ours = method.split("@")[0] == OURS
        color = "#d62728" if ours else COLORS[i % len(COLORS)]
        n = len(methods[method])
        for ax, x in zip(axes, (0, 1)):
            xs = [p[x] for p in pts]
            ys = [p[2] * scale for p in pts]
            ax.plot(xs, ys, marker="o", markersize=3, color=color, linewidth=2.2 if ours else 1.3,
                    label=f"{method} (n={n})")
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
