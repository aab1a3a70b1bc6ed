"""x86 weight-only (int8 / int4 / NF4) and half-precision linear layers: the weights packed for
the kernels of ``kernels/qc_x86_weight_only.h`` when the model is compiled, and their C call.

Layout (deterministic; the header has the picture): N padded to a multiple of 16, panels of 8
columns (one ymm of float32 lanes); K in blocks of 8. 4-bit codes: one 32-bit word per column
per block, nibble i = k0 + i, so a shift (and a mask, or a sign-extending shift pair) puts one k
of 8 columns in the 8 lanes; symmetric int4 is stored as the signed nibble (code - 8) & 15.
int8: the 8 columns of one k together. Scales and zero points: [panel][group][8].
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from qcompiler.core.weight_only_ops import NF4_LEVELS, INT4_SYMMETRIC_ZERO, QuantizedWeight, unpack_nibbles

from .. import cpu
from ..base import BackendUnsupported
from ..c_emitter.lower_weight_only import wo_format

KERNEL_DIR = Path(__file__).resolve().parent / "kernels"
#: the kernels, in translation-unit order after the shared runtime (which has qc_rt_weight_only.h)
RUNTIME_FILES = tuple(KERNEL_DIR / f for f in ("qc_x86_weight_only.h", "weight_only_common.h", "weight_only_avx2.c",
                                               "weight_only_linear.c"))
#: what a generated model includes
MODEL_HEADERS = (KERNEL_DIR / "qc_x86_weight_only.h",)

NR = 8          # columns per panel (QC_WO_NR)
KB = 8          # k per block (QC_WO_KB)
N_ALIGN = 16    # N padded to two panels (QC_WO_N_ALIGN)

#: kernel ids (QC_WO_ISA_*) and half types (QC_HALF_*) of the C ABI
ISA_SCALAR, ISA_AVX2 = 1, 2
HALF_TYPES = {torch.bfloat16: 1, torch.float16: 2}
#: CPU features (backends/cpu.py names) of the AVX2 kernels; float16 weights also need F16C
AVX2_NEEDS = frozenset({"avx2", "fma"})


def kernel_isa(gemm_isa: str, half_dtype: Optional[torch.dtype] = None) -> int:
    """The kernel for a model built for GEMM ISA ``gemm_isa``: AVX2 where the CPU (narrowed by
    $QCOMPILER_CPU_FEATURES) has AVX2 and FMA (and F16C for float16 weights), else portable C."""
    needs = AVX2_NEEDS | ({"f16c"} if half_dtype == torch.float16 else set())
    return ISA_AVX2 if gemm_isa != "scalar" and needs <= cpu.cpu_features() else ISA_SCALAR


def _round_up(v: int, to: int) -> int:
    return -(-v // to) * to


def group_blocks(qw: QuantizedWeight, where: str = "") -> int:
    """Blocks of 8 k per scale group: the group size / 8, or every block for one group per row."""
    k8 = -(-qw.k // KB)
    if qw.group_size == qw.k:
        return k8
    if qw.group_size % KB:
        raise BackendUnsupported(f"{where}weight-only groups of {qw.group_size} (the x86 kernels take groups "
                                 f"of a multiple of {KB}, or one per channel)")
    return qw.group_size // KB


def _panels(t: torch.Tensor, n_pad: int, fill) -> torch.Tensor:
    """[N, ...] padded to n_pad rows with ``fill``, as [n_pad / 8, 8, ...]."""
    pad = torch.full((n_pad - t.shape[0], *t.shape[1:]), fill, dtype=t.dtype)
    return torch.cat([t, pad]).reshape(n_pad // NR, NR, *t.shape[1:])


def pack_codes(qw: QuantizedWeight) -> torch.Tensor:
    """The codes in the kernels' layout, as bytes (uint8, flat)."""
    n, k = int(qw.codes.shape[0]), qw.k
    n_pad, k_pad = _round_up(n, N_ALIGN), _round_up(k, KB)
    if qw.dtype == "int8":
        codes = torch.zeros((n, k_pad), dtype=torch.int8)
        codes[:, :k] = qw.codes
        # [panel, j, k] -> [panel, k, j]: the 8 columns of one k together
        return _panels(codes, n_pad, 0).permute(0, 2, 1).contiguous().reshape(-1).view(torch.uint8)
    codes = unpack_nibbles(qw.codes)                                   # int64 [n, k], 0..15
    if qw.dtype == "int4" and qw.symmetric:
        codes = codes ^ INT4_SYMMETRIC_ZERO                            # the signed nibble (code - 8) & 15
    # padding k: the code whose value is 0 (the kernels multiply it by x = 0 anyway)
    zero = 0 if qw.dtype == "int4" and qw.symmetric else 7 if qw.dtype == "nf4" else None
    full = torch.zeros((n, k_pad), dtype=torch.int64)
    full[:, :k] = codes
    if k_pad > k:
        full[:, k:] = zero if zero is not None else qw.zero_points[:, -1:].to(torch.int64)
    blocks = _panels(full, n_pad, 0).reshape(n_pad // NR, NR, k_pad // KB, KB)     # [panel, j, block, i]
    shifts = torch.arange(KB, dtype=torch.int64) * 4
    words = (blocks << shifts).sum(dim=-1)                             # [panel, j, block]
    words = words.permute(0, 2, 1).contiguous()                        # [panel, block, j]
    return _u32_bytes(words.reshape(-1))


def _u32_bytes(words: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2^32) as little-endian uint32 bytes."""
    b = torch.stack([(words >> s) & 255 for s in (0, 8, 16, 24)], dim=-1)
    return b.to(torch.uint8).reshape(-1)


def pack_group_params(qw: QuantizedWeight) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Scales float32 and zero points uint8 (or None) as [panel][group][8]."""
    n_pad = _round_up(int(qw.codes.shape[0]), N_ALIGN)
    scales = _panels(qw.scales.to(torch.float32), n_pad, 0.0).permute(0, 2, 1).contiguous()
    zps = None
    if qw.zero_points is not None:
        zps = _panels(qw.zero_points.to(torch.uint8), n_pad, 0).permute(0, 2, 1).contiguous()
    return scales, zps


def pack_half(weight: torch.Tensor) -> torch.Tensor:
    """bfloat16/float16 [N, K] as uint16 [n_pad / 8][K][8], as bytes."""
    n, _ = weight.shape
    bits = weight.contiguous().view(torch.int16)
    return _panels(bits, _round_up(n, N_ALIGN), 0).permute(0, 2, 1).contiguous().reshape(-1).view(torch.uint8)


def emit_weight_only_linear(em, isa: int, *, x: str, m: int, y: str, qweight: QuantizedWeight,
                            bias: Optional[torch.Tensor], compute: str) -> tuple[list[str], list]:
    qw = qweight
    n, k = int(qw.codes.shape[0]), qw.k
    gb = group_blocks(qw)
    codes = pack_codes(qw)
    scales, zps = pack_group_params(qw)
    zp_expr = "NULL" if zps is None else em.weight(zps, "uint8_t")
    nf4 = em.weight(NF4_LEVELS, "float") if qw.dtype == "nf4" else "NULL"
    b = "NULL" if bias is None else em.weight(bias.to(torch.float32).contiguous(), "float")
    scratch = []
    xbuf = "NULL"
    if compute == "bfloat16":
        buf = em.scratch(4 * m * k)
        scratch.append(buf)
        xbuf = f"((float *)QC_BUF({buf.ident}))"
    weights = (f"&(qc_wo_linear_weights){{{wo_format(qw)}, {n}, {k}, {gb}, {em.weight(codes, 'uint8_t')}, "
               f"{codes.numel()}, {em.weight(scales, 'float')}, {zp_expr}, {nf4}, {b}}}")
    return ([f"rc = qc_x86_wo_linear({isa}, {x}, {m}, {weights}, {int(compute == 'bfloat16')}, {xbuf}, {y}, threads);",
             "if (rc) return rc;"], scratch)


def emit_half_linear(em, isa: int, *, x: str, m: int, y: str, weight: torch.Tensor,
                     bias: Optional[torch.Tensor]) -> tuple[list[str], list]:
    n, k = weight.shape
    packed = pack_half(weight)
    buf = em.scratch(4 * m * k)
    b = "NULL" if bias is None else em.weight(bias.to(torch.float32).contiguous(), "float")
    return ([f"rc = qc_x86_half_linear({isa}, {x}, {m}, {n}, {k}, {HALF_TYPES[weight.dtype]}, "
             f"{em.weight(packed, 'uint16_t')}, {packed.numel()}, {b}, ((float *)QC_BUF({buf.ident})), {y}, threads);",
             "if (rc) return rc;"], [buf])
