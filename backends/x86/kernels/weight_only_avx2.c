/* AVX2 + FMA (+ F16C) kernels of qc_x86_weight_only.h, in their own target region (the runtime
 * around them may be baseline x86-64: the entry checks the CPU before calling in).
 *
 * Accumulation: explicit FMAs (_mm256_fmadd_ps; the build's -ffp-contract=off only stops the
 * compiler from fusing on its own). Each output is a float32 sum in this kernel's own order,
 * so it differs from the exactly rounded reference by at most a rounding per term and step
 * (the bound tests/test_x86_weight_only.py checks, with its argument):
 *   GEMV (m <= 8, decode): per scale group, g = sum over the group of x * value (FMA chain),
 *       then acc = fma(g, scale, acc); y = acc + bias. The scale multiplies the group's sum
 *       rather than each weight: one rounding less per weight than dequantizing first.
 *   prefill (and compute="bfloat16"): the weights are dequantized exactly as the reference does
 *       (value * scale, one multiply; rounded to bfloat16 where asked) into a panel, then a
 *       6 x 16 register tile runs an FMA chain along K per output; y = acc + bias.
 *   half: products of two halves are exact in float32; one FMA chain along K per output. */
#include <immintrin.h>

#include "weight_only_common.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

#define QC_WO_INLINE static inline __attribute__((always_inline))

/* the values (before the scale) of code i (0..7) of the 8 columns of one packed block: w4 is
 * the block's 8 words (4-bit formats), zp the columns' zero points (asymmetric int4), tlo / thi
 * the NF4 levels 0-7 and 8-15 */
QC_WO_INLINE __m256 qc_wo_avx2_value(const int fmt, const uint8_t *block, const __m256i w4, const int i,
                                     const __m256i zp, const __m256 tlo, const __m256 thi)
{
    if (fmt == QC_WO_INT8)
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(block + QC_WO_NR * i))));
    if (fmt == QC_WO_INT4)    /* the signed nibble at the top, shifted back down with its sign */
        return _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(w4, 28 - 4 * i), 28));
    if (fmt == QC_WO_INT4_ASYM)
        return _mm256_cvtepi32_ps(_mm256_sub_epi32(
            _mm256_and_si256(_mm256_srli_epi32(w4, 4 * i), _mm256_set1_epi32(15)), zp));
    /* NF4: vpermps picks by the low 3 bits of the lane (levels 0-7 or 8-15), the nibble's bit 3
     * (moved to the sign bit) chooses between the two */
    const __m256i idx = _mm256_srli_epi32(w4, 4 * i);
    const __m256 lo = _mm256_permutevar8x32_ps(tlo, idx), hi = _mm256_permutevar8x32_ps(thi, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(w4, 28 - 4 * i)));
}

QC_WO_INLINE __m256i qc_wo_avx2_zero_points(const qc_wo_linear_weights *w, const int fmt, int64_t p, int64_t groups,
                                            int64_t g)
{
    if (fmt != QC_WO_INT4_ASYM) return _mm256_setzero_si256();
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(w->zero_points + (p * groups + g) * QC_WO_NR)));
}

/* float32 -> bfloat16 -> float32, ties to even, NaN -> 0x7FC0 (qc_wo_round_bf16's vector form) */
QC_WO_INLINE __m256 qc_wo_avx2_round_bf16(__m256 v)
{
    const __m256i u = _mm256_castps_si256(v);
    const __m256i bias = _mm256_add_epi32(_mm256_set1_epi32(0x7FFF),
                                          _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1)));
    const __m256 r = _mm256_castsi256_ps(_mm256_and_si256(_mm256_add_epi32(u, bias),
                                                          _mm256_set1_epi32((int)0xFFFF0000u)));
    return _mm256_blendv_ps(r, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000)), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
}

/* float32 -> float16 -> float32, ties to even (F16C's immediate rounding, not MXCSR's) */
QC_WO_INLINE __m256 qc_wo_avx2_round_fp16(__m256 v)
{
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/* 8 halves (bfloat16: the top 16 bits of a float32; float16: F16C) -> float32, exact */
QC_WO_INLINE __m256 qc_wo_avx2_half8(const uint16_t *h, const int type)
{
    const __m128i v = _mm_loadu_si128((const __m128i *)h);
    if (type == QC_HALF_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
    return _mm256_cvtph_ps(v);
}

/* x rounded to bfloat16 (weight-only compute="bfloat16") or to the half type (half) */
static void qc_wo_avx2_round_rows(const float *x, float *xr, int64_t count, int32_t type)
{
    int64_t i = 0;
    if (type == QC_HALF_BF16)
        for (; i + 8 <= count; i += 8) _mm256_storeu_ps(xr + i, qc_wo_avx2_round_bf16(_mm256_loadu_ps(x + i)));
    else
        for (; i + 8 <= count; i += 8) _mm256_storeu_ps(xr + i, qc_wo_avx2_round_fp16(_mm256_loadu_ps(x + i)));
    for (; i < count; i++) xr[i] = qc_wo_round_half(x[i], type);
}

/* y[r, col..col+8) = acc (+ bias) for the valid columns of a panel */
QC_WO_INLINE void qc_wo_avx2_store(const qc_wo_job *j, int64_t r, int64_t col, __m256 acc)
{
    float *yr = j->y + r * j->n + col;
    if (col + QC_WO_NR <= j->n) {
        _mm256_storeu_ps(yr, j->bias ? _mm256_add_ps(acc, _mm256_loadu_ps(j->bias + col)) : acc);
        return;
    }
    float t[QC_WO_NR];
    _mm256_storeu_ps(t, acc);
    for (int64_t c = 0; c < j->n - col; c++) yr[c] = j->bias ? t[c] + j->bias[col + c] : t[c];
}

/* ---------------------------------------------------------------------------------- */
/* weight-only GEMV (m <= 8): the packed codes streamed once, every row per block         */
/* ---------------------------------------------------------------------------------- */

/* panels [p0, p0 + P) for all M rows */
QC_WO_INLINE void qc_wo_avx2_gemv_panels(const qc_wo_job *j, const int64_t p0, const int M, const int P, const int fmt)
{
    const qc_wo_linear_weights *w = j->w;
    const int64_t k = j->k, k8 = j->k8, groups = j->groups, gb = w->group_blocks, kfull = k / QC_WO_KB;
    const int64_t bb = fmt == QC_WO_INT8 ? QC_WO_NR * QC_WO_KB : QC_WO_NR * 4;
    const uint8_t *codes = (const uint8_t *)w->codes;
    const __m256 tlo = fmt == QC_WO_NF4 ? _mm256_loadu_ps(w->nf4) : _mm256_setzero_ps();
    const __m256 thi = fmt == QC_WO_NF4 ? _mm256_loadu_ps(w->nf4 + 8) : _mm256_setzero_ps();
    /* a partial last block of k reads its x from zero-padded copies (never past a row's end) */
    float xtail[QC_WO_GEMV_MAX_ROWS][QC_WO_KB];
    if (kfull < k8)
        for (int mm = 0; mm < M; mm++)
            for (int i = 0; i < QC_WO_KB; i++)
                xtail[mm][i] = kfull * QC_WO_KB + i < k ? j->x[mm * k + kfull * QC_WO_KB + i] : 0.0f;
    __m256 acc[QC_WO_GEMV_MAX_ROWS][4];
    for (int mm = 0; mm < M; mm++)
        for (int p = 0; p < P; p++) acc[mm][p] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        const int64_t kb0 = g * gb, kb1 = kb0 + gb < k8 ? kb0 + gb : k8;
        __m256 gacc[QC_WO_GEMV_MAX_ROWS][4];
        __m256i zp[4];
        for (int p = 0; p < P; p++) zp[p] = qc_wo_avx2_zero_points(w, fmt, p0 + p, groups, g);
        for (int mm = 0; mm < M; mm++)
            for (int p = 0; p < P; p++) gacc[mm][p] = _mm256_setzero_ps();
        for (int64_t kb = kb0; kb < kb1; kb++) {
            const uint8_t *blk[4];
            __m256i w4[4];
            for (int p = 0; p < P; p++) {
                blk[p] = codes + ((p0 + p) * k8 + kb) * bb;
                w4[p] = fmt == QC_WO_INT8 ? _mm256_setzero_si256() : _mm256_loadu_si256((const __m256i *)blk[p]);
            }
            const float *xk[QC_WO_GEMV_MAX_ROWS];
            for (int mm = 0; mm < M; mm++) xk[mm] = kb < kfull ? j->x + mm * k + kb * QC_WO_KB : xtail[mm];
#pragma GCC unroll 8
            for (int i = 0; i < QC_WO_KB; i++) {
                __m256 v[4];
                for (int p = 0; p < P; p++) v[p] = qc_wo_avx2_value(fmt, blk[p], w4[p], i, zp[p], tlo, thi);
                for (int mm = 0; mm < M; mm++) {
                    const __m256 xb = _mm256_broadcast_ss(xk[mm] + i);
                    for (int p = 0; p < P; p++) gacc[mm][p] = _mm256_fmadd_ps(xb, v[p], gacc[mm][p]);
                }
            }
        }
        for (int p = 0; p < P; p++) {
            const __m256 s = _mm256_loadu_ps(w->scales + ((p0 + p) * groups + g) * QC_WO_NR);
            for (int mm = 0; mm < M; mm++) acc[mm][p] = _mm256_fmadd_ps(gacc[mm][p], s, acc[mm][p]);
        }
    }
    for (int p = 0; p < P; p++)
        for (int mm = 0; mm < M; mm++) qc_wo_avx2_store(j, mm, (p0 + p) * QC_WO_NR, acc[mm][p]);
}

/* panels of a GEMV chunk, P at a time: enough independent FMA chains without spilling */
#ifndef QC_WO_GEMV_PANELS_P
#define QC_WO_GEMV_PANELS_P(M) ((M) == 1 ? 4 : (M) <= 4 ? 2 : 1)
#endif
/* name(j, p0, p1): panels [p0, p1) for M rows, QC_WO_GEMV_PANELS_P(M) at a time through
 * panels_fn(j, p, M, count, kind) (the GEMV of a weight format, or of a half type) */
#define QC_WO_PANELS_FN(name, panels_fn, kind, M)                                                        \
    static void name(const qc_wo_job *j, int64_t p0, int64_t p1)                                         \
    {                                                                                                    \
        int64_t p = p0;                                                                                  \
        for (; p + QC_WO_GEMV_PANELS_P(M) <= p1; p += QC_WO_GEMV_PANELS_P(M))                            \
            panels_fn(j, p, M, QC_WO_GEMV_PANELS_P(M), kind);                                            \
        for (; p < p1; p++) panels_fn(j, p, M, 1, kind);                                                 \
    }
#define QC_WO_GEMV_FN(fmt, M) QC_WO_PANELS_FN(qc_wo_avx2_gemv_##fmt##_##M, qc_wo_avx2_gemv_panels, fmt, M)
#define QC_WO_GEMV_FORMAT(fmt)                                                                           \
    QC_WO_GEMV_FN(fmt, 1) QC_WO_GEMV_FN(fmt, 2) QC_WO_GEMV_FN(fmt, 3) QC_WO_GEMV_FN(fmt, 4)              \
    QC_WO_GEMV_FN(fmt, 5) QC_WO_GEMV_FN(fmt, 6) QC_WO_GEMV_FN(fmt, 7) QC_WO_GEMV_FN(fmt, 8)
QC_WO_GEMV_FORMAT(QC_WO_INT8)
QC_WO_GEMV_FORMAT(QC_WO_INT4)
QC_WO_GEMV_FORMAT(QC_WO_INT4_ASYM)
QC_WO_GEMV_FORMAT(QC_WO_NF4)

typedef void (*qc_wo_gemv_fn)(const qc_wo_job *, int64_t, int64_t);
#define QC_WO_GEMV_ROW(fmt)                                                                              \
    {qc_wo_avx2_gemv_##fmt##_1, qc_wo_avx2_gemv_##fmt##_2, qc_wo_avx2_gemv_##fmt##_3,                   \
     qc_wo_avx2_gemv_##fmt##_4, qc_wo_avx2_gemv_##fmt##_5, qc_wo_avx2_gemv_##fmt##_6,                   \
     qc_wo_avx2_gemv_##fmt##_7, qc_wo_avx2_gemv_##fmt##_8}
static const qc_wo_gemv_fn qc_wo_avx2_gemv_table[4][QC_WO_GEMV_MAX_ROWS] = {
    QC_WO_GEMV_ROW(QC_WO_INT8), QC_WO_GEMV_ROW(QC_WO_INT4), QC_WO_GEMV_ROW(QC_WO_INT4_ASYM), QC_WO_GEMV_ROW(QC_WO_NF4)};

static void qc_wo_avx2_gemv_chunk(const void *ctx, int64_t chunk, int slot)
{
    const qc_wo_job *j = (const qc_wo_job *)ctx;
    const int64_t panels = (j->n + QC_WO_NR - 1) / QC_WO_NR, p0 = chunk * QC_WO_GEMV_PANELS;
    const int64_t p1 = p0 + QC_WO_GEMV_PANELS < panels ? p0 + QC_WO_GEMV_PANELS : panels;
    (void)slot;
    qc_wo_avx2_gemv_table[j->w->format - 1][j->m - 1](j, p0, p1);
}

/* ---------------------------------------------------------------------------------- */
/* prefill: a dequantized 16-column panel in L1, a 6 x 16 register tile over it           */
/* ---------------------------------------------------------------------------------- */

/* pb[(kb - kb0) * 8 + i][16] = the exact dequantized weights of 16-column panel q, k blocks [kb0, kb1) */
QC_WO_INLINE void qc_wo_avx2_dequantize_panel(const qc_wo_job *j, int64_t q, int64_t kb0, int64_t kb1,
                                              float *restrict pb, const int fmt)
{
    const qc_wo_linear_weights *w = j->w;
    const int64_t k8 = j->k8, groups = j->groups, gb = w->group_blocks;
    const int64_t bb = fmt == QC_WO_INT8 ? QC_WO_NR * QC_WO_KB : QC_WO_NR * 4;
    const __m256 tlo = fmt == QC_WO_NF4 ? _mm256_loadu_ps(w->nf4) : _mm256_setzero_ps();
    const __m256 thi = fmt == QC_WO_NF4 ? _mm256_loadu_ps(w->nf4 + 8) : _mm256_setzero_ps();
    for (int h = 0; h < 2; h++) {
        const int64_t p = 2 * q + h;
        for (int64_t kb = kb0; kb < kb1; kb++) {
            const int64_t g = kb / gb;
            const __m256 s = _mm256_loadu_ps(w->scales + (p * groups + g) * QC_WO_NR);
            const __m256i zp = qc_wo_avx2_zero_points(w, fmt, p, groups, g);
            const uint8_t *blk = (const uint8_t *)w->codes + (p * k8 + kb) * bb;
            const __m256i w4 = fmt == QC_WO_INT8 ? _mm256_setzero_si256() : _mm256_loadu_si256((const __m256i *)blk);
            float *dst = pb + (kb - kb0) * QC_WO_KB * 16 + QC_WO_NR * h;
#pragma GCC unroll 8
            for (int i = 0; i < QC_WO_KB; i++) {
                __m256 v = _mm256_mul_ps(qc_wo_avx2_value(fmt, blk, w4, i, zp, tlo, thi), s);
                if (j->compute_bf16) v = qc_wo_avx2_round_bf16(v);
                _mm256_store_ps(dst + i * 16, v);
            }
        }
    }
}

/* the same for half weights: pb[kk - k0][16], k in [k0, k1) */
QC_WO_INLINE void qc_wo_avx2_half_panel(const qc_wo_job *j, int64_t q, int64_t k0, int64_t k1, float *restrict pb,
                                        const int type)
{
    for (int h = 0; h < 2; h++) {
        const uint16_t *src = j->hw + ((2 * q + h) * j->k + k0) * QC_WO_NR;
        for (int64_t kk = 0; kk < k1 - k0; kk++)
            _mm256_store_ps(pb + kk * 16 + QC_WO_NR * h, qc_wo_avx2_half8(src + kk * QC_WO_NR, type));
    }
}

/* c[MR][16] (+)= a[MR rows of stride lda][kc] . pb[kc][16]: one FMA chain along k per output */
QC_WO_INLINE void qc_wo_avx2_tile(const float *a, int64_t lda, const float *pb, int64_t kc, float *c, int first,
                                  const int MR)
{
    __m256 c0[6], c1[6];
    for (int r = 0; r < MR; r++) {
        c0[r] = first ? _mm256_setzero_ps() : _mm256_load_ps(c + r * 16);
        c1[r] = first ? _mm256_setzero_ps() : _mm256_load_ps(c + r * 16 + 8);
    }
    for (int64_t kk = 0; kk < kc; kk++) {
        const __m256 b0 = _mm256_load_ps(pb + kk * 16), b1 = _mm256_load_ps(pb + kk * 16 + 8);
        for (int r = 0; r < MR; r++) {
            const __m256 ar = _mm256_broadcast_ss(a + r * lda + kk);
            c0[r] = _mm256_fmadd_ps(ar, b0, c0[r]);
            c1[r] = _mm256_fmadd_ps(ar, b1, c1[r]);
        }
    }
    for (int r = 0; r < MR; r++) {
        _mm256_store_ps(c + r * 16, c0[r]);
        _mm256_store_ps(c + r * 16 + 8, c1[r]);
    }
}

static void qc_wo_avx2_tiles(const float *a, int64_t lda, const float *pb, int64_t kc, float *c, int first, int64_t rows)
{
    int64_t r = 0;
    for (; r + 6 <= rows; r += 6) qc_wo_avx2_tile(a + r * lda, lda, pb, kc, c + r * 16, first, 6);
    switch (rows - r) {
    case 5: qc_wo_avx2_tile(a + r * lda, lda, pb, kc, c + r * 16, first, 5); break;
    case 4: qc_wo_avx2_tile(a + r * lda, lda, pb, kc, c + r * 16, first, 4); break;
    case 3: qc_wo_avx2_tile(a + r * lda, lda, pb, kc, c + r * 16, first, 3); break;
    case 2: qc_wo_avx2_tile(a + r * lda, lda, pb, kc, c + r * 16, first, 2); break;
    case 1: qc_wo_avx2_tile(a + r * lda, lda, pb, kc, c + r * 16, first, 1); break;
    default: break;
    }
}

/* one chunk of the prefill: rows [m0, m0 + QC_WO_MB) x 16-column panel q, K in blocks of
 * QC_HALF_KC (= QC_WO_KCB blocks of 8); the running sums stay in cb between K blocks (stored and
 * reloaded as they are: no rounding) */
static void qc_wo_avx2_prefill_chunk(const void *ctx, int64_t chunk, int slot)
{
    const qc_wo_job *j = (const qc_wo_job *)ctx;
    const int64_t q = chunk / j->m_blocks, m0 = (chunk % j->m_blocks) * QC_WO_MB;
    const int64_t rows = j->m - m0 < QC_WO_MB ? j->m - m0 : QC_WO_MB, k = j->k;
    float pb[QC_HALF_KC * 16] __attribute__((aligned(32)));
    float cb[QC_WO_MB * 16] __attribute__((aligned(32)));
    (void)slot;
    for (int64_t k0 = 0; k0 < k; k0 += QC_HALF_KC) {
        const int64_t k1 = k0 + QC_HALF_KC < k ? k0 + QC_HALF_KC : k;
        if (j->w == NULL) {
            if (j->half_type == QC_HALF_BF16) qc_wo_avx2_half_panel(j, q, k0, k1, pb, QC_HALF_BF16);
            else qc_wo_avx2_half_panel(j, q, k0, k1, pb, QC_HALF_FP16);
        } else {
            const int64_t kb0 = k0 / QC_WO_KB, kb1 = (k1 + QC_WO_KB - 1) / QC_WO_KB;
            switch (j->w->format) {
            case QC_WO_INT8: qc_wo_avx2_dequantize_panel(j, q, kb0, kb1, pb, QC_WO_INT8); break;
            case QC_WO_INT4: qc_wo_avx2_dequantize_panel(j, q, kb0, kb1, pb, QC_WO_INT4); break;
            case QC_WO_INT4_ASYM: qc_wo_avx2_dequantize_panel(j, q, kb0, kb1, pb, QC_WO_INT4_ASYM); break;
            default: qc_wo_avx2_dequantize_panel(j, q, kb0, kb1, pb, QC_WO_NF4); break;
            }
        }
        qc_wo_avx2_tiles(j->x + m0 * k + k0, k, pb, k1 - k0, cb, k0 == 0, rows);
    }
    for (int64_t r = 0; r < rows; r++)
        for (int h = 0; h < 2; h++)
            if ((2 * q + h) * QC_WO_NR < j->n)
                qc_wo_avx2_store(j, m0 + r, (2 * q + h) * QC_WO_NR, _mm256_load_ps(cb + r * 16 + QC_WO_NR * h));
}

/* ---------------------------------------------------------------------------------- */
/* half-precision GEMV (m <= 8)                                                           */
/* ---------------------------------------------------------------------------------- */

QC_WO_INLINE void qc_wo_avx2_half_gemv_panels(const qc_wo_job *j, const int64_t p0, const int M, const int P,
                                              const int type)
{
    const int64_t k = j->k;
    __m256 acc[QC_WO_GEMV_MAX_ROWS][4];
    for (int mm = 0; mm < M; mm++)
        for (int p = 0; p < P; p++) acc[mm][p] = _mm256_setzero_ps();
    for (int64_t kk = 0; kk < k; kk++) {
        __m256 v[4];
        for (int p = 0; p < P; p++) v[p] = qc_wo_avx2_half8(j->hw + ((p0 + p) * k + kk) * QC_WO_NR, type);
        for (int mm = 0; mm < M; mm++) {
            const __m256 xb = _mm256_broadcast_ss(j->x + mm * k + kk);
            for (int p = 0; p < P; p++) acc[mm][p] = _mm256_fmadd_ps(xb, v[p], acc[mm][p]);
        }
    }
    for (int p = 0; p < P; p++)
        for (int mm = 0; mm < M; mm++) qc_wo_avx2_store(j, mm, (p0 + p) * QC_WO_NR, acc[mm][p]);
}

#define QC_WO_HALF_FN(type, M) QC_WO_PANELS_FN(qc_wo_avx2_half_##type##_##M, qc_wo_avx2_half_gemv_panels, type, M)
#define QC_WO_HALF_TYPE(type)                                                                            \
    QC_WO_HALF_FN(type, 1) QC_WO_HALF_FN(type, 2) QC_WO_HALF_FN(type, 3) QC_WO_HALF_FN(type, 4)          \
    QC_WO_HALF_FN(type, 5) QC_WO_HALF_FN(type, 6) QC_WO_HALF_FN(type, 7) QC_WO_HALF_FN(type, 8)
QC_WO_HALF_TYPE(QC_HALF_BF16)
QC_WO_HALF_TYPE(QC_HALF_FP16)

#define QC_WO_HALF_ROW(type)                                                                             \
    {qc_wo_avx2_half_##type##_1, qc_wo_avx2_half_##type##_2, qc_wo_avx2_half_##type##_3,                \
     qc_wo_avx2_half_##type##_4, qc_wo_avx2_half_##type##_5, qc_wo_avx2_half_##type##_6,                \
     qc_wo_avx2_half_##type##_7, qc_wo_avx2_half_##type##_8}
static const qc_wo_gemv_fn qc_wo_avx2_half_table[2][QC_WO_GEMV_MAX_ROWS] = {
    QC_WO_HALF_ROW(QC_HALF_BF16), QC_WO_HALF_ROW(QC_HALF_FP16)};

static void qc_wo_avx2_half_gemv_chunk(const void *ctx, int64_t chunk, int slot)
{
    const qc_wo_job *j = (const qc_wo_job *)ctx;
    const int64_t panels = (j->n + QC_WO_NR - 1) / QC_WO_NR, p0 = chunk * QC_WO_GEMV_PANELS;
    const int64_t p1 = p0 + QC_WO_GEMV_PANELS < panels ? p0 + QC_WO_GEMV_PANELS : panels;
    (void)slot;
    qc_wo_avx2_half_table[j->half_type - 1][j->m - 1](j, p0, p1);
}

#pragma GCC pop_options
