"""C toolchain for code-generating backends (DESIGN.md §4 "build"): find a compiler, build
shared libraries into a content-addressed cache, load and disassemble them.

Cache entry: ``<cache_root>/<key[:2]>/<key>/`` holding ``lib<name>.so``, ``<name>.c`` (what was
built, for people to read) and ``manifest.json``. The key hashes the format version, source,
name, flags and compiler identity. An entry is written in a temporary directory and published
by one ``os.replace``, so nobody sees a half-written one; a per-key ``flock`` makes concurrent
builders of one key compile once; every hit re-hashes the .so against the manifest, so a
truncated or corrupt entry is reported and rebuilt.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

from . import cpu

FORMAT_VERSION = 1  # bump when the entry layout or the build command changes
# Always passed. -ffp-contract=off: the numeric contract forbids FMA contraction in requantization.
REQUIRED_FLAGS = ("-shared", "-fPIC", "-ffp-contract=off")
DEFAULT_FLAGS = ("-O3", "-fno-strict-aliasing")
# Flags that would break bit-exactness with the reference (they re-enable contraction or reassociate).
FORBIDDEN_FLAGS = ("-ffast-math", "-Ofast", "-ffp-contract=fast", "-ffp-contract=on")
BUILD_TIMEOUT_S = 900
_STDERR_LIMIT = 4000
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class ToolchainError(RuntimeError):
    pass


class _Kind(NamedTuple):
    env: str                    # variable that names the compiler explicitly
    candidates: tuple[str, ...]  # looked up on PATH otherwise
    install: str
    objdump: str
    objdump_install: str


_KINDS = {
    "cc": _Kind("QCOMPILER_CC", ("cc", "gcc", "clang"), "apt-get install gcc",
                "objdump", "apt-get install binutils"),
    "aarch64": _Kind("QCOMPILER_CROSS_CC", ("aarch64-linux-gnu-gcc",), "apt-get install gcc-aarch64-linux-gnu",
                     "aarch64-linux-gnu-objdump", "apt-get install binutils-aarch64-linux-gnu"),
}


class CompilerIdentity(NamedTuple):
    path: str
    version: str   # first line of --version
    machine: str   # -dumpmachine, the target triple


def cache_root() -> Path:
    return Path(os.environ.get("QCOMPILER_CACHE_DIR", Path.home() / ".cache" / "qcompiler")) / "build"


def compile_flags(*extra: str) -> tuple[str, ...]:
    """The usual flags for generated kernels, followed by ``extra`` (e.g. ``-mavx2``)."""
    return (*DEFAULT_FLAGS, *extra)


def _kind(kind: str) -> _Kind:
    try:
        return _KINDS[kind]
    except KeyError:
        raise ToolchainError(f"unknown toolchain kind {kind!r}; known: {sorted(_KINDS)}") from None


def find_compiler(kind: str = "cc") -> str:
    """Absolute path of the compiler for ``kind`` ("cc" for the host, "aarch64" for the cross compiler)."""
    spec = _kind(kind)
    override = os.environ.get(spec.env)
    if override:
        found = shutil.which(override)
        if not found:
            raise ToolchainError(f"{spec.env}={override!r} is not an executable compiler: "
                                 f"point it at one, or unset it to search PATH for {', '.join(spec.candidates)}")
        return os.path.abspath(found)
    for name in spec.candidates:
        if found := shutil.which(name):
            return os.path.abspath(found)
    raise ToolchainError(f"no {kind} compiler found (looked for {', '.join(spec.candidates)} on PATH): "
                         f"install one with `{spec.install}`, or set {spec.env}=/path/to/compiler")


def compiler_identity(cc: str) -> CompilerIdentity:
    """Path, version and target of ``cc``; asked once per process per compiler binary."""
    try:
        st = os.stat(cc)
    except OSError as e:
        raise ToolchainError(f"compiler {cc} is not accessible: {e}") from None
    # mtime and size in the cache key: an upgraded compiler at the same path is asked again.
    return _identity(cc, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=None)
def _identity(cc: str, _mtime_ns: int, _size: int) -> CompilerIdentity:
    def ask(flag: str) -> str:
        try:
            proc = subprocess.run([cc, flag], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ToolchainError(f"cannot run compiler {cc} {flag}: {e}") from None
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise ToolchainError(f"{cc} {flag} failed (exit {proc.returncode}): is it a C compiler?\n"
                                 f"{_trim(proc.stderr)}")
        return lines[0].strip()
    return CompilerIdentity(cc, ask("--version"), ask("-dumpmachine"))


def cache_key(source: str, flags: Sequence[str], identity: CompilerIdentity, name: str = "qc") -> str:
    payload = {"format": FORMAT_VERSION, "source": source, "name": name, "flags": list(flags),
               "compiler": identity._asdict()}
    if any("native" in f for f in flags):  # -march=native output depends on the host CPU too
        payload["host"] = cpu.host_signature()
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def build_shared_library(source: str, *, flags: Sequence[str] = (), name: str = "qc",
                         kind: str = "cc") -> Path:
    """Path of ``lib<name>.so`` built from ``source`` with ``flags``, compiled only on a cache miss.

    ``REQUIRED_FLAGS`` are always added; ``compile_flags()`` gives sensible ``flags``.
    """
    flags = tuple(flags)
    _check_request(flags, name)
    cc = find_compiler(kind)
    key = cache_key(source, flags, compiler_identity(cc), name)
    entry = cache_root() / key[:2] / key
    lib = entry / f"lib{name}.so"
    if _entry_problem(entry, key, name) is None:  # fast path: no lock, entries are immutable once published
        return lib
    entry.parent.mkdir(parents=True, exist_ok=True)
    with _locked(entry.parent / f"{key}.lock"):
        problem = _entry_problem(entry, key, name)
        if problem is None:  # another process built it while we waited
            return lib
        _remove_leftovers(entry.parent, key)  # only a lock holder writes them, so these are from crashes
        if entry.exists():
            warnings.warn(f"qcompiler build cache entry {entry} is invalid ({problem}); rebuilding it",
                          stacklevel=2)
            _discard(entry, key)
        _build_entry(source, flags, name, cc, key, entry)
    return lib


def _check_request(flags: tuple[str, ...], name: str) -> None:
    bad = [f for f in flags if f in FORBIDDEN_FLAGS]
    if bad:
        raise ToolchainError(f"flags {bad} break the numeric contract (no FMA contraction or "
                             f"reassociation; DESIGN.md §3); remove them")
    if not _NAME.fullmatch(name):
        raise ToolchainError(f"library name {name!r} must match {_NAME.pattern} (it becomes a file name)")


def _entry_problem(entry: Path, key: str, name: str) -> str | None:
    """None if ``entry`` is a complete, intact build of ``key``; else what is wrong with it."""
    if not entry.is_dir():
        return "missing"
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
        expected = manifest["library"]
        if manifest["format"] != FORMAT_VERSION or manifest["key"] != key or expected["file"] != f"lib{name}.so":
            return "manifest does not describe this build"
    except FileNotFoundError:
        return "no manifest.json"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable manifest.json: {type(e).__name__}: {e}"
    try:
        size, digest = _file_digest(entry / expected["file"])
    except OSError as e:
        return f"cannot read {expected['file']}: {e.strerror}"
    if size != expected.get("size"):
        return f"{expected['file']} is {size} bytes, manifest says {expected.get('size')}"
    if digest != expected.get("sha256"):
        return f"{expected['file']} sha256 differs from the manifest"
    return None


def _file_digest(path: Path) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # flock is released when the file closes, including when the holder dies.
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _remove_leftovers(parent: Path, key: str) -> None:
    for stale in parent.glob(f".tmp-{key}-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _discard(entry: Path, key: str) -> None:
    # Rename first so the bad entry vanishes in one step, then delete it at leisure.
    trash = entry.parent / f".tmp-{key}-discarded"
    os.replace(entry, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _build_entry(source: str, flags: tuple[str, ...], name: str, cc: str, key: str, entry: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=entry.parent))
    try:
        os.chmod(tmp, 0o755)
        src, lib = f"{name}.c", f"lib{name}.so"
        (tmp / src).write_text(source, encoding="utf-8")
        # Relative paths, run in tmp: diagnostics say "qc.c:3:5", and no temp path lands in the binary.
        command = [cc, *REQUIRED_FLAGS, *flags, src, "-o", lib]
        _compile(command, tmp, source, key, name)
        size, digest = _file_digest(tmp / lib)
        manifest = {"format": FORMAT_VERSION, "key": key, "compiler": compiler_identity(cc)._asdict(),
                    "flags": list(flags), "command": command,
                    "library": {"file": lib, "size": size, "sha256": digest},
                    "source": src, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            os.replace(tmp, entry)  # publish: the whole directory appears at once
        except OSError:
            # Where flock is a no-op (some network filesystems) another builder may have won the race.
            if _entry_problem(entry, key, name) is not None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op once published


def _compile(command: list[str], cwd: Path, source: str, key: str, name: str) -> None:
    try:
        proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        proc, failure = None, f"could not run the compiler: {e}"
    else:
        if proc.returncode == 0:
            return
        failure = f"compiler exited with status {proc.returncode}"
    kept = _keep_failed_source(source, key, name)
    rerun = [*command[:-3], str(kept), "-o", f"/tmp/lib{name}.so"]
    output = _trim(proc.stderr or proc.stdout) if proc else "(none)"
    raise ToolchainError(
        f"building lib{name}.so failed: {failure}\n"
        f"  source kept at: {kept}\n"
        f"  command (to reproduce): {shlex.join(rerun)}\n"
        f"  compiler output:\n{output}\n"
        "hint: an error in generated code is a qcompiler bug, please report it with the kept source; "
        "an unrecognized -m flag means this compiler is too old for that ISA.")


def _keep_failed_source(source: str, key: str, name: str) -> Path:
    kept = cache_root() / "failed" / key / f"{name}.c"
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(source, encoding="utf-8")
    return kept


def _trim(text: str, limit: int = _STDERR_LIMIT) -> str:
    text = text.strip()
    if len(text) <= limit:  # the first errors are the useful ones: keep the head
        return text
    return f"{text[:limit]}\n... [{len(text) - limit} more characters trimmed]"


def load_library(path: Path) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(str(path))
    except OSError as e:
        raise ToolchainError(f"cannot load {path}: {e} (built for another machine, or deleted?)") from None


def disassemble(path: Path, *, kind: str = "cc") -> str:
    """``objdump -d`` of a built library, e.g. to check that a VNNI build uses ``vpdpbusd``."""
    spec = _kind(kind)
    objdump = shutil.which(spec.objdump)
    if not objdump:
        raise ToolchainError(f"{spec.objdump} not found on PATH: install it with `{spec.objdump_install}`")
    proc = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolchainError(f"{objdump} -d {path} failed: {_trim(proc.stderr)}")
    return proc.stdout
