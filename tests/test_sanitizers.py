"""The sanitizer profile: the generated C and the runtime library built with ASan + UBSan
(``QCOMPILER_SANITIZE=1``, read by backends/toolchain.py, part of every cache key), run on
conformance cases and whole models, clean and bit-exact.

ctypes loads the libraries into Python, so ASan's runtime must be preloaded into a *new*
interpreter: each sanitized run is a child pytest process on tests/test_conformance.py with
``toolchain.sanitizer_env()``. -fno-sanitize-recover=all makes the first report abort the child.
The child lists the libraries it loaded (tests/sanitizer_plugin.py); every one must be a
sanitized build, so a run that silently used plain libraries fails.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import qcompiler
from qcompiler.backends import toolchain
from qcompiler.backends.toolchain import ToolchainError

TESTS = Path(__file__).resolve().parent
X86_OK, X86_WHY = qcompiler.available_targets()["x86"]
REPORTS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer")

# A few cases of every kind of step: big and 1-channel convolutions (im2col, depthwise), the
# K = 4096 saturation edge, elementwise ops, concatenation and pools, in both requant modes.
CONFORMANCE_CASES = [
    "test_large_conv2d[3-24-7-2-3-shape0-fp32-x86]",
    "test_large_conv2d[1-1-3-2-0-shape6-fixed_point-x86]",
    "test_extreme_operands_large_k[fixed_point-x86]",
    "test_elementwise[fp32-add_relu-x86]",
    "test_elementwise[fixed_point-mul-x86]",
    "test_elementwise[fp32-cat-x86]",
    "test_pools[fp32-x86]",
]


def sanitized_environment(report: Path | None = None) -> dict[str, str]:
    try:
        extra = toolchain.sanitizer_env()
    except ToolchainError as e:
        pytest.skip(str(e))
    env = {**os.environ, **extra, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    if report is not None:
        env["QC_SANITIZER_LOADED"] = str(report)
    return env


def run_sanitized_pytest(tmp_path: Path, *selection: str, timeout: int) -> int:
    """Run ``selection`` of tests/ in a sanitized child; returns how many passed."""
    if not X86_OK:
        pytest.skip(f"x86 target unavailable: {X86_WHY}")
    report = tmp_path / "loaded.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           "-p", "sanitizer_plugin", "-m", "", *selection],
                          cwd=TESTS.parent, env=sanitized_environment(report), capture_output=True, text=True,
                          timeout=timeout)
    output = proc.stdout + proc.stderr
    found = [r for r in REPORTS if r in output]
    assert proc.returncode == 0 and not found, f"sanitized run failed ({proc.returncode}, {found}):\n{output[-6000:]}"
    libraries = json.loads(report.read_text())
    plain = [lib for lib, flags in libraries.items() if "-fsanitize=address,undefined" not in flags]
    assert not plain, f"libraries built without sanitizers were loaded: {plain}"
    names = {Path(lib).name for lib in libraries}
    assert "libqc_model.so" in names and any(n.startswith("libqc_x86_rt_") for n in names), names
    return int(re.search(r"(\d+) passed", output).group(1))


def test_conformance_cases_sanitized(tmp_path):
    passed = run_sanitized_pytest(tmp_path, *(f"tests/test_conformance.py::{c}" for c in CONFORMANCE_CASES),
                                  timeout=600)
    assert passed == len(CONFORMANCE_CASES)


@pytest.mark.slow
def test_whole_models_sanitized(tmp_path):
    """ResNet-18 and MobileNetV2 (the zoo's, 64x64 inputs), every step sanitized."""
    assert run_sanitized_pytest(tmp_path, "tests/test_conformance.py::test_whole_models", "-k", "x86",
                                timeout=1800) == 2


@pytest.mark.slow
def test_conformance_suite_sanitized(tmp_path):
    """Every x86 conformance test, hypothesis examples included."""
    assert run_sanitized_pytest(tmp_path, "tests/test_conformance.py", "-k", "x86", timeout=3600) > 20


OP_FAMILY_SUITES = ["tests/test_ops_elementwise.py", "tests/test_ops_shapes.py", "tests/test_ops_transformer.py",
                    "tests/test_ops_reduce.py", "tests/test_ops_embedding.py"]


@pytest.mark.slow
def test_op_family_suites_sanitized(tmp_path):
    """The x86 tests of every op family's suite: lookups, shapes and broadcasts, QMatMul /
    QSoftmax / QLayerNorm, reductions, embeddings (and its out-of-range indices)."""
    assert run_sanitized_pytest(tmp_path, *OP_FAMILY_SUITES, "-k", "x86", timeout=3600) > 50


# -- the profile itself: it must catch what it is for, and refuse to be half on ------------------

BUGGY = r"""
#include <stdlib.h>
int heap_overflow(int n) { int *p = malloc(4 * n); p[n] = 1; int v = p[0]; free(p); return v; }
int signed_overflow(int a) { return a + 2147483647; }
"""
CALL = """
import ctypes
from qcompiler.backends import toolchain
lib = toolchain.load_library(toolchain.build_shared_library({source!r}, name="buggy"))
print("result", lib.{function}({argument}))
"""


@pytest.mark.parametrize("function, argument, report", [
    ("heap_overflow", 3, "ERROR: AddressSanitizer: heap-buffer-overflow"),
    ("signed_overflow", 5, "runtime error: signed integer overflow"),
])
def test_the_profile_catches_memory_errors_and_undefined_behaviour(tmp_path, function, argument, report):
    env = sanitized_environment()
    env["QCOMPILER_CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, "-c", CALL.format(source=BUGGY, function=function, argument=argument)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "result" not in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert report in proc.stderr and "buggy.c" in proc.stderr, proc.stderr[-3000:]  # -g: the line is named


def test_sanitized_library_is_refused_without_its_runtime(tmp_path, monkeypatch):
    sanitized_environment()  # skips where the compiler has no ASan runtime to link against
    monkeypatch.setenv("QCOMPILER_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(toolchain.SANITIZE_ENV, "1")
    lib = toolchain.build_shared_library("int one(void) { return 1; }\n", name="one")
    assert "-fsanitize=address,undefined" in json.loads((lib.parent / "manifest.json").read_text())["flags"]
    with pytest.raises(ToolchainError, match="LD_PRELOAD"):
        toolchain.load_library(lib)  # loading it would abort this interpreter
    monkeypatch.setenv(toolchain.SANITIZE_ENV, "asan")
    with pytest.raises(ToolchainError, match="set it to 1"):
        toolchain.build_shared_library("int one(void) { return 1; }\n", name="one")
