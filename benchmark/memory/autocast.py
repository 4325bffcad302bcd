"""CUDA's autocast cast policy on CPU tensors, for ``target=cuda`` bf16 predictions.

A prediction runs fake CPU tensors (a fake CUDA device cannot run autograd on a CPU-only build), so
``torch.autocast`` applies CPU's op lists, and those keep softmax, layer norm, pow, sum, the losses ... in bf16
where CUDA's run them in fp32: bf16 predictions came out low. Inside ``cuda_policy()`` the CPU autocast kernels
of the ops on CUDA's "autocast to float32" list are replaced by kernels that do what CUDA's do: ops that take
an output dtype (softmax, log_softmax, sum, prod, cumsum, cumprod) get ``dtype=float32``, the others get their
floating inputs cast to float32. The lower-precision list (matmul, linear, bmm, addmm, baddbmm, conv, SDPA)
is the same on both devices. The lists are PyTorch's autocast reference ("CUDA Ops that can autocast to
float32"); the replacement lives only inside the context (a ``torch.library`` registration, removed on exit).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

# CUDA autocast's float32 list, as aten op names (torch 2.x, "Automatic Mixed Precision" reference)
TO_FLOAT32 = ("acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal",
              "rsqrt", "sinh", "tan", "pow", "softplus", "layer_norm", "native_layer_norm", "group_norm",
              "norm", "nuclear_norm", "frobenius_norm", "cosine_similarity", "poisson_nll_loss",
              "cosine_embedding_loss", "nll_loss", "nll_loss_nd", "nll_loss2d", "hinge_embedding_loss", "kl_div",
              "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss", "margin_ranking_loss",
              "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss", "multi_margin_loss",
              "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm", "logsumexp",
              "cross_entropy_loss")
# ... of which these take an output dtype: CUDA passes dtype=float32 rather than casting the input
OUTPUT_DTYPE = ("softmax", "log_softmax", "cumsum", "cumprod", "prod", "sum", "linalg_vector_norm",
                "linalg_matrix_norm")


def _is_low_float(x) -> bool:
    import torch

    return isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype in (torch.bfloat16, torch.float16)


def _kernel(op, output_dtype: bool):
    import torch
    from torch.utils._pytree import tree_map

    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)
    has_dtype = any(a.name == "dtype" for a in op._schema.arguments)

    def kernel(*args, **kwargs):
        with torch._C._ExcludeDispatchKeyGuard(keys):
            if output_dtype and has_dtype:
                if kwargs.get("dtype") is None and any(_is_low_float(a) for a in args):
                    kwargs = {**kwargs, "dtype": torch.float32}
                    names = [a.name for a in op._schema.arguments]
                    position = names.index("dtype")
                    if len(args) > position:  # given positionally (as None): replace it there
                        args = (*args[:position], torch.float32, *args[position + 1:])
                        kwargs.pop("dtype")
                return op(*args, **kwargs)
            cast = lambda x: x.float() if _is_low_float(x) else x  # noqa: E731
            return op(*tree_map(cast, args), **tree_map(cast, kwargs))

    return kernel


def _overloads(name: str):
    import torch

    packet = getattr(torch.ops.aten, name, None)
    if packet is None:
        return []
    out = []
    for overload in packet.overloads():
        if "out" in overload.split("_") or overload.endswith("out"):
            continue
        op = getattr(packet, overload)
        if any(a.alias_info is not None and a.alias_info.is_write for a in op._schema.arguments):
            continue  # in-place variants keep their tensor's dtype, on CUDA too
        out.append((f"{name}.{overload}" if overload != "default" else name, op))
    return out


@contextmanager
def cuda_policy():
    """Inside: CPU autocast casts as CUDA autocast does (module docstring)."""
    import torch

    lib = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "overriding a previously registered kernel": on purpose
            for names, output_dtype in ((TO_FLOAT32, False), (OUTPUT_DTYPE, True)):
                for name in names:
                    for qualified, op in _overloads(name):
                        lib.impl(qualified, _kernel(op, output_dtype), "AutocastCPU")
        yield
    finally:
        lib._destroy()
