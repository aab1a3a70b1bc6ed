"""The build layer (backends/toolchain.py) and host CPU feature detection (backends/cpu.py)."""
from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import time
import warnings

import pytest

from qcompiler.backends import cpu, toolchain
from qcompiler.backends.toolchain import ToolchainError

ADD = "int add(int a, int b) { return a + b; }\n"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A private cache per test, and none of the user's toolchain overrides."""
    monkeypatch.setenv("QCOMPILER_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("QCOMPILER_CC", "QCOMPILER_CROSS_CC", cpu.ENV_VAR):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "cache" / "build"


def counting_compiler(tmp_path, delay=0.0):
    """A gcc wrapper that records each compilation (not identity queries) in ``count``."""
    count = tmp_path / "count"
    script = tmp_path / "counting-cc"
    script.write_text("#!/bin/sh\n"
                      f'case " $* " in *" -shared "*) echo x >> "{count}"; sleep {delay};; esac\n'
                      f'exec {shutil.which("gcc")} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, count


def compilations(count) -> int:
    return len(count.read_text().split()) if count.exists() else 0


def test_build_load_call(cache):
    lib = toolchain.build_shared_library(ADD, flags=toolchain.compile_flags(), name="add")
    assert lib.name == "libadd.so" and lib.is_relative_to(cache)
    assert (lib.parent / "add.c").read_text() == ADD  # kept for people to read
    manifest = json.loads((lib.parent / "manifest.json").read_text())
    assert manifest["key"] == lib.parent.name and manifest["library"]["size"] == lib.stat().st_size
    assert "-ffp-contract=off" in manifest["command"]
    assert toolchain.load_library(lib).add(2, 40) == 42


def test_hit_does_not_run_the_compiler(monkeypatch):
    first = toolchain.build_shared_library(ADD)

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"compiler invoked on a cache hit: {args}")
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    start = time.perf_counter()
    again = toolchain.build_shared_library(ADD)
    assert time.perf_counter() - start < 0.2
    assert again == first


def test_key_covers_source_flags_name_and_compiler(tmp_path, monkeypatch):
    base = toolchain.build_shared_library(ADD)
    assert toolchain.build_shared_library(ADD + "\n") != base
    assert toolchain.build_shared_library(ADD, flags=("-O1",)) != base
    assert toolchain.build_shared_library(ADD, name="other") != base
    monkeypatch.setenv("QCOMPILER_CC", str(counting_compiler(tmp_path)[0]))
    assert toolchain.build_shared_library(ADD) != base


def _truncate(lib):
    lib.write_bytes(lib.read_bytes()[: lib.stat().st_size // 2])


def _flip_byte(lib):
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated .so": _truncate,
    "flipped byte in .so": _flip_byte,
    "missing .so": lambda lib: lib.unlink(),
    "garbage manifest": lambda lib: (lib.parent / "manifest.json").write_text("{not json"),
    "manifest of another key": lambda lib: (lib.parent / "manifest.json").write_text(
        json.dumps({"format": toolchain.FORMAT_VERSION, "key": "0" * 64, "library": {"file": lib.name}})),
    "missing manifest": lambda lib: (lib.parent / "manifest.json").unlink(),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_entry_is_reported_and_rebuilt(corrupt, tmp_path, monkeypatch):
    cc, count = counting_compiler(tmp_path)
    monkeypatch.setenv("QCOMPILER_CC", str(cc))
    # Never loaded before corrupting: rewriting a mapped library would crash this process.
    lib = toolchain.build_shared_library(ADD)
    corrupt(lib)
    with pytest.warns(UserWarning, match=str(lib.parent)):
        rebuilt = toolchain.build_shared_library(ADD)
    assert rebuilt == lib and compilations(count) == 2
    assert toolchain._entry_problem(lib.parent, lib.parent.name, "qc") is None
    assert toolchain.load_library(rebuilt).add(1, 2) == 3
    assert not list(lib.parent.parent.glob(".tmp-*"))  # the bad entry went away in full


def test_leftovers_of_a_crashed_build_are_removed(cache):
    lib = toolchain.build_shared_library(ADD)
    key = lib.parent.name
    crashed = lib.parent.parent / f".tmp-{key}-crashed"
    crashed.mkdir()
    (crashed / "libqc.so").write_bytes(b"half")
    (lib.parent / "manifest.json").unlink()
    with pytest.warns(UserWarning):
        toolchain.build_shared_library(ADD)
    assert not crashed.exists()


def _build_in_child(cache_dir, cc, barrier, result_file):
    os.environ["QCOMPILER_CACHE_DIR"] = cache_dir
    os.environ["QCOMPILER_CC"] = cc
    toolchain.compiler_identity(toolchain.find_compiler())  # warm up, so both reach the build together
    barrier.wait()
    lib = toolchain.build_shared_library(ADD)
    result_file.write_text(f"{lib} {toolchain.load_library(lib).add(20, 22)}")


def test_concurrent_builds_of_one_key_compile_once(cache, tmp_path):
    cc, count = counting_compiler(tmp_path, delay=0.5)  # long enough for the two to overlap
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = [tmp_path / f"result{i}" for i in range(2)]
    procs = [ctx.Process(target=_build_in_child, args=(str(cache.parent), str(cc), barrier, r)) for r in results]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    outputs = {r.read_text() for r in results}
    assert len(outputs) == 1 and outputs.pop().endswith(" 42")
    assert compilations(count) == 1
    (entry,) = [p for p in cache.glob("??/*") if p.is_dir()]
    assert toolchain._entry_problem(entry, entry.name, "qc") is None
    assert not list(cache.glob("??/.tmp-*"))


def test_missing_compiler_override(monkeypatch):
    monkeypatch.setenv("QCOMPILER_CC", "/nonexistent/cc")
    with pytest.raises(ToolchainError, match="QCOMPILER_CC='/nonexistent/cc'"):
        toolchain.build_shared_library(ADD)


def test_no_compiler_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolchainError) as err:
        toolchain.find_compiler()
    assert "apt-get install gcc" in str(err.value) and "QCOMPILER_CC" in str(err.value)
    with pytest.raises(ToolchainError) as err:
        toolchain.find_compiler("aarch64")
    assert "aarch64-linux-gnu-gcc" in str(err.value) and "QCOMPILER_CROSS_CC" in str(err.value)
    with pytest.raises(ToolchainError, match="apt-get install binutils"):
        toolchain.disassemble(tmp_path / "libqc.so")


def test_cross_compiler_override(monkeypatch):
    monkeypatch.setenv("QCOMPILER_CROSS_CC", shutil.which("gcc"))  # lookup only; no cross gcc needed
    assert toolchain.find_compiler("aarch64") == os.path.abspath(shutil.which("gcc"))
    with pytest.raises(ToolchainError, match="unknown toolchain kind"):
        toolchain.find_compiler("sparc")


def test_compile_error_names_the_line_and_keeps_the_source(cache):
    bad = "int add(int a, int b) {\n    return a + ;\n}\n"
    with pytest.raises(ToolchainError) as err:
        toolchain.build_shared_library(bad, flags=("-O2",))
    message = str(err.value)
    assert "qc.c:2:" in message and "error:" in message  # the compiler's own diagnostic
    (kept,) = (cache / "failed").glob("*/qc.c")
    assert str(kept) in message and kept.read_text() == bad
    assert "-ffp-contract=off -O2" in message  # the command line, to reproduce
    assert not [p for p in cache.glob("??/*") if p.is_dir()]  # nothing published


def test_contract_breaking_flags_and_bad_names_are_refused():
    with pytest.raises(ToolchainError, match="numeric contract"):
        toolchain.build_shared_library(ADD, flags=("-O3", "-ffast-math"))
    with pytest.raises(ToolchainError, match="library name"):
        toolchain.build_shared_library(ADD, name="../evil")


def test_no_fma_contraction():
    # Requantization computes float(acc) * m + zp in two roundings; -mfma must not fuse them.
    src = "float requant(float a, float m, float z) { return a * m + z; }\n"
    lib = toolchain.build_shared_library(src, flags=toolchain.compile_flags("-mfma"))
    assert "vfmadd" not in toolchain.disassemble(lib)


def test_disassemble_vnni_build():
    # Compiled, never run: the host does not need VNNI.
    src = ("#include <immintrin.h>\n"
           "__m256i dot(__m256i acc, __m256i a, __m256i b) { return _mm256_dpbusd_epi32(acc, a, b); }\n")
    lib = toolchain.build_shared_library(src, flags=toolchain.compile_flags("-mavx512vnni", "-mavx512vl"))
    assert "vpdpbusd" in toolchain.disassemble(lib)


X86_CPUINFO = """\
processor\t: 0
model name\t: Some CPU
flags\t\t: fpu sse2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx_vnni sha_ni

processor\t: 1
model name\t: Some CPU
flags\t\t: fpu sse2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni sha_ni
"""
ARM_CPUINFO = """\
processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm asimddp i8mm
"""


def test_parse_cpuinfo():
    # avx_vnni is missing on processor 1, so the machine does not have it.
    assert cpu.parse_cpuinfo(X86_CPUINFO) == {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                                              "avx512_vnni"}
    assert cpu.parse_cpuinfo(ARM_CPUINFO) == {"neon", "neon_dot", "i8mm"}
    assert cpu.parse_cpuinfo("") == frozenset()


def test_env_restricts_features(monkeypatch):
    monkeypatch.setattr(cpu, "_host_cpuinfo", lambda: X86_CPUINFO)
    assert "avx512_vnni" in cpu.cpu_features()
    monkeypatch.setenv(cpu.ENV_VAR, "avx2, FMA,avx_vnni")  # avx_vnni absent: cannot be claimed
    assert cpu.cpu_features() == {"avx2", "fma"}
    monkeypatch.setenv(cpu.ENV_VAR, "")  # scalar path
    assert cpu.cpu_features() == frozenset()
    monkeypatch.setenv(cpu.ENV_VAR, "avx2,avx512vnni")
    with pytest.warns(UserWarning, match="avx512vnni"):
        assert cpu.cpu_features() == {"avx2"}


def test_host_features_are_known_names():
    assert cpu.cpu_features() <= cpu.KNOWN_FEATURES


# -- a library that hashes right but does not load; sources without the expected symbols ------


def _vouch_for(lib):
    """Rewrite the manifest so that it describes ``lib`` as it is now (consistent, but wrong)."""
    manifest_path = lib.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    size, digest = toolchain._file_digest(lib)
    manifest["library"].update(size=size, sha256=digest)
    manifest_path.write_text(json.dumps(manifest))


def test_entry_that_does_not_load_is_rebuilt_once(tmp_path, monkeypatch):
    cc, count = counting_compiler(tmp_path)
    monkeypatch.setenv("QCOMPILER_CC", str(cc))
    lib = toolchain.build_shared_library(ADD)
    lib.write_bytes(b"\x7fELF" + bytes(200))  # not loadable, yet the manifest will vouch for it
    _vouch_for(lib)
    assert toolchain.build_shared_library(ADD) == lib and compilations(count) == 1  # a consistent hit
    with pytest.warns(UserWarning, match="rebuilding its cache entry"):
        loaded = toolchain.load_library(lib)
    assert loaded.add(2, 3) == 5 and compilations(count) == 2
    assert toolchain._entry_problem(lib.parent, lib.parent.name, "qc") is None


def test_entry_that_does_not_load_and_cannot_be_rebuilt(tmp_path):
    lib = toolchain.build_shared_library(ADD)
    lib.write_bytes(bytes(100))
    _vouch_for(lib)
    (lib.parent / "qc.c").write_text("int add(int a, int b) { return a - b; }\n")  # not what the key says
    with pytest.warns(UserWarning), pytest.raises(ToolchainError, match="no longer hash to its key"):
        toolchain.load_library(lib)
    outside = tmp_path / "libother.so"       # no cache entry around it: nothing to rebuild from
    outside.write_bytes(bytes(100))
    with pytest.raises(ToolchainError, match=f"cannot load {outside}"):
        toolchain.load_library(outside)


def test_emptied_source_names_the_file_not_an_undefined_symbol():
    lib = toolchain.build_shared_library("", name="qc_model")  # an empty translation unit builds
    loaded = toolchain.load_library(lib)
    with pytest.raises(toolchain.MissingSymbolError) as err:
        loaded.qc_model_init
    message = str(err.value)
    assert "'qc_model_init'" in message and str(lib.parent / "qc_model.c") in message and "an empty file" in message
    assert "undefined symbol" not in message
    assert not hasattr(loaded, "qc_model_run")  # still an AttributeError for hasattr


def test_garbled_source_fails_to_build_naming_the_line(cache):
    with pytest.raises(ToolchainError) as err:
        toolchain.build_shared_library("int qc_model_init(const char *w, long n) { return w[n] ??? }\n",
                                       name="qc_model")
    assert "qc_model.c:1:" in str(err.value) and "source kept at" in str(err.value)


# -- a cache directory that cannot be written: fallback to a private temp cache ---------------


@pytest.fixture
def fallback(tmp_path, monkeypatch):
    """A private temp directory for the fallback cache."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return toolchain.fallback_cache_root()


def _unwritable_caches(tmp_path):
    file = tmp_path / "a-file"
    file.write_text("")
    yield "below a file", file / "cache"
    if os.geteuid() != 0:                    # root writes through permission bits
        ro = tmp_path / "read-only"
        ro.mkdir()
        ro.chmod(0o555)
        yield "read-only", ro


def test_unwritable_cache_falls_back_to_a_private_temp_dir(tmp_path, monkeypatch, fallback):
    cc, count = counting_compiler(tmp_path)
    monkeypatch.setenv("QCOMPILER_CC", str(cc))
    for what, root in _unwritable_caches(tmp_path):
        monkeypatch.setenv("QCOMPILER_CACHE_DIR", str(root))
        before = compilations(count)
        with pytest.warns(UserWarning, match=f"cache {root}/build cannot be written .*building in {fallback}"):
            lib = toolchain.build_shared_library(ADD + f"// {what}\n")
        assert lib.is_relative_to(fallback), what
        assert toolchain.load_library(lib).add(1, 1) == 2
        assert (fallback.parent.stat().st_mode & 0o777) == 0o700
        with warnings.catch_warnings():
            warnings.simplefilter("error")       # warned once: the root is remembered as unwritable
            toolchain.build_shared_library(ADD + f"// {what}\n")  # found in the fallback
            toolchain.build_shared_library(ADD + f"// {what} 2\n")
        assert compilations(count) == before + 2, what


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_cache_serves_its_entries(tmp_path, cache):
    lib = toolchain.build_shared_library(ADD)
    for path in [*cache.rglob("*"), cache]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert toolchain.build_shared_library(ADD) == lib
    finally:
        for path in [cache, *cache.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


def full_disk_compiler(tmp_path, full_below):
    """gcc, but failing as gcc does on a full disk when it writes below ``full_below``."""
    script = tmp_path / "full-disk-cc"
    script.write_text("#!/bin/sh\n"
                      f'case "$(pwd)" in "{full_below}"*) case " $* " in *" -shared "*)\n'
                      '  echo "/usr/bin/ld: final close failed: No space left on device" >&2; exit 1;; esac;; esac\n'
                      f'exec {shutil.which("gcc")} "$@"\n')
    script.chmod(0o755)
    return script


def test_full_cache_falls_back_then_says_both_are_full(tmp_path, monkeypatch, cache, fallback):
    monkeypatch.setenv("QCOMPILER_CC", str(full_disk_compiler(tmp_path, cache)))
    with pytest.warns(UserWarning, match="No space left on device"):
        lib = toolchain.build_shared_library(ADD)
    assert lib.is_relative_to(fallback) and toolchain.load_library(lib).add(3, 4) == 7
    assert not (cache / "failed").exists()     # not reported as a bad program
    monkeypatch.setenv("QCOMPILER_CC", str(full_disk_compiler(tmp_path, tmp_path)))  # everything full
    with pytest.raises(ToolchainError) as err:
        toolchain.build_shared_library(ADD + "\n")
    message = str(err.value)
    assert str(cache) in message and str(fallback) in message and "No space left on device" in message


def test_fallback_shared_with_other_users_is_refused(tmp_path, monkeypatch, fallback):
    monkeypatch.setenv("QCOMPILER_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    (tmp_path / "a-file").write_text("")
    fallback.parent.mkdir()
    fallback.parent.chmod(0o777)              # e.g. made by someone else in a shared /tmp
    with pytest.warns(UserWarning), pytest.raises(ToolchainError, match="writable by another user"):
        toolchain.build_shared_library(ADD)


# -- executables (build_executable) and how to run them (runner) -------------------------------

HELLO = '#include <stdio.h>\nint main(int argc, char **argv) { printf("hello %s\\n", argv[1]); return 0; }\n'


def counting_linker(tmp_path, cc):
    """``cc``, recording each invocation that writes an output (``-o``; not the identity queries)."""
    count = tmp_path / "count"
    script = tmp_path / f"counting-{os.path.basename(cc)}"
    script.write_text("#!/bin/sh\n"
                      f'case " $* " in *" -o "*) echo x >> "{count}";; esac\n'
                      f'exec {cc} "$@"\n')
    script.chmod(0o755)
    return script, count


def test_executable_builds_once_and_runs(tmp_path, monkeypatch, cache):
    cc, count = counting_linker(tmp_path, shutil.which("gcc"))
    monkeypatch.setenv("QCOMPILER_CC", str(cc))
    exe = toolchain.build_executable(HELLO, flags=toolchain.compile_flags(), name="hello")
    assert exe.name == "hello" and exe.is_relative_to(cache) and os.access(exe, os.X_OK)
    manifest = json.loads((exe.parent / "manifest.json").read_text())
    assert manifest["executable"]["size"] == exe.stat().st_size
    assert "-shared" not in manifest["command"] and "-ffp-contract=off" in manifest["command"]
    assert toolchain.build_executable(HELLO, flags=toolchain.compile_flags(), name="hello") == exe
    assert compilations(count) == 1
    proc = subprocess.run([*toolchain.runner("cc"), str(exe), "world"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "hello world\n"


def test_library_and_executable_of_one_source_are_separate_entries():
    source = HELLO + ADD
    lib = toolchain.build_shared_library(source, name="both")
    exe = toolchain.build_executable(source, name="both")
    assert lib.parent != exe.parent
    assert toolchain.build_shared_library(source, name="both") == lib   # both stay valid hits
    assert toolchain.load_library(lib).add(2, 3) == 5
    assert subprocess.run([str(exe), "x"], capture_output=True, text=True).stdout == "hello x\n"


@pytest.mark.parametrize("corrupt", [_truncate, _flip_byte, lambda exe: exe.unlink()],
                         ids=["truncated", "flipped byte", "missing"])
def test_corrupt_executable_is_reported_and_rebuilt(corrupt, tmp_path, monkeypatch):
    cc, count = counting_linker(tmp_path, shutil.which("gcc"))
    monkeypatch.setenv("QCOMPILER_CC", str(cc))
    exe = toolchain.build_executable(HELLO)
    corrupt(exe)
    with pytest.warns(UserWarning, match=str(exe.parent)):
        assert toolchain.build_executable(HELLO) == exe
    assert compilations(count) == 2
    assert subprocess.run([str(exe), "again"], capture_output=True, text=True).stdout == "hello again\n"


def test_executable_compile_error_names_the_file(cache):
    with pytest.raises(ToolchainError, match=r"building prog failed(.|\n)*prog\.c:1:"):
        toolchain.build_executable("int main(void) { return ??? }\n", name="prog")


def _aarch64_missing():
    missing = [t for t in ("aarch64-linux-gnu-gcc", "qemu-aarch64") if shutil.which(t) is None]
    return f"{' and '.join(missing)} not installed (gcc-aarch64-linux-gnu, qemu-user)" if missing else ""


@pytest.mark.skipif(bool(_aarch64_missing()), reason=_aarch64_missing())
def test_aarch64_executable_runs_through_the_runner(cache):
    source = ('#include <stdio.h>\n'
              'int main(void) {\n#ifdef __aarch64__\n puts("aarch64");\n#else\n puts("other");\n#endif\n'
              ' return 0; }\n')
    exe = toolchain.build_executable(source, flags=("-O2", "-static"), name="arch", kind="aarch64")
    prefix = toolchain.runner("aarch64")
    if platform.machine() not in ("aarch64", "arm64"):
        assert os.path.basename(prefix[0]) == "qemu-aarch64" and prefix[1:] == ["-cpu", "max"]
    proc = subprocess.run([*prefix, str(exe)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "aarch64\n", proc.stderr


@pytest.mark.skipif(platform.machine() in ("aarch64", "arm64"), reason="aarch64 runs natively here")
def test_runner_without_qemu_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv(toolchain.EMULATOR_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))               # nothing on PATH
    with pytest.raises(ToolchainError, match=r"qemu-aarch64(.|\n)*apt-get install qemu-user(.|\n)*QCOMPILER_QEMU"):
        toolchain.runner("aarch64")
    assert toolchain.runner("cc") == []                      # host programs need no emulator
    monkeypatch.setenv(toolchain.EMULATOR_ENV, str(tmp_path / "no-such-qemu"))
    with pytest.raises(ToolchainError, match="QCOMPILER_QEMU=.*no-such-qemu.* is not an executable"):
        toolchain.runner("aarch64")
    fake = tmp_path / "my-qemu"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv(toolchain.EMULATOR_ENV, str(fake))
    assert toolchain.runner("aarch64") == [str(fake), "-cpu", "max"]
    with pytest.raises(ToolchainError, match="unknown toolchain kind"):
        toolchain.runner("riscv")
