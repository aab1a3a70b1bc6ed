/* The x86 model's call into the int8 GEMM (kernels/gemm_common.h ABI): C = requant(A * W^T + bias).
 * A is uint8 [m, k] (row stride lda), W packed for `isa` (qcompiler.backends.x86.gemm.pack_weights),
 * output uint8 [m, n] (row stride ldc) with the requantization `rq` (arrays of n_pad entries). */
#ifndef QC_X86_GEMM_CALL_H
#define QC_X86_GEMM_CALL_H

#include "qc_runtime.h"

QC_RT_EXPORT int qc_rt_gemm(int32_t isa, int64_t m, int64_t n, int64_t k, const uint8_t *a, int64_t lda,
                            const void *w, int64_t w_bytes, int32_t nr, int32_t kr, int32_t elem,
                            const int32_t *bias, const qc_rq *rq, uint8_t *c, int64_t ldc, int threads);

/* text of a GEMM error code */
QC_RT_EXPORT const char *qc_rt_gemm_strerror(int err);

#endif
