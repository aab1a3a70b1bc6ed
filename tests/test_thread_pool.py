"""The runtime's thread pool (backends/c_runtime/qc_thread_pool.h) is target-neutral: the same
source runs every chunk exactly once on the host and, cross-built, on aarch64 (under
qemu-aarch64 off an ARM host), through qc_runtime.h's parallel loop.
"""
import subprocess
from pathlib import Path

import pytest

from qcompiler.backends import toolchain

RUNTIME = Path(toolchain.__file__).resolve().parent / "c_runtime"

PROGRAM = r"""
#include <stdio.h>
#include "qc_thread_pool.h"
#include "qc_runtime.h"

static _Atomic int64_t hits[10007];
static _Atomic int helper_slots;

static void visit(const void *ctx, int64_t chunk, int slot)
{
    (void)ctx;
    atomic_fetch_add(&hits[chunk], 1);
    if (slot) atomic_fetch_add(&helper_slots, 1);
}

int main(void)
{
    for (int round = 0; round < 20; round++) QC_RT_PARALLEL_FOR(visit, NULL, 10007, 4);
    for (int64_t i = 0; i < 10007; i++)
        if (hits[i] != 20) { printf("chunk %lld ran %lld times\n", (long long)i, (long long)hits[i]); return 1; }
    printf("ok\n");
    return 0;
}
"""


@pytest.mark.parametrize("kind", ["cc", "aarch64"])
def test_every_chunk_runs_once_per_call(kind):
    try:
        exe = toolchain.build_executable(PROGRAM, flags=["-O2", "-pthread", f"-I{RUNTIME}",
                                                        *(["-static"] if kind == "aarch64" else [])],
                                         name="qc_pool_test", kind=kind)
        prefix = toolchain.runner(kind)
    except toolchain.ToolchainError as exc:
        pytest.skip(f"{kind} toolchain unavailable: {exc}")
    done = subprocess.run([*prefix, str(exe)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
