"""GNP-IQ's stored form: n-bit codes really packed into bytes (8-bit one per byte, 4-bit two, 2-bit four,
3-bit eight codes in three bytes), ``QuantizedTensor`` (codes + one (s, z) per group) and its dequantization,
w_d = s (q - z). The search that picks (s, z) is in ``quant.py``, which re-exports these names."""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from benchmark.memory.storage import unique_storage_bytes

SUPPORTED_BITS = (2, 3, 4, 8)
DEFAULT_GROUP_SIZE = 64
SCALE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# codes per packing unit and bytes per unit: 3-bit packs 8 codes (24 bits) into 3 bytes
_CODES_PER_UNIT = {8: 1, 4: 2, 2: 4, 3: 8}
_BYTES_PER_UNIT = {8: 1, 4: 1, 2: 1, 3: 3}


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits!r} is not supported; choose one of {SUPPORTED_BITS}")


# ---------------------------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------------------------
def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes that ``pack`` produces for ``numel`` codes."""
    _check_bits(bits)
    return math.ceil(numel / _CODES_PER_UNIT[bits]) * _BYTES_PER_UNIT[bits]


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Flatten integer ``codes`` (values in [0, 2^bits)) into a dense 1-D uint8 tensor.

    Little-endian within a unit: code i of a byte sits at bit ``bits * i`` (3-bit: code i of an
    8-code unit sits at bit 3 i of a 24-bit little-endian word). The tail is zero-padded to a whole
    unit; ``unpack`` needs ``numel`` to drop it.
    """
    _check_bits(bits)
    flat = codes.reshape(-1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= (1 << bits)):
        raise ValueError(f"codes out of range for {bits}-bit packing: [{int(flat.min())}, {int(flat.max())}]")
    per = _CODES_PER_UNIT[bits]
    c = flat.to(torch.uint8)
    pad = (-c.numel()) % per
    if pad:
        c = torch.cat([c, c.new_zeros(pad)])
    if bits == 8:
        return c.clone() if c.data_ptr() == codes.data_ptr() else c.contiguous()
    if bits == 3:
        c = c.view(-1, 8).to(torch.int32)
        word = c[:, 0].clone()
        for i in range(1, 8):
            word |= c[:, i] << (3 * i)
        return torch.stack([word & 0xFF, (word >> 8) & 0xFF, (word >> 16) & 0xFF], 1).to(torch.uint8).reshape(-1)
    c = c.view(-1, per)
    out = c[:, 0].clone()
    for i in range(1, per):
        out |= c[:, i] << (bits * i)
    return out


def _check_packed(packed: torch.Tensor, bits: int, numel: int) -> None:
    _check_bits(bits)
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed codes must be uint8, got {packed.dtype}")
    if packed.numel() < packed_nbytes(numel, bits):
        raise ValueError(f"{packed.numel()} packed bytes hold fewer than {numel} {bits}-bit codes")


def unpack(packed: torch.Tensor, bits: int, numel: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Inverse of ``pack``: the first ``numel`` codes as a 1-D tensor of ``dtype``.

    Each code slot is written straight into a strided view of the output (one bit op and one
    converting copy per slot), several times faster on CPU than broadcasting a shift tensor."""
    _check_packed(packed, bits, numel)
    if bits == 8:
        return packed[:numel].to(dtype)
    per, mask = _CODES_PER_UNIT[bits], (1 << bits) - 1
    if bits == 3:
        b = packed[: packed_nbytes(numel, 3)].view(-1, 3).to(torch.int32)
        src = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    else:
        src = packed[: packed_nbytes(numel, bits)]
    out = torch.empty(src.numel(), per, dtype=dtype, device=packed.device)
    for i in range(per):
        slot = src if i == 0 else src >> (bits * i)
        out[:, i].copy_(slot if i == per - 1 and bits != 3 else slot & mask)
    return out.view(-1)[:numel]


@contextmanager
def _one_intraop_thread(device: torch.device):
    """Run elementwise CPU work on the calling thread only.

    Dequantization is memory-bound and a few MB per layer: extra intra-op threads buy little, and on
    a busy machine every parallel elementwise op can wait a scheduler slice for its helper thread
    (measured: ~8 ms per op on a loaded 2-core VM against 0.1 ms on one thread). OpenMP's thread
    count is a per-thread setting, restored on exit."""
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def dequantize_packed(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
                      shape: tuple[int, int], group_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """w_d = s (q - z) for a 2-D [rows, cols] weight stored as packed codes + per-group s, z.

    ``group_size`` is the effective group length (each row is padded up to a multiple of it).
    Computed in float32 (a bf16 code minus a real zero point would lose up to half a level) and cast
    to ``dtype`` at the end."""
    rows, cols = shape
    ngroups = scales.shape[-1]
    with _one_intraop_thread(packed.device):
        out = unpack(packed, bits, rows * ngroups * group_size, torch.float32).view(rows, ngroups, group_size)
        out.sub_(zeros.float().unsqueeze(-1)).mul_(scales.float().unsqueeze(-1))
        out = out.view(rows, ngroups * group_size)
        if ngroups * group_size != cols:
            out = out[:, :cols].contiguous()
        return out if dtype == torch.float32 else out.to(dtype)


@dataclass
class QuantizedTensor:
    """A 2-D weight stored as packed n-bit codes plus one (scale, zero) pair per group of a row.

    ``group_size`` is the effective group length (the row length for per-channel quantization);
    rows are padded up to a multiple of it. w_d = scale * (code - zero).
    """

    packed: torch.Tensor  # uint8, 1-D, see ``pack``
    scales: torch.Tensor  # [rows, ngroups], SCALE_DTYPES
    zeros: torch.Tensor  # [rows, ngroups], same dtype as scales (real-valued zero point)
    shape: tuple[int, int]
    bits: int
    group_size: int
    method: str = "gnpiq"

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def ngroups(self) -> int:
        return self.scales.shape[-1]

    def codes(self) -> torch.Tensor:
        """The unpacked codes, [rows, ngroups * group_size] uint8 (padding included)."""
        rows = self.shape[0]
        return unpack(self.packed, self.bits, rows * self.ngroups * self.group_size).view(rows, -1)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_packed(self.packed, self.scales, self.zeros, self.bits, self.shape, self.group_size, dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"packed": self.packed, "scales": self.scales, "zeros": self.zeros}

    def storage_bytes(self) -> int:
        """Real bytes held by the stored tensors (codes, scales, zeros), read from their storages."""
        return unique_storage_bytes(self.tensors().values())

    def bytes_per_weight(self) -> float:
        return self.storage_bytes() / self.numel

    def to(self, device) -> "QuantizedTensor":
        return QuantizedTensor(self.packed.to(device), self.scales.to(device), self.zeros.to(device), self.shape,
                               self.bits, self.group_size, self.method)


def mse(w: torch.Tensor, w_d: torch.Tensor) -> float:
    """The paper's quantization error: mean squared error between w and its dequantization."""
    return float((w.detach().float() - w_d.float()).square().mean())


def quant_error(w: torch.Tensor, qt: QuantizedTensor) -> float:
    return mse(w.reshape(qt.shape), qt.dequantize())
