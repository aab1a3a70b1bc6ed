"""Lowerings of the shapes family: value-preserving ops on int8 tensors, broadcasting QAdd /
QMul, and quantized constants (see extensions.py for how they plug into Lowering).

Views are tracked, not copied: each op is replayed on a contiguous meta-device tensor of
its input's shape (torch computes the sizes, strides and offset of any spelling), and that
view is composed with the strides addressing the bytes of the last tensor written (its layout's:
NHWC for 4-d activations), reshapes included. So a chain like ShuffleNet's ``view → transpose
→ contiguous → view → chunk → getitem`` costs one strided copy per item
(``qc_rt_strided_copy``), made where the value leaves the chain: at a consumer that is not a
shape op, in the layout that consumer reads.

INTEGER_LOWERINGS: integer op class -> fn(em: Lowering, node, mod); OP_LOWERINGS: canonical op
name of a value-preserving op on an int8 tensor -> fn(em, node, mod or None).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.fx as fx

from qcompiler.core.integer_ops import QAdaptiveAvgPool2d, QAvgPool2d, QConv
from qcompiler.core.meta import has_node_info, node_info
from qcompiler.core.op_table import TUPLE_OPS, canonical_op

from ..memory_plan import Buffer
from .literals import c_float
from .program import QTensor, RequantArrays, c_requant_mode, stored, unsupported

#: what the runtime's strided loops take (QC_RT_MAX_DIMS in qc_rt_shapes.h)
MAX_DIMS = 6
#: ops that only change the shape of their input's bytes (lowering.py aliases them when alone)
RESHAPE_OPS = frozenset({"flatten", "unflatten", "reshape", "squeeze", "unsqueeze", "dropout", "identity"})
#: ops replayed on the view (torch computes their sizes, strides and offset)
VIEW_OPS = frozenset({"permute", "transpose", "narrow", "select", "getitem", "expand", "repeat"}) | TUPLE_OPS
SHAPE_OPS = RESHAPE_OPS | VIEW_OPS
#: predicates (em, user, node) -> bool: ``user`` reads ``node`` as a strided view in place (through
#: operand_view), so a view it alone consumes is never written (lower_transformer: matmul operands)
VIEW_READERS: list = []
#: consumers that read 4-d tensors as NHWC (a copy for them is written in that layout)
_NHWC_CONSUMERS = (QConv, QAvgPool2d, QAdaptiveAvgPool2d)


@dataclass
class _View:
    """A value not written yet: element i of the strided dims ``sizes`` / ``strides`` (row-major)
    is byte ``offset + sum(i_k * strides[k])`` of ``base``; the value has ``shape``, which those
    dims refine (they differ after a reshape)."""

    base: QTensor
    sizes: tuple
    strides: tuple
    offset: int
    shape: tuple

    @classmethod
    def of(cls, t: QTensor) -> "_View":
        return cls(t, tuple(t.shape), layout_strides(t.shape, t.layout), 0, tuple(t.shape))

    def reshaped(self, shape) -> "_View":
        return _View(self.base, self.sizes, self.strides, self.offset, tuple(shape))


class ConstantBuffer(Buffer):
    """Bytes in the weights blob (a quantized constant): read-only, outside the arena plan."""

    def __init__(self, nbytes: int, c_expr: str):
        super().__init__(nbytes, -1)
        self.c_expr = c_expr

    def touch(self, step: int) -> None:
        pass


# ---------------------------------------------------------------------------------------
# strides
# ---------------------------------------------------------------------------------------

def _contiguous_strides(shape) -> tuple:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return tuple(reversed(strides))


def layout_strides(shape, layout: str) -> tuple:
    """Strides of a tensor's logical (torch-order) dims in its stored bytes."""
    if layout == "nhwc" and len(shape) == 4:
        _, c, h, w = shape
        return (h * w * c, 1, w * c, c)
    return _contiguous_strides(shape)


def refine(a, b) -> Optional[list]:
    """The common refinement of two shapes of one numel: pieces (size, dim of a, dim of b) such
    that every dim of either is the product of its consecutive pieces; None if there is none
    (then a reshape from a to b is no product of strided dims). Size-1 dims get no piece."""
    da = [(s, k) for k, s in enumerate(a) if s != 1]
    db = [(s, k) for k, s in enumerate(b) if s != 1]
    ra, rb = [s for s, _ in da], [s for s, _ in db]
    pieces, i, j = [], 0, 0
    while i < len(da) and j < len(db):
        x, y = ra[i], rb[j]
        if x == y:
            pieces.append((x, da[i][1], db[j][1]))
            i, j = i + 1, j + 1
        elif x % y == 0:
            pieces.append((y, da[i][1], db[j][1]))
            ra[i], j = x // y, j + 1
        elif y % x == 0:
            pieces.append((x, da[i][1], db[j][1]))
            rb[j], i = y // x, i + 1
        else:
            return None
    return pieces if i == len(da) and j == len(db) else None


def _piece_strides(pieces: list, which: int, strides) -> list:
    """Each piece's stride, given the strides of the dims of shape ``which`` (1: a, 2: b)."""
    out = [0] * len(pieces)
    for dim in {p[which] for p in pieces}:
        acc = strides[dim]
        for i in reversed([i for i, p in enumerate(pieces) if p[which] == dim]):
            out[i] = acc
            acc *= pieces[i][0]
    return out


def copy_dims(sizes, dst, *srcs) -> list:
    """Dims of a loop that writes ``dst`` contiguously: sorted by destination stride, size-1
    dims dropped, neighbours merged where every source steps through them as one dim.
    Returns [(size, (source strides...))], outermost first."""
    dims = sorted(((s, d, tuple(src[i] for src in srcs)) for i, (s, d) in enumerate(zip(sizes, dst)) if s != 1),
                  key=lambda t: -t[1])
    expect = 1
    for s, d, _ in reversed(dims):
        assert d == expect, "destination strides are not a contiguous layout"
        expect *= s
    merged: list = []
    for s, _, st in dims:
        if merged and all(prev == cur * s for prev, cur in zip(merged[-1][1], st)):
            merged[-1] = (merged[-1][0] * s, st)
        else:
            merged.append((s, st))
    return merged or [(1, tuple(1 for _ in srcs))]


def _c_dims(node: fx.Node, dims: list) -> tuple:
    if len(dims) > MAX_DIMS:
        raise unsupported(node, f"a strided loop over {len(dims)} dims (the runtime takes {MAX_DIMS})")
    arr = lambda v: "(const int64_t[]){" + ", ".join(str(int(x)) for x in v) + "}"  # noqa: E731
    sizes = arr(s for s, _ in dims)
    strides = [arr(st[i] for _, st in dims) for i in range(len(dims[0][1]))]
    return len(dims), sizes, strides


# ---------------------------------------------------------------------------------------
# value-preserving ops
# ---------------------------------------------------------------------------------------

def _views(em) -> dict:
    """node -> _View (or a tuple of them: chunk / split) of the values not written yet."""
    return em.__dict__.setdefault("_pending_views", {})


def _input_view(em, node: fx.Node):
    src = node.args[0]
    pending = _views(em)
    if isinstance(src, fx.Node) and src in pending:
        return pending[src]
    return _View.of(em.value(src, node))


def _defers(em, node: fx.Node) -> bool:
    """Every consumer is a shape op on this value (or reads it in place): leave the copy to them."""
    users = list(node.users)
    return bool(users) and all(
        (u.op in ("call_method", "call_function") and canonical_op(u, em.modules) in SHAPE_OPS
         and u.args and u.args[0] is node) or any(reads(em, u, node) for reads in VIEW_READERS) for u in users)


def operand_view(em, node: fx.Node, user: fx.Node) -> "_View":
    """What a VIEW_READERS consumer reads: the pending view of ``node``, else its tensor's bytes."""
    pending = _views(em).get(node)
    return pending if isinstance(pending, _View) else _View.of(em.value(node, user))


def _layout_for(em, node: fx.Node, view: _View) -> str:
    """4-d values stay NHWC when they come from NHWC bytes or go to an NHWC consumer."""
    if len(view.shape) != 4:
        return "plain"
    wants = any(u.op == "call_module" and isinstance(em.modules.get(u.target), _NHWC_CONSUMERS) for u in node.users)
    return "nhwc" if view.base.layout == "nhwc" or wants else "plain"


def materialize(em, node: fx.Node, view: _View, layout: Optional[str] = None) -> QTensor:
    """Write ``view`` as a tensor of its shape in ``layout`` (an alias where the bytes already are)."""
    base, shape = view.base, tuple(view.shape)
    layout = layout or _layout_for(em, node, view)
    numel = math.prod(shape)
    if numel == 0:
        return QTensor(shape, layout, base.zp, base.signed, base.qparams, em.plan.new_buffer(0))
    pieces = refine(view.sizes, shape)
    if pieces is None:        # no strided form: write the dims in their own shape, then reshape the bytes
        flat = materialize(em, node, _View(base, view.sizes, view.strides, view.offset, view.sizes), "plain")
        return QTensor(shape, "plain", base.zp, base.signed, base.qparams, flat.buffer)
    src = _piece_strides(pieces, 1, view.strides)
    dst = _piece_strides(pieces, 2, layout_strides(shape, layout))
    dims = copy_dims([p[0] for p in pieces], dst, src)
    if view.offset == 0 and len(dims) == 1 and dims[0][1][0] == 1 and dims[0][0] == numel:
        return QTensor(shape, layout, base.zp, base.signed, base.qparams, base.buffer)   # same bytes
    out = QTensor(shape, layout, base.zp, base.signed, base.qparams, em.plan.new_buffer(numel))
    src_ptr = em.ptr(base) + (f" + {view.offset}" if view.offset else "")
    outer, dims = dims[:max(0, len(dims) - MAX_DIMS)], dims[max(0, len(dims) - MAX_DIMS):]
    ndim, sizes, (strides,) = _c_dims(node, dims)
    call = f"qc_rt_strided_copy({src_ptr}, {em.ptr(out)}, {ndim}, {sizes}, {strides}, threads);"
    if outer:
        # more dims than the runtime's loop takes (repeat() of a 4-d tensor: 8): one call per
        # index of the outer dims, at source offsets listed in the weights blob
        index = torch.cartesian_prod(*[torch.arange(size) for size, _ in outer]).reshape(-1, len(outer))
        offsets = (index * torch.tensor([st[0] for _, st in outer])).sum(1).to(torch.int64)
        inner = math.prod(size for size, _ in dims)
        call = (f"for (int64_t o = 0; o < {offsets.numel()}; o++) "
                f"qc_rt_strided_copy({src_ptr} + {em.weight(offsets, 'int64_t')}[o], {em.ptr(out)} + o * {inner}, "
                f"{ndim}, {sizes}, {strides}, threads);")
    em.add_step(f"{_label(node)}: copy of a view {list(shape)}" + (" NHWC" if layout == "nhwc" else "")
                + f", {ndim + len(outer)}-d strided", [call], reads=[base], writes=[out])
    return out


def _label(node: fx.Node) -> str:
    layer = node_info(node).source_layer if has_node_info(node) else ""
    return f"{layer} ({node.name})" if layer else node.name


def compose(view: _View, sizes, strides, offset: int, shape) -> Optional[_View]:
    """The view (sizes, strides, offset) of a contiguous tensor of ``view.shape`` taken of
    ``view`` itself: each of its dims must step through whole pieces of the refinement of
    ``view``'s dims and shape (a dim that crosses a piece boundary mid-way has no single stride
    there); None where one does not."""
    pieces = refine(view.sizes, view.shape)
    if pieces is None:
        return None
    psize = [p[0] for p in pieces]
    psrc = _piece_strides(pieces, 1, view.strides)
    place = _contiguous_strides(psize)
    digits = [(offset // place[m]) % psize[m] for m in range(len(psize))]
    out_sizes, out_strides = [], []
    for size, stride in zip(sizes, strides):
        if size == 1:
            continue
        if stride == 0:                      # expand
            out_sizes.append(size)
            out_strides.append(0)
            continue
        m = next((i for i in range(len(psize)) if place[i] <= stride), None)
        if m is None or stride % place[m]:
            return None
        step, cover, subs = stride // place[m], size, []
        while True:
            if digits[m] + (cover - 1) * step < psize[m]:
                subs.append((cover, step * psrc[m]))
                break
            if step != 1 or digits[m] != 0 or cover % psize[m] or m == 0:
                return None
            subs.append((psize[m], psrc[m]))          # the whole piece, then the one outside it
            cover //= psize[m]
            m -= 1
        for s_, st_ in reversed(subs):
            out_sizes.append(s_)
            out_strides.append(st_)
    base_offset = view.offset + sum(d * s for d, s in zip(digits, psrc))
    return _View(view.base, tuple(out_sizes), tuple(out_strides), base_offset, tuple(shape))


def _static(em, node: fx.Node, value):
    """An argument as the number the program is compiled for (shapes are static here)."""
    def resolve(a):
        if isinstance(a, fx.Node):
            a = em.shapes.get(a.name)
            if isinstance(a, torch.Tensor):
                raise unsupported(node, "an index or size given as a tensor")
        return a
    return fx.node.map_aggregate(value, resolve)


def _replay(em, node: fx.Node, shape) -> list:
    """The node's own op on a contiguous meta tensor of ``shape``: [(sizes, strides, offset, shape)]
    of its result (several for chunk / split)."""
    fresh = torch.empty(shape, device="meta", dtype=torch.uint8)
    args, kwargs = _static(em, node, tuple(node.args[1:])), _static(em, node, dict(node.kwargs))
    if node.op == "call_method" and node.target == "repeat":
        return [_repeat(fresh, args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args)]
    if node.op == "call_method":
        out = getattr(fresh, node.target)(*args, **kwargs)
    elif node.target is getattr:
        out = getattr(fresh, node.args[1])
    else:
        out = node.target(fresh, *args, **kwargs)
    results = []
    for t in (out if isinstance(out, (tuple, list)) else (out,)):
        if not (t is fresh or t._is_view()):
            raise unsupported(node, "this indexing copies (a tensor or list index): only views are lowered")
        results.append((tuple(t.shape), t.stride(), t.storage_offset(), tuple(t.shape)))
    return results


def _repeat(fresh: torch.Tensor, reps) -> tuple:
    """x.repeat(r): the dims [r0, s0, r1, s1, ...] with stride 0 on every r, read as [r0*s0, ...]."""
    reps = tuple(int(r) for r in reps)
    lead = len(reps) - fresh.dim()
    sizes, strides = (1,) * lead + tuple(fresh.shape), (0,) * lead + tuple(fresh.stride())
    return ([v for r, s in zip(reps, sizes) for v in (r, s)], [v for st in strides for v in (0, st)], 0,
            tuple(r * s for r, s in zip(reps, sizes)))


def lower_view_op(em, node: fx.Node, mod=None) -> None:
    """permute / transpose / getitem / chunk / split / expand / repeat / narrow / select: a new view."""
    src = node.args[0]
    pending = _views(em)
    if canonical_op(node, em.modules) == "getitem" and isinstance(pending.get(src), tuple):
        return _settle(em, node, pending[src][_static(em, node, node.args[1])])   # an item of chunk / split
    view = _input_view(em, node)
    results = _replay(em, node, view.shape)
    views = [compose(view, *r) for r in results]
    if any(v is None for v in views):          # not one strided view of these bytes: write them first
        view = _View.of(materialize(em, node, view))
        views = [compose(view, *r) for r in results]
        if any(v is None for v in views):
            raise unsupported(node, "a view that is not a strided view of its input")
    if canonical_op(node, em.modules) in TUPLE_OPS:
        if not _defers(em, node):
            raise unsupported(node, "a chunk / split result used other than through indexing")
        pending[node] = tuple(views)
        return
    _settle(em, node, views[0])


def lower_reshape_op(em, node: fx.Node, mod=None) -> None:
    """flatten / unflatten / reshape / view / squeeze / unsqueeze / dropout / contiguous: the same
    bytes with another shape (the one the reference computed), written only where needed."""
    src = node.args[0]
    if not (src in _views(em) or _defers(em, node)):
        return em.lower_reshape(node)          # alone: an alias of the input's bytes
    view = _input_view(em, node)
    if isinstance(view, tuple):
        raise unsupported(node, "a reshape of a chunk / split tuple")
    _settle(em, node, view.reshaped(em.shape_of(node)))


def _settle(em, node: fx.Node, view: _View) -> None:
    if _defers(em, node):
        _views(em)[node] = view
    else:
        em.values[node] = materialize(em, node, view)


# ---------------------------------------------------------------------------------------
# broadcasting add / mul
# ---------------------------------------------------------------------------------------

def broadcasts(em, node: fx.Node) -> bool:
    """A QAdd / QMul whose inputs differ in shape (the same-shape kernels do the rest)."""
    a, b = (em.shapes.get(x.name) if isinstance(x, fx.Node) else None for x in node.args[:2])
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape != b.shape


def _binary_operands(em, node: fx.Node):
    a, b = (em.value(x, node) for x in node.args[:2])
    shape = em.shape_of(node)
    nhwc = len(shape) == 4 and any(t.layout == "nhwc" and len(t.shape) == 4 for t in (a, b))
    layout = "nhwc" if nhwc else "plain"
    order = (0, 2, 3, 1) if nhwc else tuple(range(len(shape)))
    physical = [shape[i] for i in order]
    strides = [[_broadcast_strides(t, shape)[i] for i in order] for t in (a, b)]
    dims = copy_dims(physical, _contiguous_strides(physical), *strides)
    return a, b, shape, layout, dims


def _broadcast_strides(t: QTensor, shape) -> list:
    """Strides of ``t``'s bytes read as ``shape`` (torch broadcasting: 0 on new or size-1 dims)."""
    own = layout_strides(t.shape, t.layout)
    lead = len(shape) - len(t.shape)
    return [0 if i < lead or t.shape[i - lead] == 1 else own[i - lead] for i in range(len(shape))]


def lower_broadcast_add(em, node: fx.Node, mod) -> None:
    """QAdd of two shapes (qc_rt_add's arithmetic, per-input strides, 0 on broadcast dims)."""
    a, b, shape, layout, dims = _binary_operands(em, node)
    out = em.new_tensor(shape, layout, mod.output_qparams)
    ndim, sizes, (sa, sb) = _c_dims(node, dims)
    zo = stored(mod.output_qparams.zero_point_int(), out.signed)
    mode = c_requant_mode(mod.mode)
    ma, mb = (c_float(v) for v in mod.multipliers.tolist())
    m0a, m0b = (int(v) for v in mod.m0.tolist())
    line = (f"qc_rt_add_strided({em.ptr(a)}, {em.ptr(b)}, {em.ptr(out)}, {ndim}, {sizes}, {sa}, {sb}, {a.zp}, "
            f"{b.zp}, {mode}, {ma}, {mb}, INT64_C({m0a}), INT64_C({m0b}), {mod.shift}, {zo}, "
            f"{stored(mod.qmin, out.signed)}, {stored(mod.qmax, out.signed)}, threads);")
    em.add_step(f"{mod.source_layer or node.name}: add {list(a.shape)} + {list(b.shape)} broadcast ({node.name})",
                [line], reads=[a, b], writes=[out])
    em.values[node] = out


def lower_broadcast_mul(em, node: fx.Node, mod) -> None:
    """QMul of two shapes (qc_rt_mul's arithmetic; an SE gate [N,C,1,1] is a row of C per pixel)."""
    a, b, shape, layout, dims = _binary_operands(em, node)
    out = em.new_tensor(shape, layout, mod.output_qparams)
    ndim, sizes, (sa, sb) = _c_dims(node, dims)
    rq = RequantArrays.from_requant(mod.requant, 1, out.signed)
    line = (f"qc_rt_mul_strided({em.ptr(a)}, {em.ptr(b)}, {em.ptr(out)}, {ndim}, {sizes}, {sa}, {sb}, {a.zp}, "
            f"{b.zp}, {em.rq_literal(rq)}, threads);")
    em.add_step(f"{mod.source_layer or node.name}: mul {list(a.shape)} * {list(b.shape)} broadcast ({node.name})",
                [line], reads=[a, b], writes=[out])
    em.values[node] = out


# ---------------------------------------------------------------------------------------
# quantized constants
# ---------------------------------------------------------------------------------------

_SHAPE_QUERIES = frozenset({"size", "dim", "numel"})


def _data_independent(em, node: fx.Node) -> bool:
    """Whether a value depends on no input's data (only on parameters, buffers, shapes)."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            if isinstance(em.shapes.get(n.name), torch.Tensor):
                return False
            continue
        if (n.op == "call_method" and n.target in _SHAPE_QUERIES) or \
                (n.op == "call_function" and n.target is getattr and n.args[1] in ("shape", "ndim")):
            continue
        stack.extend(n.all_input_nodes)
    return True


def lower_constant(em, node: fx.Node, mod) -> None:
    """Quantize of a constant (a parameter or buffer, views of it, anything that reads no input
    data): the reference's own quantized value, stored in the weights blob, read in place."""
    if not _data_independent(em, node.args[0]):
        raise unsupported(node, "Quantize of a computed float value (a float island) is not supported")
    q = em.shapes[node.name]
    qp = mod.qparams
    signed = qp.qtype.signed
    if qp.per_channel or qp.qtype.storage not in (torch.uint8, torch.int8):
        raise unsupported(node, f"a constant quantized as {qp}")
    shape = tuple(q.shape)
    layout = "nhwc" if len(shape) == 4 else "plain"
    data = (q.to(torch.int16) + (128 if signed else 0)).to(torch.uint8)
    if layout == "nhwc":
        data = data.permute(0, 2, 3, 1)
    offset = em.blob.add(data.contiguous())
    buffer = ConstantBuffer(data.numel(), f"((uint8_t *)QC_W(uint8_t, {offset}))")
    em.values[node] = QTensor(shape, layout, stored(qp.zero_point_int(), signed), signed, qp, buffer)


INTEGER_LOWERINGS: dict = {}
OP_LOWERINGS: dict = {**{op: lower_view_op for op in VIEW_OPS}, **{op: lower_reshape_op for op in RESHAPE_OPS}}

__all__ = ["INTEGER_LOWERINGS", "OP_LOWERINGS", "ConstantBuffer", "broadcasts", "lower_broadcast_add",
           "lower_broadcast_mul", "lower_constant", "materialize", "refine", "copy_dims"]
