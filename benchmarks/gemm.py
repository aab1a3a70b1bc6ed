"""int8 GEMM throughput and exactness: qcompiler's x86 kernels vs PyTorch and ONNX Runtime.

    python benchmarks/gemm.py [--threads 1 2] [--squares 256 512 1024 2048]
                              [--budget 1.0] [--markdown docs/benchmarks.md]

Problem: C = requant((A − za)·Wᵀ) with A uint8 [M, K] uniform over the full range [0, 255]
(za = 128), W int8 [N, K] uniform over [−127, 127] (zero point 0, per tensor), output uint8
(fp32 requantization, output scale covering ±4σ of the accumulator). GOP/s counts 2·M·N·K.

Kernels (each called through its Python entry point, so per-call overhead is included):
* ours: ``qcompiler.backends.x86.gemm.gemm`` per ISA (``auto`` is the CPUID choice);
* ``torch.ops.quantized.linear`` with the fbgemm and the onednn engine (prepacked weights);
* ONNX Runtime ``QLinearMatMul`` (weights as an initializer, so ORT prepacks them), if
  ``onnxruntime`` and ``onnx`` are installed;
* fp32 ``torch.matmul`` (MKL), the float baseline.
Timing: kernels take turns in blocks of back-to-back calls, the first of each block untimed
(each library's own thread pool is awake, as in a loop; slow drifts of the shared machine's
load hit all kernels alike), median of the repeats, threads set per run (torch.set_num_threads, ORT intra_op_num_threads, ours
``threads=``).

Exactness, on the same full-range data: |Δq| of each kernel's uint8 output against the
exact reference (exact int32 accumulator, then the fp32 requantization); and, where the
int32 accumulator is observable, its max |Δ| (ours; ORT ``MatMulInteger``; fp32 matmul).
A second pass runs the peers in a subprocess with ``FBGEMM_ENABLE_INSTRUCTIONS=AVX2`` and
``ONEDNN_MAX_CPU_ISA=AVX2``: the code an AVX2-only CPU runs, where vpmaddubsw saturates.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence

import torch
from markdown_section import replace_section  # benchmarks/ is sys.path[0] when run as a script

from qcompiler.backends import toolchain  # noqa: E402
from qcompiler.backends.x86 import gemm as qg

SECTION = "## int8 GEMM (issue 3)"
TRANSFORMER = [(128, 768, 3072), (128, 3072, 768), (512, 768, 768)]       # (M, K, N)
SX, SW, ZA, ZO = 0.02, 0.01, 128, 128
PEERS = ("fbgemm", "onednn", "ort")


# ---------------------------------------------------------------------------------------
# Problem data and the exact reference
# ---------------------------------------------------------------------------------------

class Problem:
    def __init__(self, m: int, k: int, n: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.m, self.k, self.n = m, k, n
        self.a = torch.randint(0, 256, (m, k), generator=gen, dtype=torch.int64).to(torch.uint8)
        self.w = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int64).to(torch.int8)
        # std of (a − 128)·w products: sqrt(E[(a−128)²]·E[w²]) ≈ 73.9 · 73.6
        sigma = (k ** 0.5) * 73.9 * 73.6
        self.so = float(torch.tensor(SX * SW * 4.0 * sigma / 127.0, dtype=torch.float32))
        self.mult = torch.tensor(SX * SW / self.so, dtype=torch.float64).to(torch.float32)
        self._acc = None

    @property
    def ops(self) -> float:
        return 2.0 * self.m * self.n * self.k

    def exact_acc(self) -> torch.Tensor:
        """Σ (a − za)·w exactly (float64 on integers below 2^53), as int64."""
        if self._acc is None:
            self._acc = ((self.a.to(torch.float64) - ZA) @ self.w.to(torch.float64).t()).to(torch.int64)
        return self._acc

    def exact_q(self) -> torch.Tensor:
        y = self.exact_acc().to(torch.float32) * self.mult
        return torch.clamp(torch.round(y).to(torch.int64) + ZO, 0, 255)

    def label(self) -> str:
        return f"{self.m}×{self.k}×{self.n}"


# ---------------------------------------------------------------------------------------
# Kernels: each factory returns (run, output_q) or None if unavailable
# ---------------------------------------------------------------------------------------

def ours(isa: str):
    def make(p: Problem, threads: int):
        packed = qg.pack_weights(p.w, None, ZA, isa)
        rq = qg.make_requant(packed, "fp32", multiplier=p.mult, zero_point=ZO)
        run = lambda: qg.gemm(p.a, packed, rq, isa=isa, threads=threads)          # noqa: E731
        acc = lambda: qg.gemm(p.a, packed, isa=isa, threads=threads)               # noqa: E731
        return run, (lambda: run().to(torch.int64)), acc
    return make


def torch_engine(engine: str):
    def make(p: Problem, threads: int):
        if engine not in torch.backends.quantized.supported_engines:
            return None
        torch.backends.quantized.engine = engine
        xq = torch._make_per_tensor_quantized_tensor(p.a, SX, ZA)
        wq = torch._make_per_tensor_quantized_tensor(p.w, SW, 0)
        packed = torch.ops.quantized.linear_prepack(wq, None)

        def run():
            torch.backends.quantized.engine = engine
            return torch.ops.quantized.linear(xq, packed, p.so, ZO)
        return run, (lambda: run().int_repr().to(torch.int64)), None
    return make


def _ort_session(model, threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_qlinear(p: Problem, threads: int):
    try:
        import numpy as np
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    inits = [numpy_helper.from_array(np.array(SX, np.float32), "a_scale"),
             numpy_helper.from_array(np.array(ZA, np.uint8), "a_zp"),
             numpy_helper.from_array(np.ascontiguousarray(p.w.numpy().T), "b"),
             numpy_helper.from_array(np.array(SW, np.float32), "b_scale"),
             numpy_helper.from_array(np.array(0, np.int8), "b_zp"),
             numpy_helper.from_array(np.array(p.so, np.float32), "y_scale"),
             numpy_helper.from_array(np.array(ZO, np.uint8), "y_zp")]
    node = helper.make_node("QLinearMatMul", ["a", "a_scale", "a_zp", "b", "b_scale", "b_zp", "y_scale", "y_zp"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, [p.m, p.k])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [p.m, p.n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    sess = _ort_session(model, threads)
    a_np = p.a.numpy()
    run = lambda: sess.run(None, {"a": a_np})[0]                                 # noqa: E731

    def acc():
        inits_i = [numpy_helper.from_array(np.ascontiguousarray(p.w.numpy().T), "b"),
                   numpy_helper.from_array(np.array(ZA, np.uint8), "a_zp"),
                   numpy_helper.from_array(np.array(0, np.int8), "b_zp")]
        node_i = helper.make_node("MatMulInteger", ["a", "b", "a_zp", "b_zp"], ["y"])
        graph_i = helper.make_graph([node_i], "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, [p.m, p.k])],
                                    [helper.make_tensor_value_info("y", TensorProto.INT32, [p.m, p.n])], inits_i)
        model_i = helper.make_model(graph_i, opset_imports=[helper.make_opsetid("", 13)])
        model_i.ir_version = min(model_i.ir_version, 9)
        return torch.from_numpy(_ort_session(model_i, threads).run(None, {"a": a_np})[0])
    return run, (lambda: torch.from_numpy(run()).to(torch.int64)), acc


def fp32_matmul(p: Problem, threads: int):
    af = p.a.to(torch.float32) - ZA
    wt = p.w.to(torch.float32).t().contiguous()
    run = lambda: torch.matmul(af, wt)                                             # noqa: E731
    return run, None, run


def kernel_table(isas: Sequence[str], peers: Sequence[str]) -> Dict[str, Callable]:
    table: Dict[str, Callable] = {f"ours[{isa}]": ours(isa) for isa in isas}
    if "fbgemm" in peers:
        table["fbgemm"] = torch_engine("fbgemm")
    if "onednn" in peers:
        table["onednn"] = torch_engine("onednn")
    if "ort" in peers:
        table["ort"] = ort_qlinear
    table["fp32"] = fp32_matmul
    return table


# ---------------------------------------------------------------------------------------
# Timing and errors
# ---------------------------------------------------------------------------------------

def time_round_robin(runs: Dict[str, Callable], budget: float, min_reps: int = 3, max_reps: int = 30,
                     block: int = 3, settle: float = 0.02) -> Dict[str, float]:
    """Median seconds per call of each run. Kernels take turns in blocks of ``block``
    back-to-back calls, of which the first is not timed: every library is measured with
    its own thread pool awake (as in a loop of calls), while slow drifts of the shared
    machine's load hit all kernels alike. Before each block the process sleeps ``settle``
    seconds, so the previous library's spinning threads (OpenMP, ONNX Runtime spin for
    milliseconds after a call) have gone idle and do not take the cores from the next."""
    first = {}
    for name, run in runs.items():
        run()                                           # warm up (packing caches, thread pools)
        t = time.perf_counter()
        run()
        first[name] = time.perf_counter() - t
    reps = {name: max(min_reps, min(max_reps, int(budget / max(t, 1e-6)))) for name, t in first.items()}
    samples: Dict[str, List[float]] = {name: [] for name in runs}
    while any(len(samples[n]) < reps[n] for n in runs):
        for name, run in runs.items():
            if len(samples[name]) >= reps[name]:
                continue
            time.sleep(settle)
            run()
            for _ in range(block - 1):
                t = time.perf_counter()
                run()
                samples[name].append(time.perf_counter() - t)
    return {name: statistics.median(s) for name, s in samples.items()}


def errors(p: Problem, made: Dict[str, tuple]) -> Dict[str, dict]:
    exact_q, exact_acc = p.exact_q(), p.exact_acc()
    out = {}
    for name, (_, q_fn, acc_fn) in made.items():
        e = {}
        if q_fn is not None:
            d = (q_fn() - exact_q).abs()
            e["dq_max"] = int(d.max())
            e["dq_gt1"] = float((d > 1).double().mean())
        if acc_fn is not None:
            acc = acc_fn()
            e["dacc_max"] = float((acc.to(torch.float64) - exact_acc.to(torch.float64)).abs().max())
        out[name] = e
    return out


# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------

def _fmt(x: Optional[float], digits: int = 0) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def speed_table(rows: List[dict], names: List[str], auto: str) -> str:
    int8_peers = [n for n in names if n in PEERS]
    head = ["shape M×K×N", "threads", f"ours auto (= {auto})"] + [n for n in names if n != f"ours[{auto}]"]
    head += ["ours / best int8 peer", "ours / fp32"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---", "---:"] + ["---:"] * (len(head) - 2)) + " |"]
    for r in rows:
        g = r["gops"]
        cells = [r["shape"], str(r["threads"]), _fmt(g.get(f"ours[{auto}]"))]
        cells += [_fmt(g.get(n)) for n in names if n != f"ours[{auto}]"]
        best = max((g[n] for n in int8_peers if g.get(n)), default=None)
        mine = g.get(f"ours[{auto}]")
        cells.append(f"{mine / best:.2f}×" if best and mine else "–")
        cells.append(f"{mine / g['fp32']:.2f}×" if g.get("fp32") and mine else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def error_table(err_rows: List[dict], names: List[str]) -> str:
    head = ["shape M×K×N"] + names
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] + ["---:"] * len(names)) + " |"]
    for r in err_rows:
        cells = [r["shape"]]
        for n in names:
            e = r["errors"].get(n)
            if not e:
                cells.append("–")
                continue
            parts = []
            if "dacc_max" in e:
                parts.append(f"acc {e['dacc_max']:.0f}")
            if "dq_max" in e:
                parts.append(f"q {e['dq_max']} ({100 * e['dq_gt1']:.1f}% >1)")
            cells.append(", ".join(parts))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Environment, markdown
# ---------------------------------------------------------------------------------------

def cpu_line() -> str:
    model, flags = platform.processor(), set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model in ("", "x86_64"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    keep = [f for f in ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{model}, {os.cpu_count()} logical CPUs, flags: {' '.join(keep)}"


def versions_line() -> str:
    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    try:
        import onnxruntime
        parts.append(f"onnxruntime {onnxruntime.__version__}")
    except ImportError:
        parts.append("onnxruntime not installed")
    cc = subprocess.run([toolchain.find_compiler(), "--version"], capture_output=True, text=True).stdout
    parts.append(cc.splitlines()[0] if cc else "cc ?")
    return ", ".join(parts)


def write_section(path: str, text: str) -> None:
    replace_section(path, SECTION, text)


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--squares", type=int, nargs="*", default=[256, 512, 1024, 2048])
    p.add_argument("--transformer", action=argparse.BooleanOptionalAction, default=True,
                   help=f"also the shapes (M, K, N) in {TRANSFORMER}")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--isas", nargs="+", default=None, help="our ISAs to time (default: all native ones here)")
    p.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS))
    p.add_argument("--budget", type=float, default=1.0, help="seconds of repeats per kernel and row")
    p.add_argument("--scalar-max-ops", type=float, default=2.0 * 512**3,
                   help="skip the scalar kernel above this many ops")
    p.add_argument("--no-forced-avx2", action="store_true",
                   help="skip the error pass with the peers forced to their AVX2 code")
    p.add_argument("--markdown", metavar="PATH", default=None)
    p.add_argument("--errors-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def shapes_of(args) -> List[tuple]:
    shapes = [(s, s, s) for s in args.squares]
    if args.transformer:
        shapes += TRANSFORMER
    return shapes


def run_errors_only(args) -> List[dict]:
    """The exactness pass alone (also what the forced-AVX2 subprocess runs)."""
    isas = args.isas or ["avx2"]
    table = kernel_table(isas, args.peers)
    rows = []
    for (m, k, n) in shapes_of(args):
        p = Problem(m, k, n)
        made = {}
        for name, factory in table.items():
            with contextlib.redirect_stderr(io.StringIO()):
                r = factory(p, max(args.threads))
            if r is not None:
                made[name] = r
        rows.append({"shape": p.label(), "errors": errors(p, made)})
    return rows


def forced_avx2_errors(args) -> Optional[List[dict]]:
    env = dict(os.environ, FBGEMM_ENABLE_INSTRUCTIONS="AVX2", ONEDNN_MAX_CPU_ISA="AVX2")
    cmd = [sys.executable, os.path.abspath(__file__), "--errors-only", "--json", "--isas", "avx2",
           "--threads", str(max(args.threads)), "--squares", "1024", "--no-transformer",
           "--peers", *[p for p in args.peers if p != "ort"]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"forced-AVX2 pass failed:\n{proc.stderr}", file=sys.stderr)
        return None
    return json.loads(proc.stdout)


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.errors_only:
        rows = run_errors_only(args)
        print(json.dumps(rows) if args.json else rows)
        return 0

    command = "python " + " ".join(shlex.quote(a) for a in ([sys.argv[0]] + list(sys.argv[1:] if argv is None else argv)))
    auto = qg.best_isa()
    isas = args.isas or [i for i in qg.available_isas() if not i.endswith("_emu")]
    table = kernel_table(isas, args.peers)
    load_before = os.getloadavg()
    rows, err_rows = [], []
    for (m, k, n) in shapes_of(args):
        p = Problem(m, k, n)
        for threads in args.threads:
            torch.set_num_threads(threads)
            made = {}
            for name, factory in table.items():
                if name == "ours[scalar]" and p.ops > args.scalar_max_ops:
                    continue
                with contextlib.redirect_stderr(io.StringIO()):
                    r = factory(p, threads)
                if r is not None:
                    made[name] = r
            secs = time_round_robin({name: r[0] for name, r in made.items()}, args.budget)
            gops = {name: p.ops / s / 1e9 for name, s in secs.items()}
            rows.append({"shape": p.label(), "threads": threads, "gops": gops})
            print(f"{p.label():>16} t={threads}: " + "  ".join(f"{k} {v:.0f}" for k, v in gops.items()), flush=True)
            if threads == max(args.threads):
                err_rows.append({"shape": p.label(), "errors": errors(p, made)})
    load_after = os.getloadavg()
    names = list(table)
    speed = speed_table(rows, names, auto)
    err = error_table(err_rows, names)
    forced = None if args.no_forced_avx2 else forced_avx2_errors(args)
    forced_names = ["ours[avx2]"] + [n for n in ("fbgemm", "onednn") if n in args.peers]
    parts = [
        SECTION, "",
        "C = requant((A − 128)·Wᵀ), A uint8 uniform over [0, 255], W int8 uniform over [−127, 127], uint8 "
        "output (fp32 requantization). GOP/s = 2·M·N·K / median time of one call through each library's "
        "Python entry point; kernels take turns in blocks of 3 back-to-back calls (the first untimed, so "
        "each library's thread pool is awake), each block after a 20 ms pause (so no other library's "
        "threads still spin on the cores). `ours[isa]`: qcompiler.backends.x86 "
        f"(auto picks `{auto}` here); fbgemm / onednn: `torch.ops.quantized.linear` with that engine; "
        "ort: ONNX Runtime `QLinearMatMul`; fp32: `torch.matmul` (MKL) on float32.",
        "",
        speed, "",
        f"Exactness on the same data ({max(args.threads)} threads): `acc` = max |Δ| of the int32 accumulator "
        "against the exact one (ours: `requant=None`; ort: `MatMulInteger`; fp32: the float product); "
        "`q` = max |Δ| of the uint8 output against the exact reference (exact accumulator, then fp32 "
        "requantization), with the share of outputs off by more than one step (one step can come from "
        "another rounding of the requantization; more cannot).",
        "",
        err, "",
    ]
    if forced:
        parts += ["Peers forced to their AVX2 code (`FBGEMM_ENABLE_INSTRUCTIONS=AVX2`, `ONEDNN_MAX_CPU_ISA=AVX2`; "
                  "what every CPU without VNNI runs), full-range data as above; ours: the AVX2 kernel:", "",
                  error_table(forced, forced_names), ""]
    parts += [
        f"- machine: {platform.platform()}, CPU: {cpu_line()}",
        f"- load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f} — the machine is "
        "shared; absolute numbers move by ±10–20 % between runs, ratios less",
        f"- {versions_line()}",
        f"- our build flags: `{' '.join(qg.library().flags[:6])}`, blocking: "
        + ", ".join(f"{f} {b.mr}×{b.nr} (KR {b.kr})" for f, b in qg.BLOCKING.items()),
        f"- command: `{command}`", "",
    ]
    text = "\n".join(parts)
    print()
    print(text)
    if args.markdown:
        write_section(args.markdown, text)
        print(f"wrote section '{SECTION}' to {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
