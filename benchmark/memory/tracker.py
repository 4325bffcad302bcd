"""Peak training memory: a device-independent tracker of live tensor storage (the Lightning callback
that uses it is ``meter.py``).

Why our own tracker and not ``torch.distributed._tools.mem_tracker.MemTracker`` (torch 2.13): under
Lightning the forward and backward run *inside* ``optimizer.step(closure)``, and MemTracker labels
everything created inside a step as optimizer state (a 3-layer MLP: activations 0, "optimizer" twice
the real AdamW state); it raises on the second forward of the root module unless its stats are reset
every step; it forgets its peak when re-entered (we pause during validation); and it costs ~300 us per
op against ~25 us here (it walks every module's stats on every op). This tracker keeps its idea (a
``TorchDispatchMode`` that sees every op's outputs, a weakref per storage to see it freed) with a
categorisation that fits a training loop, and works under ``FakeTensorMode`` as well.

Counting rules: every storage once (views share it), real bytes (``untyped_storage().nbytes()``),
tensors that exist on entry counted when they are parameters, buffers, a module's ``extra_weight_tensors()``
(a quantized weight's constants kept as plain attributes), gradients or optimizer state (anything else only
once an op returns it, or when passed to ``track``). Categories:

- ``weights``: parameters and buffers of the module (and the optimizer's parameters);
- ``grads``: ``.grad`` of parameters (re-labelled by a post-accumulate-grad hook);
- ``optimizer``: tensors in ``optimizer.state`` (state created during ``step`` is re-labelled after it,
  also inside the recorded peak);
- ``activations``: created outside backward and outside the optimizer update, inside a module's
  forward or requiring grad (what forward produced and is alive: saved for backward, outputs, loss);
- ``other``: everything else (inputs, backward temporaries, optimizer-update temporaries, ...).

The breakdown of the peak sums exactly to the peak.
"""
from __future__ import annotations

import platform
import warnings
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_leaves

CATEGORIES = ("weights", "grads", "optimizer", "activations", "other")
WEIGHTS, GRADS, OPTIMIZER, ACTIVATIONS, OTHER = range(5)
_CAT_INDEX = {name: i for i, name in enumerate(CATEGORIES)}
_current_autograd_node = torch._C._current_autograd_node
_PLAIN = (torch.Tensor, torch.nn.Parameter)


class _Storage(weakref.ref):
    """Weak reference to one tracked storage, carrying its bytes and category; its callback frees it."""

    __slots__ = ("key", "nbytes", "cat", "born", "provisional")


class _Mode(TorchDispatchMode):
    def __init__(self, tracker: "MemoryTracker"):
        super().__init__()
        self.tracker = tracker

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.tracker._on_outputs(out, args)
        return out


class MemoryTracker:
    """Live tensor storage during training, its peak and the peak's breakdown (see module docstring).

    ``with tracker: ...`` tracks; leaving pauses (the peak is kept), entering again resumes. ``device``
    restricts counting to one device type (e.g. ``"cuda"``, to compare with ``max_memory_allocated``);
    by default every device counts. Works on fake tensors too (entered inside a ``FakeTensorMode``).
    """

    def __init__(self, module: torch.nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                 device: str | torch.device | None = None):
        self.module = module
        self.optimizers: list[torch.optim.Optimizer] = []
        self.device_type = torch.device(device).type if device is not None else None
        self._recs: dict[int, _Storage] = {}
        self._live = [0] * 5
        self._total = 0
        self._peak = 0
        self._peak_bd = [0] * 5
        self._adds = 0  # storages added so far; a live storage added before the peak was alive at it
        self._peak_adds = 0
        self._depth = 0
        self._mode: _Mode | None = None
        self._handles: list[Any] = []
        self._fwd_depth = 0
        self._in_update = False  # inside optimizer.step, outside its closure
        # called with (storage key, +bytes) when a storage is counted, (key, -bytes) when it is freed: e.g. a
        # model of CUDA's caching allocator (caching.py) replaying a prediction's allocations
        self.listener = None
        if optimizer is not None:
            self.attach_optimizer(optimizer)

    # -- public API --------------------------------------------------------------------------------
    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Count ``optimizer``'s state (and parameters) from now on; optimizers that step while tracking
        are attached automatically."""
        if not any(o is optimizer for o in self.optimizers):
            self.optimizers.append(optimizer)
        if self._depth:
            self._scan_optimizer(optimizer)
            self._update_peak()

    def track(self, *objs: Any, category: str = "other") -> None:
        """Count tensors created outside tracking (nested containers allowed) under ``category``."""
        cat = _CAT_INDEX[category]
        for t in tree_leaves(objs):
            if isinstance(t, torch.Tensor):
                self._add(t, cat, force=True)
        self._update_peak()

    @property
    def peak_bytes(self) -> int:
        return self._peak

    @property
    def peak_breakdown(self) -> dict[str, int]:
        return dict(zip(CATEGORIES, self._peak_bd))

    @property
    def current_bytes(self) -> int:
        return self._total

    @property
    def current_breakdown(self) -> dict[str, int]:
        return dict(zip(CATEGORIES, self._live))

    @property
    def active(self) -> bool:
        return self._depth > 0

    def reset_peak(self) -> None:
        self._peak = self._total
        self._peak_bd = list(self._live)
        self._peak_adds = self._adds

    def start(self) -> "MemoryTracker":
        return self.__enter__()

    def stop(self) -> None:
        self.__exit__(None, None, None)

    def __enter__(self) -> "MemoryTracker":
        self._depth += 1
        if self._depth > 1:
            return self
        self._fwd_depth = 0
        self._in_update = False
        try:
            self._scan_existing()
            self._install_hooks()
            self._mode = _Mode(self)
            self._mode.__enter__()
        except BaseException:
            self._remove_hooks()
            self._depth = 0
            raise
        self._update_peak()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        mode, self._mode = self._mode, None
        self._remove_hooks()
        self._in_update = False
        if mode is not None:
            if _get_current_dispatch_mode() is mode:
                mode.__exit__(None, None, None)
            else:  # someone entered a mode after us and has not left: do not pop theirs
                mode.tracker = _NullTracker()
                warnings.warn("MemoryTracker stopped while another dispatch mode was on top of it; "
                              "it stays on the mode stack as a pass-through", RuntimeWarning, stacklevel=2)

    # -- bookkeeping -------------------------------------------------------------------------------
    def _scan_existing(self) -> None:
        params: list[torch.Tensor] = []
        if self.module is not None:
            params.extend(self.module.parameters())
            for b in self.module.buffers():
                self._add(b, WEIGHTS, force=True)
            for m in self.module.modules():  # stored tensors a module keeps outside parameters and buffers
                extra = getattr(m, "extra_weight_tensors", None)
                for t in extra() if callable(extra) else ():
                    self._add(t, WEIGHTS, force=True)
        for opt in self.optimizers:
            for group in opt.param_groups:
                params.extend(group["params"])
        for p in params:
            self._add(p, WEIGHTS, force=True)
            if p.grad is not None:
                self._add(p.grad, GRADS, force=True)
        for opt in self.optimizers:
            self._scan_optimizer(opt)

    def _scan_optimizer(self, opt: torch.optim.Optimizer) -> None:
        for state in opt.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    self._add(v, OPTIMIZER, force=True)

    def _install_hooks(self) -> None:
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self._handles = [
            register_module_forward_pre_hook(self._fwd_pre),
            register_module_forward_hook(self._fwd_post, always_call=True),
            register_optimizer_step_pre_hook(self._step_pre),
            register_optimizer_step_post_hook(self._step_post),
        ]
        params = list(self.module.parameters()) if self.module is not None else []
        for opt in self.optimizers:
            for group in opt.param_groups:
                params.extend(group["params"])
        seen: set[int] = set()
        for p in params:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                self._handles.append(p.register_post_accumulate_grad_hook(self._grad_ready))

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _fwd_pre(self, module, args) -> None:
        self._fwd_depth += 1

    def _fwd_post(self, module, args, output) -> None:
        self._fwd_depth = max(0, self._fwd_depth - 1)

    def _grad_ready(self, p: torch.Tensor) -> None:
        if p.grad is not None:
            self._add(p.grad, GRADS, force=True)
            self._update_peak()

    def _step_pre(self, opt, args, kwargs):
        if not any(o is opt for o in self.optimizers):
            self.optimizers.append(opt)
            self._scan_optimizer(opt)
        self._in_update = True
        closure = kwargs.get("closure")
        positional = closure is None and len(args) > 1 and callable(args[1])
        if positional:
            closure = args[1]
        if closure is None:
            return None

        def tracked_closure(*a, **k):  # forward/backward run inside step under Lightning
            self._in_update = False
            result = closure(*a, **k)  # if it raises, so does step: stay out of the update phase
            self._in_update = True
            return result

        if positional:
            return (args[0], tracked_closure, *args[2:]), kwargs
        return args, {**kwargs, "closure": tracked_closure}

    def _step_post(self, opt, args, kwargs) -> None:
        self._scan_optimizer(opt)  # state created by this step becomes "optimizer", in the peak too
        self._in_update = False

    def _on_outputs(self, out: Any, args: Any) -> None:
        if isinstance(out, torch.Tensor):
            self._add(out, None, args=args)
        elif isinstance(out, (tuple, list)):
            for o in out:
                if isinstance(o, torch.Tensor):
                    self._add(o, None, args=args)
                elif isinstance(o, (tuple, list)):
                    self._on_outputs(o, args)
        else:
            return
        if self._total > self._peak:
            self._update_peak()

    def _category_now(self, args: Any) -> int:
        if self._in_update or _current_autograd_node() is not None:
            return OTHER
        if self._fwd_depth > 0:
            return ACTIVATIONS
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad
                                           for a in tree_leaves(args)):
            return ACTIVATIONS
        return OTHER

    def _add(self, t: torch.Tensor, cat: int | None, force: bool = False, args: Any = ()) -> None:
        if type(t) not in _PLAIN and is_traceable_wrapper_subclass(t):
            inner_names, _ = t.__tensor_flatten__()
            for name in inner_names:
                inner = getattr(t, name)
                if isinstance(inner, torch.Tensor):
                    self._add(inner, cat, force, args)
            return
        if self.device_type is not None and t.device.type != self.device_type:
            return
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError, TypeError):  # sparse, nested ...: no plain storage
            return
        key = id(st)
        rec = self._recs.get(key)
        if rec is not None:
            n = st.nbytes()
            if n != rec.nbytes:  # resized in place
                self._live[rec.cat] += n - rec.nbytes
                self._total += n - rec.nbytes
                rec.nbytes = n
                if self.listener is not None:
                    self.listener(key, n)
            if force and cat is not None and rec.cat != cat:
                self._live[rec.cat] -= rec.nbytes
                self._live[cat] += rec.nbytes
                if rec.provisional and rec.born <= self._peak_adds:
                    # a backward/update temporary that turned out to be a gradient or optimizer state
                    # was alive at the peak: give the peak its final category as well
                    self._peak_bd[rec.cat] -= rec.nbytes
                    self._peak_bd[cat] += rec.nbytes
                rec.provisional = False
                rec.cat = cat
            return
        n = st.nbytes()
        if n == 0:
            return
        provisional = False
        if cat is None:
            cat = self._category_now(args)
            provisional = cat == OTHER and (self._in_update or _current_autograd_node() is not None)
        rec = _Storage(st, self._freed)
        self._adds += 1
        rec.key, rec.nbytes, rec.cat, rec.born, rec.provisional = key, n, cat, self._adds, provisional
        self._recs[key] = rec
        self._live[cat] += n
        self._total += n
        if self.listener is not None:
            self.listener(key, n)

    def _freed(self, rec: _Storage) -> None:
        # weakref callback: may run at any point, so only a few integer updates
        if self._recs.get(rec.key) is rec:
            del self._recs[rec.key]
        self._live[rec.cat] -= rec.nbytes
        self._total -= rec.nbytes
        if self.listener is not None:
            self.listener(rec.key, -rec.nbytes)

    def _update_peak(self) -> None:
        if self._total > self._peak:
            self._peak = self._total
            self._peak_bd = list(self._live)
            self._peak_adds = self._adds


class _NullTracker:
    def _on_outputs(self, out: Any, args: Any) -> None:
        pass


# ---------------------------------------------------------------------------------------------------
def batch_size_of(batch: Any) -> int | None:
    """Samples in a batch: length of ``input_ids`` if the batch is a mapping with it, else of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, Mapping):
        ids = batch.get("input_ids")
        if isinstance(ids, torch.Tensor):
            return batch_size_of(ids)
        items = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        items = list(batch)
    else:
        return None
    for v in items:
        n = batch_size_of(v)
        if n is not None:
            return n
    return None


def device_name(device: torch.device | str | None = None) -> str:
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return "cpu: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu: " + (platform.processor() or platform.machine() or "unknown")

