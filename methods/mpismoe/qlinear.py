"""``QuantLinear``: a frozen nn.Linear stored as packed n-bit codes (GNP-IQ or RTN) and dequantized on
the fly before each matmul, so the backbone's resident bytes really shrink. ``QuantEmbedding``: the
same for an nn.Embedding table, dequantizing only the rows a batch looks up (MiniLM's 30522 x 384 word
table: 46.9 MB fp32, 12.5 MB at 8 bits, 6.6 MB at 4 bits, group 64).

- Codes, scales and zeros are buffers (moved by ``.to()``, saved in ``state_dict``, never trained).
  The bias stays fp32 as a frozen ``nn.Parameter``, so bias-tuning methods can still unfreeze it.
- Nothing dequantized is cached between forwards. When the input needs a gradient, a custom autograd
  function saves the packed tensors (not the fp32 weight) and dequantizes again in backward.
- Under autocast the weight is dequantized straight into the autocast dtype.
- ``weight`` is a read-only property giving the dequantized weight on demand (HF T5 reads
  ``wo.weight.dtype`` in its forward); the forward itself never goes through it.

``TiedQuantLinear``: a linear whose weight is a ``QuantEmbedding``'s table (T5's LM head, tied to
``shared``), so a tied table is quantized, stored and counted once.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.memory.storage import unique_storage_bytes
from methods.mpismoe.quant import DEFAULT_GROUP_SIZE, QuantizedTensor, dequantize_packed, quantize



def frozen_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A frozen fp32 ``nn.Linear`` holding ``weight`` [out, in] (and ``bias``) on the weight's device."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin.requires_grad_(False)

class _DequantLinear(torch.autograd.Function):
    """y = x W_d^T with W_d recomputed in backward instead of being saved (codes only are saved)."""

    @staticmethod
    def forward(ctx, x, packed, scales, zeros, meta):
        bits, shape, group_size = meta
        w = dequantize_packed(packed, scales, zeros, bits, shape, group_size, x.dtype)
        ctx.save_for_backward(packed, scales, zeros)
        ctx.meta = meta
        return F.linear(x, w)

    @staticmethod
    def backward(ctx, grad_out):
        packed, scales, zeros = ctx.saved_tensors
        bits, shape, group_size = ctx.meta
        grad_x = None
        if ctx.needs_input_grad[0]:
            w = dequantize_packed(packed, scales, zeros, bits, shape, group_size, grad_out.dtype)
            grad_x = grad_out.matmul(w)
        return grad_x, None, None, None, None


class QuantLinear(nn.Module):
    """Drop-in, frozen replacement for ``nn.Linear`` with an n-bit packed weight."""

    def __init__(self, qt: QuantizedTensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = qt.shape
        self.bits, self.group_size, self.method = qt.bits, qt.group_size, qt.method
        self.register_buffer("packed", qt.packed)
        self.register_buffer("scales", qt.scales)
        self.register_buffer("zeros", qt.zeros)
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, group_size: int = DEFAULT_GROUP_SIZE,
                    method: str = "gnpiq", **kwargs) -> "QuantLinear":
        """Quantize ``linear.weight`` with ``method`` (gnpiq | rtn); ``kwargs`` go to the quantizer."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"QuantLinear.from_linear needs an nn.Linear, got {type(linear).__name__}")
        with torch.no_grad():
            qt = quantize(linear.weight.detach(), bits, group_size, method=method, **kwargs)
        return cls(qt, linear.bias)

    # --- the stored weight ------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    def quantized(self) -> QuantizedTensor:
        return QuantizedTensor(self.packed, self.scales, self.zeros, self.shape, self.bits, self.group_size,
                               self.method)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_packed(self.packed, self.scales, self.zeros, self.bits, self.shape, self.group_size, dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight, computed on each access (not cached, not trainable)."""
        return self.dequantize()

    def to_float(self) -> nn.Linear:
        """A frozen fp32 ``nn.Linear`` holding the dequantized weight (a temporary stand-in, e.g. for
        code that needs real parameters such as LST's Fisher pruning)."""
        return frozen_linear(self.dequantize(), self.bias)

    def logical_numel(self) -> int:
        """Weights (and bias) this layer stands for, as if it were an nn.Linear."""
        return self.out_features * self.in_features + (self.bias.numel() if self.bias is not None else 0)

    def storage_bytes(self) -> int:
        """Real bytes of codes, scales, zeros and bias, read from their storages."""
        return unique_storage_bytes([self.packed, self.scales, self.zeros, self.bias])

    # --- running ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device.type
        if torch.is_autocast_enabled(dev):
            dtype = torch.get_autocast_dtype(dev)
            x = x.to(dtype)
        else:
            dtype = x.dtype if x.is_floating_point() else torch.float32
        bias = None if self.bias is None else self.bias.to(dtype)
        if torch.is_grad_enabled() and x.requires_grad:
            out = _DequantLinear.apply(x, self.packed, self.scales, self.zeros,
                                       (self.bits, self.shape, self.group_size))
            return out if bias is None else out + bias
        return F.linear(x.to(dtype), self.dequantize(dtype), bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, method={self.method}, bias={self.bias is not None}")


def _is_layer_norm(m: nn.Module) -> bool:
    return isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("LayerNorm")


def quantize_linears(model: nn.Module, names: list[str], bits: int = 8, group_size: int = DEFAULT_GROUP_SIZE,
                     method: str = "gnpiq", **kwargs) -> dict:
    """Replace the named ``nn.Linear`` submodules of ``model`` by ``QuantLinear`` in place.

    Named LayerNorms are skipped (they stay full precision, as in the paper); any other non-Linear
    name, or a name that does not exist, is an error. Returns statistics: layers replaced, skipped
    names, logical weights, bytes before (fp32 weight + bias) and after (codes + scales + zeros +
    bias), their ratio, the numel-weighted MSE (total squared error / total weights), per-layer
    MSE and bytes, and the seconds spent."""
    t0 = time.perf_counter()
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(f"no submodule named {unknown[0]!r} in {type(model).__name__}")
    stats = {"method": method, "bits": bits, "group_size": group_size, "replaced": [], "skipped": [],
             "weights": 0, "bytes_before": 0, "bytes_after": 0, "per_layer": {}}
    sq_err = 0.0
    for name in names:
        mod = modules[name]
        if _is_layer_norm(mod) or isinstance(mod, QuantLinear):
            stats["skipped"].append(name)
            continue
        if not isinstance(mod, nn.Linear):
            raise ValueError(f"{name!r} is a {type(mod).__name__}, not an nn.Linear; only linears are quantized")
        q = QuantLinear.from_linear(mod, bits, group_size, method=method, **kwargs)
        with torch.no_grad():
            err = float((mod.weight.detach().float() - q.dequantize()).square().sum())
        before = unique_storage_bytes([mod.weight, mod.bias])
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, q)
        modules[name] = q
        numel = mod.weight.numel()
        sq_err += err
        stats["replaced"].append(name)
        stats["weights"] += numel
        stats["bytes_before"] += before
        stats["bytes_after"] += q.storage_bytes()
        stats["per_layer"][name] = {"mse": err / numel, "bytes": q.storage_bytes(), "bytes_before": before}
    stats["mse"] = sq_err / stats["weights"] if stats["weights"] else 0.0
    stats["ratio"] = stats["bytes_after"] / stats["bytes_before"] if stats["bytes_before"] else 1.0
    stats["seconds"] = time.perf_counter() - t0
    return stats


class QuantEmbedding(nn.Module):
    """Drop-in, frozen replacement for ``nn.Embedding`` whose table is stored as packed n-bit codes plus
    per-group fp16 scales and zeros (GNP-IQ by default), one row per token.

    The forward dequantizes only the looked-up rows: the packed codes are viewed as one byte row per
    table row and gathered before unpacking. That needs every table row to start on a packing-unit
    boundary, i.e. the padded row length (``ngroups * group_size``) to be a multiple of the codes per
    unit (8-bit: any; 4-bit: even; 2-bit: 4; 3-bit: 8, whose unit is 3 bytes). When it is not, each
    row's codes are re-packed with zero codes up to the next unit (a few bits per row; ``storage_bytes``
    counts them). ``weight`` dequantizes the whole table on demand (for code that reads it; the
    forward never does). ``padding_idx`` is kept for the record: the table is frozen, so it changes
    nothing. ``max_norm`` renormalisation is not supported (it would write to the table).
    """

    def __init__(self, qt: QuantizedTensor, padding_idx: int | None = None):
        super().__init__()
        from methods.mpismoe.quant import _BYTES_PER_UNIT, _CODES_PER_UNIT, pack

        self.num_embeddings, self.embedding_dim = qt.shape
        self.bits, self.group_size, self.method = qt.bits, qt.group_size, qt.method
        self.padding_idx = padding_idx
        per, unit_bytes = _CODES_PER_UNIT[self.bits], _BYTES_PER_UNIT[self.bits]
        row_codes = qt.ngroups * qt.group_size  # padded row length
        packed = qt.packed
        if row_codes % per:  # rows would straddle packing units: pad each row to whole units
            codes = qt.codes()
            codes = torch.cat([codes, codes.new_zeros(codes.shape[0], (-row_codes) % per)], 1)
            packed = pack(codes, self.bits)
        self.row_codes = row_codes
        self.row_bytes = -(-row_codes // per) * unit_bytes
        self.register_buffer("packed", packed[: self.num_embeddings * self.row_bytes].contiguous())
        self.register_buffer("scales", qt.scales)
        self.register_buffer("zeros", qt.zeros)

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, bits: int = 8, group_size: int = DEFAULT_GROUP_SIZE,
                       method: str = "gnpiq", **kwargs) -> "QuantEmbedding":
        if not isinstance(emb, nn.Embedding):
            raise TypeError(f"QuantEmbedding.from_embedding needs an nn.Embedding, got {type(emb).__name__}")
        if emb.max_norm is not None:
            raise ValueError("QuantEmbedding cannot quantize an nn.Embedding with max_norm (it renormalises its table)")
        with torch.no_grad():
            qt = quantize(emb.weight.detach(), bits, group_size, method=method, **kwargs)
        return cls(qt, emb.padding_idx)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_embeddings, self.embedding_dim)

    def rows(self, ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dequantized rows ``ids`` (any shape), [*ids.shape, embedding_dim]."""
        from methods.mpismoe.quant import _one_intraop_thread, unpack

        flat = ids.reshape(-1)
        n, g = flat.numel(), self.group_size
        with _one_intraop_thread(self.packed.device):
            sel = self.packed.view(self.num_embeddings, self.row_bytes).index_select(0, flat)
            per_row = sel.shape[1] * 8 // self.bits  # codes held by one row's bytes (>= row_codes)
            codes = unpack(sel.reshape(-1), self.bits, n * per_row, torch.float32).view(n, per_row)
            codes = codes[:, : self.row_codes].reshape(n, self.row_codes // g, g)
            out = (codes - self.zeros.index_select(0, flat).float().unsqueeze(-1)) \
                * self.scales.index_select(0, flat).float().unsqueeze(-1)
            out = out.reshape(n, self.row_codes)[:, : self.embedding_dim]
        return out.to(dtype).reshape(*ids.shape, self.embedding_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.rows(ids)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.rows(torch.arange(self.num_embeddings, device=self.packed.device), dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The whole dequantized table, computed on each access (not cached, not trainable)."""
        return self.dequantize()

    def to_float(self) -> nn.Embedding:
        """A frozen fp32 ``nn.Embedding`` holding the dequantized table (a temporary stand-in)."""
        emb = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx,
                           device=self.packed.device)
        with torch.no_grad():
            emb.weight.copy_(self.dequantize())
        return emb.requires_grad_(False)

    def logical_numel(self) -> int:
        return self.num_embeddings * self.embedding_dim

    def storage_bytes(self) -> int:
        return unique_storage_bytes([self.packed, self.scales, self.zeros])

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, group_size={self.group_size}, "
                f"method={self.method}" + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""))


class _DequantTableLinear(torch.autograd.Function):
    """y = x T_d^T for a quantized table T: T_d is dequantized again in backward instead of being saved."""

    @staticmethod
    def forward(ctx, x, table):
        ctx.table = table
        return F.linear(x, table.dequantize(x.dtype))

    @staticmethod
    def backward(ctx, grad_out):
        grad_x = grad_out.matmul(ctx.table.dequantize(grad_out.dtype)) if ctx.needs_input_grad[0] else None
        return grad_x, None


class TiedQuantLinear(nn.Module):
    """A frozen nn.Linear tied to an embedding table (T5's LM head and ``shared``): its weight is the
    ``QuantEmbedding`` it holds, the very module that sits in the embedding's place, so the packed table
    is stored once (one storage) and counted once (``logical_numel`` is the bias only; the table counts
    where it is an embedding, and ``modules()`` visits it once)."""

    def __init__(self, table: QuantEmbedding, bias: torch.Tensor | None = None):
        super().__init__()
        self.table = table
        self.out_features, self.in_features = table.shape
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @property
    def weight(self) -> torch.Tensor:
        return self.table.dequantize()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.table.dequantize(dtype)

    def to_float(self) -> nn.Linear:
        """A frozen fp32 ``nn.Linear`` holding the dequantized table (a temporary stand-in)."""
        return frozen_linear(self.dequantize(), self.bias)

    def logical_numel(self) -> int:
        return self.bias.numel() if self.bias is not None else 0

    def storage_bytes(self) -> int:
        return unique_storage_bytes([self.bias]) if self.bias is not None else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device.type
        if torch.is_autocast_enabled(dev):
            x = x.to(torch.get_autocast_dtype(dev))
        elif not x.is_floating_point():
            x = x.float()
        out = _DequantTableLinear.apply(x, self.table) if torch.is_grad_enabled() and x.requires_grad \
            else F.linear(x, self.table.dequantize(x.dtype))
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, tied to a quantized table"
