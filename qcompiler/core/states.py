"""Checks that a graph really is in the state a pass claims to establish (DESIGN.md §2).

Each checker returns a list of (node, problem) pairs; empty means the state holds.
"""
from __future__ import annotations

from typing import Callable

import torch.fx as fx

from .integer_ops import IntegerOp
from .meta import GraphState, has_node_info, node_info
from .op_table import WEIGHTED_OPS, canonical_op

Problems = list


def _modules(gm):
    return dict(gm.named_modules())


def _observers(gm) -> list:
    from .observers import Observer
    mods = _modules(gm)
    return [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(mods.get(n.target), Observer)]


def _lint(gm) -> Problems:
    try:
        gm.graph.lint()
    except Exception as exc:  # noqa: BLE001
        return [(None, f"the graph is malformed: {exc}")]
    return []


def _bn_folded(gm) -> Problems:
    mods = _modules(gm)
    out = []
    for n in gm.graph.nodes:
        if canonical_op(n, mods) == "batch_norm" and n.args and isinstance(n.args[0], fx.Node):
            src = n.args[0]
            if canonical_op(src, mods) in WEIGHTED_OPS and len(src.users) == 1:
                out.append((n, "a BatchNorm after a conv/linear was not folded"))
    return out


def _fused(gm) -> Problems:
    names = {n.name for n in gm.graph.nodes}
    return [(n, f"fused into missing node {node_info(n).fused_into}") for n in gm.graph.nodes
            if has_node_info(n) and node_info(n).fused_into and node_info(n).fused_into not in names]


def _observed(gm) -> Problems:
    # an all-dynamic / weight-only graph needs none: its ops were quantized by quantize_weights
    quantized = any(isinstance(m, IntegerOp) for m in gm.modules())
    return [] if _observers(gm) or quantized else [(None, "the graph has no observers")]


def _calibrated(gm) -> Problems:
    mods = _modules(gm)
    return [(n, f"observer {n.target} saw no data") for n in _observers(gm) if not mods[n.target].has_data]


def _ranges_chosen(gm) -> Problems:
    return [(n, "observer has no chosen qparams") for n in _observers(gm)
            if node_info(n).output_qparams is None]


def _no_observers(gm) -> Problems:
    return [(n, "an observer is left in the graph") for n in _observers(gm)]


def _integer(gm) -> Problems:
    mods = _modules(gm)
    out = _no_observers(gm)
    for n in gm.graph.nodes:
        op = canonical_op(n, mods)
        if op in WEIGHTED_OPS and not (has_node_info(n) and node_info(n).float_reason):
            out.append((n, f"float {op} left without a float_reason in the INTEGER graph"))
        if op in ("conv1d_functional", "conv2d_functional", "linear_functional") and \
                not (has_node_info(n) and node_info(n).float_reason):
            out.append((n, "QDQ-form op was not lowered and has no float_reason"))
    return out


_CHECKERS: dict[GraphState, Callable[[fx.GraphModule], Problems]] = {
    GraphState.FLOAT: _lint,
    GraphState.BN_FOLDED: _bn_folded,
    GraphState.FUSED: _fused,
    GraphState.OBSERVED: _observed,
    GraphState.CALIBRATED: _calibrated,
    GraphState.RANGES_CHOSEN: _ranges_chosen,
    GraphState.QDQ: _no_observers,
    GraphState.INTEGER: _integer,
}


def verify_state(state: GraphState, gm: fx.GraphModule) -> Problems:
    checker = _CHECKERS.get(state)
    problems = _lint(gm)
    if checker is not None and checker is not _lint:
        problems += checker(gm)
    return problems
