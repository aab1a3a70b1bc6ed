"""Transformer op micro-benchmark: qcompiler's x86 kernels for QMatMul, QSoftmax and QLayerNorm
against torch's float eager ops at ViT-tiny and BERT-base attention shapes.

    python benchmarks/transformer_ops.py [--threads 1 2] [--rounds 5] [--budget 0.2]
                                         [--cases vit_qk vit_av ...] [--markdown docs/benchmarks.md]

Ours: the runtime library a compiled model links against (``X86Backend().build_runtime(choose_isa())``),
its kernels called through ctypes on prepared uint8 buffers exactly as generated code calls
them: a matmul is ``qc_rt_matmul_pack_b`` (b centred into panels, every call) then
``qc_rt_matmul``; QKᵀ reads the key tensor transposed in place (sk = 1, sn = head dim), as the
emitter does for ``q @ k.transpose(-2, -1)``. Before timing, each output is checked to equal the
reference op (transformer_ops.QMatMul / QSoftmax / QLayerNorm) bit for bit.
Torch: float32 eager (``q @ k.transpose(-2, -1)``, ``softmax(-1)``, ``F.layer_norm``).
Timing: the two paths take turns over ``--rounds`` rounds (each round: a burst of calls per path
for budget/rounds seconds, first call untimed, median call); a path's time is the median of its
rounds, so a burst of load from other tenants of a shared machine hits both alike.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from qcompiler.backends.x86 import X86Backend, choose_isa
from qcompiler.core.integer_ops import Requant, real_multiplier
from qcompiler.core.qtypes import QParams, qtype
from qcompiler.core.transformer_ops import SOFTMAX_RECIP_BITS, QLayerNorm, QMatMul, QSoftmax

SECTION = "## Transformer ops: kernels vs torch float (issue 10)"
U8 = qtype("uint8")
#: name -> (kind, shape): matmul [B, H, M, K] x [B, H, K, N] (qk: b is a transposed key),
#: softmax over the last dim, layer_norm over the last dim
CASES = {
    "vit_qk": ("matmul_qk", (1, 3, 197, 64, 197)),
    "vit_av": ("matmul", (1, 3, 197, 197, 64)),
    "bert_qk": ("matmul_qk", (1, 12, 128, 64, 128)),
    "bert_av": ("matmul", (1, 12, 128, 128, 64)),
    "vit_softmax": ("softmax", (1, 3, 197, 197)),
    "bert_softmax": ("softmax", (1, 12, 128, 128)),
    "vit_layernorm": ("layer_norm", (1, 197, 192)),
    "layernorm_384": ("layer_norm", (1, 197, 384)),
    "bert_layernorm": ("layer_norm", (1, 128, 768)),
}


class CRq(ctypes.Structure):
    _fields_ = [("mode", ctypes.c_int32), ("mult", ctypes.c_void_p), ("m0", ctypes.c_void_p),
                ("shift", ctypes.c_void_p), ("zp", ctypes.c_int32), ("qmin", ctypes.c_int32),
                ("qmax", ctypes.c_int32)]


def _p(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


_I64, _I32 = ctypes.c_int64, ctypes.c_int32


def _qp(scale: float, zp: int) -> QParams:
    return QParams(torch.tensor(scale), torch.tensor(zp), U8)


class Case:
    """One op at one shape: ``ours(threads)`` / ``torch_fn()`` closures over prepared buffers."""

    def __init__(self, lib: ctypes.CDLL, kind: str, shape: tuple, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.lib, self.kind, self.shape = lib, kind, shape
        self._keep: list = []
        getattr(self, f"_prepare_{kind.split('_qk')[0]}")(gen)

    # -- matmul ------------------------------------------------------------------------
    def _prepare_matmul(self, gen):
        b_, h, m, k, n = self.shape
        qa, qb, qo = _qp(0.05, 120), _qp(0.04, 131), _qp(2.0, 128)
        self.op = QMatMul(qa, qb, qo, Requant.make(real_multiplier(qa.scale, qb.scale, out=qo), qo, "fp32"))
        a = torch.randint(0, 256, (b_, h, m, k), dtype=torch.uint8, generator=gen)
        if self.kind == "matmul_qk":       # b = key^T, the key [B, H, N, K] read transposed in place
            key = torch.randint(0, 256, (b_, h, n, k), dtype=torch.uint8, generator=gen)
            b, sk, sn = key.transpose(-2, -1), 1, k
        else:
            b = torch.randint(0, 256, (b_, h, k, n), dtype=torch.uint8, generator=gen)
            key, sk, sn = b, n, 1
        nb = b_ * h
        boff = torch.arange(nb, dtype=torch.int64) * k * n
        aoff = torch.arange(nb, dtype=torch.int64) * m * k
        bi = torch.arange(nb, dtype=torch.int32)
        panels = -(-n // 16)
        bp = torch.empty(nb * panels * 16 * ((k + 1) // 2) * 2, dtype=torch.int16)
        y = torch.empty(b_, h, m, n, dtype=torch.uint8)
        mult = torch.full((min(n, 256),), float(self.op.requant.multiplier), dtype=torch.float32)
        rq = CRq(1, mult.data_ptr(), None, None, self.op.requant.zero_point, 0, 255)
        self._keep += [a, key, boff, aoff, bi, bp, y, mult, rq]
        lib = self.lib

        def ours(threads: int):
            lib.qc_rt_matmul_pack_b(_p(key), _p(boff), _p(bp), _I64(nb), _I64(k), _I64(n), _I64(sk), _I64(sn),
                                    _I32(131), threads)
            lib.qc_rt_matmul(_p(a), _p(aoff), _I64(k), _I64(1), _p(bp), _p(bi), _p(y), _I64(nb), _I64(m), _I64(k),
                             _I64(n), _I32(120), ctypes.byref(rq), threads)
            return y

        fa, fkey = torch.randn(b_, h, m, k, generator=gen), torch.randn(*key.shape, generator=gen)
        self.ours, self.expected = ours, lambda: self.op(a, b)
        self.torch_fn = (lambda: fa @ fkey.transpose(-2, -1)) if self.kind == "matmul_qk" else (lambda: fa @ fkey)

    # -- softmax -----------------------------------------------------------------------
    def _prepare_softmax(self, gen):
        self.op = QSoftmax(_qp(0.08, 200), _qp(1 / 255, 0), -1)
        x = torch.randint(0, 256, self.shape, dtype=torch.uint8, generator=gen)
        y = torch.empty_like(x)
        rows, length = x.numel() // self.shape[-1], self.shape[-1]
        lut = torch.zeros(256, dtype=torch.int64)
        lut[:self.op.lut.numel()] = self.op.lut
        self._keep += [x, y, lut]
        lib, sh = self.lib, self.op.out_shift + SOFTMAX_RECIP_BITS

        def ours(threads: int):
            lib.qc_rt_softmax(_p(x), _p(y), _I64(rows), _I64(length), _I64(1), _p(lut), _I64(self.op.out_mult),
                              _I32(sh), _I32(0), _I32(0), _I32(255), threads)
            return y

        fx_ = torch.randn(*self.shape, generator=gen)
        self.ours, self.expected, self.torch_fn = ours, lambda: self.op(x), lambda: torch.softmax(fx_, -1)

    # -- layer_norm --------------------------------------------------------------------
    def _prepare_layer_norm(self, gen):
        d = self.shape[-1]
        gamma, beta = torch.rand(d, generator=gen) + 0.5, torch.randn(d, generator=gen) * 0.2
        self.op = QLayerNorm(_qp(0.05, 128), _qp(0.03, 128), (d,), gamma, beta, 1e-6)
        x = (torch.randn(*self.shape, generator=gen) * 40 + 128).round().clamp(0, 255).to(torch.uint8)
        y = torch.empty_like(x)
        g, b = self.op.gain.contiguous(), self.op.offset.contiguous()
        self._keep += [x, y, g, b]
        lib, rows = self.lib, x.numel() // d

        def ours(threads: int):
            lib.qc_rt_layer_norm(_p(x), _p(y), _I64(rows), _I64(d), _I32(128), ctypes.c_float(float(self.op.eps_q)),
                                 _p(g), _p(b), _I32(128), _I32(0), _I32(255), threads)
            return y

        fx_ = torch.randn(*self.shape, generator=gen)
        self.ours, self.expected = ours, lambda: self.op(x)
        self.torch_fn = lambda: F.layer_norm(fx_, (d,), gamma, beta, 1e-6)


def _burst_ms(fn: Callable, seconds: float) -> float:
    fn()                                    # untimed: pools awake, caches warm
    times, end = [], time.perf_counter() + seconds
    while True:
        t = time.perf_counter()
        fn()
        now = time.perf_counter()
        times.append(now - t)
        if now >= end and len(times) >= 3:
            return statistics.median(times) * 1e3


def measure(case: Case, threads: int, rounds: int, budget: float) -> Dict[str, float]:
    torch.set_num_threads(threads)
    paths = {"ours": lambda: case.ours(threads), "torch": case.torch_fn}
    samples: Dict[str, List[float]] = {p: [] for p in paths}
    with torch.no_grad():
        for r in range(rounds):
            order = list(paths) if r % 2 == 0 else list(reversed(paths))
            for p in order:
                samples[p].append(_burst_ms(paths[p], budget / rounds / len(paths)))
    return {p: statistics.median(s) for p, s in samples.items()}


def section_text(rows: List[dict], args, command: str, isa: str) -> str:
    lines = [SECTION, "",
             "| case | shape | threads | ours (ms) | torch fp32 (ms) | torch / ours |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['shape']} | {r['threads']} | {r['ours']:.3f} | {r['torch']:.3f} | "
                     f"{r['torch'] / r['ours']:.2f} |")
    lines += ["",
              f"- machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} logical CPUs; our kernels' ISA: {isa}",
              f"- python {platform.python_version()}, torch {torch.__version__}",
              f"- command: `{command}`",
              "- ours = the runtime kernels as a compiled model calls them (a matmul includes packing b); "
              "every output checked bit-exact against the reference op first. Shapes: matmul "
              "[B, H, M, K] x [B, H, K, N] (qk: b = keyᵀ read in place), softmax/LayerNorm over the last dim."]
    return "\n".join(lines) + "\n"


def replace_section(path: str, text: str) -> None:
    doc = open(path).read() if os.path.exists(path) else ""
    start = doc.find(SECTION)
    if start < 0:
        doc = doc.rstrip("\n") + "\n\n" + text
    else:
        end = doc.find("\n## ", start + len(SECTION))
        doc = doc[:start] + text + (doc[end + 1:] if end >= 0 else "")
    with open(path, "w") as f:
        f.write(doc)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median round counts)")
    p.add_argument("--budget", type=float, default=0.4, help="seconds of timing per case and thread count")
    p.add_argument("--markdown", metavar="PATH", help="write the results as a section of this file")
    args = p.parse_args(argv)
    isa = choose_isa()
    lib = ctypes.CDLL(str(X86Backend().build_runtime(isa)))
    rows = []
    for name in args.cases:
        kind, shape = CASES[name]
        case = Case(lib, kind, shape)
        if not torch.equal(case.ours(1), case.expected()):
            raise SystemExit(f"{name}: our kernel differs from the reference op")
        for t in args.threads:
            times = measure(case, t, args.rounds, args.budget)
            label = (f"{list(shape[:4])} x {list(shape[:2]) + [shape[3], shape[4]]}" if kind.startswith("matmul")
                     else str(list(shape)))
            rows.append({"case": name, "shape": label, "threads": t, **times})
            print(f"{name:15s} {label:40s} threads={t}  ours {times['ours']:.3f} ms  torch {times['torch']:.3f} ms"
                  f"  torch/ours {times['torch'] / times['ours']:.2f}", flush=True)
    if args.markdown:
        command = "python benchmarks/transformer_ops.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        replace_section(args.markdown, section_text(rows, args, command.strip(), isa))
    return 0


if __name__ == "__main__":
    sys.exit(main())
