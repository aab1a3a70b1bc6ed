/* dotprod (ARMv8.2-A + FEAT_DotProd) int8 GEMM: QLinear.forward / im2col QConv (see
 * qc_arm_kernels.h). Tile 8x8, k by 4: per k block, two W vectors (4 columns x 4 k each) and
 * two A vectors (4 rows x 4 k each); sdot by element: acc[row][cols] += W_cols · A_row, 16
 * sdot (256 MACs) per 4 loads. Accumulator lanes are columns, as the epilogue wants. */
#if !defined(__ARM_FEATURE_DOTPROD)
#error "qc_arm_gemm_dotprod.c needs -march=armv8.2-a+dotprod (or later)"
#endif
#include "qc_arm_neon_common.h"

#define MR 8
#define NR 8
#define KB 4

int64_t qc_arm_packed_size_dotprod(int64_t n, int64_t k) { return qc_arm_packed_size(n, k, NR, KB); }
int64_t qc_arm_work_size_dotprod(int64_t k) { return (int64_t)MR * QC_ARM_ROUND_UP(k, KB); }

int qc_arm_pack_dotprod(const int8_t *w, int64_t n, int64_t k, void *packed)
{
    qc_arm_pack_w(w, n, k, NR, KB, packed);
    return 0;
}

#define ROW(r, av, lane)                                  \
    c##r##0 = vdotq_laneq_s32(c##r##0, b0, av, lane); \
    c##r##1 = vdotq_laneq_s32(c##r##1, b1, av, lane)

static void dotprod_tile_8x8(const int8_t *pa, const int8_t *pb, int64_t nkb, const int32_t *bias, const int32_t *colsum,
                     int32_t za, const qc_rq *rq, int64_t n0, int nr, int mr, int8_t *c, int64_t ldc)
{
    int32x4_t c00 = vdupq_n_s32(0), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
              c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
    QC_ARM_MCA_BEGIN("dotprod");
    /* unrolled twice: the loop's 5 bookkeeping instructions per 16 sdot cost 1.25x on a
     * 3-wide front end (llvm-mca's Cortex-A57 tables, which it uses for N1 / A76 / X1) */
#pragma GCC unroll 2
    for (int64_t kb = 0; kb < nkb; kb++, pa += MR * KB, pb += NR * KB) {
        int8x16_t a0 = vld1q_s8(pa), a1 = vld1q_s8(pa + 16), b0 = vld1q_s8(pb), b1 = vld1q_s8(pb + 16);
        ROW(0, a0, 0); ROW(1, a0, 1); ROW(2, a0, 2); ROW(3, a0, 3);
        ROW(4, a1, 0); ROW(5, a1, 1); ROW(6, a1, 2); ROW(7, a1, 3);
    }
    QC_ARM_MCA_END("dotprod");
    const int32x4_t lo[8] = {c00, c10, c20, c30, c40, c50, c60, c70};
    const int32x4_t hi[8] = {c01, c11, c21, c31, c41, c51, c61, c71};
    qc_arm_ep4 e0 = qc_arm_ep4_cols(bias, colsum, za, rq, n0, 0, nr);
    qc_arm_ep4 e1 = qc_arm_ep4_cols(bias, colsum, za, rq, n0, 1, nr);
    for (int i = 0; i < mr; i++) qc_arm_row8_out(&e0, &e1, lo[i], hi[i], c + i * ldc, nr);
}

void qc_arm_gemm_dotprod(const int8_t *a, int64_t lda, int64_t m, int64_t n, int64_t k, int32_t za,
                         const void *packed, const int32_t *bias, const qc_rq *rq, int8_t *c, int64_t ldc,
                         void *work)
{
    qc_arm_gemm_drive(a, lda, m, n, k, za, packed, bias, rq, c, ldc, work, MR, NR, KB, QC_ARM_A_S8, dotprod_tile_8x8);
}

void qc_arm_gemm_u8_dotprod(const uint8_t *a, int64_t lda, int64_t m, int64_t n, int64_t k, int32_t za,
                            const void *packed, const int32_t *bias, const qc_rq *rq, uint8_t *c, int64_t ldc,
                            void *work)
{
    qc_arm_gemm_drive((const int8_t *)a, lda, m, n, k, za - 128, packed, bias, rq, (int8_t *)c, ldc, work, MR, NR,
                      KB, QC_ARM_A_U8, dotprod_tile_8x8);
}

/* one translation unit may hold every level (the runtime's unity build) */
#undef MR
#undef NR
#undef KB
#undef ROW
