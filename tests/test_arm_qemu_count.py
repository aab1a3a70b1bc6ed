"""benchmarks/arm_qemu_count.py: executed-instruction counts of aarch64 programs under qemu.

A hand-written loop of known length (3 instructions per iteration + ret) must be counted
exactly, in its own group and as the difference of two whole-program totals; misuse (a failing
program, a PIE executable with groups, a group matching nothing) must raise CountError. Skips
when the cross compiler, qemu-aarch64 or the host compiler (for the plugin) is missing.
"""
import importlib.util
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("arm_qemu_count", ROOT / "benchmarks" / "arm_qemu_count.py")
qc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qc)

LOOP_C = r"""
#include <stdlib.h>
long qc_loop(long n);
/* exactly 3 n + 1 instructions for n >= 1 */
__asm__(".text\n.global qc_loop\n.type qc_loop, %function\nqc_loop:\n"
        "1:\n\tsubs x0, x0, #1\n\tadd x1, x1, #1\n\tb.ne 1b\n\tret\n.size qc_loop, .-qc_loop\n");
int main(int argc, char **argv)
{
    (void)argc;
    qc_loop(atol(argv[1]));
    return atoi(argv[2]);
}
"""


def _tools():
    try:
        cc = qc.toolchain.find_compiler("aarch64")
        qc.emulator()
        qc.build_plugin()
    except (qc.CountError, qc.toolchain.ToolchainError) as e:
        pytest.skip(f"instruction counting needs a cross compiler, qemu-aarch64 and a host compiler: {e}")
    return cc


@pytest.fixture(scope="module")
def loop_programs(tmp_path_factory):
    """(position-dependent static executable, static-pie one) of LOOP_C."""
    cc = _tools()
    d = tmp_path_factory.mktemp("qemu_count")
    (d / "loop.c").write_text(LOOP_C)
    exe, pie = d / "loop", d / "loop_pie"
    subprocess.run([cc, "-O2", "-static", "-no-pie", str(d / "loop.c"), "-o", str(exe)], check=True)
    built = subprocess.run([cc, "-O2", "-static-pie", str(d / "loop.c"), "-o", str(pie)], capture_output=True)
    return exe, (pie if built.returncode == 0 else None)


@pytest.mark.parametrize("n", [1, 1000, 250_000])
def test_known_loop_counted_exactly(loop_programs, n):
    exe, _ = loop_programs
    c = qc.count_by_symbols(exe, [str(n), "0"], {"loop": r"^qc_loop$"})
    assert c.groups == {"loop": 3 * n + 1}
    assert c.rest > 0 and c.total == c.rest + 3 * n + 1


def test_totals_differ_by_the_loop(loop_programs):
    exe, _ = loop_programs
    small, big = (qc.count_instructions(exe, [n, "0"]).total for n in ("100000", "400000"))   # same digits
    assert big - small == 3 * 300_000


def test_address_ranges_split_a_function(loop_programs):
    """Groups are plain address ranges: the loop's first 3 instructions vs its ret."""
    exe, _ = loop_programs
    (_, start, end), = qc.function_ranges(exe, r"^qc_loop$")
    assert end - start == 16
    c = qc.count_instructions(exe, ["500", "0"], {"body": [(start, start + 12)], "ret": [(start + 12, end)]})
    assert c.groups == {"body": 1500, "ret": 1}


def test_failing_program_raises(loop_programs):
    exe, _ = loop_programs
    with pytest.raises(qc.CountError, match="exited 3"):
        qc.count_instructions(exe, ["10", "3"])


def test_group_without_match_raises(loop_programs):
    exe, _ = loop_programs
    with pytest.raises(qc.CountError, match="no function"):
        qc.count_by_symbols(exe, ["10", "0"], {"gemm": r"^no_such_function$"})


def test_pie_refused_for_groups(loop_programs):
    _, pie = loop_programs
    if pie is None:
        pytest.skip("the cross toolchain cannot link -static-pie")
    with pytest.raises(qc.CountError, match="position-independent"):
        qc.count_by_symbols(pie, ["10", "0"], {"loop": r"^qc_loop$"})
    assert qc.count_instructions(pie, ["10", "0"]).total > 30   # the total needs no symbols


def test_resnet18_shapes():
    """torchvision resnet18 at 224x224: 20 convolutions + fc, 1.814 G multiply-accumulates."""
    shapes = qc.resnet18_gemms()
    assert len(shapes) == 21
    assert sum(m * n * k for _, m, n, k in shapes) == 1_814_073_344
    assert shapes[0] == ("conv1", 112 * 112, 64, 7 * 7 * 3) and shapes[-1] == ("fc", 1, 1000, 512)


@pytest.mark.slow
def test_resnet18_driver_counts_gemm_code():
    """The per-level driver runs (small input) and its GEMM code is found and counted."""
    _tools()
    rows = qc.resnet18_counts(["neon", "dotprod"], size=32)
    for r in rows:
        assert r["gemm"] > 0 and r["pack_weights"] > 0 and r["rest"] > 0
        # no instruction of the level does more than 8 (smull/smlal2) / 16 (sdot) MACs, and the
        # kernel is far from one instruction per MAC
        assert r["macs"] / {"neon": 8, "dotprod": 16}[r["level"]] < r["gemm"] < r["macs"]
    assert rows[1]["gemm"] < rows[0]["gemm"]   # sdot: more MACs per instruction than smull/smlal2


def test_missing_emulator_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("QCOMPILER_QEMU", "/nonexistent/qemu-aarch64")
    with pytest.raises(qc.CountError, match="QCOMPILER_QEMU"):
        qc.emulator()
