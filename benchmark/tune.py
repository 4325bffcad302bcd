"""``make tune``: the same hyperparameter search for every method, selected on the validation split only.

A search is an Optuna study per (task, backbone, method[@variant]): ``TRIALS`` trials, each a short training
run (the task card's ``tune_budget``) at values drawn from the method's ``search_space()`` (learning rate
log-uniform around its paper value, AdamW weight decay log-uniform). Trials never touch the test split (no
test runs, no checkpoint); a trial's value is its best validation score. Optuna's TPE sampler draws the values
(its first ``STARTUP`` trials at random), its median pruner stops a trial whose validation score falls below
the median of earlier trials at the same step. The study lives in a SQLite file under ``results/tuning/``: an
interrupted search (Ctrl-C) resumes where it stopped, and a finished one is reused, not rerun. The best trial's
values go to ``results/tuning/<task>__<backbone>__<method>.json``, which a run with ``hparams=tuned`` reads
(``make bench ARGS=hparams=tuned``, ``make paper``'s tuned rows) and records with its search.
"""
from __future__ import annotations

import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

from benchmark.cli import OverridesParser, entry_point, quiet
from benchmark.errors import UserError
from benchmark.results import budget_label, build_record, slug

TRIALS = 6  # every method gets the same number
STARTUP = 3  # TPE's random trials before it models the results
SEED = 0
HEARTBEAT = 30  # seconds between a running trial's heartbeats
# the trial budget of a task whose card declares none: short, validated often enough for the pruner
TRIAL_BUDGET = {"max_steps": "64", "val_check_interval": "16", "limit_eval_samples": "512"}
# what every trial runs with, whatever the command line says: no results file, no W&B run, no memory tracker
TRIAL_SETTINGS = {"official": "false", "wandb": "disabled", "track_memory": "false", "progress": "false",
                  "hparams": "paper"}


def files(results_dir: str | Path, task: str, backbone: str, label: str) -> tuple[Path, Path]:
    """(the study's SQLite file, the chosen-values JSON) of one (task, backbone, method[@variant])."""
    stem = Path(results_dir) / "tuning" / f"{slug(task)}__{slug(backbone)}__{slug(label)}"
    return stem.with_suffix(".db"), stem.with_suffix(".json")


def trial_budget(task: str) -> dict[str, str]:
    from tasks import TASKS

    return dict(TASKS.card(task).tune_budget or TRIAL_BUDGET)


def study_name(plan) -> str:
    """The study a plan's search is: a new task or method version, trial budget or search space is a new study."""
    run = build_record(plan)["run"]
    space = ",".join(f"{k}:{lo:g}-{hi:g}" for k, (lo, hi) in plan.method_cls.config_class.search_space().items())
    return (f"{run['task']}-v{run['task_version']}/{run['backbone']}/{plan.run.label}-v{run['method_version']}"
            f"/{budget_label(run)}/{space}")


def chosen(run, backbone: str, method_cls, task) -> dict:
    """The chosen-values file of this (task, backbone, method[@variant]), checked to be of the same task and
    method version; a one-line UserError naming ``make tune`` when there is none."""
    import json

    from benchmark.run import REPO_ROOT

    _, path = files(REPO_ROOT / run.results_dir, run.task, backbone, run.label)
    fix = (f"run `make tune METHOD={run.method} TASK={run.task} BACKBONE={run.backbone}"
           f"{' ARGS=variant=' + run.variant if run.variant else ''}` first")
    if not path.is_file():
        raise UserError(f"hparams=tuned: no tuned values for {run.label} on {run.task} ({backbone}) in {path}; {fix}")
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
        values = {k: float(v) for k, v in found["values"].items()}
        versions = (int(found["task_version"]), int(found["method_version"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"hparams=tuned: {path} is not a chosen-values file ({type(e).__name__}: {e}); {fix}") from None
    if versions != (task.version, method_cls.version):
        raise UserError(f"hparams=tuned: {path} was tuned for task v{versions[0]} / method v{versions[1]}, this is "
                        f"task v{task.version} / method v{method_cls.version}; {fix}")
    where = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
    return {"values": values, "search": found["search"], "file": str(where)}


def reporter(trial):
    """A Lightning callback that reports each validation score to the trial and stops a pruned one (the
    pruning decision is Optuna's; stopping through the trainer lets Lightning's loop end cleanly)."""
    from lightning.pytorch.callbacks import Callback

    class Reporter(Callback):
        pruned = False

        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking or not pl_module.val_curve:
                return
            point = pl_module.val_curve[-1]
            trial.report(point["score"], step=int(point["step"]))
            if trial.should_prune():
                self.pruned = True
                trainer.should_stop = True

    return Reporter()


def objective_for(overrides: dict[str, str], space: dict[str, tuple[float, float]], executor=None):
    """The study's objective: one short run at the trial's values; its best validation score (the test split is
    never evaluated). ``executor`` stands in for ``benchmark.run.execute`` in tests."""
    import optuna

    from benchmark.run import execute, plan

    run_trial = executor or execute

    def objective(trial) -> float:
        values = {k: trial.suggest_float(k, lo, hi, log=True) for k, (lo, hi) in space.items()}
        report = reporter(trial)
        try:
            logs = {"run_dir": str(Path(overrides["run_dir"]) / f"trial{trial.number}")}  # one folder per trial
            done = run_trial(plan({**overrides, **logs, **{k: repr(v) for k, v in values.items()}}), test=False,
                             callbacks=[report])
        except SystemExit as e:  # Lightning turns Ctrl-C into sys.exit(1): Optuna marks the trial failed on this
            raise KeyboardInterrupt from e
        eff = done.record["efficiency"]
        trial.set_user_attr("train_steps", eff.get("train_steps"))
        trial.set_user_attr("steps_per_epoch", eff.get("steps_per_epoch"))
        trial.set_user_attr("seconds", eff.get("total_seconds"))
        score = (done.record["metrics"]["val_best"] or {}).get("score")
        if report.pruned:
            raise optuna.TrialPruned(f"validation score {score} below the median at step {eff.get('train_steps')}")
        return float("nan") if score is None else float(score)  # NaN (diverged): a failed trial, never chosen

    return objective


def trial_plan(overrides: dict[str, str]):
    """(the plan of a trial, the overrides every trial starts from, the study file, the chosen-values file)."""
    from benchmark.config import RunConfig
    from benchmark.run import REPO_ROOT, plan

    probe = plan({**overrides, "hparams": "paper"})  # names and values checked before anything trains
    settings = {**trial_budget(probe.run.task), **overrides, **TRIAL_SETTINGS,
                "run_dir": str(Path(overrides.get("run_dir", RunConfig.run_dir)) / "tune")}
    p = plan(settings)
    db, out = files(REPO_ROOT / p.run.results_dir, p.run.task, p.backbone_label, p.run.label)
    return p, settings, db, out


def search_status(overrides: dict[str, str], trials: int = TRIALS) -> str:
    """"" when the search of ``overrides`` is done (its chosen values are of this study, with ``trials``
    trials), else why not: what ``make paper`` reads before it runs a tuned row."""
    import json

    p, _, _, out = trial_plan(overrides)
    if not out.is_file():
        return "not searched yet"
    try:
        search = json.loads(out.read_text(encoding="utf-8"))["search"]
        if search["study"] != study_name(p):
            return "the search changed (task or method version, trial budget or space)"
        if search["trials"] != trials or search["complete"] + search["pruned"] < trials:
            return f"{search['complete'] + search['pruned']} of {trials} trials done"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"chosen-values file unreadable ({type(e).__name__})"
    return ""


def tune(overrides: dict[str, str], trials: int = TRIALS, executor=None, log=None) -> Path:
    """Run (or resume, or reuse) the search of one (task, backbone, method[@variant]); write and return the
    chosen-values file."""
    import optuna

    log = log or (lambda line: print(line, flush=True))  # a search's log file shows each trial as it ends
    if trials < 1:
        raise UserError(f"--trials {trials}: give at least 1")
    p, settings, db, out = trial_plan(overrides)
    run = p.run
    space = p.method_cls.config_class.search_space()
    db.parent.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: since 2.9

    # heartbeats: a trial whose process was killed (no Ctrl-C) is failed by the next call, not left running
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}", heartbeat_interval=HEARTBEAT, grace_period=2 * HEARTBEAT)

    def open_study(seed: int):
        return optuna.create_study(study_name=study_name(p), storage=storage, load_if_exists=True,
                                   direction="maximize" if p.task.higher_is_better else "minimize",
                                   sampler=optuna.samplers.TPESampler(n_startup_trials=STARTUP, seed=seed),
                                   pruner=_pruner(p.run.max_steps))

    study = open_study(SEED)
    optuna.storages.fail_stale_trials(study)
    if study.trials:  # a resumed search draws on from where it stopped, not the same values again
        study = open_study(SEED + len(study.trials))
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=counted))
    left = max(0, trials - done)
    log(f"tune: {run.label} on {run.task} ({p.backbone_label}): {done} of {trials} trials done"
        f"{', resuming' if done and left else ''}; study {db}")
    if left:
        study.optimize(objective_for(settings, space, executor), n_trials=left,
                       callbacks=[optuna.study.MaxTrialsCallback(trials, states=counted), _progress(log, trials)])
    return write_choice(study, p, space, trials, db, out, log)


def _pruner(max_steps: int):
    """Median pruning once a trial is past its first half (its warm-up), after two trials have finished."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=max(0, max_steps // 2))


def _progress(log, trials: int):
    def callback(study, trial):
        params = ", ".join(f"{k}={v:.3g}" for k, v in trial.params.items())
        value = "" if trial.value is None else f" val score {trial.value:.4f}"
        log(f"tune: trial {trial.number} ({params}) {trial.state.name.lower()}{value}")

    return callback


def write_choice(study, p, space, trials, db: Path, out: Path, log=print) -> Path:
    """The best completed trial's values, with how they were found, to ``out`` (atomically)."""
    import json

    import optuna

    from benchmark.results import atomic_write_text, git_info
    from benchmark.run import REPO_ROOT

    states = [t.state for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise UserError(f"tune: no trial of {p.run.label} on {p.run.task} finished (see {db}); "
                        f"run `make tune` again to add trials")
    best = study.best_trial
    rel = lambda path: str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)  # noqa: E731
    run = build_record(p)["run"]
    record = {
        "task": run["task"], "task_version": run["task_version"], "backbone": run["backbone"],
        "method": p.run.label, "method_version": run["method_version"],
        "values": dict(best.params), "val_score": best.value, "trial": best.number,
        "trial_run": {k: getattr(p.run, k) for k in ("epochs", "max_steps", "batch_size", "max_length",
                                                      "limit_train_samples", "limit_eval_samples",
                                                      "val_check_interval")},
        "search": {"library": f"optuna {optuna.__version__}",
                   "sampler": f"TPE ({STARTUP} random startup trials, seed {SEED})",
                   "pruner": "median (after 2 trials, from the trial's second half)",
                   "trials": trials, "complete": len(complete),
                   "pruned": states.count(optuna.trial.TrialState.PRUNED),
                   "failed": states.count(optuna.trial.TrialState.FAIL),
                   "space": {k: [lo, hi, "log"] for k, (lo, hi) in space.items()},
                   "budget": budget_label(run), "selected_on": "validation (best score of each trial)",
                   "storage": rel(db), "study": study.study_name},
        "trials": [{"number": t.number, "state": t.state.name.lower(), "params": t.params, "value": t.value,
                    **{k: t.user_attrs.get(k) for k in ("train_steps", "steps_per_epoch", "seconds")}}
                   for t in study.trials],
    }
    params = ", ".join(f"{k}={v:.3g}" for k, v in best.params.items())
    if _same_choice(out, record):  # a reused, finished search: the committed file (and its commit) stand
        log(f"tune: chose {params} (trial {best.number}, val score {best.value:.4f}), as {rel(out)} already says")
        return out
    record.update(git_commit=git_info(REPO_ROOT)[0], written_at=datetime.now(timezone.utc).isoformat())
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    log(f"tune: chose {params} (trial {best.number}, val score {best.value:.4f}) -> {rel(out)}")
    return out


def _same_choice(out: Path, record: dict) -> bool:
    """Whether ``out`` already holds ``record`` (but for when and at which commit it was written)."""
    import json

    try:
        old = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return {k: v for k, v in old.items() if k not in ("git_commit", "written_at")} == json.loads(json.dumps(record))


@entry_point()
def main(argv: list[str] | None = None) -> int:
    ap = OverridesParser(prog="python -m benchmark tune", description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="method= task= backbone= and any config key")
    ap.add_argument("--trials", type=int, default=TRIALS, help=f"trials in the study (default {TRIALS}, "
                                                                 "the same for every method)")
    a = ap.parse_args(argv)
    quiet()
    from benchmark.config import parse_overrides

    try:
        tune(parse_overrides(a.overrides), trials=a.trials)
    except KeyboardInterrupt:
        print("tune: interrupted; the running trial is marked failed. The same command resumes the search.",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
