"""Lowering: an INTEGER GraphModule → a :class:`Program` of runtime calls, one step per node.

Each ``lower_<op>`` legalizes one op: NHWC activations, int8 stored as uint8 + 128, weights
packed by the target's :class:`GemmLowering`. This module holds the walk, the boundaries
(inputs, quantize, outputs), elementwise ops, pools and reshapes; convolutions and linear
layers are in lower_gemm_ops.py and the other op families in the modules extensions.py lists.
The C each step calls is in ``backends/c_runtime/`` (``qc_rt_<op>``).
"""
from __future__ import annotations

import math

import torch
import torch.fx as fx

from qcompiler.core.integer_ops import (Dequantize, IntegerOp, QAdaptiveAvgPool2d, QAdd, QAvgPool2d, QCat,
                                        QConv, QMul, QRequantize, Quantize, Requant,
                                        real_multiplier)
from qcompiler.core.graph_utils import shape_only
from qcompiler.core.op_table import canonical_op
from qcompiler.core.qtypes import QParams
from qcompiler.core.shapes import VALUE_KEY, holds_tensor

from ..memory_plan import Buffer, MemoryPlan
from . import lower_embedding, lower_shapes
from .extensions import INTEGER_LOWERINGS, OP_LOWERINGS
from .lower_gemm_ops import pair, space_to_depth_plan
from .literals import c_float
from .program import (INPUT_QPARAMS, BackendUnsupported, FTensor, GemmLowering, IOSpec, Program, QTensor, RequantArrays,
                      Step, c_requant_mode, stored, unsupported)
from .weights import WeightsBlob

SERIAL_BELOW_MACS = 1 << 19
#: the model's return code when an input it quantizes holds a NaN or an infinity
ERR_NONFINITE = "QC_MODEL_ERR_NONFINITE"
#: value-preserving ops that only change the shape (run as an alias of the same bytes)
RESHAPES = frozenset({"flatten", "unflatten", "reshape", "squeeze", "unsqueeze", "dropout", "identity"})

#: every op this emitter lowers (capability names of core.integer_ops.INTEGER_OPS and core.op_table):
#: a C target covers these when its GemmLowering and runtime are complete
EMITTED_OPS = frozenset({
    "quantize", "dequantize", "requantize", "conv2d", "linear", "add", "mul", "avg_pool2d",
    "adaptive_avg_pool2d", "cat", "max_pool2d", "relu", "clamp", *RESHAPES,
    "lookup",                                            # 256-entry tables (lower_elementwise.py)
    "matmul", "softmax", "layer_norm", "conv1d",         # the transformer family (lower_transformer.py)
    "permute", "transpose", "chunk", "split", "tensor_split", "unbind", "narrow",   # views and copies
    "select", "getitem", "expand", "repeat",             # (lower_shapes.py)
    "mean",                                              # reductions (lower_reduce.py)
    "embedding",                                         # int64 indices (lower_embedding.py)
    "weight_only_embedding",                             # dequantizing gather (lower_weight_only.py)
})


class Lowering:
    """Walks an INTEGER graph in order and turns each node into runtime calls."""

    def __init__(self, gm: fx.GraphModule, gemm: GemmLowering, name: str = "model", depthwise_lanes: int = 16):
        self.gm = gm
        self.gemm = gemm
        self.depthwise_lanes = depthwise_lanes       # the target's depthwise weight layout (TargetSettings)
        self.name = name
        self.modules = dict(gm.named_modules())
        self.blob = WeightsBlob()
        self.plan = MemoryPlan()
        self.steps: list[Step] = []
        self.values: dict[fx.Node, QTensor] = {}
        self.float_values: dict[fx.Node, FTensor] = {}  # values computed in float32 (FTensor)
        self.inputs: dict[fx.Node, int] = {}
        self.index_inputs: dict[fx.Node, int] = {}      # token ids, read in place by embeddings
        self.input_specs: list[IOSpec] = []
        self.output_specs: list[IOSpec] = []
        self._converted: dict[tuple, QTensor] = {}
        self.fused: set[fx.Node] = set()
        self.tuple_output = False
        # every node's value (shape and dtype; numbers and constants as they are), recorded by the
        # target's legalize (core.shapes.propagate_values)
        missing = [n.name for n in gm.graph.nodes if VALUE_KEY not in n.meta and n.op != "output"]
        if missing:
            raise ValueError(f"the graph was not legalized for a target (no value recorded for {missing[:3]}); "
                             "compile it through a backend (legalize, then emit)")
        self.shapes = {n.name: n.meta.get(VALUE_KEY) for n in gm.graph.nodes}
        self.output_slots = _single_outputs(gm)     # node returned exactly once -> its output index

    # -- helpers -------------------------------------------------------------------------

    def ptr(self, t: QTensor) -> str:
        # a quantized constant lives in the weights blob (lower_shapes.ConstantBuffer)
        return getattr(t.buffer, "c_expr", None) or f"QC_BUF({t.buffer.ident})"

    def weight(self, tensor: torch.Tensor, ctype: str) -> str:
        return f"QC_W({ctype}, {self.blob.add(tensor)})"

    def rq_literal(self, r: RequantArrays) -> str:
        if r.mode == "fp32":
            return (f"&(qc_rq){{{c_requant_mode(r.mode)}, {self.weight(r.mult, 'float')}, NULL, NULL, "
                    f"{r.zp}, {r.qmin}, {r.qmax}}}")
        return (f"&(qc_rq){{{c_requant_mode(r.mode)}, NULL, {self.weight(r.m0.to(torch.int32), 'int32_t')}, "
                f"{self.weight(r.shift.to(torch.int32), 'int32_t')}, {r.zp}, {r.qmin}, {r.qmax}}}")

    def new_tensor(self, shape, layout: str, qp: QParams, extra_bytes: int = 0) -> QTensor:
        shape = tuple(int(s) for s in shape)
        signed = qp.qtype.signed
        if qp.per_channel:
            raise BackendUnsupported(f"per-channel activation quantization is not supported ({qp})")
        if qp.qtype.storage not in (torch.uint8, torch.int8):
            raise BackendUnsupported(f"activation type {qp.qtype} is not supported")
        buf = self.plan.new_buffer(math.prod(shape) + extra_bytes)
        return QTensor(shape, layout, stored(qp.zero_point_int(), signed), signed, qp, buf)

    def scratch(self, nbytes: int) -> Buffer:
        return self.plan.new_buffer(nbytes)

    def new_float_value(self, node: fx.Node) -> FTensor:
        """Where ``node``'s float32 result goes: straight into the caller's output buffer when the
        node is one output of the program (no copy), else the arena."""
        shape = self.shape_of(node)
        slot = self.output_slots.get(node)
        if slot is not None:
            return FTensor(shape, c_expr=f"((float *)outputs[{slot}])")
        return FTensor(shape, self.plan.new_buffer(4 * math.prod(shape)))

    def float_value(self, node, user: fx.Node) -> FTensor:
        """The float32 tensor ``node`` holds: a float input of the program (read in place) or
        the output of an op that computes in float."""
        if isinstance(node, fx.Node) and node in self.inputs:
            return FTensor(self.shape_of(node), c_expr=f"inputs[{self.inputs[node]}]")
        if isinstance(node, fx.Node) and node in self.float_values:
            return self.float_values[node]
        raise unsupported(user, f"input {node} is not a float32 tensor of this program")

    def float_rows(self, node: fx.Node, k: int) -> tuple[FTensor, int]:
        """The float input of a linear layer of ``k`` input features as rows: (its FTensor, the
        number of rows, the leading dims flattened)."""
        x = self.float_value(node.args[0], node)
        if not x.shape or x.shape[-1] != k or k == 0:
            raise unsupported(node, f"input of shape {list(x.shape)} for {k} input features")
        return x, math.prod(x.shape[:-1])

    def fptr(self, t: FTensor) -> str:
        """A ``float *`` C expression for ``t`` (const for an input)."""
        return t.c_expr or f"((float *)QC_BUF({t.buffer.ident}))"

    def add_step(self, comment: str, lines: list, reads=(), writes=()) -> None:
        index = len(self.steps)
        for t in [*reads, *writes]:
            buf = t.buffer if isinstance(t, (QTensor, FTensor)) else t
            if buf is not None:         # None: a program input read in place
                buf.touch(index)
        self.steps.append(Step(comment, lines))

    def shape_of(self, node: fx.Node) -> tuple:
        v = self.shapes.get(node.name)
        if not isinstance(v, torch.Tensor):
            raise unsupported(node, "its value is not a single tensor")
        return tuple(v.shape)

    def value(self, node, user: fx.Node, keep_nhwc_flat: bool = False) -> QTensor:
        """The tensor ``node`` computed; a flattened NHWC tensor is put in torch's order unless
        the consumer (a linear layer, whose weights can be permuted instead) keeps it."""
        if not isinstance(node, fx.Node) or node not in self.values:
            raise unsupported(user, f"input {node} is not a quantized tensor computed by this program "
                                    "(a float island or a constant?)")
        t = self.values[node]
        return t if keep_nhwc_flat or t.layout != "nhwc_flat" else self.as_layout(t, "plain")

    def as_layout(self, t: QTensor, layout: str) -> QTensor:
        """``t`` in ``layout``: the same bytes when orders coincide, else a transposed copy."""
        if t.layout == layout:
            return t
        if t.same_bytes_as(layout):
            return QTensor(t.shape, layout, t.zp, t.signed, t.qparams, t.buffer)
        key = (id(t), layout)
        if key in self._converted:
            return self._converted[key]
        if t.layout == "nhwc_flat" and layout != "plain":
            raise BackendUnsupported(f"cannot view a flattened NHWC tensor {t.shape} as {layout}")
        n, c, h, w = t.nhwc_dims if t.layout == "nhwc_flat" else t.shape
        out = QTensor(t.shape, layout, t.zp, t.signed, t.qparams, self.plan.new_buffer(t.numel))
        fn = "qc_rt_nhwc_to_nchw" if layout == "plain" else "qc_rt_nchw_to_nhwc"
        self.add_step(f"layout change to {layout}", [f"{fn}({self.ptr(t)}, {self.ptr(out)}, {n}, {c}, {h * w});"],
                      reads=[t], writes=[out])
        self._converted[key] = out
        return out

    # -- the walk ------------------------------------------------------------------------

    def run(self) -> Program:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.lower_input(node)
            elif node.op == "output":
                self.lower_output(node)
            elif node.op == "get_attr":
                continue            # read at lowering time by the Quantize of it (lower_shapes.lower_constant)
            else:
                try:
                    self.lower_node(node)
                except BackendUnsupported as exc:
                    if exc.node is not None:
                        raise
                    # a helper's refusal: attributed to the node being lowered (partitioning moves it)
                    raise unsupported(node, str(exc)) from None
        self.plan.solve()
        blob, digest = self.blob.finish()
        return Program(self.steps, self.plan, self.input_specs, self.output_specs, blob, digest, self.name,
                       self.tuple_output)

    def lower_node(self, node: fx.Node) -> None:
        if node in self.fused:
            return                  # computed by its producer's step (a residual add in an epilogue)
        if not holds_tensor(self.shapes.get(node.name)):
            return                  # a number or a shape: static in a program compiled for fixed shapes
        mod = self.modules.get(node.target) if node.op == "call_module" else None
        if isinstance(mod, Quantize):
            return self.lower_quantize(node, mod)
        if isinstance(mod, Dequantize):
            if any(u.op != "output" for u in node.users):
                raise unsupported(node, "float islands (Dequantize → float op → Quantize) are not "
                                        "supported by this target; quantize that op or leave it out")
            return                  # emitted with the output it feeds
        if isinstance(mod, IntegerOp):
            lower = {QAdd: self.lower_add,
                     QMul: self.lower_mul, QAvgPool2d: self.lower_pool, QAdaptiveAvgPool2d: self.lower_pool,
                     QCat: self.lower_cat, QRequantize: self.lower_requantize}.get(type(mod))
            if lower is None and type(mod) in INTEGER_LOWERINGS:
                return INTEGER_LOWERINGS[type(mod)](self, node, mod)
            if lower is None:
                raise unsupported(node, f"integer op {type(mod).__name__} has no kernel here")
            return lower(node, mod)
        op = canonical_op(node, self.modules)
        if op in OP_LOWERINGS:
            return OP_LOWERINGS[op](self, node, mod)
        if op in RESHAPES:
            return self.lower_reshape(node)
        if op == "max_pool2d":
            return self.lower_max_pool(node, mod)
        if op == "relu":
            return self.lower_clamp(node, None, None, relu=True)
        if op == "clamp":         # relu on a quantized value arrives as clamp(q, min=zp)
            names = ["input", "min", "max"]
            params = dict(zip(names, node.args))
            params.update(node.kwargs)
            return self.lower_clamp(node, params.get("min"), params.get("max"))
        raise unsupported(node, f"op {op or node.target!r} is not supported by this target")

    # -- boundary ------------------------------------------------------------------------

    def lower_input(self, node: fx.Node) -> None:
        """A float input (quantized by the Quantize steps that read it), an int8/uint8 input
        (a segment boundary after an op that runs in PyTorch: imported as it is, with the
        qparams partitioning recorded in ``node.meta[INPUT_QPARAMS]``), or a number (a size the
        PyTorch side computed: shapes are static here, so it is not an input of the C)."""
        value = self.shapes.get(node.name)
        if not isinstance(value, torch.Tensor) or shape_only(node):
            return
        index, shape = len(self.input_specs), tuple(value.shape)
        if value.is_floating_point():
            self.inputs[node] = index
            self.input_specs.append(IOSpec(node.name, shape, "float32"))
            return
        if lower_embedding.is_index_input(node):
            self.index_inputs[node] = index
            self.input_specs.append(IOSpec(node.name, shape, "int64", index_rows=lower_embedding.index_rows(node)))
            return
        qp = node.meta.get(INPUT_QPARAMS)
        if qp is None or value.dtype != qp.qtype.storage:
            raise unsupported(node, f"an integer input ({value.dtype}) without quantization parameters")
        t = self.new_tensor(shape, "plain", qp)
        self.input_specs.append(IOSpec(node.name, shape, str(value.dtype).replace("torch.", ""), qp.scale_float(),
                                       qp.zero_point_int(), raw=True))
        self.add_step(f"{node.name}: integer input {index} {list(shape)}",
                      [f"qc_rt_import_int((const void *)inputs[{index}], {self.ptr(t)}, {t.numel}, {int(t.signed)});"],
                      writes=[t])
        self.values[node] = t

    def lower_quantize(self, node: fx.Node, mod: Quantize) -> None:
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src in self.inputs):
            return lower_shapes.lower_constant(self, node, mod)      # else a float island: unsupported
        shape = self.shape_of(node)
        nhwc = len(shape) == 4
        if nhwc and self._quantize_space_to_depth(node, mod, src, shape):
            return
        out = self.new_tensor(shape, "nhwc" if nhwc else "plain", mod.qparams)
        n, c, hw = _nchw(shape)
        qp = mod.qparams
        self.add_step(f"{node.name}: quantize input {src.name} {list(shape)} to {qp.qtype}"
                      + (" NHWC" if nhwc else ""),
                      [f"if (qc_rt_quantize(inputs[{self.inputs[src]}], {self.ptr(out)}, {n}, {c}, {hw}, {int(nhwc)}, "
                       f"{c_float(qp.scale_float())}, {out.zp}, {stored(qp.qtype.qmin, out.signed)}, "
                       f"{stored(qp.qtype.qmax, out.signed)}, threads)) return {ERR_NONFINITE};"], writes=[out])
        self.values[node] = out

    def space_to_depth_plan(self, mod: QConv, cin: int, out_shape: tuple):
        """The space-to-depth plan of a thin strided convolution, where the target wants it."""
        return space_to_depth_plan(mod, cin, out_shape) if self.gemm.space_to_depth_stems else None

    def _quantize_space_to_depth(self, node: fx.Node, mod: Quantize, src: fx.Node, shape: tuple) -> bool:
        """An input whose one consumer is a thin strided convolution (an RGB stem) is quantized
        straight into the space-to-depth layout that convolution reads (no separate pass)."""
        users = list(node.users)
        conv = self.modules.get(users[0].target) if len(users) == 1 and users[0].op == "call_module" else None
        if not isinstance(conv, QConv) or users[0].args[0] is not node or conv.dims != 2 \
                or isinstance(conv.padding, str):
            return False
        n, c, h, w = shape
        plan = self.space_to_depth_plan(conv, c, self.shape_of(users[0]))
        if plan is None:
            return False
        s, _, _, h2, w2 = plan
        if c > 4 or w > 4096 or w2 * s * s * c > 16384:     # qc_rt_quantize_s2d's row buffers
            return False
        (ph, pw) = pair(conv.padding)
        qp = mod.qparams
        out = self.new_tensor((n, s * s * c, h2, w2), "nhwc", qp)
        out.space_to_depth = (s, tuple(shape))
        self.add_step(f"{node.name}: quantize input {src.name} {list(shape)} to {qp.qtype}, space-to-depth "
                      f"{s}x{s} for {users[0].name}",
                      [f"if (qc_rt_quantize_s2d(inputs[{self.inputs[src]}], {self.ptr(out)}, &(qc_window){{{n}, {h}, "
                       f"{w}, {c}, {h2}, {w2}, {s}, {s}, {s}, {s}, {ph}, {pw}, 1, 1}}, {c_float(qp.scale_float())}, "
                       f"{out.zp}, {stored(qp.qtype.qmin, out.signed)}, {stored(qp.qtype.qmax, out.signed)}, "
                       f"threads)) return {ERR_NONFINITE};"], writes=[out])
        self.values[node] = out
        return True

    def lower_output(self, node: fx.Node) -> None:
        results = node.args[0]
        flat = list(results) if isinstance(results, (tuple, list)) else [results]
        for i, dq in enumerate(flat):
            mod = self.modules.get(dq.target) if isinstance(dq, fx.Node) and dq.op == "call_module" else None
            if isinstance(dq, fx.Node) and dq in self.float_values:
                self.lower_float_output(i, dq)
                continue
            if not isinstance(mod, Dequantize) and isinstance(dq, fx.Node) and dq in self.values:
                self.lower_raw_output(i, dq)
                continue
            if not isinstance(mod, Dequantize):
                raise unsupported(node, f"output {i} is not dequantized from an integer tensor")
            t = self.value(dq.args[0], dq)
            n, c, hw = _nchw(t.shape)
            nhwc = int(t.layout == "nhwc" and len(t.shape) == 4)
            qp = mod.qparams
            self.output_specs.append(IOSpec(dq.name, t.shape, str(qp.qtype.storage).replace("torch.", ""),
                                            qp.scale_float(), qp.zero_point_int()))
            zp = stored(qp.zero_point_int(), t.signed)
            self.add_step(f"{dq.name}: output {i}, dequantize {list(t.shape)}", [
                f"if (as_int) qc_rt_export_int({self.ptr(t)}, outputs[{i}], {n}, {c}, {hw}, {nhwc}, {int(t.signed)});",
                f"else qc_rt_dequantize({self.ptr(t)}, (float *)outputs[{i}], {n}, {c}, {hw}, {nhwc}, "
                f"{c_float(qp.scale_float())}, {zp}, threads);"], reads=[t])
        self.tuple_output = isinstance(results, (tuple, list))

    def lower_float_output(self, i: int, node: fx.Node) -> None:
        """A value computed in float32 leaving as it is (as_int does not apply to it); a copy only
        when it was not computed in the output buffer already (new_float_value)."""
        t = self.float_values[node]
        self.output_specs.append(IOSpec(node.name, t.shape, "float32", raw=True))
        if t.c_expr == f"((float *)outputs[{i}])":
            return
        self.add_step(f"{node.name}: output {i}, float32 {list(t.shape)}",
                      [f"memcpy(outputs[{i}], {self.fptr(t)}, sizeof(float) * (size_t){t.numel});"], reads=[t])

    def lower_raw_output(self, i: int, node: fx.Node) -> None:
        """An int8/uint8 value leaving as integers (a segment boundary before a PyTorch op)."""
        t = self.as_layout(self.value(node, node), "plain")
        qp = t.qparams
        self.output_specs.append(IOSpec(node.name, t.shape, str(qp.qtype.storage).replace("torch.", ""),
                                        qp.scale_float(), qp.zero_point_int(), raw=True))
        self.add_step(f"{node.name}: output {i} as integers {list(t.shape)}",
                      [f"qc_rt_export_int({self.ptr(t)}, outputs[{i}], 1, 1, {t.numel}, 0, {int(t.signed)});"],
                      reads=[t])

    # -- elementwise -----------------------------------------------------------------------

    def __pair_inputs(self, node: fx.Node) -> tuple[QTensor, QTensor]:
        a, b = (self.value(arg, node) for arg in node.args[:2])
        if a.shape != b.shape:
            raise unsupported(node, f"broadcasting {a.shape} with {b.shape} is not supported")
        return a, self.as_layout(b, a.layout)

    def lower_add(self, node: fx.Node, mod: QAdd) -> None:
        if lower_shapes.broadcasts(self, node):
            return lower_shapes.lower_broadcast_add(self, node, mod)
        a, b = self.__pair_inputs(node)
        out = self.new_tensor(a.shape, a.layout, mod.output_qparams)
        zo = stored(mod.output_qparams.zero_point_int(), out.signed)
        mode = c_requant_mode(mod.mode)
        ma, mb = (c_float(v) for v in mod.multipliers.tolist())
        m0a, m0b = (int(v) for v in mod.m0.tolist())
        line = (f"qc_rt_add({self.ptr(a)}, {self.ptr(b)}, {self.ptr(out)}, {a.numel}, {a.zp}, {b.zp}, {mode}, "
                f"{ma}, {mb}, INT64_C({m0a}), INT64_C({m0b}), {mod.shift}, {zo}, "
                f"{stored(mod.qmin, out.signed)}, {stored(mod.qmax, out.signed)}, threads);")
        self.add_step(f"{mod.source_layer or node.name}: add {list(a.shape)} ({node.name})", [line],
                      reads=[a, b], writes=[out])
        self.values[node] = out

    def lower_mul(self, node: fx.Node, mod: QMul) -> None:
        if lower_shapes.broadcasts(self, node):
            return lower_shapes.lower_broadcast_mul(self, node, mod)
        a, b = self.__pair_inputs(node)
        out = self.new_tensor(a.shape, a.layout, mod.output_qparams)
        rq = RequantArrays.from_requant(mod.requant, 1, out.signed)
        line = (f"qc_rt_mul({self.ptr(a)}, {self.ptr(b)}, {self.ptr(out)}, {a.numel}, {a.zp}, {b.zp}, "
                f"{self.rq_literal(rq)}, threads);")
        self.add_step(f"{mod.source_layer or node.name}: mul {list(a.shape)} ({node.name})", [line],
                      reads=[a, b], writes=[out])
        self.values[node] = out

    def lower_requantize(self, node: fx.Node, mod: QRequantize) -> None:
        x = self.value(node.args[0], node)
        out = self.new_tensor(x.shape, x.layout, mod.output_qparams)
        rq = RequantArrays.from_requant(mod.requant, 1, out.signed)
        self.add_step(f"{node.name}: requantize {list(x.shape)}",
                      [f"qc_rt_requantize({self.ptr(x)}, {self.ptr(out)}, {x.numel}, {x.zp}, {self.rq_literal(rq)});"],
                      reads=[x], writes=[out])
        self.values[node] = out

    def lower_clamp(self, node: fx.Node, lo, hi, relu: bool = False) -> None:
        """clamp(q, lo, hi) on the integers (bounds in the reference's domain); relu: max(q, zp)."""
        x = self.value(node.args[0], node)
        for bound in (lo, hi):
            if bound is not None and not isinstance(bound, int):
                raise unsupported(node, f"clamp bound {bound!r} is not an integer constant")
        qlo = x.zp if relu else (0 if lo is None else max(0, stored(lo, x.signed)))
        qhi = 255 if hi is None else min(255, stored(hi, x.signed))
        out = QTensor(x.shape, x.layout, x.zp, x.signed, x.qparams, self.plan.new_buffer(x.numel))
        what = "relu, max(q, zp)" if relu else f"clamp to [{lo}, {hi}]"
        self.add_step(f"{node.name}: {what} on a quantized value",
                      [f"qc_rt_clamp({self.ptr(x)}, {self.ptr(out)}, {x.numel}, {qlo}, {qhi});"],
                      reads=[x], writes=[out])
        self.values[node] = out

    def lower_cat(self, node: fx.Node, mod: QCat) -> None:
        srcs = node.args[0] if isinstance(node.args[0], (list, tuple)) else node.args
        xs = [self.value(s, node) for s in srcs]
        layout = xs[0].layout
        xs = [self.as_layout(x, layout) for x in xs]
        shape = self.shape_of(node)
        out = self.new_tensor(shape, layout, mod.output_qparams)
        dim = mod.dim % len(shape)
        pdim = (0, 3, 1, 2)[dim] if layout == "nhwc" and len(shape) == 4 else dim
        pshape = _physical(shape, layout)
        outer = math.prod(pshape[:pdim])
        dst_inner = math.prod(pshape[pdim:])
        lines, offset = [], 0
        for x, requant in zip(xs, mod.requants):
            inner = x.numel // outer
            rq = "NULL"
            if isinstance(requant, QRequantize):
                rq = self.rq_literal(RequantArrays.from_requant(requant.requant, 1, out.signed))
            lines.append(f"qc_rt_cat_part({self.ptr(x)}, {self.ptr(out)}, {outer}, {inner}, {dst_inner}, "
                         f"{offset}, {x.zp}, {rq});")
            offset += inner
        self.add_step(f"{mod.source_layer or node.name}: cat of {len(xs)} along dim {dim} ({node.name})", lines,
                      reads=xs, writes=[out])
        self.values[node] = out

    # -- pools ---------------------------------------------------------------------------

    def lower_max_pool(self, node: fx.Node, mod) -> None:
        x = self.as_layout(self.value(node.args[0], node), "nhwc")
        if mod is not None:
            k, s, p, d = mod.kernel_size, mod.stride, mod.padding, mod.dilation
            ret = mod.return_indices
        else:
            names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
            params = dict(zip(names, node.args))
            params.update(node.kwargs)
            k = params["kernel_size"]
            s = params.get("stride") or k
            p, d = params.get("padding", 0), params.get("dilation", 1)
            ret = params.get("return_indices", False)
        if ret:
            raise unsupported(node, "max_pool2d with return_indices")
        shape = self.shape_of(node)
        out = QTensor(shape, "nhwc", x.zp, x.signed, x.qparams, self.plan.new_buffer(math.prod(shape)))
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = pair(k), pair(s), pair(p), pair(d)
        geom = (f"&(qc_window){{{n}, {h}, {w}, {c}, {shape[2]}, {shape[3]}, "
                f"{kh}, {kw}, {sh}, {sw}, {ph}, {pw}, {dh}, {dw}}}")
        self.add_step(f"{node.name}: max_pool {kh}x{kw} s{sh} p{ph}, {h}x{w}->{shape[2]}x{shape[3]}",
                      [f"qc_rt_max_pool({self.ptr(x)}, {self.ptr(out)}, {geom}, threads);"], reads=[x], writes=[out])
        self.values[node] = out

    def lower_pool(self, node: fx.Node, mod) -> None:
        x = self.as_layout(self.value(node.args[0], node), "nhwc")
        if len(x.shape) != 4:
            raise unsupported(node, "pools need a 4-d input")
        shape = self.shape_of(node)
        out = self.new_tensor(shape, "nhwc", mod.output_qparams)
        n, c, h, w = x.shape
        oh, ow = shape[2], shape[3]
        if isinstance(mod, QAdaptiveAvgPool2d):
            h0 = [(i * h) // oh for i in range(oh)]
            h1 = [-(-((i + 1) * h) // oh) for i in range(oh)]
            w0 = [(j * w) // ow for j in range(ow)]
            w1 = [-(-((j + 1) * w) // ow) for j in range(ow)]
            kind = "adaptive_avg_pool"
        else:
            (kh, kw), (sh, sw) = pair(mod.kernel_size), pair(mod.stride or mod.kernel_size)
            ph, pw = pair(mod.padding)
            h0 = [max(i * sh - ph, 0) for i in range(oh)]
            h1 = [min(i * sh - ph + kh, h) for i in range(oh)]
            w0 = [max(j * sw - pw, 0) for j in range(ow)]
            w1 = [min(j * sw - pw + kw, w) for j in range(ow)]
            kind = f"avg_pool {kh}x{kw} s{sh} p{ph}"
        # the divisor per position exactly as the reference computes it
        _, counts = mod.sums_and_counts(torch.zeros((1, 1, h, w), dtype=torch.float64))
        real = real_multiplier(mod.input_qparams[0].scale, out=mod.output_qparams) / counts.to(torch.float64)
        requant = Requant.make(real, mod.output_qparams, mod.mode)
        rq = RequantArrays.from_requant(requant, oh * ow, out.signed)
        i32 = lambda v: self.weight(torch.tensor(v, dtype=torch.int32), "int32_t")  # noqa: E731
        geom = f"&(qc_window){{{n}, {h}, {w}, {c}, {oh}, {ow}, 0, 0, 0, 0, 0, 0, 0, 0}}"
        line = (f"qc_rt_avg_pool({self.ptr(x)}, {self.ptr(out)}, {geom}, {i32(h0)}, {i32(h1)}, {i32(w0)}, "
                f"{i32(w1)}, {x.zp}, {self.rq_literal(rq)}, threads);")
        self.add_step(f"{mod.source_layer or node.name}: {kind}, {h}x{w}->{oh}x{ow} ({node.name})", [line],
                      reads=[x], writes=[out])
        self.values[node] = out

    # -- shape-only ops --------------------------------------------------------------------

    def lower_reshape(self, node: fx.Node) -> None:
        x = self.value(node.args[0], node, keep_nhwc_flat=True)
        shape = self.shape_of(node)
        if shape == x.shape:
            self.values[node] = x
            return
        if (x.layout == "nhwc" and not x.same_bytes_as("plain") and len(shape) == 2
                and shape[0] == x.shape[0]):
            # flatten(1) of an NHWC tensor: keep the bytes, let the consumer decide (lower_linear)
            self.values[node] = QTensor(shape, "nhwc_flat", x.zp, x.signed, x.qparams, x.buffer, x.shape)
            return
        x = self.as_layout(x, "plain")
        layout = "plain"
        self.values[node] = QTensor(shape, layout, x.zp, x.signed, x.qparams, x.buffer)



def _single_outputs(gm: fx.GraphModule) -> dict:
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    flat = list(out) if isinstance(out, (tuple, list)) else [out]
    return {n: i for i, n in enumerate(flat) if isinstance(n, fx.Node) and flat.count(n) == 1}


def _nchw(shape) -> tuple[int, int, int]:
    """(N, C, the rest) of a tensor shape, as the boundary kernels see it."""
    if len(shape) == 0:
        return 1, 1, 1
    if len(shape) == 1:
        return 1, shape[0], 1
    return shape[0], shape[1], math.prod(shape[2:])


def _physical(shape, layout) -> tuple:
    if layout == "nhwc" and len(shape) == 4:
        n, c, h, w = shape
        return (n, h, w, c)
    return tuple(shape)
