"""Publishing the results: ``results/runs/**/*.json`` (with ``memory.csv`` and ``quantization.csv``) ->
the leaderboard tables, the ablation tables, the figures and the HTML page, in one step (``publish``) that
reads the results once and writes the page once.

    leaderboard  the frame: seeds averaged, bad runs dropped and counted, the Pareto front
    tables       Markdown, CSV and LaTeX of the frame, and each family's table in the paper's layout
    ablations    the ablation tables (paper Tables 3 and 4)
    figures      score vs memory, memory breakdown, quantization error (PNGs and figures.json)
    page         index.html, rendered from what it is given (it reads no results)
    fmt          the number rules they share;  names  every method/task name they know

``make leaderboard`` publishes the tables, ``make figures`` the figures, ``make paper`` both; each writes
the page once. Submodules are imported inside the functions: the tables alone never load matplotlib.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def publish(results_dir: str | os.PathLike = "results", out_dir: str | os.PathLike | None = None, *,
            tables: bool = True, figures: bool = True, figures_dir: str | os.PathLike | None = None) -> list[Path]:
    """Read ``<results_dir>/runs`` once; write the tables into ``out_dir`` (default ``results_dir``) and the
    figures into ``figures_dir`` (default ``<out_dir>/figures``), as asked, then the page
    (``<out_dir>/index.html``) once. Prints what it did; returns the paths written, the page last.

    The page is written with the tables when there are results, and with the figures alone when they go
    where the page looks for them (``<out_dir>/figures``) and ``<results_dir>/runs`` exists.
    """
    from benchmark.publish.leaderboard import build_leaderboard
    from benchmark.publish.tables import export, to_markdown
    from benchmark.results import load_results

    out = Path(out_dir if out_dir is not None else results_dir)
    fig_dir = Path(figures_dir) if figures_dir is not None else out / "figures"
    records, bad = load_results(results_dir)
    df, report = build_leaderboard(records, bad)
    with_page = (tables and not df.empty) or (figures and fig_dir.resolve() == (out / "figures").resolve()
                                              and (Path(results_dir) / "runs").is_dir())
    families, ablations = _paper_tables(df) if (tables or with_page) and not df.empty else ({}, [])
    written: list[Path] = []
    if tables and df.empty:
        if report.dropped:
            print(report)
        print(f"no results in {results_dir}; run `make bench` first")
    elif tables:
        from benchmark.publish.ablations import export_ablations

        print(report)
        print()
        print(to_markdown(df))
        written += export(df, out, families=families) + export_ablations(df, out, ablations)
        if figures:  # the page comes after the figures
            print("wrote " + ", ".join(str(p) for p in written))
    if figures:
        written += _figures(results_dir, fig_dir, df, report, records)
    if with_page:
        from benchmark.publish.page import write_page

        paper = [t for ts in families.values() for t in ts] + ablations
        written.append(write_page(out / "index.html", df, report.lines(), paper))
        if tables and not df.empty and not figures:
            print("wrote " + ", ".join(str(p) for p in written))
        else:
            print(f"  {written[-1]}")
    return written


def _paper_tables(df) -> tuple[dict, list]:
    from benchmark.publish.ablations import ablation_tables
    from benchmark.publish.tables import family_tables

    return family_tables(df), ablation_tables(df)


def _figures(results_dir, fig_dir: Path, df, report, records) -> list[Path]:
    from benchmark.publish.figures import write_figures

    paths = write_figures(results_dir, fig_dir, df=df, report=report, records=records)
    print(f"wrote {len(paths)} figure{'s' if len(paths) != 1 else ''} to {fig_dir}" + (":" if paths else ""))
    for path in paths:
        print(f"  {path}")
    return paths


def leaderboard_main(results_dir: str | os.PathLike = "results", out_dir: str | os.PathLike | None = None) -> int:
    """``python -m benchmark leaderboard``: print the report and the table; write the tables, the ablation
    tables and the page (embedding the figures already in ``<out_dir>/figures``)."""
    publish(results_dir, out_dir, figures=False)
    return 0


def figures_main(argv: list[str] | None = None) -> int:
    """``python -m benchmark.figures``: the figures; the page too when they go to ``<results-dir>/figures``."""
    p = argparse.ArgumentParser(prog="python -m benchmark.figures",
                                description="Figures from the committed results only (results/runs, "
                                            "results/memory.csv, results/quantization.csv), so anyone can "
                                            "redraw them without a GPU or a training run.")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: <results-dir>/figures)")
    args = p.parse_args(argv)
    publish(args.results_dir, tables=False, figures_dir=args.out)
    return 0
