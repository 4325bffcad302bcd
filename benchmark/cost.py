"""What ``make paper`` will cost, printed before it starts: from the times runs and tuning trials recorded here.

A run's cost is its planned optimizer steps times the seconds per step its method took on the same task in
recorded runs (a record's ``total_seconds / train_steps``, so set-up and validation are in it; a record from
before ``train_steps`` was kept counts its epochs times the steps per epoch). An until-plateau run is counted
at its cap (an upper bound) and, where other seeds of the same row have finished, at their mean steps. A
search is its trials at the trial budget (pruned trials stop earlier: an upper bound). What has no recorded
time is counted as unknown, never guessed.
"""
from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path


class Costs:
    """Seconds per step and steps per epoch, read once from ``results_dir`` (records and tuning files)."""

    def __init__(self, results_dir: str | Path):
        from benchmark.results import load_results, method_label

        self.per_step: dict[tuple, list[float]] = defaultdict(list)  # (task, label) -> seconds per step
        self.epoch_steps: dict[tuple, int] = {}  # (task, limit_train_samples, batch_size) -> steps per epoch
        self.finished: dict[tuple, list[int]] = defaultdict(list)  # (task, label, budget) -> train_steps
        records, _ = load_results(results_dir)
        ok = [r for r in records if r["run"]["status"] == "ok"]
        for rec in ok:
            eff, cfg = rec["efficiency"], rec["run"]["config"].get("run", {})
            if eff.get("steps_per_epoch"):
                self.epoch_steps[self._data_key(rec["run"]["task"], cfg)] = eff["steps_per_epoch"]
        for path in sorted(Path(results_dir).glob("tuning/*.json")):
            try:
                found = json.loads(path.read_text(encoding="utf-8"))
                for t in found.get("trials", []):
                    if t.get("steps_per_epoch") and "trial_run" in found:
                        self.epoch_steps[self._data_key(found["task"], found["trial_run"])] = t["steps_per_epoch"]
                    if t.get("seconds") and t.get("train_steps"):
                        self.per_step[(found["task"], found["method"])].append(t["seconds"] / t["train_steps"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue  # an unreadable tuning file only loses its times here
        for rec in ok:
            from benchmark.results import budget_label

            run, eff = rec["run"], rec["efficiency"]
            cfg = run["config"].get("run", {})
            steps = eff.get("train_steps") or self.planned_steps(run["task"], cfg)
            if steps and eff.get("total_seconds"):
                self.per_step[(run["task"], method_label(run))].append(eff["total_seconds"] / steps)
            if eff.get("train_steps"):
                self.finished[(run["task"], method_label(run), budget_label(run))].append(eff["train_steps"])

    @staticmethod
    def _data_key(task: str, cfg: dict) -> tuple:
        return task, int(cfg.get("limit_train_samples", 0) or 0), int(cfg.get("batch_size", 32))

    def steps_per_epoch(self, task: str, cfg: dict) -> int | None:
        key = self._data_key(task, cfg)
        if key in self.epoch_steps:
            return self.epoch_steps[key]
        return math.ceil(key[1] / key[2]) if key[1] else None  # a subset: its size over the batch

    def planned_steps(self, task: str, cfg: dict) -> int | None:
        """The steps a fixed budget trains, or an until-plateau budget's cap."""
        if int(cfg.get("max_steps", -1)) > 0:
            return int(cfg["max_steps"])
        spe = self.steps_per_epoch(task, cfg)
        return int(cfg.get("epochs", 1)) * spe if spe else None

    def seconds_per_step(self, task: str, label: str) -> float | None:
        seen = self.per_step.get((task, label)) or self.per_step.get((task, label.split("@")[0]))
        return statistics.median(seen) if seen else None

    def run(self, task: str, label: str, cfg: dict, budget: str) -> tuple[float | None, float | None]:
        """(expected seconds, at-most seconds) of one run; None where nothing was recorded (an until-plateau run
        expects what its finished seeds took: None before one has finished)."""
        rate, cap = self.seconds_per_step(task, label), self.planned_steps(task, cfg)
        if rate is None or cap is None:
            return None, None
        if not int(cfg.get("patience", 0) or 0):
            return rate * cap, rate * cap
        done = self.finished.get((task, label, budget))  # until-plateau: its finished seeds, else only the cap
        return (rate * statistics.mean(done) if done else None), rate * cap

    def search(self, task: str, label: str, trials: int, trial_cfg: dict) -> float | None:
        """At most: every trial to its budget."""
        rate, steps = self.seconds_per_step(task, label), self.planned_steps(task, trial_cfg)
        return None if rate is None or steps is None else rate * steps * trials


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def summary(parts: list[tuple[str, list[tuple[float | None, float | None]]]], workers: int) -> str:
    """One line per part (name, [(expected, at most) seconds per item]) and the wall time at ``workers``. An
    item with a bound and no expectation (an until-plateau run none of whose seeds has finished) counts at
    its bound, and the line says how many did."""
    lines, total_exp, total_max = [], 0.0, 0.0
    for name, items in parts:
        if not items:
            continue
        exp = sum(e if e is not None else m for e, m in items if m is not None)
        most = sum(m for _, m in items if m is not None)
        total_exp, total_max = total_exp + exp, total_max + most
        at_cap = sum(e is None and m is not None for e, m in items)
        unknown = sum(m is None for _, m in items)
        notes = ([f"at most {hours(most)}"] if most > exp * 1.05 else []) \
            + ([f"{at_cap} counted at their cap, none of their seeds has finished"] if at_cap else []) \
            + ([f"{unknown} with no recorded time yet"] if unknown else [])
        lines.append(f"  {len(items)} {name}: about {hours(exp)} of CPU" + (f" ({'; '.join(notes)})" if notes else ""))
    if lines:
        bound = f" (at most {hours(total_max / workers)})" if total_max > total_exp * 1.05 else ""
        lines.append(f"  with {workers} at a time: about {hours(total_exp / workers)} of wall time{bound}")
    return "cost, from the times recorded in results/:\n" + "\n".join(lines) if lines else ""
