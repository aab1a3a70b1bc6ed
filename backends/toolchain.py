"""C toolchain for code-generating backends (DESIGN.md §4 "build"): find a compiler, build
shared libraries and executables into a content-addressed cache, load and disassemble them, and
say how to run an executable built for another architecture (``runner``: qemu-user).

Cache entry: ``<cache_root>/<key[:2]>/<key>/`` holding the artifact (``lib<name>.so`` or the
executable ``<name>``), ``<name>.c`` (what was built, for people to read) and ``manifest.json``.
The key hashes the format version, artifact type, source, name, flags and compiler identity.
An entry is written in a temporary directory and published by one ``os.replace``, so nobody
sees a half-written one; a per-key ``flock`` makes concurrent builders of one key compile once;
every hit re-hashes the artifact against the manifest, so a
truncated or corrupt entry is reported and rebuilt, and a library that hashes right but does not
load (``load_library``) is rebuilt once from the source and flags its entry keeps.

A cache directory that cannot be written (read-only, full, not a directory) is not fatal: the
build goes to a private fallback cache in the temp directory (``fallback_cache_root()``), with a
warning naming both; only when that fails too is it an error.

``QCOMPILER_SANITIZE=1`` adds ``SANITIZER_FLAGS`` (ASan + UBSan) to every build, runtime and
models alike (they are part of the cache key); such libraries load only in a process started
with ``sanitizer_env()`` (libasan preloaded), which ``load_library`` checks.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import json
import os
import platform
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
CONTRACT_FLAGS = ("-ffp-contract=off",)
LIBRARY_FLAGS = ("-shared", "-fPIC")
REQUIRED_FLAGS = (*LIBRARY_FLAGS, *CONTRACT_FLAGS)  # for shared libraries
DEFAULT_FLAGS = ("-O3", "-fno-strict-aliasing")
# Flags that would break bit-exactness with the reference (they re-enable contraction or reassociate).
FORBIDDEN_FLAGS = ("-ffast-math", "-Ofast", "-ffp-contract=fast", "-ffp-contract=on")
BUILD_TIMEOUT_S = 900
SANITIZE_ENV = "QCOMPILER_SANITIZE"
# -fno-sanitize-recover: the first UB report aborts, so a test cannot pass over one. -O0 (after
# the caller's -O): instrumented -O3 builds the runtime in minutes, -O0 in ~20 s, and checks the
# same loads and stores (the kernels' vector code is explicit intrinsics at any -O).
SANITIZER_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
                   "-g", "-O0")
# What a compiler prints when it cannot write its output for lack of room or permission (the
# cache directory, not the program, is at fault then).
_UNWRITABLE_MESSAGES = tuple(os.strerror(e) for e in (errno.ENOSPC, errno.EDQUOT, errno.EROFS))
_STDERR_LIMIT = 4000
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class ToolchainError(RuntimeError):
    pass


class MissingSymbolError(ToolchainError, AttributeError):
    """A loaded library lacks a symbol its caller needs (an AttributeError too, so ``hasattr``
    on a library keeps working)."""


class _Unwritable(Exception):
    """The cache directory cannot hold a new entry (read-only, full, not a directory)."""


_unwritable_roots: dict[Path, str] = {}  # cache roots found unwritable in this process, and why


class _Kind(NamedTuple):
    env: str                    # variable that names the compiler explicitly
    candidates: tuple[str, ...]  # looked up on PATH otherwise
    install: str
    objdump: str
    objdump_install: str
    native_on: tuple[str, ...] = ()   # host machines (platform.machine()) that run its executables; () = any
    emulator: tuple[str, ...] = ()    # otherwise: user-mode emulator command and its options


_KINDS = {
    "cc": _Kind("QCOMPILER_CC", ("cc", "gcc", "clang"), "apt-get install gcc",
                "objdump", "apt-get install binutils"),
    # -cpu max: every ARMv8/v9 extension, so each NEON level (dotprod, i8mm) runs on any host.
    "aarch64": _Kind("QCOMPILER_CROSS_CC", ("aarch64-linux-gnu-gcc",), "apt-get install gcc-aarch64-linux-gnu",
                     "aarch64-linux-gnu-objdump", "apt-get install binutils-aarch64-linux-gnu",
                     ("aarch64", "arm64"), ("qemu-aarch64", "-cpu", "max")),
}
EMULATOR_ENV = "QCOMPILER_QEMU"


class _Artifact(NamedTuple):
    type: str                     # "library", "executable" or "object": in the cache key and the manifest
    link_flags: tuple[str, ...]   # before the caller's flags
    pattern: str                  # file name, from the build's name

    def file(self, name: str) -> str:
        return self.pattern.format(name)


_LIBRARY = _Artifact("library", LIBRARY_FLAGS, "lib{}.so")
_EXECUTABLE = _Artifact("executable", (), "{}")
_OBJECT = _Artifact("object", ("-c",), "{}.o")


class CompilerIdentity(NamedTuple):
    path: str
    version: str   # first line of --version
    machine: str   # -dumpmachine, the target triple


def cache_root() -> Path:
    return Path(os.environ.get("QCOMPILER_CACHE_DIR", Path.home() / ".cache" / "qcompiler")) / "build"


def fallback_cache_root() -> Path:
    """Where builds go when ``cache_root()`` cannot be written: private to this user."""
    return Path(tempfile.gettempdir()) / f"qcompiler-{os.getuid()}" / "build"


def sanitizer_flags() -> tuple[str, ...]:
    """``SANITIZER_FLAGS`` when ``$QCOMPILER_SANITIZE`` is on, else nothing."""
    value = os.environ.get(SANITIZE_ENV, "").strip().lower()
    if value in ("", "0", "no", "false", "off"):
        return ()
    if value in ("1", "yes", "true", "on"):
        return SANITIZER_FLAGS
    raise ToolchainError(f"{SANITIZE_ENV}={value!r}: set it to 1 for ASan+UBSan builds, or 0")


def sanitizer_env(kind: str = "cc") -> dict[str, str]:
    """Environment variables for a process that loads sanitized libraries (add them to
    ``os.environ`` of a *new* process): ASan must be loaded before the interpreter's own
    allocations, so its runtime is preloaded; leak checking is off (CPython does not free
    everything at exit); the first error aborts with a stack trace."""
    cc = find_compiler(kind)
    proc = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True)
    libasan = proc.stdout.strip()
    if proc.returncode != 0 or not os.path.isabs(libasan) or not os.path.exists(libasan):
        raise ToolchainError(f"{cc} has no AddressSanitizer runtime (libasan.so): install it "
                             "(`apt-get install libasan8` or the one matching your gcc)")
    return {SANITIZE_ENV: "1", "LD_PRELOAD": libasan,
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:halt_on_error=1",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


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
    # on a host of the kind's machine (an arm64 box) its native compiler does too
    candidates = (*spec.candidates, *(("cc", "gcc") if platform.machine().lower() in spec.native_on else ()))
    for name in candidates:
        if found := shutil.which(name):
            return os.path.abspath(found)
    raise ToolchainError(f"no {kind} compiler found (looked for {', '.join(candidates)} on PATH): "
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


def cache_key(source: str, flags: Sequence[str], identity: CompilerIdentity, name: str = "qc",
              artifact: str = "library") -> str:
    payload = {"format": FORMAT_VERSION, "artifact": artifact, "source": source, "name": name,
               "flags": list(flags), "compiler": identity._asdict()}
    if any("native" in f for f in flags):  # -march=native output depends on the host CPU too
        payload["host"] = cpu.host_signature()
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def build_shared_library(source: str, *, flags: Sequence[str] = (), name: str = "qc",
                         kind: str = "cc") -> Path:
    """Path of ``lib<name>.so`` built from ``source`` with ``flags``, compiled only on a cache miss.

    ``REQUIRED_FLAGS`` are always added, and ``sanitizer_flags()`` after ``flags``;
    ``compile_flags()`` gives sensible ``flags``.
    """
    return _build(_LIBRARY, source, flags, name, kind)


def build_executable(source: str, *, flags: Sequence[str] = (), name: str = "qc", kind: str = "cc") -> Path:
    """Path of the executable ``<name>`` built from ``source`` with ``flags``, compiled only on a
    cache miss; run it with ``[*runner(kind), path, ...]``. Same cache, checks and fallback as
    :func:`build_shared_library`; ``CONTRACT_FLAGS`` are always added (not ``-shared``/``-fPIC``),
    ``-static`` is the caller's choice (a cross-built program under qemu-user needs it, or a sysroot)."""
    return _build(_EXECUTABLE, source, flags, name, kind)


def build_object(source: str, *, flags: Sequence[str] = (), name: str = "qc", kind: str = "cc") -> Path:
    """Path of the object file ``<name>.o`` compiled from ``source`` with ``flags`` (cached as
    the other artifacts): a runtime built once and linked into many executables."""
    return _build(_OBJECT, source, flags, name, kind)


def _build(artifact: _Artifact, source: str, flags: Sequence[str], name: str, kind: str) -> Path:
    flags = (*flags, *sanitizer_flags())
    _check_request(flags, name, artifact)
    cc = find_compiler(kind)
    key = cache_key(source, flags, compiler_identity(cc), name, artifact.type)
    root = cache_root()
    reason = _unwritable_roots.get(root)
    if reason is None:
        try:
            return _build_in(root, artifact, source, flags, name, kind, cc, key)
        except _Unwritable as e:
            reason = str(e)
        if root != fallback_cache_root():
            _unwritable_roots[root] = reason
            warnings.warn(f"qcompiler build cache {root} cannot be written ({reason}); building in "
                          f"{fallback_cache_root()} instead, for the rest of this process (set "
                          "QCOMPILER_CACHE_DIR to a writable directory to keep builds)", stacklevel=3)
    elif _entry_problem(root / key[:2] / key, key, name, artifact) is None:  # a read-only cache still serves its entries
        return root / key[:2] / key / artifact.file(name)
    fallback = fallback_cache_root()
    if fallback == root:
        raise ToolchainError(f"cannot write the build cache {root}: {reason}")
    try:
        return _build_in(fallback, artifact, source, flags, name, kind, cc, key)
    except _Unwritable as e:
        raise ToolchainError(f"cannot write the build cache {root} ({reason}) nor the fallback {fallback} "
                             f"({e}): free some space, or set QCOMPILER_CACHE_DIR to a writable "
                             "directory") from None


def _build_in(root: Path, artifact: _Artifact, source: str, flags: tuple[str, ...], name: str, kind: str,
              cc: str, key: str) -> Path:
    if root == fallback_cache_root():
        _make_private(root.parent)
    entry = root / key[:2] / key
    built = entry / artifact.file(name)
    if _entry_problem(entry, key, name, artifact) is None:  # fast path: no lock, entries are immutable once published
        return built
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with _locked(entry.parent / f"{key}.lock"):
            problem = _entry_problem(entry, key, name, artifact)
            if problem is None:  # another process built it while we waited
                return built
            _remove_leftovers(entry.parent, key)  # only a lock holder writes them, so these are from crashes
            if entry.exists():
                warnings.warn(f"qcompiler build cache entry {entry} is invalid ({problem}); rebuilding it",
                              stacklevel=4)
                _discard(entry, key)
            _build_entry(artifact, source, flags, name, kind, cc, key, entry)
    except OSError as e:  # the compiler's own failures are ToolchainErrors: this is the file system
        raise _Unwritable(f"{type(e).__name__}: {e}") from None
    return built


def _make_private(top: Path) -> None:
    """The fallback lives in a shared temp directory: use it only if nobody else can write it
    (another user could otherwise plant libraries for us to load)."""
    try:
        top.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = top.stat()
    except OSError as e:
        raise _Unwritable(f"{type(e).__name__}: {e}") from None
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise _Unwritable(f"{top} is owned or writable by another user")


def _check_request(flags: tuple[str, ...], name: str, artifact: _Artifact) -> None:
    bad = [f for f in flags if f in FORBIDDEN_FLAGS]
    if bad:
        raise ToolchainError(f"flags {bad} break the numeric contract (no FMA contraction or "
                             f"reassociation; DESIGN.md §3); remove them")
    if not _NAME.fullmatch(name):
        raise ToolchainError(f"{artifact.type} name {name!r} must match {_NAME.pattern} (it becomes a file name)")


def _entry_problem(entry: Path, key: str, name: str, artifact: _Artifact = _LIBRARY) -> str | None:
    """None if ``entry`` is a complete, intact build of ``key``; else what is wrong with it."""
    if not entry.is_dir():
        return "missing"
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
        expected = manifest[artifact.type]
        if (manifest["format"] != FORMAT_VERSION or manifest["key"] != key
                or expected["file"] != artifact.file(name)):
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


def _build_entry(artifact: _Artifact, source: str, flags: tuple[str, ...], name: str, kind: str, cc: str,
                 key: str, entry: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=entry.parent))
    try:
        os.chmod(tmp, 0o755)
        src, out = f"{name}.c", artifact.file(name)
        (tmp / src).write_text(source, encoding="utf-8")
        # Relative paths, run in tmp: diagnostics say "qc.c:3:5", and no temp path lands in the binary.
        command = [cc, *artifact.link_flags, *CONTRACT_FLAGS, *flags, src, "-o", out]
        _compile(command, tmp, source, key, name, entry.parent.parent)
        size, digest = _file_digest(tmp / out)
        manifest = {"format": FORMAT_VERSION, "key": key, "compiler": compiler_identity(cc)._asdict(),
                    "kind": kind, "flags": list(flags), "command": command,
                    artifact.type: {"file": out, "size": size, "sha256": digest},
                    "source": src, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            os.replace(tmp, entry)  # publish: the whole directory appears at once
        except OSError:
            # Where flock is a no-op (some network filesystems) another builder may have won the race.
            if _entry_problem(entry, key, name, artifact) is not None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op once published


def _compile(command: list[str], cwd: Path, source: str, key: str, name: str, root: Path) -> None:
    try:
        proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        proc, failure = None, f"could not run the compiler: {e}"
    else:
        if proc.returncode == 0:
            return
        failure = f"compiler exited with status {proc.returncode}"
        full = [line for line in proc.stderr.splitlines() if any(m in line for m in _UNWRITABLE_MESSAGES)]
        if full:
            raise _Unwritable(f"the compiler could not write its output: {full[0].strip()}")
    kept = _keep_failed_source(source, key, name, root)
    out = command[-1]
    rerun = [*command[:-3], str(kept), "-o", f"/tmp/{out}"]
    output = _trim(proc.stderr or proc.stdout) if proc else "(none)"
    raise ToolchainError(
        f"building {out} failed: {failure}\n"
        f"  source kept at: {kept}\n"
        f"  command (to reproduce): {shlex.join(rerun)}\n"
        f"  compiler output:\n{output}\n"
        "hint: an error in generated code is a qcompiler bug, please report it with the kept source; "
        "an unrecognized -m flag means this compiler is too old for that ISA.")


def _keep_failed_source(source: str, key: str, name: str, root: Path) -> Path:
    for base in (root, fallback_cache_root()):
        kept = base / "failed" / key / f"{name}.c"
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(source, encoding="utf-8")
            return kept
        except OSError:
            continue
    return Path("(not kept: no writable cache directory)")


def _trim(text: str, limit: int = _STDERR_LIMIT) -> str:
    text = text.strip()
    if len(text) <= limit:  # the first errors are the useful ones: keep the head
        return text
    return f"{text[:limit]}\n... [{len(text) - limit} more characters trimmed]"


class _CheckedLibrary(ctypes.CDLL):
    """A CDLL whose missing symbols are reported with the library and the source it came from
    (an emptied or garbled generated source builds, and then lacks every entry point)."""

    def __getitem__(self, symbol):
        try:
            return super().__getitem__(symbol)
        except AttributeError:
            path = Path(self._name)
            raise MissingSymbolError(f"{path} has no symbol {symbol!r}: {_describe_source(path)} does not "
                                     "define it (emptied or garbled? regenerate it)") from None


def _describe_source(lib: Path) -> str:
    source = lib.parent / _read_manifest(lib).get("source", "")
    if not source.is_file():
        return "its source"
    size = source.stat().st_size
    return f"its source {source} ({'an empty file' if size == 0 else f'{size} bytes'})"


def _read_manifest(lib: Path) -> dict:
    try:
        manifest = json.loads((lib.parent / "manifest.json").read_text())
        return manifest if isinstance(manifest, dict) and manifest.get("library", {}).get("file") == lib.name else {}
    except (OSError, ValueError, AttributeError):
        return {}


def load_library(path: Path) -> ctypes.CDLL:
    """Load a library built by :func:`build_shared_library`. A cache entry that does not load
    (its manifest vouched for a broken file) is rebuilt once from the source and flags it keeps."""
    path = Path(path)
    manifest = _read_manifest(path)
    if any(f.startswith("-fsanitize=address") for f in manifest.get("flags", ())) and not _asan_loaded():
        raise ToolchainError(f"{path} was built with AddressSanitizer ({SANITIZE_ENV}=1) and loads only in a "
                             "process started with its runtime preloaded: run it with the variables of "
                             "qcompiler.backends.toolchain.sanitizer_env() (LD_PRELOAD=<libasan.so>)")
    try:
        return _CheckedLibrary(str(path))
    except OSError as e:
        failure = e
    if not manifest:
        raise ToolchainError(f"cannot load {path}: {failure} (built for another machine, or deleted?)")
    warnings.warn(f"cannot load {path} ({failure}); rebuilding its cache entry {path.parent}", stacklevel=2)
    _rebuild(path, manifest)
    try:
        return _CheckedLibrary(str(path))
    except OSError as e:
        raise ToolchainError(f"cannot load {path} even after rebuilding it: {e}") from None


def _asan_loaded() -> bool:
    try:
        ctypes.CDLL(None)["__asan_init"]
        return True
    except AttributeError:
        return False


def _rebuild(lib: Path, manifest: dict) -> None:
    """Build the entry holding ``lib`` again, in place, from its kept source and flags."""
    entry, name = lib.parent, lib.name[len("lib"):-len(".so")]
    try:
        source = (entry / manifest["source"]).read_text(encoding="utf-8")
        flags, kind = tuple(manifest["flags"]), manifest.get("kind", "cc")
    except (OSError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ToolchainError(f"cannot load {lib}, nor rebuild it: its entry's source or manifest is "
                             f"unreadable ({e}); delete {entry}") from None
    cc = find_compiler(kind)
    key = cache_key(source, flags, compiler_identity(cc), name)
    if key != entry.name or manifest.get("key") != key:
        raise ToolchainError(f"cannot load {lib}, nor rebuild it: its kept source and flags no longer hash to "
                             f"its key (edited, or another compiler now); delete {entry}")
    try:
        with _locked(entry.parent / f"{key}.lock"):
            try:            # another process may have rebuilt it while we waited
                _CheckedLibrary(str(lib))
                return
            except OSError:
                pass
            _remove_leftovers(entry.parent, key)
            _discard(entry, key)
            _build_entry(_LIBRARY, source, flags, name, kind, cc, key, entry)
    except OSError as e:
        raise ToolchainError(f"cannot load {lib}, nor rebuild it in place: {type(e).__name__}: {e}") from None


def runner(kind: str = "cc") -> list[str]:
    """Command prefix that runs an executable built for ``kind`` on this host: ``[]`` natively,
    ``[qemu-aarch64, -cpu, max]`` for "aarch64" elsewhere (``$QCOMPILER_QEMU`` names the emulator)."""
    spec = _kind(kind)
    if not spec.native_on or platform.machine().lower() in spec.native_on:
        return []
    emulator, *options = spec.emulator
    override = os.environ.get(EMULATOR_ENV)
    if override:
        found = shutil.which(override)
        if not found:
            raise ToolchainError(f"{EMULATOR_ENV}={override!r} is not an executable: point it at {emulator}, "
                                 f"or unset it to search PATH")
    elif not (found := shutil.which(emulator)):
        raise ToolchainError(f"{kind} programs need {emulator} on this {platform.machine()} host and it is not "
                             f"on PATH: install it with `apt-get install qemu-user`, or set "
                             f"{EMULATOR_ENV}=/path/to/{emulator}")
    return [os.path.abspath(found), *options]


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
