"""Lowerings of the reduction family (see extensions.py for how they plug into Lowering).

QMean reads its input's bytes as they are stored (NHWC for 4-d activations, torch's order
otherwise) as ``[outer, len, inner]``: len is the reduced dims when they are one run of that
order (``mean([2, 3])`` of NHWC is [N, H·W, C], ``mean(-1)`` is [rows, D, 1]); when they are
not, one strided copy puts them first. The sums land in the order of the kept dims, which is
the output's own layout or is copied into it (lower_shapes.materialize: an alias where the
bytes coincide).
"""
from __future__ import annotations

import math

from qcompiler.core.integer_ops import AccumulatorOverflowError
from qcompiler.core.reduce_ops import QMean, check_mean_accumulator

from .lower_shapes import _View, layout_strides, materialize
from .program import RequantArrays, unsupported


def _source(em, node, x, dims: frozenset):
    """(tensor whose bytes are [outer, len, inner], outer, len, inner, kept dims in byte order)."""
    shape = x.shape
    strides = layout_strides(shape, x.layout)
    order = sorted((d for d in range(len(shape)) if shape[d] != 1), key=lambda d: -strides[d])
    kept = [d for d in order if d not in dims]
    reduced = [i for i, d in enumerate(order) if d in dims]
    if reduced and reduced[-1] - reduced[0] + 1 != len(reduced):
        # the reduced dims are not one run of the byte order: one copy puts them first
        order = [d for d in order if d in dims] + kept
        sizes = tuple(shape[d] for d in order)
        x = materialize(em, node, _View(x, sizes, tuple(strides[d] for d in order), 0, sizes), "plain")
        reduced = list(range(len(reduced)))
    sizes = [shape[d] for d in order]
    if not reduced:             # only size-1 dims reduced: each element is its own sum
        return x, math.prod(sizes), 1, 1, kept
    first, last = reduced[0], reduced[-1]
    return x, math.prod(sizes[:first]), math.prod(sizes[first:last + 1]), math.prod(sizes[last + 1:]), kept


def lower_mean(em, node, mod: QMean) -> None:
    x = em.value(node.args[0], node)
    dims = frozenset(mod.dims)
    count = mod.count(x.shape)
    try:
        check_mean_accumulator(mod.source_layer or node.name, count, mod.input_qparams[0])
    except AccumulatorOverflowError as exc:
        raise unsupported(node, str(exc)) from None
    src, outer, length, inner, kept = _source(em, node, x, dims)
    kept_shape = tuple(x.shape[d] for d in kept)
    sums = em.new_tensor(kept_shape, "plain", mod.output_qparams)
    rq = RequantArrays.from_requant(mod.requant_for(count), 1, sums.signed)
    em.add_step(f"{mod.source_layer or node.name}: mean over dims {list(mod.dims)} of {list(x.shape)} as "
                f"[{outer}, {length}, {inner}] ({node.name})",
                [f"qc_rt_mean({em.ptr(src)}, {em.ptr(sums)}, {outer}, {length}, {inner}, {src.zp}, "
                 f"{em.rq_literal(rq)}, threads);"], reads=[src], writes=[sums])
    em.values[node] = materialize(em, node, _output_view(em.shape_of(node), x.shape, mod, kept, sums),
                                  _output_layout(em.shape_of(node), x.layout))


def _output_view(out_shape, in_shape, mod: QMean, kept: list, sums) -> _View:
    """The output (torch's shape) as a view of the sums, written in the byte order of ``kept``."""
    place = {d: math.prod(in_shape[k] for k in kept[i + 1:]) for i, d in enumerate(kept)}
    in_dims = list(range(len(in_shape))) if mod.keepdim else [d for d in range(len(in_shape)) if d not in mod.dims]
    strides = tuple(place.get(d, 0) for d in in_dims)
    return _View(sums, tuple(out_shape), strides, 0, tuple(out_shape))


def _output_layout(out_shape, in_layout: str) -> str:
    return "nhwc" if len(out_shape) == 4 and in_layout == "nhwc" else "plain"


INTEGER_LOWERINGS: dict = {QMean: lower_mean}
OP_LOWERINGS: dict = {}
