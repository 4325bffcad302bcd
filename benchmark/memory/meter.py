"""``MemoryMeter``: the Lightning callback that measures a fit's peak training memory (CUDA's own
figures where there are some, the ``MemoryTracker`` of ``tracker.py`` everywhere) and its step time."""
from __future__ import annotations

import statistics
import time
import warnings

import torch

from benchmark.memory.tracker import CATEGORIES, MemoryTracker, batch_size_of, device_name

try:
    import lightning.pytorch as pl
    _Callback = pl.Callback
except ImportError:  # pragma: no cover - the tracker is usable without Lightning
    _Callback = object


def pl_module_device(trainer) -> torch.device:
    return trainer.strategy.root_device


class MemoryMeter(_Callback):
    """Peak *training* memory and time per step of a Lightning fit.

    CUDA: ``max_memory_allocated`` (primary) and ``max_memory_reserved``, peak stats reset at train start
    and after every validation, read before every validation. Every device (and as a cross-check on
    CUDA, counting CUDA storages only): a ``MemoryTracker`` running during training, paused during
    validation. ``track=False`` switches the tracker off (it slows each op) but keeps timing and CUDA
    stats. Step time: wall time of each training batch (hooks ``on_train_batch_start``/``_end``, CUDA
    synchronised), the first ``warmup_steps`` excluded; with the tracker on, it includes its overhead.
    """

    def __init__(self, track: bool = True, warmup_steps: int = 1):
        super().__init__()
        if warmup_steps < 0:
            raise ValueError("warmup_steps must be >= 0")
        self.track = track
        self.warmup_steps = warmup_steps
        self.tracker: MemoryTracker | None = None
        self._device: torch.device | None = None
        self._training = False
        self._in_val = False
        self._cuda_alloc: int | None = None
        self._cuda_reserved: int | None = None
        self._t0: float | None = None
        self._batches = 0
        self._step_s: list[float] = []
        self._rates: list[float] = []
        self._segments: list[dict] = []  # earlier segments of a resumed run (their peaks), up to its checkpoint

    # -- hooks -------------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._device = torch.device(pl_module.device)
        self._training, self._in_val = True, False
        self._ranks_peak = None
        self._batches, self._step_s, self._rates, self._t0 = 0, [], [], None
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self._device)
            self._cuda_alloc, self._cuda_reserved = 0, 0
        if self.track or not self._cuda:  # on CPU the tracker is the only memory figure there is
            self.tracker = MemoryTracker(pl_module, device="cuda" if self._cuda else None)
            for opt in trainer.optimizers or []:
                self.tracker.attach_optimizer(opt)
            self.tracker.start()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.tracker is not None and self.tracker.active:
            self.tracker.track(batch, category="other")  # the first batch was fetched before tracking
        if self._cuda:
            torch.cuda.synchronize(self._device)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._t0 is None:
            return
        if self._cuda:
            torch.cuda.synchronize(self._device)
        dt = time.perf_counter() - self._t0
        self._t0 = None
        self._batches += 1
        if self._batches > self.warmup_steps and dt > 0:
            self._step_s.append(dt)
            n = batch_size_of(batch)
            if n:
                self._rates.append(n / dt)

    def on_validation_start(self, trainer, pl_module) -> None:
        if not self._training or self._in_val:
            return
        self._in_val = True
        self._read_cuda()
        if self.tracker is not None:
            self.tracker.stop()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self._training or not self._in_val:
            return
        self._in_val = False
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self._device)
        if self.tracker is not None:
            self.tracker.start()

    def on_train_end(self, trainer, pl_module) -> None:
        self._finish()
        if getattr(trainer, "world_size", 1) > 1:
            self._take_largest_rank(trainer)

    def _take_largest_rank(self, trainer) -> None:
        """Several processes: every rank keeps the figures of the rank with the largest peak, so the
        record (written by rank 0) holds the largest peak over ranks. Every rank reaches here."""
        tracked = self.tracker is not None
        mine = [self._cuda_alloc or 0, self._cuda_reserved or 0, self.tracker.peak_bytes if tracked else 0,
                *((self.tracker.peak_breakdown.get(c) or 0) for c in CATEGORIES)] if tracked else \
            [self._cuda_alloc or 0, self._cuda_reserved or 0, 0, *(0 for _ in CATEGORIES)]
        rows = trainer.strategy.all_gather(torch.tensor(mine, dtype=torch.float64, device=pl_module_device(trainer)))
        rows = rows.reshape(trainer.world_size, -1).cpu()
        key = 0 if self._cuda else 2
        best = rows[int(rows[:, key].argmax())].tolist()
        self._cuda_alloc = int(rows[:, 0].max()) if self._cuda else None
        self._cuda_reserved = int(rows[:, 1].max()) if self._cuda else None
        self._ranks_peak = (int(best[2]), {c: int(v) for c, v in zip(CATEGORIES, best[3:])}) if tracked else None

    def on_exception(self, trainer, pl_module, exception) -> None:
        try:
            self._finish()
        except Exception as e:  # never mask the training error
            warnings.warn(f"MemoryMeter could not finish after an exception: {e}", RuntimeWarning, stacklevel=2)

    def teardown(self, trainer, pl_module, stage) -> None:
        if self._training:
            self._finish()

    # -- resume: the peaks of the segments a killed run trained before this one ----------------------
    def state_dict(self) -> dict:
        now = self.summary()
        return {"segments": self._segments + [{k: now[k] for k in ("peak_train_bytes", "tracker_peak_bytes",
                                                                      "memory_breakdown", "cuda_max_allocated",
                                                                      "cuda_max_reserved")}]}

    def load_state_dict(self, state: dict) -> None:
        self._segments = list(state.get("segments", []))

    # -- results -----------------------------------------------------------------------------------
    @property
    def _cuda(self) -> bool:
        return self._device is not None and self._device.type == "cuda"

    def _read_cuda(self) -> None:
        if self._cuda:
            self._cuda_alloc = max(self._cuda_alloc or 0, torch.cuda.max_memory_allocated(self._device))
            self._cuda_reserved = max(self._cuda_reserved or 0, torch.cuda.max_memory_reserved(self._device))

    def _finish(self) -> None:
        if not self._training:
            return
        if not self._in_val:
            self._read_cuda()
        self._training, self._in_val = False, False
        if self.tracker is not None:
            while self.tracker.active:
                self.tracker.stop()

    def summary(self) -> dict:
        """Integer bytes; ``memory_breakdown`` splits ``tracker_peak_bytes`` (not the CUDA figure)."""
        if self._training and not self._in_val:
            self._read_cuda()  # read while training still runs: include the current peak
        tracked = self.tracker is not None
        tracker_peak = self.tracker.peak_bytes if tracked else None
        breakdown = self.tracker.peak_breakdown if tracked else dict.fromkeys(CATEGORIES)
        if getattr(self, "_ranks_peak", None) is not None:  # several processes: the largest rank's figures
            tracker_peak, breakdown = self._ranks_peak
        if self._cuda:
            peak, source = self._cuda_alloc, "cuda_max_allocated"
        else:
            peak, source = tracker_peak, ("tracker" if tracked else None)
        for seg in self._segments:  # a resumed run: the largest peak over every segment it trained in
            if seg.get("peak_train_bytes") is not None and (peak is None or seg["peak_train_bytes"] > peak):
                peak, breakdown = seg["peak_train_bytes"], seg.get("memory_breakdown") or breakdown
                tracker_peak = seg.get("tracker_peak_bytes", tracker_peak)
        return {
            "peak_train_bytes": peak,
            "peak_source": source,
            "memory_breakdown": breakdown,
            "tracker_peak_bytes": tracker_peak,
            "cuda_max_allocated": self._cuda_alloc if self._cuda else None,
            "cuda_max_reserved": self._cuda_reserved if self._cuda else None,
            "step_seconds": statistics.median(self._step_s) if self._step_s else None,
            # the fastest step: least disturbed by other tenants of a shared machine, so the fairest
            # figure for comparing two rows measured minutes apart (the median drifts with the machine)
            "step_seconds_min": min(self._step_s) if self._step_s else None,
            "samples_per_second": statistics.median(self._rates) if self._rates else None,
            "steps_timed": len(self._step_s),
            "timing_includes_tracker": tracked,
            "device": device_name(self._device),
            "segments": len(self._segments) + 1,  # > 1: resumed after a kill, peak over all of them
        }
