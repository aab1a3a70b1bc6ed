"""clip_ranges: turn observer statistics into quantization parameters.

Each activation observer's range is chosen by its layer's ``range_method`` (minmax,
percentile, MSE-optimal or entropy — see ``core.range_search``) and stored as
``NodeInfo.output_qparams`` on the observer node; each weight gets
``NodeInfo.weight_qparams`` (per channel along axis 0 or per tensor).
"""
from __future__ import annotations

from collections import Counter

import torch.fx as fx

from qcompiler.core.meta import GraphState, has_node_info, node_info
from qcompiler.core.observers import Observer
from qcompiler.core.pass_manager import Pass, PassContext, PassResult
from qcompiler.core.quantize import qparams_from_range
from qcompiler.core.range_search import choose_range


def qparams_for(observer: Observer, spec, cfg):
    lo, hi = choose_range(observer, spec.range_method, spec.qtype, symmetric=spec.symmetric,
                          percentile=cfg.percentile, clip_penalty=cfg.clip_penalty)
    return qparams_from_range(lo, hi, spec.qtype, symmetric=spec.symmetric, axis=observer.axis)


class ClipRanges(Pass):
    name = "clip_ranges"
    requires = frozenset({GraphState.CALIBRATED})
    establishes = frozenset({GraphState.RANGES_CHOSEN})

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        modules = dict(gm.named_modules())
        changes = Counter()
        for node in ctx.nodes(gm):
            if node.op == "call_module" and isinstance(modules.get(node.target), Observer):
                cfg = node_info(node).qconfig
                node_info(node).output_qparams = qparams_for(modules[node.target], cfg.activation, cfg)
                changes[f"activations_{cfg.activation.range_method}"] += 1
            elif has_node_info(node) and node_info(node).weight_observer is not None:
                cfg = node_info(node).qconfig
                node_info(node).weight_qparams = qparams_for(node_info(node).weight_observer, cfg.weight, cfg)
                changes["weights"] += 1
        return PassResult(gm, changes)
