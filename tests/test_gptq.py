"""GPTQ rounding (core/gptq.py) and its use by quantize_weights: the storage is QuantizedWeight's
exactly, the output error on the calibration inputs beats round-to-nearest, a Hessian without
cross terms gives round-to-nearest's codes, dead inputs, determinism, QConfig checks, and the pass
on a small model and on the zoo's BERT."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import qcompiler
from qcompiler import QConfig
from qcompiler.core.gptq import gptq_quantize
from qcompiler.core.pass_manager import PassContext
from qcompiler.core.report import sqnr_db
from qcompiler.core.weight_only_ops import (QuantizedWeight, QWeightOnlyEmbedding, QWeightOnlyLinear, exact_linear,
                                            group_codes, unpack_nibbles)
from qcompiler.zoo.bert import bert_encoder
from qcompiler.passes.quantize_weights import input_hessians

#: (dtype, symmetric, group size) of every stored format, at each group size and per channel
FORMATS = [("int4", True, 32), ("int4", False, 32), ("nf4", True, 32), ("int4", True, 64), ("int4", False, 64),
           ("nf4", True, 64), ("int4", True, 128), ("int4", False, 128), ("nf4", True, 128), ("int8", True, None),
           ("int4", True, None), ("int4", False, None), ("nf4", True, None), ("int8", True, 32)]
FORMAT_IDS = [f"{d}-{'sym' if s else 'asym'}-g{g or 'K'}" for d, s, g in FORMATS]


def correlated_inputs(seed: int, rows: int = 1024, k: int = 256) -> torch.Tensor:
    """Rows of a random mixing of Gaussian sources, plus a few loud channels: inputs whose channels are
    strongly correlated and unequally scaled, as a transformer's are."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k ** 0.5 + 0.3 * torch.eye(k)
    x = torch.randn(rows, k, generator=g) @ mix
    x[:, torch.randperm(k, generator=g)[:4]] *= 8.0
    return x


def weight(seed: int, n: int = 48, k: int = 256) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(1000 + seed)) * 0.05


def hessian(x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.float64)
    return x.t() @ x


def output_error(x: torch.Tensor, w: torch.Tensor, qw: QuantizedWeight) -> float:
    """‖X(W − Ŵ)ᵀ‖_F, in float64."""
    return float(torch.linalg.norm(x.double() @ (w.double() - qw.dequantize().double()).t()))


def code_range(dtype: str, symmetric: bool) -> tuple:
    return {"int8": (-127, 127), "nf4": (0, 15)}.get(dtype, (1, 15) if symmetric else (0, 15))


# -- the stored format ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, symmetric, group", FORMATS, ids=FORMAT_IDS)
def test_storage_is_quantize_s_layout_and_codes_in_range(dtype, symmetric, group):
    x, w = correlated_inputs(0), weight(0)
    q = gptq_quantize(w, hessian(x), dtype, group, symmetric)
    ref = QuantizedWeight.quantize(w, dtype, group, symmetric)
    for a, b in ((q.codes, ref.codes), (q.scales, ref.scales)):
        assert a.dtype == b.dtype and a.shape == b.shape and a.is_contiguous()
    assert (q.zero_points is None) == (ref.zero_points is None)
    if q.zero_points is not None:
        assert q.zero_points.dtype == torch.uint8 and q.zero_points.shape == ref.zero_points.shape
        assert int(q.zero_points.max()) <= 15
    assert (q.dtype, q.group_size, q.k, q.symmetric) == (ref.dtype, ref.group_size, ref.k, ref.symmetric)
    codes = q.codes.to(torch.int64) if dtype == "int8" else unpack_nibbles(q.codes)
    lo, hi = code_range(dtype, symmetric)
    assert int(codes.min()) >= lo and int(codes.max()) <= hi
    assert torch.isfinite(q.scales).all() and (q.scales >= 0).all()
    # the op built from it computes with exactly these dequantized weights
    op = QWeightOnlyLinear(q, None)
    xs = x[:8]
    assert torch.equal(op(xs), exact_linear(xs, q.dequantize(), None))


# -- what GPTQ is for -----------------------------------------------------------------------------

#: one of each dtype / symmetry, each group size and per channel, each with and without act-order
ERROR_CASES = [(*FORMATS[i], a) for i, a in ((0, False), (4, True), (8, False), (9, True), (11, False), (2, True),
                                            (13, False), (6, True))]


@pytest.mark.parametrize("dtype, symmetric, group, act_order", ERROR_CASES,
                         ids=[f"{FORMAT_IDS[FORMATS.index(c[:3])]}-{'act' if c[3] else 'seq'}" for c in ERROR_CASES])
def test_output_error_on_calibration_inputs_beats_nearest(dtype, symmetric, group, act_order):
    """GPTQ is greedy, not optimal, so ‖X(W − Ŵ)ᵀ‖ ≤ nearest rounding's is not a theorem; on inputs
    with strongly correlated channels it is far below (measured 0.45-0.56 of nearest's over the
    formats and seeds 0-3), so this asserts at most 0.8 of it, on every seed."""
    for seed in range(3):
        x, w = correlated_inputs(seed), weight(seed)
        gptq = gptq_quantize(w, hessian(x), dtype, group, symmetric, act_order=act_order)
        nearest = QuantizedWeight.quantize(w, dtype, group, symmetric)
        assert output_error(x, w, gptq) <= 0.8 * output_error(x, w, nearest), seed


@pytest.mark.parametrize("dtype, symmetric, group", FORMATS, ids=FORMAT_IDS)
def test_hessian_without_cross_terms_gives_nearest_codes(dtype, symmetric, group):
    """With a diagonal H (uncorrelated inputs, any scales) no error has anywhere to go: every column is
    rounded on its own, to nearest, with the group scales quantize() picks."""
    w = weight(1)
    diag = torch.rand(w.shape[1], generator=torch.Generator().manual_seed(5), dtype=torch.float64) + 0.1
    for h in (torch.eye(w.shape[1], dtype=torch.float64), torch.diag(diag)):
        q = gptq_quantize(w, h, dtype, group, symmetric)
        ref = QuantizedWeight.quantize(w, dtype, group, symmetric)
        assert torch.equal(q.codes, ref.codes) and torch.equal(q.scales, ref.scales)
        assert (q.zero_points is None and ref.zero_points is None) or torch.equal(q.zero_points, ref.zero_points)


def test_near_identity_hessian_gives_nearly_nearest_codes():
    """Inputs barely correlated (many samples of independent unit channels): the codes are nearest
    rounding's but for a few weights sitting near a rounding boundary."""
    x = torch.randn(200_000, 128, generator=torch.Generator().manual_seed(2))
    w = weight(2, k=128)
    q = unpack_nibbles(gptq_quantize(w, hessian(x), "int4", 32, True).codes)
    ref = unpack_nibbles(QuantizedWeight.quantize(w, "int4", 32, True).codes)
    assert float((q != ref).float().mean()) < 0.05
    assert int((q - ref).abs().max()) <= 1


def test_deterministic():
    x, w = correlated_inputs(3), weight(3)
    for act_order in (False, True):
        a = gptq_quantize(w, hessian(x), "int4", 32, False, act_order=act_order)
        b = gptq_quantize(w.clone(), hessian(x).clone(), "int4", 32, False, act_order=act_order)
        assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)
        assert torch.equal(a.zero_points, b.zero_points)


def test_block_size_does_not_change_the_result():
    """Lazy block updates are a reordering of the same updates: blocks of 32 and of 256 columns agree up
    to float64 rounding, so on these inputs the codes are identical."""
    x, w = correlated_inputs(4), weight(4)
    a = gptq_quantize(w, hessian(x), "nf4", 32, True, block=32)
    b = gptq_quantize(w, hessian(x), "nf4", 32, True, block=256)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)


@pytest.mark.parametrize("damp", [0.0, 0.01])
def test_dead_inputs_are_kept_and_rounded_to_nearest(damp):
    """An input channel zero on every calibration row has H[i, i] = 0: GPTQ sets H[i, i] = 1, so that
    column neither receives nor passes on error. Its weights are kept (not zeroed): each is the code
    nearest its original value for the stored group scale."""
    x, w = correlated_inputs(5), weight(5)
    dead = torch.tensor([0, 7, 100, 255])
    x[:, dead] = 0.0
    q = gptq_quantize(w, hessian(x), "int4", 32, True, damp=damp)
    codes = unpack_nibbles(q.codes)
    scales = q.scales[:, dead // 32]                                      # [N, dead]
    nearest = group_codes(w[:, dead][..., None], "int4", scales, None)[..., 0] + 8
    assert torch.equal(codes[:, dead], nearest)
    assert (q.dequantize()[:, dead] != 0).any()
    live = torch.ones(w.shape[1], dtype=torch.bool)
    live[dead] = False
    ref = QuantizedWeight.quantize(w, "int4", 32, True)
    assert output_error(x[:, live], w[:, live], _columns(q, live)) < output_error(x[:, live], w[:, live],
                                                                                   _columns(ref, live))


class _columns:
    """The dequantized weight's live columns, for output_error."""

    def __init__(self, qw: QuantizedWeight, keep: torch.Tensor):
        self.w = qw.dequantize()[:, keep]

    def dequantize(self):
        return self.w


def test_bad_arguments_are_refused():
    w = weight(0)
    with pytest.raises(ValueError, match=r"\[256, 256\]"):
        gptq_quantize(w, torch.eye(128), "int4", 32, True)
    with pytest.raises(ValueError, match="non-finite"):
        gptq_quantize(w, torch.full((256, 256), float("nan")), "int4", 32, True)
    with pytest.raises(ValueError, match="not positive definite"):
        x = torch.randn(4, 256)                                   # rank 4: singular without damping
        gptq_quantize(w, hessian(x) + 0 * torch.eye(256), "int4", 32, True, damp=0.0)
    with pytest.raises(ValueError, match="asymmetric"):
        gptq_quantize(w, torch.eye(256), "nf4", 32, False)
    with pytest.raises(ValueError, match="multiple of the group size"):
        gptq_quantize(weight(0, k=96), torch.eye(96), "int4", 64, True)


# -- QConfig --------------------------------------------------------------------------------------

def test_qconfig_weight_rounding():
    assert QConfig.weight_only().weight_rounding == "nearest"
    assert QConfig.weight_only("nf4", 64, rounding="gptq").weight_rounding == "gptq"
    with pytest.raises(ValueError, match="unknown weight_rounding"):
        QConfig.weight_only(rounding="awq")
    with pytest.raises(ValueError, match="method='weight_only'"):
        QConfig.dynamic().with_(weight_rounding="gptq")
    with pytest.raises(ValueError, match="method='weight_only'"):
        QConfig(weight_rounding="gptq")


# -- the pass -------------------------------------------------------------------------------------

class TokenNet(nn.Module):
    """Embedding → Linear → GELU → Linear (+ residual) → LayerNorm → Linear."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 64)
        self.up = nn.Linear(64, 128)
        self.down = nn.Linear(128, 64)
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, 32)

    def forward(self, ids):
        h = self.emb(ids)
        return self.head(self.norm(self.down(torch.nn.functional.gelu(self.up(h))) + h))


def token_batches(seed: int, n: int = 4, vocab: int = 100) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (4, 16), generator=g) for _ in range(n)]


def quantize(model, batches, cfg):
    return qcompiler.quantize(model.eval(), batches, config=cfg, progress=False, warn_float=False)


def test_input_hessians_sum_every_input_row_of_the_float_graph():
    torch.manual_seed(0)
    model = TokenNet().eval()
    gm = torch.fx.symbolic_trace(model)
    batches = token_batches(0)
    ctx = PassContext(config=QConfig.weight_only(rounding="gptq"), capabilities=None, target="reference",
                      calibration_data=iter(batches))
    hs = input_hessians(gm, ctx, ["up", "down"])
    with torch.no_grad():
        xs = torch.cat([model.emb(b).reshape(-1, 64) for b in batches]).double()
        ys = torch.cat([torch.nn.functional.gelu(model.up(model.emb(b))).reshape(-1, 128) for b in batches]).double()
    assert torch.allclose(hs["up"], xs.t() @ xs, rtol=1e-12, atol=1e-9)
    assert torch.allclose(hs["down"], ys.t() @ ys, rtol=1e-12, atol=1e-9)
    assert isinstance(ctx.calibration_data, list) and len(ctx.calibration_data) == 4   # kept for calibrate


def test_pass_rounds_linears_with_gptq_and_embeddings_to_nearest():
    torch.manual_seed(0)
    model = TokenNet().eval()
    batches = token_batches(0)
    near = quantize(model, batches, QConfig.weight_only("int4", 32))
    gptq = quantize(model, batches, QConfig.weight_only("int4", 32, rounding="gptq"))
    changes = gptq.pipeline_result.record("quantize_weights").changes
    assert changes["gptq"] == 3 and changes["weight_only_linear"] == 3 and changes["weight_only_embedding"] == 1
    assert "gptq" not in near.pipeline_result.record("quantize_weights").changes
    emb_g, emb_n = gptq.graph_module.get_submodule("emb"), near.graph_module.get_submodule("emb")
    assert isinstance(emb_g, QWeightOnlyEmbedding) and torch.equal(emb_g.codes, emb_n.codes)
    for name in ("up", "down", "head"):
        g, n = gptq.graph_module.get_submodule(name), near.graph_module.get_submodule(name)
        assert isinstance(g, QWeightOnlyLinear) and g.codes.shape == n.codes.shape
        assert not torch.equal(g.codes, n.codes), name
    with torch.no_grad():                                        # on the calibration inputs
        ref = torch.cat([model(b) for b in batches])
        assert sqnr_db(ref, torch.cat([gptq(b) for b in batches])) > sqnr_db(ref, torch.cat([near(b) for b in batches]))


def test_pass_gptq_per_layer_override_only_where_asked():
    torch.manual_seed(0)
    model = TokenNet().eval()
    cfg = QConfig.weight_only("nf4", 64).with_(overrides={"down": QConfig.weight_only("nf4", 64, rounding="gptq")})
    qm = quantize(model, token_batches(1), cfg)
    assert qm.pipeline_result.record("quantize_weights").changes["gptq"] == 1
    near = quantize(model, token_batches(1), QConfig.weight_only("nf4", 64))
    for name in ("up", "head"):
        assert torch.equal(qm.graph_module.get_submodule(name).codes, near.graph_module.get_submodule(name).codes)


def test_pass_on_zoo_bert():
    """Random-init BERT (2 layers): every Linear rounded by GPTQ; the output on the calibration
    sentences is closer to fp32 than with nearest rounding."""
    torch.manual_seed(0)
    bert = bert_encoder(num_layers=2, vocab_size=1000, intermediate_size=768).eval()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 1000, (4, 16), generator=g) for _ in range(4)]
    n_linear = sum(isinstance(m, nn.Linear) for m in bert.modules())
    near = quantize(bert, batches, QConfig.weight_only("int4", 32))
    gptq = quantize(bert, batches, QConfig.weight_only("int4", 32, rounding="gptq"))
    assert gptq.pipeline_result.record("quantize_weights").changes["gptq"] == n_linear
    with torch.no_grad():
        ref = torch.cat([bert(b) for b in batches])
        s_near, s_gptq = (sqnr_db(ref, torch.cat([qm(b) for b in batches])) for qm in (near, gptq))
    assert s_gptq > s_near + 1.0, (s_near, s_gptq)
