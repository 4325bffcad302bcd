"""The leaderboard: a pure function of ``results/runs/**/*.json`` (see ``benchmark.results``).

Failed, interrupted, corrupt and invalid runs are dropped and counted; the rest are averaged over
seeds, one row per (task family, task, task version, backbone, budget, device, method). Runs of different
task versions are never averaged together, nor runs of different budgets (epochs, batch, length, subsets:
``results.budget_label``), nor runs on different devices (their memory differs). A Pareto front of score
vs peak training memory is marked within each (task, version, backbone, budget, device), in the direction
the task's score prefers. Exports Markdown, CSV (raw numbers) and LaTeX, with
the paper's layouts beside it: GLUE as Table 2, vision-language per task, MP-ISMoE's ablation rows as
Tables 3 and 4 (``ablations.md``/``.tex``); ``main`` also rewrites the HTML page (``benchmark.page``).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from benchmark.results import CORRUPT, atomic_write_text, budget_label, load_results, method_label, validate

KEYS = ["task_family", "task", "task_version", "backbone", "budget", "device", "method"]
PARETO_GROUP = ["task", "task_version", "backbone", "budget", "device"]
GLUE_TASKS = ("cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte", "stsb")
GLUE_AVG = "glue_avg"
TAIL = ["val_score_mean", "trainable_params", "trainable_percent", "peak_train_bytes", "peak_train_gib",
        "step_seconds", "higher_is_better", "pareto"]
GIB = 1024 ** 3


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


def _flatten(record: dict) -> dict:
    run, metrics, eff = record["run"], record["metrics"], record["efficiency"]
    row = {"task_family": run["task_family"], "task": run["task"], "task_version": run["task_version"],
           "backbone": run["backbone"], "budget": budget_label(run), "device": eff["device"], "method": method_label(run), "seed": run["seed"],
           "method_version": run.get("method_version", 1),
           "finished_at": run["finished_at"], "higher_is_better": metrics["higher_is_better"],
           "score": metrics["test"]["score"], "val_score": metrics["val_best"].get("score"),
           "trainable_params": eff["trainable_params"], "trainable_percent": eff["trainable_percent"],
           "peak_train_bytes": eff["peak_train_bytes"], "step_seconds": eff.get("step_seconds")}
    row.update({f"test:{k}": v for k, v in metrics["test"].items() if k != "score"})
    return row


def _num(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce").astype(float)


def _aggregate(runs: pd.DataFrame, metric_names: list[str]) -> pd.DataFrame:
    rows = []
    for key, g in runs.groupby(KEYS, sort=False):
        score = _num(g["score"])
        row = dict(zip(KEYS, key))
        row.update(n=len(g), score_mean=score.mean(), score_std=score.std(ddof=1))
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


def _glue_average(table: pd.DataFrame) -> pd.DataFrame:
    """One ``glue_avg`` row per (backbone, budget, device, method, task version) with all eight GLUE tasks."""
    glue = table[table["task"].isin(GLUE_TASKS)]
    rows = []
    for (backbone, budget, device, method, version), g in glue.groupby(
            ["backbone", "budget", "device", "method", "task_version"], sort=False):
        if set(g["task"]) != set(GLUE_TASKS):
            continue
        rows.append({"task_family": "glue", "task": GLUE_AVG, "task_version": version, "backbone": backbone,
                     "budget": budget, "device": device, "method": method, "n": int(g["n"].min()),
                     "score_mean": g["score_mean"].mean(), "score_std": float("nan"),
                     "val_score_mean": g["val_score_mean"].mean(),
                     "trainable_params": int(g["trainable_params"].max()),
                     "trainable_percent": g["trainable_percent"].max(),
                     "peak_train_bytes": int(g["peak_train_bytes"].max()),
                     "peak_train_gib": g["peak_train_bytes"].max() / GIB, "step_seconds": float("nan"),
                     "higher_is_better": bool(g["higher_is_better"].all())})
    return pd.DataFrame(rows)


def build_leaderboard(records: Iterable[dict],
                      problems: Iterable[tuple[os.PathLike | str, str]] = ()) -> tuple[pd.DataFrame, Report]:
    """The leaderboard table and a report of what was dropped.

    ``records`` are results records (any status); ``problems`` are the ``(path, reason)`` pairs of
    ``load_results``, counted as corrupt or invalid in the report.
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
            runs.append(_flatten(record))

    metric_names = sorted({k[5:] for r in runs for k in r if k.startswith("test:")})
    columns = KEYS + ["n", "score_mean", "score_std"] + [f"{m}_{s}" for m in metric_names
                                                         for s in ("mean", "std")] + TAIL
    if not runs:
        return pd.DataFrame(columns=columns), report

    runs_df = pd.DataFrame(runs).sort_values("finished_at", kind="stable")
    # a method's runs of different code versions never meet: only its newest version is kept
    newest = runs_df.groupby("method")["method_version"].transform("max")
    for _, r in runs_df[runs_df["method_version"] < newest].iterrows():
        report.older += 1
        report.skipped.append((f"{r['task']}/{r['method']}/{r['backbone']} seed {r['seed']}",
                               f"older method version {r['method_version']}: rerun it (make paper reruns stale runs)"))
    runs_df = runs_df[runs_df["method_version"] >= newest]
    latest = runs_df.drop_duplicates(KEYS + ["seed"], keep="last")
    for _, r in runs_df.loc[runs_df.index.difference(latest.index)].iterrows():
        report.duplicate += 1
        report.skipped.append((f"{r['task']}/{r['method']}/{r['backbone']} seed {r['seed']}",
                               f"duplicate: a later run of the same seed (finished {r['finished_at']}) is kept"))
    report.used = len(latest)

    table = _aggregate(latest, metric_names)
    table = pd.concat([table, _glue_average(table)], ignore_index=True)
    table["pareto"] = False
    for _, g in table.groupby(PARETO_GROUP, sort=False):
        table.loc[g.index, "pareto"] = pareto_front(g["score_mean"], g["peak_train_bytes"],
                                                    bool(g["higher_is_better"].iloc[0]))

    best_first = table["score_mean"].where(table["higher_is_better"], -table["score_mean"])
    order = table.assign(_avg=table["task"].eq(GLUE_AVG), _rank=-best_first).sort_values(
        ["task_family", "_avg", "task", "task_version", "backbone", "budget", "device", "_rank", "method"], kind="stable")
    table = table.loc[order.index, columns].reset_index(drop=True)
    table = table.astype({"task_version": int, "n": int, "trainable_params": int, "peak_train_bytes": int,
                          "higher_is_better": bool, "pareto": bool})
    report.rows = len(table)
    return table, report


# --- formatting ----------------------------------------------------------------------------------
def _isnan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt_score(mean, std, percent: bool) -> str:
    if _isnan(mean):
        return ""
    scale, digits = (100.0, 2) if percent else (1.0, 4)
    text = f"{mean * scale:.{digits}f}"
    if not _isnan(std):
        text += f" ± {std * scale:.{digits}f}"
    return text


def _display_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]], list[bool]]:
    """Header, cells and which columns are numeric (right-aligned), shared by Markdown and LaTeX."""
    metric_names = [c[:-5] for c in df.columns if c.endswith("_mean") and c not in ("score_mean", "val_score_mean")]
    header = ["task", "v", "backbone", "budget", "device", "method", "test score (mean ± std (n))",
              "test metrics (mean)", "val score", "trainable params", "peak train mem (GiB)", "step (s)", "Pareto"]
    numeric = [False, True, False, False, False, False, True, False, True, True, True, True, False]
    rows = []
    for _, r in df.iterrows():
        # Fractions (accuracy, F1, correlations) in percent; anything else (e.g. a loss) as it is.
        percent = bool(r["higher_is_better"]) and not _isnan(r["score_mean"]) and -1.0 <= r["score_mean"] <= 1.0
        score = _fmt_score(r["score_mean"], r["score_std"], percent)
        metrics = " · ".join(f"{m} {_fmt_score(r[f'{m}_mean'], None, percent)}" for m in metric_names
                             if not _isnan(r[f"{m}_mean"]))
        rows.append([
            str(r["task"]), str(r["task_version"]), str(r["backbone"]), str(r["budget"]), str(r["device"]),
            str(r["method"]),
            f"{score} ({r['n']})", metrics, _fmt_score(r["val_score_mean"], None, percent),
            f"{int(r['trainable_params']):,} ({r['trainable_percent']:.2f} %)",
            f"{r['peak_train_gib']:.3f}", "" if _isnan(r["step_seconds"]) else f"{r['step_seconds']:.3f}",
            "★" if r["pareto"] else "",
        ])
    return header, rows, numeric


NOTES = ("Scores that are fractions (accuracy, F1, correlations) are in percent; mean ± sample std over "
         "seeds, (n) = seeds. Memory: peak training bytes / 1024^3 (GiB). ★ = Pareto front of score vs "
         "peak memory within a task, version, backbone, budget and device. Budget: epochs (or steps), batch, "
         "max length, train/eval subsets, precision when not fp32. glue_avg = mean of the eight GLUE task "
         "means (n = fewest seeds; memory = largest).")


def _md_table(header: list[str], rows: list[list[str]], numeric: list[bool]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [line(header), "| " + " | ".join("---:" if n else "---" for n in numeric) + " |"]
    return "\n".join(out + [line(r) for r in rows]) + "\n"


def to_markdown(df: pd.DataFrame) -> str:
    """A Markdown table of the leaderboard (no ``tabulate`` needed) followed by a note on units."""
    return _md_table(*_display_rows(df)) + "\n" + NOTES + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "★": r"$\star$",
        "·": r"$\cdot$", "†": r"$^\dagger$", "Δ": r"$\Delta$", "×": r"$\times$", "—": "--"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def _tex_table(header: list[str], rows: list[list[str]], numeric: list[bool]) -> str:
    spec = "".join("r" if n else "l" for n in numeric)
    out = [f"\\begin{{tabular}}{{{spec}}}", "\\hline", " & ".join(tex_escape(h) for h in header) + " \\\\",
           "\\hline"]
    out += [" & ".join(tex_escape(c) for c in r) + " \\\\" for r in rows]
    return "\n".join(out + ["\\hline", "\\end{tabular}"]) + "\n"


def to_latex(df: pd.DataFrame) -> str:
    """A LaTeX ``tabular`` (no packages beyond the kernel) of the same table as the Markdown."""
    return _tex_table(*_display_rows(df))


# --- paper-layout tables: GLUE (Table 2), vision-language, ablations (Tables 3 and 4) --------------
@dataclass
class Table:
    """A titled table, rendered the same way to Markdown, LaTeX and HTML; ``data`` holds its raw numbers."""

    title: str
    header: list[str]
    rows: list[list[str]]
    numeric: list[bool]
    notes: list[str] = field(default_factory=list)
    data: pd.DataFrame | None = None

    def markdown(self) -> str:
        notes = "".join(f"\n{n}\n" for n in self.notes)
        return f"### {self.title}\n\n" + _md_table(self.header, self.rows, self.numeric) + notes

    def latex(self) -> str:
        out = f"% {tex_escape(self.title)}\n" + _tex_table(self.header, self.rows, self.numeric)
        if self.notes:
            out += "\\par\\smallskip{\\footnotesize " + "\\par ".join(tex_escape(n) for n in self.notes) + "}\\par\n"
        return out


GLUE_NAMES = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "mnli": "MNLI", "qnli": "QNLI",
              "rte": "RTE", "stsb": "STS-B"}
VL_FAMILY = "vl"
VL_TASKS = ("vqa", "gqa", "nlvr2", "easy_vqa")
VL_NAMES = {"vqa": "VQAv2", "gqa": "GQA", "nlvr2": "NLVR2", "easy_vqa": "easy_vqa"}
ABLATIONS = (("Table 3", "ISMoE ablation, full-precision backbone", "table3-"),
             ("Table 4", "GNP-IQ ablation (ISMoE on)", "table4-"))
ABLATION_METHOD = "mpismoe"
ABLATION_ROWS = tuple(f"{ABLATION_METHOD}@{p}" for _, _, p in ABLATIONS)  # method labels of the ablation runs


# Rows in the paper's order (largest memory first, ours last); unknown methods after these, by name.
METHOD_ORDER = ("full", "lora", "bitfit", "side_tuning", "lst", "unipt", "sherl", "mpismoe")


def _method_key(label: str) -> tuple:
    base, _, variant = str(label).partition("@")
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), base, variant)


def _pm(mean, std, scale: float = 100.0, digits: int = 1) -> str:
    if _isnan(mean):
        return ""
    return f"{mean * scale:.{digits}f}" + ("" if _isnan(std) else f" ± {std * scale:.{digits}f}")


def _signed(x: float, digits: int) -> str:
    return f"{round(x, digits) + 0.0:+.{digits}f}"  # + 0.0: no "-0.00" from rounding noise


def _task_table(df: pd.DataFrame, tasks: list[str], names: dict[str, str], title: str, avg_name: str,
                every_column: bool = False) -> list[Table]:
    """One row per method, one column per task (score x 100), per (backbone, budget, device); ``every_column``
    keeps a column for each of ``tasks`` even without results (a fixed layout, gaps visible).

    Each task uses its newest version within the group, so versions never meet in a row or an average.
    """
    is_ablation = df["method"].astype(str).str.startswith(ABLATION_ROWS)  # they have tables of their own
    sub = df[df["task"].isin(tasks) & ~is_ablation]
    moved = "MP-ISMoE's ablation rows are in ablations.md. " if (df["task"].isin(tasks) & is_ablation).any() else ""
    tables = []
    for (backbone, budget, device), g in sub.groupby(["backbone", "budget", "device"], sort=True):
        newest = {t: int(g.loc[g["task"] == t, "task_version"].max()) for t in tasks if (g["task"] == t).any()}
        cols = list(tasks) if every_column else list(newest)
        keep = g[[newest[t] == v for t, v in zip(g["task"], g["task_version"])]]
        older = g.loc[g.index.difference(keep.index)]
        header = ["method", "params %", "peak train mem (GiB)"] + [names.get(t, t) for t in cols] + [avg_name, "n"]
        rows, data = [], []
        for method in sorted(keep["method"].unique(), key=_method_key):
            m = keep[keep["method"] == method].set_index("task")
            complete = all(t in m.index for t in cols)
            avg = m.loc[cols, "score_mean"].mean() if complete else float("nan")
            rows.append([method, f"{m['trainable_percent'].max():.2f}", f"{m['peak_train_gib'].max():.3f}"]
                        + [_pm(m.at[t, "score_mean"], m.at[t, "score_std"]) if t in m.index else "" for t in cols]
                        + [_pm(avg, None), str(int(m["n"].min()))])
            rec = {"backbone": backbone, "budget": budget, "device": device, "method": method, "n_min": int(m["n"].min()),
                   "trainable_percent": m["trainable_percent"].max(),
                   "peak_train_bytes": int(m["peak_train_bytes"].max()), "peak_train_gib": m["peak_train_gib"].max()}
            for t in cols:
                for k in ("mean", "std"):
                    rec[f"{t}_{k}"] = m.at[t, f"score_{k}"] if t in m.index else float("nan")
                rec[f"{t}_version"] = newest.get(t)
            rec["avg_mean"] = avg
            data.append(rec)
        notes = [f"Scores × 100, mean ± sample std over seeds; n = fewest seeds over the tasks. Params % and "
                 f"memory (peak training bytes / 1024^3) are the largest over the tasks. {avg_name}: mean over the "
                 f"{len(cols)} task columns, only for a method with all of them. {moved}Task versions: "
                 + ", ".join(f"{t} v{v}" for t, v in newest.items()) + "."]
        if len(older):
            notes.append("Older task versions left out of this table (see the leaderboard): "
                         + ", ".join(sorted({f"{t} v{v}" for t, v in zip(older["task"], older["task_version"])})) + ".")
        tables.append(Table(f"{title} — {backbone}, budget {budget}, {device}", header, rows,
                            [False] + [True] * (len(header) - 1), notes, pd.DataFrame(data)))
    return tables


def glue_tables(df: pd.DataFrame) -> list[Table]:
    """The paper's Table 2 layout: method, params %, memory, the eight GLUE scores x 100, average."""
    return _task_table(df[df["task_family"] == "glue"], list(GLUE_TASKS), GLUE_NAMES,
                       "GLUE (paper Table 2 layout)", "Avg", every_column=True)


def vl_tables(df: pd.DataFrame) -> list[Table]:
    """Vision-language results (family "vl"): the paper's VQA/GQA/NLVR2 columns, then any other VL task."""
    vl = df[df["task_family"] == VL_FAMILY]
    tasks = [t for t in VL_TASKS if t in set(vl["task"])] + sorted(set(vl["task"]) - set(VL_TASKS))
    return _task_table(vl, tasks, VL_NAMES, "Vision-language", "Avg")


def _experiments() -> dict:
    """MP-ISMoE's named rows (imported lazily: the methods package pulls in torch)."""
    from methods.mpismoe.experiments import EXPERIMENTS

    return EXPERIMENTS


def ablation_tables(df: pd.DataFrame, experiments: dict | None = None) -> list[Table]:
    """Paper Tables 3 and 4 from ``mpismoe@table3-*`` / ``mpismoe@table4-*`` rows, per task, version,
    backbone, budget and device; nothing when there are no such runs."""
    labels = df["method"].astype(str)
    if not labels.str.startswith(ABLATION_ROWS).any():
        return []
    ours = df[labels.str.startswith(ABLATION_ROWS)]  # every row has a configuration (and runs) of its own
    experiments = _experiments() if experiments is None else experiments
    tables = []
    for (task, version, backbone, budget, device), g in ours.groupby(PARETO_GROUP, sort=True):
        by_row = {m.partition("@")[2]: r for m, r in zip(g["method"], g.to_dict("records"))}
        for number, what, prefix in ABLATIONS:
            names = [n for n in experiments if n.startswith(prefix)]
            if not any(n in by_row for n in names):
                continue
            rows, data, notes = [], [], []
            first = None
            for i, name in enumerate(names, 1):
                r, shown = by_row.get(name), name
                about = re.sub(r"^Table \d+ row \d+:\s*", "", experiments[name].about)
                if r is None:
                    rows.append([str(i), shown, about, "no runs", "", "", ""])
                    data.append({"row": i, "name": name, "about": about, "source": None})
                    continue
                if i == 1:
                    first = r
                percent = bool(r["higher_is_better"]) and -1.0 <= r["score_mean"] <= 1.0
                scale = 100.0 if percent else 1.0
                delta = i > 1 and first is not None
                d_score = _signed((r["score_mean"] - first["score_mean"]) * scale, 2) if delta else ""
                d_mem = _signed(r["peak_train_gib"] - first["peak_train_gib"], 3) if delta else ""
                rows.append([str(i), shown, about, f"{_pm(r['score_mean'], r['score_std'], scale, 2)} ({r['n']})",
                             d_score, f"{r['peak_train_gib']:.3f}", d_mem])
                data.append({"row": i, "name": name, "about": about, "source": r["method"], "n": r["n"],
                             "score_mean": r["score_mean"], "score_std": r["score_std"],
                             "peak_train_bytes": r["peak_train_bytes"], "peak_train_gib": r["peak_train_gib"]})
            notes.append("Score: test score (× 100 when a fraction), mean ± sample std (n seeds); memory: peak "
                         "training bytes / 1024^3 (GiB); Δ = change from row 1.")
            tables.append(Table(f"{number}: {what} — {task} v{version}, {backbone}, budget {budget}, {device}",
                                ["#", "row", "description", "score", "Δ score", "peak train mem (GiB)", "Δ mem (GiB)"],
                                rows, [True, False, False, True, True, True, True], notes, pd.DataFrame(data)))
    return tables


def export_ablations(df: pd.DataFrame, out_dir: str | os.PathLike, tables: list[Table] | None = None) -> list[Path]:
    """``ablations.md`` and ``ablations.tex`` next to the leaderboard; nothing when there are no ablation runs."""
    tables = ablation_tables(df) if tables is None else tables
    if not tables:
        return []
    head = "MP-ISMoE ablations (paper Tables 3 and 4), from the mpismoe@table3-* and mpismoe@table4-* runs."
    out = Path(out_dir)
    return [atomic_write_text(out / "ablations.md", f"# {head}\n\n" + "\n".join(t.markdown() for t in tables)),
            atomic_write_text(out / "ablations.tex", f"% {tex_escape(head)}\n"
                              + "\n".join(t.latex() for t in tables))]


def export(df: pd.DataFrame, out_dir: str | os.PathLike, stem: str = "leaderboard") -> list[Path]:
    """Write ``<stem>.md``, ``<stem>.csv`` (raw numbers) and ``<stem>.tex`` atomically; return their paths.

    The Markdown and LaTeX files end with the GLUE (paper Table 2) and vision-language tables when such
    results exist; their raw numbers go to ``<stem>_glue.csv`` / ``<stem>_vl.csv`` (a CSV holds one table).
    """
    out = Path(out_dir)
    extra = {"glue": glue_tables(df), "vl": vl_tables(df)}
    tables = [t for ts in extra.values() for t in ts]
    md = to_markdown(df) + "".join("\n" + t.markdown() for t in tables)
    tex = to_latex(df) + "".join("\n" + t.latex() for t in tables)
    paths = [atomic_write_text(out / f"{stem}.md", md),
             atomic_write_text(out / f"{stem}.csv", df.to_csv(index=False)),
             atomic_write_text(out / f"{stem}.tex", tex)]
    for name, ts in extra.items():
        if ts:
            data = pd.concat([t.data for t in ts], ignore_index=True)
            paths.append(atomic_write_text(out / f"{stem}_{name}.csv", data.to_csv(index=False)))
    return paths


def main(results_dir: str | os.PathLike = "results", out_dir: str | os.PathLike | None = None) -> int:
    """``python -m benchmark leaderboard``: load, build, print the report and the table, write the tables,
    the ablation tables and the HTML page (``<out_dir>/index.html``, embedding ``<out_dir>/figures``)."""
    from benchmark.page import write_page

    records, problems = load_results(results_dir)
    df, report = build_leaderboard(records, problems)
    if df.empty:
        if report.dropped:
            print(report)
        print(f"no results in {results_dir}; run `make bench` first")
        return 0
    print(report)
    print()
    print(to_markdown(df))
    out = Path(out_dir if out_dir is not None else results_dir)
    paths = export(df, out)
    ablations = ablation_tables(df)
    paths += export_ablations(df, out, ablations)
    paths.append(write_page(results_dir, out / "index.html", df=df, report=report, ablations=ablations))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
