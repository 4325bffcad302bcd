"""QLoRA (Dettmers et al., 2023) through bitsandbytes and peft, nothing re-implemented: every backbone linear
becomes a frozen 4-bit NF4 ``bitsandbytes.nn.Linear4bit`` with double quantization (the quantization
constants quantized again, 8-bit, blocks of 256), peft's ``prepare_model_for_kbit_training`` prepares the
model, and LoRA is injected exactly as ``lora`` does (r 32 on query/value), so the two rows differ only in
the backbone's storage.

Kept in full precision, as in QLoRA and transformers' bitsandbytes integration: embedding tables, layer
norms, biases, the LM head, any linear that shares its weight with an embedding (T5's tied LM head), and
the model class's ``_keep_in_fp32_modules`` (T5's ``wo``). The compute dtype follows the run's precision (fp32 under ``32-true``; under ``bf16-mixed`` autocast
casts the dequantized weight as it does any matmul), where QLoRA's paper used bf16 on a GPU.

Runs on CPU and CUDA: bitsandbytes >= 0.46 quantizes and multiplies 4-bit on CPU (>= 0.50 for its 8-bit
optimizers, which this suite also uses); imported through ``benchmark.bnb`` (no hub kernels).
"""
from __future__ import annotations

import types
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from methods.lora.method import LoRA, LoraMethodConfig


@dataclass
class QLoraMethodConfig(LoraMethodConfig):
    quant_type: str = "nf4"  # QLoRA's NormalFloat4 (fp4: bitsandbytes' other 4-bit code, not a paper row)
    double_quant: bool = True  # QLoRA's double quantization of the per-block absmax
    blocksize: int = 64  # QLoRA's block of 64 weights per absmax

    def __post_init__(self):
        super().__post_init__()
        self.check(self.quant_type in ("nf4", "fp4"), "quant_type", "must be nf4 or fp4")
        self.check(self.blocksize in (32, 64, 128, 256, 512, 1024, 2048, 4096), "blocksize",
                   "must be a power of two in [32, 4096] (bitsandbytes' block sizes)")


def kept_in_full_precision(model: nn.Module, name: str, lin: nn.Linear, tables: set[int]) -> bool:
    """The linears QLoRA leaves unquantized, by transformers' rules for bitsandbytes (its
    ``get_modules_to_not_convert``): the LM head, any linear whose weight is an embedding's (tied), and the
    modules the model class keeps in fp32 (``_keep_in_fp32_modules``: T5's ``wo``, whose forward casts its
    input to the weight's dtype and would cast to uint8). ``tables``: ids of the model's embedding weights."""
    parts = name.split(".")
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ()) | {"lm_head"}
    return bool(keep & set(parts)) or id(lin.weight) in tables


def _real_tensors():
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    return unset_fake_temporarily()


class QLoRA(LoRA):
    config_class = QLoraMethodConfig
    paper_alternatives = ()  # itself the memory alternative (make paper runs it at the fixed budgets)

    def __init__(self, backbone, config: QLoraMethodConfig):
        from benchmark.bnb import import_bitsandbytes

        import_bitsandbytes()  # before peft imports it (benchmark/bnb.py)
        from peft import prepare_model_for_kbit_training

        self.quantized = quantize_linears(backbone, config)
        model = backbone.model
        model.is_loaded_in_4bit = True  # what peft (and transformers) read to know the model is k-bit
        # freezes everything and casts any fp16/bf16 weight to fp32; our backbone interface does its own
        # checkpointing (``checkpointing=true``), so peft's is not switched on here
        prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        super().__init__(backbone, config)

    @classmethod
    def fake_tensor_hints(cls):
        from benchmark.bnb import import_bitsandbytes

        from methods.base import FakeHints

        return FakeHints(build_contexts=(shape_only,),  # the nested absmax's 8-bit code book reads values
                         placeholder_scalars={import_bitsandbytes().functional.create_dynamic_map.__code__:
                                              "8-bit code book of the double quantization"})

    def quant_state_tensors(self) -> list[torch.Tensor]:
        """The NF4 weights' quantization constants (absmax, nested absmax, code book): stored beside each
        packed weight, neither a parameter nor a buffer."""
        out = []
        for lin in self.quantized:
            qs = lin.quant_state  # the weight's own (bitsandbytes keeps it on both)
            out += [qs.absmax, qs.code]
            if qs.nested:
                out += [qs.state2.absmax, qs.state2.code]
        return out

    def extra_weight_tensors(self) -> list[torch.Tensor]:
        return super().extra_weight_tensors() + self.quant_state_tensors()


_SHAPE_ONLY = [False]


@contextmanager
def shape_only():
    """For the memory predictor (fake tensors): build each NF4 weight as a plain frozen uint8 parameter of the
    packed shape that carries bitsandbytes' ``quant_state`` (absmax, nested absmax, code book; from
    ``quantize_4bit``'s fake kernel), since ``Params4bit`` cannot wrap a fake tensor. The forward, backward and
    every stored byte are bitsandbytes' own; only the weight's Python class differs."""
    from benchmark.bnb import import_bitsandbytes

    books = import_bitsandbytes().functional.name2qmap  # code books bitsandbytes caches for the whole process
    kept = dict(books)
    books.clear()  # built fake within, real outside
    _SHAPE_ONLY[0] = True
    try:
        yield
    finally:
        _SHAPE_ONLY[0] = False
        books.clear()
        books.update(kept)


def _reattach(lin: nn.Module, args) -> None:
    """The attributes ``Params4bit`` would carry, (re)attached to a shape-only weight."""
    for k, v in lin.fake_weight_attrs.items():
        setattr(lin.weight, k, v)


def _logical_numel(lin: nn.Module) -> int:
    return lin.quant_state.shape.numel() + (lin.bias.numel() if lin.bias is not None else 0)


def quantize_linears(backbone, config: QLoraMethodConfig) -> list[nn.Module]:
    """Every backbone linear (but those ``kept_in_full_precision``) -> a frozen ``Linear4bit``, in place."""
    from benchmark.bnb import import_bitsandbytes

    bnb = import_bitsandbytes()
    model = backbone.model
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    out = []
    for name, lin in list(backbone.linear_modules().items()):
        if kept_in_full_precision(model, name, lin, tables):
            continue
        with _real_tensors() if _SHAPE_ONLY[0] else nullcontext():  # Params4bit cannot wrap a fake tensor
            q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                  compute_dtype=lin.weight.dtype, compress_statistics=config.double_quant,
                                  quant_type=config.quant_type, quant_storage=torch.uint8, device="meta")
        if _SHAPE_ONLY[0]:
            packed, state = bnb.functional.quantize_4bit(lin.weight.data, blocksize=config.blocksize,
                                                         compress_statistics=config.double_quant,
                                                         quant_type=config.quant_type)
            q.weight, q.quant_state = nn.Parameter(packed, requires_grad=False), state
            q.fake_weight_attrs = dict(quant_state=state, blocksize=config.blocksize, quant_type=config.quant_type,
                                       compress_statistics=config.double_quant, quant_storage=torch.uint8,
                                       bnb_quantized=True)
            _reattach(q, ())
            q.register_forward_pre_hook(_reattach)  # ``Module.to`` swaps fake parameters, attributes and all
        else:
            q.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, blocksize=config.blocksize,
                                         compress_statistics=config.double_quant, quant_type=config.quant_type,
                                         module=q)
        if lin.bias is not None:
            q.bias = nn.Parameter(lin.bias.data, requires_grad=False)
        if not _SHAPE_ONLY[0]:
            q.weight = q.weight.to(lin.weight.device)  # Params4bit quantizes when it first reaches a device
        # bitsandbytes repacks a weight for its bf16 gemv kernel the first time a CPU with native bf16 runs the
        # layer in eval: eval scores would then depend on CPU flags (and on bf16 rounding) and
        # training would resume on the repacked weight. The plain dequantize + matmul runs on every CPU.
        q.support_avx512bf16_for_cpu = False
        # parameter counts count weights, not bytes (two NF4 weights per stored uint8): the protocol of
        # ``methods.base.logical_parameter_count`` for packed modules
        q.logical_numel = types.MethodType(_logical_numel, q)
        model.set_submodule(name, q)
        out.append(q)
    return out


