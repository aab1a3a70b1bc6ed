"""Lowering of the ops that run on the target's GEMM: convolutions (direct, im2col, shifted
views, space-to-depth stems, depthwise) and linear layers, with a residual add fused into the
GEMM's epilogue where the target can (see extensions.py for how op families plug into Lowering).
"""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompiler.core.integer_ops import QAdd, QConv, QLinear

from .literals import c_float
from .program import QTensor, RequantArrays, c_requant_mode, stored, unsupported

#: channels the runtime's depthwise kernel accumulates on its stack (QC_DW_MAX_CHANNELS)
DEPTHWISE_MAX_CHANNELS = 4096
#: strided convolutions over at most this many channels after space-to-depth (s*s*cin) take it
SPACE_TO_DEPTH_MAX_CHANNELS = 16


def check_weights(node, mod) -> None:
    wq = mod.weight_qparams
    if bool((wq.zero_point != 0).any()):
        raise unsupported(node, "asymmetric weights (zero point != 0) are not supported")
    if mod.weight.dtype != torch.int8:
        raise unsupported(node, f"weights stored as {mod.weight.dtype} are not supported")
    if mod.input_qparams[0].per_channel:
        raise unsupported(node, "per-channel input quantization is not supported")

def lower_linear(em, node: fx.Node, mod: QLinear) -> None:
    check_weights(node, mod)
    x = em.value(node.args[0], node, keep_nhwc_flat=True)
    n_out, k = mod.weight.shape
    weight, note = mod.weight, ""
    if x.layout == "nhwc_flat":
        # flatten(1) of NHWC bytes: permute the weight columns from (c, h, w) to (h, w, c)
        # order instead of transposing the activations (free: done once, here)
        _, c, h, w = x.nhwc_dims
        weight = weight.reshape(n_out, c, h, w).permute(0, 2, 3, 1).reshape(n_out, k)
        note = ", weights permuted to NHWC order"
    else:
        x = em.as_layout(x, "plain")
    m = x.numel // k
    out = em.new_tensor(em.shape_of(node), "plain", mod.output_qparams)
    rq = RequantArrays.from_requant(mod.requant, n_out, out.signed)
    lines = em.gemm.emit(em, a=em.ptr(x), lda=k, m=m, c=em.ptr(out), ldc=n_out, weight=weight,
                           bias=mod.bias, a_zero_point=x.zp, requant=rq)
    em.add_step(f"{mod.source_layer or node.name}: linear {k}->{n_out}, M={m}{note} ({node.name})", lines,
                  reads=[x], writes=[out])
    em.values[node] = out

def lower_conv(em, node: fx.Node, mod: QConv, x=None, shape=None) -> None:
    """``x`` (NHWC) and ``shape``: a 4-d view from a caller (conv1d as conv2d with H = 1)."""
    check_weights(node, mod)
    if mod.dims == 1 and x is None and not isinstance(mod.padding, str):
        return lower_conv1d(em, node, mod)
    if mod.dims != 2 or isinstance(mod.padding, str):
        raise unsupported(node, "only conv1d/conv2d with numeric padding are supported")
    x = x if x is not None else em.as_layout(em.value(node.args[0], node), "nhwc")
    shape = shape if shape is not None else em.shape_of(node)
    n, cin, h, w = x.space_to_depth[1] if x.space_to_depth else x.shape
    _, cout, oh, ow = shape
    o, cg, kh, kw = mod.weight.shape
    groups = mod.groups
    og = o // groups
    (sh, sw), (ph, pw), (dh, dw) = pair(mod.stride), pair(mod.padding), pair(mod.dilation)
    geom = f"&(qc_window){{{n}, {h}, {w}, {cin}, {oh}, {ow}, {kh}, {kw}, {sh}, {sw}, {ph}, {pw}, {dh}, {dw}}}"
    what = (f"{mod.source_layer or node.name}: conv {kh}x{kw} s{sh} p{ph}"
            + (f" g{groups}" if groups > 1 else "") + f", {cin}->{cout}, {h}x{w}->{oh}x{ow}")
    bias = mod.bias if mod.bias is not None else torch.zeros(o, dtype=torch.int32)
    depthwise = cg == 1 and og == 1 and o <= DEPTHWISE_MAX_CHANNELS
    fused_add = None if depthwise or groups > 1 else _fusable_add(em, node, mod, o, kh * kw * cg)
    if fused_add is None:
        out = em.new_tensor(shape, "nhwc", mod.output_qparams)
    else:
        add_node, add_mod, other = fused_add
        out = em.new_tensor(shape, "nhwc", add_mod.output_qparams)
        add_literal = _add_literal(em, node, mod, add_node, add_mod, other, o)
    if depthwise:
        lanes = em.depthwise_lanes           # [C/lanes][kh*kw][lanes], zero past C (qc_rt_depthwise)
        blocks = -(-o // lanes)
        w_dw = torch.zeros((blocks * lanes, kh * kw), dtype=torch.int32)
        w_dw[:o] = mod.weight.reshape(o, kh * kw).to(torch.int32)
        w_dw = w_dw.reshape(blocks, lanes, kh * kw).transpose(1, 2).contiguous()
        b_dw = torch.zeros(blocks * lanes, dtype=torch.int32)
        b_dw[:o] = bias.to(torch.int32)
        rq = RequantArrays.from_requant(mod.requant, o, out.signed)
        line = (f"qc_rt_depthwise({em.ptr(x)}, {em.ptr(out)}, {geom}, {x.zp}, "
                f"{em.weight(w_dw, 'int32_t')}, {em.weight(b_dw, 'int32_t')}, "
                f"{em.rq_literal(rq)}, threads);")
        em.add_step(f"{what}, depthwise ({node.name})", [line], reads=[x], writes=[out])
        em.values[node] = out
        return
    weight, lines, reads, note = mod.weight, [], [x], ""
    plan = em.space_to_depth_plan(mod, cin, shape)
    if plan:
        # a thin strided input (an RGB stem): space-to-depth first, so the conv becomes
        # stride 1 over s*s*cin channels (ResNet's 7x7 s2: 4x4 taps of 12 bytes, K = 192
        # rather than 147; AMX then needs no im2col: a kernel row of taps is one 64-byte K
        # block of a shifted view);
        # done by the input's quantize step when this conv is its one consumer
        s, kqh, kqw, h, w = plan
        cin = s * s * cin
        if x.space_to_depth:
            x2 = x.buffer
        else:
            x2 = em.scratch(n * h * w * cin)
            em.add_step(f"{mod.source_layer or node.name}: space-to-depth {s}x{s} of its input "
                          f"{list(x.shape)} ({node.name})",
                          [f"qc_rt_im2col({em.ptr(x)}, QC_BUF({x2.ident}), &(qc_window){{{n}, {x.shape[2]}, "
                           f"{x.shape[3]}, {x.shape[1]}, {h}, {w}, {s}, {s}, {s}, {s}, {ph}, {pw}, 1, 1}}, 0, "
                           f"{x.shape[1]}, {x.zp}, threads);"], reads=[x], writes=[x2])
        padded = torch.zeros((o, cg, kqh * s, kqw * s), dtype=weight.dtype)
        padded[:, :, :kh, :kw] = weight
        # [o, c, ky'*s + dy, kx'*s + dx] -> [o, (dy, dx, c), ky', kx']: the channel order of x2
        weight = padded.reshape(o, cg, kqh, s, kqw, s).permute(0, 3, 5, 1, 2, 4).reshape(o, cin, kqh, kqw)
        x = QTensor((n, cin, h, w), "nhwc", x.zp, x.signed, x.qparams, x2)
        reads.append(x2)
        cg, kh, kw, sh, sw, ph, pw = cin, kqh, kqw, 1, 1, 0, 0
        geom = f"&(qc_window){{{n}, {h}, {w}, {cin}, {oh}, {ow}, {kh}, {kw}, 1, 1, 0, 0, 1, 1}}"
        note = f"as {kh}x{kw} s1 over {cin} channels after space-to-depth, "
    m = n * oh * ow
    k = kh * kw * cg
    direct = kh == 1 and kw == 1 and (sh, sw, ph, pw) == (1, 1, 0, 0)
    col, how = None, "GEMM on NHWC rows" if direct else "im2col + GEMM"
    for g in range(groups):
        w2d = weight[g * og:(g + 1) * og].permute(0, 2, 3, 1).reshape(og, k)   # k = (ky, kx, c)
        rq = RequantArrays.from_requant(mod.requant, o, mod.output_qparams.qtype.signed, g * og, (g + 1) * og)
        args = dict(c=f"{em.ptr(out)} + {g * og}", ldc=o, weight=w2d, bias=bias[g * og:(g + 1) * og],
                    a_zero_point=x.zp, requant=rq)
        if fused_add is not None:
            args["add"] = add_literal
        if direct:
            lines += em.gemm.emit(em, a=f"{em.ptr(x)} + {g * cg}", lda=cin, m=m, **args)
            continue
        window = (n, h, w, cin, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw)
        fused = em.gemm.emit_conv(em, x=em.ptr(x), geom=geom, window=window, c0=g * cg, cg=cg, pad=x.zp,
                                    m=m, k=k, groups=groups, **args)
        if fused is not None:
            fused_lines, how, scratch = fused
            lines += fused_lines
            reads += scratch
            continue
        col = col or em.scratch(m * k)
        a = f"QC_BUF({col.ident})"
        lines.append(f"qc_rt_im2col({em.ptr(x)}, {a}, {geom}, {g * cg}, {cg}, {x.zp}, threads);")
        lines += em.gemm.emit(em, a=a, lda=k, m=m, **args)
    if fused_add is not None:
        reads.append(other)
        how += f", + residual add {add_node.name} in its epilogue"
    em.add_step(f"{what}, {note}{how} ({node.name})", lines, reads=reads + ([col] if col else []),
                  writes=[out])
    if fused_add is not None:
        em.values[add_node] = out
        em.fused.add(add_node)
    else:
        em.values[node] = out

def _fusable_add(em, node: fx.Node, mod: QConv, n: int, k: int):
    """(add node, QAdd, the other addend) when the convolution's one consumer is a QAdd whose
    other input is already computed, in the same layout, and the target's epilogue can do it."""
    users = list(node.users)
    add = em.modules.get(users[0].target) if len(users) == 1 and users[0].op == "call_module" else None
    if not isinstance(add, QAdd) or len(users[0].args) != 2 or not em.gemm.fuses_add(n, k):
        return None
    a, b = users[0].args
    other = b if a is node else a
    if other is node or not isinstance(other, fx.Node) or other not in em.values:
        return None
    t = em.values[other]
    if t.layout != "nhwc" or t.shape != em.shape_of(node) or t.signed != add.output_qparams.qtype.signed:
        return None
    if add.mode != "fp32" and not all(0 <= int(v) < 2**31 for v in add.m0.tolist()):
        return None
    return users[0], add, t

def _add_literal(em, node: fx.Node, mod: QConv, add_node: fx.Node, add: QAdd, other: QTensor,
                 ldr: int) -> str:
    """The qc_rt_add_params C literal: the convolution's output is the addend in its own position."""
    own = 0 if add_node.args[0] is node else 1
    signed = add.output_qparams.qtype.signed
    za = stored(mod.output_qparams.zero_point_int(), mod.output_qparams.qtype.signed)
    mult, m0 = add.multipliers.tolist(), [int(v) for v in add.m0.tolist()]
    mode = c_requant_mode(add.mode)
    zo = stored(add.output_qparams.zero_point_int(), signed)
    return (f"&(qc_rt_add_params){{{em.ptr(other)}, {ldr}, {mode}, {za}, {other.zp}, {zo}, "
            f"{stored(add.qmin, signed)}, {stored(add.qmax, signed)}, {add.shift}, {c_float(mult[own])}, "
            f"{c_float(mult[1 - own])}, INT64_C({m0[own]}), INT64_C({m0[1 - own]})}}")


def space_to_depth_plan(mod: QConv, cin: int, out_shape: tuple):
    """(s, kernel rows, kernel columns, h, w of the space-to-depth image) of a thin strided
    convolution that can run as stride 1 over s*s*cin channels after space-to-depth (an RGB
    stem), else None."""
    (sh, sw), (dh, dw) = pair(mod.stride), pair(mod.dilation)
    o, cg, kh, kw = mod.weight.shape
    depthwise = cg == 1 and o // mod.groups == 1        # lowered by qc_rt_depthwise instead
    if not (mod.groups == 1 and not depthwise and sh == sw > 1 and (dh, dw) == (1, 1) and kh > sh and kw > sw
            and cin * sh * sw <= SPACE_TO_DEPTH_MAX_CHANNELS):
        return None
    kqh, kqw = -(-kh // sh), -(-kw // sh)
    return sh, kqh, kqw, out_shape[2] - 1 + kqh, out_shape[3] - 1 + kqw


def lower_conv1d(em, node, mod: QConv) -> None:
    """QConv dims=1 as the conv2d path with H = 1: [N, C, L] (torch order) is converted to
    NHWC [N, 1, L, C], convolved by lower_conv with a [O, Cg, 1, K] kernel, and the
    NHWC result converted back to [N, O, L'] (no copy where C or L is 1: the orders coincide)."""
    x = em.as_layout(em.value(node.args[0], node), "plain")
    out_shape = em.shape_of(node)
    n, (c, length) = (x.shape[0] if len(x.shape) == 3 else 1), x.shape[-2:]
    o, l_out = out_shape[-2:]
    x4 = QTensor((n, c, 1, length), "nhwc", x.zp, x.signed, x.qparams, x.buffer)
    if not x4.same_bytes_as("plain"):
        x4.buffer = em.plan.new_buffer(x.numel)
        em.add_step(f"{node.name}: conv1d input to NHWC",
                    [f"qc_rt_nchw_to_nhwc({em.ptr(x)}, {em.ptr(x4)}, {n}, {c}, {length});"], reads=[x], writes=[x4])
    conv2d = QConv(2, mod.weight.unsqueeze(2), mod.weight_qparams, mod.bias, mod.input_qparams[0],
                   mod.output_qparams, mod.requant, (1, _one(mod.stride)), (0, _one(mod.padding)),
                   (1, _one(mod.dilation)), mod.groups, mod.source_layer)
    lower_conv(em, node, conv2d, x=x4, shape=(n, o, 1, l_out))
    y4 = em.values[node]
    y = QTensor(out_shape, "plain", y4.zp, y4.signed, y4.qparams, y4.buffer)
    if not y4.same_bytes_as("plain"):
        y.buffer = em.plan.new_buffer(y4.numel)
        em.add_step(f"{node.name}: conv1d output to [N, C, L]",
                    [f"qc_rt_nhwc_to_nchw({em.ptr(y4)}, {em.ptr(y)}, {n}, {o}, {l_out});"], reads=[y4], writes=[y])
    em.values[node] = y


def _one(v) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


INTEGER_LOWERINGS = {QConv: lower_conv, QLinear: lower_linear}
OP_LOWERINGS: dict = {}
