"""Does the ranking change between two budgets? ``python -m benchmark budgets``.

The question issue 19 asks of the tuned until-plateau budget: next to the 1-epoch paper-lr one, which
methods moved, by how much, and is the move outside the seed spread? Two tests of "outside", both printed:
the seeds' ranges do not overlap (every seed of one budget beats every seed of the other), and Welch's t-test
(unequal variances; scipy) over the seeds. With three seeds a budget neither is strong evidence, so the
table shows both and the numbers they come from rather than a verdict alone.

It reads what the leaderboard averages (``current_records``: valid ok runs, newest method version, the latest
run of each seed) and the time the runs and their searches took: each run's ``total_seconds`` (a resumed run
includes its earlier segments) and the ``seconds`` of every trial of the searches the runs' hyperparameters
came from (``hyperparameters.file``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmark.errors import UserError
from benchmark.publish.leaderboard import flatten_record, current_records


@dataclass
class Comparison:
    """One (task, backbone, device): a row per method run under both budgets."""

    task: str
    backbone: str
    device: str
    before: str  # the two budget labels
    after: str
    table: pd.DataFrame
    run_seconds: float = 0.0  # the after budget's runs, summed
    runs: int = 0
    search_seconds: float = 0.0  # the trials of the searches the after budget's runs read
    searches: int = 0
    trials: int = 0
    only: dict[str, list[str]] = field(default_factory=dict)  # budget -> methods run under it alone
    split: str = "test"  # the scores compared: test, or val (best validation)


def _welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided p of Welch's t-test; nan with fewer than 2 seeds on a side or no spread at all."""
    if len(a) < 2 or len(b) < 2 or (pd.Series(a).std() == 0 and pd.Series(b).std() == 0):
        return float("nan")
    import warnings

    from scipy.stats import ttest_ind

    with warnings.catch_warnings():  # one side's seeds all equal (MP-ISMoE's 376/512 three times) is data, not a fault
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ttest_ind(a, b, equal_var=False).pvalue)


def _ranked(scores: dict[str, list[float]], higher_is_better: bool) -> dict[str, int]:
    means = {m: sum(v) / len(v) for m, v in scores.items()}
    order = sorted(means, key=lambda m: (-means[m] if higher_is_better else means[m], m))
    return {m: i + 1 for i, m in enumerate(order)}


def _matching(budgets, prefix: str) -> list[str]:
    return sorted(b for b in budgets if b.startswith(prefix))


SPLITS = {"val": "val_score", "test": "score"}  # --split: which score the comparison reads
SCALE_DEFAULTS = ("minilm", "mpnet-base", "tuned")  # ``scale``'s backbones and budget kind (and the figure's)


def compare(records: list[dict], before: str, after: str, tasks: list[str] | None = None,
            results_dir: str | Path = "results", split: str = "test", axis: str = "budget",
            budget: str = "") -> list[Comparison]:
    """A Comparison for every (task, backbone, device) and every pair of its budgets, one starting with
    ``before`` and the other with ``after``; ``tasks`` (names) limits the tasks. ``split="val"`` compares
    the best validation scores instead of the test scores: the only ones a choice between budgets may read.

    ``axis="backbone"`` compares backbones instead (``python -m benchmark scale``): for every (task,
    device), each backbone starting with ``before`` against each starting with ``after``, at every budget
    starting with ``budget`` on either side (a side is "<backbone> <budget>")."""
    runs = [{**flatten_record(r), "record": r} for r in current_records(records)
            if not tasks or r["run"]["task"] in tasks]
    if not runs:
        return []
    frame = pd.DataFrame(runs)
    frame["score"] = frame[SPLITS[split]]
    frame = frame.dropna(subset=["score"])
    if axis == "backbone":
        frame = frame[frame["budget"].str.startswith(budget)].copy()
        frame["side"] = frame["backbone"] + " " + frame["budget"]
        keys, label = ["task", "device"], lambda key: "backbones"
    else:
        frame["side"] = frame["budget"]
        keys, label = ["task", "backbone", "device"], lambda key: key[1]
    out = []
    for key, g in frame.groupby(keys, sort=True):
        sides = list(g["side"].unique())
        for b0 in _matching(sides, before):
            for b1 in _matching(sides, after):
                if b0 != b1:
                    out += _pair(g, key[0], label(key), key[-1], b0, b1, Path(results_dir), split)
    return out


def _search_file(recorded: str, results_dir: Path) -> Path | None:
    """The search file a run read: ``<results_dir>/tuning/<its name>`` (a run may have been made from another
    results folder or checkout), else the path it recorded."""
    for path in (results_dir / "tuning" / Path(recorded).name, Path(recorded)):
        if path.is_file():
            return path
    return None


def _pair(g: pd.DataFrame, task: str, backbone: str, device: str, b0: str, b1: str,
          results_dir: Path, split: str = "test") -> list[Comparison]:
    """The comparison of budget ``b0`` with ``b1`` over the methods run under both ([] when none is)."""
    higher = bool(g["higher_is_better"].iloc[0])
    by = {b: {m: sorted(zip(s["seed"], s["score"])) for m, s in g[g["side"] == b].groupby("method")}
          for b in (b0, b1)}
    peak = {b: g[g["side"] == b].groupby("method")["peak_train_bytes"].mean() / 2**30 for b in (b0, b1)}
    both = sorted(set(by[b0]) & set(by[b1]))
    if not both:
        return []
    scores = {b: {m: [v for _, v in by[b][m]] for m in both} for b in (b0, b1)}
    rank = {b: _ranked(scores[b], higher) for b in (b0, b1)}
    rows = []
    for m in both:
        a, c = scores[b0][m], scores[b1][m]
        ma, mc = sum(a) / len(a), sum(c) / len(c)
        better = (min(c) > max(a)) if higher else (max(c) < min(a))
        worse = (max(c) < min(a)) if higher else (min(c) > max(a))
        rows.append({"method": m, "before_rank": rank[b0][m], "before_mean": ma,
                     "before_std": pd.Series(a).std(), "before_n": len(a), "before_min": min(a),
                     "before_max": max(a), "after_rank": rank[b1][m], "after_mean": mc,
                     "after_std": pd.Series(c).std(), "after_n": len(c), "after_min": min(c),
                     "after_max": max(c), "change": mc - ma, "rank_change": rank[b0][m] - rank[b1][m],
                     "ranges_apart": ("one seed" if min(len(a), len(c)) < 2 else
                                     "better" if better else "worse" if worse else "overlap"),
                     "welch_p": _welch_p(a, c), "before_gib": peak[b0][m], "after_gib": peak[b1][m]})
    table = pd.DataFrame(rows).sort_values(["after_rank", "method"]).reset_index(drop=True)
    comp = Comparison(task, backbone, device, b0, b1, table, split=split,
                      only={b: sorted(set(by[b]) - set(both)) for b in (b0, b1) if set(by[b]) - set(both)})
    after_runs = g[g["side"] == b1]["record"]
    comp.runs = len(after_runs)
    comp.run_seconds = float(sum(r["efficiency"].get("total_seconds") or 0.0 for r in after_runs))
    recorded = {(r["run"].get("hyperparameters") or {}).get("file") or "" for r in after_runs} - {""}
    # one search counted once, though its runs recorded it under different folders
    for path in sorted({p for p in (_search_file(name, results_dir) for name in recorded) if p is not None}):
        trials = json.loads(path.read_text()).get("trials", [])
        comp.searches += 1
        comp.trials += len(trials)
        comp.search_seconds += float(sum(t.get("seconds") or 0.0 for t in trials))
    return [comp]


def _n(k: int, one: str, many: str = "") -> str:
    return f"{k} {one if k == 1 else (many or one + 's')}"


def _pct(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _p(p: float) -> str:
    """A p-value as read in a paper: three decimals, '<0.001' below that (never a bare 0.000)."""
    return "-" if math.isnan(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def to_markdown(comp: Comparison) -> str:
    """The comparison as a Markdown table with its cost underneath (scores in %, std over seeds)."""
    what = "best validation scores" if comp.split == "val" else "test scores"
    lines = [f"### {comp.task} ({comp.backbone}, {comp.device}): {comp.before} -> {comp.after} ({what})", "",
             "| method | before: rank, mean ± std (n) | after: rank, mean ± std (n) | change | ranks moved "
             "| seed ranges | Welch p | peak GiB (ratio to full fine-tuning) |",
             "| --- | --- | --- | ---: | ---: | --- | ---: | --- |"]
    from methods import reference_method

    refs = comp.table[comp.table["method"] == reference_method().name]
    ref = refs.iloc[0] if len(refs) else None

    def gib(x: float, full) -> str:
        return f"{x:.3f}" + (f" ({x / full:.2f})" if ref is not None and full else "")

    for r in comp.table.itertuples():
        lines.append(
            f"| {r.method} | #{r.before_rank} {_pct(r.before_mean)} ± {_pct(r.before_std)} ({r.before_n}) "
            f"| #{r.after_rank} {_pct(r.after_mean)} ± {_pct(r.after_std)} ({r.after_n}) "
            f"| {100 * r.change:+.2f} | {r.rank_change:+d} "
            f"| [{_pct(r.before_min)}, {_pct(r.before_max)}] -> [{_pct(r.after_min)}, {_pct(r.after_max)}] "
            f"{r.ranges_apart} | {_p(r.welch_p)} | {gib(r.before_gib, ref is not None and ref.before_gib)} -> "
            f"{gib(r.after_gib, ref is not None and ref.after_gib)} |")
    lines.append("")
    for budget, methods in comp.only.items():
        lines.append(f"Run under {budget} only: {', '.join(methods)}.")
    lines.append(f"Time of the {comp.after} runs: {_n(comp.runs, 'run')}, {comp.run_seconds / 3600:.2f} h "
                 f"(their total_seconds); the searches they read: {_n(comp.searches, 'search', 'searches')}, "
                 f"{_n(comp.trials, 'trial')}, "
                 f"{comp.search_seconds / 3600:.2f} h; together {(comp.run_seconds + comp.search_seconds) / 3600:.2f} h.")
    return "\n".join(lines) + "\n"


def scale_main(argv: list[str] | None = None) -> int:
    """``python -m benchmark scale [--small minilm] [--large mpnet-base] [--budget tuned] [--tasks a,b]``: does the
    ranking at one backbone hold at another (the same task, budget kind and device)?"""
    import argparse

    from benchmark.cli import COMMANDS, quiet
    from benchmark.results import load_results

    p = argparse.ArgumentParser(prog="python -m benchmark scale", description=COMMANDS["scale"][1])
    small, large, budget = SCALE_DEFAULTS
    p.add_argument("--small", default=small, help=f"backbone label prefix of the first backbone (default {small})")
    p.add_argument("--large", default=large, help=f"backbone label prefix of the second (default {large})")
    p.add_argument("--budget", default=budget, help=f"budget label prefix on both sides (default {budget})")
    p.add_argument("--tasks", default="", help="comma-separated task names (default: every task with both)")
    p.add_argument("--split", default="test", choices=sorted(SPLITS), help="test scores (default) or best validation")
    p.add_argument("--results-dir", default="results")
    args = p.parse_args(argv)
    quiet()
    if not (Path(args.results_dir) / "runs").is_dir():
        raise UserError(f"no results in {args.results_dir}/runs: run `make bench` or `make paper` first")
    records, _ = load_results(args.results_dir)
    comps = compare(records, args.small, args.large, [t for t in args.tasks.split(",") if t] or None,
                    args.results_dir, args.split, axis="backbone", budget=args.budget)
    if not comps:
        raise UserError(f"no task has runs on a backbone starting with {args.small!r} and one starting with "
                        f"{args.large!r} under a budget starting with {args.budget!r}; the backbones and budgets "
                        f"are the leaderboard's columns")
    print("\n".join(to_markdown(c) for c in comps), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmark budgets [--before 1ep] [--after tuned] [--tasks a,b] [--results-dir results]``."""
    import argparse

    from benchmark.cli import COMMANDS, quiet
    from benchmark.results import load_results

    p = argparse.ArgumentParser(prog="python -m benchmark budgets", description=COMMANDS["budgets"][1])
    p.add_argument("--before", default="1ep", help="budget label prefix of the first budget (default 1ep)")
    p.add_argument("--after", default="tuned", help="budget label prefix of the second (default tuned)")
    p.add_argument("--tasks", default="", help="comma-separated task names (default: every task with both)")
    p.add_argument("--split", default="test", choices=sorted(SPLITS),
                   help="compare test scores (default) or best validation scores (val: what a budget is chosen on)")
    p.add_argument("--results-dir", default="results")
    args = p.parse_args(argv)
    quiet()
    if not (Path(args.results_dir) / "runs").is_dir():
        raise UserError(f"no results in {args.results_dir}/runs: run `make bench` or `make paper` first")
    tasks = [t for t in args.tasks.split(",") if t] or None
    records, _ = load_results(args.results_dir)
    comps = compare(records, args.before, args.after, tasks, args.results_dir, args.split)
    if not comps:
        raise UserError(f"no task has runs under a budget starting with {args.before!r} and one starting with "
                        f"{args.after!r}; the budgets are the leaderboard's budget column")
    print("\n".join(to_markdown(c) for c in comps), end="")
    return 0
