"""`make paper`: the plan covers every method (and the ablation rows where asked), a current result is
skipped and a changed one is not, and a failed run does not stop the others. No training here."""
import json
import sys

from benchmark import paper
from benchmark.results import validate
from methods.base import METHODS
from test_results import make_record

TASK = paper.PaperTask("rotten_tomatoes", {"limit_train_samples": "64"}, variants=True)


def plan(tmp_path, seeds=(0,), tasks=(TASK,)):
    return paper.plan_jobs(seeds, {"results_dir": str(tmp_path)}, tasks)


def write_current(job):
    """A results record of exactly what ``job`` plans (as ``benchmark run`` would write it)."""
    from benchmark.config import as_dict
    from benchmark.run import plan as run_plan

    p = run_plan(job.overrides)
    rec = make_record(method=p.run.method, task=p.run.task, seed=p.run.seed, family=p.task.family)
    rec["run"].update(variant=p.run.variant or None, backbone=p.backbone_label, task_version=p.task.version,
                      method_version=p.method_cls.version)
    rec["run"]["config"] = {"run": as_dict(p.run), "method": as_dict(p.method_cfg)}
    assert validate(rec) == []
    job.path.parent.mkdir(parents=True, exist_ok=True)
    job.path.write_text(json.dumps(rec))
    return rec


def test_every_method_and_the_paper_rows_are_planned(tmp_path):
    jobs = plan(tmp_path, seeds=(0, 1))
    names = {j.name for j in jobs}
    for method in METHODS:
        assert {f"rotten_tomatoes/{method}/seed0", f"rotten_tomatoes/{method}/seed1"} <= names
    rows = [n for n in names if "@" in n]
    assert len(rows) == 2 * sum(len(METHODS.get(m).paper_variants) + len(METHODS.get(m).paper_alternatives)
                                for m in METHODS) > 0
    assert "rotten_tomatoes/mpismoe@table3-base/seed1" in names
    # the memory alternatives a user would pick instead of a side network, at the fixed budget
    assert {"rotten_tomatoes/qlora/seed1", "rotten_tomatoes/lora@checkpointing/seed1",
            "rotten_tomatoes/full@checkpointing/seed1"} <= names
    assert not any(j.current for j in jobs) and {j.why for j in jobs} == {"no results yet"}
    assert all(str(j.path).startswith(str(tmp_path)) and "train64" in str(j.path) for j in jobs)
    # a task without variants=True plans the defaults only
    plain = plan(tmp_path, tasks=(paper.PaperTask("rotten_tomatoes", {"limit_train_samples": "64"}),))
    alternatives = [n for n in (j.name for j in plain) if "@" in n]
    assert len(plain) - len(alternatives) == len(list(METHODS))
    assert alternatives and all(n.split("@")[1].startswith("checkpointing") for n in alternatives)


def test_a_current_result_is_skipped_and_a_changed_one_is_not(tmp_path):
    jobs = {j.name: j for j in plan(tmp_path)}
    lora, unipt, row = (jobs[n] for n in ("rotten_tomatoes/lora/seed0", "rotten_tomatoes/unipt/seed0",
                                          "rotten_tomatoes/mpismoe@table3-base/seed0"))
    write_current(lora)
    rec = write_current(unipt)
    rec["run"]["config"]["method"]["lr"] = 123.0  # an older default
    unipt.path.write_text(json.dumps(rec))
    rec = write_current(row)
    rec["run"]["status"], rec["run"]["error"] = "failed", "RuntimeError: boom"
    rec["metrics"]["val_best"], rec["metrics"]["test"] = {}, {}
    row.path.write_text(json.dumps(rec))

    again = {j.name: j for j in plan(tmp_path)}
    assert again[lora.name].current and again[lora.name].why == ""
    assert again[unipt.name].why == "method config changed: lr"
    assert again[row.name].why == "last run failed"
    assert sum(j.current for j in again.values()) == 1
    # another budget is another file: the lora result above does not count for it
    other = paper.PaperTask("rotten_tomatoes", {"limit_train_samples": "128"})
    assert not any(j.current for j in plan(tmp_path, tasks=(other,)))
    # a run-config key added since an old record was written counts as its default value, not as a change
    rec = write_current(lora)
    del rec["run"]["config"]["run"]["vision"]
    lora.path.write_text(json.dumps(rec))
    assert {j.name: j for j in plan(tmp_path)}[lora.name].current
    # so does a method key added since (SHERL's decoder_tap_layers was: its older records stay current)
    rec = write_current(jobs["rotten_tomatoes/sherl/seed0"])
    del rec["run"]["config"]["method"]["decoder_tap_layers"]
    jobs["rotten_tomatoes/sherl/seed0"].path.write_text(json.dumps(rec))
    assert {j.name: j for j in plan(tmp_path)}["rotten_tomatoes/sherl/seed0"].current
    # a result of an older method version is stale (records from before versions are version 1)
    sherl = jobs["rotten_tomatoes/sherl/seed0"]
    rec = write_current(sherl)
    assert {j.name: j for j in plan(tmp_path)}[sherl.name].current
    del rec["run"]["method_version"]
    sherl.path.write_text(json.dumps(rec))
    assert {j.name: j for j in plan(tmp_path)}[sherl.name].why == f"method version 1 -> {METHODS.get('sherl').version}"
    lora.path.write_text("{not json")
    assert {j.name: j for j in plan(tmp_path)}[lora.name].why == "results file is corrupt"


def test_a_failed_run_does_not_stop_the_others(tmp_path, capsys):
    jobs = [paper.Job({"exit": str(code)}, f"t/m{i}/seed0", tmp_path / f"{i}.json", why="no results yet")
            for i, code in enumerate([0, 3, 0])]
    done = paper.run_jobs(jobs, workers=2, threads=1, log_dir=tmp_path / "logs",
                          command=lambda j: [sys.executable, "-c", f"print('hi'); raise SystemExit({j.overrides['exit']})"])
    assert sorted((j.name, rc) for j, rc in done) == [("t/m0/seed0", 0), ("t/m1/seed0", 3), ("t/m2/seed0", 0)]
    out = capsys.readouterr().out
    assert "FAILED t/m1/seed0 (exit 3)" in out and out.count("done  ") == 2
    assert (tmp_path / "logs" / "t__m1__seed0.log").read_text().strip() == "hi"


def test_dry_run_lists_without_running(tmp_path, capsys):
    assert paper.main(["--dry-run", "--seeds", "0", f"results_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    n = len(paper.plan_jobs((0,), {"results_dir": str(tmp_path)}))
    assert f"paper: {n} runs planned, 0 current (skipped), {n} to run" in out and "would run easy_vqa/lora/seed0" in out
    assert not (tmp_path / "runs").exists()


TUNED = paper.PaperTask("rotten_tomatoes", {"hparams": "tuned", "limit_train_samples": "64", "patience": "3",
                                            "epochs": "3", "val_check_interval": "0.5"}, tuned=True)


def test_the_tuned_budget_waits_for_one_search_per_method_then_runs_apart(tmp_path):
    """Before its search a tuned row has no path (its values are not known); each method gets one search with
    the same trials, at the trial budget on the same data (not the tuned runs' own budget); once the search
    is done the tuned rows are planned under a budget of their own."""
    from test_tune import FakeRuns

    from benchmark import tune

    jobs = plan(tmp_path, seeds=(0, 1), tasks=(TUNED,))
    assert jobs and all(j.path is None and not j.current and "search" in j.why for j in jobs)
    searches = paper.plan_searches({"results_dir": str(tmp_path)}, (TASK, TUNED))
    compared = [m for m in METHODS if METHODS.card(m).role != "alternative"]  # memory alternatives: fixed budgets only
    assert "qlora" not in compared and not any("@" in j.name or "qlora" in j.name for j in jobs)
    assert sorted(j.name for j in searches) == sorted(f"rotten_tomatoes/{m}/search" for m in compared)
    for j in searches:
        assert j.argv[-2:] == ("--trials", str(paper.TRIALS)) and "limit_train_samples=64" in j.argv
        assert not {"seed", "patience", "epochs", "hparams", "val_check_interval"} & set(j.overrides)
    lora = next(j for j in searches if j.overrides["method"] == "lora")
    tune.tune({**lora.overrides, "backbone": "minilm"}, trials=paper.TRIALS, executor=FakeRuns(val=lambda lr: lr),
              log=lambda *a: None)
    assert next(j for j in paper.plan_searches({"results_dir": str(tmp_path)}, (TUNED,))
                if j.overrides["method"] == "lora").current
    jobs = plan(tmp_path, seeds=(0,), tasks=(TUNED,))
    ready = [j for j in jobs if j.path is not None]
    assert [j.name for j in ready] == ["rotten_tomatoes/lora/seed0/tuned"]
    assert "tuned-plateau3-max3ep" in str(ready[0].path) and ready[0].why == "no results yet"


def test_the_cost_comes_from_recorded_times(tmp_path):
    """Seconds per step from a record's total time over its steps; a fixed run counts its steps, an
    until-plateau one its cap, or the mean steps of its finished seeds; no recorded time: unknown."""
    from benchmark.cost import Costs, summary
    from benchmark.results import budget_label, result_path, write_result

    rec = make_record(method="lora", task="rotten_tomatoes", seed=0)
    rec["run"]["config"]["run"].update(epochs=1, batch_size=32, limit_train_samples=320, patience=2)
    rec["efficiency"].update(total_seconds=100.0, train_steps=5)
    write_result(rec, result_path(tmp_path, rec))
    costs = Costs(tmp_path)
    assert costs.seconds_per_step("rotten_tomatoes", "lora") == 20.0
    assert costs.run("rotten_tomatoes", "lora", {"epochs": 2, "batch_size": 32, "limit_train_samples": 320},
                     "x") == (400.0, 400.0)  # 2 epochs of 10 steps
    plateau = {"epochs": 3, "batch_size": 32, "limit_train_samples": 320, "patience": 2}
    assert costs.run("rotten_tomatoes", "lora", plateau, budget_label(rec["run"])) == (100.0, 600.0)
    assert costs.run("rotten_tomatoes", "lora", plateau, "no seed finished") == (None, 600.0)
    assert costs.run("rotten_tomatoes", "bitfit", plateau, "x") == (None, None)
    text = summary([("runs", [(100.0, 600.0), (None, 600.0), (None, None)])], workers=2)
    assert "1 with no recorded time" in text and "1 counted at their cap" in text and "at most" in text
    assert "about 0.2 h of CPU" in text  # 100 s + 600 s
