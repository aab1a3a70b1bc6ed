/* qcompiler C runtime: the elementwise kernels (conventions in qc_runtime.h). */
#ifndef QC_RT_ELEMENTWISE_H
#define QC_RT_ELEMENTWISE_H

#include "qc_runtime.h"

/* QLookup (qcompiler/core/lookup_ops.py): y[i] = table[x[i]] for i < n, an elementwise function of
 * one quantized tensor. The table is indexed by the STORED byte and holds stored bytes (the
 * emitter folds the int8 +128 shift into it); x and y do not overlap */
QC_RT_EXPORT void qc_rt_lookup(const uint8_t *x, uint8_t *y, int64_t n, const uint8_t table[256], int threads);

#endif
