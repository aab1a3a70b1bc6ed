"""smooth_activations (SmoothQuant smoothing, issue 12): float-preserving, shrinks the
per-channel range of the smoothed Linears' inputs, composes with static int8 (compiled x86
bit-exact), refuses what it cannot fold with a reason, and is off by default."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import qcompiler
from qcompiler.core.meta import graph_info
from qcompiler.core.pass_manager import PassContext, PassError, PassManager
from qcompiler.core.qconfig import QConfig
from qcompiler.passes import FoldBatchNorm, SmoothActivations
from qcompiler.passes.smooth_activations import smoothing_scales
from qcompiler.zoo import TinyTransformerClassifier


class Block(nn.Module):
    """LayerNorm feeding `fanout` Linears and (with `residual`) an add; a Linear feeding a
    Linear; a GELU feeding a Linear (not smoothable)."""

    def __init__(self, width: int, fanout: int, residual: bool):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.heads = nn.ModuleList(nn.Linear(width, width) for _ in range(fanout))
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)
        self.out = nn.Linear(width, width)
        self.residual = residual

    def forward(self, x):
        h = self.norm(x)
        y = sum(head(h) for head in self.heads)
        y = self.down(self.up(y))                          # Linear -> Linear: rows / s
        y = self.out(torch.nn.functional.gelu(y))          # GELU -> Linear: refused
        return y + h if self.residual else y


def with_outliers(model: nn.Module, seed: int, channels: int = 3, factor: float = 40.0) -> nn.Module:
    """Scale a few LayerNorm channels and Linear output rows up: BERT-like outlier channels."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.Linear)):
                rows = torch.randperm(m.weight.shape[0], generator=g)[:channels]
                m.weight[rows] *= factor
                if m.bias is not None:
                    m.bias[rows] += factor * 0.1
    return model.eval()


def smoothed(model: nn.Module, batches: list, alpha: float):
    gm = qcompiler.trace(model, (batches[0],))
    ctx = PassContext(config=QConfig(smoothing=alpha), calibration_data=batches,
                      example_inputs=(batches[0],))
    result = PassManager([FoldBatchNorm(), SmoothActivations()]).run(gm, ctx)
    return result.graph_module, result.records[-1].changes


# Stated bound: s is a power of two, so every scaled value is exact in float32 and the output
# is bit-identical unless something leaves the normal range; we allow 2^-20 of the output's
# largest magnitude (a few float32 ulps) so that a subnormal corner cannot flake the property.
BOUND = 2.0 ** -20


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 16), width=st.sampled_from([4, 8, 24]), fanout=st.integers(1, 3),
       residual=st.booleans(), alpha=st.floats(0.0, 1.0), factor=st.sampled_from([1.0, 30.0, 1000.0]))
def test_float_output_unchanged(seed, width, fanout, residual, alpha, factor):
    torch.manual_seed(seed)
    model = with_outliers(Block(width, fanout, residual), seed, channels=min(3, width), factor=factor)
    batches = [torch.randn(2, 5, width) * 3, torch.randn(3, 5, width)]
    gm, changes = smoothed(copy.deepcopy(model), batches, alpha)
    assert changes["smoothed_linears"] == fanout + 1          # the heads, and `down`
    x = torch.randn(4, 5, width)
    with torch.no_grad():
        ref, out = model(x), gm(x)
    assert (out - ref).abs().max() <= BOUND * ref.abs().max()


def test_zoo_transformer_bit_identical_and_untouched_user_model():
    torch.manual_seed(0)
    model = with_outliers(TinyTransformerClassifier(), seed=1)
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(6, 16, 32)
    gm, changes = smoothed(model, [x[:3], x[3:]], 0.5)
    # per layer: norm1 -> ff1 (+ residual: a copy), norm2 -> next layer's q/k/v (+ residual)
    assert changes["cloned_layer_norm"] == 3 and changes["smoothed_linears"] == 5
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def channel_ranges(gm, x) -> dict:
    """Per smoothable Linear: its input's channel abs-max, max over median."""
    ratios, hooks = {}, []
    for name in ("layers.0.ff1", "layers.1.q_proj", "layers.1.ff1"):
        def hook(module, args, name=name):
            m = args[0].abs().reshape(-1, args[0].shape[-1]).amax(0)
            ratios[name] = float(m.max() / m.median())
        hooks.append(gm.get_submodule(name).register_forward_pre_hook(hook))
    with torch.no_grad():
        gm(x)
    for h in hooks:
        h.remove()
    return ratios


def test_channel_range_ratio_shrinks():
    torch.manual_seed(0)
    model = with_outliers(TinyTransformerClassifier(), seed=2)
    x = torch.randn(8, 16, 32)
    plain = channel_ranges(qcompiler.trace(model, (x,)), x)
    after = channel_ranges(smoothed(model, [x], 0.5)[0], x)
    for name, ratio in plain.items():
        assert ratio > 10, (name, ratio)                     # the injected outliers are there
        assert after[name] < ratio / 3, (name, ratio, after[name])


def test_scales_formula_powers_of_two_and_degenerate_channels():
    act = torch.tensor([16.0, 1.0, 0.0, 4.0])
    w = torch.tensor([[1.0, 4.0, 1.0, 0.0], [0.25, 1.0, 2.0, 0.0]])
    s = smoothing_scales(act, [w], 0.5)
    # sqrt(16)/sqrt(1) = 4, sqrt(1)/sqrt(4) = 0.5; a dead channel and a zero column keep 1
    assert s.tolist() == [4.0, 0.5, 1.0, 1.0]
    assert smoothing_scales(act, [w], 1.0).tolist() == [16.0, 1.0, 1.0, 1.0]
    assert smoothing_scales(torch.tensor([1e20]), [torch.tensor([[1e-10]])], 0.5).item() == 2.0 ** 24


class NormThenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(64)
        self.fc = nn.Linear(64, 16)

    def forward(self, x):
        return self.fc(self.norm(x))


def test_static_int8_with_smoothing_is_more_accurate_and_compiles_bit_exact():
    torch.manual_seed(0)
    model = NormThenLinear().eval()
    with torch.no_grad():
        model.norm.weight[[5, 40]] = 60.0                   # two outlier channels at the LN output
    calib = [torch.randn(16, 8, 64) for _ in range(2)]
    x = torch.randn(8, 8, 64)
    with torch.no_grad():
        ref = model(x)
    plain = qcompiler.quantize(model, calib, target="x86", progress=False)
    qm = qcompiler.quantize(model, calib, config=QConfig.smoothquant(0.5), target="x86", progress=False)
    assert qm.pipeline_result.records[1].name == "smooth_activations"
    # measured: 29.1 dB plain, 35.6 dB smoothed
    assert qcompiler.sqnr_db(ref, qm(x)) > qcompiler.sqnr_db(ref, plain(x)) + 4
    compiled = qcompiler.compile(qm, target="x86")
    assert torch.equal(compiled(x), qm(x))


def test_transformer_static_int8_with_smoothing_compiles_bit_exact():
    torch.manual_seed(0)
    model = with_outliers(TinyTransformerClassifier(num_layers=1), seed=3)
    calib = [torch.randn(4, 16, 32) for _ in range(2)]
    qm = qcompiler.quantize(model, calib, config=QConfig.smoothquant(0.75), target="x86",
                            progress=False, warn_float=False)
    x = torch.randn(3, 16, 32)
    assert torch.equal(qcompiler.compile(qm, target="x86")(x), qm(x))


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_alpha_outside_unit_interval_is_a_clear_error(alpha):
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\]"):
        QConfig(smoothing=alpha)
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\]"):
        SmoothActivations(alpha)


def test_off_by_default_and_placed_before_observers():
    assert "smooth_activations" not in qcompiler.default_pipeline().names()
    assert "smooth_activations" not in qcompiler.default_pipeline(QConfig()).names()
    names = qcompiler.default_pipeline(QConfig.smoothquant(0.85)).names()
    assert names[:2] == ["fold_batchnorm", "smooth_activations"]
    assert names.index("smooth_activations") < names.index("insert_observers")
    assert QConfig.smoothquant().smoothing == 0.5


def test_after_observers_or_without_alpha_is_refused():
    model = NormThenLinear().eval()
    x = torch.randn(2, 3, 64)
    late = qcompiler.default_pipeline().insert_after("calibrate", SmoothActivations(0.5))
    with pytest.raises(PassError, match="must run before insert_observers"):
        qcompiler.quantize(model, [x], pipeline=late, progress=False)
    bare = qcompiler.default_pipeline().insert_after("fold_batchnorm", SmoothActivations())
    with pytest.raises(PassError, match=r"needs an alpha: QConfig\(smoothing=alpha\)"):
        qcompiler.quantize(model, [x], pipeline=bare, progress=False)


def test_unfoldable_producers_are_noted_with_the_reason():
    torch.manual_seed(0)
    model = Block(8, 2, residual=True).eval()
    gm, changes = smoothed(model, [torch.randn(2, 4, 8)], 0.5)
    notes = "\n".join(graph_info(gm).notes)
    assert changes["refused"] == 2
    assert "up not smoothed: its input comes from add" in notes
    assert "out not smoothed: its input comes from gelu" in notes
    assert "heads.0, heads.1" not in notes                  # smoothed, through a LayerNorm copy


def test_one_shot_calibration_iterator_still_feeds_calibrate():
    model = NormThenLinear().eval()
    batches = (torch.randn(2, 3, 64) for _ in range(3))
    qm = qcompiler.quantize(model, batches, config=QConfig.smoothquant(0.5), progress=False)
    calibrate = next(r for r in qm.pipeline_result.records if r.name == "calibrate")
    assert calibrate.changes["batches"] == 3
