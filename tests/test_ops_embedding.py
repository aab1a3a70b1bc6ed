"""Embedding lookups on integers (core/embedding_ops.py): int64 token ids in, int8 rows out.

The table is quantized once with the output's qparams, seeded with the whole table, so the
lookup copies bytes: compiled targets equal the reference bit for bit, and every row (seen in
calibration or not) is within half a quantization step of float. Bad indices are refused
before native code touches memory, by Python (naming the input) and again by the C.
"""
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import qcompiler
from qcompiler import QConfig, TensorSpec
from qcompiler.core.embedding_ops import QEmbedding

from helpers import COMPILED_TARGETS as COMPILED, OP_COMPILED_TARGETS, OP_TARGETS  # noqa: E402


class TokenModel(nn.Module):
    """Token ids -> embedding (+ a learned position table row slice, as BERT) -> Linear."""

    def __init__(self, vocab: int, dim: int, positions: bool):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(64, dim) if positions else None
        self.head = nn.Linear(dim, 3)

    def forward(self, ids):
        x = self.tokens(ids)
        if self.positions is not None:
            x = x + self.positions.weight[:ids.shape[1]]
        return self.head(x)


def _quantize(model, ids, target, dtype="uint8"):
    config = QConfig(activation=TensorSpec(dtype, symmetric=False, observer="minmax"), requant_mode="fixed_point")
    return qcompiler.quantize(model.eval(), [ids], config=config, target=target, progress=False)


@pytest.mark.parametrize("target", OP_TARGETS)
@settings(max_examples=6, deadline=None)
@given(vocab=st.integers(2, 300), dim=st.sampled_from([1, 7, 32]), batch=st.integers(1, 3),
       seq=st.integers(1, 9), positions=st.booleans(), dtype=st.sampled_from(["uint8", "int8"]),
       seed=st.integers(0, 2**16))
def test_compiled_embedding_equals_reference(target, vocab, dim, batch, seq, positions, dtype, seed):
    torch.manual_seed(seed)
    model = TokenModel(vocab, dim, positions)
    ids = torch.randint(0, vocab, (batch, seq))
    qm = _quantize(model, ids, target, dtype)
    assert any(isinstance(m, QEmbedding) for m in qm.graph_module.modules())
    other = torch.randint(0, vocab, (batch, seq))          # rows calibration may not have seen
    compiled = qcompiler.compile(qm, target=target)
    assert torch.equal(compiled(other), qm(other))
    if target != "reference":           # one native program, the lookup included
        assert " 0 op(s) in PyTorch" in compiled.describe()


def test_every_row_within_half_a_step_of_float():
    """The observer is seeded with the whole table: rows calibration never looked up are not
    clipped, so each element is round-to-nearest of the float row."""
    torch.manual_seed(0)
    emb = nn.Embedding(50, 8)
    with torch.no_grad():
        emb.weight[49] *= 20          # an outlier row calibration never sees
    model = nn.Sequential(emb)
    qm = qcompiler.quantize(model.eval(), [torch.randint(0, 10, (2, 5))], target="reference", progress=False)
    mod = next(m for m in qm.graph_module.modules() if isinstance(m, QEmbedding))
    step = float(mod.output_qparams.scale)
    all_rows = torch.arange(50)[None]
    err = (mod.float_reference(all_rows) - emb.weight.detach()[None]).abs().max()
    assert float(err) <= step / 2 * (1 + 1e-6)


@pytest.mark.parametrize("target", OP_TARGETS)
def test_out_of_range_ids_name_the_input_and_the_table(target):
    torch.manual_seed(0)
    ids = torch.randint(0, 20, (1, 4))
    compiled = qcompiler.compile(_quantize(TokenModel(20, 4, False), ids, target), target=target)
    for bad in (torch.tensor([[0, 1, 20, 2]]), torch.tensor([[0, -1, 3, 2]])):
        with pytest.raises(IndexError, match=r"outside the .*20 rows"):
            compiled(bad)
    with pytest.raises(TypeError, match="integer"):
        compiled(ids.float())


@pytest.mark.parametrize("target", OP_COMPILED_TARGETS)
def test_native_code_checks_indices_itself(target):
    """Past the Python check (called directly), the C refuses an index before copying a row."""
    from qcompiler.backends.native_model import NativeModelError

    torch.manual_seed(0)
    ids = torch.randint(0, 20, (1, 4))
    compiled = qcompiler.compile(_quantize(TokenModel(20, 4, False), ids, target), target=target)
    out = torch.full((1, 4, 3), 7.0)
    bad = torch.tensor([[0, 1, 2, 1000]])
    with pytest.raises(NativeModelError, match="outside its embedding table"):
        compiled._run([bad], [out], False, compiled._arena_ptr, compiled._arena_bytes, 1)
    assert bool((out == 7.0).all())          # nothing written


def test_int32_ids_work_like_int64():
    torch.manual_seed(0)
    ids = torch.randint(0, 30, (2, 6))
    qm = _quantize(TokenModel(30, 16, True), ids, "reference")
    for target in COMPILED:
        compiled = qcompiler.compile(qm, target=target)
        assert torch.equal(compiled(ids.to(torch.int32)), qm(ids))


def test_max_norm_embedding_stays_in_float():
    emb = nn.Embedding(10, 4, max_norm=1.0)
    with pytest.warns(UserWarning, match="Embedding"):
        qm = qcompiler.quantize(nn.Sequential(emb, nn.Linear(4, 2)).eval(), [torch.randint(0, 10, (1, 3))],
                                target="reference", progress=False)
    assert not any(isinstance(m, QEmbedding) for m in qm.graph_module.modules())
    assert "max_norm" in str(qm.report())


def test_report_measures_the_embedding_layer():
    """report() takes the token ids as they are (the embedding has no input qparams) and gives the
    table's isolated SQNR (quantizing the table with the output qparams)."""
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 7))
    qm = _quantize(TokenModel(50, 16, positions=True), ids, "reference")
    report = qm.report()
    row = next(layer for layer in report.layers if layer.op == "embedding")
    assert row.sqnr_db is not None and row.sqnr_db > 20, row
