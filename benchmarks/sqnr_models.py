"""SQNR of int8 outputs vs float outputs for zoo models, per quantization flow.

    python benchmarks/sqnr_models.py --models resnet18 mobilenet_v2 \
        --calib-batches 8 --batch-size 8 [--markdown docs/benchmarks.md]

For each model: build it with random init (``--seed``), re-estimate BatchNorm on
smooth synthetic images, calibrate every flow on the same calibration batches, then
compare int8 and float outputs on held-out smooth images (different seeds for BN
re-estimation, calibration and evaluation). Prints a markdown table; ``--markdown``
writes it into a file, replacing the section ``## SQNR vs float (issue 2)``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
for _p in (_ROOT, _HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from markdown_section import replace_section  # noqa: E402
from peers import pytorch_fx_int8, pytorch_pt2e_int8, sqnr_db  # noqa: E402

from qcompiler.zoo import (  # noqa: E402
    BN_SEED,
    CALIB_SEED,
    EVAL_SEED,
    prepare_random_model,
    sample_inputs,
)

SECTION = "## SQNR vs float (issue 2)"
# BatchNorm re-estimation batch size, fixed so the float model does not depend on
# --batch-size (the running variance is an average of per-batch variances).
BN_BATCH = 16

# A flow: (model, calib_batches, example_input, args) -> callable float -> float.
Flow = Callable[[nn.Module, List[Tensor], Tensor, argparse.Namespace], Callable[[Tensor], Tensor]]


class FlowUnavailable(Exception):
    """The flow cannot run in this environment (reported as "not available")."""


def _qcompiler_flow(model, calib, example, args):
    try:
        import qcompiler

        quantize = qcompiler.quantize
    except (ImportError, AttributeError) as e:
        raise FlowUnavailable(f"qcompiler.quantize: {e}") from e
    kwargs = {}
    if args.config is not None:
        kwargs["config"] = qcompiler.QConfig(**_parse_config(args.config))
    return quantize(model, calib, example_inputs=(example,), progress=False, **kwargs)


def _parse_config(text: str) -> dict:
    """'clip_penalty=1,bias_correction=False' -> QConfig keyword arguments."""
    import ast

    fields = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        fields[key.strip()] = ast.literal_eval(value.strip())
    return fields


FLOWS: Dict[str, Flow] = {
    "pytorch_fx_int8": lambda m, c, x, a: pytorch_fx_int8(m, c, x),
    "pytorch_pt2e_int8": lambda m, c, x, a: pytorch_pt2e_int8(m, c, x),
    "qcompiler": _qcompiler_flow,
}


def _batched(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int) -> Tensor:
    with torch.no_grad():
        return torch.cat([fn(b) for b in x.split(batch_size)])


def run_model(name: str, args: argparse.Namespace, flows: Sequence[str]) -> List[dict]:
    model = prepare_random_model(
        name,
        seed=args.seed,
        calib_images=args.bn_images,
        batch_size=BN_BATCH,
        size=args.image_size,
        bn_seed=BN_SEED,
    )
    n_calib = args.calib_batches * args.batch_size
    calib_all = sample_inputs(name, n_calib, size=args.image_size, seed=CALIB_SEED)
    calib = [b.contiguous() for b in calib_all.split(args.batch_size)]
    eval_x = sample_inputs(name, args.eval_images, size=args.image_size, seed=EVAL_SEED)
    example = calib[0][:1]
    ref = _batched(model, eval_x, args.batch_size)

    rows = []
    for flow in flows:
        row = {"model": name, "flow": flow, "sqnr": None, "time": None, "note": ""}
        try:
            t0 = time.perf_counter()
            qmodel = FLOWS[flow](model, calib, example, args)
            row["time"] = time.perf_counter() - t0
            out = _batched(qmodel, eval_x, args.batch_size)
            row["sqnr"] = sqnr_db(ref, out.float())
        except FlowUnavailable as e:
            row["note"], detail = "not available", str(e)
        except Exception as e:  # noqa: BLE001 - report and go on to the next flow
            unavailable = isinstance(e, RuntimeError) and "unavailable" in str(e)
            row["note"] = "not available" if unavailable else f"failed ({type(e).__name__})"
            detail = f"{type(e).__name__}: {e}"
        rows.append(row)
        if row["sqnr"] is not None:
            msg = f"SQNR {row['sqnr']:.2f} dB, quantize {row['time']:.1f} s"
        else:
            msg = f"{row['note']}: {detail}"
        print(f"[{name}] {flow}: {msg}", file=sys.stderr, flush=True)
    return rows


def markdown_table(rows: List[dict]) -> str:
    lines = ["| model | flow | SQNR (dB) | quantize time (s) |", "| --- | --- | ---: | ---: |"]
    for r in rows:
        sqnr = f"{r['sqnr']:.2f}" if r["sqnr"] is not None else r["note"] or "n/a"
        t = f"{r['time']:.1f}" if r["time"] is not None and r["sqnr"] is not None else "—"
        lines.append(f"| {r['model']} | {r['flow']} | {sqnr} | {t} |")
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment_lines() -> List[str]:
    try:
        import torchao  # noqa: F401

        tao = getattr(torchao, "__version__", "?")
    except Exception:  # noqa: BLE001
        tao = "not installed"
    return [
        f"- machine: {platform.platform()}, {platform.machine()}, CPU: {_cpu_model()}, "
        f"{os.cpu_count()} logical CPUs, torch threads: {torch.get_num_threads()}",
        f"- python {platform.python_version()}, torch {torch.__version__}, torchao {tao}, "
        f"quantized engine {torch.backends.quantized.engine}",
    ]


def section_text(rows: List[dict], args: argparse.Namespace, command: str) -> str:
    parts = [
        SECTION,
        "",
        "Random-init models (torch seed "
        f"{args.seed}), BatchNorm re-estimated on {args.bn_images} smooth synthetic images "
        f"(seed {BN_SEED}, batches of {BN_BATCH}); calibration: {args.calib_batches} batches x {args.batch_size} "
        f"images (seed {CALIB_SEED}); SQNR of the int8 output vs the float output on "
        f"{args.eval_images} held-out images (seed {EVAL_SEED}), {args.image_size}x"
        f"{args.image_size}. Quantize time = prepare + calibrate + convert.",
        "",
        markdown_table(rows),
        "",
        *environment_lines(),
        f"- command: `{command}`",
        "",
    ]
    return "\n".join(parts)


def write_section(path: str, text: str) -> None:
    replace_section(path, SECTION, text)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"],
                   choices=["resnet18", "mobilenet_v2", "mlp", "transformer"])
    p.add_argument("--flows", nargs="+", default=list(FLOWS), choices=list(FLOWS))
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-images", type=int, default=16)
    p.add_argument("--bn-images", type=int, default=64,
                   help="images used to re-estimate BatchNorm statistics")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0, help="torch seed of the random init")
    p.add_argument("--config", default=None,
                   help="QConfig fields for the qcompiler flow, e.g. 'clip_penalty=1,bias_correction=False'")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--markdown", metavar="PATH", default=None,
                   help=f"write the table into PATH under '{SECTION}'")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in ([sys.argv[0]] + list(sys.argv[1:] if argv is None else argv)))
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    # PyTorch's own deprecation notices about its quantized tensors and reduce_range.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\.")
    rows: List[dict] = []
    for name in args.models:
        rows.extend(run_model(name, args, args.flows))
    print(markdown_table(rows))
    if args.markdown:
        write_section(args.markdown, section_text(rows, args, command))
        print(f"wrote section '{SECTION}' to {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
