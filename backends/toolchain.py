"""C toolchain: find the compiler, build shared libraries cached by content hash, load them.

(Minimal first version; to be hardened: corrupt-entry detection, locking, compiler discovery.)
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence


class ToolchainError(RuntimeError):
    pass


def cache_root() -> Path:
    return Path(os.environ.get("QCOMPILER_CACHE_DIR", Path.home() / ".cache" / "qcompiler")) / "build"


def find_compiler() -> str:
    cc = os.environ.get("QCOMPILER_CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise ToolchainError("no C compiler found: install gcc (apt-get install gcc) or set QCOMPILER_CC")
    return cc


def build_shared_library(source: str, *, flags: Sequence[str] = (), name: str = "qc") -> Path:
    cc = find_compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([source, *flags, cc, version]).encode()).hexdigest()
    out = cache_root() / key[:2] / key / f"lib{name}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src = Path(tmp) / f"{name}.c"
        src.write_text(source)
        lib = Path(tmp) / f"lib{name}.so"
        proc = subprocess.run([cc, "-shared", "-fPIC", *flags, str(src), "-o", str(lib)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ToolchainError(f"{cc} failed on {src}:\n{proc.stderr}")
        os.replace(lib, out)
    return out


def load_library(path: Path) -> ctypes.CDLL:
    return ctypes.CDLL(str(path))
