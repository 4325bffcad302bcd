"""Run one (method, task, backbone, seed): build, train with Lightning, select on val, test once,
write one results JSON. Nothing here branches on a method's or task's name."""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from benchmark.config import ConfigError, RunConfig, as_dict, build, current_names, split_overrides
from benchmark.errors import TrainingFailed, UserError
from benchmark import results, runlock
from benchmark.resume import resume_checkpoint, resume_plan, unfinished

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Plan:
    """A validated run: everything resolved by name, nothing heavy built yet."""

    run: RunConfig
    method_cls: type
    method_cfg: object
    task: object
    # where the method's hyperparameters came from: {"source": "paper"}, or {"source": "tuned", "values": the
    # ones applied, "search": how make tune found them, "file": its chosen-values file}
    hyperparameters: dict = dataclasses.field(default_factory=lambda: {"source": "paper"})

    @property
    def backbone_label(self) -> str:
        return backbone_label(self.run, self.task)


def backbone_label(run: RunConfig, task) -> str:
    """The backbone a result is filed under: the text backbone (``:seq2seq`` when it runs as an encoder-decoder
    through label words, so the two kinds never share a row), plus the image encoder on VL tasks."""
    text = f"{run.backbone}:seq2seq" if run.head == "seq2seq" else run.backbone
    return f"{text}+{run.vision}" if task.images_per_example else text


def plan(overrides: dict[str, str]) -> Plan:
    """Resolve names and validate every value before anything is loaded or trained."""
    from benchmark.backbones import _resolve
    from methods import METHODS
    from tasks import TASKS

    run_part = {k: v for k, v in overrides.items() if k in RunConfig.__dataclass_fields__}
    probe = build(RunConfig, {k: v for k, v in run_part.items() if k in ("method", "task", "backbone")}, "run")
    method_cls = METHODS.get(probe.method)
    task = TASKS.get(probe.task)
    _resolve(probe.backbone)
    if task.images_per_example:
        from benchmark.vision import VISUAL_ENCODERS

        vision = run_part.get("vision", RunConfig.vision)
        if vision not in VISUAL_ENCODERS and not ("/" in vision or vision.startswith("hf:")):
            VISUAL_ENCODERS.get(vision)  # the one-line unknown-name error, listing the valid ones
    run_vals, method_vals = split_overrides(overrides, RunConfig, method_cls.config_class)
    run = build(RunConfig, run_vals, "run")
    run.check_trainer()
    if not run.head:  # the backbone's default kind, recorded as resolved
        from benchmark.backbones import default_head

        run = dataclasses.replace(run, head=default_head(run.backbone))
    given = current_names(method_cls.config_class, method_vals)
    variant: dict[str, str] = {}
    if run.variant:
        variants = method_cls.all_variants()
        if run.variant not in variants:
            valid = ", ".join(sorted(variants)) or "none"
            raise ConfigError(f"unknown variant {run.variant!r} of method {run.method!r}; valid variants: {valid}")
        variant = current_names(method_cls.config_class, variants[run.variant])
    hyperparameters = {"source": "paper"}
    tuned: dict[str, str] = {}
    if run.hparams == "tuned":  # make tune's choice for this (task, backbone, method[@variant])
        from benchmark.tune import chosen

        found = chosen(run, backbone_label(run, task), method_cls, task)
        tuned = {k: repr(v) for k, v in found["values"].items() if k not in given}
        hyperparameters = {"source": "tuned", "values": {k: found["values"][k] for k in tuned},
                           "search": found["search"], "file": found["file"]}
    method_vals = {**variant, **tuned, **given}  # the command line wins
    method_cfg = build(method_cls.config_class, method_vals, probe.method)
    return Plan(run, method_cls, method_cfg, task, hyperparameters)


def _loggers(p: Plan, run_dir: Path):
    from lightning.pytorch.loggers import CSVLogger

    loggers = [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    mode = os.environ.get("WANDB_MODE", p.run.wandb)
    if mode in ("offline", "online"):
        try:
            import wandb  # noqa: F401
            from lightning.pytorch.loggers import WandbLogger
        except ImportError:
            print("note: wandb is not installed; logging to CSV only", file=sys.stderr)
            return loggers
        if mode == "online" and not (os.environ.get("WANDB_API_KEY") or _wandb_has_key()):
            print("note: W&B online was asked for but no API key is set (wandb login); logging offline",
                  file=sys.stderr)
            mode = "offline"
        os.environ["WANDB_MODE"] = mode
        os.environ.setdefault("WANDB_SILENT", "true")
        r = p.run
        loggers.append(WandbLogger(project=r.wandb_project, save_dir=str(run_dir), offline=(mode == "offline"),
                                   group=f"{r.task}/{r.label}",
                                   tags=[r.task, r.method, p.backbone_label] + ([r.variant] if r.variant else []),
                                   name=f"{r.task}-{r.label}-{results.label_slug(p.backbone_label)}-s{r.seed}",
                                   config={"run": as_dict(r), "method": as_dict(p.method_cfg)}))
    return loggers


def _wandb_has_key() -> bool:
    try:
        import wandb

        return bool(wandb.api.api_key)
    except Exception:
        return False


def build_components(p: Plan):
    """Backbone, data module, method and Lightning module for a plan; data problems surface here."""
    import benchmark.bnb_preload  # noqa: F401  (transformers and peft import bitsandbytes: the guarded way first)
    from benchmark.backbones import load_backbone
    from benchmark.data import TaskDataModule
    from benchmark.module import METLModule

    r = p.run
    backbone = load_backbone(r.backbone, pooling=r.pooling or None, head=r.head)
    if backbone.seq2seq and not p.method_cls.runs_on_seq2seq:
        raise UserError(f"method {r.method!r} does not run on a seq2seq backbone yet; use head=classifier "
                        f"(methods that do: {', '.join(seq2seq_methods())})")
    image_features = None
    if p.task.images_per_example:
        backbone, image_features = vision_language(backbone, p)
    dm = TaskDataModule.from_run(p.task, backbone.tokenizer, r, image_features=image_features,
                                 text_to_text=backbone.seq2seq)
    dm.setup()  # data problems surface now, as one line, before any training
    method = p.method_cls(backbone, p.method_cfg)
    method.prepare(dm.train_dataloader(), p.task)
    module = METLModule(method, p.task, lr=p.method_cfg.lr, weight_decay=p.method_cfg.weight_decay,
                        warmup_steps=r.warmup_steps, head_dropout=p.method_cfg.head_dropout,
                        target_length=r.target_length, pad_targets=r.pad_to_max_length)
    return dm, method, module


def seq2seq_methods() -> list[str]:
    from methods import METHODS

    return [n for n in METHODS.names() if METHODS.get(n).runs_on_seq2seq]


def vision_language(text_backbone, p: Plan):
    """The text backbone with a visual adapter, and the cached-feature function of the image encoder."""
    from benchmark.backbones.vl import VisionLanguageBackbone
    from benchmark.vision import FeatureCache, default_cache_root, load_visual_encoder

    r = p.run
    encoder = load_visual_encoder(r.vision)
    cache = FeatureCache(r.feature_cache or default_cache_root())
    kind = VisionLanguageBackbone.over(text_backbone)
    backbone = kind(text_backbone, encoder_name=r.vision, feature_dim=encoder.feature_dim,
                    tokens=encoder.num_tokens, images=p.task.images_per_example)
    def image_features(paths):
        t0 = time.time()
        feats = cache.features(encoder, paths, progress=r.progress)
        print(f"image features ({r.vision}): {cache.computed} computed, {cache.reused} read from the cache "
              f"{cache.folder(encoder)} in {time.time() - t0:.1f} s", file=sys.stderr)
        return feats

    return backbone, image_features


def parameter_counts(module, method) -> dict:
    from methods.base import logical_parameter_count

    trainable = sum(q.numel() for q in module.parameters() if q.requires_grad)
    total, own = logical_parameter_count(module), method.backbone.own_parameter_count
    return {"trainable_params": trainable, "total_params": total, "backbone_params": own,
            "trainable_percent": 100.0 * trainable / max(own, 1),  # the papers' denominator (LST's code)
            "trainable_percent_of_total": 100.0 * trainable / max(total, 1),
            "backbone_storage_bytes": method.backbone_storage_bytes()}


@dataclass
class Executed:
    """A finished run: its results record, and what only the writing process needs (never in the record)."""

    record: dict
    rank: int  # the process's global rank: rank 0 writes the record
    run_dir: Path  # logs and checkpoints
    wandb_run: object | None  # the W&B run to report to, when W&B logs


def execute(p: Plan, test: bool = True, callbacks: list | tuple = (), resume: Path | None = None,
            on_run_dir=None) -> Executed:
    """Train, select on validation, test once with the best checkpoint; return the record and its context.
    ``test=False`` (a make tune trial) trains and validates only: no checkpoint, no test split touched."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from benchmark.memory import MemoryMeter

    r = p.run
    started = datetime.now(timezone.utc)
    t0 = time.time()
    commit, dirty = results.git_info(REPO_ROOT)  # the code this run starts with, read before it trains
    L.seed_everything(r.seed, workers=True, verbose=False)
    dm, method, module = build_components(p)

    stamp = started.strftime("%Y%m%d-%H%M%S")
    run_dir = resume or (REPO_ROOT / r.run_dir / r.task / results.label_slug(r.label) / results.label_slug(p.backbone_label)
                         / f"seed{r.seed}-{stamp}")
    run_dir.mkdir(parents=True, exist_ok=True)
    if on_run_dir is not None:
        on_run_dir(run_dir)
    meter = MemoryMeter(track=r.track_memory)
    ckpt = None
    if test:
        ckpt = ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), monitor="val/score",
                               mode="max" if p.task.higher_is_better else "min", save_top_k=1,
                               save_weights_only=True, filename="best")
    resumable = None
    if r.checkpoint_every:  # the whole training state, so that a killed run continues (run(), README "Resume")
        state = resume_checkpoint(run_dir)
        resumable = ModelCheckpoint(dirpath=str(state.parent), filename=state.stem, monitor=None,
                                    save_top_k=1, every_n_train_steps=r.checkpoint_every, save_weights_only=False,
                                    enable_version_counter=False, save_on_train_epoch_end=False)
    callbacks = [c for c in (ckpt, resumable, meter) if c is not None] + list(callbacks)
    if r.patience:  # until-plateau: stop when validation stops improving; the epochs/steps are the cap
        from lightning.pytorch.callbacks import EarlyStopping

        callbacks.append(EarlyStopping(monitor="val/score", mode="max" if p.task.higher_is_better else "min",
                                       patience=r.patience))
    if r.progress and not sys.stdout.isatty():  # a log file: plain lines, not a redrawn bar
        from benchmark.progress import LineProgress

        callbacks.append(LineProgress())
    loggers = _loggers(p, run_dir)
    strategy = r.strategy
    if strategy == "ddp" and p.method_cls.may_skip_parameters:
        strategy = "ddp_find_unused_parameters_true"
    trainer = L.Trainer(accelerator=r.accelerator, devices=r.devices_value(), strategy=strategy,
                        num_nodes=r.num_nodes, precision=r.precision, max_epochs=r.epochs, max_steps=r.max_steps,
                        gradient_clip_val=r.grad_clip or None, val_check_interval=_val_check(r, dm),
                        callbacks=callbacks, logger=loggers, enable_progress_bar=r.progress,
                        enable_model_summary=False, num_sanity_val_steps=0, deterministic=False,
                        enable_checkpointing=ckpt is not None or resumable is not None,
                        default_root_dir=str(run_dir))
    if trainer.world_size == 1:  # what Lightning will estimate, known before it loads the training data
        per_epoch = math.ceil(len(dm.splits["train"]) / r.batch_size)
        module.planned_steps = per_epoch * r.epochs if r.max_steps < 0 else min(per_epoch * r.epochs, r.max_steps)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*")
        warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")  # the frozen backbone, on purpose
        warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        # metrics are torchmetrics objects, synced over ranks in compute(); the logged values are global
        warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed setting.*")
        warnings.filterwarnings("ignore", ".*it is recommended to use `Trainer\\(devices=1.*")
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume_checkpoint(run_dir)) if resume is not None else None)
        resume_checkpoint(run_dir).unlink(missing_ok=True)  # finished: nothing left to resume
        if ckpt is not None:
            trainer.test(module, datamodule=dm, ckpt_path=ckpt.best_model_path or None, verbose=False)

    eff = meter.summary()
    eff.update(parameter_counts(module, method))
    earlier = float(getattr(module, "_resumed_seconds", 0.0))
    eff.update({
        "checkpoint_bytes": os.path.getsize(ckpt.best_model_path) if ckpt and ckpt.best_model_path else None,
        # a resumed run: plus the training time of the segments before (up to the checkpoint it resumed from)
        "total_seconds": time.time() - t0 + earlier, "earlier_seconds": earlier,
        "batch_size": r.batch_size, "max_length": r.max_length,
        "precision": r.precision, "num_processes": trainer.world_size,
        "train_steps": int(trainer.global_step),  # where an until-plateau run stopped (optimizer steps)
        "steps_per_epoch": int(trainer.num_training_batches),  # what make paper's cost estimate scales by
    })
    wandb_run = next((lg.experiment for lg in loggers if type(lg).__name__ == "WandbLogger"), None)
    wandb_id = wandb_run.id if wandb_run is not None else None
    record = results.build_record(
        p, run_id=results.run_id_for(p, stamp), git=(commit, dirty), wandb_run_id=wandb_id,
        started_at=started.isoformat(), finished_at=datetime.now(timezone.utc).isoformat(),
        val_best=module.best_val, test=module.last_test, efficiency=eff, env=results.env_info(),
        val_curve=module.val_curve)
    return Executed(record, trainer.global_rank, run_dir, wandb_run)


def report_to_wandb(wandb_run, record: dict, path: Path) -> None:
    """The run's headline numbers as W&B summary metrics (what the runs table shows and sorts by), and the
    results JSON attached to the run (uploaded when online; kept in the offline run for ``wandb sync``)."""
    m, e = record["metrics"], record["efficiency"]
    summary = {f"best_val/{k}": v for k, v in m["val_best"].items()}
    summary.update({f"final_test/{k}": v for k, v in m["test"].items()})
    summary.update({"peak_train_gib": e["peak_train_bytes"] / 2**30, "peak_train_bytes": e["peak_train_bytes"],
                    "peak_source": e["peak_source"], "trainable_params": e["trainable_params"],
                    "trainable_percent": e["trainable_percent"], "step_seconds": e.get("step_seconds"),
                    "budget": results.budget_label(record["run"]), "results_file": str(path)})
    wandb_run.summary.update(summary)
    wandb_run.save(str(path), base_path=str(path.parent), policy="now")
    wandb_run.finish()  # the run is complete: flush the summary and the file now, not at interpreter exit


def run(overrides: dict[str, str]) -> Path | None:
    """Plan, execute and save one run; returns the results path (rank 0) or None. The run holds its results
    file's lock while it trains (``benchmark.runlock``: one run per results file)."""
    p = plan(overrides)
    out_root = REPO_ROOT / p.run.results_dir
    if not p.run.official:
        out_root = out_root / "tmp"
    planned = results.result_path(out_root, results.build_record(p))
    with runlock.hold(planned) if _launching_rank() else nullcontext() as lock:
        resume = unfinished(p, lock)
        try:
            done = execute(p, resume=resume, on_run_dir=(lambda d: lock.note(run_dir=str(d), plan=resume_plan(p)))
                           if lock else None)
            if done.rank == 0:
                _check_scores(done.record)
        except UserError:
            raise  # bad input: one line, nothing written
        except BaseException as exc:  # a crash or Ctrl-C: recorded as such, never where results are read
            _record_failure(p, exc)
            if not _interrupted(exc):
                raise
            if lock is not None:
                lock.keep()  # stopped, not broken: the next run of this plan resumes it
            print("interrupted: the next run of this plan resumes it from its last checkpoint (FRESH=1 starts over)",
                  file=sys.stderr)
            raise SystemExit(130 if isinstance(exc, KeyboardInterrupt) else 143) from None
        if done.rank != 0:
            return None
        record = done.record
        path = results.result_path(out_root, record)
        results.write_result(record, path)
    if done.wandb_run is not None:
        report_to_wandb(done.wandb_run, record, path)
    t = record["metrics"]["test"]
    e = record["efficiency"]
    print(f"done: {p.run.label} on {p.run.task} (seed {p.run.seed}): test score {t.get('score', float('nan')):.4f}, "
          f"peak train memory {e['peak_train_bytes'] / 2**30:.3f} GiB ({e['peak_source']}), "
          f"trainable {e['trainable_params']:,} ({e['trainable_percent']:.2f} %)")
    print(f"results: {path}\nlogs: {done.run_dir}")
    return path


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C (Lightning turns it into ``exit(1)``), or the SIGTERM a scheduler or a preemptible machine sends
    (Lightning's ``SIGTERMException``)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return isinstance(exc, (KeyboardInterrupt, SIGTERMException)) or \
        (isinstance(exc, SystemExit) and exc.code not in (0, None))


def _val_check(r: RunConfig, dm) -> float | int:
    """The run's ``val_check_interval``; a ``max_steps`` cap inside the first epoch validates at its last step."""
    procs = r.num_nodes * (int(r.devices) if str(r.devices).isdigit() else 1)
    per_epoch = math.ceil(len(dm.splits["train"]) / (r.batch_size * procs))
    if r.val_check_interval == 1.0 and 0 < r.max_steps < per_epoch:
        return int(r.max_steps)
    return r.val_check_interval


def _check_scores(record: dict) -> None:
    """A run whose validation gave no score, or whose test gave none, is a failed run, never an ok record."""
    m = record["metrics"]
    missing = [part for part in ("val_best", "test") if not isinstance((m.get(part) or {}).get("score"), (int, float))]
    if missing:
        raise TrainingFailed(f"the run finished without a {' or '.join(missing)} score; check the task's data")


def _launching_rank() -> bool:
    """True in the process a user started; False in the processes Lightning launches for the other ranks
    (they re-run this command with LOCAL_RANK / NODE_RANK set) and must not contend for the lock."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _record_failure(p: Plan, exc: BaseException) -> None:
    """Write a failed/interrupted record under <results_dir>/tmp/failed so it is seen, never counted."""
    r = p.run
    status = "interrupted" if _interrupted(exc) else "failed"
    now = datetime.now(timezone.utc).isoformat()
    record = results.build_record(p, run_id=results.run_id_for(p, status), status=status,
                                  error=f"{type(exc).__name__}: {exc}"[:2000], git=results.git_info(REPO_ROOT),
                                  started_at=now, finished_at=now, env=results.env_info())
    try:
        path = results.result_path(REPO_ROOT / r.results_dir / "tmp" / "failed", record)
        results.write_result(record, path)
        print(f"{status}: record written to {path}", file=sys.stderr)
    except Exception as e:  # never mask the original error
        print(f"note: could not record the {status} run: {e}", file=sys.stderr)
