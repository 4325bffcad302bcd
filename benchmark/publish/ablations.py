"""The ablation tables (paper Tables 3 and 4): one row per named configuration of the ablated method, each
from runs of its own, with the change from the table's first row. Names and layout: the method cards' tables
(``methods.PaperTable``): a table's rows are the card's, in its order, so a row may head two tables (the
paper's Table 4 starts from Table 3's first row)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from benchmark.publish import fmt
from benchmark.publish.leaderboard import PARETO_GROUP, is_ablation_row
from benchmark.publish.names import ABLATIONS_HEAD
from benchmark.publish.tables import Table, tex_escape
from benchmark.results import atomic_write_text
from methods import method_cards

# (label, title, ((variant, about), ...), method) of every card's table
_TABLES = tuple((t.label, t.title, t.rows, c.name) for c in method_cards() if c.tables for t in c.tables)

HEADER = ["#", "row", "description", "score", "Δ score", "peak train mem (GiB)", "Δ mem (GiB)"]
NOTE = ("Score: test score (× 100 when a fraction), mean ± sample std (n seeds); memory: peak training bytes / "
        "1024^3 (GiB); Δ = change from row 1.")


def _row(i: int, name: str, about: str, r: dict | None, first: dict | None) -> tuple[list[str], dict]:
    """One table row and its raw numbers; ``first`` is row 1 (the Δ base), None when it has no runs."""
    if r is None:
        return [str(i), name, about, "no runs", "", "", ""], {"row": i, "name": name, "about": about, "source": None}
    scale = 100.0 if fmt.is_percent(r["higher_is_better"], r["score_mean"]) else 1.0
    delta = i > 1 and first is not None
    d_score = fmt.signed((r["score_mean"] - first["score_mean"]) * scale, 2) if delta else ""
    d_mem = fmt.signed(r["peak_train_gib"] - first["peak_train_gib"], 3) if delta else ""
    cells = [str(i), name, about, f"{fmt.pm(r['score_mean'], r['score_std'], scale, 2)} ({r['n']})", d_score,
             f"{r['peak_train_gib']:.3f}", d_mem]
    return cells, {"row": i, "name": name, "about": about, "source": r["method"], "n": r["n"],
                   "score_mean": r["score_mean"], "score_std": r["score_std"],
                   "peak_train_bytes": r["peak_train_bytes"], "peak_train_gib": r["peak_train_gib"]}


def ablation_tables(df: pd.DataFrame, experiments: dict | None = None) -> list[Table]:
    """The ablation tables from the ablation rows' runs, per task, version, backbone, budget and device;
    nothing when there are no such runs. ``experiments``: name -> row (with ``about``) overriding the card's
    descriptions; the cards' own by default."""
    ours = df[is_ablation_row(df)]
    if ours.empty:
        return []
    experiments = {} if experiments is None else experiments
    tables = []
    for (task, version, backbone, budget, device), g in ours.groupby(PARETO_GROUP, sort=True):
        by_row = {m: r for m, r in zip(g["method"], g.to_dict("records"))}
        for number, what, table_rows, method in _TABLES:
            by_name = {n: by_row.get(f"{method}@{n}") for n, _ in table_rows}
            if not any(r is not None for r in by_name.values()):
                continue
            rows, data, first = [], [], None
            for i, (name, card_about) in enumerate(table_rows, 1):
                r = by_name[name]
                if i == 1:
                    first = r
                own = experiments.get(name, card_about)
                about = re.sub(r"^Table \d+ row \d+:\s*", "", getattr(own, "about", own))
                cells, raw = _row(i, name, about, r, first)
                rows.append(cells)
                data.append(raw)
            tables.append(Table(f"{number}: {what} — {task} v{version}, {backbone}, budget {budget}, {device}",
                                HEADER, rows, [True, False, False, True, True, True, True], [NOTE], pd.DataFrame(data)))
    return tables


def export_ablations(df: pd.DataFrame, out_dir: str | os.PathLike, tables: list[Table] | None = None) -> list[Path]:
    """``ablations.md`` and ``ablations.tex`` next to the leaderboard; nothing when there are no ablation runs."""
    tables = ablation_tables(df) if tables is None else tables
    if not tables:
        return []
    out = Path(out_dir)
    md = f"# {ABLATIONS_HEAD}\n\n" + "\n".join(t.markdown() for t in tables)
    tex = f"% {tex_escape(ABLATIONS_HEAD)}\n" + "\n".join(t.latex() for t in tables)
    return [atomic_write_text(out / "ablations.md", md), atomic_write_text(out / "ablations.tex", tex)]
