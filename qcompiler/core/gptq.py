"""GPTQ rounding for weight-only quantization (Frantar et al., 2022, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers").

Round-to-nearest picks each weight's code on its own. A Linear's output error on its inputs X is
‖X(W − Ŵ)ᵀ‖², a quadratic form in each output row's error with H = XᵀX, so the codes can do
better together: quantize the K columns in order, and after each column spread its rounding error
over the columns not yet quantized, in the proportions that minimize that quadratic form given
the columns already fixed. With U the upper Cholesky factor of H⁻¹, column j's error
e = (w_j − ŵ_j) / U[j, j] is compensated by  W[:, j+1:] −= e · U[j, j+1:]  (the Optimal Brain
Surgeon update, with the inverse Hessian of the remaining columns read off U's rows instead of
recomputed). Updates within a block of columns are applied right away to that block only, and to
the columns after it once per block (the "lazy batch" form: the same arithmetic, fewer passes
over W).

Only the choice of codes changes: scales, zero points and codes are stored exactly as
``QuantizedWeight.quantize`` stores them, and dequantize to ŵ as it does. Each group's scale
(and zero point) is ``fit_groups``'s rule applied to the group's weights as they stand when its
first column comes up, i.e. with the error pushed onto them so far; each column's code is then
the nearest level for that scale, as in ``quantize``.

Damping: H + λ·I with λ = ``damp`` · mean(diag H) keeps the Cholesky factorization well
conditioned when inputs are collinear or few. Dead inputs (H[i, i] = 0: channel i was zero on
every calibration token) get H[i, i] = 1; their row and column of H are zero, so they neither
receive nor pass on error, and their weights are rounded to nearest (kept, not zeroed as GPTQ's
reference code does: an input silent in calibration may still carry signal later).

``act_order``: process columns by decreasing H[i, i] (the most active inputs first, while the
most columns remain to absorb their error). Groups stay the stored ones (consecutive K), so
with it every group's scale is fixed up front from the original weights ("static groups").
All arithmetic on H and W is float64 and deterministic.
"""
from __future__ import annotations

from typing import Optional

import torch

from .weight_only_ops import QuantizedWeight, check_format, fit_groups, group_codes, group_dequantized


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, dtype: str, group_size: Optional[int],
                  symmetric: bool = True, damp: float = 0.01, block: int = 128,
                  act_order: bool = False) -> QuantizedWeight:
    """A [N, K] weight quantized like ``QuantizedWeight.quantize(weight, dtype, group_size,
    symmetric)``, its codes chosen by GPTQ for the inputs whose H = Σ xᵀx (float, [K, K]) is given."""
    w32 = weight.detach().to(torch.float32)
    n, k = w32.shape
    g = check_format(dtype, symmetric, k, group_size)
    if hessian.shape != (k, k):
        raise ValueError(f"the Hessian of a weight with K={k} inputs is [{k}, {k}], got {list(hessian.shape)}")
    if not torch.isfinite(hessian).all():
        raise ValueError("the Hessian has non-finite entries (inf or NaN inputs in the calibration data?)")
    if damp < 0 or block < 1:
        raise ValueError(f"damp must be >= 0 and block >= 1, got damp={damp}, block={block}")

    h = hessian.detach().to(torch.float64).clone()
    diag = h.diagonal()
    diag[diag == 0] = 1.0                                   # dead inputs: decoupled, rounded to nearest
    diag += damp * float(diag.mean())
    order = torch.argsort(diag, descending=True, stable=True) if act_order else torch.arange(k)
    u = _inverse_cholesky_upper(h[order][:, order])
    w = w32.to(torch.float64)[:, order]

    n_groups = k // g
    scales = torch.zeros(n, n_groups, dtype=torch.float32)
    zps = None if symmetric or dtype != "int4" else torch.zeros(n, n_groups, dtype=torch.int64)
    if act_order:
        scales, zps, _ = fit_groups(w32.reshape(n, n_groups, g), dtype, symmetric)
    group_of = order // g
    codes = torch.empty(n, k, dtype=torch.int64)
    # a group never straddles two blocks, so its scale is fitted to weights that have every update
    step = block if g == k else g * max(1, block // g)
    for i1 in range(0, k, step):
        i2 = min(i1 + step, k)
        wb, errs, ub = w[:, i1:i2].clone(), torch.empty(n, i2 - i1, dtype=torch.float64), u[i1:i2, i1:i2]
        for j in range(i2 - i1):
            col, grp = i1 + j, int(group_of[i1 + j])
            if not act_order and col % g == 0:
                span = torch.cat([wb[:, j:], w[:, i2:]], dim=1)[:, :g].to(torch.float32)
                s, z, _ = fit_groups(span[:, None, :], dtype, symmetric)
                scales[:, grp] = s[:, 0]
                if zps is not None:
                    zps[:, grp] = z[:, 0]
            s = scales[:, grp:grp + 1]
            z = None if zps is None else zps[:, grp:grp + 1]
            c = group_codes(wb[:, j].to(torch.float32)[:, None, None], dtype, s, z)
            q = group_dequantized(c, dtype, s, z)[:, 0, 0].to(torch.float64)
            codes[:, col] = c[:, 0, 0]
            e = (wb[:, j] - q) / ub[j, j]
            wb[:, j + 1:] -= e[:, None] * ub[j, j + 1:][None, :]
            errs[:, j] = e
        w[:, i2:] -= errs @ u[i1:i2, i2:]
    stored = torch.empty_like(codes)
    stored[:, order] = codes
    return QuantizedWeight.from_codes(stored, scales, zps, dtype, g)


def _inverse_cholesky_upper(h: torch.Tensor) -> torch.Tensor:
    """U upper triangular with UᵀU = H⁻¹, for a symmetric positive definite H (float64)."""
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info) == 0:                      # H⁻¹ = L⁻ᵀL⁻¹ (two triangular solves beat cholesky_inverse)
        lower_inv = torch.linalg.solve_triangular(lower, torch.eye(len(h), dtype=h.dtype), upper=False)
        upper, info = torch.linalg.cholesky_ex(lower_inv.t() @ lower_inv, upper=True)
    if int(info) != 0:
        raise ValueError("GPTQ: the inputs' Hessian XᵀX is not positive definite (collinear or too few "
                         "calibration inputs); use damp > 0 or more calibration data")
    return upper
