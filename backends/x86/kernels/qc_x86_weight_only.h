/* x86 weight-only (int8 / int4 / NF4) and half-precision (bf16 / fp16) linear layers:
 * float32 in, float32 out, y[m, n] = x[m, :] . w[n, :] + bias[n] (qcompiler/core/weight_only_ops.py,
 * QWeightOnlyLinear and QHalfLinear). x [m, k] and y [m, n] are contiguous rows.
 *
 * Packed weights (backends/x86/weight_only.py writes them when the model is compiled): N is
 * padded to a multiple of 16 (two panels: the prefill micro-kernel's width) and cut into
 * panels of QC_WO_NR = 8 columns (one ymm of float32 lanes, one lane per column); K is cut into
 * blocks of QC_WO_KB = 8 (padded with codes whose value is 0):
 *   int4 / NF4: uint32 [n_pad / 8][k_pad / 8][8 lanes]: lane j holds column j's 8 nibbles of
 *               the block, nibble i (bits 4i..4i+3) = k0 + i. Symmetric int4 is stored as the
 *               signed nibble (code - 8) & 15, so one shift pair sign-extends it.
 *   int8:       int8 [n_pad / 8][k_pad][8]: the 8 columns of one k together.
 *   scales:     float32 [n_pad / 8][groups][8]; zero points (asymmetric int4) uint8, the same shape.
 *   half:       uint16 [n_pad / 8][k][8] (bfloat16 or float16 bits).
 * A scale group spans `group_blocks` blocks of 8 k (group size / 8, or every block when the
 * layer has one group per channel).
 *
 * Every entry checks its arguments before it touches memory and returns 0 or a code of the
 * GEMM's (qc_rt_gemm_strerror names it): 1 NULL pointer, 2 sizes, 4 packed size or format,
 * 5 CPU without the ISA, 9 negative threads. Lengths of scales, zero points and bias cannot be
 * checked from C: they hold the entries above (Python packs them). */
#ifndef QC_X86_WEIGHT_ONLY_H
#define QC_X86_WEIGHT_ONLY_H

#include "qc_rt_weight_only.h"

/* kernels: portable C, or AVX2 + FMA (+ F16C for float16 weights) */
enum { QC_WO_ISA_SCALAR = 1, QC_WO_ISA_AVX2 = 2 };
enum { QC_HALF_BF16 = 1, QC_HALF_FP16 = 2 };
enum { QC_WO_ERR_ISA = 5, QC_WO_ERR_THREADS = 9 };

#define QC_WO_NR 8
#define QC_WO_KB 8
#define QC_WO_N_ALIGN 16

typedef struct qc_wo_linear_weights {
    int32_t format;                 /* QC_WO_INT8 / INT4 / INT4_ASYM / NF4 (qc_rt_weight_only.h) */
    int64_t n, k;
    int64_t group_blocks;           /* blocks of 8 k per scale group */
    const void *codes;
    int64_t codes_bytes;            /* checked against the layout */
    const float *scales;
    const uint8_t *zero_points;     /* QC_WO_INT4_ASYM only */
    const float *nf4;               /* the 16 NF4 levels, QC_WO_NF4 only */
    const float *bias;              /* [n] float32, or NULL */
} qc_wo_linear_weights;

/* QWeightOnlyLinear: y = x . dequantize(w)^T + bias. compute_bf16: x and the dequantized weights
 * are rounded to bfloat16 first (compute="bfloat16"); xbuf then holds m * k floats of scratch
 * (the rounded x), else it may be NULL. */
QC_RT_EXPORT int qc_x86_wo_linear(int32_t isa, const float *x, int64_t m, const qc_wo_linear_weights *w,
                                  int32_t compute_bf16, float *xbuf, float *y, int threads);

/* QHalfLinear: y = h(x) . w^T + bias with h the rounding to the weights' type (half_type, ties
 * to even, as torch's .to()); xbuf: m * k floats of scratch (h(x)). */
QC_RT_EXPORT int qc_x86_half_linear(int32_t isa, const float *x, int64_t m, int64_t n, int64_t k, int32_t half_type,
                                    const uint16_t *w, int64_t w_bytes, const float *bias, float *xbuf, float *y,
                                    int threads);

#endif
