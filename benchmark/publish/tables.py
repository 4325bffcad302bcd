"""The leaderboard frame rendered: one Markdown/LaTeX table of every row, a CSV of the raw numbers, and each
family's table in the paper's layout (``names.LAYOUTS``), each a ``Table`` that Markdown, LaTeX and the HTML
page render alike."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmark.publish import fmt
from benchmark.publish.leaderboard import is_ablation_row
from benchmark.publish.names import ABLATIONS_MOVED, AVERAGE_NOTES, LAYOUTS, METHOD_ORDER, Layout
from benchmark.results import atomic_write_text

NOTES = ("Scores that are fractions (accuracy, F1, correlations) are in percent; mean ± sample std over "
         "seeds, (n) = seeds; (n; k code versions) = its seeds ran on k different versions of the suite's code "
         "(benchmark/ less the publishing code in benchmark/publish/, methods/, tasks/, pyproject.toml; same method "
         "version, but check the git log between them). Memory: peak training bytes / 1024^3 (GiB). Params %: trainable "
         "parameters (task head included) / the backbone's own parameters, the papers' denominator. ★ = Pareto front of score vs "
         "peak memory within a task, version, backbone, budget and device. Budget: epochs (or steps), batch, "
         "max length, train/eval subsets (evalN: validation on a fixed N-example subset, and test on the same N "
         "unless -testall (the whole test split) or -testN follows), precision when not fp32; "
         "plateauN-max… = trained until N validations "
         "in a row brought no improvement, at most the cap; tuned-… = every method at the values of the same "
         "make tune search (on validation), not its paper's. " + AVERAGE_NOTES)


# --- Markdown and LaTeX ------------------------------------------------------------------------------
def md_table(header: list[str], rows: list[list[str]], numeric: list[bool]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [line(header), "| " + " | ".join("---:" if n else "---" for n in numeric) + " |"]
    return "\n".join(out + [line(r) for r in rows]) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "★": r"$\star$",
        "·": r"$\cdot$", "†": r"$^\dagger$", "Δ": r"$\Delta$", "×": r"$\times$", "—": "--"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def tex_table(header: list[str], rows: list[list[str]], numeric: list[bool]) -> str:
    spec = "".join("r" if n else "l" for n in numeric)
    out = [f"\\begin{{tabular}}{{{spec}}}", "\\hline", " & ".join(tex_escape(h) for h in header) + " \\\\",
           "\\hline"]
    out += [" & ".join(tex_escape(c) for c in r) + " \\\\" for r in rows]
    return "\n".join(out + ["\\hline", "\\end{tabular}"]) + "\n"


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
        return f"### {self.title}\n\n" + md_table(self.header, self.rows, self.numeric) + notes

    def latex(self) -> str:
        out = f"% {tex_escape(self.title)}\n" + tex_table(self.header, self.rows, self.numeric)
        if self.notes:
            out += "\\par\\smallskip{\\footnotesize " + "\\par ".join(tex_escape(n) for n in self.notes) + "}\\par\n"
        return out


# --- the leaderboard, every row ----------------------------------------------------------------------
def _display_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]], list[bool]]:
    """Header, cells and which columns are numeric (right-aligned), shared by Markdown and LaTeX."""
    metric_names = [c[:-5] for c in df.columns if c.endswith("_mean") and c not in ("score_mean", "val_score_mean")]
    header = ["task", "v", "backbone", "budget", "device", "method", "test score (mean ± std (n))",
              "test metrics (mean)", "val score", "trainable params", "peak train mem (GiB)", "step (s)", "Pareto"]
    numeric = [False, True, False, False, False, False, True, False, True, True, True, True, False]
    rows = []
    for _, r in df.iterrows():
        percent = fmt.is_percent(r["higher_is_better"], r["score_mean"])
        metrics = " · ".join(f"{m} {fmt.score(r[f'{m}_mean'], None, percent)}" for m in metric_names
                             if not fmt.isnan(r[f"{m}_mean"]))
        rows.append([
            str(r["task"]), str(r["task_version"]), str(r["backbone"]), str(r["budget"]), str(r["device"]),
            str(r["method"]),
            f"{fmt.score(r['score_mean'], r['score_std'], percent)} ({r['n']}{_code_versions(r)})", metrics,
            fmt.score(r["val_score_mean"], None, percent),
            f"{int(r['trainable_params']):,} ({r['trainable_percent']:.2f} %)",
            f"{r['peak_train_gib']:.3f}", fmt.fixed(r["step_seconds"]),
            "★" if r["pareto"] else "",
        ])
    return header, rows, numeric


def _code_versions(r) -> str:
    k = r.get("code_versions")
    return f"; {int(k)} code versions" if k is not None and not fmt.isnan(k) and int(k) > 1 else ""


def to_markdown(df: pd.DataFrame) -> str:
    """A Markdown table of the leaderboard (no ``tabulate`` needed) followed by a note on units."""
    return md_table(*_display_rows(df)) + "\n" + NOTES + "\n"


def to_latex(df: pd.DataFrame) -> str:
    """A LaTeX ``tabular`` (no packages beyond the kernel) of the same table as the Markdown."""
    return tex_table(*_display_rows(df))


# --- per family, in the paper's layout ---------------------------------------------------------------
def method_key(label: str) -> tuple:
    """Sort key of a method label: ``METHOD_ORDER`` first, then any other method by name; variants after."""
    base, _, variant = str(label).partition("@")
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), base, variant)


def _task_table(df: pd.DataFrame, tasks: list[str], names: dict[str, str], title: str, avg_name: str,
                every_column: bool = False) -> list[Table]:
    """One row per method, one column per task (score x 100), per (backbone, budget, device); ``every_column``
    keeps a column for each of ``tasks`` even without results (a fixed layout, gaps visible).

    Each task uses its newest version within the group, so versions never meet in a row or an average.
    """
    is_ablation = is_ablation_row(df)
    sub = df[df["task"].isin(tasks) & ~is_ablation]
    moved = ABLATIONS_MOVED if (df["task"].isin(tasks) & is_ablation).any() else ""
    tables = []
    for (backbone, budget, device), g in sub.groupby(["backbone", "budget", "device"], sort=True):
        newest = {t: int(g.loc[g["task"] == t, "task_version"].max()) for t in tasks if (g["task"] == t).any()}
        cols = list(tasks) if every_column else list(newest)
        keep = g[[newest[t] == v for t, v in zip(g["task"], g["task_version"])]]
        older = g.loc[g.index.difference(keep.index)]
        header = ["method", "params %", "peak train mem (GiB)"] + [names.get(t, t) for t in cols] + [avg_name, "n"]
        rows, data = [], []
        for method in sorted(keep["method"].unique(), key=method_key):
            m = keep[keep["method"] == method].set_index("task")
            complete = all(t in m.index for t in cols)
            avg = m.loc[cols, "score_mean"].mean() if complete else float("nan")
            rows.append([method, f"{m['trainable_percent'].max():.2f}", f"{m['peak_train_gib'].max():.3f}"]
                        + [fmt.pm(m.at[t, "score_mean"], m.at[t, "score_std"]) if t in m.index else "" for t in cols]
                        + [fmt.pm(avg, None), str(int(m["n"].min()))])
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


def layout_tables(df: pd.DataFrame, layout: Layout) -> list[Table]:
    """The tables of one family in its paper layout (``names.LAYOUTS``), per backbone, budget and device."""
    fam = df[df["task_family"] == layout.family]
    if layout.every_column:
        tasks = list(layout.tasks)
    else:
        tasks = [t for t in layout.tasks if t in set(fam["task"])] + sorted(set(fam["task"]) - set(layout.tasks))
    return _task_table(fam, tasks, layout.names, layout.title, layout.average, every_column=layout.every_column)


def family_tables(df: pd.DataFrame) -> dict[str, list[Table]]:
    """The paper-layout tables of every family in ``LAYOUTS``, by family name (empty lists included)."""
    return {layout.family: layout_tables(df, layout) for layout in LAYOUTS}


def export(df: pd.DataFrame, out_dir: str | os.PathLike, stem: str = "leaderboard",
           families: dict[str, list[Table]] | None = None) -> list[Path]:
    """Write ``<stem>.md``, ``<stem>.csv`` (raw numbers) and ``<stem>.tex`` atomically; return their paths.

    The Markdown and LaTeX files end with the per-family paper-layout tables when such results exist; their raw
    numbers go to ``<stem>_<family>.csv`` (a CSV holds one table).
    """
    out = Path(out_dir)
    extra = family_tables(df) if families is None else families
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
