"""Typed metadata that passes share (DESIGN.md §2).

This module owns the only keys qcompiler writes into ``node.meta`` and
``GraphModule.meta``; passes read and write the dataclasses below through
:func:`node_info` and :func:`graph_info`, never through string keys of their own.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional

import torch.fx as fx

from .qtypes import QParams

_NODE_KEY = "qcompiler"
_GRAPH_KEY = "qcompiler"


class GraphState(enum.Enum):
    FLOAT = "FLOAT"
    BN_FOLDED = "BN_FOLDED"
    FUSED = "FUSED"
    OBSERVED = "OBSERVED"
    CALIBRATED = "CALIBRATED"
    RANGES_CHOSEN = "RANGES_CHOSEN"
    QDQ = "QDQ"
    INTEGER = "INTEGER"
    LEGALIZED = "LEGALIZED"

    def __repr__(self):
        return self.name


@dataclass(frozen=True)
class FusedActivation:
    """A clamp applied to a quantized op's output: relu is (0, inf), relu6 is (0, 6)."""

    kind: str                       # "relu", "relu6", "clamp"
    min_value: Optional[float]
    max_value: Optional[float]


@dataclass
class NodeInfo:
    """Everything qcompiler knows about one fx node."""

    # fuse_patterns: on the head (conv/linear/add) the activation fused into it ...
    fused_activation: Optional[FusedActivation] = None
    # ... and on the activation node, the name of the head it belongs to
    fused_into: Optional[str] = None
    # module path of the float layer this node computes (for reports and per-layer configs)
    source_layer: Optional[str] = None
    # core.shapes.propagate_shapes: whether the value is a tensor, and its shape
    is_tensor: Optional[bool] = None
    shape: Optional[tuple] = None
    dtype: Optional[object] = None
    # insert_observers: the recipe this layer is quantized with (QConfig ∩ capabilities)
    qconfig: Optional[object] = None
    # insert_observers: weight statistics of a conv/linear; calibrate: its input's
    # per-channel mean (core.input_stats.ChannelMean), for correct_bias
    weight_observer: Optional[object] = None
    input_mean: Optional[object] = None
    # insert_observers: the layer kept in float, and why
    float_reason: Optional[str] = None
    # clip_ranges: qparams of this node's output (observer nodes) / weight
    output_qparams: Optional[QParams] = None
    weight_qparams: Optional[QParams] = None


@dataclass
class GraphInfo:
    """Graph-level facts: which states hold, and what the report should tell the user."""

    states: set = field(default_factory=set)
    target: Optional[str] = None
    notes: list = field(default_factory=list)      # human-readable report lines
    #: lower_to_integer: the ops left in float, as user labels ("features.0.2 (Hardswish)")
    float_ops: list = field(default_factory=list)

    def note(self, line: str) -> None:
        if line not in self.notes:
            self.notes.append(line)


def node_info(node: fx.Node) -> NodeInfo:
    info = node.meta.get(_NODE_KEY)
    if info is None:
        info = node.meta[_NODE_KEY] = NodeInfo()
    return info


def has_node_info(node: fx.Node) -> bool:
    return _NODE_KEY in node.meta


def graph_info(gm: fx.GraphModule) -> GraphInfo:
    info = gm.meta.get(_GRAPH_KEY)
    if info is None:
        info = gm.meta[_GRAPH_KEY] = GraphInfo()
    return info
