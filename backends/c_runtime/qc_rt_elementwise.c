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
/* 64 bytes at a time: the table as 16 rows of 16 bytes, row k looked up with pshufb where the
 * high nibble is k. x ^ (k << 4) has high nibble 0 exactly there; adding 0x70 with unsigned
 * saturation keeps those lanes below 0x80 (low nibble intact) and sends every other lane to
 * 0x80 or more, which pshufb turns into 0, so OR-ing the 16 lookups leaves table[x]. About 2x
 * the scalar loop (which gcc does not vectorize: it would need a byte gather). */
static int64_t qc_lookup_avx2(const uint8_t *restrict x, uint8_t *restrict y, int64_t n,
                              const uint8_t *restrict table)
{
    __m256i row[16], key[16];
    for (int k = 0; k < 16; k++) {
        row[k] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(table + 16 * k)));
        key[k] = _mm256_set1_epi8((char)(k << 4));
    }
    const __m256i bias = _mm256_set1_epi8(0x70);
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        const __m256i a = _mm256_loadu_si256((const __m256i *)(x + i));
        const __m256i b = _mm256_loadu_si256((const __m256i *)(x + i + 32));
        __m256i ra = _mm256_setzero_si256(), rb = _mm256_setzero_si256();
        for (int k = 0; k < 16; k++) {
            ra = _mm256_or_si256(ra, _mm256_shuffle_epi8(row[k], _mm256_adds_epu8(_mm256_xor_si256(a, key[k]), bias)));
            rb = _mm256_or_si256(rb, _mm256_shuffle_epi8(row[k], _mm256_adds_epu8(_mm256_xor_si256(b, key[k]), bias)));
        }
        _mm256_storeu_si256((__m256i *)(y + i), ra);
        _mm256_storeu_si256((__m256i *)(y + i + 32), rb);
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
