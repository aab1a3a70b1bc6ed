/* qcompiler C runtime: the transformer kernels. Each kernel's comment names the integer op of
 * qcompiler/core it implements bit for bit (qcompiler/core/transformer_ops.py). Parallel loops:
 * QC_RT_PARALLEL_FOR / qc_rt_threads of qc_runtime.h. */
#include "qc_rt_transformer.h"

#include <math.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

/* ---------------------------------------------------------------------------------- */
/* QMatMul                                                                               */
/* ---------------------------------------------------------------------------------- */

/* Register blocking: a block of QC_TF_MM_MR rows times one panel of QC_RT_MATMUL_NR columns
 * is 12 ymm accumulators; one step of the inner loop takes a pair of depths (kk, kk + 1):
 * vpmaddwd of the broadcast pair (a(r, kk) - za, a(r, kk + 1) - za) with the panel's 16
 * column pairs adds a(r, kk) b(kk, j) + a(r, kk + 1) b(kk + 1, j) to column j's int32 lane.
 * Every product and partial sum is bounded by K * max|a - za| * max|b - zb| < 2^31 (the
 * emitter's proof), so int32 accumulation in any order is exact (and vpmaddwd's one
 * saturating case, (-2^15)^2 * 2, cannot arise from 9-bit operands). */
#define QC_TF_MM_MR 6
#define QC_TF_MM_NR QC_RT_MATMUL_NR
/* columns per requantization block (the emitter repeats a per-tensor multiplier this often) */
#define QC_TF_MM_COLS 256
/* depth pairs per block: the packed a block (MR x 256 pairs, 6 KiB) stays in L1 */
#define QC_TF_MM_KP 256

typedef struct {
    const uint8_t *b;
    const int64_t *boff;
    int16_t *bp;
    int64_t k, n, sk, sn, kp, panels;
    int32_t zb;
} qc_tf_pack_job;

/* chunk = i * panels + P: panel P of matrix i, [kp][NR][2] centred int16, zero past k and n */
static void qc_tf_pack_panel(const void *ctx, int64_t chunk, int slot)
{
    const qc_tf_pack_job *j = (const qc_tf_pack_job *)ctx;
    const int64_t i = chunk / j->panels, c0 = chunk % j->panels * QC_TF_MM_NR;
    const int64_t k = j->k, sk = j->sk, sn = j->sn;
    const int64_t nc = j->n - c0 < QC_TF_MM_NR ? j->n - c0 : QC_TF_MM_NR;
    const uint8_t *b = j->b + j->boff[i] + c0 * sn;
    int16_t *restrict dst = j->bp + chunk * j->kp * (2 * QC_TF_MM_NR);
    (void)slot;
    memset(dst, 0, (size_t)j->kp * 2 * QC_TF_MM_NR * sizeof(int16_t));
    for (int64_t kk = 0; kk < k; kk++) {
        int16_t *restrict row = dst + (kk >> 1) * (2 * QC_TF_MM_NR) + (kk & 1);
        const uint8_t *src = b + kk * sk;
        for (int64_t c = 0; c < nc; c++) row[2 * c] = (int16_t)((int32_t)src[c * sn] - j->zb);
    }
}

void qc_rt_matmul_pack_b(const uint8_t *b, const int64_t *boff, int16_t *bp, int64_t nb, int64_t k, int64_t n,
                         int64_t sk, int64_t sn, int32_t zb, int threads)
{
    const int64_t panels = (n + QC_TF_MM_NR - 1) / QC_TF_MM_NR;
    const qc_tf_pack_job job = {b, boff, bp, k, n, sk, sn, (k + 1) / 2, panels, zb};
    QC_RT_PARALLEL_FOR(qc_tf_pack_panel, &job, nb * panels, qc_rt_threads(threads, nb * k * n));
}

typedef struct {
    const uint8_t *a;
    const int64_t *aoff;
    int64_t lda, sak;
    const int16_t *bp;
    const int32_t *bi;
    uint8_t *y;
    int64_t m, k, n, kp, panels, row_blocks;
    int32_t za;
    const qc_rq *rq;
} qc_tf_matmul_job;

/* acc[r * ld + c] (+)= sum over nkp depth pairs p of ap[r * lda + 2p + {0, 1}] . bp[p][c][{0, 1}],
 * r < MR, c < NR (overwrite when first). Rows of a at a stride, as in the GEMM's AVX2 tile: gcc
 * then broadcasts each pair right before its products and keeps the 12 accumulators in
 * registers (from one contiguous [p][r] block it hoisted all six broadcasts and spilled) */
static inline __attribute__((always_inline)) void qc_tf_mm_kernel(const int16_t *restrict ap, int64_t lda,
                                                                   const int16_t *restrict bp, int64_t nkp,
                                                                   int32_t *restrict acc, int64_t ld, int first)
{
#if defined(__AVX2__)
    __m256i c[QC_TF_MM_MR][2];
    for (int r = 0; r < QC_TF_MM_MR; r++) {
        c[r][0] = first ? _mm256_setzero_si256() : _mm256_loadu_si256((const __m256i *)(acc + r * ld));
        c[r][1] = first ? _mm256_setzero_si256() : _mm256_loadu_si256((const __m256i *)(acc + r * ld + 8));
    }
    for (int64_t p = 0; p < nkp; p++) {
        const __m256i b0 = _mm256_loadu_si256((const __m256i *)bp);
        const __m256i b1 = _mm256_loadu_si256((const __m256i *)(bp + 16));
#pragma GCC unroll 6
        for (int r = 0; r < QC_TF_MM_MR; r++) {
            int32_t pair;
            memcpy(&pair, ap + r * lda, sizeof pair);
            const __m256i x = _mm256_set1_epi32(pair);
            c[r][0] = _mm256_add_epi32(c[r][0], _mm256_madd_epi16(x, b0));
            c[r][1] = _mm256_add_epi32(c[r][1], _mm256_madd_epi16(x, b1));
            /* the next row's broadcast (a load) stays after these products: with all six
             * broadcasts hoisted, 12 accumulators + 8 operands exceed the 16 ymm and spill */
            __asm__ volatile("" : "+x"(c[r][0]), "+x"(c[r][1]) : : "memory");
        }
        ap += 2;
        bp += 2 * QC_TF_MM_NR;
    }
    for (int r = 0; r < QC_TF_MM_MR; r++) {
        _mm256_storeu_si256((__m256i *)(acc + r * ld), c[r][0]);
        _mm256_storeu_si256((__m256i *)(acc + r * ld + 8), c[r][1]);
    }
#else
    int32_t c[QC_TF_MM_MR][QC_TF_MM_NR];
    for (int r = 0; r < QC_TF_MM_MR; r++)
        for (int col = 0; col < QC_TF_MM_NR; col++) c[r][col] = first ? 0 : acc[r * ld + col];
    for (int64_t p = 0; p < nkp; p++) {
        for (int r = 0; r < QC_TF_MM_MR; r++) {
            const int32_t x0 = ap[r * lda], x1 = ap[r * lda + 1];
            for (int col = 0; col < QC_TF_MM_NR; col++) c[r][col] += x0 * bp[2 * col] + x1 * bp[2 * col + 1];
        }
        ap += 2;
        bp += 2 * QC_TF_MM_NR;
    }
    for (int r = 0; r < QC_TF_MM_MR; r++)
        for (int col = 0; col < QC_TF_MM_NR; col++) acc[r * ld + col] = c[r][col];
#endif
}

/* chunk = p * row_blocks + rb: rows [rb * MR, ...) of output matrix p */
static void qc_tf_matmul_rows(const void *ctx, int64_t chunk, int slot)
{
    const qc_tf_matmul_job *j = (const qc_tf_matmul_job *)ctx;
    const int64_t m = j->m, k = j->k, n = j->n, kp = j->kp;
    const int64_t p = chunk / j->row_blocks, r0 = chunk % j->row_blocks * QC_TF_MM_MR;
    const int64_t rows = m - r0 < QC_TF_MM_MR ? m - r0 : QC_TF_MM_MR;
    const uint8_t *a = j->a + j->aoff[p] + r0 * j->lda;
    const int16_t *bp = j->bp + (int64_t)j->bi[p] * j->panels * kp * (2 * QC_TF_MM_NR);
    int16_t ap[QC_TF_MM_KP * QC_TF_MM_MR * 2];
    int32_t acc[QC_TF_MM_MR * QC_TF_MM_COLS];
    (void)slot;
    for (int64_t c0 = 0; c0 < n; c0 += QC_TF_MM_COLS) {
        const int64_t nc = n - c0 < QC_TF_MM_COLS ? n - c0 : QC_TF_MM_COLS;
        const int64_t npan = (nc + QC_TF_MM_NR - 1) / QC_TF_MM_NR;
        if (kp == 0) memset(acc, 0, sizeof acc);             /* k = 0: an empty sum */
        for (int64_t p0 = 0; p0 < kp; p0 += QC_TF_MM_KP) {
            const int64_t np = kp - p0 < QC_TF_MM_KP ? kp - p0 : QC_TF_MM_KP;
            /* this depth block of the rows, centred, [row][2 * np]; zero past k and m (the row
             * stride is a run-time value: see qc_tf_mm_kernel) */
            const int64_t k0 = 2 * p0, k1 = 2 * (p0 + np) < k ? 2 * (p0 + np) : k;
            for (int64_t r = 0; r < QC_TF_MM_MR; r++) {
                int16_t *restrict dst = ap + r * (2 * np);
                const uint8_t *src = a + r * j->lda;
                int64_t kk = k0;
                if (r < rows && j->sak == 1)
                    for (; kk < k1; kk++) dst[kk - k0] = (int16_t)((int32_t)src[kk] - j->za);
                else if (r < rows)
                    for (; kk < k1; kk++) dst[kk - k0] = (int16_t)((int32_t)src[kk * j->sak] - j->za);
                for (; kk < k0 + 2 * np; kk++) dst[kk - k0] = 0;
            }
            const int16_t *bpan = bp + (c0 / QC_TF_MM_NR * kp + p0) * (2 * QC_TF_MM_NR);
            for (int64_t pn = 0; pn < npan; pn++)
                qc_tf_mm_kernel(ap, 2 * np, bpan + pn * kp * (2 * QC_TF_MM_NR), np, acc + pn * QC_TF_MM_NR, QC_TF_MM_COLS,
                                p0 == 0);
        }
        for (int64_t r = 0; r < rows; r++)
            qc_rt_requant_channels(acc + r * QC_TF_MM_COLS, j->y + (p * m + r0 + r) * n + c0, nc, j->rq);
    }
}

void qc_rt_matmul(const uint8_t *a, const int64_t *aoff, int64_t lda, int64_t sak, const int16_t *bp,
                  const int32_t *bi, uint8_t *y, int64_t batch, int64_t m, int64_t k, int64_t n, int32_t za,
                  const qc_rq *rq, int threads)
{
    const int64_t row_blocks = (m + QC_TF_MM_MR - 1) / QC_TF_MM_MR;
    const qc_tf_matmul_job job = {a, aoff, lda, sak, bp, bi, y, m, k, n, (k + 1) / 2,
                                  (n + QC_TF_MM_NR - 1) / QC_TF_MM_NR, row_blocks, za, rq};
    QC_RT_PARALLEL_FOR(qc_tf_matmul_rows, &job, batch * row_blocks, qc_rt_threads(threads, batch * m * n * k));
}

/* ---------------------------------------------------------------------------------- */
/* QSoftmax                                                                              */
/* ---------------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *x;
    uint8_t *y;
    int64_t len, inner;
    const int64_t *lut;
    int64_t r;
    int32_t sh, zo, qmin, qmax;
} qc_tf_softmax_job;

static inline uint8_t qc_tf_softmax_q(int64_t e, int64_t c, int32_t sh, int32_t zo, int32_t qmin, int32_t qmax)
{
    const int64_t q = zo + ((e * c + ((int64_t)1 << (sh - 1))) >> sh);
    return (uint8_t)(q < qmin ? qmin : q > qmax ? qmax : q);
}

/* the row's max, and S = sum lut[max - x] with four partial sums (the table reads are the
 * critical path; int64 sums are exact in any order) */
static inline uint8_t qc_tf_row_max(const uint8_t *restrict x, int64_t len, int64_t st)
{
    uint8_t mx = 0;
    if (st == 1) {
        for (int64_t l = 0; l < len; l++) mx = x[l] > mx ? x[l] : mx;      /* vectorized: vpmaxub */
    } else {
        for (int64_t l = 0; l < len; l++) mx = x[l * st] > mx ? x[l * st] : mx;
    }
    return mx;
}

static inline int64_t qc_tf_row_sum(const uint8_t *restrict x, int64_t len, int64_t st, const int64_t *lut, uint8_t mx)
{
    int64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, l = 0;
    for (; l + 4 <= len; l += 4) {
        s0 += lut[mx - x[l * st]];
        s1 += lut[mx - x[(l + 1) * st]];
        s2 += lut[mx - x[(l + 2) * st]];
        s3 += lut[mx - x[(l + 3) * st]];
    }
    for (; l < len; l++) s0 += lut[mx - x[l * st]];
    return (s0 + s1) + (s2 + s3);
}

/* chunk = o * inner + i: one row of len elements, stride inner */
static void qc_tf_softmax_row(const void *ctx, int64_t chunk, int slot)
{
    const qc_tf_softmax_job *j = (const qc_tf_softmax_job *)ctx;
    const int64_t len = j->len, st = j->inner;
    const int64_t base = chunk / st * len * st + chunk % st;
    const uint8_t *x = j->x + base;
    uint8_t *y = j->y + base;
    const int64_t *lut = j->lut;
    (void)slot;
    const uint8_t mx = qc_tf_row_max(x, len, st);
    const int64_t s = qc_tf_row_sum(x, len, st, lut, mx);                  /* >= lut[0] = 2^22 */
    const int64_t c = ((j->r << QC_RT_SOFTMAX_RECIP_BITS) + (s >> 1)) / s;   /* the row's one division */
    if (len >= 64) {
        /* q depends on d alone: a table of the row's outputs, then a byte lookup per element.
         * lut is non-increasing, so once (e c + 2^(sh-1)) >> sh is 0 it stays 0: the rest of the
         * table is clamp(zo) (a small s_in makes that d large, then the table is just longer) */
        uint8_t table[256];
        const uint8_t tail = qc_tf_softmax_q(0, c, j->sh, j->zo, j->qmin, j->qmax);
        const int64_t half = (int64_t)1 << (j->sh - 1);
        int d = 0;
        for (; d < 256; d++) {
            const int64_t v = (lut[d] * c + half) >> j->sh;
            if (v == 0) break;
            const int64_t q = j->zo + v;
            table[d] = (uint8_t)(q < j->qmin ? j->qmin : q > j->qmax ? j->qmax : q);
        }
        memset(table + d, tail, (size_t)(256 - d));
        if (st == 1) {
            for (int64_t l = 0; l < len; l++) y[l] = table[mx - x[l]];
        } else {
            for (int64_t l = 0; l < len; l++) y[l * st] = table[mx - x[l * st]];
        }
    } else {
        for (int64_t l = 0; l < len; l++)
            y[l * st] = qc_tf_softmax_q(lut[mx - x[l * st]], c, j->sh, j->zo, j->qmin, j->qmax);
    }
}

void qc_rt_softmax(const uint8_t *x, uint8_t *y, int64_t outer, int64_t len, int64_t inner, const int64_t *lut,
                   int64_t r, int32_t sh, int32_t zo, int32_t qmin, int32_t qmax, int threads)
{
    const qc_tf_softmax_job job = {x, y, len, inner, lut, r, sh, zo, qmin, qmax};
    QC_RT_PARALLEL_FOR(qc_tf_softmax_row, &job, outer * inner, qc_rt_threads(threads, outer * inner * len * 8));
}

/* ---------------------------------------------------------------------------------- */
/* QLayerNorm                                                                            */
/* ---------------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *x;
    uint8_t *y;
    int64_t n;
    int32_t zx;
    float eps_q;
    const float *g, *b;
    int32_t zo, qmin, qmax;
} qc_tf_layer_norm_job;

/* elements per int32 block of the sums: 16384 * 255^2 < 2^31 */
#define QC_TF_LN_BLOCK 16384

static void qc_tf_layer_norm_row(const void *ctx, int64_t row, int slot)
{
    const qc_tf_layer_norm_job *j = (const qc_tf_layer_norm_job *)ctx;
    const int64_t n = j->n;
    const uint8_t *restrict x = j->x + row * n;
    uint8_t *restrict y = j->y + row * n;
    const float *restrict g = j->g, *restrict b = j->b;
    const int32_t zx = j->zx, zo = j->zo;
    (void)slot;
    int64_t s1 = 0, s2 = 0;
    for (int64_t i0 = 0; i0 < n; i0 += QC_TF_LN_BLOCK) {     /* int32 lanes: vectorized, exact */
        const int64_t i1 = n - i0 < QC_TF_LN_BLOCK ? n : i0 + QC_TF_LN_BLOCK;
        int32_t b1 = 0, b2 = 0;
        for (int64_t i = i0; i < i1; i++) {
            const int32_t d = (int32_t)x[i] - zx;
            b1 += d;
            b2 += d * d;
        }
        s1 += b1;
        s2 += b2;
    }
    const int64_t v = n * s2 - s1 * s1;                     /* exact, < 2^53 for n <= 2^18 */
    const float inv = 1.0f / sqrtf((float)v + j->eps_q);   /* correctly rounded sqrt and division */
    const int32_t n32 = (int32_t)n, s1_32 = (int32_t)s1;    /* |n d - S1| <= 2 n 255 < 2^31 */
    const float lo = (float)(j->qmin - zo), hi = (float)(j->qmax - zo);
    for (int64_t i = 0; i < n; i++) {
        const int32_t t = n32 * ((int32_t)x[i] - zx) - s1_32;
        float q = ((float)t * inv) * g[i] + b[i];
        q = q >= lo ? q : lo;                               /* NaN -> lo, as the reference */
        q = q > hi ? hi : q;
        y[i] = (uint8_t)((int32_t)qc_round_half_even(q) + zo);
    }
}

void qc_rt_layer_norm(const uint8_t *x, uint8_t *y, int64_t rows, int64_t n, int32_t zx, float eps_q, const float *g,
                      const float *b, int32_t zo, int32_t qmin, int32_t qmax, int threads)
{
    const qc_tf_layer_norm_job job = {x, y, n, zx, eps_q, g, b, zo, qmin, qmax};
    QC_RT_PARALLEL_FOR(qc_tf_layer_norm_row, &job, rows, qc_rt_threads(threads, rows * n * 8));
}
