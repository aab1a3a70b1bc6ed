"""Partitioning: an INTEGER graph → native segments joined by PyTorch.

A target compiles what it covers; every other node runs in PyTorch exactly as the reference
interpreter runs it: a float op between a Dequantize and a Quantize (an LSTM, a layer the
config keeps in float, a custom module), an integer op without a kernel on this target, a
number computed from shapes. Like torch-TensorRT's fallback and ExecuTorch's delegation of
subgraphs to XNNPACK, torch.fx's ``CapabilityBasedPartitioner`` groups the covered nodes into
the largest cycle-free segments; each becomes one native program, called from a GraphModule
that runs the rest. Because segments are bit-exact with the reference and the PyTorch part
is the reference, the whole module equals ``QuantizedModel(x)`` bit for bit.

Values cross a boundary as float (after a Dequantize, before a Quantize) or, next to an integer
op that runs in PyTorch, as the int8/uint8 tensors the reference holds.
"""
from __future__ import annotations

import copy
import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.fx as fx
from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner
from torch.fx.passes.operator_support import OperatorSupportBase

from qcompiler.core.graph_utils import reads_shape, shape_only
from qcompiler.core.integer_ops import Dequantize, IntegerOp, Quantize
from qcompiler.core.op_table import canonical_op
from qcompiler.core.provenance import user_label
from qcompiler.core.qtypes import QParams
from qcompiler.core.reference import run_reference

from .base import BackendUnsupported
from .c_emitter.program import INPUT_QPARAMS

SEGMENT_PREFIX = "native_"
_CALLS = ("call_module", "call_function", "call_method")


def _quantized(value) -> bool:
    """An int8/uint8 tensor (or a tuple of them: chunk / split) as the INTEGER graph holds it."""
    if isinstance(value, (tuple, list)):
        return bool(value) and all(_quantized(v) for v in value)
    return isinstance(value, torch.Tensor) and value.dtype in (torch.int8, torch.uint8)


class TargetSupport(OperatorSupportBase):
    """Which nodes a target's generated code covers, from its capabilities (op names of
    ``core.integer_ops.INTEGER_OPS`` and ``core.op_table``) and the values of one reference run:
    quantize/dequantize, integer ops the target lists, and value-preserving ops it lists on
    int8 values. ``excluded`` holds nodes the target refused when it tried (their exact limits,
    e.g. a padding mode, are only known to its lowering)."""

    def __init__(self, ops: frozenset, values: dict, excluded: dict):
        self.ops, self.values, self.excluded = ops, values, excluded
        self._static: dict = {}

    def _static_shape_math(self, submodules, node: fx.Node) -> bool:
        """A number or a shape (``x.size()``, ``n // 2``) computed from int8 values for native
        consumers only: static inside a program compiled for fixed shapes, so it joins the segment
        (left in PyTorch it would cut a segment at every ShuffleNet channel shuffle)."""
        return self._static_number(node) and self._feeds_native(submodules, node)

    def _static_number(self, node: fx.Node) -> bool:
        """Non-tensor, computed only from int8 tensors, the shape of any tensor (static in a
        program compiled for fixed shapes: BERT's ``input_ids.shape[1]``, passed in as a number)
        and such numbers (looking upward)."""
        key = ("up", node)
        if key not in self._static:
            self._static[key] = node.op in _CALLS and not _is_tensor_value(self.values.get(node.name)) and (
                reads_shape(node) or all(_quantized(self.values.get(a.name)) or self._static_number(a)
                                         for a in node.all_input_nodes))
        return self._static[key]

    def _feeds_native(self, submodules, node: fx.Node) -> bool:
        """Read only by nodes the target covers (looking downward)."""
        key = ("down", node)
        if key not in self._static:
            self._static[key] = bool(node.users) and all(
                u.op != "output" and u.name not in self.excluded and (
                    self._feeds_native(submodules, u) if not _is_tensor_value(self.values.get(u.name))
                    else self.is_node_supported(submodules, u)) for u in node.users)
        return self._static[key]

    def is_node_supported(self, submodules, node: fx.Node) -> bool:
        if node.op not in _CALLS or node.name in self.excluded:
            return False
        if not _is_tensor_value(self.values.get(node.name)):
            return self._static_shape_math(submodules, node)
        mod = submodules.get(node.target) if node.op == "call_module" else None
        if isinstance(mod, (Quantize, Dequantize)):
            # per channel: the fake-quantized weight of a layer left in float, not an activation
            return not mod.qparams.per_channel
        if isinstance(mod, IntegerOp):
            return mod.op_name in self.ops
        if not _quantized(self.values.get(node.name)):
            return False
        inputs = [a for a in node.all_input_nodes if _is_tensor_value(self.values.get(a.name))]
        return all(_quantized(self.values.get(a.name)) for a in inputs) and \
            canonical_op(node, submodules) in self.ops


def value_qparams(gm: fx.GraphModule, node: fx.Node) -> Optional[QParams]:
    """The quantization parameters of an int8/uint8 value of the INTEGER graph: its producer's
    output qparams, through value-preserving ops (which keep their input's)."""
    seen = 0
    while isinstance(node, fx.Node) and seen < 10_000:
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if isinstance(mod, Quantize):
                return mod.qparams
            if isinstance(mod, IntegerOp):
                return mod.output_qparams
        if not node.args:
            return None
        node, seen = node.args[0], seen + 1
        if isinstance(node, (tuple, list)):
            node = node[0] if node else None
    return None


@dataclass
class Plan:
    """The split graph: ``graph_module`` calls segment submodules (``native_<i>``, reference
    GraphModules until compiled) and runs every other node in PyTorch."""

    graph_module: fx.GraphModule
    segments: list                  # submodule names, in graph order
    pytorch_nodes: list             # what runs in PyTorch: "features.0.2 (Hardswish): float"
    crossings: int                  # values passed between a segment and PyTorch per call
    excluded: dict = field(default_factory=dict)   # node name -> why the target refused it


def split(gm: fx.GraphModule, ops: frozenset, values: dict, excluded: dict) -> Plan:
    """Partition ``gm`` into native segments (CapabilityBasedPartitioner: cycle-free, as large
    as the dependencies allow) and the PyTorch rest."""
    work = copy.deepcopy(gm)            # fused in place; ``gm`` keeps the producers of every value
    support = TargetSupport(ops, values, excluded)
    partitioner = CapabilityBasedPartitioner(work, support, allows_single_node_partition=True)
    partitions = partitioner.propose_partitions()
    # a segment must compute something: a lone value-preserving op is cheaper in PyTorch
    partitions = [p for p in partitions if any(_computes(work, n) for n in p.nodes)]
    split_gm = partitioner.fuse_partitions(partitions, prefix=SEGMENT_PREFIX) if partitions else work
    _number_in_graph_order(split_gm)
    segments, pytorch, crossings = [], [], 0
    original = {n.name: n for n in gm.graph.nodes}
    modules = dict(gm.named_modules())
    for node in split_gm.graph.nodes:
        if _plumbing(node, values):
            continue
        if node.op == "call_module" and node.target.startswith(SEGMENT_PREFIX):
            segments.append(node.target)
            sub = split_gm.get_submodule(node.target)
            _record_input_qparams(gm, sub, original)
            crossings += sum(1 for a in node.all_input_nodes if a.op != "placeholder")
        elif node.op in _CALLS and _is_tensor_value(values.get(node.name)):
            kind = "integer" if _quantized(values.get(node.name)) else "float"
            why = f" ({excluded[node.name]})" if node.name in excluded else ""
            pytorch.append(f"{user_label(original.get(node.name, node), modules, shape=())}: {kind}{why}")
    crossings += _output_crossings(split_gm, segments)
    return Plan(split_gm, segments, pytorch, crossings, dict(excluded))


def _number_in_graph_order(split_gm: fx.GraphModule) -> None:
    """native_0, native_1, ... in the order they run (the partitioner numbers them otherwise)."""
    nodes = [n for n in split_gm.graph.nodes if n.op == "call_module" and n.target.startswith(SEGMENT_PREFIX)]
    subs = [split_gm.get_submodule(n.target) for n in nodes]
    for n in nodes:
        delattr(split_gm, n.target)
    for i, (n, sub) in enumerate(zip(nodes, subs)):
        n.target = f"{SEGMENT_PREFIX}{i}"
        split_gm.add_submodule(n.target, sub)
    split_gm.recompile()


def _plumbing(node: fx.Node, values: dict) -> bool:
    """Picking an element of a tuple a PyTorch op returned (``y, _ = lstm(x)``): not an op."""
    return (node.op == "call_function" and node.target is operator.getitem and node.args
            and isinstance(values.get(getattr(node.args[0], "name", None)), (tuple, list)))


def _is_tensor_value(v) -> bool:
    return isinstance(v, torch.Tensor) or (isinstance(v, (tuple, list)) and any(isinstance(t, torch.Tensor) for t in v))


def _output_crossings(split_gm: fx.GraphModule, segments: list) -> int:
    """Segment outputs read by anything but the model's output (through getitem for several)."""
    count = 0
    for node in split_gm.graph.nodes:
        if node.op == "call_module" and node.target in segments:
            outs = [u for u in node.users]
            if any(u.op == "call_function" and getattr(u.target, "__name__", "") == "getitem" for u in outs):
                outs = [uu for u in outs for uu in u.users]
            count += sum(1 for u in outs if u.op != "output")
    return count


def _computes(gm: fx.GraphModule, node: fx.Node) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), (IntegerOp, Quantize))


def _record_input_qparams(gm: fx.GraphModule, segment: fx.GraphModule, original: dict) -> None:
    """Integer inputs of a segment carry their qparams (the emitter imports them as they are)."""
    for ph in segment.graph.nodes:
        if ph.op == "placeholder" and ph.name in original:
            qp = value_qparams(gm, original[ph.name])
            if qp is not None:
                ph.meta[INPUT_QPARAMS] = qp


def segment_inputs(plan: Plan, example_inputs: tuple) -> dict:
    """Each segment's arguments on ``example_inputs`` (one run of the split graph, reference
    segments), so each can be compiled for the shapes it will see."""
    seen: dict = {}
    hooks = [plan.graph_module.get_submodule(name).register_forward_pre_hook(
        lambda mod, args, name=name: seen.setdefault(name, args)) for name in plan.segments]
    try:
        with torch.no_grad():
            plan.graph_module(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def plan_for(gm: fx.GraphModule, example_inputs: tuple, ops: frozenset,
             try_segment: Callable[[fx.GraphModule, tuple], None]) -> Plan:
    """Split, then let the target try each segment (``try_segment`` raises BackendUnsupported
    naming the node it cannot take); move refused nodes to PyTorch and split again."""
    _, values = run_reference(gm, *example_inputs, capture=True)
    excluded: dict = {}
    while True:
        plan = split(gm, ops, values, excluded)
        args = segment_inputs(plan, example_inputs)
        try:
            for name in plan.segments:
                try_segment(plan.graph_module.get_submodule(name), args[name])
            return plan
        except BackendUnsupported as exc:
            if exc.node is None or exc.node in excluded:
                raise
            excluded[exc.node] = exc.why


class NativeSegment(torch.nn.Module):
    """One compiled segment inside the split graph: takes the segment's arguments, passes the
    tensors to the native module (numbers, and tensors read only for their shape, were static
    when it was compiled)."""

    def __init__(self, native: torch.nn.Module, name: str, segment: fx.GraphModule):
        super().__init__()
        self.native = native
        self.segment_name = name
        self._passed = [not shape_only(ph) for ph in segment.graph.nodes if ph.op == "placeholder"]

    def forward(self, *args):
        return self.native(*[a for a, passed in zip(args, self._passed) if passed and isinstance(a, torch.Tensor)])


class PartitionedModel(torch.nn.Module):
    """Native segments joined by PyTorch: float in, float out, equal to the reference.

    Segments are compiled for the shapes of the example inputs; another batch size compiles
    its own set on first use."""

    def __init__(self, plan: Plan, example_inputs: tuple, compile_segment: Callable, target: str):
        super().__init__()
        self.plan = plan
        self.target = target
        self._compile_segment = compile_segment
        self._by_shape: dict = {}
        self._example_shapes = _shapes(example_inputs)
        self.graph_module = self._build(example_inputs)
        self._by_shape[self._example_shapes] = self.graph_module

    def _build(self, example_inputs: tuple) -> fx.GraphModule:
        template = self.plan.graph_module
        args = segment_inputs(self.plan, example_inputs)
        natives = {name: NativeSegment(self._compile_segment(template.get_submodule(name), args[name]), name,
                                       template.get_submodule(name)) for name in self.plan.segments}
        root = {}
        for node in template.graph.nodes:
            if node.op in ("call_module", "get_attr"):
                head = node.target if node.op == "call_module" else node.target
                root[head] = natives.get(head) if head in natives else _fetch(template, head)
        return fx.GraphModule(root, template.graph, "PartitionedModel")

    @property
    def segments(self) -> list:
        """The native modules, in graph order."""
        return [self.graph_module.get_submodule(name).native for name in self.plan.segments]

    def forward(self, *inputs):
        key = _shapes(inputs)
        gm = self._by_shape.get(key)
        if gm is None:
            gm = self._by_shape[key] = self._build(inputs)
        with torch.no_grad():
            return gm(*inputs)

    def describe(self) -> str:
        """What runs where: one line per segment and per op that runs in PyTorch."""
        lines = [f"{len(self.plan.segments)} {self.target} segment(s), {len(self.plan.pytorch_nodes)} op(s) in "
                 f"PyTorch, {self.plan.crossings} boundary crossing(s) per call"]
        for name in self.plan.segments:
            sub = self.plan.graph_module.get_submodule(name)
            ops = Counter(getattr(sub.get_submodule(n.target), "op_name", "") or type(sub.get_submodule(n.target)).__name__
                          for n in sub.graph.nodes if n.op == "call_module")
            lines.append(f"  {name}: " + ", ".join(f"{op} x{k}" for op, k in sorted(ops.items())))
        lines += [f"  {entry}, in PyTorch" for entry in self.plan.pytorch_nodes]
        return "\n".join(lines)


def _fetch(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _shapes(inputs: tuple) -> tuple:
    return tuple((tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else x for x in inputs)
