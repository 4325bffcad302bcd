"""A run killed with SIGKILL mid-epoch continues from its last checkpoint when started again, and ends where
an uninterrupted run ends: the same validation curve, test score, best checkpoint (bitwise, CPU) and peak."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["backbone=tiny-bert", "wandb=disabled", "progress=false", "epochs=2", "batch_size=8", "max_length=32",
        "limit_train_samples=256", "limit_eval_samples=32", "warmup_steps=0", "method=full", "lr=3e-3",
        "task=rotten_tomatoes", "checkpoint_every=3", "val_check_interval=0.5"]  # 32 steps an epoch, val every 16
ENV = {**os.environ, "WANDB_MODE": "disabled"}


def start(tmp: Path, name: str, runs: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmark", "run", *ARGS, f"results_dir={tmp / name}",
                             f"run_dir={tmp / runs}"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def checkpoint_step(tmp: Path, runs: str) -> int:
    for ck in (tmp / runs).rglob("resume.ckpt"):
        try:
            return int(torch.load(ck, map_location="cpu", weights_only=False)["global_step"])
        except Exception:  # being written
            return -1
    return -1


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return err


def test_a_killed_run_resumes_and_ends_as_an_uninterrupted_one(tmp_path):
    finish(start(tmp_path, "ref", "runs-ref"))
    killed = start(tmp_path, "res", "runs-1")
    deadline = time.time() + 300
    while checkpoint_step(tmp_path, "runs-1") < 18:  # past the first validation, mid-way through epoch 1
        assert killed.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (ck,) = (tmp_path / "runs-1").rglob("resume.ckpt")
    first = float(torch.load(ck, map_location="cpu", weights_only=False)["metl"]["train_seconds"])
    assert not list((tmp_path / "res").rglob("seed0.json"))  # killed: no result
    err = finish(start(tmp_path, "res", "runs-2"))
    assert "resuming the unfinished run" in err
    ref, res = (json.loads(next((tmp_path / d).rglob("seed0.json")).read_text()) for d in ("ref", "res"))
    assert res["metrics"]["val_curve"] and [(c["step"], c["score"]) for c in res["metrics"]["val_curve"]] \
        == [(c["step"], c["score"]) for c in ref["metrics"]["val_curve"]]
    assert res["metrics"]["test"] == ref["metrics"]["test"] and res["efficiency"]["train_steps"] == 64
    # its time is both segments' (the first up to its checkpoint), as the curve's clock is: not the last alone
    eff = res["efficiency"]
    assert first > 0 and eff["earlier_seconds"] == first and ref["efficiency"]["earlier_seconds"] == 0
    assert eff["total_seconds"] >= res["metrics"]["val_curve"][-1]["seconds"] and eff["total_seconds"] > first
    assert res["efficiency"]["segments"] == 2 and ref["efficiency"]["segments"] == 1
    assert res["efficiency"]["peak_train_bytes"] == ref["efficiency"]["peak_train_bytes"]
    best = [torch.load(next((tmp_path / d).rglob("best.ckpt")), map_location="cpu", weights_only=False)["state_dict"]
            for d in ("runs-ref", "runs-1")]  # the resumed run went on in the killed run's directory
    assert best[0].keys() == best[1].keys() and all(torch.equal(best[0][k], best[1][k]) for k in best[0])
    assert not list((tmp_path / "runs-1").rglob("resume.ckpt"))  # finished: nothing left to resume


def test_fresh_starts_over(tmp_path):
    killed = start(tmp_path, "res", "runs-1")
    deadline = time.time() + 300
    while checkpoint_step(tmp_path, "runs-1") < 3:
        assert killed.poll() is None and time.time() < deadline
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    p = subprocess.run([sys.executable, "-m", "benchmark", "run", *ARGS, "fresh=true", f"results_dir={tmp_path / 'res'}",
                        f"run_dir={tmp_path / 'runs-2'}"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and "not resuming" in p.stderr
    rec = json.loads(next((tmp_path / "res").rglob("seed0.json")).read_text())
    assert rec["efficiency"]["segments"] == 1 and list((tmp_path / "runs-2").rglob("best.ckpt"))
