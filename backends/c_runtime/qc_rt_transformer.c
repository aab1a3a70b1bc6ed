/* qcompiler C runtime: the transformer kernels. Each kernel's comment names the integer op of
 * qcompiler/core it implements bit for bit (qcompiler/core/transformer_ops.py). */
#include "qc_rt_transformer.h"

#include <math.h>

/* In the runtime TU qc_runtime.c comes first and defines QC_RT_PARALLEL_FOR; compiled on
 * its own (a syntax check), the loops run serially. */
#ifndef QC_RT_PARALLEL_FOR
typedef void (*qc_rt_chunk_fn)(const void *ctx, int64_t chunk, int slot);
#define QC_RT_PARALLEL_FOR(fn, ctx, total, nt) qc_tf_serial_for((fn), (ctx), (total))
static void qc_tf_serial_for(qc_rt_chunk_fn fn, const void *ctx, int64_t total)
{
    for (int64_t i = 0; i < total; i++) fn(ctx, i, 0);
}
#endif

/* threads for `work` elementary operations: small ones stay on the calling thread */
static inline int qc_tf_threads(int threads, int64_t work)
{
    return (threads <= 1 || work < 32768) ? 1 : threads;
}

/* ---------------------------------------------------------------------------------- */
/* QMatMul                                                                               */
/* ---------------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *b;
    int16_t *bt;
    int64_t k, n, sk, sn;
    int32_t zb;
} qc_tf_pack_job;

static void qc_tf_pack_one(const void *ctx, int64_t i, int slot)
{
    const qc_tf_pack_job *j = (const qc_tf_pack_job *)ctx;
    const int64_t k = j->k, n = j->n, sk = j->sk, sn = j->sn;
    const uint8_t *b = j->b + i * k * n;
    int16_t *restrict bt = j->bt + i * k * n;
    (void)slot;
    for (int64_t col = 0; col < n; col++) {
        const uint8_t *src = b + col * sn;
        int16_t *restrict dst = bt + col * k;
        for (int64_t kk = 0; kk < k; kk++) dst[kk] = (int16_t)((int32_t)src[kk * sk] - j->zb);
    }
}

void qc_rt_matmul_pack_b(const uint8_t *b, int16_t *bt, int64_t nb, int64_t k, int64_t n, int64_t sk, int64_t sn,
                         int32_t zb, int threads)
{
    const qc_tf_pack_job job = {b, bt, k, n, sk, sn, zb};
    QC_RT_PARALLEL_FOR(qc_tf_pack_one, &job, nb, qc_tf_threads(threads, nb * k * n));
}

/* rows of a chunk, columns and depth of one block (the centred a block stays in L1) */
#define QC_TF_MM_ROWS 8
#define QC_TF_MM_COLS 256
#define QC_TF_MM_DEPTH 1024

typedef struct {
    const uint8_t *a;
    const int16_t *bt;
    uint8_t *y;
    int64_t m, k, n, row_chunks;
    const int32_t *ai, *bi;
    int32_t za;
    const qc_rq *rq;
} qc_tf_matmul_job;

/* sum_kk x[kk] * w[kk] in int32: gcc vectorizes it as a widening multiply-add (vpmaddwd) */
static inline int32_t qc_tf_dot16(const int16_t *restrict x, const int16_t *restrict w, int64_t len)
{
    int32_t s = 0;
    for (int64_t kk = 0; kk < len; kk++) s += (int32_t)x[kk] * (int32_t)w[kk];
    return s;
}

/* chunk = p * row_chunks + c: rows [c * QC_TF_MM_ROWS, ...) of output matrix p */
static void qc_tf_matmul_rows(const void *ctx, int64_t chunk, int slot)
{
    const qc_tf_matmul_job *j = (const qc_tf_matmul_job *)ctx;
    const int64_t m = j->m, k = j->k, n = j->n;
    const int64_t p = chunk / j->row_chunks, r0 = chunk % j->row_chunks * QC_TF_MM_ROWS;
    const int64_t r1 = r0 + QC_TF_MM_ROWS < m ? r0 + QC_TF_MM_ROWS : m;
    const uint8_t *a = j->a + (int64_t)j->ai[p] * m * k;
    const int16_t *bt = j->bt + (int64_t)j->bi[p] * k * n;
    int16_t xa[QC_TF_MM_DEPTH];
    int32_t acc[QC_TF_MM_COLS];
    (void)slot;
    for (int64_t row = r0; row < r1; row++) {
        const uint8_t *arow = a + row * k;
        uint8_t *yrow = j->y + (p * m + row) * n;
        for (int64_t c0 = 0; c0 < n; c0 += QC_TF_MM_COLS) {
            const int64_t nc = n - c0 < QC_TF_MM_COLS ? n - c0 : QC_TF_MM_COLS;
            for (int64_t c = 0; c < nc; c++) acc[c] = 0;
            for (int64_t k0 = 0; k0 < k; k0 += QC_TF_MM_DEPTH) {
                const int64_t nk = k - k0 < QC_TF_MM_DEPTH ? k - k0 : QC_TF_MM_DEPTH;
                for (int64_t kk = 0; kk < nk; kk++) xa[kk] = (int16_t)((int32_t)arow[k0 + kk] - j->za);
                for (int64_t c = 0; c < nc; c++) acc[c] += qc_tf_dot16(xa, bt + (c0 + c) * k + k0, nk);
            }
            qc_rt_requant_channels(acc, yrow + c0, nc, j->rq);
        }
    }
}

void qc_rt_matmul(const uint8_t *a, const int16_t *bt, uint8_t *y, int64_t batch, int64_t m, int64_t k, int64_t n,
                  const int32_t *ai, const int32_t *bi, int32_t za, const qc_rq *rq, int threads)
{
    const int64_t row_chunks = (m + QC_TF_MM_ROWS - 1) / QC_TF_MM_ROWS;
    const qc_tf_matmul_job job = {a, bt, y, m, k, n, row_chunks, ai, bi, za, rq};
    QC_RT_PARALLEL_FOR(qc_tf_matmul_rows, &job, batch * row_chunks, qc_tf_threads(threads, batch * m * n * k));
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
    int32_t m, zo, qmin, qmax;
} qc_tf_softmax_job;

static inline uint8_t qc_tf_softmax_q(int64_t e, int64_t r, int64_t half, int64_t den, int32_t zo, int32_t qmin,
                                      int32_t qmax)
{
    const int64_t q = zo + (e * r + half) / den;       /* non-negative: truncation is the floor */
    return (uint8_t)(q < qmin ? qmin : q > qmax ? qmax : q);
}

/* chunk = o * inner + i: one row of len elements, stride inner */
static void qc_tf_softmax_row(const void *ctx, int64_t chunk, int slot)
{
    const qc_tf_softmax_job *j = (const qc_tf_softmax_job *)ctx;
    const int64_t len = j->len, st = j->inner;
    const int64_t base = chunk / st * len * st + chunk % st;
    const uint8_t *x = j->x + base;
    uint8_t *y = j->y + base;
    (void)slot;
    uint8_t mx = 0;
    for (int64_t l = 0; l < len; l++) mx = x[l * st] > mx ? x[l * st] : mx;
    int64_t s = 0;
    for (int64_t l = 0; l < len; l++) s += j->lut[mx - x[l * st]];
    const int64_t half = s << (j->m - 1), den = s << j->m;
    if (len > 256) {        /* one division per possible d rather than per element */
        uint8_t table[256];
        for (int d = 0; d < 256; d++) table[d] = qc_tf_softmax_q(j->lut[d], j->r, half, den, j->zo, j->qmin, j->qmax);
        for (int64_t l = 0; l < len; l++) y[l * st] = table[mx - x[l * st]];
    } else {
        for (int64_t l = 0; l < len; l++)
            y[l * st] = qc_tf_softmax_q(j->lut[mx - x[l * st]], j->r, half, den, j->zo, j->qmin, j->qmax);
    }
}

void qc_rt_softmax(const uint8_t *x, uint8_t *y, int64_t outer, int64_t len, int64_t inner, const int64_t *lut,
                   int64_t r, int32_t m, int32_t zo, int32_t qmin, int32_t qmax, int threads)
{
    const qc_tf_softmax_job job = {x, y, len, inner, lut, r, m, zo, qmin, qmax};
    QC_RT_PARALLEL_FOR(qc_tf_softmax_row, &job, outer * inner, qc_tf_threads(threads, outer * inner * len * 8));
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
    for (int64_t i = 0; i < n; i++) {
        const int64_t d = (int64_t)x[i] - zx;
        s1 += d;
        s2 += d * d;
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
    QC_RT_PARALLEL_FOR(qc_tf_layer_norm_row, &job, rows, qc_tf_threads(threads, rows * n * 8));
}
