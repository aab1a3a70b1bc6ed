/* The x86 model's call into the int8 GEMM (kernels/gemm_common.h ABI): C = requant(A * W^T + bias).
 * A is uint8 [m, k] (row stride lda), W packed for `isa` (qcompiler.backends.x86.gemm.pack_weights),
 * output uint8 [m, n] (row stride ldc) with the requantization `rq` (arrays of n_pad entries);
 * `add` (NULL: none) fuses a residual add into the epilogue (AVX-512 VNNI / AMX kernels), its
 * other addend indexed by output row like C. */
#ifndef QC_X86_GEMM_CALL_H
#define QC_X86_GEMM_CALL_H

#include "qc_runtime.h"

QC_RT_EXPORT int qc_rt_gemm(int32_t isa, int64_t m, int64_t n, int64_t k, const uint8_t *a, int64_t lda,
                            const void *w, int64_t w_bytes, int32_t nr, int32_t kr, int32_t elem,
                            const int32_t *bias, const qc_rq *rq, uint8_t *c, int64_t ldc, const qc_rt_add_params *add,
                            int threads);

/* QConv by blocks of output rows: per thread, im2col of a block of rows [n*oh*ow] (channels
 * [c0, c0 + cg) of the NHWC input x, padded with `pad`) into a buffer of about block_bytes
 * that stays in cache, then that block's GEMM with the weights W [n, kh*kw*cg]; output rows
 * of stride ldc. The whole im2col matrix never exists (qc_rt_im2col + qc_rt_gemm write and
 * read it back through memory). Returns a GEMM error code (0 = success). */
QC_RT_EXPORT int qc_rt_conv_gemm(int32_t isa, const uint8_t *x, const qc_window *g, int64_t c0, int64_t cg,
                                 uint8_t pad, int64_t n, const void *w, int64_t w_bytes, int32_t nr, int32_t kr,
                                 int32_t elem, const int32_t *bias, const qc_rq *rq, uint8_t *c, int64_t ldc,
                                 const qc_rt_add_params *add, int64_t block_bytes, int threads);

/* QConv with stride 1 on AMX without im2col: each 64-k block of the GEMM reads a shifted view
 * of x (NHWC) with a border of `pad` (qc_gemm_shifted_amx); rows that fall on the border are
 * computed and dropped. A K block is 64 channels of one tap (channels a multiple of 64) or,
 * for thin inputs (kw * channels <= 64), a whole kernel row of taps: W then has K = kh * 64,
 * the taps' kw * c weights of each kernel row first and zeros after them. Threads take blocks
 * of rows whose slab of the padded input is about block_bytes: each builds it in a buffer of
 * its own, where it stays in cache over the taps (without padding, x is read in place).
 * isa: QC_ISA_AMX (or its emulation). */
QC_RT_EXPORT int qc_rt_conv_shifted(int32_t isa, const uint8_t *x, const qc_window *g, uint8_t pad, int64_t n,
                                    const void *w, int64_t w_bytes, int32_t nr, int32_t kr, int32_t elem,
                                    const int32_t *bias, const qc_rq *rq, uint8_t *c, int64_t ldc,
                                    const qc_rt_add_params *add, int64_t block_bytes, int threads);

/* text of a GEMM error code */
QC_RT_EXPORT const char *qc_rt_gemm_strerror(int err);

#endif
