/* The ARM model's call into the int8 GEMM kernels (backends/arm/kernels/qc_arm_kernels.h):
 * C = requant(A · Wᵀ + bias) on the shared runtime's storage (qc_runtime.h: every activation
 * uint8, int8 values stored + 128). A is uint8 [m, k] (row stride lda), C uint8 [m, n] (row
 * stride ldc); za and rq->zp / qmin / qmax are in that stored uint8 domain; rq's arrays and
 * bias (NULL: none) have n entries. W is packed for `level` (QC_ARM_LEVEL_*) by
 * qc_arm_pack_<level> or qcompiler.backends.arm.gemm.pack_weights, packed_bytes long.
 *
 * One runtime build per level, compiled with that level's -march (neon: armv8-a, dotprod:
 * armv8.2-a+dotprod, i8mm: armv8.6-a+i8mm): a level its -march lacks is not compiled in and
 * is refused with QC_ARM_RT_ERR_LEVEL; one the CPU lacks (Linux hwcaps) with
 * QC_ARM_RT_ERR_CPU, instead of faulting on an illegal instruction.
 */
#ifndef QC_ARM_GEMM_CALL_H
#define QC_ARM_GEMM_CALL_H

#include "qc_runtime.h"

/* error codes: 1 .. 9 mean what the x86 GEMM's codes of those numbers mean (gemm_common.h) */
enum {
    QC_ARM_RT_OK = 0,
    QC_ARM_RT_ERR_NULL = 1,       /* a required pointer is NULL */
    QC_ARM_RT_ERR_SIZE = 2,       /* m, n or k not in [1, 2^31) */
    QC_ARM_RT_ERR_STRIDE = 3,     /* lda < k or ldc < n */
    QC_ARM_RT_ERR_LAYOUT = 4,     /* packed_bytes is not qc_arm_packed_size_<level>(n, k) */
    QC_ARM_RT_ERR_LEVEL = 5,      /* level unknown, or not compiled into this build */
    QC_ARM_RT_ERR_PARAM = 6,      /* bad za or requantization parameters */
    QC_ARM_RT_ERR_NOMEM = 7,      /* a thread's A-strip scratch could not be allocated */
    QC_ARM_RT_ERR_THREADS = 9,    /* negative thread count */
    QC_ARM_RT_ERR_CPU = 10        /* this CPU lacks the level's instructions */
};

/* threads: 0 = every CPU this process may use; the call runs serially below
 * QC_ARM_RT_SERIAL_MACS multiply-adds. Returns QC_ARM_RT_OK or an error code (C untouched). */
QC_RT_EXPORT int qc_arm_rt_gemm(int32_t level, int64_t m, int64_t n, int64_t k, const uint8_t *a, int64_t lda,
                                int32_t za, const void *packed, int64_t packed_bytes, const int32_t *bias,
                                const qc_rq *rq, uint8_t *c, int64_t ldc, int threads);

/* QConv (one group) by blocks of output rows: im2col of a block, then its GEMM, per thread
 * (qc_rt_conv_blocked of the shared runtime); the arguments as qc_arm_rt_gemm's, with the
 * window g, channels [c0, c0 + cg) of the NHWC input x, padded with `pad`. */
QC_RT_EXPORT int qc_arm_rt_conv_gemm(int32_t level, const uint8_t *x, const qc_window *g, int64_t c0, int64_t cg,
                                     uint8_t pad, int64_t n, int32_t za, const void *packed, int64_t packed_bytes,
                                     const int32_t *bias, const qc_rq *rq, uint8_t *c, int64_t ldc,
                                     int64_t block_bytes, int threads);

/* bit (1 << QC_ARM_LEVEL_*) set for each level compiled into this build */
QC_RT_EXPORT int qc_arm_rt_levels(void);

/* text of an error code; qc_rt_gemm_strerror is the same under the name every C target's
 * runtime exports (the model's loader asks it) */
QC_RT_EXPORT const char *qc_arm_rt_strerror(int err);
QC_RT_EXPORT const char *qc_rt_gemm_strerror(int err);

#endif
