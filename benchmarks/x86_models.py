"""ResNet-18 / MobileNetV2 batch 1 on the x86 target vs the reference interpreter and PyTorch fp32.

    python benchmarks/x86_models.py [--size 224] [--threads 2] [--models resnet18 mobilenet_v2]

Reports: cold compile (empty build cache: runtime library + model), cached compile, median
latency of the compiled model, the reference interpreter and fp32 eager (torch threads =
--threads), and whether the compiled output equals the reference bit for bit.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

import qcompiler
from qcompiler.zoo import prepare_random_model, smooth_random_images


def median_ms(fn, x, runs: int) -> float:
    with torch.no_grad():
        for _ in range(min(3, runs)):
            fn(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--mode", default="fp32", choices=["fp32", "fixed_point"])
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models:
        model = prepare_random_model(name, calib_images=2, size=args.size, num_classes=1000)
        x = smooth_random_images(1, size=args.size, seed=7)
        qm = qcompiler.quantize(model, [x], config=qcompiler.QConfig(requant_mode=args.mode), progress=False)
        old = os.environ.get("QCOMPILER_CACHE_DIR")
        with tempfile.TemporaryDirectory() as cold:
            os.environ["QCOMPILER_CACHE_DIR"] = cold
            from qcompiler.backends.x86 import runtime_library
            runtime_library._build.cache_clear()          # forget the in-process runtime too
            start = time.perf_counter()
            qcompiler.compile(qm, target="x86")
            cold_s = time.perf_counter() - start
        if old is None:
            os.environ.pop("QCOMPILER_CACHE_DIR")
        else:
            os.environ["QCOMPILER_CACHE_DIR"] = old
        runtime_library._build.cache_clear()
        compiled = qcompiler.compile(qm, target="x86")       # warm the cache
        start = time.perf_counter()
        compiled = qcompiler.compile(qm, target="x86")
        cached_s = time.perf_counter() - start
        compiled.threads = args.threads
        exact = torch.equal(compiled(x), qm(x))
        x86 = median_ms(compiled, x, args.runs)
        fp32 = median_ms(model.eval(), x, args.runs)
        ref = median_ms(qm, x, 3)
        print(f"{name} {args.size}x{args.size} b1, {args.threads} threads, isa {compiled.isa}, {args.mode}: "
              f"x86 {x86:.2f} ms | fp32 eager {fp32:.2f} ms ({fp32 / x86:.1f}x) | reference {ref:.0f} ms | "
              f"compile cold {cold_s:.1f} s, cached {cached_s:.2f} s | bit-exact {exact}")


if __name__ == "__main__":
    main()
