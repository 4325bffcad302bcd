"""The leaderboard frame: a pure function of ``results/runs/**/*.json`` (see ``benchmark.results``).

Failed, interrupted, corrupt and invalid runs are dropped and counted; the rest are averaged over
seeds, one row per (task family, task, task version, backbone, budget, device, method). Runs of different
task versions are never averaged together, nor runs of different budgets (epochs, batch, length, subsets:
``results.budget_label``), nor runs on different devices (their memory differs). A Pareto front of score
vs peak training memory is marked within each (task, version, backbone, budget, device), in the direction
the task's score prefers. Rendering it is ``tables`` (Markdown, CSV, LaTeX), ``ablations`` and ``page``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import pandas as pd

from benchmark import provenance
from benchmark.publish.fmt import GIB
from benchmark.publish.names import ABLATION_ROWS, AVERAGE_TASKS, AVERAGED
from benchmark.results import CORRUPT, budget_label, method_label, validate

KEYS = ["task_family", "task", "task_version", "backbone", "budget", "device", "method"]
PARETO_GROUP = ["task", "task_version", "backbone", "budget", "device"]
TAIL = ["val_score_mean", "trainable_params", "trainable_percent", "peak_train_bytes", "peak_train_gib",
        "step_seconds", "higher_is_better", "pareto", "code_versions"]


@dataclass
class Report:
    """What went into the table and what was dropped, and why. ``str(report)`` is what the CLI prints."""

    used: int = 0  # ok runs averaged into the table
    rows: int = 0
    failed: int = 0
    interrupted: int = 0
    corrupt: int = 0  # unreadable JSON
    invalid: int = 0  # JSON, but not a valid results record
    duplicate: int = 0  # the same (key, seed) twice: the latest finished run is kept
    older: int = 0  # a run of an older method version than the newest one in the results (stale code)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file or run id, why)

    @property
    def dropped(self) -> int:
        return self.failed + self.interrupted + self.corrupt + self.invalid + self.duplicate + self.older

    def lines(self) -> list[str]:
        counts = ", ".join(f"{n} {what}" for what, n in (
            ("failed", self.failed), ("interrupted", self.interrupted), ("corrupt", self.corrupt),
            ("invalid", self.invalid), ("duplicate", self.duplicate), ("older method version", self.older)) if n)
        head = f"leaderboard: {_count(self.used, 'run')} in {_count(self.rows, 'row')}; "
        head += f"dropped {self.dropped} ({counts})" if self.dropped else "none dropped"
        return [head] + [f"  dropped {where}: {_shorten(why)}" for where, why in self.skipped]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _shorten(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- the table ---------------------------------------------------------------------------------------
def pareto_front(scores: Sequence[float], memory: Sequence[float], higher_is_better: bool = True) -> list[bool]:
    """True where no other point has a score at least as good and memory at most as large, one strictly.

    Points with a missing score or memory are never on the front; identical points are both on it.
    """
    sign = 1.0 if higher_is_better else -1.0
    pts = [(sign * float(s), float(m)) for s, m in zip(scores, memory)]
    valid = [not (math.isnan(s) or math.isnan(m)) for s, m in pts]
    front = []
    for i, (s, m) in enumerate(pts):
        dominated = any(valid[j] and j != i and s2 >= s and m2 <= m and (s2 > s or m2 < m)
                        for j, (s2, m2) in enumerate(pts))
        front.append(valid[i] and not dominated)
    return front


def flatten_record(record: dict) -> dict:
    """One run record as a flat row (task, budget, method label, seed, score, memory...): the one reading of
    a record shared by the leaderboard and `make budgets`."""
    run, metrics, eff = record["run"], record["metrics"], record["efficiency"]
    row = {"task_family": run["task_family"], "task": run["task"], "task_version": run["task_version"],
           "backbone": run["backbone"], "budget": budget_label(run), "device": eff["device"], "method": method_label(run), "seed": run["seed"],
           "method_version": run.get("method_version", 1), "commit": run.get("git_commit"),
           "finished_at": run["finished_at"], "higher_is_better": metrics["higher_is_better"],
           "score": metrics["test"]["score"], "val_score": metrics["val_best"].get("score"),
           "trainable_params": eff["trainable_params"], "trainable_percent": eff["trainable_percent"],
           "peak_train_bytes": eff["peak_train_bytes"], "step_seconds": eff.get("step_seconds")}
    row.update({f"test:{k}": v for k, v in metrics["test"].items() if k != "score"})
    return row


def _current(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(kept, older, duplicate) flattened runs: a method's runs of different code versions never meet (only
    its newest version is kept), and of two runs of the same seed the later finished one is kept."""
    runs = runs.sort_values("finished_at", kind="stable")
    newest = runs.groupby("method")["method_version"].transform("max")
    older, runs = runs[runs["method_version"] < newest], runs[runs["method_version"] >= newest]
    latest = runs.drop_duplicates(KEYS + ["seed"], keep="last")
    return latest, older, runs.loc[runs.index.difference(latest.index)]


def current_records(records: list[dict]) -> list[dict]:
    """The valid ok records the leaderboard averages (newest method version, latest run of each seed)."""
    ok = [r for r in records if not validate(r) and r["run"]["status"] == "ok"]
    if not ok:
        return []
    latest, _, _ = _current(pd.DataFrame([flatten_record(r) for r in ok]))
    return [ok[i] for i in latest.index]


def _num(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce").astype(float)


def _aggregate(runs: pd.DataFrame, metric_names: list[str]) -> pd.DataFrame:
    rows = []
    for key, g in runs.groupby(KEYS, sort=False):
        score = _num(g["score"])
        row = dict(zip(KEYS, key))
        row.update(n=len(g), score_mean=score.mean(), score_std=score.std(ddof=1),
                   code_versions=int(g["code_version"].nunique()))  # seeds run on different code: flagged in the tables
        for m in metric_names:
            col = f"test:{m}"
            values = _num(g[col]) if col in g else pd.Series(dtype=float)
            row[f"{m}_mean"] = values.mean()
            row[f"{m}_std"] = values.std(ddof=1)
        peak = _num(g["peak_train_bytes"]).mean()
        row.update(val_score_mean=_num(g["val_score"]).mean(),
                   trainable_params=int(round(_num(g["trainable_params"]).mean())),
                   trainable_percent=_num(g["trainable_percent"]).mean(),
                   peak_train_bytes=int(round(peak)), peak_train_gib=peak / GIB,
                   step_seconds=_num(g["step_seconds"]).mean(),
                   higher_is_better=bool(g["higher_is_better"].iloc[0]))
        rows.append(row)
    return pd.DataFrame(rows)


def _family_average(table: pd.DataFrame) -> pd.DataFrame:
    """One average row (GLUE's glue_avg) per (backbone, budget, device, method, task version) of a task group
    that declares one, for a method with every member task."""
    rows = []
    for family, members, average_task in AVERAGED:
        sub = table[table["task"].isin(members)]
        for (backbone, budget, device, method, version), g in sub.groupby(
                ["backbone", "budget", "device", "method", "task_version"], sort=False):
            if set(g["task"]) != set(members):
                continue
            rows.append({"task_family": family, "task": average_task, "task_version": version, "backbone": backbone,
                         "budget": budget, "device": device, "method": method, "n": int(g["n"].min()),
                         "score_mean": g["score_mean"].mean(), "score_std": float("nan"),
                         "val_score_mean": g["val_score_mean"].mean(),
                         "trainable_params": int(g["trainable_params"].max()),
                         "trainable_percent": g["trainable_percent"].max(),
                         "peak_train_bytes": int(g["peak_train_bytes"].max()),
                         "peak_train_gib": g["peak_train_bytes"].max() / GIB, "step_seconds": float("nan"),
                         "higher_is_better": bool(g["higher_is_better"].all())})
    return pd.DataFrame(rows)


def build_leaderboard(records: Iterable[dict], problems: Iterable[tuple[os.PathLike | str, str]] = (),
                      repo_dir: os.PathLike | str = provenance.ROOT) -> tuple[pd.DataFrame, Report]:
    """The leaderboard table and a report of what was dropped.

    ``records`` are results records (any status); ``problems`` are the ``(path, reason)`` pairs of
    ``load_results``, counted as corrupt or invalid in the report; ``repo_dir`` is the checkout whose git
    history says which of the records' commits share the same code.
    """
    report = Report()
    for path, reason in problems:
        if str(reason).startswith(CORRUPT):
            report.corrupt += 1
        else:
            report.invalid += 1
        report.skipped.append((str(path), str(reason)))

    runs = []
    for record in records:
        issues = validate(record)
        run = record.get("run", {}) if isinstance(record, dict) else {}
        where = str(run.get("id", "?")) if isinstance(run, dict) else "?"
        if issues:
            report.invalid += 1
            report.skipped.append((where, "invalid: " + "; ".join(issues)))
        elif run["status"] != "ok":
            setattr(report, run["status"], getattr(report, run["status"]) + 1)
            report.skipped.append((where, f"{run['status']}: {run.get('error') or 'no error message'}"))
        else:
            runs.append(flatten_record(record))

    metric_names = sorted({k[5:] for r in runs for k in r if k.startswith("test:")})
    columns = KEYS + ["n", "score_mean", "score_std"] + [f"{m}_{s}" for m in metric_names
                                                         for s in ("mean", "std")] + TAIL
    if not runs:
        return pd.DataFrame(columns=columns), report

    latest, older, duplicates = _current(pd.DataFrame(runs))
    latest = latest.assign(code_version=latest["commit"].map(provenance.code_versions(latest["commit"], repo_dir)))
    for _, r in older.iterrows():
        report.older += 1
        report.skipped.append((f"{r['task']}/{r['method']}/{r['backbone']} seed {r['seed']}",
                               f"older method version {r['method_version']}: rerun it (make paper reruns stale runs)"))
    for _, r in duplicates.iterrows():
        report.duplicate += 1
        report.skipped.append((f"{r['task']}/{r['method']}/{r['backbone']} seed {r['seed']}",
                               f"duplicate: a later run of the same seed (finished {r['finished_at']}) is kept"))
    report.used = len(latest)

    table = _aggregate(latest, metric_names)
    table = pd.concat([table, _family_average(table)], ignore_index=True)
    table["pareto"] = False
    for _, g in table.groupby(PARETO_GROUP, sort=False):
        table.loc[g.index, "pareto"] = pareto_front(g["score_mean"], g["peak_train_bytes"],
                                                    bool(g["higher_is_better"].iloc[0]))

    best_first = table["score_mean"].where(table["higher_is_better"], -table["score_mean"])
    order = table.assign(_avg=table["task"].isin(AVERAGE_TASKS), _rank=-best_first).sort_values(
        ["task_family", "_avg", "task", "task_version", "backbone", "budget", "device", "_rank", "method"], kind="stable")
    table = table.loc[order.index, columns].reset_index(drop=True)
    table = table.astype({"task_version": int, "n": int, "trainable_params": int, "peak_train_bytes": int,
                          "higher_is_better": bool, "pareto": bool})
    report.rows = len(table)
    return table, report


def is_ablation_row(df: pd.DataFrame) -> pd.Series:
    """Which rows are ablation runs: they get tables of their own, never a row or a point elsewhere."""
    return df["method"].astype(str).str.startswith(ABLATION_ROWS)
