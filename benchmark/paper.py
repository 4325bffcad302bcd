"""``make paper``: every run the paper-layout tables and figures need, on the offline tasks, then the tables
and figures. Idempotent: a run whose results file exists and is current is skipped, so a second call trains
nothing; a failed run is reported and the others go on.

What it runs (``PAPER_TASKS``, from the task cards with a ``paper_budget``): each registered method on each
such task, plus each method's ``paper_variants`` (e.g. its ablation rows) on the tasks whose card says
``paper_variants=True`` and its ``paper_alternatives`` (memory alternatives such as ``@checkpointing``) on
every task at its fixed budget, for every seed, each task at its card's budget. The tuned budgets
(``paper_tuned_budget``) compare the papers' methods: they leave out the memory alternatives (methods whose
card has role ``alternative``, and ``paper_alternatives``). "Current" means: the file at the
run's results path is an ok run of the same task version, with the same budget and run settings and the same
method configuration as the plan now resolves to. A changed method default, task version or budget therefore
reruns exactly the runs it touches.

The budgets, and why, are in the task folders (``tasks/<folder>/__init__.py``). Runs of different budgets sit
beside each other and never average (the leaderboard keys rows by budget).
Nothing here branches on a method's or task's name.
"""
from __future__ import annotations

import dataclasses

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmark.cli import OverridesParser, entry_point
from benchmark.config import parse_overrides
from benchmark import runlock
from benchmark.errors import UserError
from tasks import paper_tasks
from benchmark.tune import TRIALS


@dataclass(frozen=True)
class PaperTask:
    task: str
    budget: dict  # run-config values (strings, as on the command line)
    variants: bool = False  # also run each method's paper_variants here
    tuned: bool = False  # the runs read make tune's choice (hparams=tuned): its searches run first


# the task cards with a paper budget (their folders say why that budget), then those with a tuned budget
PAPER_TASKS = (tuple(PaperTask(c.name, dict(c.paper_budget), variants=c.paper_variants) for c in paper_tasks())
               + tuple(PaperTask(c.name, dict(c.paper_tuned_budget), tuned=True) for c in paper_tasks(tuned=True)))
SEEDS = (0, 1, 2)
# the run settings of a tuned budget that are the tuned runs' own (until-plateau), not the trials': a search
# runs at the task's trial budget on the same data
TUNED_ONLY = ("hparams", "patience", "epochs", "max_steps", "val_check_interval", "limit_test_samples")
# Run settings whose change makes an old result stale (besides the method config and the budget).
CURRENT_KEYS = ("epochs", "max_steps", "patience", "hparams", "val_check_interval", "batch_size", "eval_batch_size", "max_length", "pad_to_max_length",
                "warmup_steps", "grad_clip", "limit_train_samples", "limit_eval_samples", "limit_test_samples", "precision", "pooling",
                "vision", "backbone")


@dataclass
class Job:
    overrides: dict  # what ``python -m benchmark run`` gets
    name: str  # task/method[@variant]/seed, for the log
    path: Path | None  # where its results file goes (None: not known until its search has run)
    current: bool = False
    why: str = ""  # why it is not current
    argv: tuple = ()  # the command, when not ``benchmark run`` (a search: ``benchmark tune``)
    cost: tuple = (None, None)  # (expected, at most) seconds, from recorded times (benchmark.cost)


def _expected(plan) -> dict:
    """The record a run of ``plan`` would write, as far as the plan fixes it: its path and whether it is current."""
    from benchmark.results import build_record

    expected = build_record(plan)
    expected["renamed"] = getattr(plan.method_cfg, "renamed", {})  # old method key -> new (MethodConfig.renamed)
    # each method key's default: a key an older record lacks (a field added since) had its default value then
    expected["defaults"] = {f.name: f.default for f in dataclasses.fields(plan.method_cfg)
                            if f.default is not dataclasses.MISSING}
    return expected


def staleness(path: Path, expected: dict) -> str:
    """"" when ``path`` holds a current result for ``expected``, else why not (missing, failed, changed)."""
    from benchmark.results import CORRUPT, read_result

    if not path.is_file():
        return "no results yet"
    record, problem = read_result(path)
    if problem:
        return "results file is " + ("corrupt" if problem.startswith(CORRUPT) else "invalid")
    run, want = record["run"], expected["run"]
    if run["status"] != "ok":
        return f"last run {run['status']}"
    if run["task_version"] != want["task_version"]:
        return f"task version {run['task_version']} -> {want['task_version']}"
    have_v = run.get("method_version", 1)  # records from before method versions are version 1
    if have_v != want["method_version"]:
        return f"method version {have_v} -> {want['method_version']}"
    from benchmark.config import RunConfig

    have_run, want_run = run["config"].get("run", {}), want["config"]["run"]
    # a key an older record lacks (added to RunConfig since) had its default value then
    have_run = {k: have_run.get(k, getattr(RunConfig, k)) for k in CURRENT_KEYS}
    changed = [k for k in CURRENT_KEYS if have_run[k] != want_run[k]]
    if changed:
        return "run settings changed: " + ", ".join(f"{k} {have_run[k]!r} -> {want_run[k]!r}" for k in changed)
    have_m, want_m = run["config"].get("method", {}), want["config"]["method"]
    have_m = {expected.get("renamed", {}).get(k, k): v for k, v in have_m.items()}  # recorded under an old name
    defaults = expected.get("defaults", {})
    have_m = {**{k: defaults[k] for k in want_m if k not in have_m and k in defaults}, **have_m}
    changed = sorted(k for k in set(have_m) | set(want_m) if have_m.get(k) != want_m.get(k))
    if changed:
        return "method config changed: " + ", ".join(changed)
    return ""


def plan_jobs(seeds=SEEDS, extra: dict | None = None, tasks=PAPER_TASKS, costs=None) -> list[Job]:
    """Every paper run, validated by name (as ``benchmark run`` would) and marked current or not. A tuned run
    whose search has not run yet is planned without a path (``why`` says so)."""
    from benchmark.results import budget_label, result_path
    from benchmark.run import REPO_ROOT, plan
    from methods import METHODS, alternative_methods

    extra = dict(extra or {})
    jobs = []
    for pt in tasks:  # a task's seed 0 of every row first: an interrupted paper leaves whole tables behind
        for seed in seeds:
            for method, cls in METHODS.items():
                if pt.tuned and method in alternative_methods():
                    continue  # memory alternatives run at the paper budgets (below), not in the tuned comparison
                variants = [""] + (list(cls.paper_variants) if pt.variants else [])
                variants += [] if pt.tuned else list(cls.paper_alternatives)
                for variant in variants:
                    ov = {"method": method, "task": pt.task, "seed": str(seed), **pt.budget, **extra}
                    if variant:
                        ov["variant"] = variant
                    name = f"{pt.task}/{method}{'@' + variant if variant else ''}/seed{seed}"
                    if pt.tuned and _search_status(ov):
                        p = plan({**ov, "hparams": "paper"})  # the plan, checked, with its search to come
                        expected = _expected(p)
                        job = Job(ov, name + "/tuned", None, why="after its search (make tune)")
                    else:
                        p = plan(ov)
                        expected = _expected(p)
                        path = result_path(REPO_ROOT / p.run.results_dir, expected)
                        why = staleness(path, expected)
                        running = runlock.holder(path)
                        if running:  # another process is training it now: never planned twice
                            why = f"running now ({runlock.describe(running)})"
                        job = Job(ov, name + ("/tuned" if pt.tuned else ""), path, current=not why or bool(running),
                                  why=why)
                    if costs is not None:
                        job.cost = costs.run(pt.task, p.run.label, expected["run"]["config"]["run"],
                                             budget_label(expected["run"]))
                    jobs.append(job)
    return jobs


def search_overrides(ov: dict) -> dict:
    """What the search of a tuned run is run with: the run's settings less its seed and its own budget."""
    return {k: v for k, v in ov.items() if k not in ("seed", *TUNED_ONLY)}


def _search_status(ov: dict) -> str:
    from benchmark.tune import search_status

    return search_status(search_overrides(ov), TRIALS)


def plan_searches(extra: dict | None = None, tasks=PAPER_TASKS, costs=None) -> list[Job]:
    """The make tune searches the tuned rows need: one per (tuned task, method), the same trials for each."""
    import sys as _sys

    from benchmark.tune import trial_plan
    from methods import METHODS, alternative_methods

    jobs = []
    for pt in (t for t in tasks if t.tuned):
        for method in METHODS:
            if method in alternative_methods():
                continue  # not in the tuned comparison (plan_jobs)
            ov = search_overrides({"method": method, "task": pt.task, **pt.budget, **dict(extra or {})})
            why = _search_status(ov)
            job = Job(ov, f"{pt.task}/{method}/search", None, current=not why, why=why,
                      argv=(_sys.executable, "-m", "benchmark", "tune", *(f"{k}={v}" for k, v in ov.items()),
                            "--trials", str(TRIALS)))
            if costs is not None:
                p = trial_plan(ov)[0]
                from benchmark.config import as_dict

                most = costs.search(pt.task, p.run.label, TRIALS, as_dict(p.run))
                job.cost = (most, most)
            jobs.append(job)
    return jobs


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def run_jobs(jobs: list[Job], workers: int, threads: int, log_dir: Path, command=None,
             executor: str = "local", params: dict | None = None) -> list[tuple[Job, int]]:
    """Run ``jobs`` ``workers`` at a time (``benchmark.jobs``: here, or over SLURM with ``executor``), each a
    ``benchmark run`` process with ``threads`` CPU threads and its output in ``log_dir``; a failure is
    reported and the rest go on. Returns (job, exit code) pairs."""
    from benchmark import jobs as runner

    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    total, t_start = len(jobs), time.time()
    todo = [runner.Job(job.name, command(job) if command else list(job.argv) or [
                           sys.executable, "-m", "benchmark", "run", *(f"{k}={v}" for k, v in job.overrides.items())],
                       env=env, log=log_dir / (job.name.replace("/", "__") + ".log"), data=job) for job in jobs]

    def started(i, rj):
        print(f"[{i}/{total}] start {rj.name} ({rj.data.why})", flush=True)

    def finished(i, d):
        took = _minutes(d.seconds)
        if d.returncode == 0:
            print(f"[{i}/{total}] done  {d.job.name} in {took}", flush=True)
        else:
            print(f"[{i}/{total}] FAILED {d.job.name} (exit {d.returncode}) in {took}: {d.last_line()[:200]}; "
                  f"log: {d.job.log}", flush=True)

    done = runner.run(todo, workers, executor=executor, on_start=started, on_done=finished,
                      folder=log_dir / "submitit", params=params)
    print(f"paper: {total} run(s) in {_minutes(time.time() - t_start)} with {workers} at a time", flush=True)
    return [(d.job.data, d.returncode) for d in done]


def default_workers() -> int:
    """One process per GPU is the fair way to time a GPU; on CPU two single-threaded processes use 2 cores
    better than one with 2 threads (most of a step is small ops)."""
    try:
        import torch

        if torch.cuda.is_available():
            return 1
    except ImportError:
        pass
    return max(1, min(2, os.cpu_count() or 1))


@entry_point()
def main(argv: list[str] | None = None) -> int:
    ap = OverridesParser(prog="python -m benchmark.paper", description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="key=value for every run (e.g. wandb=disabled)")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--jobs", type=int, default=0, help="runs at a time (0 = 1 per GPU, else 2 on CPU)")
    ap.add_argument("--dry-run", action="store_true", help="list what would run and what is current; run nothing")
    ap.add_argument("--executor", default="local",
                    help="local (JOBS at a time here) or slurm (submitit: one SLURM job per run)")
    ap.add_argument("--executor-param", action="append", default=[], metavar="KEY=VALUE",
                    help="a submitit parameter, e.g. slurm_partition=gpu gpus_per_node=1 timeout_min=600 (repeatable)")
    ap.add_argument("--part", choices=("all", "fixed", "tuned"), default="all",
                    help="fixed: the runs at the papers' hyperparameters; tuned: the searches and the tuned runs")
    ap.add_argument("--tasks", default="", help="comma-separated task names: only these tasks' runs (default: all)")
    a = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {a.seeds!r}: give comma-separated integers such as 0,1,2") from None
    from benchmark.config import RunConfig
    from benchmark.cost import Costs, summary
    from benchmark.run import REPO_ROOT

    extra = parse_overrides(a.overrides)  # each run's log is a file: it gets plain progress lines, no bar
    results_dir = REPO_ROOT / extra.get("results_dir", RunConfig.results_dir)
    tasks = tuple(t for t in PAPER_TASKS if a.part == "all" or t.tuned == (a.part == "tuned"))
    if a.tasks:
        wanted = [t.strip() for t in a.tasks.split(",") if t.strip()]
        known = sorted({t.task for t in PAPER_TASKS})
        unknown = [t for t in wanted if t not in known]
        if unknown:
            raise UserError(f"--tasks: {unknown[0]!r} is not a paper task; paper tasks: {', '.join(known)}")
        tasks = tuple(t for t in tasks if t.task in wanted)
    costs = Costs(results_dir)
    searches = plan_searches(extra, tasks, costs)
    jobs = plan_jobs(seeds, extra, tasks, costs)
    todo_s = [j for j in searches if not j.current]
    todo = [j for j in jobs if not j.current]
    running = [j for j in jobs if j.why.startswith("running now")]
    print(f"paper: {len(jobs)} runs planned, {len(jobs) - len(todo) - len(running)} current (skipped), "
          + (f"{len(running)} running elsewhere now (skipped), " if running else "") + f"{len(todo)} to run"
          + (f"; {len(searches)} searches ({TRIALS} trials each), {len(todo_s)} to run" if searches else ""))
    for j in running:
        print(f"  skipped {j.name}: {j.why}")
    workers = a.jobs or default_workers()
    cost = summary([("searches (at most: every trial to its budget)", [j.cost for j in todo_s]),
                    ("runs", [j.cost for j in todo])], workers)
    if cost:
        print(cost)
    if a.dry_run:
        for j in todo_s + todo:
            print(f"  would run {j.name}: {j.why}")
        return 0
    failed = []
    threads = max(1, (os.cpu_count() or 1) // workers)
    from benchmark.jobs import parse_params

    params = parse_params(a.executor_param)
    ready = [j for j in todo if j.path is not None]
    if todo_s or ready:  # the searches first: the tuned runs waiting on them follow
        results = run_jobs(todo_s + ready, workers, threads, REPO_ROOT / "runs" / "paper", executor=a.executor,
                           params=params)
        failed = [j for j, rc in results if rc != 0]
    waiting = [j for j in todo if j.path is None]
    if waiting:
        again = {j.name: j for j in plan_jobs(seeds, extra, tuple(t for t in tasks if t.tuned))}
        now = [again[j.name] for j in waiting if again[j.name].path is not None and not again[j.name].current]
        failed += [j for j in waiting if again[j.name].path is None]  # its search failed
        if now:
            results = run_jobs(now, workers, threads, REPO_ROOT / "runs" / "paper", executor=a.executor,
                               params=params)
            failed += [j for j, rc in results if rc != 0]
    from benchmark.publish import publish

    publish(results_dir)  # tables, figures, then the page once
    if failed:
        print(f"paper: {len(failed)} run(s) failed: " + ", ".join(j.name for j in failed)
              + "; tables were built from the rest; `make paper` again retries only these")
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
