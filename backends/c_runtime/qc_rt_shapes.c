/* qcompiler C runtime: the shapes kernels. Each kernel's comment names the integer op of
 * qcompiler/core it implements bit for bit. */
#include "qc_rt_shapes.h"

#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

/* In the runtime TU qc_runtime.c comes first and supplies the parallel loop (the GEMM's thread
 * pool on x86); checked on its own (gcc -fsyntax-only) this file runs its loops serially. */
#ifndef QC_RT_PARALLEL_FOR
typedef void (*qc_shapes_chunk_fn)(const void *ctx, int64_t chunk, int slot);
static void qc_shapes_serial_for(qc_shapes_chunk_fn fn, const void *ctx, int64_t total)
{
    for (int64_t i = 0; i < total; i++) fn(ctx, i, 0);
}
#define QC_RT_PARALLEL_FOR(fn, ctx, total, nt) qc_shapes_serial_for((fn), (ctx), (total))
#endif

/* elements per chunk of the threaded loops; smaller jobs stay on the calling thread */
#define QC_SHAPES_BLOCK 16384
#define QC_SHAPES_SERIAL_BELOW 32768

/* ---------------------------------------------------------------------------------- */
/* the walk over rows: dims 0..4 of QC_RT_MAX_DIMS (padded with leading 1s), the last dim */
/* is a row a kernel handles in one loop                                                 */
/* ---------------------------------------------------------------------------------- */

#define QC_OUTER_DIMS (QC_RT_MAX_DIMS - 1)

typedef struct {
    int64_t size[QC_RT_MAX_DIMS];
    int64_t stride[2][QC_RT_MAX_DIMS];     /* per source operand */
    int64_t rows, rows_per_chunk, chunks;
    int threads;
} qc_walk;

/* false when there is nothing to do (no element, or ndim out of range) */
static int qc_walk_init(qc_walk *w, int ndim, const int64_t *size, const int64_t *s0, const int64_t *s1,
                        int threads)
{
    if (ndim < 1 || ndim > QC_RT_MAX_DIMS) return 0;
    const int pad = QC_RT_MAX_DIMS - ndim;
    int64_t numel = 1;
    for (int k = 0; k < QC_RT_MAX_DIMS; k++) {
        const int inside = k >= pad;
        w->size[k] = inside ? size[k - pad] : 1;
        w->stride[0][k] = inside ? s0[k - pad] : 0;
        w->stride[1][k] = inside && s1 != NULL ? s1[k - pad] : 0;
        numel *= w->size[k];
    }
    if (numel <= 0) return 0;
    const int64_t n = w->size[QC_OUTER_DIMS];
    w->rows = numel / n;
    w->rows_per_chunk = n >= QC_SHAPES_BLOCK ? 1 : QC_SHAPES_BLOCK / n;
    w->chunks = (w->rows + w->rows_per_chunk - 1) / w->rows_per_chunk;
    w->threads = (threads <= 1 || numel < QC_SHAPES_SERIAL_BELOW) ? 1 : threads;
    return 1;
}

/* index and source offsets of row r */
static void qc_walk_start(const qc_walk *w, int64_t r, int64_t idx[QC_OUTER_DIMS], int64_t off[2])
{
    off[0] = off[1] = 0;
    for (int k = QC_OUTER_DIMS - 1; k >= 0; k--) {
        idx[k] = r % w->size[k];
        r /= w->size[k];
        off[0] += idx[k] * w->stride[0][k];
        off[1] += idx[k] * w->stride[1][k];
    }
}

static inline void qc_walk_next(const qc_walk *w, int64_t idx[QC_OUTER_DIMS], int64_t off[2])
{
    for (int k = QC_OUTER_DIMS - 1; k >= 0; k--) {
        off[0] += w->stride[0][k];
        off[1] += w->stride[1][k];
        if (++idx[k] < w->size[k]) return;
        off[0] -= w->stride[0][k] * w->size[k];
        off[1] -= w->stride[1][k] * w->size[k];
        idx[k] = 0;
    }
}

/* ---------------------------------------------------------------------------------- */
/* strided copy: the value-preserving ops                                                */
/* ---------------------------------------------------------------------------------- */

typedef struct {
    qc_walk w;
    const uint8_t *x;
    uint8_t *y;
} qc_copy_job;

static void qc_copy_rows(const void *ctx, int64_t chunk, int slot)
{
    const qc_copy_job *j = (const qc_copy_job *)ctx;
    const qc_walk *w = &j->w;
    const int64_t r0 = chunk * w->rows_per_chunk;
    const int64_t r1 = r0 + w->rows_per_chunk < w->rows ? r0 + w->rows_per_chunk : w->rows;
    const int64_t n = w->size[QC_OUTER_DIMS], s = w->stride[0][QC_OUTER_DIMS];
    int64_t idx[QC_OUTER_DIMS], off[2];
    (void)slot;
    qc_walk_start(w, r0, idx, off);
    uint8_t *y = j->y + r0 * n;
    for (int64_t r = r0; r < r1; r++, y += n) {
        const uint8_t *x = j->x + off[0];
        if (s == 1) {
            memcpy(y, x, (size_t)n);
        } else if (s == 0) {
            memset(y, x[0], (size_t)n);
        } else {
            for (int64_t i = 0; i < n; i++) y[i] = x[i * s];
        }
        qc_walk_next(w, idx, off);
    }
}

void qc_rt_strided_copy(const uint8_t *x, uint8_t *y, int ndim, const int64_t *size, const int64_t *stride,
                        int threads)
{
    qc_copy_job job;
    if (!qc_walk_init(&job.w, ndim, size, stride, NULL, threads)) return;
    job.x = x;
    job.y = y;
    QC_RT_PARALLEL_FOR(qc_copy_rows, &job, job.w.chunks, job.w.threads);
}

/* ---------------------------------------------------------------------------------- */
/* broadcasting add / mul                                                                */
/* ---------------------------------------------------------------------------------- */

typedef struct {
    qc_walk w;
    const uint8_t *a, *b;
    uint8_t *y;
    int32_t za, zb, mode;
    float ma, mb;            /* QAdd fp32 */
    int64_t m0a, m0b;        /* QAdd fixed point */
    int32_t shift, zo, qmin, qmax;
    const qc_rq *rq;         /* QMul */
} qc_binary_job;

/* one row of QAdd, the arithmetic of qc_rt_add (qc_runtime.c) element for element; inlined
 * with constant strides, so the same-shape and broadcast rows vectorize */
static inline __attribute__((always_inline)) void qc_add_row(const uint8_t *restrict a, int64_t sa,
                                                             const uint8_t *restrict b, int64_t sb,
                                                             uint8_t *restrict y, int64_t n,
                                                             const qc_binary_job *j)
{
    const int32_t za = j->za, zb = j->zb, zo = j->zo, qmin = j->qmin, qmax = j->qmax;
    if (j->mode == QC_RQ_FP32) {
        const float lo = (float)(qmin - zo), hi = (float)(qmax - zo), ma = j->ma, mb = j->mb;
        for (int64_t i = 0; i < n; i++) {
            /* two float32 products and one float32 sum, each rounded (no FMA) */
            float v = (float)((int32_t)a[i * sa] - za) * ma + (float)((int32_t)b[i * sb] - zb) * mb;
            v = v >= lo ? v : lo;       /* NaN -> lo */
            v = v > hi ? hi : v;
            y[i] = (uint8_t)((int32_t)qc_round_half_even(v) + zo);
        }
    } else {
        const int64_t m0a = j->m0a, m0b = j->m0b;
        const int32_t shift = j->shift;
        const int64_t half = (int64_t)1 << (shift - 1);
        for (int64_t i = 0; i < n; i++) {
            int64_t acc = ((int64_t)a[i * sa] - za) * m0a + ((int64_t)b[i * sb] - zb) * m0b + half;
            int64_t q = (acc >> shift) + zo;
            y[i] = (uint8_t)(q < qmin ? qmin : q > qmax ? qmax : q);
        }
    }
}

#if defined(__AVX2__)
/* the first n - n % 16 elements of a contiguous fp32 QMul row (qc_mul_row's arithmetic): the
 * int16 operands' exact int32 products from vpmullw / vpmulhw, float32(p) * m (exact
 * conversion: |p| <= 255^2), clamped, then vcvtps2dq rounds half to even as qc_round_half_even
 * does (both follow MXCSR's default mode, like the GEMM epilogue); an SE gate row repeated at
 * every pixel: ~4x the vectorized scalar loop. Returns the elements done. */
static inline __attribute__((always_inline)) int64_t qc_mul_row_fp32_avx2(
    const uint8_t *restrict a, const uint8_t *restrict b, uint8_t *restrict y, int64_t n, int32_t za, int32_t zb,
    float m, float lo, float hi, int32_t zp)
{
    const __m256i va = _mm256_set1_epi16((int16_t)za), vb = _mm256_set1_epi16((int16_t)zb);
    const __m256i vz = _mm256_set1_epi16((int16_t)zp);
    const __m256 vm = _mm256_set1_ps(m), vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256i x = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(a + i))), va);
        const __m256i g = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(b + i))), vb);
        const __m256i pl = _mm256_mullo_epi16(x, g), ph = _mm256_mulhi_epi16(x, g);
        /* per 128-bit lane: elements 0-3 | 8-11, and 4-7 | 12-15 */
        __m256 f0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_unpacklo_epi16(pl, ph)), vm);
        __m256 f1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_unpackhi_epi16(pl, ph)), vm);
        f0 = _mm256_min_ps(_mm256_max_ps(f0, vlo), vhi);
        f1 = _mm256_min_ps(_mm256_max_ps(f1, vlo), vhi);
        /* packs puts 0-3, 4-7 | 8-11, 12-15: in order; + zp in int16 lands in [qmin, qmax] */
        const __m256i q = _mm256_add_epi16(_mm256_packs_epi32(_mm256_cvtps_epi32(f0), _mm256_cvtps_epi32(f1)), vz);
        const __m256i bytes = _mm256_permute4x64_epi64(_mm256_packus_epi16(q, q), 0x08);
        _mm_storeu_si128((__m128i *)(y + i), _mm256_castsi256_si128(bytes));
    }
    return i;
}
#endif

/* one row of QMul: qc_requant((a - za) * (b - zb), rq, 0) with the mode hoisted */
static inline __attribute__((always_inline)) void qc_mul_row(const uint8_t *restrict a, int64_t sa,
                                                             const uint8_t *restrict b, int64_t sb,
                                                             uint8_t *restrict y, int64_t n,
                                                             const qc_binary_job *j)
{
    const qc_rq *r = j->rq;
    const int32_t za = j->za, zb = j->zb, zp = r->zp, qmin = r->qmin, qmax = r->qmax;
    if (r->mode == QC_RQ_FP32) {
        const float m = r->mult[0], lo = (float)(qmin - zp), hi = (float)(qmax - zp);
        int64_t i0 = 0;
#if defined(__AVX2__)
        if (sa == 1 && sb == 1) i0 = qc_mul_row_fp32_avx2(a, b, y, n, za, zb, m, lo, hi, zp);
#endif
        for (int64_t i = i0; i < n; i++) {
            /* |acc| <= 255^2: exact in float32, as the int64 -> float conversion of qc_requant */
            float v = (float)(((int32_t)a[i * sa] - za) * ((int32_t)b[i * sb] - zb)) * m;
            if (!(v >= lo)) v = lo;
            if (v > hi) v = hi;
            y[i] = (uint8_t)((int32_t)qc_round_half_even(v) + zp);
        }
    } else {
        const int64_t m0 = r->m0[0];
        const int32_t s = r->shift[0];
        const int64_t half = (int64_t)1 << (s - 1);
        for (int64_t i = 0; i < n; i++) {
            const int64_t acc = ((int64_t)a[i * sa] - za) * ((int64_t)b[i * sb] - zb);
            const int64_t q = ((acc * m0 + half) >> s) + zp;
            y[i] = (uint8_t)(q < qmin ? qmin : q > qmax ? qmax : q);
        }
    }
}

/* the row with its strides as constants where they are the common ones: both operands
 * contiguous (same shape), or one a row of C repeated at every position (an SE gate, a bias) */
#define QC_BINARY_ROW(row, a, sa, b, sb, y, n, j)                     \
    do {                                                               \
        if ((sa) == 1 && (sb) == 1) row((a), 1, (b), 1, (y), (n), (j));  \
        else if ((sa) == 1 && (sb) == 0) row((a), 1, (b), 0, (y), (n), (j)); \
        else if ((sa) == 0 && (sb) == 1) row((a), 0, (b), 1, (y), (n), (j)); \
        else row((a), (sa), (b), (sb), (y), (n), (j));                 \
    } while (0)

static void qc_binary_rows(const void *ctx, int64_t chunk, int is_mul)
{
    const qc_binary_job *j = (const qc_binary_job *)ctx;
    const qc_walk *w = &j->w;
    const int64_t r0 = chunk * w->rows_per_chunk;
    const int64_t r1 = r0 + w->rows_per_chunk < w->rows ? r0 + w->rows_per_chunk : w->rows;
    const int64_t n = w->size[QC_OUTER_DIMS];
    const int64_t sa = w->stride[0][QC_OUTER_DIMS], sb = w->stride[1][QC_OUTER_DIMS];
    int64_t idx[QC_OUTER_DIMS], off[2];
    qc_walk_start(w, r0, idx, off);
    uint8_t *y = j->y + r0 * n;
    for (int64_t r = r0; r < r1; r++, y += n) {
        const uint8_t *a = j->a + off[0], *b = j->b + off[1];
        if (is_mul) QC_BINARY_ROW(qc_mul_row, a, sa, b, sb, y, n, j);
        else QC_BINARY_ROW(qc_add_row, a, sa, b, sb, y, n, j);
        qc_walk_next(w, idx, off);
    }
}

static void qc_add_rows(const void *ctx, int64_t chunk, int slot)
{
    (void)slot;
    qc_binary_rows(ctx, chunk, 0);
}

static void qc_mul_rows(const void *ctx, int64_t chunk, int slot)
{
    (void)slot;
    qc_binary_rows(ctx, chunk, 1);
}

void qc_rt_add_strided(const uint8_t *a, const uint8_t *b, uint8_t *y, int ndim, const int64_t *size,
                       const int64_t *stride_a, const int64_t *stride_b, int32_t za, int32_t zb, int32_t mode,
                       float ma, float mb, int64_t m0a, int64_t m0b, int32_t shift, int32_t zo, int32_t qmin,
                       int32_t qmax, int threads)
{
    qc_binary_job job = {.a = a, .b = b, .y = y, .za = za, .zb = zb, .mode = mode, .ma = ma, .mb = mb,
                         .m0a = m0a, .m0b = m0b, .shift = shift, .zo = zo, .qmin = qmin, .qmax = qmax};
    if (!qc_walk_init(&job.w, ndim, size, stride_a, stride_b, threads)) return;
    QC_RT_PARALLEL_FOR(qc_add_rows, &job, job.w.chunks, job.w.threads);
}

void qc_rt_mul_strided(const uint8_t *a, const uint8_t *b, uint8_t *y, int ndim, const int64_t *size,
                       const int64_t *stride_a, const int64_t *stride_b, int32_t za, int32_t zb, const qc_rq *rq,
                       int threads)
{
    qc_binary_job job = {.a = a, .b = b, .y = y, .za = za, .zb = zb, .mode = rq->mode, .rq = rq};
    if (!qc_walk_init(&job.w, ndim, size, stride_a, stride_b, threads)) return;
    QC_RT_PARALLEL_FOR(qc_mul_rows, &job, job.w.chunks, job.w.threads);
}

QC_RT_EXPORT int qc_rt_embedding(const int64_t *ids, int64_t n, const uint8_t *table, int64_t rows, int64_t dim,
                                 uint8_t *y)
{
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= rows) return -1;
    for (int64_t i = 0; i < n; i++)
        memcpy(y + i * dim, table + ids[i] * dim, (size_t)dim);
    return 0;
}
