"""quantize_weights: Linear (and Embedding) layers whose config method is dynamic, weight_only or
half become their ops of the extended INTEGER graph, with weights quantized ahead of time.

    dynamic      nn.Linear    → QDynamicLinear       (core/dynamic_ops.py)
    weight_only  nn.Linear    → QWeightOnlyLinear    (core/weight_only_ops.py)
                 nn.Embedding → QWeightOnlyEmbedding
    half         nn.Linear    → QHalfLinear

These ops take and return float32, so they need no observers: the static passes that follow
see float ops and leave them alone. Calibration data is read only for weight-only Linears whose
config asks for ``weight_rounding="gptq"`` (core/gptq.py): one run of the FLOAT graph over the
calibration batches, forward pre-hooks summing H = Σ xᵀx of every such Linear's inputs at once
(float64), before any layer is replaced, so each H is of the float model's activations.
Embeddings keep nearest rounding (there are no inputs to weigh their rows by). It runs after fold_batchnorm and
smooth_activations (whose scales it bakes into the weights), before insert_observers. A layer
the method cannot take (a K that is not a multiple of the group size, a target without the
op) stays float, with its reason in the report.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

import torch
import torch.fx as fx
import torch.nn as nn

from qcompiler.core.dynamic_ops import QDynamicLinear
from qcompiler.core.gptq import gptq_quantize
from qcompiler.core.graph_utils import finalize, set_module
from qcompiler.core.integer_ops import AccumulatorOverflowError
from qcompiler.core.meta import GraphState, graph_info, node_info
from qcompiler.core.observers import CalibrationError
from qcompiler.core.pass_manager import Pass, PassContext, PassResult
from qcompiler.core.provenance import layer_name
from qcompiler.core.qconfig import QConfig
from qcompiler.core.quantize import qparams_from_range, quantize
from qcompiler.core.weight_only_ops import QHalfLinear, QuantizedWeight, QWeightOnlyEmbedding, QWeightOnlyLinear

from .calibrate import feed_layer_inputs

#: the op each method turns a Linear into (capability names, core.integer_ops.INTEGER_OPS)
LINEAR_OPS = {"dynamic": "dynamic_linear", "weight_only": "weight_only_linear", "half": "half_linear"}


def _dynamic(mod: nn.Linear, cfg: QConfig, layer: str) -> QDynamicLinear:
    w = mod.weight.detach()
    if cfg.weight.granularity == "per_channel":
        qp = qparams_from_range(w.amin(dim=1), w.amax(dim=1), cfg.weight.qtype, symmetric=True, axis=0)
    else:
        qp = qparams_from_range(w.min(), w.max(), cfg.weight.qtype, symmetric=True)
    weight = quantize(w, qp).to(torch.int8)
    act = cfg.activation
    return QDynamicLinear(weight, qp, mod.bias, per_token=act.granularity == "per_token",
                          symmetric=act.symmetric, source_layer=layer)


def _weight_only(mod: nn.Module, cfg: QConfig, layer: str, hessian: Optional[torch.Tensor] = None):
    """``hessian``: H of the Linear's inputs, for GPTQ rounding; None: nearest rounding."""
    spec = cfg.weight
    if hessian is None:
        qw = QuantizedWeight.quantize(mod.weight, spec.dtype, spec.group_size, spec.symmetric)
    else:
        try:
            qw = gptq_quantize(mod.weight, hessian, spec.dtype, spec.group_size, spec.symmetric)
        except ValueError as exc:
            raise ValueError(f"{layer} (Linear): {exc}") from None
    if isinstance(mod, nn.Embedding):
        return QWeightOnlyEmbedding(qw, source_layer=layer)
    return QWeightOnlyLinear(qw, mod.bias, compute=cfg.compute, source_layer=layer)


def _half(mod: nn.Linear, cfg: QConfig, layer: str) -> QHalfLinear:
    dtype = getattr(torch, cfg.weight.dtype)
    return QHalfLinear(mod.weight.detach().to(dtype), mod.bias, source_layer=layer)


_BUILDERS = {"dynamic": _dynamic, "weight_only": _weight_only, "half": _half}


def why_not(mod: nn.Module, cfg: QConfig, ops: frozenset) -> Optional[str]:
    """Why a Linear/Embedding cannot take its config's method, or None."""
    if isinstance(mod, nn.Embedding):
        if mod.max_norm is not None:
            return "max_norm renormalizes the table's rows at every call"
        op = "weight_only_embedding"
    else:
        op = LINEAR_OPS[cfg.method]
    if op not in ops:
        return f"the target has no {op}"
    k = mod.weight.shape[1]
    group = cfg.weight.group_size if cfg.method == "weight_only" else None
    if group and k % group:
        return f"K={k} is not a multiple of the group size {group}"
    if cfg.method == "weight_only" and cfg.weight.dtype != "int8" and k % 2:
        return f"K={k} is odd: 4-bit weights are packed two per byte"
    return None


class QuantizeWeights(Pass):
    name = "quantize_weights"
    requires = frozenset({GraphState.BN_FOLDED})

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        changes = Counter()
        ginfo = graph_info(gm)
        modules = dict(gm.named_modules())
        chosen = []                     # (node, module, layer, config, why it stays float or None)
        for node in ctx.nodes(gm):
            mod = modules.get(node.target) if node.op == "call_module" else None
            if type(mod) not in (nn.Linear, nn.Embedding):
                continue
            layer = node_info(node).source_layer or layer_name(node)
            cfg = ctx.config.for_layer(layer)
            if cfg is None or cfg.method == "static" or (isinstance(mod, nn.Embedding) and cfg.method != "weight_only"):
                continue                # an embedding is a copy: only weight-only storage changes it
            chosen.append((node, mod, layer, cfg, why_not(mod, cfg, ctx.capabilities.ops)))
        gptq = {node.target for node, mod, _, cfg, reason in chosen
                if reason is None and isinstance(mod, nn.Linear) and cfg.method == "weight_only"
                and cfg.weight_rounding == "gptq"}
        hessians = input_hessians(gm, ctx, sorted(gptq)) if gptq else {}
        for node, mod, layer, cfg, reason in chosen:
            ctx.current_node = node
            try:
                if reason:
                    op = None
                elif cfg.method == "weight_only":
                    op = _weight_only(mod, cfg, layer, hessians.get(node.target))
                else:
                    op = _BUILDERS[cfg.method](mod, cfg, layer)
            except AccumulatorOverflowError as exc:       # too deep for int32 with dynamic activations
                reason = str(exc)
            if reason:
                node_info(node).float_reason = reason
                ginfo.note(f"{layer} ({type(mod).__name__}) left in float: {reason}")
                changes["left_in_float"] += 1
                continue
            op.float_weight = mod.weight.detach()
            op.float_bias = None if getattr(mod, "bias", None) is None else mod.bias.detach()
            set_module(gm, node.target, op)
            changes[op.op_name] += 1
            if node.target in hessians:
                changes["gptq"] += 1
        ctx.current_node = None
        if hessians:
            ginfo.note(f"quantize_weights: {changes['gptq']} Linear(s) rounded with GPTQ on the calibration data")
        return PassResult(finalize(gm), changes)


def input_hessians(gm: fx.GraphModule, ctx: PassContext, targets: list) -> dict:
    """H = Σ xᵀx (float64, [K, K]) over every input row x of each Linear in ``targets`` (module
    paths), from one run of the float graph over the calibration batches; every call counts."""
    sums: dict = {}

    def reader(target):
        def add(x):
            x = x.to(torch.float64).reshape(-1, x.shape[-1])
            sums[target] = sums[target] + x.t() @ x if target in sums else x.t() @ x
        return add

    feed_layer_inputs(gm, ctx, [(t, reader(t)) for t in targets],
                      "weight_rounding='gptq' (each Linear's inputs weigh its rounding errors)")
    missing = [t for t in targets if t not in sums]
    if missing:
        raise CalibrationError(f"GPTQ: the calibration data never reached {missing[0]} (no batches?)")
    return sums
