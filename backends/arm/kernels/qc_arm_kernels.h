/* qcompiler ARM (AArch64) int8 kernels: GEMM at three NEON feature levels, depthwise, and
 * their portable scalar references (groundwork for issue 11; no backend uses them yet).
 *
 * GEMM:   C[m, n] = requant( Σ_k (A[m, k] − za) · W[n, k] + bias[n] )   (QLinear / im2col QConv)
 * The result is bit for bit Requant.apply (qcompiler/core/integer_ops.py) in both modes,
 * through qc_requant's arithmetic (backends/c_runtime/qc_runtime.h), whose qc_rq it takes.
 *
 * Storage: int8 NATIVELY SIGNED (no +128 shift as on x86). NEON's sdot / smmla / smull are
 * signed × signed, so signed activations feed them without a conversion; a uint8 tensor
 * is stored shifted by −128 (q' = q − 128; zero point and clamp bounds shifted alike), so
 * (q' − zp') == (q − zp) — the mirror image of the x86 convention. za, rq->zp, rq->qmin and
 * rq->qmax are in that stored (int8) domain.
 * Weights: int8, symmetric (zero point 0), per-channel; −za · Σ_k W[n, k] is folded at run
 * time from column sums kept in the packed buffer, so the inner loop accumulates Σ A·W.
 * Arithmetic is int32 and wrapping: whenever the exact accumulator fits int32 (what
 * qcompiler's check_accumulator proves for every layer) the wrapped one equals it.
 * rq arrays (mult / m0 / shift) have one entry per output channel n.
 *
 * Levels (one object file each, built with the -march the level needs):
 *   neon     baseline ARMv8-A: smull + smlal2 (int16 pairs) + sadalp; tile 4x4, k by 16.
 *            Needs weights in [−127, 127] (int8_narrow, qcompiler's default) so that a
 *            pair of products fits int16; qc_arm_pack_neon refuses −128.
 *   dotprod  -march=armv8.2-a+dotprod: sdot (by element); tile 8x8, k by 4.
 *   i8mm     -march=armv8.6-a+i8mm: smmla (2x8 · 8x2 per instruction); tile 8x8, k by 8.
 * uint8 storage (the shared C runtime's: every activation uint8, int8 values stored + 128):
 * qc_arm_gemm_u8_<l> takes A, C, za and rq->zp / qmin / qmax in that uint8 domain. It packs
 * A with the sign bit flipped (u ^ 0x80 is u − 128 as int8) and runs the same tile loops
 * with za − 128; the epilogue's narrowing already stores [0, 255] as uint8.
 * Per level: qc_arm_packed_size_<l>(n, k) bytes (16-byte aligned buffer) for
 * qc_arm_pack_<l>(w[n][k], ...), done once per weight; qc_arm_work_size_<l>(k) bytes of
 * scratch (16-byte aligned) per calling thread for qc_arm_gemm_<l>, which packs A strip by
 * strip into it. Kernels never allocate. Threads: split M (distinct a / c / work).
 */
#ifndef QC_ARM_KERNELS_H
#define QC_ARM_KERNELS_H

#include <stdint.h>
#include "qc_runtime.h"     /* qc_rq, qc_requant, qc_window */

enum { QC_ARM_LEVEL_NEON = 0, QC_ARM_LEVEL_DOTPROD = 1, QC_ARM_LEVEL_I8MM = 2 };
#define QC_ARM_ERR_WEIGHT_RANGE (-2)   /* neon level: a weight of −128 */

/* ---- portable scalar references (any C compiler): the specification the NEON code is tested against ---- */

/* w unpacked [n][k]; bias may be NULL */
void qc_arm_gemm_ref(const int8_t *a, int64_t lda, int64_t m, int64_t n, int64_t k, int32_t za,
                     const int8_t *w, const int32_t *bias, const qc_rq *rq, int8_t *c, int64_t ldc);

/* QConv with groups == channels on NHWC int8: y[b, oy, ox, ch] =
 * requant(Σ_taps (x − zx) · w[ch][ky][kx] + bias[ch]), padded taps adding 0 (torch's zero
 * padding of x − zx); w unpacked [c][kh][kw] (torch's [c, 1, kh, kw]); bias may be NULL */
void qc_arm_depthwise_ref(const int8_t *x, int8_t *y, const qc_window *g, int32_t zx, const int8_t *w,
                          const int32_t *bias, const qc_rq *rq);

#if defined(__aarch64__)
/* ---- baseline NEON ---- */
int64_t qc_arm_packed_size_neon(int64_t n, int64_t k);
int64_t qc_arm_work_size_neon(int64_t k);
int qc_arm_pack_neon(const int8_t *w, int64_t n, int64_t k, void *packed);   /* 0 or QC_ARM_ERR_WEIGHT_RANGE */
void qc_arm_gemm_neon(const int8_t *a, int64_t lda, int64_t m, int64_t n, int64_t k, int32_t za,
                      const void *packed, const int32_t *bias, const qc_rq *rq, int8_t *c, int64_t ldc,
                      void *work);
void qc_arm_gemm_u8_neon(const uint8_t *a, int64_t lda, int64_t m, int64_t n, int64_t k, int32_t za,
                         const void *packed, const int32_t *bias, const qc_rq *rq, uint8_t *c, int64_t ldc,
                         void *work);

/* ---- dotprod ---- */
int64_t qc_arm_packed_size_dotprod(int64_t n, int64_t k);
int64_t qc_arm_work_size_dotprod(int64_t k);
int qc_arm_pack_dotprod(const int8_t *w, int64_t n, int64_t k, void *packed);
void qc_arm_gemm_dotprod(const int8_t *a, int64_t lda, int64_t m, int64_t n, int64_t k, int32_t za,
                         const void *packed, const int32_t *bias, const qc_rq *rq, int8_t *c, int64_t ldc,
                         void *work);
void qc_arm_gemm_u8_dotprod(const uint8_t *a, int64_t lda, int64_t m, int64_t n, int64_t k, int32_t za,
                            const void *packed, const int32_t *bias, const qc_rq *rq, uint8_t *c, int64_t ldc,
                            void *work);

/* ---- i8mm ---- */
int64_t qc_arm_packed_size_i8mm(int64_t n, int64_t k);
int64_t qc_arm_work_size_i8mm(int64_t k);
int qc_arm_pack_i8mm(const int8_t *w, int64_t n, int64_t k, void *packed);
void qc_arm_gemm_i8mm(const int8_t *a, int64_t lda, int64_t m, int64_t n, int64_t k, int32_t za,
                      const void *packed, const int32_t *bias, const qc_rq *rq, int8_t *c, int64_t ldc,
                      void *work);
void qc_arm_gemm_u8_i8mm(const uint8_t *a, int64_t lda, int64_t m, int64_t n, int64_t k, int32_t za,
                         const void *packed, const int32_t *bias, const qc_rq *rq, uint8_t *c, int64_t ldc,
                         void *work);

/* ---- depthwise, baseline NEON: any kh x kw, stride, padding, dilation (3x3 s1/s2 is the
 * tested case) ---- packed weights int16 [kh*kw][c rounded up to 8], zero beyond c */
int64_t qc_arm_dw_packed_size_neon(int64_t c, int32_t kh, int32_t kw);
void qc_arm_dw_pack_neon(const int8_t *w, int64_t c, int32_t kh, int32_t kw, void *packed);
void qc_arm_depthwise_neon(const int8_t *x, int8_t *y, const qc_window *g, int32_t zx, const void *packed,
                           const int32_t *bias, const qc_rq *rq);
#endif

#endif
