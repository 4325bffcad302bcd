"""One run per results file (benchmark.runlock): a second run of one plan exits 2 naming the first, a lock
whose process is gone is taken over, an unwritable results directory fails before training, and make paper
does not plan a run whose lock is held."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark import runlock
from benchmark.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
TINY = ["backbone=tiny-bert", "wandb=disabled", "progress=false", "epochs=2", "batch_size=8", "max_length=32",
        "limit_train_samples=64", "limit_eval_samples=32", "warmup_steps=0", "method=lora", "task=rotten_tomatoes"]


def test_two_runs_of_one_plan_at_once_exactly_one_trains(tmp_path):
    args = [sys.executable, "-m", "benchmark", "run", *TINY, f"results_dir={tmp_path}/results"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    first = subprocess.Popen(args + [f"run_dir={tmp_path}/runs1"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not list((tmp_path / "results").rglob("*.lock")):
            assert first.poll() is None and time.time() < deadline, "the first run never took its lock"
            time.sleep(0.2)
        second = subprocess.run(args + [f"run_dir={tmp_path}/runs2"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=180)
        out, err = first.communicate(timeout=600)
    finally:
        first.kill()
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert f"pid {first.pid}" in second.stderr and "another run of this plan is running" in second.stderr
    assert "Traceback" not in second.stderr and not (tmp_path / "runs2").exists()  # it never trained
    assert first.returncode == 0, err[-2000:]
    (record,) = (tmp_path / "results").rglob("seed0.json")
    assert json.loads(record.read_text())["run"]["status"] == "ok"
    assert not list((tmp_path / "results").rglob("*.lock"))  # released


def test_a_lock_whose_process_is_gone_is_taken_over(tmp_path, capsys):
    target = tmp_path / "r" / "seed0.json"
    target.parent.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"host": __import__("socket").gethostname(), "pid": int(dead.stdout), "started": "earlier"}
    runlock.lock_path(target).write_text(json.dumps(stale))
    assert runlock.holder(target) is None
    with runlock.hold(target):
        assert runlock.holder(target)["pid"] == os.getpid()
        with pytest.raises(UserError, match=f"pid {os.getpid()}"):  # held: a second holder is refused
            with runlock.hold(target):
                pass
    assert "taking over the lock" in capsys.readouterr().err
    assert not runlock.lock_path(target).exists()


def test_an_unwritable_results_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    p = subprocess.run([sys.executable, "-m", "benchmark", "run", *TINY, f"results_dir={blocker}/results",
                        f"run_dir={tmp_path}/runs"], cwd=ROOT, env={**os.environ, "WANDB_MODE": "disabled"},
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "cannot write the results directory" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_make_paper_does_not_plan_a_run_whose_lock_is_held(tmp_path):
    from benchmark import paper

    task = paper.PaperTask("rotten_tomatoes", {"limit_train_samples": "64"})
    jobs = paper.plan_jobs(seeds=(0,), extra={"results_dir": str(tmp_path)}, tasks=(task,))
    job = jobs[0]
    with runlock.hold(job.path):
        again = {j.name: j for j in paper.plan_jobs(seeds=(0,), extra={"results_dir": str(tmp_path)}, tasks=(task,))}
    assert again[job.name].current and again[job.name].why.startswith(f"running now (pid {os.getpid()}")
    assert not any(j.current for n, j in again.items() if n != job.name)
