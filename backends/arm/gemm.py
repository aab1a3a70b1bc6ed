"""The ARM GEMM's facts in one place (backends/arm/kernels, runtime/qc_arm_gemm_call.h): its
levels (-march, level id, tile), the weight packing, and the C text a level's runtime compiles.

The compiler runs on any host and cannot call aarch64 code, so :func:`pack_weights` repacks in
torch, byte for byte what ``qc_arm_pack_<level>`` writes (tests/test_arm_gemm_call.py compares
them on every level): int32 column sums ``[npad]`` (little-endian, wrapping), then the panels
``[npad / NR][kpad / KB][NR][KB]`` of int8, zero past ``n`` and ``k``.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

ARM_DIR = Path(__file__).resolve().parent
KERNELS_DIR = ARM_DIR / "kernels"
GLUE_DIR = ARM_DIR / "runtime"
C_RUNTIME_DIR = ARM_DIR.parent / "c_runtime"


@dataclasses.dataclass(frozen=True)
class Level:
    name: str
    level_id: int      # QC_ARM_LEVEL_* (qc_arm_kernels.h), the first argument of qc_arm_rt_gemm
    march: str         # what the level's runtime is compiled with (-march=...)
    cpu_feature: str   # its /proc/cpuinfo flag (HWCAP name)
    nr: int            # weight panel width (columns)
    kb: int            # k per block
    kernels: tuple[str, ...]   # files of kernels/ its runtime compiles (what its -march allows)


_BASE = ("qc_arm_gemm_neon.c", "qc_arm_depthwise_neon.c")
#: the levels, baseline first; each one's runtime also runs the levels before it
LEVELS = ("neon", "dotprod", "i8mm")
SPECS = {
    "neon": Level("neon", 0, "armv8-a", "asimd", 4, 16, _BASE),
    "dotprod": Level("dotprod", 1, "armv8.2-a+dotprod", "asimddp", 8, 4, (*_BASE, "qc_arm_gemm_dotprod.c")),
    "i8mm": Level("i8mm", 2, "armv8.6-a+i8mm", "i8mm", 8, 8,
                  (*_BASE, "qc_arm_gemm_dotprod.c", "qc_arm_gemm_i8mm.c")),
}
#: the neon level adds two int8 products in an int16 lane, which needs |w| <= 127
NEON_WEIGHT_MIN = -127


def spec(level: str) -> Level:
    try:
        return SPECS[level]
    except KeyError:
        raise ValueError(f"unknown ARM GEMM level {level!r}; known: {', '.join(LEVELS)}") from None


def _round_up(x: int, r: int) -> int:
    return (x + r - 1) // r * r


def packed_size(n: int, k: int, level: str) -> int:
    """Bytes of :func:`pack_weights`' output, ``qc_arm_packed_size_<level>(n, k)``."""
    s = spec(level)
    npad = _round_up(n, s.nr)
    return npad * 4 + npad * _round_up(k, s.kb)


def pack_weights(weight: torch.Tensor, level: str) -> torch.Tensor:
    """int8 weights ``[n, k]`` (QLinear's, or a convolution's as ``[out, kh*kw*cin]``) packed for
    ``level``: a uint8 tensor of :func:`packed_size` bytes, equal to ``qc_arm_pack_<level>``'s."""
    s = spec(level)
    if not isinstance(weight, torch.Tensor) or weight.dtype != torch.int8 or weight.dim() != 2:
        raise ValueError(f"pack_weights wants an int8 tensor [n, k], got "
                         f"{getattr(weight, 'dtype', type(weight).__name__)} {tuple(getattr(weight, 'shape', ()))}")
    n, k = weight.shape
    if n == 0 or k == 0:
        raise ValueError(f"pack_weights: empty weight [{n}, {k}]")
    if level == "neon" and bool((weight < NEON_WEIGHT_MIN).any()):
        raise ValueError("the neon ARM GEMM level needs weights in [-127, 127] (its int16 pair sums): quantize "
                         "weights as int8_narrow (qcompiler's default), or use the dotprod / i8mm level")
    npad, kpad = _round_up(n, s.nr), _round_up(k, s.kb)
    w = torch.zeros(npad, kpad, dtype=torch.int8)
    w[:n, :k] = weight.detach().cpu()
    sums = w.to(torch.int64).sum(1)
    sums = (sums + 2**31) % 2**32 - 2**31        # int32 wrap, as the C sum in uint32
    panels = w.reshape(npad // s.nr, s.nr, kpad // s.kb, s.kb).permute(0, 2, 1, 3).contiguous()
    colsum = torch.from_numpy(sums.numpy().astype("<i4").view(np.uint8))
    return torch.cat([colsum, panels.reshape(-1).view(torch.uint8)])


_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*(?:/\*.*\*/\s*|//.*)?$')
_INCLUDE_DIRS = (KERNELS_DIR, GLUE_DIR, C_RUNTIME_DIR)


def library_source(level: str, runtime: Sequence[Path] = ()) -> str:
    """The level's GEMM as one C text: the thread pool first (so that qc_runtime.h's parallel
    loops use it), the kernels its -march allows, then the glue (qc_arm_gemm_call.c), then the
    ``runtime`` files (the shared runtime's sources: one runtime build per level). Local
    includes are expanded once each, ``#line`` keeping diagnostics on the original files.
    Compile with ``-march=<spec(level).march>``."""
    seen: set[Path] = set()

    def expand(name: str) -> list[str]:
        path = next((d / name for d in _INCLUDE_DIRS if (d / name).is_file()), None)
        if path is None:
            raise FileNotFoundError(f"ARM runtime source {name} not found in {[str(d) for d in _INCLUDE_DIRS]}")
        if path in seen:
            return []
        seen.add(path)
        out = [f'#line 1 "{name}"']
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            m = _INCLUDE.match(line)
            if m and any((d / m.group(1)).is_file() for d in _INCLUDE_DIRS):
                out.extend(expand(m.group(1)))
                out.append(f'#line {lineno + 1} "{name}"')
            else:
                out.append(line)
        return out

    lines = []
    for name in ("qc_thread_pool.h", *spec(level).kernels, "qc_arm_gemm_call.c", *(p.name for p in runtime)):
        lines.extend(expand(name))
    return "\n".join(lines) + "\n"
