"""Equivalence level 4: float-preserving passes (BN folding, pattern fusion) stay allclose."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import qcompiler
from qcompiler.core.meta import node_info
from qcompiler.core.pass_manager import PassContext, PassManager
from qcompiler.passes import FoldBatchNorm, FusePatterns


def randomize_bn(bn, g):
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 3 + 0.05)
        if bn.affine:
            bn.weight.copy_(torch.randn(bn.num_features, generator=g))
            bn.bias.copy_(torch.randn(bn.num_features, generator=g))
    return bn


class ConvBN(nn.Module):
    def __init__(self, dims, cin, cout, k, groups, bias, affine):
        super().__init__()
        conv, bn = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.conv = conv(cin * groups, cout * groups, k, padding=k // 2, groups=groups, bias=bias)
        self.bn = bn(cout * groups, affine=affine)

    def forward(self, x):
        return self.bn(self.conv(x))


def fold(model):
    gm = qcompiler.trace(model.eval())
    return PassManager([FoldBatchNorm()]).run(gm, PassContext()).graph_module


@given(dims=st.sampled_from([1, 2]), cin=st.integers(1, 4), cout=st.integers(1, 4), k=st.sampled_from([1, 3]),
       groups=st.integers(1, 3), bias=st.booleans(), affine=st.booleans(), seed=st.integers(0, 2**16))
def test_conv_bn_folding_is_float_preserving(dims, cin, cout, k, groups, bias, affine, seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ConvBN(dims, cin, cout, k, groups, bias, affine)
    randomize_bn(model.bn, g)
    folded = fold(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    x = torch.randn((2, cin * groups) + (7,) * dims, generator=g)
    assert torch.allclose(folded(x), model.eval()(x), rtol=1e-4, atol=1e-5)


@given(n_in=st.integers(1, 16), n_out=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_linear_bn1d_folding(n_in, n_out, seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(n_in, n_out), randomize_bn(nn.BatchNorm1d(n_out), g))
    folded = fold(model)
    x = torch.randn(5, n_in, generator=g)
    assert torch.allclose(folded(x), model.eval()(x), rtol=1e-4, atol=1e-5)


class FunctionalBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("mean", torch.randn(4))
        self.register_buffer("var", torch.rand(4) + 0.5)
        self.gamma, self.beta = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4))

    def forward(self, x):
        return F.batch_norm(self.conv(x), self.mean, self.var, self.gamma, self.beta, False, 0.1, 1e-3)


def test_functional_batch_norm_is_folded():
    model = FunctionalBN().eval()
    folded = fold(model)
    assert not any(n.target is F.batch_norm for n in folded.graph.nodes)
    x = torch.randn(2, 3, 6, 6)
    assert torch.allclose(folded(x), model(x), rtol=1e-4, atol=1e-5)


def test_bn_without_conv_is_kept_and_noted():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1)).eval()
    folded = fold(model)
    assert any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(1, 3, 4, 4)
    assert torch.allclose(folded(x), model(x))


class Fusable(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1), nn.Linear(4, 2)

    def forward(self, x):
        a = F.relu(self.c1(x))
        b = torch.clamp(self.c2(a), 0.0, 6.0)
        c = F.relu6(a + b)
        return self.fc(c.mean((2, 3)))


def test_fuse_patterns_marks_groups_without_changing_values():
    model = Fusable().eval()
    gm = qcompiler.trace(model)
    x = torch.randn(2, 3, 8, 8)
    before = gm(x)
    out = PassManager([FoldBatchNorm(), FusePatterns()]).run(gm, PassContext()).graph_module
    acts = {n.name: node_info(n).fused_activation for n in out.graph.nodes
            if node_info(n).fused_activation is not None}
    assert {(a.kind, a.min_value, a.max_value) for a in acts.values()} == {
        ("relu", 0.0, None), ("clamp", 0.0, 6.0), ("relu6", 0.0, 6.0)}
    assert torch.equal(out(x), before)
