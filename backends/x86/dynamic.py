"""x86 dynamic int8 linear layers (QDynamicLinear, core/dynamic_ops.py): weight packing, the C
call, and the kernel's source (kernels/dynamic_linear.c, appended to the runtime library).

The kernel quantizes each row (or the whole input) straight into the A operand its GEMM tile
reads, then runs gemm_driver.h's loop nest with a float epilogue; see the C file's comment.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch

from .gemm import pack_weights
from .gemm_library import _ISA_ID, KERNEL_DIR

KERNEL_FILE = KERNEL_DIR / "dynamic_linear.c"
#: headers the kernel includes that the runtime translation unit already holds before it
_IN_UNIT = frozenset({"gemm_common.h", "vnni_emulation.h", "qc_x86_dynamic.h"})
#: templates expanded in place at each include (no include guard)
_TEMPLATES = frozenset({"gemm_driver.h", "dynamic_vnni_tile.h"})


class Kernel:
    """One dynamic kernel: its ISA id in the C ABI and the GEMM layout its weights are packed in."""

    def __init__(self, isa: str, layout: str, a_elem: int):
        self.isa, self.layout, self.a_elem = isa, layout, a_elem

    @property
    def isa_id(self) -> int:
        return _ISA_ID[self.isa]

    @property
    def vnni(self) -> bool:
        return self.a_elem == 1


#: the kernel each GEMM ISA of the target runs: int16 operands (vpmaddwd / portable C) on AVX2 and
#: scalar, vpdpbusd ymm on the VNNI ISAs (AVX-512 VNNI and AMX machines run the EVEX ymm form; a
#: zmm tile is not written yet)
KERNELS = {
    "scalar": Kernel("scalar", "avx2", 2),
    "avx2": Kernel("avx2", "avx2", 2),
    "avxvnni": Kernel("avxvnni", "avxvnni", 1),
    "avx512vnni": Kernel("avx512vnni", "avxvnni", 1),
    "amx": Kernel("avx512vnni", "avxvnni", 1),
    # emulations (tests: a runtime built with them, see tests/test_x86_dynamic.py)
    "avxvnni_emu": Kernel("avxvnni_emu", "avxvnni", 1),
}


def _align(n: int) -> int:
    return -(-n // 64) * 64


def scratch_bytes(kernel: Kernel, m: int, k: int) -> int:
    """qc_rt_dynamic_linear_scratch: 64 bytes of slack, A (rows padded to the layout's KR), row
    scales, row zero points, per-block ranges (one per row at most)."""
    kr = 4 if kernel.vnni else 2
    k_pad = -(-k // kr) * kr
    return 64 + _align(m * k_pad * kernel.a_elem) + 2 * _align(4 * m) + _align(12 * m)


def pack(kernel: Kernel, weight: torch.Tensor, weight_scales: torch.Tensor, bias: Optional[torch.Tensor]):
    """(packed weights, w_scale [n_pad] f32, bias [n_pad] f32 or None, colsum [n_pad] int32 or None)."""
    packed = pack_weights(weight.contiguous(), None, 0, kernel.layout, input_dtype=torch.uint8)
    n, n_pad = packed.n, packed.n_pad

    def padded(values, dtype):
        out = torch.zeros(n_pad, dtype=dtype)
        out[:n] = values.reshape(-1).to(dtype)
        return out

    w_scale = padded(weight_scales, torch.float32)
    b = None if bias is None else padded(bias, torch.float32)
    colsum = padded(weight.to(torch.int64).sum(dim=1), torch.int32) if kernel.vnni else None
    return packed, w_scale, b, colsum


def emit_call(kernel: Kernel, em, *, x: str, m: int, y: str, weight: torch.Tensor, weight_scales: torch.Tensor,
              bias: Optional[torch.Tensor], per_token: bool, symmetric: bool, threads: str):
    """The C lines of one qc_rt_dynamic_linear call and the arena scratch it uses."""
    n, k = weight.shape
    packed, w_scale, b, colsum = pack(kernel, weight, weight_scales, bias)
    nbytes = scratch_bytes(kernel, m, k)
    scratch = em.scratch(nbytes)
    blk = packed.blocking
    lines = [f"rc = qc_rt_dynamic_linear({kernel.isa_id}, {x}, {m}, {k}, {n}, {em.weight(packed.data, 'uint8_t')}, "
             f"{packed.nbytes}, {blk.nr}, {blk.kr}, {blk.elem}, "
             f"{'NULL' if colsum is None else em.weight(colsum, 'int32_t')}, {em.weight(w_scale, 'float')}, "
             f"{'NULL' if b is None else em.weight(b, 'float')}, {int(per_token)}, {int(symmetric)}, {y}, "
             f"QC_BUF({scratch.ident}), {nbytes}, {threads});",
             "if (rc == QC_RT_ERR_NONFINITE) return QC_MODEL_ERR_NONFINITE;",
             "if (rc == QC_RT_ERR_DYNAMIC_RANGE) return QC_MODEL_ERR_RANGE;",
             "if (rc) return rc;"]
    return lines, [scratch]


_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def kernel_source() -> str:
    """dynamic_linear.c for the end of the runtime unit: templates expanded at each include,
    headers the unit already holds dropped (an unknown local include is an error)."""

    def expand(path: Path) -> list[str]:
        out = [f'#line 1 "{path.name}"']
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            m = _INCLUDE.match(line)
            if m is None:
                out.append(line)
                continue
            name = m.group(1)
            if name in _TEMPLATES:
                out.extend(expand(KERNEL_DIR / name))
                out.append(f'#line {lineno + 1} "{path.name}"')
            elif name in _IN_UNIT:
                out.append("")          # keeps the line numbers
            else:
                raise ValueError(f"{path.name} includes {name!r}, which the runtime unit does not hold")
        return out

    return "\n".join(expand(KERNEL_FILE)) + "\n"
