"""The one job runner (benchmark.jobs): local processes a few at a time, exit code 2 stops what has not
started, and the submitit backend (its local executor) runs the same jobs."""
from __future__ import annotations

import sys
import time

import pytest

from benchmark import jobs
from benchmark.errors import UserError


def _job(name: str, code: int, text: str = "hi", **kw) -> jobs.Job:
    script = f"import sys; print({text!r}); print('why', file=sys.stderr); raise SystemExit({code})"
    return jobs.Job(name, [sys.executable, "-c", script], **kw)


def test_local_runs_every_job_and_captures_output():
    started = []
    done = jobs.run([_job("a", 0), _job("b", 3), _job("c", 0)], workers=2, on_start=lambda i, j: started.append(i))
    assert sorted((d.job.name, d.returncode) for d in done) == [("a", 0), ("b", 3), ("c", 0)]
    assert sorted(started) == [1, 2, 3]
    b = next(d for d in done if d.job.name == "b")
    assert b.stdout.strip() == "hi" and b.last_line() == "why"


def test_callbacks_never_run_at_the_same_time():
    """Each worker thread reports its start; unserialized, two prints ran into one log line."""
    inside, most = [0], [0]

    def slow(i, job):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.3)
        inside[0] -= 1

    jobs.run([_job("a", 0), _job("b", 0)], workers=2, on_start=slow, on_done=slow)
    assert most[0] == 1


def test_exit_code_two_stops_the_jobs_not_started():
    done = jobs.run([_job("a", 0), _job("bad", 2), _job("never", 0)], workers=1, stop_on=2)
    assert [(d.job.name, d.returncode) for d in done] == [("a", 0), ("bad", 2)]


def test_log_file_and_environment(tmp_path):
    script = "import os; print(os.environ['METL_X'], os.environ.get('PATH') is not None)"
    job = jobs.Job("env", [sys.executable, "-c", script], env={"METL_X": "42"}, log=tmp_path / "logs" / "env.log")
    (d,) = jobs.run([job])
    assert d.returncode == 0 and (tmp_path / "logs" / "env.log").read_text().strip() == "42 True"


def test_unknown_executor_and_bad_parameters_are_user_errors():
    with pytest.raises(UserError, match="unknown executor"):
        jobs.run([_job("a", 0)], executor="k8s")
    with pytest.raises(UserError, match="key=value"):
        jobs.parse_params(["slurm_partition"])
    got = jobs.parse_params(["slurm_partition=gpu", "gpus_per_node=1"])
    assert got == {"slurm_partition": "gpu", "gpus_per_node": 1}


@pytest.mark.parametrize("executor", ["submitit-local", "debug"])
def test_submitit_backend_runs_a_trivial_job(tmp_path, executor, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("METL_JOBS_POLL", "0.2")
    done = jobs.run([_job("a", 0), _job("b", 3)], workers=2, executor=executor, folder=tmp_path / "submitit",
                    params={"timeout_min": 5})
    assert sorted((d.job.name, d.returncode, d.stdout.strip()) for d in done) == [("a", 0, "hi"), ("b", 3, "hi")]


class _StubJob:
    """Just enough of a submitit job: runs at submission, cancellable."""

    def __init__(self, fn, args):
        self.value, self.cancelled = fn(*args), False

    def done(self):
        return True

    def result(self):
        return self.value

    def cancel(self, check=True):
        self.cancelled = True


class _StubExecutor:
    made: list = []

    def __init__(self, folder, cluster):
        self.folder, self.cluster, self.params, self.jobs = folder, cluster, {}, []
        _StubExecutor.made.append(self)

    def update_parameters(self, **params):
        self.params.update(params)

    def submit(self, fn, *args):
        self.jobs.append(_StubJob(fn, args))
        return self.jobs[-1]


def test_cluster_backend_submits_each_job_and_stops_on_two(tmp_path, monkeypatch):
    """The submitit path without submitit (a stub module): parameters reach the executor, results come back
    as the local ones do, and exit code 2 cancels what is still queued."""
    import types

    stub = types.SimpleNamespace(AutoExecutor=_StubExecutor)
    monkeypatch.setitem(sys.modules, "submitit", stub)
    monkeypatch.setenv("METL_JOBS_POLL", "0")
    done = jobs.run([_job("a", 0), _job("b", 3)], executor="slurm", folder=tmp_path, params={"slurm_partition": "gpu"})
    ex = _StubExecutor.made[-1]
    assert ex.cluster == "slurm" and ex.params["slurm_partition"] == "gpu" and ex.params["timeout_min"] > 0
    assert sorted((d.job.name, d.returncode, d.stdout.strip()) for d in done) == [("a", 0, "hi"), ("b", 3, "hi")]
    done = jobs.run([_job("bad", 2), _job("queued", 0)], executor="slurm", folder=tmp_path, stop_on=2)
    assert [d.job.name for d in done] == ["bad"] and _StubExecutor.made[-1].jobs[1].cancelled
