"""The shapes family: value-preserving views and copies on int8 (permute / transpose / chunk /
split / getitem / expand / repeat / reshapes across layouts), broadcasting QAdd / QMul and
quantized constants. Every target equals the reference bit for bit, and nothing of it is
left in float or in PyTorch (``pytorch_fallback=False``).
"""
import sys
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import qcompiler
from qcompiler import QConfig, TensorSpec
from qcompiler.core.integer_ops import Quantize
from qcompiler.core.meta import graph_info

from backends.c_emitter.lower_shapes import compose, copy_dims, refine, _View

from helpers import OP_TARGETS, TARGETS, act_dtypes, assert_bit_exact, modes


class Around(nn.Module):
    """``fn`` on a quantized value: x + x makes it one (NHWC in the emitter when 4-d), the
    output dequantizes what ``fn`` returns (a tensor or a tuple)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x + x)


def _shape(rank, draw):
    return tuple(draw(st.integers(1, 5)) for _ in range(rank))


# ---------------------------------------------------------------------------------------
# the planner on its own: composed views address the same bytes torch's views do
# ---------------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_compose_matches_torch_views(data):
    """A chain reshape → permute → reshape → slice, composed on strided dims (NHWC-like or
    contiguous), picks the same elements as torch; where compose says no, torch's view fails too
    or the dims cross a piece boundary."""
    draw = data.draw
    shape = _shape(draw(st.integers(1, 4)), draw)
    src = torch.arange(int(torch.tensor(shape).prod())).reshape(shape)
    perm0 = draw(st.permutations(range(len(shape))))
    stored = src.permute(*perm0).contiguous()          # the bytes: some layout of src
    inv = [perm0.index(i) for i in range(len(shape))]
    view = _View(None, tuple(stored.permute(*inv).shape), tuple(stored.permute(*inv).stride()), 0, shape)
    expect = src
    for _ in range(3):
        kind = draw(st.sampled_from(["permute", "reshape", "slice"]))
        if kind == "permute":
            perm = draw(st.permutations(range(len(view.shape))))
            fresh = torch.empty(view.shape).permute(*perm)
            expect = expect.permute(*perm)
        elif kind == "reshape":
            numel = expect.numel()
            divisors = [d for d in range(1, numel + 1) if numel % d == 0]
            first = draw(st.sampled_from(divisors))
            new = (first, numel // first)
            view = view.reshaped(new)
            expect = expect.reshape(new)
            continue
        else:
            dim = draw(st.integers(0, len(view.shape) - 1))
            size = view.shape[dim]
            start = draw(st.integers(0, size - 1))
            stop = draw(st.integers(start + 1, size))
            fresh = torch.empty(view.shape).narrow(dim, start, stop - start)
            expect = expect.narrow(dim, start, stop - start)
        composed = compose(view, tuple(fresh.shape), fresh.stride(), fresh.storage_offset(), tuple(fresh.shape))
        if composed is None:
            return
        view = composed
    pieces = refine(view.sizes, view.shape)
    if pieces is None:
        return
    flat = stored.reshape(-1)
    got = flat.as_strided(view.sizes, view.strides, view.offset).reshape(view.shape)
    assert torch.equal(got, expect)


def test_refine_and_copy_dims():
    assert refine((6,), (2, 3)) == [(2, 0, 0), (3, 0, 1)]
    assert refine((4, 6), (8, 3)) == [(4, 0, 0), (2, 1, 0), (3, 1, 1)]
    assert refine((2, 3), (3, 2)) is None
    assert refine((1, 5, 1), (5,)) == [(5, 1, 0)]
    # NHWC bytes of [2, 3, 4, 5] read in NCHW order: n, c, h, w with the right strides
    assert copy_dims([2, 3, 4, 5], [60, 20, 5, 1], [60, 1, 15, 3]) == [(2, (60,)), (3, (1,)), (20, (3,))]
    # an SE gate [N, C, 1, 1] against NHWC [N, C, H, W]: per pixel a row of C gates
    assert copy_dims([2, 3, 3, 4], [36, 12, 4, 1], [36, 12, 4, 1], [4, 0, 0, 1]) == \
        [(2, (36, 4)), (9, (4, 0)), (4, (1, 1))]


# ---------------------------------------------------------------------------------------
# views and copies, every spelling
# ---------------------------------------------------------------------------------------

def _items(parts, n):
    """The items of a chunk / split, last first (what a model reads out of the tuple)."""
    return tuple(parts[i] for i in reversed(range(n)))


SPELLINGS = [  # (id, fn on the quantized value, input shape)
    ("torch.permute", lambda x: torch.permute(x, (0, 2, 3, 1)), (2, 3, 4, 5)),
    ("x.permute", lambda x: x.permute(3, 1, 0, 2), (2, 3, 4, 5)),
    ("x.transpose", lambda x: x.transpose(1, 2), (2, 3, 4)),
    ("torch.transpose", lambda x: torch.transpose(x, -1, -2), (2, 3, 4, 5)),
    ("x.t()", lambda x: x.t(), (6, 7)),
    ("x.mT", lambda x: x.mT, (2, 3, 4)),
    ("x.T", lambda x: x.T, (5, 3)),
    ("torch.swapaxes", lambda x: torch.swapaxes(x, 0, 2), (2, 3, 4)),
    ("x.movedim", lambda x: x.movedim(1, -1), (2, 3, 4, 5)),
    ("x.chunk", lambda x: _items(x.chunk(3, dim=1), 3), (2, 7, 3, 3)),
    ("torch.chunk", lambda x: torch.cat(list(_items(torch.chunk(x, 2, -1), 2)), -1), (2, 3, 5)),
    ("x.split(int)", lambda x: _items(x.split(2, dim=2), 3), (2, 3, 5, 4)),
    ("torch.split(list)", lambda x: _items(torch.split(x, [1, 3, 1], 1), 3), (2, 5, 3)),
    ("tensor_split", lambda x: _items(x.tensor_split([1, 4], dim=-1), 3), (3, 6)),
    ("unbind", lambda x: _items(torch.unbind(x, 1), 3), (2, 3, 4, 4)),
    ("narrow", lambda x: x.narrow(1, 1, 2), (2, 4, 3, 3)),
    ("select", lambda x: x.select(2, -1), (2, 4, 3, 3)),
    ("x[:, 0]", lambda x: x[:, 0], (2, 5, 8)),
    ("x[:, -1]", lambda x: x[:, -1], (2, 5, 8)),
    ("x[..., :k]", lambda x: x[..., :3], (2, 5, 3, 7)),
    ("x[:, 1:]", lambda x: x[:, 1:], (2, 5, 8)),
    ("x[:, None, ::2]", lambda x: x[:, None, ::2], (2, 5, 3, 3)),
    ("x[0, :, 1:3, None]", lambda x: x[0, :, 1:3, None], (2, 5, 4, 3)),
    ("x[:, :, size-1]", lambda x: x[:, :, x.size(2) - 1], (2, 3, 4, 4)),
    ("expand", lambda x: x[:, :1].expand(-1, 4, -1, -1), (2, 3, 4, 4)),
    ("expand new dims", lambda x: x.expand(3, 2, 5), (2, 5)),
    ("repeat", lambda x: x.repeat(1, 2, 1, 3), (2, 3, 2, 2)),
    ("repeat more dims", lambda x: x.repeat(2, 1, 2), (3, 4)),
    ("contiguous", lambda x: x.transpose(1, 3).contiguous(), (2, 3, 4, 5)),
    ("flatten(2)", lambda x: torch.flatten(x, 2), (2, 3, 4, 5)),
    ("flatten(0)", lambda x: x.flatten(), (2, 3, 4, 5)),
    ("view to 5-d", lambda x: x.view(2, 3, 2, 2, 5), (2, 3, 4, 5)),
    ("reshape across", lambda x: x.permute(0, 2, 1).reshape(4, 3, 2), (2, 3, 4)),
    ("view_as-like", lambda x: x.transpose(2, 3).reshape(x.size(0), -1), (2, 3, 4, 5)),
    ("unflatten", lambda x: x.unflatten(1, (3, 2)).transpose(1, 2).flatten(1, 2), (2, 6, 5)),
]


@pytest.mark.parametrize("target", OP_TARGETS)
@pytest.mark.parametrize("spelling, fn, shape", SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_spellings(target, spelling, fn, shape):
    torch.manual_seed(len(spelling))
    assert_bit_exact(Around(fn), torch.randn(shape), target, "fp32", "int8")


@pytest.mark.parametrize("target", OP_TARGETS)
@settings(max_examples=10, deadline=None)
@given(data=st.data(), mode=modes, act=act_dtypes)
def test_permute_any_rank(target, data, mode, act):
    rank = data.draw(st.integers(1, 6))
    shape = _shape(rank, data.draw)
    perm = data.draw(st.permutations(range(rank)))
    assert_bit_exact(Around(lambda x: x.permute(*perm)), torch.randn(shape), target, mode, act)


@pytest.mark.parametrize("target", OP_TARGETS)
@settings(max_examples=10, deadline=None)
@given(data=st.data(), mode=modes, act=act_dtypes)
def test_chunk_and_split(target, data, mode, act):
    """Items of chunk / split (each one copy out of NHWC or plain bytes), joined by cat in
    another order and permuted on the way."""
    rank = data.draw(st.integers(2, 4))
    shape = list(_shape(rank, data.draw))
    dim = data.draw(st.integers(0, rank - 1))
    shape[dim] = data.draw(st.integers(2, 9))
    chunks = data.draw(st.integers(1, 4))
    perm = data.draw(st.permutations(range(rank)))
    use_split = data.draw(st.booleans())
    ref = torch.empty(shape)
    ref_parts = ref.split(chunks, dim) if use_split else ref.chunk(chunks, dim)

    def fn(x):
        parts = x.split(chunks, dim) if use_split else x.chunk(chunks, dim)
        return torch.cat([parts[i].permute(*perm) for i in reversed(range(len(ref_parts)))], perm.index(dim))
    assert_bit_exact(Around(fn), torch.randn(shape), target, mode, act)


@st.composite
def indexings(draw):
    rank = draw(st.integers(1, 4))
    shape = _shape(rank, draw)
    index = []
    for s in shape:
        kind = draw(st.sampled_from(["int", "slice", "all", "none"]))
        if kind == "int":
            index.append(draw(st.integers(-s, s - 1)))
        elif kind == "slice":
            a = draw(st.integers(0, s - 1))
            index.append(slice(a, draw(st.integers(a + 1, s)), draw(st.integers(1, 2))))
        elif kind == "none":
            index += [None, slice(None)]
        else:
            index.append(slice(None))
    if draw(st.booleans()) and len(index) > 1:
        index = [Ellipsis] + index[1:] if index[0] == slice(None) else index
    return shape, tuple(index)


@pytest.mark.parametrize("target", OP_TARGETS)
@settings(max_examples=12, deadline=None)
@given(case=indexings(), mode=modes, act=act_dtypes)
def test_getitem(target, case, mode, act):
    shape, index = case
    assert_bit_exact(Around(lambda x: x[index]), torch.randn(shape), target, mode, act)


@pytest.mark.parametrize("target", OP_TARGETS)
@settings(max_examples=10, deadline=None)
@given(data=st.data(), mode=modes, act=act_dtypes)
def test_expand_repeat_reshape(target, data, mode, act):
    """expand / repeat of size-1 dims, then a reshape to a random factorization (the cases
    with and without a common refinement with the strided dims)."""
    rank = data.draw(st.integers(2, 4))
    shape = [data.draw(st.sampled_from([1, 2, 3])) for _ in range(rank)]
    reps = [data.draw(st.integers(1, 3)) for _ in range(rank)]
    use_repeat = data.draw(st.booleans())
    out = [s * r for s, r in zip(shape, reps)] if use_repeat else [r if s == 1 else s for s, r in zip(shape, reps)]
    numel = int(torch.tensor(out).prod())
    first = data.draw(st.sampled_from([d for d in range(1, numel + 1) if numel % d == 0]))

    def fn(x):
        y = x.repeat(*reps) if use_repeat else x.expand(*out)
        return y.transpose(0, -1).reshape(first, numel // first)
    assert_bit_exact(Around(fn), torch.randn(shape), target, mode, act)


@pytest.mark.parametrize("target", OP_TARGETS)
def test_copy_over_more_dims_than_the_runtime_loop(target):
    """repeat() in every dim of a 4-d tensor, transposed: an 8-d strided copy, past the
    runtime's 6 (found by hypothesis: it was refused, so the graph did not compile whole)."""
    def fn(x):
        return x.repeat(2, 2, 2, 2).transpose(0, -1).reshape(2, 64)
    assert_bit_exact(Around(fn), torch.randn(1, 2, 2, 2), target, "fp32", "uint8")


# ---------------------------------------------------------------------------------------
# broadcasting add / mul
# ---------------------------------------------------------------------------------------

class Binary(nn.Module):
    def __init__(self, op, relu):
        super().__init__()
        self.op, self.relu = op, relu

    def forward(self, x, y):
        z = x + y if self.op == "add" else x * y
        return F.relu(z) if self.relu else z


@pytest.mark.parametrize("target", OP_TARGETS)
@settings(max_examples=15, deadline=None)
@given(data=st.data(), op=st.sampled_from(["add", "mul"]), relu=st.booleans(), mode=modes, act=act_dtypes)
def test_broadcast_binary(target, data, op, relu, mode, act):
    rank = data.draw(st.integers(1, 5))
    out = _shape(rank, data.draw)

    def operand():
        s = [1 if data.draw(st.booleans()) else d for d in out]
        return tuple(s[data.draw(st.integers(0, rank - 1)):])
    a, b = operand(), operand()
    if data.draw(st.booleans()):
        a = out                                       # one full-size operand (the common case)
    assert_bit_exact(Binary(op, relu), (torch.randn(a), torch.randn(b)), target, mode, act)


class SqueezeExcite(nn.Module):
    """torchvision's SqueezeExcitation: pool, squeeze, relu, excite, hard-sigmoid, x * gate."""

    def __init__(self, c, squeeze):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)

    def forward(self, x):
        x = F.relu(self.conv(x))
        gate = F.adaptive_avg_pool2d(x, 1)
        gate = F.hardsigmoid(self.fc2(F.relu(self.fc1(gate))))
        return x * gate


@pytest.mark.parametrize("target", OP_TARGETS)
@pytest.mark.parametrize("mode", ["fp32", "fixed_point"])
@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_squeeze_excite(target, mode, act):
    torch.manual_seed(3)
    assert_bit_exact(SqueezeExcite(40, 8), torch.randn(2, 40, 33, 35), target, mode, act)


def test_squeeze_excite_gate_is_one_row_per_pixel():
    """The [N, C, H, W] * [N, C, 1, 1] gate runs as rows of C (per pixel), threaded over pixels."""
    from backends.x86.backend import X86Backend
    x = torch.randn(2, 40, 33, 35)
    qm = qcompiler.quantize(SqueezeExcite(40, 8).eval(), [(x,)], progress=False, warn_float=False)
    backend = X86Backend()
    source = backend.emit(backend.legalize(qm.graph_module, (x,))).source
    lines = [line for line in source.splitlines() if "qc_rt_mul_strided" in line]
    assert len(lines) == 1 and "3, (const int64_t[]){2, 1155, 40}, (const int64_t[]){46200, 40, 1}, " \
        "(const int64_t[]){40, 0, 1}" in lines[0], lines


# ---------------------------------------------------------------------------------------
# quantized constants: ViT's class token and position embedding
# ---------------------------------------------------------------------------------------

class TinyViT(nn.Module):
    """torchvision's VisionTransformer's shape handling: patchify conv, [n, D, h*w] → [n, h*w, D],
    class token expanded over the batch and prepended, position embedding added, x[:, 0]."""

    def __init__(self, d=16, patch=4, image=12):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, d, patch, patch)
        tokens = (image // patch) ** 2 + 1
        self.class_token = nn.Parameter(torch.randn(1, 1, d))
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens, d) * 0.5)
        self.register_buffer("scale", torch.rand(d) + 0.5)
        self.mlp = nn.Linear(d, d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        n, d = x.shape[0], self.class_token.shape[-1]
        x = self.conv_proj(x).reshape(n, d, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        x = x + self.pos_embedding
        x = F.relu(self.mlp(x)) * self.scale
        return self.head(x[:, 0])


@pytest.mark.parametrize("target", OP_TARGETS)
@pytest.mark.parametrize("mode", ["fp32", "fixed_point"])
@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_vit_class_token_and_position_embedding(target, mode, act):
    torch.manual_seed(5)
    qm = assert_bit_exact(TinyViT(), torch.randn(3, 3, 12, 12), target, mode, act)
    gm = qm.graph_module
    # every constant is quantized as a parameter / buffer itself (the expand then runs on int8)
    constants = [n for n in gm.graph.nodes if n.op == "get_attr"]
    assert {n.target for n in constants} >= {"class_token", "pos_embedding", "scale"}
    for n in constants:
        assert all(isinstance(gm.get_submodule(u.target), Quantize) for u in n.users if u.op == "call_module")


def test_constant_observed_like_an_activation():
    """The observer sits on the get_attr node, so the constant's qparams cover its own range."""
    torch.manual_seed(6)
    model = TinyViT().eval()
    pm = qcompiler.default_pipeline().remove("lower_to_integer")
    cfg = QConfig(activation=TensorSpec("uint8", symmetric=False, observer="minmax"))
    qdq = qcompiler.quantize(model, [(torch.randn(2, 3, 12, 12),)], config=cfg, pipeline=pm, progress=False,
                             warn_float=False).graph_module
    pos = next(n for n in qdq.graph.nodes if n.op == "get_attr" and n.target == "pos_embedding")
    (q,) = pos.users
    qp = qdq.get_submodule(q.target).qparams
    lo, hi = float(model.pos_embedding.detach().min()), float(model.pos_embedding.detach().max())
    assert float(qp.scale) == pytest.approx((max(hi, 0) - min(lo, 0)) / 255, rel=1e-5)


# ---------------------------------------------------------------------------------------
# models written by others
# ---------------------------------------------------------------------------------------

def _torchvision():
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    return pytest.importorskip("torchvision")


@pytest.mark.parametrize("target", OP_TARGETS)
@pytest.mark.parametrize("stride, mode, act", [(1, "fp32", "uint8"), (2, "fixed_point", "int8")])
def test_shufflenet_unit(target, stride, mode, act):
    """torchvision's ShuffleNetV2 InvertedResidual: chunk, branches, cat, channel shuffle
    (view to 5-d, transpose, contiguous, view back) on NHWC int8."""
    _torchvision()
    from torchvision.models.shufflenetv2 import InvertedResidual
    torch.manual_seed(stride)
    unit = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), InvertedResidual(24, 48, 2),
                         InvertedResidual(48, 48, stride), InvertedResidual(48, 48, 1))
    assert_bit_exact(unit, torch.randn(2, 3, 22, 21), target, mode, act)


def test_shufflenet_v2_leaves_no_op_in_float():
    tv = _torchvision()
    torch.manual_seed(0)
    cfg = QConfig(activation=TensorSpec("uint8", symmetric=False, observer="minmax"))
    qm = qcompiler.quantize(tv.models.shufflenet_v2_x0_5().eval(), [(torch.randn(1, 3, 96, 96),)], config=cfg,
                            progress=False, warn_float=False)
    assert graph_info(qm.graph_module).float_ops == []        # its final x.mean([2, 3]) too


class AttentionShapes(nn.Module):
    """qcompiler.zoo.TinyTransformerClassifier's head split and merge around the attention
    (its matmuls and softmax are the transformer family's): [B, S, D] → [B, H, S, Dh] and
    back, k transposed."""

    def __init__(self, d=16, heads=4):
        super().__init__()
        from qcompiler.zoo.transformer import TransformerEncoderLayer
        self.layer = TransformerEncoderLayer(d, heads, 32)
        self.k_proj = nn.Linear(d, d)

    def forward(self, x):
        q = self.layer._split_heads(self.layer.q_proj(x))          # unflatten + transpose(1, 2)
        k = self.layer._split_heads(self.k_proj(x)).transpose(-2, -1)
        merged = (q + k.transpose(-2, -1)).transpose(1, 2).flatten(-2)
        return self.layer.out_proj(merged)


@pytest.mark.parametrize("target", OP_TARGETS)
@pytest.mark.parametrize("mode, act", [("fp32", "int8"), ("fixed_point", "uint8")])
def test_transformer_head_reshapes(target, mode, act):
    torch.manual_seed(7)
    assert_bit_exact(AttentionShapes(), torch.randn(3, 5, 16), target, mode, act)
