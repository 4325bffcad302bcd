"""One LightningModule for every (method, task) pair: method features -> task head -> task loss.

Nothing here knows a method's or a task's name: methods give features (and optionally an extra
loss), tasks give the loss, the predictions the metrics compare, and the reported score; the head
(``benchmark.heads``: a new classifier, or the frozen LM head over the task's label words on a seq2seq
backbone) turns features into both.
"""
from __future__ import annotations

import time

import lightning as L
import torch
from torchmetrics import MetricCollection

from benchmark.errors import TrainingFailed
from benchmark.heads import make_head
from methods.base import Method
from tasks.base import METRIC_COLUMNS, Task

INPUT_KEYS_EXCLUDED = ("labels", *METRIC_COLUMNS)


class METLModule(L.LightningModule):
    def __init__(self, method: Method, task: Task, lr: float, weight_decay: float, warmup_steps: int,
                 head_dropout: float = 0.1, target_length: int = 8, pad_targets: bool = False):
        super().__init__()
        self.method = method
        self.task = task
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.head = make_head(method.backbone, method, task, dropout=head_dropout, target_length=target_length,
                              pad_targets=pad_targets)
        self.val_metrics = MetricCollection(task.make_metrics(), prefix="val/")
        self.test_metrics = MetricCollection(task.make_metrics(), prefix="test/")
        self.strict_loading = False  # checkpoints hold trainable state only
        self.planned_steps: int | None = None  # optimizer steps the run will take (run.execute), or None: ask Lightning
        self.best_val: dict[str, float] | None = None
        self.last_test: dict[str, float] | None = None
        self.val_curve: list[dict[str, float]] = []  # every validation: step, seconds since training began, score
        self._train_began: float | None = None

    # --- forward ----------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, num_labels] class scores (a classifier's logits; a seq2seq backbone's label-word log-likelihoods)."""
        return self.head.scores(self.method, self.inputs(batch), batch)

    @staticmethod
    def inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in batch.items() if k not in INPUT_KEYS_EXCLUDED}

    def on_train_start(self):
        if self.planned_steps is not None and self.planned_steps != self.trainer.estimated_stepping_batches:
            raise AssertionError(f"planned {self.planned_steps} steps, Lightning estimates "
                                 f"{self.trainer.estimated_stepping_batches}: the schedule would be wrong")
        self.train()  # lets the method decide its backbone's mode (Method.train); Lightning keeps it after val
        # a resumed run's clock goes on from where the killed one stopped (learning curves vs wall time)
        self._train_began = time.perf_counter() - getattr(self, "_resumed_seconds", 0.0)

    def training_step(self, batch, batch_idx):
        loss = self.head.loss(self.method, self.inputs(batch), batch)
        extra = self.method.extra_loss()
        if extra is not None:
            self.log("train/extra_loss", extra.detach(), on_step=True)
            loss = loss + extra
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss):  # stop at this step rather than record garbage
            raise TrainingFailed(f"loss became {'NaN' if torch.isnan(loss) else 'infinite'} at step {self.global_step}")
        self.method.after_step(self.global_step)
        if self.trainer.is_last_batch:
            # The epoch's end-of-training update (GNP-IQ's re-quantization) runs here, before the epoch's
            # validation and its checkpoint, so the model validated is the one saved and tested. In
            # ``on_train_epoch_end`` it would run after validation and before the checkpoint is written.
            self.method.after_epoch(self.current_epoch)

    def on_train_epoch_end(self):
        for k, v in self.method.training_stats().items():
            self.log(f"train/{k}", float(v))

    def _eval_step(self, batch, metrics: MetricCollection) -> None:
        extra = {c: batch[c] for c in METRIC_COLUMNS if c in batch}  # e.g. NLVR2's sentence groups
        metrics.update(self.head.predictions(self(batch)), batch["labels"], **extra)

    def _eval_end(self, metrics: MetricCollection, stage: str) -> dict[str, float]:
        values = {k.split("/", 1)[1]: v for k, v in metrics.compute().items()}  # synced over ranks
        metrics.reset()
        values["score"] = self.task.score(values)
        out = {k: float(v) for k, v in values.items()}
        for k, v in out.items():
            self.log(f"{stage}/{k}", v, prog_bar=(k == "score"), sync_dist=False, rank_zero_only=False)
        return out

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_metrics)

    def on_validation_epoch_end(self):
        values = self._eval_end(self.val_metrics, "val")
        if self.trainer.sanity_checking:
            return
        seconds = time.perf_counter() - self._train_began if self._train_began is not None else 0.0
        self.val_curve.append({"step": int(self.global_step), "seconds": round(seconds, 3), "score": values["score"]})
        better = (lambda a, b: a > b) if self.task.higher_is_better else (lambda a, b: a < b)
        if self.best_val is None or better(values["score"], self.best_val["score"]):
            self.best_val = values

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_metrics)

    def on_test_epoch_end(self):
        self.last_test = self._eval_end(self.test_metrics, "test")

    # --- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        from transformers import get_linear_schedule_with_warmup

        from benchmark.optim import build_optimizer

        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = build_optimizer(self.method.config.optimizer, groups, self.lr)
        # the schedule's length: ``planned_steps`` where the run knows it (one process), so that building the
        # optimizer does not make Lightning load the training data before a resumed run's loop state is back
        total = max(1, int(self.planned_steps or self.trainer.estimated_stepping_batches))
        sched = get_linear_schedule_with_warmup(opt, min(self.warmup_steps, total // 2), total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- checkpoints hold only what training changes ------------------------------------------
    def trainable_state_names(self) -> set[str]:
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        for prefix in self.method.extra_state_prefixes():
            names |= {n for n, _ in self.named_buffers() if n.startswith(f"method.{prefix}")}
        return names

    def on_save_checkpoint(self, checkpoint):
        keep = self.trainable_state_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        # what a resumed run needs beyond Lightning's own state: the random streams where they are now (the
        # next dropout mask), the validation history and the training time so far
        import random

        import numpy as np

        elapsed = time.perf_counter() - self._train_began if self._train_began is not None else 0.0
        kind, keys, pos, has_gauss, gauss = np.random.get_state()  # as tensors and numbers: loadable weights-only
        checkpoint["metl"] = {"torch_rng": torch.get_rng_state(),
                              "numpy_rng": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                                            float(gauss)],
                              "python_rng": random.getstate(), "val_curve": list(self.val_curve),
                              "best_val": self.best_val, "train_seconds": elapsed}

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("metl")
        if state is None or self._trainer is None or self.trainer.state.fn != "fit":
            return  # testing the best checkpoint: only its weights matter, the run's history is this one's
        import random

        import numpy as np

        torch.set_rng_state(state["torch_rng"])
        kind, keys, pos, has_gauss, gauss = state["numpy_rng"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state["python_rng"])
        self.val_curve, self.best_val = list(state["val_curve"]), state["best_val"]
        self._resumed_seconds = float(state["train_seconds"])
