/* qcompiler C runtime: the reduction kernels. Each kernel's comment names the integer op of
 * qcompiler/core it implements bit for bit (qcompiler/core/reduce_ops.py). */
#include "qc_rt_reduce.h"

/* In the runtime TU qc_runtime.c comes first and defines QC_RT_PARALLEL_FOR; compiled on
 * its own (a syntax check), the loops run serially. */
#ifndef QC_RT_PARALLEL_FOR
typedef void (*qc_rt_chunk_fn)(const void *ctx, int64_t chunk, int slot);
#define QC_RT_PARALLEL_FOR(fn, ctx, total, nt) qc_rd_serial_for((fn), (ctx), (total))
static void qc_rd_serial_for(qc_rt_chunk_fn fn, const void *ctx, int64_t total)
{
    for (int64_t i = 0; i < total; i++) fn(ctx, i, 0);
}
#endif

/* threads for `work` elementary operations: small ones stay on the calling thread */
static inline int qc_rd_threads(int threads, int64_t work)
{
    return (threads <= 1 || work < 32768) ? 1 : threads;
}

/* columns of one block of the inner > 1 loop (int32 sums on the stack), rows of one chunk
 * of the inner == 1 loop */
#define QC_RD_COLS 256
#define QC_RD_ROWS 64

typedef struct {
    const uint8_t *x;
    uint8_t *y;
    int64_t outer, len, inner, col_blocks;
    int32_t zx;
    const qc_rq *rq;
} qc_rd_mean_job;

/* inner == 1: each output is the sum of one contiguous row of len bytes. Sums of the centred
 * values: every partial sum is bounded by len * max|x - zx| < 2^31 (a sum of raw bytes would not
 * be, with zx near the middle of the range) */
static void qc_rd_mean_rows(const void *ctx, int64_t chunk, int slot)
{
    const qc_rd_mean_job *j = (const qc_rd_mean_job *)ctx;
    const int64_t o0 = chunk * QC_RD_ROWS, on = j->outer - o0 < QC_RD_ROWS ? j->outer - o0 : QC_RD_ROWS;
    const int64_t len = j->len;
    const int32_t zx = j->zx;
    (void)slot;
    for (int64_t o = o0; o < o0 + on; o++) {
        const uint8_t *restrict px = j->x + o * len;
        int32_t acc = 0;
        for (int64_t l = 0; l < len; l++) acc += (int32_t)px[l] - zx;
        j->y[o] = (uint8_t)qc_requant(acc, j->rq, 0);
    }
}

/* inner > 1: one block of up to QC_RD_COLS columns of one outer index, summed down the rows */
static void qc_rd_mean_cols(const void *ctx, int64_t chunk, int slot)
{
    const qc_rd_mean_job *j = (const qc_rd_mean_job *)ctx;
    const int64_t o = chunk / j->col_blocks, c0 = (chunk % j->col_blocks) * QC_RD_COLS;
    const int64_t inner = j->inner, cn = inner - c0 < QC_RD_COLS ? inner - c0 : QC_RD_COLS;
    const uint8_t *x = j->x + o * j->len * inner + c0;
    uint8_t *restrict y = j->y + o * inner + c0;
    const int32_t zx = j->zx;
    int32_t acc[QC_RD_COLS];
    (void)slot;
    for (int64_t c = 0; c < cn; c++) acc[c] = 0;
    for (int64_t l = 0; l < j->len; l++) {
        const uint8_t *restrict px = x + l * inner;
        for (int64_t c = 0; c < cn; c++) acc[c] += (int32_t)px[c] - zx;
    }
    for (int64_t c = 0; c < cn; c++) y[c] = (uint8_t)qc_requant(acc[c], j->rq, 0);
}

void qc_rt_mean(const uint8_t *x, uint8_t *y, int64_t outer, int64_t len, int64_t inner, int32_t zx,
                const qc_rq *rq, int threads)
{
    (void)threads;              /* unused where the loops run serially (a syntax check) */
    const int64_t col_blocks = (inner + QC_RD_COLS - 1) / QC_RD_COLS;
    const qc_rd_mean_job job = {x, y, outer, len, inner, col_blocks, zx, rq};
    if (inner == 1)
        QC_RT_PARALLEL_FOR(qc_rd_mean_rows, &job, (outer + QC_RD_ROWS - 1) / QC_RD_ROWS,
                           qc_rd_threads(threads, outer * len));
    else
        QC_RT_PARALLEL_FOR(qc_rd_mean_cols, &job, outer * col_blocks, qc_rd_threads(threads, outer * len * inner));
}
