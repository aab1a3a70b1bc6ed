/* qcompiler C runtime: the transformer kernels (conventions in qc_runtime.h). */
#ifndef QC_RT_TRANSFORMER_H
#define QC_RT_TRANSFORMER_H

#include "qc_runtime.h"

/* QMatMul, step 1: the b matrices centred and transposed, bt[i][j][kk] = b_i(kk, j) - zb as
 * int16, for i < nb; element (kk, j) of matrix i is at b + i * (k * n) + kk * sk + j * sn
 * (sk = n, sn = 1: row-major; sk = 1, sn = k: b is the transpose of a row-major [n, k]) */
QC_RT_EXPORT void qc_rt_matmul_pack_b(const uint8_t *b, int16_t *bt, int64_t nb, int64_t k, int64_t n,
                                      int64_t sk, int64_t sn, int32_t zb, int threads);

/* QMatMul, step 2: y[p] = requant(sum_kk (a_{ai[p]}(i, kk) - za) * bt_{bi[p]}[j][kk]) for the
 * batch p < batch, i < m, j < n; a matrices row-major [m, k] (a + ai[p] * m * k), y [batch, m, n].
 * Exact int32 accumulation (the emitter proved K * max|a - za| * max|b - zb| < 2^31);
 * rq holds one multiplier repeated at least min(n, 256) times (per-tensor requantization). */
QC_RT_EXPORT void qc_rt_matmul(const uint8_t *a, const int16_t *bt, uint8_t *y, int64_t batch, int64_t m,
                               int64_t k, int64_t n, const int32_t *ai, const int32_t *bi, int32_t za,
                               const qc_rq *rq, int threads);

/* QSoftmax along an axis of [outer, len, inner] (element (o, l, i) at (o * len + l) * inner + i):
 * d = max - q, e = lut[d], S = sum e (int64),
 * q = clamp(zo + floor((e * r + (S << (m - 1))) / (S << m)), qmin, qmax); stored domain */
QC_RT_EXPORT void qc_rt_softmax(const uint8_t *x, uint8_t *y, int64_t outer, int64_t len, int64_t inner,
                                const int64_t *lut, int64_t r, int32_t m, int32_t zo, int32_t qmin,
                                int32_t qmax, int threads);

/* QLayerNorm over rows of n (n <= 2^18): delta = q - zx, S1 = sum delta, S2 = sum delta^2,
 * V = n S2 - S1^2, T = n delta - S1; inv = 1 / sqrtf((float)V + eps_q);
 * v = ((float)T * inv) * g[j] + b[j]; q = clamp(round_half_even(v) + zo, qmin, qmax), NaN -> qmin.
 * Every float operation rounded once (-ffp-contract=off) */
QC_RT_EXPORT void qc_rt_layer_norm(const uint8_t *x, uint8_t *y, int64_t rows, int64_t n, int32_t zx,
                                   float eps_q, const float *g, const float *b, int32_t zo, int32_t qmin,
                                   int32_t qmax, int threads);

#endif
