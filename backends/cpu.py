"""Host CPU features, in the vocabulary backends declare in their capabilities (DESIGN.md §4).

Read from /proc/cpuinfo: on Linux it lists only what both the CPU and the kernel support
(AVX-512 is hidden when the OS does not save its registers), which is what a kernel needs.
``QCOMPILER_CPU_FEATURES=avx2,fma`` narrows the result so tests and CI can force a slower path;
it can only remove features, never claim ones the host lacks.
"""
from __future__ import annotations

import functools
import os
import platform
import warnings

# /proc/cpuinfo flag → our feature name. x86 lists them under "flags", arm64 under "Features".
_X86 = {"avx2": "avx2", "fma": "fma", "f16c": "f16c", "avx512f": "avx512f", "avx512bw": "avx512bw",
        "avx512vl": "avx512vl", "avx512_vnni": "avx512_vnni", "avx_vnni": "avx_vnni",
        "amx_tile": "amx_tile", "amx_int8": "amx_int8"}
_ARM = {"asimd": "neon", "asimddp": "neon_dot", "i8mm": "i8mm"}
KNOWN_FEATURES = frozenset(_X86.values()) | frozenset(_ARM.values())

ENV_VAR = "QCOMPILER_CPU_FEATURES"
_CPUINFO = "/proc/cpuinfo"


def parse_cpuinfo(text: str) -> frozenset[str]:
    """Features every listed processor has (intersection, so big.LITTLE mixes stay safe)."""
    per_cpu = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        table = _X86 if key == "flags" else _ARM if key == "Features" else None
        if sep and table is not None:
            per_cpu.append({table[f] for f in value.split() if f in table})
    return frozenset(set.intersection(*per_cpu)) if per_cpu else frozenset()


@functools.lru_cache(maxsize=None)
def _host_cpuinfo() -> str:
    try:
        with open(_CPUINFO, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:  # not Linux: no detection, every backend falls back to its portable path
        return ""


def detected_features() -> frozenset[str]:
    """What the host supports, ignoring ``QCOMPILER_CPU_FEATURES``."""
    return parse_cpuinfo(_host_cpuinfo())


def restrict(features: frozenset[str], spec: str | None) -> frozenset[str]:
    """``features`` narrowed by a comma list; ``None`` means no restriction, "" means none at all."""
    if spec is None:
        return features
    wanted = {name.strip().lower() for name in spec.split(",") if name.strip()}
    unknown = wanted - KNOWN_FEATURES
    if unknown:  # a typo would silently disable a path; say so
        warnings.warn(f"{ENV_VAR}: unknown feature(s) {sorted(unknown)}; known: {sorted(KNOWN_FEATURES)}",
                      stacklevel=3)
    return features & frozenset(wanted)


def cpu_features() -> frozenset[str]:
    """Host features, restricted by ``$QCOMPILER_CPU_FEATURES`` when it is set."""
    return restrict(detected_features(), os.environ.get(ENV_VAR))


def host_signature() -> str:
    """What `-march=native` depends on: the CPU model and its full flag list (first processor)."""
    keep = ("model name", "flags", "CPU implementer", "CPU part", "Features")
    lines, seen = [], set()
    for line in _host_cpuinfo().splitlines():
        key = line.partition(":")[0].strip()
        if key in keep and key not in seen:
            seen.add(key)
            lines.append(line.strip())
    return platform.machine() + "\n" + "\n".join(lines)


@functools.lru_cache(maxsize=None)
def amx_permitted() -> bool:
    """Has the OS granted this process the AMX tile data state? Linux asks for it with
    arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA), as the kernels' qc_amx_ready() does; asking
    here lets a target choose AMX without loading (or building) the GEMM library."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        sys_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata = 158, 0x1023, 18
        return libc.syscall(sys_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0
    except (OSError, AttributeError):
        return False

