"""The per-layer report of a quantized model: op, qparams, isolated SQNR, float leftovers."""
from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.fx as fx

from .integer_ops import IntegerOp
from .macs import node_macs
from .meta import graph_info
from .quantize import dequantize
from .reference import run_reference


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """10·log10(Σ ref² / Σ (ref − approx)²), in float64; inf when identical."""
    ref, approx = reference.detach().double(), approx.detach().double()
    noise = float(((ref - approx) ** 2).sum())
    signal = float((ref ** 2).sum())
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


@dataclass
class LayerReport:
    layer: str
    op: str
    input_qparams: str
    output_qparams: str
    weight_qparams: str = ""
    requant: str = ""
    sqnr_db: Optional[float] = None


@dataclass
class QuantReport:
    layers: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    #: ops left in float, as "module.path (Op)"
    float_ops: list = field(default_factory=list)
    #: multiply-accumulates in integer ops / in all ops (None without sample inputs)
    integer_macs: Optional[int] = None
    total_macs: Optional[int] = None

    @property
    def integer_mac_share(self) -> Optional[float]:
        if not self.total_macs:
            return None
        return self.integer_macs / self.total_macs

    def to_dict(self) -> dict:
        def clean(v):
            return None if isinstance(v, float) and not math.isfinite(v) else v
        return {"layers": [{k: clean(v) for k, v in asdict(l).items()} for l in self.layers],
                "notes": list(self.notes), "float_ops": list(self.float_ops),
                "integer_macs": self.integer_macs, "total_macs": self.total_macs}

    def __str__(self) -> str:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="qcompiler: per-layer report", show_lines=False)
        for col in ("layer", "op", "input", "output", "weight", "SQNR dB (isolated)"):
            table.add_column(col, overflow="fold")
        for l in self.layers:
            s = "-" if l.sqnr_db is None else ("inf" if math.isinf(l.sqnr_db) else f"{l.sqnr_db:.1f}")
            table.add_row(l.layer, l.op, l.input_qparams, l.output_qparams, l.weight_qparams, s)
        buf = io.StringIO()
        console = Console(file=buf, width=150, force_terminal=False, color_system=None)
        console.print(table)
        if self.total_macs:
            console.print(f"MACs in integer: {100 * self.integer_mac_share:.1f} % "
                          f"({self.integer_macs:,} of {self.total_macs:,})")
        if self.float_ops:
            console.print("In float (a compiled model runs these in PyTorch):")
            for label in self.float_ops:
                console.print(f"  - {label}: float, in PyTorch")
        if self.notes:
            console.print("Notes:")
            for n in self.notes:
                console.print(f"  - {n}")
        return buf.getvalue()


def float_layers(gm: fx.GraphModule) -> list:
    """The ops lower_to_integer left in float, as "module.path (Op)"."""
    return list(graph_info(gm).float_ops)


def _fmt_qparams(qps) -> str:
    return "; ".join(repr(qp).removeprefix("QParams(").removesuffix(")") for qp in qps if qp is not None)


def build_report(gm: fx.GraphModule, sample_inputs: Optional[tuple]) -> QuantReport:
    """One row per integer op. With ``sample_inputs``, the isolated SQNR of each op: its
    dequantized output vs its float op run on the same (dequantized) inputs, so each row
    shows the error the layer itself adds, not what it inherits."""
    values = run_reference(gm, *sample_inputs, capture=True)[1] if sample_inputs is not None else {}
    report = QuantReport(notes=list(graph_info(gm).notes), float_ops=float_layers(gm))
    if values:
        report.integer_macs = report.total_macs = 0
        for node in gm.graph.nodes:
            mod = gm.get_submodule(node.target) if node.op == "call_module" else None
            macs = node_macs(node, mod, values)
            report.total_macs += macs
            report.integer_macs += macs if isinstance(mod, IntegerOp) and mod.integer_arithmetic else 0
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        if not isinstance(mod, IntegerOp):
            continue
        row = LayerReport(mod.source_layer or node.name, mod.op_name, _fmt_qparams(mod.input_qparams),
                          _fmt_qparams([mod.output_qparams]),
                          _fmt_qparams([getattr(mod, "weight_qparams", None)]),
                          repr(getattr(mod, "requant", "")) if hasattr(mod, "requant") else mod.extra_repr())
        if node.name in values:
            # inputs without qparams (an embedding's token ids) are passed as they are
            qps = [*mod.input_qparams, *[None] * max(0, len(node.args) - len(mod.input_qparams))]
            ins = [values[a.name] if qp is None else dequantize(values[a.name], qp) for a, qp in zip(node.args, qps)]
            try:
                ref = mod.float_reference(*ins)
                out = values[node.name]
                # dynamic / weight-only / half ops return float already
                row.sqnr_db = sqnr_db(ref, out if mod.output_qparams is None else dequantize(out, mod.output_qparams))
            except (NotImplementedError, AttributeError):
                row.sqnr_db = None
        report.layers.append(row)
    return report
