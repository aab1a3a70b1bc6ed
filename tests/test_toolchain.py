"""The build layer (backends/toolchain.py) and host CPU feature detection (backends/cpu.py)."""
from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import shutil
import stat
import subprocess
import time

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
