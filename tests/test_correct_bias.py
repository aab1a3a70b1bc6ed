"""correct_bias: the weight-rounding shift ε·E[x] is computed right and removed."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import qcompiler
from qcompiler import QConfig
from qcompiler.core.input_stats import ChannelMean
from qcompiler.passes.correct_bias import mean_output_shift


@given(groups=st.integers(1, 3), ipg=st.integers(1, 4), opg=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_mean_output_shift_equals_the_mean_of_the_output_difference(groups, ipg, opg, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(groups * opg, ipg, 3, 3, generator=g, dtype=torch.float64)
    wq = w + 0.01 * torch.randn(w.shape, generator=g, dtype=torch.float64)
    x = torch.rand(4, groups * ipg, 9, 9, generator=g, dtype=torch.float64) + 0.5
    stats = ChannelMean(axis=1)
    stats.update(x)
    # no padding, constant-per-channel input → the identity is exact
    xc = stats.mean().reshape(1, -1, 1, 1).expand(1, -1, 3, 3)
    expected = (F.conv2d(xc, wq, groups=groups) - F.conv2d(xc, w, groups=groups)).flatten()
    assert torch.allclose(mean_output_shift(w, wq, stats.mean(), groups), expected)


def test_channel_mean_merges_exactly():
    a, b, both = ChannelMean(-1), ChannelMean(-1), ChannelMean(-1)
    x, y = torch.randn(5, 3), torch.randn(7, 3)
    a.update(x), b.update(y), both.update(torch.cat([x, y]))
    assert torch.allclose(a.merge(b).mean(), both.mean()) and a.count == 12


def test_bias_correction_reduces_the_mean_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 64)).eval()
    calib = [torch.rand(64, 256) + 1.0 for _ in range(4)]          # inputs with a large mean
    x = torch.rand(256, 256) + 1.0
    errors = {}
    for flag in (False, True):
        qm = qcompiler.quantize(model, calib, config=QConfig(weight=QConfig.weight_int4().weight,
                                                             bias_correction=flag), progress=False)
        errors[flag] = float((qm(x) - model(x).detach()).mean(0).abs().mean())
        assert qm.pipeline_result.record("correct_bias").changes["corrected"] == (1 if flag else 0)
    assert errors[True] < 0.5 * errors[False]
