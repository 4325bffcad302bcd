"""The largest batch that fits a memory budget, from predictions (``make advise``), and a disk cache of
predictions so a second question costs nothing.

Peak training memory grows with the batch (weights, gradients and optimizer state stay, activations grow with
it), so "the largest batch that fits" is a search over a monotone function that costs one fake-tensor
simulation per probe. Two probes give a straight-line estimate of where the budget is crossed (activations
are very nearly linear in the batch); bisection between the largest batch known to fit and the smallest known
not to fit then settles it exactly, usually in two or three more probes.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

MAX_BATCH = 1 << 16
TIGHT = 0.10  # a row whose predicted peak is within 10 % below the budget is "tight"


def is_tight(peak: int | None, budget: int) -> bool:
    return peak is not None and (1 - TIGHT) * budget <= peak <= budget


def largest_batch(peak_at: Callable[[int], int], budget: int, first: int = 8,
                  max_batch: int = MAX_BATCH) -> tuple[int, dict[int, int]]:
    """(the largest batch b <= ``max_batch`` with ``peak_at(b) <= budget``, 0 when even 1 does not fit; every
    probe b -> peak). ``peak_at`` must not decrease with b."""
    probes: dict[int, int] = {}

    def fits(b: int) -> bool:
        if b not in probes:
            probes[b] = peak_at(b)
        return probes[b] <= budget

    if not fits(1):
        return 0, probes
    lo, hi = 1, None  # lo fits; hi, once known, does not
    first = min(max(2, first), max_batch)
    if first > 1:
        if fits(first):
            lo = first
        else:
            hi = first
    # the straight line through the two probes, and the batch where it meets the budget, with its neighbour
    slope = (probes[first] - probes[1]) / (first - 1) if first > 1 else 0
    if slope > 0:
        est = max(1, min(max_batch, int(1 + (budget - probes[1]) / slope)))
        if (hi is None or est < hi) and est > lo:
            if fits(est):
                lo = est
            else:
                hi = est
        near = est + 1 if est == lo else est - 1  # its neighbour across the crossing, if still open
        if lo < near <= max_batch and (hi is None or near < hi):
            if fits(near):
                lo = near
            else:
                hi = near
    while hi is None:  # nothing known to fail yet: double
        if lo >= max_batch:
            return max_batch, probes
        b = min(max_batch, lo * 2)
        if fits(b):
            lo = b
        else:
            hi = b
    while hi - lo > 1:  # bisection
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo, probes


# --- the cache ---------------------------------------------------------------------------------------------
def code_version() -> str:
    """A hash of the code a prediction runs: the memory package, the run/module code and every method folder."""
    root = Path(__file__).resolve().parents[2]
    files = sorted([*root.glob("benchmark/memory/*.py"), root / "benchmark/module.py", root / "benchmark/run.py",
                    *root.glob("benchmark/backbones/**/*.py"), *root.glob("methods/**/*.py")])
    h = hashlib.sha256()
    for f in files:
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


def largest_batch_row(overrides: dict[str, str], budget: int, simulate, cache: PredictionCache | None = None) -> dict:
    """One row's largest batch under ``budget``: every probe a (cached) ``simulate`` of the row at that batch."""
    cache = cache or PredictionCache(default_cache_folder())
    rows: dict[int, dict] = {}

    def peak_at(b: int) -> int:
        rows[b] = cache.get({**overrides, "batch_size": str(b)}, simulate)
        return int(rows[b].get("nvidia_smi_bytes") or rows[b]["peak_train_bytes"])  # what nvidia-smi would show

    first = int(overrides.get("batch_size", "8") or 8)
    best, probes = largest_batch(peak_at, budget, first=first)
    any_row = next(iter(rows.values()))
    return {"method": any_row["method"], "variant": any_row["variant"], "largest_batch": best,
            "peak_at_largest": probes.get(best), "probes": {str(b): p for b, p in sorted(probes.items())},
            "cache_hits": cache.hits, "cache_misses": cache.misses}
