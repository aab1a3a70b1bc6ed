/* qcompiler C runtime: the reduction kernels (conventions in qc_runtime.h). */
#ifndef QC_RT_REDUCE_H
#define QC_RT_REDUCE_H

#include "qc_runtime.h"

/* QMean (qcompiler/core/reduce_ops.py) over the middle axis of [outer, len, inner] (element
 * (o, l, i) at (o * len + l) * inner + i): y[o * inner + i] = qc_requant(sum_l (x - zx), rq, 0).
 * Exact int32 sums: the emitter proved len * max|x - zx| < 2^31; rq holds one multiplier
 * (M = s_in / (s_out * len)); stored domain */
QC_RT_EXPORT void qc_rt_mean(const uint8_t *x, uint8_t *y, int64_t outer, int64_t len, int64_t inner, int32_t zx,
                             const qc_rq *rq, int threads);

#endif
