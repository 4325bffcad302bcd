"""make tune: one search for every method, selected on validation only, resumable; hparams=tuned reads it."""
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from benchmark import tune
from benchmark.errors import UserError
from benchmark.run import REPO_ROOT, plan

TINY = {"backbone": "tiny-bert", "wandb": "disabled", "progress": "false", "batch_size": "16",
        "limit_train_samples": "64", "limit_eval_samples": "48", "max_length": "32", "warmup_steps": "0",
        "max_steps": "8", "val_check_interval": "4", "task": "rotten_tomatoes"}


@pytest.fixture
def dirs(tmp_path):
    return {"results_dir": str(tmp_path / "results"), "run_dir": str(tmp_path / "runs")}


class FakeRuns:
    """Stands in for ``benchmark.run.execute``: validation and test scores as functions of the learning rate,
    reported to the trial's callbacks the way Lightning would (one validation every 4 steps)."""

    def __init__(self, val, test=lambda lr: 0.5, interrupt_at=None, interrupt=KeyboardInterrupt):
        self.val, self.test, self.interrupt_at, self.calls = val, test, interrupt_at, []
        self.interrupt = interrupt

    def __call__(self, p, test=True, callbacks=()):
        assert not test, "a trial must not run the test split"
        self.calls.append(p.method_cfg.lr)
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise self.interrupt
        module = SimpleNamespace(val_curve=[])
        trainer = SimpleNamespace(sanity_checking=False, should_stop=False)
        value = self.val(p.method_cfg.lr)
        for step in (4, 8):
            module.val_curve.append({"step": step, "seconds": 0.0, "score": value * step / 8})
            for c in callbacks:
                c.on_validation_end(trainer, module)
            if trainer.should_stop:
                break
        best = max(c["score"] for c in module.val_curve)
        record = {"metrics": {"val_best": {"score": best}, "test": {"score": self.test(p.method_cfg.lr)}},
                  "efficiency": {"train_steps": module.val_curve[-1]["step"], "steps_per_epoch": 4,
                                 "total_seconds": 1.0}}
        return SimpleNamespace(record=record)


def _chosen(path):
    return json.loads(path.read_text())


def test_every_method_searches_around_its_paper_learning_rate():
    from methods import METHODS

    for name, cls in METHODS.items():
        space = cls.config_class.search_space()
        paper = cls.config_class().lr
        lo, hi = space["lr"]
        assert 0 < lo < paper < hi, name
        assert all(0 < a < b for a, b in space.values()), name


def test_the_choice_follows_validation_not_test(dirs):
    """Validation prefers a small learning rate, the test split a large one: the choice is the small one."""
    fake = FakeRuns(val=lambda lr: 1.0 / lr, test=lambda lr: lr)
    out = tune.tune({**TINY, **dirs, "method": "lora"}, trials=5, executor=fake, log=lambda *a: None)
    chosen = _chosen(out)
    assert chosen["values"]["lr"] == min(fake.calls)
    assert chosen["search"]["selected_on"].startswith("validation")
    assert chosen["search"]["trials"] == 5 and chosen["search"]["complete"] + chosen["search"]["pruned"] == 5


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit(1)], ids=["ctrl-c", "lightning-exit"])
def test_an_interrupted_search_resumes_and_a_finished_one_is_reused(dirs, interrupt):
    """Ctrl-C during a trial (inside Lightning's fit it arrives as ``sys.exit(1)``) fails that trial; the next
    call runs only the trials still missing, at new values; a finished search runs nothing."""
    log = lambda *a: None  # noqa: E731
    ov = {**TINY, **dirs, "method": "lora"}
    with pytest.raises(KeyboardInterrupt):
        tune.tune(ov, trials=4, executor=FakeRuns(val=lambda lr: lr, interrupt_at=3, interrupt=interrupt), log=log)
    db, out = tune.files(dirs["results_dir"], "rotten_tomatoes", "tiny-bert", "lora")
    assert db.is_file() and not out.is_file()
    again = FakeRuns(val=lambda lr: lr)
    tune.tune(ov, trials=4, executor=again, log=log)
    chosen = _chosen(out)
    states = [t["state"] for t in chosen["trials"]]
    assert len(again.calls) == 2 and states.count("fail") == 1  # two left of four; the interrupted one failed
    assert chosen["search"]["complete"] + chosen["search"]["pruned"] == 4
    drawn = [t["params"]["lr"] for t in chosen["trials"]]
    assert len(set(drawn)) == len(drawn)  # the resumed search drew new values, not the first ones again
    reused = FakeRuns(val=lambda lr: lr)
    written = out.read_bytes()
    tune.tune(ov, trials=4, executor=reused, log=log)
    assert reused.calls == [] and out.read_bytes() == written  # nothing new: the file (its commit) stands


def test_the_pruner_stops_a_hopeless_trial(dirs):
    """Trials after the first two whose score is below the median past the warm-up are stopped early."""
    order = iter([1.0, 1.0, 0.1, 0.1, 0.1, 0.1])
    fake = FakeRuns(val=lambda lr: next(order))
    out = tune.tune({**TINY, **dirs, "method": "lora", "max_steps": "4"}, trials=6, executor=fake,
                    log=lambda *a: None)
    assert _chosen(out)["search"]["pruned"] >= 1


def _cue_data(flip_test: bool):
    """Reviews whose label is one cue word (a tiny random model learns it within a few steps at a large enough
    learning rate): the trials differ on validation. ``flip_test``: every test label flipped."""
    import random

    from datasets import Dataset, DatasetDict, Features, Value

    rng = random.Random(0)
    filler = "the a film plot actor scene story long short music".split()

    def split(n, flip=False):
        labels = [rng.randrange(2) for _ in range(n)]
        texts = [" ".join(rng.sample(filler, 4) + [("bad", "good")[y]] + rng.sample(filler, 3)) for y in labels]
        return Dataset.from_dict({"text_a": texts, "label": [1 - y if flip else y for y in labels]},
                                 features=Features({"text_a": Value("string"), "label": Value("int64")}))

    return DatasetDict({"train": split(64), "validation": split(48), "test": split(48, flip=flip_test)})


def test_selection_reads_validation_only_a_planted_test_split_changes_nothing(tmp_path, monkeypatch):
    """Real trials on a tiny model, twice: once as is, once with every test label flipped (a test split that
    ranks the trials in reverse). The trials, their values and the choice are the same, and no trial evaluates
    the test split at all."""
    from benchmark.module import METLModule
    from methods import METHODS
    from tasks import TASKS

    def no_test(*a, **k):
        raise AssertionError("a trial evaluated the test split")

    monkeypatch.setattr(METLModule, "test_step", no_test)
    # a range where the tiny random model learns the cue within 16 steps (at some values, not at others)
    monkeypatch.setattr(METHODS.get("full").config_class, "lr_range", (1e-3, 3e-2))
    task = TASKS.get("rotten_tomatoes")
    choices = []
    for planted in (False, True):
        monkeypatch.setattr(task, "loader", lambda t, options, planted=planted: _cue_data(planted))
        where = {"results_dir": str(tmp_path / f"r{planted}"), "run_dir": str(tmp_path / f"runs{planted}")}
        out = tune.tune({**TINY, **where, "method": "full", "epochs": "4", "max_steps": "16"}, trials=3,
                        log=lambda *a: None)
        chosen = _chosen(out)
        choices.append((chosen["values"], [(t["params"], t["value"]) for t in chosen["trials"]]))
    assert choices[0] == choices[1]
    assert len({v for _, v in choices[0][1]}) > 1  # the trials differ on validation: there was a choice to make


def test_a_tuned_run_reads_the_choice_and_says_so(dirs):
    from benchmark.results import budget_label, build_record, result_path

    out = tune.tune({**TINY, **dirs, "method": "lora"}, trials=2, executor=FakeRuns(val=lambda lr: lr),
                    log=lambda *a: None)
    lr = _chosen(out)["values"]["lr"]
    p = plan({**TINY, **dirs, "method": "lora", "hparams": "tuned"})
    assert p.method_cfg.lr == lr and p.hyperparameters["source"] == "tuned"
    record = build_record(p)
    assert record["run"]["hyperparameters"]["search"]["library"].startswith("optuna")
    assert budget_label(record["run"]).startswith("tuned-")
    assert "tuned-" in str(result_path(dirs["results_dir"], record))
    p = plan({**TINY, **dirs, "method": "lora", "hparams": "tuned", "lr": "0.5"})  # the command line wins
    assert p.method_cfg.lr == 0.5 and "lr" not in p.hyperparameters["values"]
    paper = plan({**TINY, **dirs, "method": "lora"})
    assert paper.hyperparameters == {"source": "paper"} and not budget_label(build_record(paper)["run"]).startswith("tuned")


def test_a_tuned_run_without_a_search_names_make_tune(dirs):
    with pytest.raises(UserError, match="make tune METHOD=sherl TASK=rotten_tomatoes"):
        plan({**TINY, **dirs, "method": "sherl", "hparams": "tuned"})


def test_a_search_of_another_method_version_is_not_used(dirs):
    out = tune.tune({**TINY, **dirs, "method": "lora"}, trials=1, executor=FakeRuns(val=lambda lr: lr),
                    log=lambda *a: None)
    chosen = _chosen(out)
    out.write_text(json.dumps({**chosen, "method_version": chosen["method_version"] + 1}))
    with pytest.raises(UserError, match="method v"):
        plan({**TINY, **dirs, "method": "lora", "hparams": "tuned"})
    out.write_text("{not json")
    with pytest.raises(UserError, match="not a chosen-values file"):
        plan({**TINY, **dirs, "method": "lora", "hparams": "tuned"})


def test_the_command_line_refuses_bad_input_in_one_line(dirs):
    for args in (["method=nope"], ["method=lora", "--trials", "0"]):
        done = subprocess.run([sys.executable, "-m", "benchmark", "tune", *args, *(f"{k}={v}" for k, v in dirs.items())],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
