"""Transformer-era methods, speed (issue 12): dynamic int8 encoder, weight-only GEMV, a decoder block.

    python benchmarks/transformer_speed.py [--parts encoder gemv decoder] [--budget 3]
                                           [--markdown docs/benchmarks.md]

Every table is one run in which the paths take turns (benchmarks/gemm.py ``time_round_robin``:
blocks of calls per path, the first untimed, a pause between blocks so one library's spinning
threads do not steal the cores from the next), each path with THREADS threads; the figure is the
median per call and its ratio to fp32.

- **encoder**: all-MiniLM-L6-v2 (real weights when the package is installed, else random) on
  batch 8 x 128 token ids: PyTorch fp32; PyTorch dynamic int8 (``torch.ao.quantization.
  quantize_dynamic``, its x86 engine); ONNX Runtime dynamic int8 (``quantize_dynamic`` of the
  ``torch.onnx`` export, per-channel int8 weights); qcompiler ``QConfig.dynamic()`` (per-token)
  compiled for x86: its Linears run in the generated code, the rest in PyTorch as in the others.
- **gemv**: one token (M = 1) through a Linear of K = 4096 and N = 4096 / 11008: ``F.linear``
  fp32 and bf16, PyTorch's int4 CPU kernel (``aten._weight_int4pack_mm_for_cpu``, group 32) where
  present, and qcompiler weight-only int4 / NF4 (group 32) and int8 (per channel) on x86.
- **decoder**: a Llama-style block (RMSNorm, attention with a KV cache, SwiGLU MLP; d = 4096,
  32 heads, FFN 11008, random weights) decoding one token at batch 1 after CONTEXT tokens:
  time per token, fp32 vs qcompiler weight-only int4 group 32 on x86.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import tempfile
import warnings
from typing import Callable, Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (os.path.dirname(_HERE), _HERE) if p not in sys.path]

from gemm import cpu_line, time_round_robin, versions_line  # noqa: E402
from markdown_section import replace_section  # noqa: E402

import qcompiler  # noqa: E402
from qcompiler.core.qconfig import QConfig  # noqa: E402

SECTION = "## Transformer methods: speed (issue 12)"
THREADS = 2
CONTEXT = 256


def _table(title: str, times: Dict[str, float], base: str, unit: float = 1e3, unit_name: str = "ms") -> List[str]:
    rows = [f"**{title}**", "", f"| path | {unit_name} | vs {base} |", "| --- | ---: | ---: |"]
    for name, t in times.items():
        rows.append(f"| {name} | {t * unit:.3f} | {times[base] / t:.2f}x |")
    return rows + [""]


def _compiled(model: nn.Module, example: tuple, config: QConfig) -> nn.Module:
    qm = qcompiler.quantize(model, [example], config=config, target="x86", progress=False, warn_float=False)
    return qcompiler.compile(qm, target="x86")


# -- encoder -------------------------------------------------------------------------------

def ort_dynamic(model: nn.Module, ids: torch.Tensor) -> Callable:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = tempfile.mkdtemp(prefix="qc_ort_dyn_")
    fp32, int8 = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids,), fp32, dynamo=False, input_names=["ids"], output_names=["y"],
                          opset_version=17)
        quantize_dynamic(fp32, int8, per_channel=True, weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    session = ort.InferenceSession(int8, opts, providers=["CPUExecutionProvider"])
    feed = {"ids": ids.numpy()}
    return lambda: session.run(None, feed)


def encoder_part(budget: float) -> List[str]:
    from qcompiler.zoo.bert import bert_encoder, minilm_dir

    real = minilm_dir() is not None
    model = bert_encoder(pretrained=real).eval()
    ids = torch.randint(1000, 20000, (8, 128), generator=torch.Generator().manual_seed(0))
    torch.backends.quantized.engine = "x86"
    pt_dyn = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    ours = _compiled(model, (ids,), QConfig.dynamic())
    with torch.no_grad():
        ref = model(ids)
        cos = float(F.cosine_similarity(ours(ids).flatten(1), ref.flatten(1)).mean())
        runs = {"PyTorch fp32": lambda: model(ids), "PyTorch dynamic int8": lambda: pt_dyn(ids),
                "ONNX Runtime dynamic int8": ort_dynamic(model, ids),
                "qcompiler dynamic int8 (x86)": lambda: ours(ids)}
        times = time_round_robin(runs, budget)
    name = "all-MiniLM-L6-v2" + ("" if real else " (random weights: package not installed)")
    return _table(f"{name}, batch 8 x 128 tokens (qcompiler's output: mean cosine {cos:.4f} to fp32 "
                  "over the 8 x 128 token vectors)", times, "PyTorch fp32")


# -- weight-only GEMV ------------------------------------------------------------------------

def torch_int4(linear: nn.Linear, group: int = 32) -> Callable:
    """PyTorch's int4 CPU kernel: asymmetric int4 per group of K, bf16 scales and zeros."""
    w = linear.weight.detach()
    n, k = w.shape
    wg = w.reshape(n, k // group, group)
    lo, hi = wg.amin(-1), wg.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-6)
    q = torch.clamp(torch.round((wg - lo[..., None]) / scale[..., None]), 0, 15).to(torch.int32).reshape(n, k)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    # its zero is the value of code 8: w ≈ (q - 8) * scale + zero
    zeros = lo + 8 * scale
    sz = torch.stack([scale.t(), zeros.t()], dim=-1).contiguous().to(torch.bfloat16)
    return lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, sz)


def gemv_part(budget: float) -> List[str]:
    out = []
    for n in (4096, 11008):
        torch.manual_seed(0)
        lin = nn.Linear(4096, n, bias=False).eval()
        x = torch.randn(1, 4096)
        w_bf16 = lin.weight.detach().to(torch.bfloat16)
        x_bf16 = x.to(torch.bfloat16)
        runs = {"fp32 F.linear": lambda: F.linear(x, lin.weight),
                "bf16 F.linear": lambda: F.linear(x_bf16, w_bf16)}
        if hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
            int4 = torch_int4(lin)
            xb = x.to(torch.bfloat16)
            runs["PyTorch int4 g32 (_weight_int4pack_mm_for_cpu)"] = lambda: int4(xb)
        for label, cfg in (("int4 g32", QConfig.weight_only("int4", 32)), ("NF4 g32", QConfig.weight_only("nf4", 32)),
                           ("int8 per channel", QConfig.weight_only("int8", None))):
            fn = _compiled(lin, (x,), cfg)
            runs[f"qcompiler weight-only {label} (x86)"] = (lambda f: lambda: f(x))(fn)
        with torch.no_grad():
            times = time_round_robin(runs, budget)
        out += _table(f"GEMV M = 1, K = 4096, N = {n}", times, "fp32 F.linear", 1e6, "µs")
    return out


# -- decoder block ---------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class LlamaBlock(nn.Module):
    """One decoder block at one new token: x [1, 1, d], the cache's keys/values [1, h, T, d/h]."""

    def __init__(self, d: int = 4096, heads: int = 32, ffn: int = 11008):
        super().__init__()
        self.heads = heads
        self.attn_norm, self.mlp_norm = RMSNorm(d), RMSNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(d, ffn, bias=False), nn.Linear(d, ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def forward(self, x, k_cache, v_cache):
        b, t, d = x.shape
        h = self.attn_norm(x)
        split = lambda y: y.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        k, v = torch.cat([k_cache, k], dim=2), torch.cat([v_cache, v], dim=2)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        x = x + self.o((att @ v).transpose(1, 2).reshape(b, t, d))
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def decoder_part(budget: float) -> List[str]:
    torch.manual_seed(0)
    block = LlamaBlock().eval()
    for p in block.parameters():            # random weights at the usual init scale
        p.data.normal_(0, 0.02) if p.dim() == 2 else None
    d, heads = 4096, 32
    inputs = (torch.randn(1, 1, d), torch.randn(1, heads, CONTEXT, d // heads), torch.randn(1, heads, CONTEXT, d // heads))
    ours = _compiled(block, inputs, QConfig.weight_only("int4", 32))
    with torch.no_grad():
        ref = block(*inputs)
        cos = float(F.cosine_similarity(ours(*inputs).flatten(), ref.flatten(), dim=0))
        times = time_round_robin({"PyTorch fp32": lambda: block(*inputs),
                                  "qcompiler weight-only int4 g32 (x86)": lambda: ours(*inputs)}, budget)
    return _table(f"Llama-style block (d 4096, 32 heads, FFN 11008), batch 1, one token after {CONTEXT} "
                  f"(output cosine to fp32 {cos:.4f})", times, "PyTorch fp32")


PARTS = {"encoder": encoder_part, "gemv": gemv_part, "decoder": decoder_part}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="*", default=list(PARTS), choices=list(PARTS))
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of timing per path")
    ap.add_argument("--markdown", help="write the tables into this file's section")
    args = ap.parse_args(argv)
    torch.set_num_threads(THREADS)          # also the compiled modules' thread count (NativeModel)
    lines: List[str] = []
    for part in args.parts:
        lines += PARTS[part](args.budget)
        print("\n".join(lines), flush=True)
    if args.markdown:
        write_section(args.markdown, lines, argv)
    return 0


def write_section(path: str, lines: List[str], argv) -> None:
    body = [SECTION, "", *lines,
            f"- machine: {platform.platform()}, {cpu_line()}, {THREADS} threads per path",
            f"- {versions_line()}",
            f"- command: `python benchmarks/transformer_speed.py {shlex.join(argv if argv is not None else sys.argv[1:])}`",
            ""]
    replace_section(path, SECTION, "\n".join(body))


if __name__ == "__main__":
    sys.exit(main())
