/* qcompiler C runtime: weight-only quantized tables (conventions in qc_runtime.h).
 *
 * The weight formats of qcompiler/core/weight_only_ops.py (QuantizedWeight), shared by every
 * C target; a target's weight-only linear kernels take the same format ids. Dequantization is
 * exact, as the reference computes it (one float32 multiply, -ffp-contract=off):
 *   QC_WO_INT8       code int8 in [-127, 127]        w = (float)code * s
 *   QC_WO_INT4       nibble in [0, 15], symmetric    w = (float)(nibble - 8) * s
 *   QC_WO_INT4_ASYM  nibble in [0, 15], zero point   w = (float)(nibble - zp) * s
 *   QC_WO_NF4        nibble in [0, 15]               w = nf4[nibble] * s  (the 16 NF4 levels)
 * 4-bit codes are packed two per byte along the row: low nibble = even column, high = odd.
 * Scales (and zero points) are per group of `group` consecutive columns of a row: [rows, dim / group]. */
#ifndef QC_RT_WEIGHT_ONLY_H
#define QC_RT_WEIGHT_ONLY_H

#include "qc_runtime.h"

enum { QC_WO_INT8 = 1, QC_WO_INT4 = 2, QC_WO_INT4_ASYM = 3, QC_WO_NF4 = 4 };

/* the weights are not in a format the kernel knows (format id, group size against the row
 * length, odd rows of 4-bit codes): the GEMM's QC_ERR_LAYOUT, so strerror names it */
enum { QC_RT_ERR_WO_LAYOUT = 4 };

/* QWeightOnlyEmbedding: y[i, :] = dequantize(row ids[i]) (float32, dim values) for i < n.
 * codes: [rows, dim] int8, or [rows, dim / 2] packed nibbles; scales / zero_points:
 * [rows, dim / group] (zero_points for QC_WO_INT4_ASYM only, nf4: the 16 levels for QC_WO_NF4
 * only). Checks the pointers and sizes, then every index against [0, rows), before it writes
 * anything. Returns 0, -1 when an index is outside the table, or a QC_RT_ERR_* code. */
QC_RT_EXPORT int qc_rt_wo_embedding(const int64_t *ids, int64_t n, int32_t format, const void *codes,
                                    const float *scales, const uint8_t *zero_points, const float *nf4,
                                    int64_t rows, int64_t dim, int64_t group, float *y, int threads);

#endif
