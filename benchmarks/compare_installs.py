"""x86 latency of two qcompiler installs side by side, in alternating rounds (no regression check).

    python benchmarks/compare_installs.py --before /path/to/other/venv/bin/python [--rounds 4]

Each round starts one worker process per install (``--before`` interpreter, then this one) that
compiles the same seeded models for x86 (the build cache makes that fast after the first round)
and reports the median latency of each case over ``--budget`` seconds; rounds alternate the two
installs, so a slow stretch of this shared machine lands on both. Reported: per case, the median
over rounds of each install's latency and their ratio (after / before: < 1 is faster now).
PyTorch fp32 runs in the same workers as a yardstick of the machine's speed in that round.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CASES = [("resnet18", 1), ("resnet18", 8), ("mobilenet_v2", 1), ("mobilenet_v2", 8), ("mlp", 8)]
THREADS = 2


def worker(budget: float) -> dict:
    import torch

    import qcompiler
    from qcompiler.zoo import calibration_batches, prepare_random_model, sample_inputs

    torch.set_num_threads(THREADS)
    out = {"qcompiler": qcompiler.__file__}
    for name, batch in CASES:       # the models and data of benchmarks/end_to_end.py
        model = prepare_random_model(name, calib_images=64, batch_size=16)
        calib = [sample_inputs(name, 64, seed=s) for s in (1, 2, 3, 4)] if name == "mlp" else calibration_batches(4, 8)
        x = sample_inputs(name, batch)
        qm = qcompiler.quantize(model, calib, target="x86", progress=False, warn_float=False)
        compiled = qcompiler.compile(qm, target="x86")
        for label, fn in (("x86", compiled), ("fp32", model)):
            with torch.no_grad():
                fn(x)
                times, end = [], time.perf_counter() + budget
                while time.perf_counter() < end or len(times) < 3:
                    t0 = time.perf_counter()
                    fn(x)
                    times.append(time.perf_counter() - t0)
            out[f"{name} b{batch} {label}"] = statistics.median(times) * 1e3
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", help="python interpreter of the other install (required)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--budget", type=float, default=2.0, help="seconds of timing per case and path")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.budget)))
        return 0
    if not args.before:
        p.error("--before is required")
    results: dict = {"before": [], "after": []}
    for r in range(args.rounds):
        for side, python in (("before", args.before), ("after", sys.executable)):
            # run from /tmp: the script's folder must not shadow either install
            proc = subprocess.run([python, __file__, "--worker", "--budget", str(args.budget)], check=True,
                                  capture_output=True, text=True, cwd="/tmp")
            results[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {side}: {results[side][-1]['qcompiler']}", file=sys.stderr)
    print("| case | before (ms) | after (ms) | after / before | fp32 before / after (ms) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, batch in CASES:
        key = f"{name} b{batch}"
        b = statistics.median(r[f"{key} x86"] for r in results["before"])
        a = statistics.median(r[f"{key} x86"] for r in results["after"])
        fb = statistics.median(r[f"{key} fp32"] for r in results["before"])
        fa = statistics.median(r[f"{key} fp32"] for r in results["after"])
        print(f"| {key} | {b:.2f} | {a:.2f} | {a / b:.2f} | {fb:.1f} / {fa:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
