/* qcompiler C runtime: the transformer kernels (conventions in qc_runtime.h). */
#ifndef QC_RT_TRANSFORMER_H
#define QC_RT_TRANSFORMER_H

#include "qc_runtime.h"

/* columns of a packed-b panel (the matmul kernel's register block is 6 rows x this) */
#define QC_RT_MATMUL_NR 16
/* fraction bits of QSoftmax's per-row reciprocal (SOFTMAX_RECIP_BITS of transformer_ops.py) */
#define QC_RT_SOFTMAX_RECIP_BITS 31

/* QMatMul, step 1: the nb b matrices [k, n] centred and packed once into panels of
 * QC_RT_MATMUL_NR columns: bp[i][P][kk / 2][c][kk % 2] = b_i(kk, P * NR + c) - zb as int16,
 * zero past k and n, i.e. nb * ceil(n / NR) * (ceil(k / 2) * 2) * NR int16. Element (kk, j) of
 * matrix i is byte boff[i] + kk * sk + j * sn of b (any strided view: a transposed b is
 * read in place, sk = 1, sn = its row stride) */
QC_RT_EXPORT void qc_rt_matmul_pack_b(const uint8_t *b, const int64_t *boff, int16_t *bp, int64_t nb, int64_t k,
                                      int64_t n, int64_t sk, int64_t sn, int32_t zb, int threads);

/* QMatMul, step 2: y[p] = requant(sum_kk (a_p(i, kk) - za) * (b_{bi[p]}(kk, j) - zb)) for the
 * batch p < batch, i < m, j < n; element (i, kk) of a_p is byte aoff[p] + i * lda + kk * sak of
 * a (a strided view), bp from qc_rt_matmul_pack_b, y contiguous [batch, m, n].
 * Exact int32 accumulation (the emitter proved K * max|a - za| * max|b - zb| < 2^31);
 * rq holds one multiplier repeated at least min(n, 256) times (per-tensor requantization). */
QC_RT_EXPORT void qc_rt_matmul(const uint8_t *a, const int64_t *aoff, int64_t lda, int64_t sak, const int16_t *bp,
                               const int32_t *bi, uint8_t *y, int64_t batch, int64_t m, int64_t k, int64_t n,
                               int32_t za, const qc_rq *rq, int threads);

/* QSoftmax along an axis of [outer, len, inner] (element (o, l, i) at (o * len + l) * inner + i):
 * d = max - q, e = lut[d], S = sum e (int64), c = ((r << 31) + (S >> 1)) / S (one division a
 * row), q = clamp(zo + ((e * c + 2^(sh - 1)) >> sh), qmin, qmax); stored domain */
QC_RT_EXPORT void qc_rt_softmax(const uint8_t *x, uint8_t *y, int64_t outer, int64_t len, int64_t inner,
                                const int64_t *lut, int64_t r, int32_t sh, int32_t zo, int32_t qmin,
                                int32_t qmax, int threads);

/* QLayerNorm over rows of n (n <= 2^18): delta = q - zx, S1 = sum delta, S2 = sum delta^2,
 * V = n S2 - S1^2, T = n delta - S1; inv = 1 / sqrtf((float)V + eps_q);
 * v = ((float)T * inv) * g[j] + b[j]; q = clamp(round_half_even(v) + zo, qmin, qmax), NaN -> qmin.
 * Every float operation rounded once (-ffp-contract=off) */
QC_RT_EXPORT void qc_rt_layer_norm(const uint8_t *x, uint8_t *y, int64_t rows, int64_t n, int32_t zx,
                                   float eps_q, const float *g, const float *b, int32_t zo, int32_t qmin,
                                   int32_t qmax, int threads);

#endif
