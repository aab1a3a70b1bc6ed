"""The x86 runtime library: the int8 GEMM (``kernels/``, via :func:`gemm.library_source`) + the
shared C runtime (``backends/c_runtime``) + the glue that calls the GEMM, as ONE translation
unit built once per ISA variant and cached by content hash (``backends.toolchain``).

A model's generated C is then small (calls only) and links against this library, so a
cold model compile takes about a second and the 8 s GEMM build happens once per machine.
Variants differ only in the ``-m`` flags the portable kernels are vectorized with.
"""
from __future__ import annotations

import functools
import threading
from pathlib import Path

from .. import toolchain
from ..c_target import join_sources
from . import dynamic, gemm

GLUE_DIR = Path(__file__).resolve().parent / "runtime"

#: vectorization flags of the portable kernels (-ffp-contract=off keeps FMA out anyway)
VARIANT_FLAGS = {
    "baseline": (),
    "avx2": ("-mavx2", "-mfma"),
    "avx512": ("-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"),
}
#: the runtime variant each GEMM ISA runs with (the CPU running that ISA has these features:
#: the avx512 variant's depthwise uses vpdpwssd, which every AVX-512 VNNI / AMX CPU has)
VARIANT_OF_ISA = {"scalar": "baseline", "avx2": "avx2", "avxvnni": "avx2", "avx512vnni": "avx512",
                  "amx": "avx512"}

_lock = threading.Lock()


def runtime_source(files: list[Path]) -> str:
    """The runtime TU: the GEMM library source, then ``files`` (the shared runtime and the glue),
    then the kernels that instantiate the GEMM's loop nest again (dynamic int8 linear layers)."""
    return gemm.library_source() + "\n" + join_sources(files) + "\n" + dynamic.kernel_source()


def runtime_flags(isa: str, native_vnni: bool = True) -> list[str]:
    """Compiler flags of the runtime library a model using GEMM ``isa`` links against (models
    call native kernels only: the emulated ones, half the build time, are left out)."""
    return [*gemm.build_flags(native_vnni=native_vnni), "-DQC_NO_EMULATION", *VARIANT_FLAGS[VARIANT_OF_ISA[isa]]]


def runtime_name(isa: str) -> str:
    return f"qc_x86_rt_{VARIANT_OF_ISA[isa]}"


@functools.lru_cache(maxsize=None)
def _build(isa: str, source: str, extra: tuple) -> tuple[Path, tuple]:
    flags = (*runtime_flags(isa), *extra)
    try:
        return toolchain.build_shared_library(source, flags=flags, name=runtime_name(isa)), flags
    except toolchain.ToolchainError:
        if isa in ("avxvnni", "avx512vnni"):     # these need a compiler that knows VNNI
            raise
        flags = (*runtime_flags(isa, native_vnni=False), *extra)
        return toolchain.build_shared_library(source, flags=flags, name=runtime_name(isa)), flags


def runtime_library(isa: str, source: str, extra_flags: list[str]) -> tuple[Path, list[str]]:
    """(path of the runtime ``.so`` for models using GEMM ``isa``, the flags it was built with:
    :func:`runtime_flags` and ``extra_flags``, the target's settings); built on first use, then cached."""
    with _lock:
        path, flags = _build(isa, source, tuple(extra_flags))
        return path, list(flags)
