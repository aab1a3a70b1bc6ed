"""Random DAG models for the graph fuzzer (tests/test_fuzz_graphs.py).

A ``GraphSpec`` is plain data: its inputs, a list of nodes ``N(op, *input_values, **params)``
(value i is input i, then node outputs in order), the outputs, a quantization recipe ``Q`` and
a seed for weights and data. ``FuzzModel(spec)`` builds an ordinary nn.Module from it whose
forward fx traces like any user model; ``graph_specs()`` is the Hypothesis strategy. The repr
of a spec is Python that rebuilds it, with each value's shape in a comment, so a shrunk
failure can be pasted into a regression test as it is printed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

from qcompiler import QConfig, TensorSpec

#: largest value a graph may hold (elements): keeps one graph's quantize + compile well under 1 s
MAX_NUMEL = 3072
MAX_DIM = 24


# ---------------------------------------------------------------------------------------
# the spec
# ---------------------------------------------------------------------------------------

class N:
    """One node: ``op`` applied to earlier values (indices), with keyword parameters."""

    def __init__(self, op: str, *inputs: int, **params):
        self.op, self.inputs, self.params = op, tuple(inputs), dict(params)

    def __repr__(self):
        parts = [repr(self.op), *map(str, self.inputs), *(f"{k}={v!r}" for k, v in self.params.items())]
        return f"N({', '.join(parts)})"

    def __eq__(self, other):
        return isinstance(other, N) and (self.op, self.inputs, self.params) == (other.op, other.inputs, other.params)

    def __hash__(self):
        return hash((self.op, self.inputs))


@dataclass(frozen=True)
class Inp:
    """A model input: float activations (``randn * scale + offset``) or int64 token ids."""

    shape: tuple
    kind: str = "float"
    scale: float = 1.0
    offset: float = 0.0
    vocab: int = 0

    def __repr__(self):
        changed = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)[1:]
                   if getattr(self, f.name) != f.default]
        return f"Inp({', '.join([repr(tuple(self.shape)), *changed])})"

    def _repr_pretty_(self, printer, cycle):
        printer.text(repr(self))


@dataclass(frozen=True)
class Q:
    """The quantization recipe (a QConfig, flattened for a readable repr)."""

    act: str = "uint8"
    act_symmetric: bool = False
    observer: str = "minmax"
    range_method: str = "minmax"
    weight: str = "int8_narrow"
    weight_symmetric: bool = True
    granularity: str = "per_channel"
    mode: str = "fp32"
    bias_correction: bool = False

    def config(self) -> QConfig:
        return QConfig(activation=TensorSpec(self.act, self.act_symmetric, observer=self.observer,
                                             range_method=self.range_method),
                       weight=TensorSpec(self.weight, self.weight_symmetric, granularity=self.granularity),
                       requant_mode=self.mode, bias_correction=self.bias_correction)

    def __repr__(self):
        changed = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                   if getattr(self, f.name) != f.default]
        return f"Q({', '.join(changed)})"

    def _repr_pretty_(self, printer, cycle):
        printer.text(repr(self))


#: ops that have no integer kernel anywhere: they stay in float and make the graph partition
FLOAT_ONLY_OPS = frozenset({"erf", "lstm"})
#: value-preserving ops: they run on an int8 tensor with its qparams, so on their own (on a
#: float input) there is nothing to quantize
SHARED_OPS = frozenset({"relu", "max_pool2d", "reshape", "flatten", "permute", "transpose", "chunk", "split",
                        "slice", "select"})


@dataclass(frozen=True)
class GraphSpec:
    inputs: tuple
    nodes: tuple
    outputs: tuple
    q: Q = Q()
    seed: int = 0

    @property
    def has_float_only_op(self) -> bool:
        return any(n.op in FLOAT_ONLY_OPS for n in self.nodes)

    @property
    def quantizable(self) -> bool:
        """Whether any op gets its own quantization (else quantize() says there is nothing to do)."""
        return any(n.op not in FLOAT_ONLY_OPS | SHARED_OPS for n in self.nodes)

    @property
    def float_passthrough(self) -> list:
        """Nodes that only move float input values (a reshape of an input, say): no quantized
        value reaches them, so they run in PyTorch, in float, as in the float model."""
        k, plain = len(self.inputs), set(range(len(self.inputs)))
        for j, n in enumerate(self.nodes):
            if n.op in SHARED_OPS and set(n.inputs) <= plain:
                plain.add(k + j)
        return sorted(plain - set(range(k)))

    def _repr_pretty_(self, printer, cycle):    # hypothesis prints a falsifying spec with this
        printer.text(repr(self))

    def __repr__(self):
        try:
            shapes = value_shapes(self)
        except Exception as e:  # noqa: BLE001 - a repr must not raise; say why shapes are missing
            shapes = [f"shape inference failed: {e}"] * (len(self.inputs) + len(self.nodes))
        k = len(self.inputs)
        ins = "".join(f"        {i!r},  # v{j}\n" for j, i in enumerate(self.inputs))
        nodes = "".join(f"        {n!r},  # v{k + j}: {shapes[k + j]}\n" for j, n in enumerate(self.nodes))
        return (f"GraphSpec(\n    inputs=(\n{ins}    ),\n    nodes=(\n{nodes}    ),\n"
                f"    outputs={self.outputs!r},\n    q={self.q!r},\n    seed={self.seed!r})")


# ---------------------------------------------------------------------------------------
# from spec to module
# ---------------------------------------------------------------------------------------

LOOKUPS = {
    "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish, "silu": F.silu, "sigmoid": torch.sigmoid,
    "gelu": F.gelu, "tanh": torch.tanh,
}
SCALAR_OPS = {
    "add": lambda x, c: x + c, "sub": lambda x, c: x - c, "rsub": lambda x, c: c - x,
    "mul": lambda x, c: x * c, "div": lambda x, c: x / c,
}


def _index(dim: int, item) -> tuple:
    """``x[:, :, item]`` with ``item`` at ``dim``."""
    return (slice(None),) * dim + (item,)


def _pruned(layer: nn.Module, p: dict) -> nn.Module:
    """``prune``: output channel 0 all-zero weights (a per-channel weight scale at its floor)."""
    if p.get("prune"):
        with torch.no_grad():
            layer.weight[0].zero_()
    return layer


def make_layer(node: N, shapes: list) -> Optional[nn.Module]:
    """The parameterized module a node calls (None for functional nodes); default init under
    the caller's RNG, with batch-norm statistics and norm affines made non-trivial."""
    p, s = node.params, shapes[node.inputs[0]] if node.inputs else None
    if node.op == "conv2d":
        conv = _pruned(nn.Conv2d(s[1], p["out"], p["k"], p["stride"], p["padding"], p["dilation"], p["groups"],
                                 bias=p["bias"]), p)
        if not p.get("bn"):
            return conv
        bn = nn.BatchNorm2d(p["out"])
        with torch.no_grad():
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        return nn.Sequential(conv, bn)
    if node.op == "linear":
        return _pruned(nn.Linear(s[-1], p["out"], bias=p["bias"]), p)
    if node.op == "layer_norm":
        ln = nn.LayerNorm(tuple(s[-p["dims"]:]), elementwise_affine=p["affine"])
        if p["affine"]:
            with torch.no_grad():
                ln.weight.uniform_(0.5, 1.5)
                ln.bias.uniform_(-0.5, 0.5)
        return ln
    if node.op == "embedding":
        return nn.Embedding(p["vocab"], p["dim"])
    if node.op == "lstm":
        return nn.LSTM(s[-1], p["hidden"], batch_first=True)
    return None


def apply(node: N, ins: list, layer: Optional[nn.Module]):
    """The node's computation on tensors (or fx proxies while tracing)."""
    op, p = node.op, node.params
    x = ins[0] if ins else None
    if op in ("conv2d", "linear", "layer_norm", "embedding"):
        return layer(x)
    if op == "lstm":
        return layer(x)[0]
    if op in LOOKUPS:
        return LOOKUPS[op](x)
    if op == "leaky_relu":
        return F.leaky_relu(x, p["slope"])
    if op == "scalar":
        return SCALAR_OPS[p["fn"]](x, p["c"])
    if op == "erf":
        return torch.erf(x)
    if op == "add":
        return ins[0] + ins[1]
    if op == "mul":
        return ins[0] * ins[1]
    if op == "cat":
        return torch.cat(ins, p["dim"])
    if op == "matmul":
        return torch.matmul(ins[0], ins[1].transpose(-2, -1) if p["transpose_b"] else ins[1])
    if op == "max_pool2d":
        return F.max_pool2d(x, p["k"], p["stride"], p["padding"], p["dilation"], ceil_mode=p["ceil_mode"])
    if op == "avg_pool2d":
        return F.avg_pool2d(x, p["k"], p["stride"], p["padding"], p["ceil_mode"], p["count_include_pad"],
                            p["divisor_override"])
    if op == "adaptive_avg_pool2d":
        return F.adaptive_avg_pool2d(x, p["size"])
    if op == "softmax":
        return F.softmax(x, p["dim"])
    if op == "mean":
        return x.mean(p["dims"], keepdim=p["keepdim"])
    if op == "reshape":
        return x.reshape(p["shape"])
    if op == "flatten":
        return torch.flatten(x, p["start"], p["end"])
    if op == "permute":
        return x.permute(*p["dims"])
    if op == "transpose":
        return x.transpose(p["dim0"], p["dim1"])
    if op == "chunk":
        return torch.chunk(x, p["chunks"], p["dim"])[p["i"]]
    if op == "split":
        return torch.split(x, p["size"], p["dim"])[p["i"]]
    if op == "slice":
        return x[_index(p["dim"], slice(p["start"], p["stop"], p["step"]))]
    if op == "select":
        return x[_index(p["dim"], p["index"])]
    raise ValueError(f"unknown fuzz op {op!r}")


def _build(spec: GraphSpec) -> tuple[list, list]:
    """Layers (None for functional nodes) and every value's shape, from zero inputs."""
    shapes = [tuple(i.shape) for i in spec.inputs]
    vals = [torch.zeros(i.shape, dtype=torch.int64) if i.kind == "ids" else torch.zeros(i.shape)
            for i in spec.inputs]
    layers = []
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(spec.seed)
        for node in spec.nodes:
            layer = make_layer(node, shapes)
            if layer is not None:
                layer.eval()
            out = apply(node, [vals[i] for i in node.inputs], layer)
            layers.append(layer)
            vals.append(out)
            shapes.append(tuple(out.shape))
    return layers, shapes


def value_shapes(spec: GraphSpec) -> list:
    return _build(spec)[1]


class _Graph(nn.Module):
    def __init__(self, spec: GraphSpec):
        super().__init__()
        self.spec = spec
        layers, _ = _build(spec)
        self.layers = nn.ModuleDict({f"n{len(spec.inputs) + j}": layer
                                     for j, layer in enumerate(layers) if layer is not None})
        self.eval()

    def run(self, inputs):
        vals = list(inputs)
        for j, node in enumerate(self.spec.nodes):
            name = f"n{len(self.spec.inputs) + j}"
            layer = self.layers[name] if name in self.layers else None
            vals.append(apply(node, [vals[i] for i in node.inputs], layer))
        outs = tuple(vals[i] for i in self.spec.outputs)
        return outs[0] if len(outs) == 1 else outs


# fx traces a fixed signature, not *args: one class per input count
class _Graph1(_Graph):
    def forward(self, a):
        return self.run((a,))


class _Graph2(_Graph):
    def forward(self, a, b):
        return self.run((a, b))


class _Graph3(_Graph):
    def forward(self, a, b, c):
        return self.run((a, b, c))


def FuzzModel(spec: GraphSpec) -> nn.Module:  # noqa: N802 - reads as a class at the call site
    return {1: _Graph1, 2: _Graph2, 3: _Graph3}[len(spec.inputs)](spec)


def make_inputs(spec: GraphSpec, salt: int) -> tuple:
    """One batch of inputs; ``salt`` 0.. for calibration batches, and a larger one (with float
    inputs 25% wider than calibration, so some values saturate) for the checked input."""
    g = torch.Generator().manual_seed(spec.seed * 1000 + salt)
    widen = 1.25 if salt >= 100 else 1.0
    out = []
    for i in spec.inputs:
        if i.kind == "ids":
            out.append(torch.randint(0, i.vocab, i.shape, generator=g))
        else:
            out.append(torch.randn(i.shape, generator=g) * i.scale * widen + i.offset)
    return tuple(out)


# ---------------------------------------------------------------------------------------
# the strategy
# ---------------------------------------------------------------------------------------

def _numel(shape) -> int:
    return math.prod(shape)


def _divisors(n: int) -> list:
    return [d for d in range(1, n + 1) if n % d == 0]


def _pool_out(size, k, stride, padding, dilation, ceil_mode) -> int:
    span = size + 2 * padding - dilation * (k - 1) - 1
    if span < 0:
        return 0
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:     # torch drops a window starting in padding
        out -= 1
    return out


def _conv(draw, s, shapes):
    c, h, w = s[1], s[2], s[3]
    kind = draw(st.sampled_from(["dense", "grouped", "depthwise"]))
    groups = {"dense": 1, "grouped": draw(st.sampled_from(_divisors(c))), "depthwise": c}[kind]
    out = groups * draw(st.integers(1, 3)) if kind != "dense" else draw(st.integers(1, 16))
    k = draw(st.sampled_from([1, 3, 2, 5]))
    stride, dilation = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    padding = draw(st.integers(0, k // 2 * dilation))
    if min(_pool_out(h, k, stride, padding, dilation, False), _pool_out(w, k, stride, padding, dilation, False)) < 1:
        k, dilation, padding = 1, 1, 0
    return (), dict(out=out, k=k, stride=stride, padding=padding, dilation=dilation, groups=groups,
                    bias=draw(st.booleans()), bn=draw(st.booleans()), prune=draw(st.booleans()))


def _pool_params(draw, s, avg):
    k = draw(st.integers(1, 3))
    stride = draw(st.integers(1, k))
    padding = draw(st.integers(0, k // 2))
    ceil_mode = draw(st.booleans())
    dilation = 1 if avg else draw(st.integers(1, 2))
    if min(_pool_out(s[2], k, stride, padding, dilation, ceil_mode),
           _pool_out(s[3], k, stride, padding, dilation, ceil_mode)) < 1:
        k, stride, padding, dilation = 1, 1, 0, 1
    if avg:
        return (), dict(k=k, stride=stride, padding=padding, ceil_mode=ceil_mode,
                        count_include_pad=draw(st.booleans()),
                        divisor_override=draw(st.sampled_from([None, None, 1, k * k + 1])))
    return (), dict(k=k, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)


def _binary_partners(s, shapes, kinds):
    out = []
    for j, t in enumerate(shapes):
        if kinds[j] != "float":
            continue
        try:
            b = torch.broadcast_shapes(s, t)
        except RuntimeError:
            continue
        if _numel(b) <= MAX_NUMEL and len(b) >= 1:
            out.append(j)
    return out


def _cat_partners(s, shapes, kinds, dim):
    return [j for j, t in enumerate(shapes) if kinds[j] == "float" and len(t) == len(s)
            and all(a == b for d, (a, b) in enumerate(zip(s, t)) if d != dim)]


def _matmul_partners(s, shapes, kinds, transpose_b):
    out = []
    for j, t in enumerate(shapes):
        if kinds[j] != "float" or len(t) < 2:
            continue
        k_b = t[-1] if transpose_b else t[-2]
        n = t[-2] if transpose_b else t[-1]
        if k_b != s[-1]:
            continue
        try:
            batch = torch.broadcast_shapes(s[:-2], t[:-2])
        except RuntimeError:
            continue
        if _numel(batch) * s[-2] * n <= MAX_NUMEL:
            out.append(j)
    return out


def _reshape(draw, s):
    """Merge two neighbouring dims, or split one into two factors."""
    r = len(s)
    options = [("merge", d) for d in range(r - 1)] + \
              [("split", d) for d in range(r) if len(_divisors(s[d])) > 2 and r < 5]
    if not options:
        return None
    how, d = draw(st.sampled_from(options))
    if how == "merge":
        shape = s[:d] + (s[d] * s[d + 1],) + s[d + 2:]
    else:
        a = draw(st.sampled_from(_divisors(s[d])[1:-1]))
        shape = s[:d] + (a, s[d] // a) + s[d + 1:]
    return (), dict(shape=shape)


def _node(draw, op, src, shapes, kinds):
    """(other inputs, params) of ``op`` on value ``src``, or None where it does not apply."""
    s, r = shapes[src], len(shapes[src])
    dim = lambda: draw(st.integers(0, r - 1))  # noqa: E731
    if op == "conv2d":
        return _conv(draw, s, shapes) if r == 4 else None
    if op == "linear":
        return (), dict(out=draw(st.integers(1, MAX_DIM)), bias=draw(st.booleans()), prune=draw(st.booleans()))
    if op in LOOKUPS or op == "erf":
        return (), {}
    if op == "leaky_relu":
        return (), dict(slope=draw(st.sampled_from([0.01, 0.2, 1.5])))
    if op == "scalar":
        return (), dict(fn=draw(st.sampled_from(sorted(SCALAR_OPS))), c=draw(st.sampled_from([3, 0.5, -2.0, 1e-3])))
    if op in ("add", "mul"):
        partners = _binary_partners(s, shapes, kinds)
        return (draw(st.sampled_from(partners)),), {}
    if op == "cat":
        d = dim()
        partners = _cat_partners(s, shapes, kinds, d)
        others = draw(st.lists(st.sampled_from(partners), min_size=1, max_size=2))
        if _numel(s) // s[d] * sum(shapes[j][d] for j in (src, *others)) > MAX_NUMEL:
            return None
        return tuple(others), dict(dim=d)
    if op == "matmul":
        if r < 2:
            return None
        transpose_b = draw(st.booleans())
        partners = _matmul_partners(s, shapes, kinds, transpose_b)
        return ((draw(st.sampled_from(partners)),), dict(transpose_b=transpose_b)) if partners else None
    if op in ("max_pool2d", "avg_pool2d"):
        return _pool_params(draw, s, op == "avg_pool2d") if r == 4 else None
    if op == "adaptive_avg_pool2d":
        if r != 4:
            return None
        size = draw(st.one_of(st.just(1), st.tuples(st.integers(1, s[2]), st.integers(1, s[3]))))
        return (), dict(size=size)
    if op == "softmax":
        return (), dict(dim=draw(st.sampled_from([-1, *range(r)])))
    if op == "layer_norm":
        return (), dict(dims=draw(st.integers(1, min(2, r))), affine=draw(st.booleans()))
    if op == "mean":
        dims = draw(st.lists(st.integers(0, r - 1), min_size=1, max_size=r, unique=True))
        keepdim = draw(st.booleans())
        if not keepdim and len(dims) == r:
            keepdim = True
        return (), dict(dims=tuple(sorted(dims)), keepdim=keepdim)
    if op == "reshape":
        return _reshape(draw, s)
    if op == "flatten":
        if r < 2:
            return None
        start = draw(st.integers(0, r - 2))
        return (), dict(start=start, end=draw(st.integers(start + 1, r - 1)))
    if op == "permute":
        return ((), dict(dims=tuple(draw(st.permutations(range(r)))))) if r >= 2 else None
    if op == "transpose":
        if r < 2:
            return None
        d0 = draw(st.integers(0, r - 2))
        return (), dict(dim0=d0, dim1=draw(st.integers(d0 + 1, r - 1)))
    if op in ("chunk", "split", "slice", "select"):
        d = dim()
        n = s[d]
        if op == "chunk":
            chunks = draw(st.integers(1, max(1, min(n, 4))))
            return (), dict(chunks=chunks, dim=d, i=draw(st.integers(0, len(range(0, n, -(-n // chunks))) - 1)))
        if op == "split":
            size = draw(st.integers(1, n))
            return (), dict(size=size, dim=d, i=draw(st.integers(0, -(-n // size) - 1)))
        if op == "slice":
            start = draw(st.integers(0, n - 1))
            return (), dict(dim=d, start=start, stop=draw(st.integers(start + 1, n)), step=draw(st.integers(1, 2)))
        return ((), dict(dim=d, index=draw(st.integers(-n, n - 1)))) if r >= 2 else None
    if op == "lstm":
        return ((), dict(hidden=draw(st.integers(1, 8)))) if r == 3 else None
    raise ValueError(op)


#: ops a node may apply to an activation, by family (a family is drawn first, then an op in it,
#: so the 8 shape ops do not crowd out the 2 layers); simplest first, as hypothesis shrinks
#: toward the front
FAMILIES = (
    ("lookup", ("relu", "relu6", "hardswish", "silu", "sigmoid", "gelu", "tanh", "leaky_relu", "scalar")),
    ("layer", ("linear", "conv2d", "conv2d", "conv2d")),        # conv2d where it applies, mostly
    ("binary", ("add", "mul", "cat", "matmul")),
    ("pool", ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d")),
    ("shape", ("reshape", "flatten", "permute", "transpose", "chunk", "split", "slice", "select")),
    ("normalize", ("softmax", "layer_norm", "mean")),
)
ACTIVATION_OPS = tuple(dict.fromkeys(op for _, ops in FAMILIES for op in ops))
#: what an input meets first: an op with its own quantization (a reshape of a float input would
#: run in float, in PyTorch, and most graphs would then not be one native program)
COMPUTE_FIRST = tuple(op for op in ACTIVATION_OPS if op not in SHARED_OPS)


def _draw_op(draw, allowed, shape) -> str:
    families = [[op for op in ops if op in allowed and _applies(op, shape)] for _, ops in FAMILIES]
    extra = [op for op in allowed if op not in ACTIVATION_OPS and _applies(op, shape)]  # float-only
    choices = [f for f in families if f] + ([extra] if extra else [])
    return draw(st.sampled_from(draw(st.sampled_from(choices))))


def _inputs(draw, with_ids: bool):
    batch = draw(st.integers(1, 2))
    rank = draw(st.sampled_from([4, 3, 2]))
    if rank == 4:
        shape = (batch, draw(st.integers(1, 12)), draw(st.integers(1, 10)), draw(st.integers(1, 10)))
    elif rank == 3:
        shape = (batch, draw(st.integers(1, 8)), draw(st.integers(1, MAX_DIM)))
    else:
        shape = (batch, draw(st.integers(1, 48)))
    scale, offset = draw(st.sampled_from([1.0, 0.1, 5.0, 1e-3, 100.0])), draw(st.sampled_from([0.0, 1.0, -0.5]))
    inputs = [Inp(shape, scale=scale, offset=offset)]
    if draw(st.integers(0, 3)) == 3:                 # a second activation input of the same shape
        inputs.append(Inp(shape, scale=draw(st.sampled_from([1.0, 2.0]))))
    if with_ids:
        inputs.append(Inp((batch, draw(st.integers(1, 8))), kind="ids", vocab=draw(st.integers(2, 40))))
    return inputs


def _recipe(draw) -> Q:
    observer = draw(st.sampled_from(["minmax", "moving_average", "histogram"]))
    range_method = draw(st.sampled_from(["minmax", "percentile", "mse"])) if observer == "histogram" else "minmax"
    return Q(act=draw(st.sampled_from(["uint8", "int8"])), act_symmetric=draw(st.booleans()),
             observer=observer, range_method=range_method,
             weight=draw(st.sampled_from(["int8_narrow", "int8", "int4"])), weight_symmetric=draw(st.booleans()),
             granularity=draw(st.sampled_from(["per_channel", "per_tensor"])),
             mode=draw(st.sampled_from(["fp32", "fixed_point"])), bias_correction=draw(st.booleans()))


def _applies(op: str, s: tuple) -> bool:
    """Whether ``op`` takes an activation of shape ``s`` (rank only: partners are drawn later)."""
    r = len(s)
    if op in ("conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"):
        return r == 4
    if op == "lstm":
        return r == 3
    if op in ("linear", "matmul", "flatten", "permute", "transpose", "select"):
        return r >= 2
    return True


def _draw_node(draw, ops, src, inputs, nodes, shapes, kinds, seed):
    """A node on value ``src`` and its output shape, or (None, None) where torch refuses the
    shapes, the result is too large, or no partner fits (matmul)."""
    if kinds[src] == "ids":
        node = N("embedding", src, vocab=inputs[src].vocab, dim=draw(st.integers(1, 16)))
    else:
        op = _draw_op(draw, ops, shapes[src])
        got = _node(draw, op, src, shapes, kinds)
        if got is None:
            return None, None
        node = N(op, src, *got[0], **got[1])
    try:                                              # shapes only: on the meta device, no data
        with torch.device("meta"), torch.no_grad():
            ins = [torch.empty(shapes[i], dtype=torch.int64 if kinds[i] == "ids" else torch.float32)
                   for i in node.inputs]
            layer = make_layer(node, shapes)
            shape = tuple(apply(node, ins, layer.eval() if layer is not None else None).shape)
    except (RuntimeError, ValueError):
        return None, None
    if len(shape) == 0 or not 0 < _numel(shape) <= MAX_NUMEL:
        return None, None
    return node, shape


@st.composite
def graph_specs(draw, max_nodes: int = 8, float_only: bool = True) -> GraphSpec:
    """A random DAG over the ops the targets cover; with ``float_only``, a quarter of the graphs
    hold one op with no integer kernel (erf, an LSTM), so they are partitioned."""
    inputs = _inputs(draw, with_ids=draw(st.integers(0, 5)) == 5)   # shrinks toward no ids
    shapes = [tuple(i.shape) for i in inputs]
    kinds = [i.kind for i in inputs]
    consumed, nodes = set(), []
    n_nodes = draw(st.integers(len(inputs), max_nodes + len(inputs) - 1))
    float_step = draw(st.integers(0, n_nodes - 1)) if float_only and draw(st.integers(0, 3)) == 3 else None
    seed = draw(st.integers(0, 2**16))
    for step in range(n_nodes):
        if step < len(inputs):                        # every input is used, first by an op of its own
            src, ops = step, COMPUTE_FIRST
        else:                                         # most recent values first: deep chains shrink well
            src = draw(st.sampled_from([j for j in reversed(range(len(kinds))) if kinds[j] == "float"]))
            ops = ACTIVATION_OPS
        if step == float_step:
            ops = ("erf", "lstm")
        node, shape = _draw_node(draw, ops, src, inputs, nodes, shapes, kinds, seed)
        if node is None and step < len(inputs):
            node, shape = N("sigmoid", src), shapes[src]
        if node is None:
            continue
        nodes.append(node)
        shapes.append(shape)
        kinds.append("float")
        consumed.update(node.inputs)
    first = len(inputs)
    sinks = [j for j in range(first, len(shapes)) if j not in consumed]
    extra = draw(st.lists(st.integers(first, len(shapes) - 1), max_size=1))   # an intermediate value too
    outputs = tuple(sorted(set(sinks) | set(extra)))
    return GraphSpec(tuple(inputs), tuple(nodes), outputs, _recipe(draw), seed)
