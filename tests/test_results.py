"""The results record: validation, atomic writing, the file layout and a reader that never dies on a bad file."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from benchmark import results
from benchmark.results import SCHEMA_VERSION, load_results, result_path, validate, write_result

ROOT = Path(__file__).resolve().parent.parent


def make_record(method="lora", task="rte", seed=0, score=0.7, peak=1_000_000, status="ok", version=1,
                family="glue", backbone="minilm", device="cpu: test", higher_is_better=True, test=None,
                val=None, finished_at="2025-01-01T00:10:00+00:00", error=None) -> dict:
    """A complete, valid record (a shared fixture: test_leaderboard imports it)."""
    ok = status == "ok"
    return {
        "schema_version": SCHEMA_VERSION,
        "run": {"id": f"{task}-{method}-{backbone}-s{seed}", "method": method, "task": task, "task_version": version,
                "task_family": family, "backbone": backbone, "seed": seed, "status": status,
                "error": error if error is not None or ok else "RuntimeError: boom", "git_commit": "0" * 40,
                "git_dirty": False, "wandb_run_id": None, "config": {"run": {"seed": seed}, "method": {"lr": 1e-3}},
                "started_at": "2025-01-01T00:00:00+00:00", "finished_at": finished_at},
        "metrics": {"primary": "score", "higher_is_better": higher_is_better,
                    "val_best": val if val is not None else ({"acc": score, "score": score} if ok else {}),
                    "test": test if test is not None else ({"acc": score, "score": score} if ok else {})},
        "efficiency": {"trainable_params": 1000, "total_params": 100_000, "trainable_percent": 1.0,
                       "backbone_storage_bytes": 400_000, "checkpoint_bytes": 4000, "peak_train_bytes": peak,
                       "peak_source": "tracker", "memory_breakdown": {"weights": 400_000, "grads": 4000,
                                                                      "optimizer": 8000, "activations": 500_000,
                                                                      "other": 88_000},
                       "tracker_peak_bytes": peak, "cuda_max_allocated": None, "cuda_max_reserved": None,
                       "step_seconds": 0.1, "samples_per_second": 320.0, "total_seconds": 12.5, "batch_size": 32,
                       "max_length": 64, "precision": "32-true", "device": device, "num_processes": 1},
        "env": {"python": "3.11.7", "platform": "Linux", "torch": "2.13.0", "lightning": "2.6.0",
                "transformers": "5.0.0", "peft": "0.21.0", "datasets": "5.0.0", "torchmetrics": None,
                "device_name": device},
    }


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_complete_record_is_valid():
    assert validate(make_record()) == []
    assert validate(make_record(status="failed")) == []


def test_a_failed_run_needs_no_figures():
    rec = make_record(status="failed", error="CUDA out of memory")
    rec["efficiency"] = {"batch_size": 32}
    assert validate(rec) == []


def _set(path: str, value):
    def edit(rec):
        *parents, last = path.split(".")
        node = rec
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return edit


@pytest.mark.parametrize("edit,word", [
    (_set("schema_version", 2), "schema_version"),
    (_set("run.seed", KeyError), "run.seed"),
    (_set("run.seed", "0"), "run.seed"),
    (_set("run.seed", True), "run.seed"),
    (_set("run.task_version", 1.0), "run.task_version"),
    (_set("run.status", "done"), "run.status"),
    (_set("run.started_at", "yesterday"), "run.started_at"),
    (_set("run.git_dirty", "no"), "run.git_dirty"),
    (_set("run", KeyError), "run"),
    (_set("env", KeyError), "env"),
    (_set("env.torch", KeyError), "env.torch"),
    (_set("metrics.higher_is_better", KeyError), "metrics.higher_is_better"),
    (_set("metrics.primary", "acc"), "metrics.primary"),
    (_set("metrics.test", {"acc": 0.5}), "test.score"),  # ok runs need a test score
    (_set("metrics.test.score", float("nan")), "test.score"),
    (_set("metrics.test.acc", "high"), "metrics.test.acc"),
    (_set("efficiency.peak_train_bytes", None), "peak_train_bytes"),  # ok runs need the peak
    (_set("efficiency.peak_train_bytes", 1.5e6), "peak_train_bytes"),  # integer bytes
    (_set("efficiency.trainable_params", KeyError), "trainable_params"),
    (_set("efficiency.total_seconds", float("inf")), "total_seconds"),
    (_set("efficiency.memory_breakdown.grads", 1.0), "grads"),
    (_set("run.config", {"fn": object()}), "JSON"),
])
def test_validate_names_what_is_wrong(edit, word):
    rec = make_record()
    edit(rec)
    problems = validate(rec)
    assert problems and any(word in p for p in problems), problems


def test_validate_never_raises_on_junk():
    for junk in (None, [], "x", 3, {"run": []}, {"schema_version": True}):
        assert validate(junk)


def test_round_trip(tmp_path):
    rec = make_record(seed=3)
    path = write_result(rec, result_path(tmp_path, rec))
    assert json.loads(path.read_text()) == rec
    records, problems = load_results(tmp_path)
    assert records == [rec] and problems == []


def test_non_finite_optional_numbers_become_null(tmp_path):
    rec = make_record(test={"acc": 0.5, "mcc": float("nan"), "score": 0.5})
    rec["efficiency"]["step_seconds"] = float("nan")
    path = write_result(rec, tmp_path / "r.json")
    text = path.read_text()
    assert "NaN" not in text  # strict JSON
    back = json.loads(text)
    assert back["metrics"]["test"]["mcc"] is None and back["efficiency"]["step_seconds"] is None
    assert validate(back) == []


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "deep" / "er" / "seed0.json"
    write_result(make_record(), path)  # creates the parent folders
    assert path.exists() and leftovers(path.parent) == []
    assert [p.name for p in path.parent.iterdir()] == ["seed0.json"]


def test_an_invalid_record_is_refused_and_the_existing_file_kept(tmp_path):
    path = tmp_path / "seed0.json"
    write_result(make_record(score=0.9), path)
    before = path.read_bytes()
    bad = make_record(score=0.1)
    del bad["efficiency"]["peak_train_bytes"]
    with pytest.raises(ValueError, match="peak_train_bytes"):
        write_result(bad, path)
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_a_crash_during_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "seed0.json"
    write_result(make_record(score=0.9), path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_result(make_record(score=0.1), path)
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_result_path_layout(tmp_path):
    rec = make_record(task="sst2", method="side_tuning", backbone="sentence-transformers/all-MiniLM-L6-v2", seed=2)
    assert result_path(tmp_path, rec) == (tmp_path / "runs" / "sst2-v1" / "side_tuning"
                                          / "sentence-transformers--all-MiniLM-L6-v2" / "1ep-b32-len64" / "seed2.json")
    assert results.slug("hf:owner/name") == "hf-owner--name"
    assert results.slug("/models/my model/") == "models--my-model"
    for name in ("..", ".", "", "/"):
        s = results.slug(name)
        assert s not in ("", ".", "..") and "/" not in s


def test_budget_label_names_what_changes_the_experiment():
    def label(**run):
        return results.budget_label({"config": {"run": run}})

    assert label() == label(epochs=1, batch_size=32, max_length=64, precision="32-true") == "1ep-b32-len64"
    assert label(limit_train_samples=4096, limit_eval_samples=2048) == "1ep-b32-len64-train4096-eval2048"
    assert label(max_steps=200, batch_size=8, max_length=128) == "200steps-b8-len128"
    assert label(epochs=3, precision="bf16-mixed") == "3ep-b32-len64-bf16-mixed"
    # until-plateau: the patience and the cap are in the label; a record without ``patience`` was a fixed budget
    assert label(patience=3, epochs=20) == "plateau3-max20ep-b32-len64"
    assert label(patience=2, max_steps=500) == "plateau2-max500steps-b32-len64"
    assert label(patience=0) == label() == "1ep-b32-len64"
    # a different budget is a different file, so it never overwrites (or averages with) the other
    a, b = make_record(seed=0), make_record(seed=0)
    b["run"]["config"]["run"]["limit_train_samples"] = 4096
    assert result_path("r", a) != result_path("r", b)


def test_load_results_skips_corrupt_and_invalid_files_with_reasons(tmp_path):
    good = make_record()
    write_result(good, result_path(tmp_path, good))
    runs = tmp_path / "runs" / "rte-v1" / "lora"
    (runs / "corrupt.json").write_text('{"schema_version": 1, "run": {')  # a half-written file
    invalid = make_record(seed=1)
    del invalid["run"]["method"]
    (runs / "invalid.json").write_text(json.dumps(invalid))
    (runs / "not_a_record.json").write_text("[1, 2]")
    (runs / "ignored.txt").write_text("not json at all")  # only *.json is read

    records, problems = load_results(tmp_path)
    assert records == [good]
    reasons = {p.name: why for p, why in problems}
    assert set(reasons) == {"corrupt.json", "invalid.json", "not_a_record.json"}
    assert reasons["corrupt.json"].startswith("corrupt:")
    assert reasons["invalid.json"].startswith("invalid:") and "run.method" in reasons["invalid.json"]
    assert reasons["not_a_record.json"].startswith("invalid:")


def test_load_results_of_a_missing_folder_is_empty(tmp_path):
    assert load_results(tmp_path / "nothing") == ([], [])


def test_git_info_outside_a_repository(tmp_path):
    assert results.git_info(tmp_path) == (None, None)
    assert results.git_info(tmp_path / "does-not-exist") == (None, None)


def test_git_info_in_this_checkout():
    commit, dirty = results.git_info(ROOT)
    if commit is None:
        pytest.skip("not a git checkout")
    assert re.fullmatch(r"[0-9a-f]{40}", commit) and isinstance(dirty, bool)


def test_a_changed_result_doc_or_publishing_code_does_not_make_a_run_dirty_but_changed_code_does(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    for path in ("methods/m.py", "results/leaderboard.md", "README.md", "benchmark/publish/tables.py",
                 "benchmark/run.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("a\n")
    git("add", "-A")
    git("commit", "-qm", "first")
    (tmp_path / "results/leaderboard.md").write_text("rewritten by make paper\n")
    (tmp_path / "README.md").write_text("b\n")
    (tmp_path / "benchmark/publish/tables.py").write_text("b\n")
    assert results.git_info(tmp_path)[1] is False
    (tmp_path / "benchmark/run.py").write_text("b\n")
    assert results.git_info(tmp_path)[1] is True
    git("checkout", "--", "benchmark/run.py")
    (tmp_path / "methods/m.py").write_text("b\n")
    assert results.git_info(tmp_path)[1] is True


def test_env_info_has_every_field():
    env = results.env_info()
    assert set(results.ENV_FIELDS) <= set(env)
    assert env["torch"] and env["python"]
    rec = make_record()
    rec["env"] = env
    assert validate(rec) == []



def plan_of(rec: dict):
    """A stand-in for ``benchmark.run.Plan`` that resolves to exactly what ``rec`` records (no torch needed)."""
    from dataclasses import field, make_dataclass
    from types import SimpleNamespace

    from benchmark.config import RunConfig

    run, cfg = rec["run"], rec["run"]["config"]
    method_cfg = make_dataclass("MethodConfig", [(k, object, field(default_factory=lambda v=v: v))
                                                 for k, v in cfg["method"].items()])()
    return SimpleNamespace(run=RunConfig(**cfg["run"]), method_cfg=method_cfg, backbone_label=run["backbone"],
                           hyperparameters=run.get("hyperparameters", {"source": "paper"}),
                           method_cls=SimpleNamespace(version=run["method_version"]),
                           task=SimpleNamespace(version=run["task_version"], family=run["task_family"],
                                                higher_is_better=rec["metrics"]["higher_is_better"]))


def test_build_record_writes_the_committed_files_byte_for_byte():
    """Every committed record of the current layout comes back identical from ``build_record``: same keys, same
    order, same values, same run id (ids keep '+': ``label_slug``, not ``slug``), but for run settings added
    to RunConfig since, at their defaults."""
    paths = [p for p in sorted((ROOT / "results" / "runs").glob("**/*.json"))
             if {"method_version", "variant"} <= set(json.loads(p.read_text())["run"])]
    assert paths
    for path in paths:
        rec = json.loads(path.read_text())
        run, m = rec["run"], rec["metrics"]
        p = plan_of(rec)
        tail = run["id"].split(f"-s{run['seed']}-", 1)[1]
        built = results.build_record(p, run_id=results.run_id_for(p, tail), status=run["status"], error=run["error"],
                                     git=(run["git_commit"], run["git_dirty"]), wandb_run_id=run["wandb_run_id"],
                                     started_at=run["started_at"], finished_at=run["finished_at"],
                                     val_best=m["val_best"], test=m["test"], efficiency=rec["efficiency"],
                                     env=rec["env"], val_curve=m.get("val_curve"))
        # a RunConfig key added since the record was written (``patience``) had its default then: not a change
        from benchmark.config import RunConfig

        have = run["config"]["run"]
        built["run"]["config"]["run"] = {k: v for k, v in built["run"]["config"]["run"].items()
                                         if k in have or v != getattr(RunConfig, k)}
        if "hyperparameters" not in run:  # a record from before make tune: the papers' values, as now said
            assert built["run"].pop("hyperparameters") == {"source": "paper"}
        assert results._dumps(built) == path.read_text(), path
        assert result_path(ROOT / "results", built) == path


def test_build_record_of_a_plan_alone_is_the_expected_record():
    """``make paper``'s expected run: only what the plan fixes (path and currency); never a valid record."""
    rec = make_record(method="lora", task="rte")
    rec["run"].update(method_version=1, variant=None,
                      config={"run": {"method": "lora", "task": "rte", "seed": 0}, "method": {"lr": 1e-3}})
    built = results.build_record(plan_of(rec))
    assert list(built) == ["schema_version", "run", "metrics", "efficiency", "env"]
    assert list(built["run"]) == ["id", "method", "method_version", "variant", "task", "task_version", "task_family",
                                  "backbone", "seed", "status", "error", "git_commit", "git_dirty", "wandb_run_id",
                                  "hyperparameters", "config", "started_at", "finished_at"]
    assert result_path("r", built) == result_path("r", rec) and validate(built) != []


def test_a_validation_curve_is_checked_and_optional():
    rec = make_record()
    assert "val_curve" not in rec["metrics"] and validate(rec) == []  # records from before it are valid
    rec["metrics"]["val_curve"] = [{"step": 10, "seconds": 1.5, "score": 0.7}, {"step": 20, "seconds": 3.0, "score": 0.8}]
    assert validate(rec) == []
    rec["metrics"]["val_curve"][1] = {"step": 20, "score": "high"}
    assert any("val_curve" in p for p in validate(rec))

