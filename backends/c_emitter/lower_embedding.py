"""Lowering of embedding lookups (see extensions.py for how families plug into Lowering).

The indices are a model input (int64 token ids): the C reads them in place, and the table
rows, stored bytes in the weights blob, are copied out (qc_rt_embedding). Python checks the
indices against the table before the native code runs (``IOSpec.index_rows``); the C checks
them again before it copies anything.
"""
from __future__ import annotations

import torch

from qcompiler.core.embedding_ops import QEmbedding
from qcompiler.core.graph_utils import reads_shape
from qcompiler.core.weight_only_ops import QWeightOnlyEmbedding

from .program import unsupported

#: the model's return code when qc_rt_embedding finds an index outside its table
ERR_INDEX = "QC_MODEL_ERR_INDEX"


def is_index_input(node) -> bool:
    """A model input read by embedding lookups (and perhaps for its shape) only."""
    users = list(node.users)
    return any(_is_embedding(u) for u in users) and all(_is_embedding(u) or reads_shape(u) for u in users)


def index_rows(node) -> int:
    """The fewest rows of the tables indexed by ``node``: valid indices are below it."""
    return min(_is_embedding(u).num_embeddings for u in node.users if _is_embedding(u))


def _is_embedding(node):
    if node.op != "call_module":
        return None
    mod = node.graph.owning_module.get_submodule(node.target)
    # weight-only embeddings (lower_weight_only.py) read their indices the same way
    return mod if isinstance(mod, (QEmbedding, QWeightOnlyEmbedding)) else None


def lower_embedding(em, node, mod: QEmbedding) -> None:
    ids = node.args[0]
    if ids not in em.index_inputs:
        raise unsupported(node, "indices computed inside the graph (only a model input of token ids is read in place)")
    shape = em.shape_of(node)
    if len(shape) == 4:
        raise unsupported(node, f"an embedding output of rank 4 {shape} (indices of rank 3)")
    qp = mod.output_qparams
    rows, dim = mod.table.shape
    signed = qp.qtype.signed
    table = (mod.table.to(torch.int16) + (128 if signed else 0)).to(torch.uint8).contiguous()
    out = em.new_tensor(shape, "plain", qp)
    em.add_step(f"{mod.source_layer}: embedding {rows}x{dim}",
                [f"rc = qc_rt_embedding((const int64_t *)inputs[{em.index_inputs[ids]}], {out.numel // dim}, "
                 f"{em.weight(table, 'uint8_t')}, {rows}, {dim}, {em.ptr(out)});",
                 f"if (rc) return {ERR_INDEX};"], writes=[out])
    em.values[node] = out


INTEGER_LOWERINGS = {QEmbedding: lower_embedding}
OP_LOWERINGS: dict = {}
