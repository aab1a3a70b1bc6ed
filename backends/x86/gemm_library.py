"""Building, loading and choosing the x86 int8 GEMM library (see gemm.py for the calls).

The kernels in ``kernels/`` are inlined into one C source and built once per blocking
table by ``backends.toolchain`` (cached); :func:`library` loads it through ctypes and checks
that the layouts compiled in match :data:`BLOCKING`. :func:`best_isa` picks the fastest
kernel this CPU (CPUID, narrowed by ``$QCOMPILER_CPU_FEATURES``) can run.
"""
from __future__ import annotations

import ctypes
import functools
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .. import toolchain

KERNEL_DIR = Path(__file__).resolve().parent / "kernels"
#: where the kernels' local includes are found: their own folder, then the shared C runtime's
#: (the target-neutral thread pool, qc_thread_pool.h)
INCLUDE_DIRS = (KERNEL_DIR, KERNEL_DIR.parent.parent / "c_runtime")
ENTRY_SOURCE = "gemm_dispatch.c"


@dataclass(frozen=True)
class Blocking:
    """Register and cache blocking of one ISA's micro-kernel.

    mr, nr: rows × columns of the register tile (nr = columns per packed W panel);
    kr: consecutive k per packed group (4 for vpdpbusd, 2 for vpmaddwd);
    elem: bytes per packed W element (2: W pre-widened to int16 for vpmaddwd);
    mc: rows of A per M block (0: all of M); kc: k per K block (0: all of K; a smaller KC
    keeps a W panel block in L1 but spills partial sums to an int32 scratch per block).
    """

    mr: int
    nr: int
    kr: int
    elem: int
    mc: int = 0
    kc: int = 0


#: one row per ISA (the emulated VNNI variants use their native layout)
BLOCKING: dict[str, Blocking] = {
    "scalar": Blocking(mr=4, nr=16, kr=4, elem=1, mc=0, kc=0),
    "avx2": Blocking(mr=6, nr=16, kr=2, elem=2, mc=0, kc=0),
    "avxvnni": Blocking(mr=6, nr=16, kr=4, elem=1, mc=0, kc=0),
    "avx512vnni": Blocking(mr=6, nr=64, kr=4, elem=1, mc=0, kc=0),
    # AMX: 32-row x 32-column tile passes over AVX-512 VNNI's layout; kc in whole 64-k
    # blocks (C goes through an int32 scratch between K blocks)
    "amx": Blocking(mr=32, nr=64, kr=4, elem=1, mc=256, kc=512),
}

#: ISA name → id in the C ABI (gemm_common.h)
_ISA_ID = {"scalar": 1, "avx2": 2, "avxvnni": 3, "avx512vnni": 4, "avxvnni_emu": 5, "avx512vnni_emu": 6,
           "amx": 7, "amx_emu": 8}
ISAS = tuple(_ISA_ID)
#: the C prefix of each ISA's -D flags and the layout family it belongs to
_FAMILY = {"scalar": "scalar", "avx2": "avx2", "avxvnni": "avxvnni", "avx512vnni": "avx512vnni",
           "avxvnni_emu": "avxvnni", "avx512vnni_emu": "avx512vnni", "amx": "amx", "amx_emu": "amx"}
#: CPU features (backends/cpu.py vocabulary) each kernel needs; AMX itself is not in that
#: vocabulary, so CPUID (and the OS's grant of the tile state) decides it, in C
_NEEDS = {
    "amx": frozenset({"avx512f", "avx512bw", "avx512vl", "amx_tile", "amx_int8"}),
    "amx_emu": frozenset({"avx512f", "avx512bw", "avx512vl"}),
    "scalar": frozenset(),
    "avx2": frozenset({"avx2"}),
    "avxvnni": frozenset({"avx2", "avx_vnni"}),
    "avx512vnni": frozenset({"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}),
    "avxvnni_emu": frozenset({"avx2"}),
    "avx512vnni_emu": frozenset({"avx512f", "avx512bw", "avx512vl"}),
}
#: fastest first (emulations are for testing, never picked automatically)
_PREFERENCE = ("amx", "avx512vnni", "avxvnni", "avx2", "scalar")

class GemmError(RuntimeError):
    """The native kernel rejected its arguments (the message carries its reason)."""


class UnsupportedISA(RuntimeError):
    """The requested kernel cannot run on this CPU (or this build)."""


# ---------------------------------------------------------------------------------------
# Building and loading the library
# ---------------------------------------------------------------------------------------

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def library_source() -> str:
    """The library as one self-contained C source: ``gemm_dispatch.c`` with every local
    ``#include "…"`` expanded in place (the build cache is keyed by this text, so any edit
    to any kernel file rebuilds). ``#line`` directives keep compiler messages pointing at
    the original files."""

    def find(name: str):
        return next((d / name for d in INCLUDE_DIRS if (d / name).is_file()), None)

    def expand(name: str) -> list[str]:
        path = find(name)
        out = [f'#line 1 "{name}"']  # the name, not the path: the cache key must not depend on the install
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            m = _INCLUDE.match(line)
            if m and find(m.group(1)) is not None:
                out.extend(expand(m.group(1)))
                out.append(f'#line {lineno + 1} "{name}"')
            else:
                out.append(line)
        return out

    return "\n".join(expand(ENTRY_SOURCE)) + "\n"


def build_flags(blocking: Optional[dict] = None, *, native_vnni: bool = True) -> list[str]:
    """Compiler flags: optimization, no FMA contraction (the fp32 epilogue is one IEEE
    multiply), pthreads, and the blocking table as -D macros."""
    flags = ["-O3", "-std=gnu11", "-ffp-contract=off", "-fno-math-errno", "-pthread", "-Wall"]
    if not native_vnni:
        flags += ["-DQC_NO_NATIVE_VNNI", "-DQC_NO_NATIVE_AMX"]
    for family, b in (BLOCKING if blocking is None else blocking).items():
        p = f"-DQC_{family.upper()}_"
        flags += [f"{p}MR={b.mr}", f"{p}NR={b.nr}", f"{p}MC={b.mc}", f"{p}KC={b.kc}"]
    return flags


class _Args(ctypes.Structure):
    """``qc_gemm_args`` (gemm_common.h); ctypes lays it out as the C compiler does."""

    _fields_ = [
        ("struct_size", ctypes.c_uint32), ("isa", ctypes.c_int32),
        ("m", ctypes.c_int64), ("n", ctypes.c_int64), ("k", ctypes.c_int64),
        ("a", ctypes.c_void_p), ("lda", ctypes.c_int64),
        ("b", ctypes.c_void_p), ("b_bytes", ctypes.c_int64),
        ("b_nr", ctypes.c_int32), ("b_kr", ctypes.c_int32), ("b_elem", ctypes.c_int32),
        ("requant_mode", ctypes.c_int32),
        ("bias", ctypes.c_void_p), ("mult", ctypes.c_void_p),
        ("m0", ctypes.c_void_p), ("shift", ctypes.c_void_p),
        ("zero_point", ctypes.c_int32), ("qmin", ctypes.c_int32), ("qmax", ctypes.c_int32),
        ("out_scale", ctypes.c_float), ("out_type", ctypes.c_int32),
        ("c", ctypes.c_void_p), ("ldc", ctypes.c_int64),
        ("threads", ctypes.c_int32), ("a_cols", ctypes.c_int64), ("post_add", ctypes.c_void_p),
    ]


_ABI_VERSION = 3
_lib_lock = threading.Lock()


@dataclass
class _Library:
    cdll: ctypes.CDLL
    path: Path
    flags: list[str]
    native_vnni: bool
    entries: dict = field(default_factory=dict)
    blocking: dict = field(default_factory=dict)


def _declare(cdll: ctypes.CDLL) -> dict:
    argp = ctypes.POINTER(_Args)
    entries = {}
    for name in ["qc_gemm"] + [f"qc_gemm_{isa}" for isa in ISAS]:
        fn = getattr(cdll, name)
        fn.argtypes, fn.restype = [argp], ctypes.c_int
        entries[name] = fn
    for name in ("qc_dpbusd512_avx512vnni", "qc_dpbusd512_avx512vnni_emu",
                 "qc_dpbusd256_avxvnni", "qc_dpbusd256_avxvnni_emu"):
        fn = getattr(cdll, name)
        fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64]
        fn.restype = ctypes.c_int
        entries[name] = fn
    cdll.qc_isa_supported.argtypes, cdll.qc_isa_supported.restype = [ctypes.c_int], ctypes.c_int
    cdll.qc_best_isa.argtypes, cdll.qc_best_isa.restype = [], ctypes.c_int
    cdll.qc_layout.argtypes, cdll.qc_layout.restype = [ctypes.c_int, ctypes.POINTER(ctypes.c_int32)], ctypes.c_int
    cdll.qc_strerror.argtypes, cdll.qc_strerror.restype = [ctypes.c_int], ctypes.c_char_p
    for name in ("qc_abi_version", "qc_args_size", "qc_default_threads"):
        getattr(cdll, name).argtypes, getattr(cdll, name).restype = [], ctypes.c_int
    return entries


def build_library(blocking: Optional[dict] = None) -> _Library:
    """Build (cached by content hash) and load the kernel library for a blocking table
    (default :data:`BLOCKING`; another table is for tuning and tests — only MC/KC may
    differ if weights packed with :data:`BLOCKING` are to run on it).

    Falls back to a build without native VNNI / AMX code if the compiler cannot target it
    (the native entries then report "unsupported"; the emulations still run).
    """
    blocking = dict(BLOCKING if blocking is None else blocking)
    source = library_source()
    errors = []
    for native_vnni in (True, False):
        flags = build_flags(blocking, native_vnni=native_vnni)
        try:
            path = toolchain.build_shared_library(source, flags=flags, name="qc_x86_gemm")
        except toolchain.ToolchainError as e:
            errors.append(str(e))
            continue
        cdll = toolchain.load_library(path)
        entries = _declare(cdll)
        if cdll.qc_abi_version() != _ABI_VERSION or cdll.qc_args_size() != ctypes.sizeof(_Args):
            raise GemmError(f"{path}: ABI mismatch (library {cdll.qc_abi_version()}/"
                            f"{cdll.qc_args_size()} bytes, Python {_ABI_VERSION}/{ctypes.sizeof(_Args)})")
        lib = _Library(cdll, path, flags, native_vnni, entries, blocking)
        _check_layouts(lib)
        return lib
    raise toolchain.ToolchainError("could not build the x86 GEMM kernels:\n" + "\n---\n".join(errors))


def library() -> _Library:
    """The kernel library for :data:`BLOCKING`, built once per process (and cached on disk)."""
    with _lib_lock:
        lib = _library_cache.get("lib")
        if lib is None:
            lib = _library_cache["lib"] = build_library()
        return lib


_library_cache: dict = {}


def _check_layouts(lib: _Library) -> None:
    out = (ctypes.c_int32 * 6)()
    for isa in ISAS:
        if lib.cdll.qc_layout(_ISA_ID[isa], out) != 0:
            raise GemmError(f"library has no layout for {isa}")
        b = lib.blocking[_FAMILY[isa]]
        if tuple(out) != (b.mr, b.nr, b.kr, b.elem, b.mc, b.kc):
            raise GemmError(f"compiled blocking of {isa} {tuple(out)} differs from the table's {b}")


def _strerror(code: int) -> str:
    return library().cdll.qc_strerror(code).decode()


# ---------------------------------------------------------------------------------------
# ISA selection
# ---------------------------------------------------------------------------------------

def _host_features() -> Optional[frozenset]:
    try:
        from ..cpu import cpu_features
    except ImportError:      # pragma: no cover - backends/cpu.py is optional
        return None
    return cpu_features()


def isa_supported(isa: str) -> bool:
    """Can this CPU run ``isa``'s kernel? CPUID (in C) and, where ``backends/cpu.py`` is
    present, its feature list (so ``QCOMPILER_CPU_FEATURES=avx2`` forces the AVX2 path)."""
    _check_isa_name(isa)
    return _isa_supported(isa, os.environ.get("QCOMPILER_CPU_FEATURES"))


@functools.lru_cache(maxsize=None)
def _isa_supported(isa: str, env: Optional[str]) -> bool:   # env: part of the cache key only
    if not library().cdll.qc_isa_supported(_ISA_ID[isa]):
        return False
    feats = _host_features()
    return feats is None or _NEEDS[isa] <= feats


def available_isas() -> list[str]:
    return [isa for isa in ISAS if isa_supported(isa)]


def best_isa() -> str:
    """The fastest kernel this host runs (AVX-512 VNNI > AVX-VNNI > AVX2 > scalar)."""
    return next(isa for isa in _PREFERENCE if isa_supported(isa))


def _check_isa_name(isa: str) -> None:
    if isa not in _ISA_ID:
        raise ValueError(f"unknown ISA {isa!r}; choose 'auto' or one of {list(ISAS)}")


def _resolve(isa: str) -> str:
    return best_isa() if isa == "auto" else (_check_isa_name(isa) or isa)
