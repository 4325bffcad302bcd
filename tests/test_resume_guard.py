"""Resume only the same plan: a killed run's lock names its run directory and settings; a rerun with other
settings, or over a checkpoint that cannot be read, is one line (exit 2), nothing starts over untold, and the
lock stays for the next attempt; ``fresh=true`` starts over."""
import json
import socket
import subprocess
import sys

from benchmark import results, runlock
from benchmark.cli import main as cli
from benchmark.resume import resume_plan
from benchmark.run import plan

TINY = {"backbone": "tiny-bert", "wandb": "disabled", "progress": "false", "epochs": "1", "batch_size": "16",
        "limit_train_samples": "32", "limit_eval_samples": "32", "max_length": "32", "warmup_steps": "0",
        "method": "lora", "task": "rotten_tomatoes", "seed": "0"}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def killed_run(tmp_path, checkpoint: bytes, **at) -> tuple[dict, object]:
    """The lock and resume checkpoint a run of TINY (plus ``at``) leaves when it is killed; returns the
    overrides a rerun uses and the lock's path."""
    ov = {**TINY, "results_dir": str(tmp_path / "results"), "run_dir": str(tmp_path / "runs")}
    killed = plan({**ov, **at})
    run_dir = tmp_path / "runs" / "killed"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "resume.ckpt").write_bytes(checkpoint)
    lock = runlock.lock_path(results.result_path(tmp_path / "results", results.build_record(killed)))
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "started": "2026-01-01T00:00:00",
                                "run_dir": str(run_dir), "plan": resume_plan(killed)}))
    return ov, lock


def test_a_changed_plan_is_refused_in_one_line_and_the_lock_kept(tmp_path, capsys):
    ov, lock = killed_run(tmp_path, b"not read: the plan is checked first", lr="1e-4")
    args = ["run", *(f"{k}={v}" for k, v in ov.items()), "lr=5e-3"]
    assert cli(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "was started with other settings" in err[-1] and "method.lr 0.0001 -> 0.005" in err[-1]
    assert "fresh=true" in err[-1] and "Traceback" not in "\n".join(err)
    assert json.loads(lock.read_text())["run_dir"].endswith("killed")  # the next attempt meets the same question
    assert cli(args) == 2 and "other settings" in capsys.readouterr().err
    assert not list((tmp_path / "results").rglob("seed0.json"))


def test_a_corrupt_checkpoint_is_kept_aside_and_only_fresh_starts_over(tmp_path, capsys):
    ov, lock = killed_run(tmp_path, b"")  # an empty resume.ckpt: the disk filled while it was written
    args = ["run", *(f"{k}={v}" for k, v in ov.items())]
    assert cli(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cannot be read" in err and "kept aside as resume.ckpt.unreadable-" in err
    ckpts = tmp_path / "runs" / "killed" / "checkpoints"
    assert not (ckpts / "resume.ckpt").exists() and len(list(ckpts.glob("resume.ckpt.unreadable-*"))) == 1
    assert cli(args) == 2  # not silently over again: the same run, the checkpoint still unreadable
    assert "no readable resume checkpoint" in capsys.readouterr().err
    assert cli(args + ["fresh=true"]) == 0
    assert "starting over" in capsys.readouterr().err
    assert list((tmp_path / "results").rglob("seed0.json")) and not lock.exists()


def test_the_same_plan_still_resumes(tmp_path, capsys):
    """The guard lets the plan that was killed through (the checkpoint here is not a real one, so the resume
    itself fails later; what matters is that the guard said "resuming")."""
    from benchmark.resume import check, plan_of  # noqa: F401

    ov, lock = killed_run(tmp_path, b"")
    previous = json.loads(lock.read_text())
    assert previous["plan"] == resume_plan(plan(ov)) == resume_plan(plan({**ov, "progress": "true", "fresh": "false"}))
    assert resume_plan(plan(ov)) != resume_plan(plan({**ov, "method": "lora", "r": "8"}))
