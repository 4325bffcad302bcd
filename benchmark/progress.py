"""Progress when output is not a terminal (CI, ``| tee``, ``nohup``, make paper's logs): Lightning's bar
redraws one line with carriage returns, which a log file turns into one unreadable line. This prints a plain
line every few steps instead: step, loss, rate and the time left."""
from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import ProgressBar


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class LineProgress(ProgressBar):
    """A line every ``every`` optimizer steps (default: a tenth of the run, at most 50 steps apart), and
    one after each validation."""

    def __init__(self, every: int = 0, stream=None):
        super().__init__()
        self.every = every
        self.stream = stream or sys.stdout
        self._enabled = True
        self._t0 = None
        self._step0 = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _total(self, trainer) -> int:
        return max(1, int(trainer.estimated_stepping_batches))

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0, self._step0 = time.perf_counter(), trainer.global_step
        if not self.every:
            self.every = max(1, min(50, self._total(trainer) // 10))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self._enabled or trainer.sanity_checking or step % self.every:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self._print(trainer, step, f"loss {float(loss):.4f}" if loss is not None else "")

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        score = trainer.callback_metrics.get("val/score")
        self._print(trainer, trainer.global_step, f"val/score {float(score):.4f}" if score is not None else "validated")

    def _print(self, trainer, step: int, what: str) -> None:
        total = self._total(trainer)
        spent = time.perf_counter() - (self._t0 or time.perf_counter())
        rate = (step - self._step0) / spent if spent > 0 else 0.0
        left = (total - step) / rate if rate > 0 else float("nan")
        parts = [f"step {step}/{total}", what, f"{rate:.2f} steps/s" if rate else "",
                 f"~{_clock(left)} left" if left == left else ""]
        print(" · ".join(p for p in parts if p), file=self.stream, flush=True)
