"""One job runner: a list of commands, each run as its own process with its output captured, a few at
a time on this machine (``local``) or fanned out over a cluster through submitit (``slurm``; ``local``
and ``debug`` are submitit's own executors, for tests). Used by ``make memory`` (one fresh process per
row), the memory prediction (one process per row) and ``make paper`` (one ``benchmark run`` per run).

A job's failure is data (its exit code and output), never an exception here; ``stop_on`` names the
exit code that stops everything (2: a bad input, the same for every job), jobs not started are dropped.

``preload`` (local only): a job ``python -m <module> ...`` runs as ``<module>``'s ``__main__`` in a fresh
process forked from a server that imported ``preload`` once (multiprocessing's forkserver), so rows that
each need torch & co do not pay ~6 s of imports apiece; still one process per job, so a crash or a leak
stays in its own row. ``METL_JOBS_START=fork`` forks this process instead (tests), ``spawn`` is a fresh
interpreter.
"""
from __future__ import annotations

import os
import runpy
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from benchmark.errors import UserError

EXECUTORS = ("local", "slurm", "submitit-local", "debug")


@dataclass
class Job:
    name: str
    argv: list[str]
    env: dict | None = None  # variables set on top of the environment the job runs in (a cluster node's own)
    log: Path | None = None  # stdout and stderr interleaved into this file (else captured apart)
    data: object = None  # the caller's own (e.g. the row or paper job it stands for)


@dataclass
class Done:
    job: Job
    returncode: int
    stdout: str = ""
    stderr: str = ""  # with ``job.log``: both are the log's text
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def last_line(self) -> str:
        """The last line of stderr (of the log with ``job.log``): a failed job's one-line reason."""
        return (self.stderr.strip().splitlines() or [""])[-1]


def run_one(job: Job) -> Done:
    """Run one job to its end in a subprocess (this is also what a submitit worker runs)."""
    t0 = time.time()
    env = {**os.environ, **job.env} if job.env else None
    if job.log is not None:
        Path(job.log).parent.mkdir(parents=True, exist_ok=True)
        with open(job.log, "w") as fh:
            rc = subprocess.call(job.argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
        text = Path(job.log).read_text(errors="replace")
        return Done(job, rc, text, text, time.time() - t0)
    proc = subprocess.run(job.argv, capture_output=True, text=True, env=env)
    return Done(job, proc.returncode, proc.stdout, proc.stderr, time.time() - t0)


def _module_main(argv: list[str], log: str, env: dict | None) -> None:
    """A preloaded process: ``argv`` (``python -m <module> ...``) run as that module's ``__main__``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env or {})
    sys.argv = [argv[2], *argv[3:]]
    code = 0
    try:
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported as the job's output and exit code
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _context(preload: tuple[str, ...]):
    import multiprocessing as mp

    method = os.environ.get("METL_JOBS_START", "forkserver")
    try:
        ctx = mp.get_context(method)
    except ValueError:  # no forkserver on this platform: a fresh interpreter per job
        return mp.get_context("spawn")
    if method == "forkserver":
        ctx.set_forkserver_preload(list(preload))
    return ctx


def run_preloaded(job: Job, ctx) -> Done:
    """Run ``job`` (``python -m <module> ...``) in a process of ``ctx``; its output interleaved, as with a log."""
    t0 = time.time()
    fd, log = tempfile.mkstemp(prefix="metl-job-", suffix=".log") if job.log is None else (None, str(job.log))
    if fd is not None:
        os.close(fd)
    try:
        proc = ctx.Process(target=_module_main, args=(job.argv, log, job.env), daemon=True)
        proc.start()
        proc.join()
        text = Path(log).read_text(errors="replace")
    finally:
        if fd is not None:
            os.unlink(log)
    return Done(job, proc.exitcode, text, text, time.time() - t0)


def run(jobs: list[Job], workers: int = 1, executor: str = "local", stop_on: int | None = None,
        on_start: Callable[[int, Job], None] | None = None, on_done: Callable[[int, Done], None] | None = None,
        folder: str | Path = "runs/submitit", params: dict | None = None,
        preload: tuple[str, ...] = ()) -> list[Done]:
    """Run ``jobs``, ``workers`` at a time (locally; a cluster schedules its own); ``on_start(i, job)`` and
    ``on_done(i, done)`` (i from 1) report progress. Returns what finished, in the order it finished."""
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    if executor == "local":
        return _run_local(jobs, max(1, workers), stop_on, on_start, on_done, preload)
    return _run_submitit(jobs, executor, stop_on, on_start, on_done, Path(folder), params or {})


def _run_local(jobs, workers, stop_on, on_start, on_done, preload=()) -> list[Done]:
    ctx = _context(preload) if preload else None
    done: list[Done] = []
    stop = threading.Event()
    lock = threading.Lock()

    def one(i: int, job: Job) -> Done | None:
        if stop.is_set():
            return None
        if on_start:
            with lock:  # callbacks never overlap: two "start" lines printed at once ran together in one line
                on_start(i, job)
        by_module = ctx is not None and len(job.argv) > 2 and job.argv[:2] == [sys.executable, "-m"]
        d = run_preloaded(job, ctx) if by_module else run_one(job)
        with lock:
            done.append(d)
            if on_done:
                on_done(i, d)
            if stop_on is not None and d.returncode == stop_on:
                stop.set()
        return d

    with ThreadPoolExecutor(max_workers=workers) as pool:  # threads that each wait on one process
        for f in as_completed([pool.submit(one, i, job) for i, job in enumerate(jobs, 1)]):
            f.result()
    return done


def _run_submitit(jobs, executor, stop_on, on_start, on_done, folder, params) -> list[Done]:
    try:
        import submitit
    except ImportError:
        raise UserError(f"executor={executor} needs submitit: pip install 'submitit>=1.5'") from None
    cluster = {"submitit-local": "local"}.get(executor, executor)
    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    # one cluster job per job, all submitted at once: the cluster's scheduler decides how many run
    ex.update_parameters(**{"timeout_min": 24 * 60, "name": "metl-bench", **params})
    pending = []
    for i, job in enumerate(jobs, 1):
        if on_start:
            on_start(i, job)
        pending.append((i, ex.submit(run_one, job)))
    done: list[Done] = []
    while pending:
        for i, sj in list(pending):
            if cluster != "debug" and not sj.done():
                continue
            pending.remove((i, sj))
            try:
                d = sj.result()
            except Exception as e:  # noqa: BLE001 - the worker itself died (time limit, node failure)
                d = Done(jobs[i - 1], 1, "", f"{type(e).__name__}: {e}")
            done.append(d)
            if on_done:
                on_done(i, d)
            if stop_on is not None and d.returncode == stop_on:
                for _, other in pending:
                    other.cancel(check=False)
                return done
        if pending:
            time.sleep(float(os.environ.get("METL_JOBS_POLL", "5")))
    return done


def parse_params(items: list[str]) -> dict:
    """``key=value`` executor parameters (``slurm_partition=gpu gpus_per_node=1``); integers become ints."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"bad executor parameter {item!r}: use key=value, e.g. slurm_partition=gpu")
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out
