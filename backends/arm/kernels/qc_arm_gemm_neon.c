/* Baseline NEON (ARMv8-A) int8 GEMM: QLinear.forward / im2col QConv (see qc_arm_kernels.h).
 * Tile 4x4, k by 16: per (row, column) pair and 16 k, smull (8 products, int16) + smlal2
 * (8 more into the same lanes) + sadalp (pairs into int32) — the ruy/gemmlowp scheme.
 * A pair of products fits int16 only while |w| <= 127: 2 · 128 · 127 = 32512. */
#include "qc_arm_neon_common.h"

#define MR 4
#define NR 4
#define KB 16

int64_t qc_arm_packed_size_neon(int64_t n, int64_t k) { return qc_arm_packed_size(n, k, NR, KB); }
int64_t qc_arm_work_size_neon(int64_t k) { return (int64_t)MR * QC_ARM_ROUND_UP(k, KB); }

int qc_arm_pack_neon(const int8_t *w, int64_t n, int64_t k, void *packed)
{
    for (int64_t i = 0; i < n * k; i++)
        if (w[i] == -128) return QC_ARM_ERR_WEIGHT_RANGE;
    qc_arm_pack_w(w, n, k, NR, KB, packed);
    return 0;
}

#define MAC(acc, a, b) acc = vpadalq_s16(acc, vmlal_high_s8(vmull_s8(vget_low_s8(a), vget_low_s8(b)), a, b))
#define ROW(r)                                                                                               \
    MAC(c##r##0, a##r, b0); MAC(c##r##1, a##r, b1); MAC(c##r##2, a##r, b2); MAC(c##r##3, a##r, b3)

static void tile_4x4(const int8_t *pa, const int8_t *pb, int64_t nkb, const int32_t *bias, const int32_t *colsum,
                     int32_t za, const qc_rq *rq, int64_t n0, int nr, int mr, int8_t *c, int64_t ldc)
{
    int32x4_t c00 = vdupq_n_s32(0), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00,
              c13 = c00, c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00,
              c33 = c00;
    QC_ARM_MCA_BEGIN("neon");
    for (int64_t kb = 0; kb < nkb; kb++, pa += MR * KB, pb += NR * KB) {
        int8x16_t a0 = vld1q_s8(pa), a1 = vld1q_s8(pa + 16), a2 = vld1q_s8(pa + 32), a3 = vld1q_s8(pa + 48);
        int8x16_t b0 = vld1q_s8(pb), b1 = vld1q_s8(pb + 16), b2 = vld1q_s8(pb + 32), b3 = vld1q_s8(pb + 48);
        ROW(0); ROW(1); ROW(2); ROW(3);
    }
    QC_ARM_MCA_END("neon");
    /* horizontal sums: row r's 4 columns in one vector */
    int32x4_t r[4] = {
        vpaddq_s32(vpaddq_s32(c00, c01), vpaddq_s32(c02, c03)),
        vpaddq_s32(vpaddq_s32(c10, c11), vpaddq_s32(c12, c13)),
        vpaddq_s32(vpaddq_s32(c20, c21), vpaddq_s32(c22, c23)),
        vpaddq_s32(vpaddq_s32(c30, c31), vpaddq_s32(c32, c33)),
    };
    qc_arm_ep4 e = qc_arm_ep4_cols(bias, colsum, za, rq, n0, 0, nr);
    for (int i = 0; i < mr; i++) {
        int16x4_t q = qc_arm_ep4_apply(&e, r[i]);
        qc_arm_store4(c + i * ldc, vmovn_s16(vcombine_s16(q, q)), nr);
    }
}

/* flatten: the tile is inlined into each entry point, as when there was only one (out of line,
 * its register allocation spilled more: llvm-mca 36 instead of 32 cycles per k block on
 * Neoverse N1) */
__attribute__((flatten))
void qc_arm_gemm_neon(const int8_t *a, int64_t lda, int64_t m, int64_t n, int64_t k, int32_t za,
                      const void *packed, const int32_t *bias, const qc_rq *rq, int8_t *c, int64_t ldc,
                      void *work)
{
    qc_arm_gemm_drive(a, lda, m, n, k, za, packed, bias, rq, c, ldc, work, MR, NR, KB, QC_ARM_A_S8, tile_4x4);
}

__attribute__((flatten))
void qc_arm_gemm_u8_neon(const uint8_t *a, int64_t lda, int64_t m, int64_t n, int64_t k, int32_t za,
                         const void *packed, const int32_t *bias, const qc_rq *rq, uint8_t *c, int64_t ldc,
                         void *work)
{
    qc_arm_gemm_drive((const int8_t *)a, lda, m, n, k, za - 128, packed, bias, rq, (int8_t *)c, ldc, work, MR, NR,
                      KB, QC_ARM_A_U8, tile_4x4);
}

/* one translation unit may hold every level (the runtime's unity build) */
#undef MR
#undef NR
#undef KB
#undef MAC
#undef ROW
