/* qcompiler C runtime: the elementwise kernels. Each kernel's comment names the integer op of
 * qcompiler/core it implements bit for bit. */
#include "qc_rt_elementwise.h"

#ifndef QC_RT_PARALLEL_FOR
/* this file compiled alone (a syntax check); in the runtime TU qc_runtime.c defines it */
typedef void (*qc_rt_chunk_fn)(const void *ctx, int64_t chunk, int slot);
static void qc_rt_elementwise_serial_for(qc_rt_chunk_fn fn, const void *ctx, int64_t total)
{
    for (int64_t i = 0; i < total; i++) fn(ctx, i, 0);
}
#define QC_RT_PARALLEL_FOR(fn, ctx, total, nt) ((void)(nt), qc_rt_elementwise_serial_for((fn), (ctx), (total)))
#endif

/* ---------------------------------------------------------------------------------- */
/* QLookup (qcompiler/core/lookup_ops.py): y = table[x]                                 */
/* ---------------------------------------------------------------------------------- */

/* bytes per chunk of a threaded lookup, and the size below which one thread does it all */
#define QC_LOOKUP_BLOCK 65536
#define QC_LOOKUP_SERIAL_BELOW (4 * QC_LOOKUP_BLOCK)

typedef struct {
    const uint8_t *x;
    uint8_t *y;
    int64_t n;
    const uint8_t *table;
} qc_lookup_job;

#ifdef __AVX2__
#include <immintrin.h>
/* table[x] for the 32 bytes of x: the table as 16 rows of 16 bytes, each row looked up with
 * pshufb on the low nibble (x & 0x0F: bit 7 clear, so no lane is zeroed), then the row the
 * high nibble names picked by a tree of vpblendvb, whose byte masks are bit 7: bit 4 of x
 * shifted there picks within pairs of rows, bits 5 and 6 likewise, bit 7 itself last (the
 * 16-bit shifts carry bits across bytes, but only into bits below 7). 35 operations per 32
 * bytes, against 64 for pshufb per row selected by saturating-add masks (1.5x, one thread). */
static inline __attribute__((always_inline)) __m256i qc_lookup32_avx2(__m256i x, const __m256i row[16])
{
    const __m256i lo = _mm256_and_si256(x, _mm256_set1_epi8(0x0F));
    const __m256i s4 = _mm256_slli_epi16(x, 3), s5 = _mm256_slli_epi16(x, 2), s6 = _mm256_slli_epi16(x, 1);
    __m256i q[4];
    for (int h = 0; h < 4; h++) {
        const __m256i p0 = _mm256_blendv_epi8(_mm256_shuffle_epi8(row[4 * h], lo),
                                              _mm256_shuffle_epi8(row[4 * h + 1], lo), s4);
        const __m256i p1 = _mm256_blendv_epi8(_mm256_shuffle_epi8(row[4 * h + 2], lo),
                                              _mm256_shuffle_epi8(row[4 * h + 3], lo), s4);
        q[h] = _mm256_blendv_epi8(p0, p1, s5);
    }
    return _mm256_blendv_epi8(_mm256_blendv_epi8(q[0], q[1], s6), _mm256_blendv_epi8(q[2], q[3], s6), x);
}

/* 64 bytes at a time; returns the bytes done (the scalar loop does the rest, and everything
 * in the baseline variant, where gcc cannot vectorize it: it would need a byte gather) */
static int64_t qc_lookup_avx2(const uint8_t *restrict x, uint8_t *restrict y, int64_t n,
                              const uint8_t *restrict table)
{
    __m256i row[16];
    for (int k = 0; k < 16; k++)
        row[k] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(table + 16 * k)));
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        const __m256i a = qc_lookup32_avx2(_mm256_loadu_si256((const __m256i *)(x + i)), row);
        const __m256i b = qc_lookup32_avx2(_mm256_loadu_si256((const __m256i *)(x + i + 32)), row);
        _mm256_storeu_si256((__m256i *)(y + i), a);
        _mm256_storeu_si256((__m256i *)(y + i + 32), b);
    }
    return i;
}
#endif

static void qc_lookup_run(const uint8_t *restrict x, uint8_t *restrict y, int64_t n, const uint8_t *restrict table)
{
    int64_t i = 0;
#ifdef __AVX2__
    i = qc_lookup_avx2(x, y, n, table);
#endif
    for (; i < n; i++) y[i] = table[x[i]];
}

static void qc_lookup_chunk(const void *ctx, int64_t chunk, int slot)
{
    const qc_lookup_job *j = (const qc_lookup_job *)ctx;
    const int64_t i0 = chunk * QC_LOOKUP_BLOCK, n = j->n - i0 < QC_LOOKUP_BLOCK ? j->n - i0 : QC_LOOKUP_BLOCK;
    (void)slot;
    qc_lookup_run(j->x + i0, j->y + i0, n, j->table);
}

void qc_rt_lookup(const uint8_t *x, uint8_t *y, int64_t n, const uint8_t table[256], int threads)
{
    if (threads <= 1 || n < QC_LOOKUP_SERIAL_BELOW) {
        qc_lookup_run(x, y, n, table);
        return;
    }
    const qc_lookup_job job = {x, y, n, table};
    QC_RT_PARALLEL_FOR(qc_lookup_chunk, &job, (n + QC_LOOKUP_BLOCK - 1) / QC_LOOKUP_BLOCK, threads);
}
