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

static void qc_lookup_run(const uint8_t *restrict x, uint8_t *restrict y, int64_t n, const uint8_t *restrict table)
{
    for (int64_t i = 0; i < n; i++) y[i] = table[x[i]];
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
