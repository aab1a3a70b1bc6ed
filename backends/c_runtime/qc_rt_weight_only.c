/* qcompiler C runtime: weight-only quantized tables. Each kernel's comment names the op of
 * qcompiler/core/weight_only_ops.py it implements bit for bit. */
#include "qc_rt_weight_only.h"

/* looked-up rows per chunk of the threaded loop; smaller jobs stay on the calling thread */
#define QC_WO_EMB_ROWS 16
#define QC_WO_EMB_SERIAL_BELOW 32768

/* one row of the table, dequantized exactly as QuantizedWeight.dequantize: one float32
 * multiply of the code's value by its group's scale */
static void qc_wo_dequantize_row(int32_t format, const void *codes, const float *scales, const uint8_t *zero_points,
                                 const float *nf4, int64_t row, int64_t dim, int64_t group, float *restrict out)
{
    const int64_t groups = dim / group;
    const float *s = scales + row * groups;
    if (format == QC_WO_INT8) {
        const int8_t *c = (const int8_t *)codes + row * dim;
        for (int64_t g = 0; g < groups; g++)
            for (int64_t j = g * group; j < (g + 1) * group; j++) out[j] = (float)c[j] * s[g];
        return;
    }
    const uint8_t *c = (const uint8_t *)codes + row * (dim / 2);
    for (int64_t g = 0; g < groups; g++) {
        const float sg = s[g];
        const int32_t zp = format == QC_WO_INT4 ? 8 : format == QC_WO_INT4_ASYM ? zero_points[row * groups + g] : 0;
        for (int64_t j = g * group; j < (g + 1) * group; j++) {
            const int32_t nibble = (c[j >> 1] >> ((j & 1) * 4)) & 15;
            out[j] = (format == QC_WO_NF4 ? nf4[nibble] : (float)(nibble - zp)) * sg;
        }
    }
}

typedef struct {
    const int64_t *ids;
    int64_t n, rows, dim, group;
    int32_t format;
    const void *codes;
    const float *scales, *nf4;
    const uint8_t *zero_points;
    float *y;
} qc_wo_embedding_job;

static void qc_wo_embedding_rows(const void *ctx, int64_t chunk, int slot)
{
    const qc_wo_embedding_job *j = (const qc_wo_embedding_job *)ctx;
    const int64_t i0 = chunk * QC_WO_EMB_ROWS, i1 = i0 + QC_WO_EMB_ROWS < j->n ? i0 + QC_WO_EMB_ROWS : j->n;
    (void)slot;
    for (int64_t i = i0; i < i1; i++)
        qc_wo_dequantize_row(j->format, j->codes, j->scales, j->zero_points, j->nf4, j->ids[i], j->dim, j->group,
                             j->y + i * j->dim);
}

int qc_rt_wo_embedding(const int64_t *ids, int64_t n, int32_t format, const void *codes, const float *scales,
                       const uint8_t *zero_points, const float *nf4, int64_t rows, int64_t dim, int64_t group,
                       float *y, int threads)
{
    (void)threads;              /* unused where the loop runs serially (a syntax check) */
    if (format < QC_WO_INT8 || format > QC_WO_NF4) return QC_RT_ERR_WO_LAYOUT;
    if (n < 0 || rows <= 0 || dim <= 0 || group <= 0 || rows > INT32_MAX || dim > INT32_MAX) return QC_RT_ERR_SIZE;
    if (dim % group != 0 || (format != QC_WO_INT8 && dim % 2 != 0)) return QC_RT_ERR_WO_LAYOUT;
    if (n == 0) return 0;
    if (ids == NULL || codes == NULL || scales == NULL || y == NULL) return QC_RT_ERR_NULL;
    if ((format == QC_WO_INT4_ASYM && zero_points == NULL) || (format == QC_WO_NF4 && nf4 == NULL))
        return QC_RT_ERR_NULL;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= rows) return -1;
    const qc_wo_embedding_job job = {ids, n, rows, dim, group, format, codes, scales, nf4, zero_points, y};
    const int nt = (threads <= 1 || n * dim < QC_WO_EMB_SERIAL_BELOW) ? 1 : threads;
    QC_RT_PARALLEL_FOR(qc_wo_embedding_rows, &job, (n + QC_WO_EMB_ROWS - 1) / QC_WO_EMB_ROWS, nt);
    return 0;
}
