/* Dynamic int8 linear layers (QDynamicLinear, qcompiler/core/dynamic_ops.py) on x86, bit for bit.
 *
 * y [m, n] = x [m, k] · Wᵀ with x float32, quantized per row (per_token) or per tensor at run
 * time, W int8 per-channel packed ahead of time (backends/x86/dynamic.py), float epilogue
 *     y[r, c] = f32(acc[r, c]) · (s[r] · w_scale[c]) (+ bias[c])
 * The kernels are in backends/x86/kernels/dynamic_linear.c. */
#ifndef QC_X86_DYNAMIC_H
#define QC_X86_DYNAMIC_H

#include "qc_runtime.h"

/* isa: the kernel (gemm_common.h ids): QC_ISA_SCALAR and QC_ISA_AVX2 take W packed for AVX2
 * (nr 16, kr 2, int16), QC_ISA_AVXVNNI (and its emulation) W packed for AVX-VNNI (nr 16, kr 4,
 * int8) plus colsum (n_pad int32: Σ_k W[c, k]), NULL otherwise. w_scale and bias (NULL: none)
 * hold n_pad floats. scratch: qc_rt_dynamic_linear_scratch(isa, m, k) bytes, 64-byte aligned.
 * Returns 0, QC_RT_ERR_NONFINITE when x holds a NaN or an infinity, QC_RT_ERR_DYNAMIC_RANGE when an
 * asymmetric range's max − min overflows float32 (y is then unspecified), or a positive GEMM error
 * code (qc_rt_gemm_strerror) for arguments it refuses before touching memory. */
#define QC_RT_ERR_DYNAMIC_RANGE 10
QC_RT_EXPORT int qc_rt_dynamic_linear(int32_t isa, const float *x, int64_t m, int64_t k, int64_t n,
                                      const void *w, int64_t w_bytes, int32_t nr, int32_t kr, int32_t elem,
                                      const int32_t *colsum, const float *w_scale, const float *bias,
                                      int32_t per_token, int32_t symmetric, float *y,
                                      void *scratch, int64_t scratch_bytes, int threads);

/* bytes of scratch qc_rt_dynamic_linear needs (-1: an isa it has no kernel for, or bad sizes) */
QC_RT_EXPORT int64_t qc_rt_dynamic_linear_scratch(int32_t isa, int64_t m, int64_t k);

#endif
