"""``qcompiler demo``: train (or load) the digits CNN, quantize it to int8, compare with float.

The figures: test accuracy, model size, latency (batch 1 and the whole test set, median of
several runs), SQNR of the int8 logits against the float logits, and the per-layer report of
the quantized model. ``run_demo`` returns them as a JSON-serializable dict and can write it.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, List, Optional, Union

import torch

from qcompiler.core.report import sqnr_db
import torch.nn as nn

from .zoo.digits import get_trained_digits_cnn, load_digits_split

__all__ = ["run_demo", "module_size_bytes", "quantized_size_bytes", "sqnr_db",
           "measure_latency"]

REQUANT_MODES = ("fp32", "fixed_point")


# --------------------------------------------------------------------------- measurements


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def module_size_bytes(module: nn.Module) -> int:
    """Bytes of all parameters and buffers (each storage counted once)."""
    seen = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key in seen:
            continue
        seen.add(key)
        total += _tensor_bytes(t)
    return total


def quantized_size_bytes(qmodel: nn.Module) -> int:
    """The quantized model's own figure when it has one, else its parameters and buffers."""
    size_fn = getattr(qmodel, "model_size_bytes", None)
    if callable(size_fn):
        return int(size_fn())
    return module_size_bytes(qmodel)


@torch.no_grad()
def measure_latency(fn: Callable[[], object], *, warmup: int = 2, min_runs: int = 5,
                    max_runs: int = 50, budget_s: float = 1.0) -> float:
    """Median wall time of ``fn()`` in milliseconds (``time.perf_counter``).

    Runs at least ``min_runs`` and at most ``max_runs`` times, stopping early once
    ``budget_s`` seconds have been spent, so a slow reference interpreter cannot stall the demo.
    """
    for _ in range(warmup):
        fn()
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < max_runs:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= min_runs and time.perf_counter() - start > budget_s:
            break
    return statistics.median(times) * 1e3


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])


# --------------------------------------------------------------------------- the demo


def _fmt_bytes(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


def _fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def _json_float(v: float):
    return v if math.isfinite(v) else None


def run_demo(json_path: Union[str, os.PathLike, None] = None, requant_mode: str = "fp32",
             retrain: bool = False, console=None, *, cache_dir=None,
             calib_batch_size: int = 128, latency_budget_s: float = 1.0,
             threads: Optional[int] = None, target: str = "reference") -> dict:
    """Quantize the digits CNN and compare it with the float model; returns the figures.

    ``json_path``: also write the figures there (JSON). ``requant_mode``: ``fp32`` or
    ``fixed_point``. ``retrain``: ignore the cached float weights. ``console``: a
    ``rich.console.Console`` to print to (default: a new one on stdout). ``threads``: torch
    intra-op threads while timing (default: leave torch's setting); both models get the same.
    """
    import qcompiler
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if requant_mode not in REQUANT_MODES:
        raise ValueError(f"unknown requant_mode {requant_mode!r}; choose one of {REQUANT_MODES}")
    console = console if console is not None else Console()

    # 1. data and the float model
    data = load_digits_split()
    with console.status("Loading / training the float DigitsCNN..."):
        t0 = time.perf_counter()
        model = get_trained_digits_cnn(cache_dir=cache_dir, retrain=retrain)
        train_s = time.perf_counter() - t0
    from_cache = bool(getattr(model, "loaded_from_cache", False))
    console.print(f"float model: {'loaded from cache' if from_cache else 'trained'} "
                  f"in {train_s:.2f} s")

    # 2. quantize: calibrate on training batches
    batches = [data.x_train[i:i + calib_batch_size]
               for i in range(0, len(data.x_train), calib_batch_size)]
    config = qcompiler.QConfig(requant_mode=requant_mode)
    console.print(f"quantizing: calibrating on {len(batches)} training batches "
                  f"of {calib_batch_size} images...")
    t0 = time.perf_counter()
    qmodel = qcompiler.quantize(model, batches, example_inputs=(data.x_train[:1],),
                                config=config, target=target)  # shows its own progress bar
    quantize_s = time.perf_counter() - t0
    qmodel.eval()
    console.print(f"quantized ({requant_mode} requant, target {target!r}) in {quantize_s:.2f} s "
                  f"using {len(data.x_train)} calibration images")
    runner, compile_s = qmodel, 0.0
    if target != "reference":             # run the int8 model as the target's compiled code
        t0 = time.perf_counter()
        runner = qcompiler.compile(qmodel, target=target)
        compile_s = time.perf_counter() - t0
        console.print(f"compiled for {target!r} in {compile_s:.2f} s")

    # 3. accuracy and SQNR
    with console.status("Evaluating..."):
        float_logits = _predict(model, data.x_test)
        int8_logits = _predict(runner, data.x_test)
    n_test = len(data.y_test)
    float_acc = int((float_logits.argmax(1) == data.y_test).sum()) / n_test
    int8_acc = int((int8_logits.argmax(1) == data.y_test).sum()) / n_test
    agreement = int((float_logits.argmax(1) == int8_logits.argmax(1)).sum()) / n_test
    sqnr = sqnr_db(float_logits, int8_logits)

    # 4. size
    float_size = module_size_bytes(model)
    int8_size = quantized_size_bytes(qmodel)

    # 5. latency
    x1 = data.x_test[:1]
    xb = data.x_test
    lat = {}
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        timing_threads = torch.get_num_threads()
        with console.status("Timing..."):
            for name, m in (("float", model), ("int8", runner)):
                lat[f"{name}_latency_batch1_ms"] = measure_latency(
                    lambda m=m: m(x1), warmup=3, min_runs=5, max_runs=100,
                    budget_s=latency_budget_s)
                lat[f"{name}_latency_full_ms"] = measure_latency(
                    lambda m=m: m(xb), warmup=1, min_runs=3, max_runs=20,
                    budget_s=latency_budget_s)
    finally:
        torch.set_num_threads(saved_threads)

    # 6. per-layer report
    report = qmodel.report() if callable(getattr(qmodel, "report", None)) else None
    layers = report.to_dict() if report is not None and hasattr(report, "to_dict") else []

    results = {
        "model": "DigitsCNN",
        "dataset": "sklearn digits 8x8 (80/20 stratified split, seed 0)",
        "requant_mode": requant_mode,
        "target": target,
        "compile_seconds": compile_s,
        "num_test": int(len(data.x_test)),
        "num_calibration": int(len(data.x_train)),
        "float_accuracy": float_acc,
        "int8_accuracy": int8_acc,
        "accuracy_drop": float_acc - int8_acc,
        "top1_agreement": agreement,
        "sqnr_db": _json_float(sqnr),
        "float_size_bytes": int(float_size),
        "int8_size_bytes": int(int8_size),
        "compression_ratio": float_size / int8_size if int8_size else None,
        "latency_full_batch_size": int(len(xb)),
        **lat,
        "float_model_from_cache": from_cache,
        "quantize_seconds": quantize_s,
        "torch_version": torch.__version__,
        "torch_threads": timing_threads,
        "machine": platform.machine(),
        "layers": layers,
    }

    # 7. print
    table = Table(title=f"DigitsCNN: float32 vs int8 ({requant_mode} requant)")
    table.add_column("metric")
    table.add_column("float32", justify="right")
    table.add_column("int8", justify="right")
    table.add_column("int8 / float", justify="right")
    table.add_row("test accuracy", f"{float_acc:.2%}", f"{int8_acc:.2%}",
                  f"{(int8_acc - float_acc) * 100:+.2f} pt")
    table.add_row("model size", _fmt_bytes(float_size), _fmt_bytes(int8_size),
                  _fmt_ratio(int8_size, float_size))
    table.add_row("latency, batch 1", f"{lat['float_latency_batch1_ms']:.3f} ms",
                  f"{lat['int8_latency_batch1_ms']:.3f} ms",
                  _fmt_ratio(lat['int8_latency_batch1_ms'], lat['float_latency_batch1_ms']))
    table.add_row(f"latency, batch {len(xb)}", f"{lat['float_latency_full_ms']:.3f} ms",
                  f"{lat['int8_latency_full_ms']:.3f} ms",
                  _fmt_ratio(lat['int8_latency_full_ms'], lat['float_latency_full_ms']))
    table.add_row("logits SQNR", "", f"{sqnr:.2f} dB", "")
    table.add_row("top-1 agreement", "", f"{agreement:.2%}", "")
    console.print(table)
    if report is not None:
        console.print(Text("Per-layer report:", style="bold"))
        console.print(Text(str(report)), soft_wrap=True)

    if json_path is not None:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")
        console.print(f"wrote {path}")
    return results
