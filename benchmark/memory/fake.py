"""The generic fake-tensor runtime of a memory prediction: training steps under PyTorch's
``FakeTensorMode`` (shapes, dtypes and storage sizes; no data, no arithmetic).

It knows no method. A method whose steps read data answers them through its ``FakeHints``
(``Method.fake_tensor_hints``, methods/base.py); any other op whose result depends on values fails its
row with a one-line ``FakeUnsupported`` reason.
"""
from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
_HERE = os.sep + os.path.join("benchmark", "memory") + os.sep


# ---------------------------------------------------------------------------------------------------
# ops whose result depends on values
# ---------------------------------------------------------------------------------------------------
class FakeUnsupported(RuntimeError):
    """An op a fake run cannot answer (its output depends on values, or it has no fake kernel)."""


def _where() -> str:
    """The innermost caller outside torch and this package, as ``path:line in function``."""
    skip = (os.sep + "torch" + os.sep, _HERE, "contextlib.py")
    for fr in reversed(traceback.extract_stack()[:-1]):
        if not any(s in fr.filename for s in skip):
            path = fr.filename
            for root in (str(REPO_ROOT) + os.sep, os.sep + "site-packages" + os.sep):
                if root in path:
                    path = path.split(root, 1)[1]
            return f"{path}:{fr.lineno} in {fr.name}"
    return "?"


def _scalar_allowed(allowed: dict) -> str | None:
    """Why the running code may read a placeholder scalar (a caller's code object is in ``allowed``)."""
    f = sys._getframe()
    while f is not None:
        if f.f_code in allowed:
            return allowed[f.f_code]
        f = f.f_back
    return None


def data_dependent_policy(hints=None):
    """The dispatch mode that sits between ``FakeTensorMode`` and the tracker, answering what ``hints``
    (a method's ``FakeHints``; none by default) allow."""
    from torch._subclasses.fake_tensor import (DataDependentOutputException, DynamicOutputShapeException,
                                               UnsupportedOperatorException)
    from torch.utils._python_dispatch import TorchDispatchMode
    import torch

    from methods.base import FakeHints

    hints = hints or FakeHints()
    aten = torch.ops.aten

    class Policy(TorchDispatchMode):
        """Answers balanced dispatch and allowed scalars, turns every other data-dependent op into a
        one-line ``FakeUnsupported``."""

        def __init__(self):
            super().__init__()
            self.router = None  # (module, groups) whose forward runs now
            self.group = 0
            self.notes: set[str] = set()

        def watch(self, module) -> None:
            """Hook the submodules whose dispatch ``hints.balanced_dispatch`` names."""
            for m, groups in (hints.balanced_dispatch(module) if hints.balanced_dispatch else []):
                m.register_forward_pre_hook(lambda mod, args, n=groups: self._enter(mod, n))
                m.register_forward_hook(self._leave, always_call=True)

        def _enter(self, module, groups):
            self.router, self.group = (module, groups), 0

        def _leave(self, module, args, out):
            self.router = None

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is aten.nonzero.default and self.router is not None:
                # e.g. an MoE's ``(idx == e).nonzero()``: the rows routed to group e, balanced over groups
                routed, n, e = args[0].numel(), self.router[1], self.group
                self.group += 1
                self.notes.add(hints.dispatch_note)
                rows = routed // n + (1 if e % n < routed % n else 0)
                return torch.empty((rows, args[0].dim()), dtype=torch.long, device=args[0].device)
            try:
                return func(*args, **kwargs)
            except DataDependentOutputException:
                if func is aten._local_scalar_dense.default:
                    why = _scalar_allowed(hints.placeholder_scalars)
                    if why is not None:
                        self.notes.add(f"placeholder scalar ({why})")
                        dt = args[0].dtype
                        return 1.0 if dt.is_floating_point else (True if dt == torch.bool else 1)
                raise FakeUnsupported(f"{func}: result depends on tensor values (at {_where()})") from None
            except DynamicOutputShapeException:
                raise FakeUnsupported(f"{func}: output shape depends on tensor values (at {_where()})") from None
            except UnsupportedOperatorException:
                raise FakeUnsupported(f"{func}: no fake-tensor kernel (at {_where()})") from None

    return Policy()


@contextmanager
def swappable_params(mode):
    """Two limits of fake modules in torch 2.13, worked around. ``Module.to`` swaps every fake parameter
    for a new one (``swap_tensors``), which refuses tensors with weak references, and the fake mode's
    memo of fresh meta -> fake tensors holds one to every fake ``Parameter`` (and its constant table one
    to a ``Parameter(torch.tensor(...))``): the two swapped tensors' entries (caches) are dropped first,
    so ``.to`` works (peft moves its adapters with it)."""
    import torch

    converter = mode.fake_tensor_converter
    memo = converter.meta_converter.tensor_memo
    swap = torch.utils.swap_tensors
    # ``copy.deepcopy`` of a fake tensor would deep-copy its mode (and that memo) along with it: the
    # copy must live in the same mode (LST's side norm, ISMoE's experts, torchmetrics copy tensors)
    mode.__deepcopy__ = lambda _memo: mode

    def swap_fake(t1, t2):
        pair = (t1, t2)
        for key, value in list(memo.items()):
            if any(value is t for t in pair):
                del memo[key]
        for refs in converter.constant_storage_mapping.values():  # a Parameter(torch.tensor(...))
            refs[:] = [r for r in refs if not any(r() is t for t in pair)]
        for t in pair:
            if getattr(t, "constant", None) is not None:
                t.constant = None  # its value is never read: a fake run reads no values
        return swap(t1, t2)

    torch.utils.swap_tensors = swap_fake
    try:
        yield
    finally:
        torch.utils.swap_tensors = swap


def _cuda_kernels():
    """The two kernel choices ATen makes by device that change what is saved for backward, made as for
    CUDA tensors: ``dropout`` runs fused (``native_dropout``: a bool mask, where CPU keeps a mask of the
    input's dtype), and ``scaled_dot_product_attention`` runs a fused kernel (the memory-efficient one,
    which takes fp32, masks and dropout: output and logsumexp are saved, not the [B, H, L, L] weights
    of CPU's math path). Flash / cuDNN, where CUDA may pick them for 16-bit inputs, save the same."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    dropouts = (F.dropout, torch.dropout)
    sdpa = F.scaled_dot_product_attention

    def dropout(input, p=0.5, training=True, inplace=False, train=None):  # F.dropout and torch.dropout
        training = training if train is None else train
        if inplace or not training or not 0 < p < 1 or input.numel() == 0:
            return None  # ATen's own path (in place dropout is not fused on CUDA either)
        return torch.native_dropout(input, p, True)[0]

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                  enable_gqa=False):
        if enable_gqa or query.dim() != 4 or query.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return None
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # CUDA turns it into an additive mask
            attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill_(~attn_mask, float("-inf"))
        if attn_mask is not None:
            attn_mask = attn_mask.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
        need_lse = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                   for t in (query, key, value, attn_mask))
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, attn_mask, need_lse, dropout_p, is_causal, scale=scale)[0]

    class CudaKernels(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in dropouts or func is sdpa:
                out = (attention if func is sdpa else dropout)(*args, **kwargs)
                if out is not None:
                    return out
            return func(*args, **kwargs)

    return CudaKernels()


@contextmanager
def target_choices(target: str, fake: bool):
    """Device-type choices made as on ``target`` while the fake ops run on CPU (see module docstring)."""
    if not fake or target != "cuda":
        yield
        return
    from benchmark.memory.autocast import cuda_policy

    with _cuda_kernels(), cuda_policy():  # the policy acts only inside torch.autocast (precision=bf16-mixed)
        yield


class SdpaKernels:
    """On a real run: which kernel ``scaled_dot_product_attention`` ran each time (ATen's own choice,
    ``torch._fused_sdp_choice``), counted, so a run on a GPU says what a prediction had to assume."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def mode(self):
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend
        from torch.overrides import TorchFunctionMode

        names = {int(v): k.lower() for k, v in SDPBackend.__members__.items()}
        counts, sdpa = self.counts, F.scaled_dot_product_attention

        class Count(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func is sdpa:
                    q, k, v, *rest = args
                    mask = rest[0] if rest else kwargs.get("attn_mask")
                    dropout = rest[1] if len(rest) > 1 else kwargs.get("dropout_p", 0.0)
                    causal = rest[2] if len(rest) > 2 else kwargs.get("is_causal", False)
                    choice = torch._fused_sdp_choice(q, k, v, mask, dropout, causal, scale=kwargs.get("scale"),
                                                     enable_gqa=kwargs.get("enable_gqa", False))
                    name = names.get(int(choice), str(choice))
                    counts[name] = counts.get(name, 0) + 1
                return func(*args, **kwargs)

        return Count()

    def summary(self) -> str:
        """``"efficient_attention x 36, math x 12"``; empty when no attention ran (or a fake run)."""
        return ", ".join(f"{k} x {n}" for k, n in sorted(self.counts.items()))

