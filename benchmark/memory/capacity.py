"""The largest batch that fits a memory budget, from predictions (``make advise``), and a disk cache of
predictions so a second question costs nothing.

Peak training memory grows with the batch (weights, gradients and optimizer state stay, activations grow with
it), so "the largest batch that fits" is a search over a monotone function that costs one fake-tensor
simulation per probe. Two probes give a straight-line estimate of where the budget is crossed (activations
are very nearly linear in the batch); between the largest value known to fit and the smallest known not to,
secant steps through the latest two probes (checked with the neighbour near the end), or bisection where a
step did not halve the bracket, then settle it exactly, usually in two or three more probes. The same search answers the longest
input at a batch, where the peak curves (attention scores grow with the square of the length).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

MAX_BATCH = 1 << 16
MAX_LENGTH = 1 << 14  # the longest input searched where the architecture sets no limit (T5's relative positions)
# what a search varies -> the name of its answer
KNOBS = {"batch_size": "largest_batch", "max_length": "longest_length"}
TIGHT = 0.10  # a row whose predicted peak is within 10 % below the budget is "tight"


def is_tight(peak: int | None, budget: int) -> bool:
    return peak is not None and (1 - TIGHT) * budget <= peak <= budget


def largest_batch(peak_at: Callable[[int], int], budget: int, first: int = 8,
                  max_batch: int = MAX_BATCH) -> tuple[int, dict[int, int]]:
    """(the largest batch b <= ``max_batch`` with ``peak_at(b) <= budget``, 0 when even 1 does not fit; every
    probe b -> peak). ``peak_at`` must not decrease with b. The first probes are ``first`` (the batch asked
    about, often predicted already) and its double or half."""
    probes: dict[int, int] = {}
    lo, hi = 0, None  # the largest batch known to fit (0: none yet), the smallest known not to

    def see(b: int) -> None:
        nonlocal lo, hi
        if b not in probes:
            probes[b] = peak_at(b)
        if probes[b] <= budget:
            lo = max(lo, b)
        else:
            hi = b if hi is None else min(hi, b)

    def open_(b: int) -> bool:  # not settled yet
        return lo < b <= max_batch and (hi is None or b < hi)

    b0 = min(max(1, first), max_batch)
    see(b0)
    b1 = min(max_batch, 2 * b0) if hi is None else max(1, b0 // 2)
    if open_(b1):
        see(b1)
    if len(probes) == 2:  # the straight line through them, where it meets the budget, and its neighbour
        (xa, ya), (xb, yb) = sorted(probes.items())
        if yb > ya:
            est = max(1, min(max_batch, int(xa + (budget - ya) * (xb - xa) / (yb - ya))))
            if open_(est):
                see(est)
            near = est + 1 if lo == est else est - 1
            if near >= 1 and open_(near):
                see(near)
    while hi is None:  # nothing known to fail yet: the line from the first probe through the largest that
        # fits, just past its crossing (it curves up, so the crossing is near), at most doubling
        if lo >= max_batch:
            return max_batch, probes
        (xa, ya), y = min(probes.items()), probes[lo]
        est = int(xa + (budget - ya) * (lo - xa) / (y - ya)) + 1 if lo > xa and y > ya else 2 * lo
        see(min(max_batch, max(lo + 1 + lo // 32, min(2 * lo, est))))  # 3 % at least: reserved has flat steps
    halve = lo == 0  # from 0: bisection, which probes 1 when nothing fits
    while hi - lo > 1:
        width = hi - lo
        if halve:
            see((lo + hi) // 2)
        else:  # the secant through the two latest probes (a peak that curves, as attention's does over the
            # length, is met in a few of these); near the answer, the neighbour on the other side
            (xa, ya), (xb, yb) = list(probes.items())[-2:]
            est = xa + (budget - ya) * (xb - xa) / (yb - ya) if yb != ya else (lo + hi) / 2
            est = min(hi - 1, max(lo + 1, int(est)))
            see(est)
            near = est + 1 if lo == est else est - 1
            if open_(near) and hi - lo <= 8:
                see(near)
        halve = not halve and hi - lo > width // 2  # a secant step that did not halve the bracket: bisect next
    return lo, probes


# --- the cache ---------------------------------------------------------------------------------------------
def code_version() -> str:
    """A hash of the code a prediction runs: the memory package, the run/module code and every method folder."""
    root = Path(__file__).resolve().parents[2]
    files = sorted([*root.glob("benchmark/memory/*.py"), root / "benchmark/module.py", root / "benchmark/run.py",
                    root / "benchmark/config.py", *root.glob("benchmark/backbones/**/*"),
                    *root.glob("methods/**/*.py"), *root.glob("tasks/**/*.py")])
    h = hashlib.sha256()
    for f in (f for f in files if f.is_file() and "__pycache__" not in f.parts):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cache_key(overrides: dict[str, str], version: str) -> str:
    """A prediction's identity: its settings (backbone, method and its config, shape, precision, target,
    steps) and the code version."""
    text = json.dumps({"overrides": dict(sorted(overrides.items())), "code": version}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class PredictionCache:
    """One JSON file per prediction under ``folder``; a corrupt file is a miss (and rewritten)."""

    def __init__(self, folder: str | Path, version: str | None = None):
        self.folder = Path(folder)
        self.version = version or code_version()
        self.hits = self.misses = 0

    def _path(self, overrides: dict[str, str]) -> Path:
        return self.folder / f"{cache_key(overrides, self.version)}.json"

    def peek(self, overrides: dict[str, str]) -> dict | None:
        try:
            return json.loads(self._path(overrides).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def put(self, overrides: dict[str, str], row: dict) -> None:
        from benchmark.results import atomic_write_text

        atomic_write_text(self._path(overrides), json.dumps(row) + "\n")

    def get(self, overrides: dict[str, str], compute: Callable[[dict[str, str]], dict]) -> dict:
        row = self.peek(overrides)
        if row is not None:
            self.hits += 1
            return row
        self.misses += 1
        row = compute(overrides)
        self.put(overrides, row)
        return row


def default_cache_folder() -> Path:
    """``$METL_CACHE/predictions`` if set, else ``~/.cache/metl-bench/predictions``."""
    env = os.environ.get("METL_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "metl-bench") / "predictions"


def largest_batch_row(overrides: dict[str, str], budget: int, simulate, cache: PredictionCache | None = None,
                      knob: str = "batch_size", maximum: int = MAX_BATCH, known: dict[int, int] | None = None) -> dict:
    """One row's largest batch under ``budget`` (``knob="max_length"``: its longest input at the row's batch,
    at most ``maximum``): every probe a (cached) ``simulate`` of the row at that value. The peak grows with
    the length too (attention's scores quadratically on a math path), so the same search answers it.
    ``known``: value -> peak already predicted (the committed table's row at the asked batch), not simulated again."""
    if knob not in KNOBS:
        raise ValueError(f"cannot search {knob!r}; one of {', '.join(KNOBS)}")
    cache = cache or PredictionCache(default_cache_folder())
    rows: dict[int, dict] = {}

    def peak_at(b: int) -> int:
        if known and b in known:
            rows[b] = {"method": overrides.get("method"), "variant": overrides.get("variant"),
                       "nvidia_smi_bytes": known[b]}
            return known[b]
        rows[b] = cache.get({**overrides, knob: str(b)}, simulate)
        return int(rows[b].get("nvidia_smi_bytes") or rows[b]["peak_train_bytes"])  # what nvidia-smi would show

    first = int(overrides.get(knob, "8") or 8)
    best, probes = largest_batch(peak_at, budget, first=min(first, maximum), max_batch=maximum)
    any_row = next(iter(rows.values()))
    return {"method": any_row["method"], "variant": any_row["variant"], KNOBS[knob]: best,
            "limit": maximum, "peak_at_largest": probes.get(best),
            "probes": {str(b): p for b, p in sorted(probes.items())},
            "cache_hits": cache.hits, "cache_misses": cache.misses}
