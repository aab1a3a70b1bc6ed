"""The x86 runtime library: the shared C runtime (``backends/c_runtime``) + the int8 GEMM
(``kernels/``, via :func:`gemm.library_source`) + the glue that calls it, as ONE translation
unit built once per ISA variant and cached by content hash (``backends.toolchain``).

A model's generated C is then small (calls only) and links against this library, so a
cold model compile takes about a second and the 8 s GEMM build happens once per machine.
Variants differ only in the ``-m`` flags the portable kernels are vectorized with.
"""
from __future__ import annotations

import functools
import re
import threading
from pathlib import Path

from .. import toolchain
from . import gemm

C_RUNTIME_DIR = Path(__file__).resolve().parent.parent / "c_runtime"
GLUE_DIR = Path(__file__).resolve().parent / "runtime"
#: files of the runtime TU after the GEMM source, in order
#: the runtime's op families beside qc_runtime.c (header, source), each its own file
FAMILIES = ("elementwise", "shapes", "transformer", "reduce")
FAMILY_HEADERS = tuple(C_RUNTIME_DIR / f"qc_rt_{f}.h" for f in FAMILIES)
RUNTIME_FILES = (C_RUNTIME_DIR / "qc_runtime.h", C_RUNTIME_DIR / "qc_runtime.c",
                 *(p for f in FAMILIES for p in (C_RUNTIME_DIR / f"qc_rt_{f}.h", C_RUNTIME_DIR / f"qc_rt_{f}.c")),
                 GLUE_DIR / "qc_x86_gemm_call.h", GLUE_DIR / "qc_x86_gemm_call.c")
#: headers a generated model includes (copied into bundles)
MODEL_HEADERS = (C_RUNTIME_DIR / "qc_runtime.h", *FAMILY_HEADERS, GLUE_DIR / "qc_x86_gemm_call.h")

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

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
_lock = threading.Lock()


def runtime_source() -> str:
    """The runtime TU: the GEMM library source, then our files with local includes dropped
    (each file is already in the unit, in dependency order)."""
    parts = [gemm.library_source()]
    for path in RUNTIME_FILES:
        lines = [line for line in path.read_text().splitlines() if not _INCLUDE.match(line)]
        # the #line keeps diagnostics pointing at our file, not at the last GEMM file
        parts.append(f'#line 1 "{path.name}"\n' + "\n".join(lines) + "\n")
    return "\n".join(parts)


def runtime_flags(isa: str, native_vnni: bool = True) -> list[str]:
    """Compiler flags of the runtime library a model using GEMM ``isa`` links against (models
    call native kernels only: the emulated ones, half the build time, are left out)."""
    return [*gemm.build_flags(native_vnni=native_vnni), "-DQC_NO_EMULATION", *VARIANT_FLAGS[VARIANT_OF_ISA[isa]]]


def runtime_name(isa: str) -> str:
    return f"qc_x86_rt_{VARIANT_OF_ISA[isa]}"


@functools.lru_cache(maxsize=None)
def _build(isa: str) -> tuple[Path, tuple]:
    source = runtime_source()
    flags = runtime_flags(isa)
    try:
        return toolchain.build_shared_library(source, flags=flags, name=runtime_name(isa)), tuple(flags)
    except toolchain.ToolchainError:
        if isa in ("avxvnni", "avx512vnni"):     # these need a compiler that knows VNNI
            raise
        flags = runtime_flags(isa, native_vnni=False)
        return toolchain.build_shared_library(source, flags=flags, name=runtime_name(isa)), tuple(flags)


def runtime_library(isa: str) -> tuple[Path, list[str]]:
    """(path of the runtime ``.so`` for models using GEMM ``isa``, the flags it was built with);
    built on first use, then cached."""
    with _lock:
        path, flags = _build(isa)
        return path, list(flags)
