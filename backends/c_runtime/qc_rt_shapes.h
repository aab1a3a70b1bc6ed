/* qcompiler C runtime: the shapes kernels (conventions in qc_runtime.h).
 *
 * Strided loops over at most QC_RT_MAX_DIMS dims: y is written contiguously in the order of
 * the dims, each source is read at sum(i[k] * stride[k]) (stride 0: broadcast / expand). The
 * emitter sorts and merges the dims of a view first (backends/c_emitter/lower_shapes.py). */
#ifndef QC_RT_SHAPES_H
#define QC_RT_SHAPES_H

#include "qc_runtime.h"

#define QC_RT_MAX_DIMS 6

/* value-preserving ops of the INTEGER graph that copy (permute / transpose, getitem slices,
 * chunk / split items, expand / repeat, reshapes across layouts, channel shuffle): no
 * arithmetic, y[i0, .., i{ndim-1}] = x[sum i[k] * stride[k]], 1 <= ndim <= QC_RT_MAX_DIMS */
QC_RT_EXPORT void qc_rt_strided_copy(const uint8_t *x, uint8_t *y, int ndim, const int64_t *size,
                                     const int64_t *stride, int threads);

/* QAdd with broadcasting: qc_rt_add's arithmetic on a[.. stride_a] and b[.. stride_b] */
QC_RT_EXPORT void qc_rt_add_strided(const uint8_t *a, const uint8_t *b, uint8_t *y, int ndim, const int64_t *size,
                                    const int64_t *stride_a, const int64_t *stride_b, int32_t za, int32_t zb,
                                    int32_t mode, float ma, float mb, int64_t m0a, int64_t m0b, int32_t shift,
                                    int32_t zo, int32_t qmin, int32_t qmax, int threads);

/* QMul with broadcasting: qc_rt_mul's arithmetic, requant((a - za) * (b - zb)) per tensor */
QC_RT_EXPORT void qc_rt_mul_strided(const uint8_t *a, const uint8_t *b, uint8_t *y, int ndim, const int64_t *size,
                                    const int64_t *stride_a, const int64_t *stride_b, int32_t za, int32_t zb,
                                    const qc_rq *rq, int threads);

/* QEmbedding (qcompiler/core/embedding_ops.py): y[i, :] = table[ids[i], :] for i < n, rows of
 * `dim` stored bytes. Every index is checked against [0, rows) before any row is copied;
 * returns 0, or -1 (nothing written) when one is outside */
QC_RT_EXPORT int qc_rt_embedding(const int64_t *ids, int64_t n, const uint8_t *table, int64_t rows, int64_t dim,
                                 uint8_t *y);

#endif
