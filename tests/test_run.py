"""The orchestrator end to end on a tiny backbone: train, select on val, test once, one results JSON."""
import json

import pytest
import torch

from benchmark import results
from benchmark.publish.leaderboard import build_leaderboard
from benchmark.run import plan, run

TINY = {"backbone": "tiny-bert", "wandb": "disabled", "progress": "false", "epochs": "2", "batch_size": "16",
        "limit_train_samples": "64", "limit_eval_samples": "48", "max_length": "32", "warmup_steps": "0"}


@pytest.fixture
def dirs(tmp_path):
    return {"results_dir": str(tmp_path / "results"), "run_dir": str(tmp_path / "runs")}


@pytest.mark.parametrize("method", ["lora", "mpismoe"])
def test_a_run_writes_one_valid_record(method, dirs, tmp_path):
    path = run({**TINY, **dirs, "method": method, "task": "rotten_tomatoes", "seed": "1"})
    rec = json.loads(path.read_text())
    assert results.validate(rec) == []
    assert rec["run"]["status"] == "ok" and rec["run"]["seed"] == 1 and rec["run"]["task_version"] == 1
    m, e = rec["metrics"], rec["efficiency"]
    assert set(m["test"]) >= {"acc", "score"} and 0 <= m["test"]["score"] <= 1
    assert m["val_best"]["score"] >= 0  # validation ran and selection used it
    curve = m["val_curve"]  # one point per validation (2 epochs), in training order
    assert [c["step"] for c in curve] == sorted(c["step"] for c in curve) and len(curve) == 2
    assert curve[0]["step"] > 0 and 0 < curve[0]["seconds"] <= curve[1]["seconds"]
    assert m["val_best"]["score"] == max(c["score"] for c in curve)
    assert e["peak_train_bytes"] > 0 and e["peak_source"] == "tracker"
    assert e["trainable_params"] < e["total_params"]
    assert e["memory_breakdown"]["weights"] > 0 and e["memory_breakdown"]["optimizer"] > 0
    # the checkpoint holds trainable state only
    ckpt = next((tmp_path / "runs").rglob("best.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert sum(v.numel() for k, v in state.items() if "noise" not in k and "scales" not in k and "zeros" not in k) \
        <= e["trainable_params"]
    df, report = build_leaderboard(*results.load_results(dirs["results_dir"]))
    assert list(df["method"]) == [method] and int(df["n"].iloc[0]) == 1


def test_a_variant_applies_its_overrides_and_is_kept_apart(dirs):
    from methods.mpismoe.experiments import EXPERIMENTS

    p = plan({**TINY, **dirs, "method": "mpismoe", "task": "rotten_tomatoes", "variant": "table3-base"})
    assert EXPERIMENTS["table3-base"].overrides["quantize_backbone"] == "false" == EXPERIMENTS["table3-base"].overrides["moe"]
    assert p.method_cfg.quantize_backbone is False and p.method_cfg.moe is False and p.run.label == "mpismoe@table3-base"
    # a key given on the command line wins over the variant's
    p = plan({**TINY, **dirs, "method": "mpismoe", "task": "rotten_tomatoes", "variant": "table3-base", "moe": "true"})
    assert p.method_cfg.moe is True
    rec = {"run": {"task": "rotten_tomatoes", "task_version": 1, "method": "mpismoe", "variant": "table3-base",
                   "backbone": "minilm", "seed": 0}}
    assert results.result_path("r", rec).parts[-4] == "mpismoe@table3-base"


def test_wandb_run_is_grouped_tagged_and_gets_the_summary_and_the_results_json(dirs, tmp_path, monkeypatch):
    """Offline W&B (no network): the run gets the summary metrics, its group and tags, and a copy of the
    results JSON among its files (what ``wandb sync`` uploads)."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    seen = {}
    finish = wandb.sdk.wandb_run.Run.finish

    def spy(self, *a, **k):  # offline runs keep the summary in their binary log: read it off the run
        seen.update(summary={key: self.summary[key] for key in self.summary.keys()}, group=self.group,
                    tags=tuple(self.tags))
        return finish(self, *a, **k)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "finish", spy)
    path = run({**TINY, **dirs, "wandb": "offline", "method": "lora", "task": "rotten_tomatoes", "epochs": "1"})
    rec = json.loads(path.read_text())
    summary = seen["summary"]
    assert summary["final_test/score"] == pytest.approx(rec["metrics"]["test"]["score"])
    assert summary["best_val/score"] == pytest.approx(rec["metrics"]["val_best"]["score"])
    assert summary["peak_train_bytes"] == rec["efficiency"]["peak_train_bytes"]
    assert summary["budget"] == "1ep-b16-len32-train64-eval48"
    assert seen["group"] == "rotten_tomatoes/lora" and {"rotten_tomatoes", "lora", "tiny-bert"} <= set(seen["tags"])
    files = next((tmp_path / "runs").rglob(f"offline-run-*-{rec['run']['wandb_run_id']}")) / "files"
    assert json.loads((files / path.name).read_text())["run"]["id"] == rec["run"]["id"]


def test_an_unknown_variant_names_the_valid_ones(dirs):
    from benchmark.config import ConfigError

    with pytest.raises(ConfigError, match="unknown variant 'nope' of method 'mpismoe'; valid variants: .*table3-base"):
        plan({**TINY, **dirs, "method": "mpismoe", "task": "rotten_tomatoes", "variant": "nope"})
    with pytest.raises(ConfigError, match="valid variants: adamw8bit, checkpointing$"):  # those every method has
        plan({**TINY, **dirs, "method": "lora", "task": "rotten_tomatoes", "variant": "x"})


@pytest.mark.parametrize("method", ["lst", "side_tuning"])
def test_the_old_name_r_still_sets_reduction_and_records_the_new_one(method, dirs):
    from benchmark.config import ConfigError, as_dict

    p = plan({**TINY, **dirs, "method": method, "task": "rotten_tomatoes", "r": "4"})
    assert p.method_cfg.reduction == 4 and "r" not in as_dict(p.method_cfg)
    with pytest.raises(ConfigError, match="'r' is the old name of config key 'reduction'"):
        plan({**TINY, **dirs, "method": method, "task": "rotten_tomatoes", "r": "4", "reduction": "2"})
    p = plan({**TINY, **dirs, "method": "mpismoe", "task": "rotten_tomatoes", "base": "lst", "base.r": "16"})
    assert p.method_cfg.base_overrides == {"reduction": "16"} and p.method_cfg.base_config().reduction == 16


@pytest.mark.parametrize("method", ["lst", "side_tuning"])
def test_a_record_that_names_the_side_width_r_is_still_current(method, tmp_path):
    """Records made before ``r`` became ``reduction`` name the side width ``r``: ``make paper`` must not rerun them."""
    from benchmark import paper

    p = plan({"method": method, "task": "rotten_tomatoes", "seed": "0"})
    expected = paper._expected(p)
    from test_results import make_record

    record = make_record(method=method)
    record["run"].update(json.loads(json.dumps({k: v for k, v in expected["run"].items()
                                                if k not in ("status", "id", "error", "started_at", "finished_at")})))
    m = record["run"]["config"]["method"]
    m["r"] = m.pop("reduction")
    path = tmp_path / "seed0.json"
    path.write_text(json.dumps(record))
    assert '"r": 8' in path.read_text() and paper.staleness(path, expected) == ""
    m["r"] = 16
    path.write_text(json.dumps(record))
    assert paper.staleness(path, expected) == "method config changed: reduction"


def test_selection_follows_the_validation_score(dirs):
    from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: F401  (the checkpoint monitors val/score)

    p = plan({**TINY, **dirs, "method": "lora", "task": "rotten_tomatoes"})
    assert p.task.higher_is_better and p.task.primary == "score"


def test_bad_data_is_refused_before_anything_is_written(dirs, tmp_path):
    from benchmark.errors import UserError

    with pytest.raises(UserError):
        run({**TINY, **dirs, "method": "lora", "task": "rte", "data_dir": str(tmp_path / "no_such_glue")})
    assert not (tmp_path / "results").exists()


def test_a_crashing_run_is_recorded_as_failed_outside_the_results(dirs, tmp_path, monkeypatch):
    from benchmark import run as run_mod

    def boom(p, **kw):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(run_mod, "execute", boom)
    with pytest.raises(RuntimeError):
        run({**TINY, **dirs, "method": "lora", "task": "rotten_tomatoes"})
    recs, problems = results.load_results(tmp_path / "results" / "tmp" / "failed")
    assert problems == [] and [r["run"]["status"] for r in recs] == ["failed"]
    assert "simulated crash" in recs[0]["run"]["error"]
    assert results.load_results(tmp_path / "results") == ([], [])  # the leaderboard sees nothing


def test_a_run_without_a_validation_score_is_failed_not_ok(dirs, tmp_path, monkeypatch):
    """A validation split that gave no metric (a degenerate dev set) must never become an ok record."""
    from types import SimpleNamespace

    from benchmark import run as run_mod
    from benchmark.errors import TrainingFailed

    p = plan({**TINY, **dirs, "method": "lora", "task": "rotten_tomatoes"})
    record = results.build_record(p, val_best={}, test={"acc": 0.0, "score": 0.0})
    monkeypatch.setattr(run_mod, "execute", lambda p, **kw: SimpleNamespace(rank=0, record=record, wandb_run=None,
                                                                             run_dir=tmp_path))
    with pytest.raises(TrainingFailed, match="without a val_best score"):
        run({**TINY, **dirs, "method": "lora", "task": "rotten_tomatoes"})
    recs, _ = results.load_results(tmp_path / "results" / "tmp" / "failed")
    assert [r["run"]["status"] for r in recs] == ["failed"]
    assert results.load_results(tmp_path / "results") == ([], [])


def test_a_split_too_small_for_a_score_is_one_line_before_training(dirs, tmp_path, capsys):
    from benchmark.cli import main as cli

    args = [f"{k}={v}" for k, v in {**TINY, **dirs}.items()] + ["method=lora", "task=rotten_tomatoes",
                                                                 "limit_eval_samples=1"]
    assert cli(["run", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "validation split has 1 example;" in err[0] and "at least 2" in err[0]
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("*.json"))


def _two_processes(tmp_path, method, *extra):
    """``benchmark run`` under DDP on CPU (gloo), 2 processes, as `make bench ARGS="devices=2 strategy=ddp"`."""
    import os
    import subprocess
    import sys

    args = [sys.executable, "-m", "benchmark", "run", "--quick", f"method={method}", "backbone=tiny-bert",
            "devices=2", "strategy=ddp", "accelerator=cpu", "progress=false", "limit_eval_samples=127",
            f"results_dir={tmp_path / 'results'}", f"run_dir={tmp_path / 'runs'}", *extra]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = list((tmp_path / "results").rglob("seed0.json"))
    assert len(files) == 1  # rank 0 writes the one record
    return json.loads(files[0].read_text())


@pytest.mark.parametrize("method", ["lst", "mpismoe"])
def test_two_processes_write_one_record_with_the_largest_peak(tmp_path, method):
    """One JSON (rank 0), the metrics reduced over both ranks with every test example counted once
    (127 = an odd split). MP-ISMoE's sparse experts leave parameters without gradients in some steps;
    the run asks DDP to look for them (``may_skip_parameters``) instead of failing."""
    rec = _two_processes(tmp_path, method, *(["fisher_samples=8"] if method == "lst" else []))
    eff = rec["efficiency"]
    assert eff["num_processes"] == 2 and eff["peak_train_bytes"] > 0
    assert eff["peak_train_bytes"] == eff["tracker_peak_bytes"] == sum(eff["memory_breakdown"].values())
    correct = rec["metrics"]["test"]["acc"] * 127
    assert abs(correct - round(correct)) < 1e-3  # a whole number of the 127 examples: none counted twice


def test_one_and_two_processes_report_the_same_test_metric_for_the_same_checkpoint(tmp_path, dirs):
    """LoRA with a learning rate too small to move an fp32 weight: both runs test the same weights, so the
    2-process test accuracy (each rank half the examples, reduced by torchmetrics) must equal 1 process's."""
    quick = {"epochs": "1", "limit_train_samples": "160", "limit_eval_samples": "127", "warmup_steps": "0",
             "official": "false", "lr": "1e-12"}
    one = json.loads(run({**quick, **dirs, "method": "lora", "backbone": "tiny-bert", "wandb": "disabled",
                          "progress": "false", "task": "rotten_tomatoes"}).read_text())
    two = _two_processes(tmp_path / "ddp", "lora", "lr=1e-12")
    assert one["efficiency"]["num_processes"] == 1 and two["efficiency"]["num_processes"] == 2
    assert two["metrics"]["test"]["acc"] == one["metrics"]["test"]["acc"]
    assert two["metrics"]["val_best"]["acc"] == one["metrics"]["val_best"]["acc"]


def test_until_plateau_stops_when_validation_stops_improving(dirs, tmp_path):
    """``patience=1`` with a cap of 30 epochs and a learning rate too small to move anything: validation
    cannot improve after the first epoch, so training stops after the second, and the budget says so."""
    import csv

    path = run({**TINY, **dirs, "method": "lora", "task": "rotten_tomatoes", "epochs": "30", "patience": "1",
                "lr": "1e-12"})
    rec = json.loads(path.read_text())
    assert rec["run"]["status"] == "ok" and "plateau1-max30ep" in str(path)
    log = next((tmp_path / "runs").rglob("metrics.csv"))
    validated = [r for r in csv.DictReader(log.open()) if r.get("val/score")]
    assert len(validated) == 2 == len(rec["metrics"]["val_curve"])
    assert rec["efficiency"]["train_steps"] == rec["metrics"]["val_curve"][-1]["step"] == 2 * 4  # 64 / 16 a epoch


def test_patience_must_not_be_negative(dirs):
    from benchmark.errors import ConfigError

    with pytest.raises(ConfigError, match="patience"):
        plan({**TINY, **dirs, "method": "lora", "task": "rotten_tomatoes", "patience": "-1"})



def test_a_nan_loss_stops_the_run_with_a_failed_record_naming_the_step(dirs, tmp_path, monkeypatch, capsys):
    from benchmark.cli import main
    from benchmark.heads import ClassifierHead

    real, calls = ClassifierHead.loss, []

    def loss(self, *a, **k):  # the third training step's loss is NaN
        calls.append(1)
        out = real(self, *a, **k)
        return out * float("nan") if len(calls) == 3 else out

    monkeypatch.setattr(ClassifierHead, "loss", loss)
    code = main(["run", *(f"{k}={v}" for k, v in {**TINY, **dirs, "method": "lora", "task": "rotten_tomatoes"}.items())])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1] == "failed: loss became NaN at step 3"
    assert not list((tmp_path / "results").glob("runs/**/*.json"))  # never recorded as a result
    (failed,) = (tmp_path / "results" / "tmp" / "failed").rglob("*.json")
    rec = json.loads(failed.read_text())["run"]
    assert rec["status"] == "failed" and rec["error"] == "TrainingFailed: loss became NaN at step 3"


def test_a_log_file_gets_progress_lines(dirs, capsys):
    """Output that is not a terminal (pytest's capture here, CI, ``| tee``) gets plain lines, not a bar."""
    run({**TINY, **dirs, "method": "lora", "task": "rotten_tomatoes", "progress": "true"})
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    assert any("loss" in ln and "steps/s" in ln and "left" in ln for ln in lines)
    assert any("val/score" in ln for ln in lines) and "\r" not in "".join(lines)


def test_the_same_run_twice_gives_the_same_scores(tmp_path):
    """Same commit, seed and machine: the same test score and validation curve, bit for bit."""
    records = []
    for i in range(2):
        d = {"results_dir": str(tmp_path / f"results{i}"), "run_dir": str(tmp_path / f"runs{i}")}
        records.append(json.loads(run({**TINY, **d, "method": "lora", "task": "rotten_tomatoes"}).read_text()))
    a, b = (r["metrics"] for r in records)
    assert a["test"] == b["test"] and [c["score"] for c in a["val_curve"]] == [c["score"] for c in b["val_curve"]]
    assert records[0]["efficiency"]["peak_train_bytes"] == records[1]["efficiency"]["peak_train_bytes"]
