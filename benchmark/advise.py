"""``make advise BUDGET=8GiB BACKBONE=t5-base BATCH=100 LEN=128 [TASK=...]``: which method fits a memory
budget, and which of those is most accurate, before any run.

Peaks are the fake-tensor predictions of ``benchmark.memory.predict`` (read from ``results/memory_predicted.csv``
when it holds this configuration, else predicted now and kept under ``results/tmp/``). Accuracy comes
from the leaderboard of the committed results, for the task and backbone asked; a method with no
result there is listed without one. Order: methods that fit first, the most accurate first, then by
peak; ``*`` marks the Pareto choices (no other fitting method is at least as accurate with less memory).
"""
from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

from benchmark.cli import OverridesParser, entry_point, quiet
from benchmark.errors import UserError
from benchmark.memory.caching import CUDA_CONTEXT_BYTES
from benchmark.memory.capacity import TIGHT, is_tight

UNITS = {"b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9,
         "tb": 10**12}


def parse_budget(text: str) -> int:
    """'8GiB' -> bytes. GiB/MiB are powers of 1024, GB/MB powers of 1000; a bare number is GiB."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = (m.group(2).lower() or "gib") if m else ""
    if not m or unit not in UNITS:
        raise UserError(f"bad budget {text!r}: write a size such as BUDGET=8GiB (GiB = 1024^3 bytes, GB = 10^9)")
    return int(float(m.group(1)) * UNITS[unit])


def _label(method: str, variant: str) -> str:
    if not variant or variant == method or variant.startswith(f"{method}@"):  # a row label already "<method>@..."
        return variant or method
    return f"{method}@{variant}"


def predicted(backbone: str, batch: int, length: int, precision: str, results_dir: Path, head: str = "classifier"):
    """Rows of a prediction for this configuration: the committed table if it matches, else a new one."""
    import pandas as pd

    label = kind_label(backbone, head)

    def matching(path: Path):
        if not path.is_file():
            return None
        df = pd.read_csv(path)
        df = df[(df["backbone"].astype(str) == label) & (df["batch_size"] == batch)
                & (df["max_length"] == length) & (df["precision"].astype(str) == precision)]
        return df if len(df) else None

    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{label}-b{batch}-l{length}-{precision}")
    cached = results_dir / "tmp" / f"memory_predicted-{slug}.csv"
    for path in (results_dir / "memory_predicted.csv", cached):
        df = matching(path)
        if df is not None:
            return df, path
    cached.parent.mkdir(parents=True, exist_ok=True)
    print(f"predicting every method at {backbone}, batch {batch}, length {length}, {precision} "
          f"(fake tensors, a few minutes) ...", file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, "-m", "benchmark.memory.predict", f"backbone={backbone}", f"head={head}",
                           f"batch_size={batch}", f"max_length={length}", f"precision={precision}", f"out={cached}",
                           "--cached"],
                          stdout=subprocess.DEVNULL)
    if proc.returncode == 2:
        raise UserError("the prediction refused its input (see the line above)")
    df = matching(cached)
    if df is None:
        raise UserError(f"the prediction wrote no rows for {backbone}; run `python -m benchmark.memory.predict "
                        f"backbone={backbone}` to see why")
    return df, cached


def accuracy(task: str, backbone: str, results_dir: Path) -> dict[str, tuple[float, float, int]]:
    """label -> (mean, std, n) test score (percent where the score is a fraction) for task and backbone."""
    if not task:
        return {}
    from benchmark.leaderboard import build_leaderboard
    from benchmark.results import load_results

    df, _ = build_leaderboard(*load_results(results_dir))
    if df.empty:
        return {}
    rows = df[(df["task"] == task) & (df["backbone"] == backbone)]
    if rows.empty:
        return {}
    rows = rows[rows["task_version"] == rows["task_version"].max()]
    out = {}
    for _, r in rows.iterrows():
        out[str(r["method"])] = (100 * float(r["score_mean"]), 100 * float(r["score_std"]), int(r["n"]))
    return out


def _shown(row) -> float:
    """What nvidia-smi would show for a predicted row: reserved plus the CUDA context; a table from before
    the reserved column gives its allocated peak plus the context."""
    smi = row.get("nvidia_smi_bytes")
    if smi is not None and not (isinstance(smi, float) and math.isnan(smi)):
        return smi
    return row["peak_train_bytes"] + CUDA_CONTEXT_BYTES


def kind_label(backbone: str, head: str) -> str:
    """The backbone as results and predictions file it: ``<name>:seq2seq`` for the seq2seq kind."""
    return f"{backbone}:seq2seq" if head == "seq2seq" else backbone


def largest_batches(limit: int, backbone: str, batch: int, length: int, precision: str,
                    head: str = "classifier", knob: str = "batch_size", known: dict | None = None) -> dict[str, dict]:
    """Method name -> its largest batch under ``limit`` at ``length`` (``knob="max_length"``: its longest
    input at ``batch``, up to the backbone's limit; ``memory/capacity.py``), every method's default
    configuration in its own process, probes cached on disk (a second call simulates nothing). ``known``:
    method -> what nvidia-smi would show at ``batch`` and ``length`` (the table's row), not predicted again."""
    from benchmark.memory.architecture import length_limit
    from benchmark.memory.capacity import KNOBS, MAX_BATCH, PredictionCache, default_cache_folder
    from methods import METHODS

    cache = PredictionCache(default_cache_folder())
    maximum = MAX_BATCH if knob == "batch_size" else length_limit(backbone)
    # the table's settings (memory/table.py row_overrides); the probe at the asked batch is the table's row
    # (``known``), the others run two steps where the table runs three: every row reaches its peak in the
    # second step, the one beside the optimizer state (on T5-base at batch 100, length 128, all 78 rows have
    # the same tensors' peak with 2 and 3 steps; the allocator replay differs by at most 6 MB allocated and
    # 102 MiB reserved: LST's third seq2seq step caches one more segment), and a probe costs a third to half
    # less
    question = {name: {"backbone": backbone, "head": head, "batch_size": str(batch), "max_length": str(length),
                       "precision": precision, "method": name, "variant": "", "steps": "2"} for name in METHODS}
    asked = {"largest_under": str(limit)} if knob == "batch_size" else {"longest_under": str(limit)}
    answers = {name: cache.peek({**ov, **asked}) for name, ov in question.items()}
    todo = [(name, ov, None) for name, ov in question.items() if answers[name] is None]
    what = KNOBS[knob].replace("_", " ")
    if todo:  # answered before: no process at all
        from benchmark.memory.predict import run_rows

        start = batch if knob == "batch_size" else length
        seen = {name: {start: known[name]} for name in question if known and known.get(name) is not None}
        def progress(line: str) -> None:
            print(line.replace("predicting", f"{what} of"), file=sys.stderr, flush=True)

        out = run_rows(todo, jobs=2, largest_under=limit, knob=knob, knob_max=maximum, known=seen, progress=progress)
        for name, (status, value) in out.items():
            if status == "ok":
                answers[name] = value
                cache.put({**question[name], **asked}, value)
            else:  # shown, not hidden: the table's column stays empty for it
                print(f"{what} of {name}: failed: {value}", file=sys.stderr)
    return {name: a for name, a in answers.items() if a is not None}


def advise(budget: str, backbone: str, batch: int, length: int, task: str = "", precision: str = "32-true",
           results_dir: str | Path = "results", largest: bool = True, head: str = "",
           longest: bool = False) -> list[dict]:
    from benchmark.backbones import default_head

    limit = parse_budget(budget)
    head = head or default_head(backbone)
    if head not in ("classifier", "seq2seq"):
        raise UserError(f"bad value head={head!r}: must be classifier or seq2seq")
    results_dir = Path(results_dir)
    if task:
        from tasks import TASKS

        TASKS.card(task)  # an unknown name fails here, in one line (no task code imported)
    pred, source = predicted(backbone, batch, length, precision, results_dir, head)
    acc = accuracy(task, kind_label(backbone, head), results_dir)
    # each method's default row of the table is the searches' first probe
    known = {str(r["method"]): int(_shown(r)) for _, r in pred.iterrows()
             if str(r["variant"]) == str(r["method"]) and not math.isnan(float(r["peak_train_bytes"]))}
    biggest = largest_batches(limit, backbone, batch, length, precision, head, known=known) if largest else {}
    longest_at = largest_batches(limit, backbone, batch, length, precision, head, knob="max_length",
                                 known=known) if longest else {}
    shown_as = kind_label(backbone, head)  # as results and predictions name it
    rows = []
    for _, r in pred.iterrows():
        label = _label(str(r["method"]), str(r["variant"]) if isinstance(r["variant"], str) else "")
        peak, shown = r["peak_train_bytes"], _shown(r)
        ok = isinstance(peak, (int, float)) and not math.isnan(peak)
        mean, std, n = acc.get(label, (math.nan, math.nan, 0))
        rows.append({"method": label, "peak_bytes": int(peak) if ok else None,
                     "shown_bytes": int(shown) if ok else None, "fits": ok and shown <= limit,
                     "tight": ok and is_tight(int(shown), limit), "largest": biggest.get(label, {}).get("largest_batch"),
                     "longest": longest_at.get(label, {}).get("longest_length"),
                     "length_limit": longest_at.get(label, {}).get("limit"),
                     "mean": mean, "std": std, "n": n, "error": "" if ok else str(r.get("error", "failed"))})
    fitting = [r for r in rows if r["fits"] and not math.isnan(r["mean"])]
    for r in rows:
        r["pareto"] = r in fitting and not any(
            o is not r and o["mean"] >= r["mean"] and o["peak_bytes"] <= r["peak_bytes"]
            and (o["mean"] > r["mean"] or o["peak_bytes"] < r["peak_bytes"]) for o in fitting)
    rows.sort(key=lambda r: (not r["fits"], math.isnan(r["mean"]), -(0 if math.isnan(r["mean"]) else r["mean"]),
                             r["peak_bytes"] if r["peak_bytes"] is not None else math.inf))
    gib = limit / 2**30
    print(f"budget {gib:.2f} GiB; {shown_as}, batch {batch}, length {length}, {precision}; peaks predicted on fake "
          f"tensors ({source}); accuracy: {f'{task} test score, mean ± std (n seeds), on {shown_as}' if task else 'no TASK given'}")
    print(f"fits: the predicted max_memory_reserved plus {CUDA_CONTEXT_BYTES / 2**20:.0f} MiB of CUDA context "
          f"(an estimate), what nvidia-smi would show, within the budget")
    print(f"{'':1} {'method':36} {'peak GiB':>9} {'nvidia-smi':>10} {'fits':>10} {'largest batch':>13}"
          + (f" {'longest length':>14}" if longest_at else "") + "  accuracy")
    for r in rows:
        peak = f"{r['peak_bytes'] / 2**30:.2f}" if r["peak_bytes"] is not None else "failed"
        smi = f"{r['shown_bytes'] / 2**30:.2f}" if r["shown_bytes"] is not None else ""
        score = f"{r['mean']:.2f} ± {r['std']:.2f} ({r['n']})" if not math.isnan(r["mean"]) else "-"
        if r["n"] == 1:
            score = f"{r['mean']:.2f} (1)"
        fits = ("yes, tight" if r["tight"] else "yes") if r["fits"] else "no"
        big = "" if r["largest"] is None else str(r["largest"])
        long_ = "" if r["longest"] is None else (f"{r['longest']}" + ("+" if r["longest"] == r["length_limit"] else ""))
        print(f"{'*' if r['pareto'] else ' ':1} {r['method']:36} {peak:>9} {smi:>10} {fits:>10} {big:>13}"
              + (f" {long_:>14}" if longest_at else "") + f"  {score}" + (f"  {r['error']}" if r["error"] else ""))
    if biggest:
        print(f"largest batch: the largest batch of each method's default configuration predicted to fit "
              f"{gib:.2f} GiB (as nvidia-smi shows it) at length {length}; tight: at batch {batch} it is "
              f"within {TIGHT:.0%} below the budget")
    if longest_at:
        cap = next(iter(longest_at.values()))["limit"]
        print(f"longest length: the longest input of each method's default configuration predicted to fit at "
              f"batch {batch}, searched up to {cap} (the backbone's limit, or the search's); '+': the limit "
              f"itself fits")
    best = next((r for r in rows if r["fits"] and not math.isnan(r["mean"])), None)
    if best:
        print(f"best that fits: {best['method']}")
    elif task and not acc:
        print(f"no results for {task} on {backbone} in {results_dir}/runs: run `make bench TASK={task} "
              f"BACKBONE={backbone}` for the methods that fit")
    return rows


@entry_point()
def main(argv: list[str] | None = None) -> int:
    from benchmark.config import parse_overrides

    p = OverridesParser(prog="python -m benchmark.advise", description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="budget= backbone= head= batch_size= max_length= task= precision=")
    args = p.parse_args(argv)
    quiet()
    o = parse_overrides(args.overrides)
    unknown = set(o) - {"budget", "backbone", "head", "batch_size", "max_length", "task", "precision", "results_dir",
                        "longest"}
    if unknown:
        raise UserError(f"unknown key {sorted(unknown)[0]!r}; valid: budget backbone head batch_size max_length task "
                        f"precision results_dir longest")
    if o.get("longest", "0") not in ("0", "1", ""):
        raise UserError(f"bad value longest={o['longest']!r}: 1 (also search each method's longest length at the "
                        f"batch) or 0")
    if "budget" not in o:
        raise UserError("give a memory budget: BUDGET=8GiB (make advise) or budget=8GiB")
    try:
        batch, length = int(o.get("batch_size", "100")), int(o.get("max_length", "128"))
    except ValueError:
        raise UserError("batch_size and max_length must be whole numbers") from None
    advise(o["budget"], o.get("backbone", "t5-base"), batch, length, o.get("task", ""),
           o.get("precision", "32-true"), o.get("results_dir", "results"), head=o.get("head", ""),
           longest=o.get("longest", "0") == "1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
