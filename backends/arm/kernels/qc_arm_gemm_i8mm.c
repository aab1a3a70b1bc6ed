/* i8mm (ARMv8.6-A + FEAT_I8MM) int8 GEMM: QLinear.forward / im2col QConv (see
 * qc_arm_kernels.h). Tile 8x8, k by 8: smmla multiplies a row pair (2 x 8 k) by a column
 * pair (8 k x 2) into a 2x2 int32 block, 32 MACs; 16 smmla (512 MACs) per 8 loads. Signed x
 * signed (smmla, not usmmla) since activations are stored as int8. */
#if !defined(__ARM_FEATURE_MATMUL_INT8)
#error "qc_arm_gemm_i8mm.c needs -march=armv8.6-a+i8mm (or later)"
#endif
#include "qc_arm_neon_common.h"

#define MR 8
#define NR 8
#define KB 8

int64_t qc_arm_packed_size_i8mm(int64_t n, int64_t k) { return qc_arm_packed_size(n, k, NR, KB); }
int64_t qc_arm_work_size_i8mm(int64_t k) { return (int64_t)MR * QC_ARM_ROUND_UP(k, KB); }

int qc_arm_pack_i8mm(const int8_t *w, int64_t n, int64_t k, void *packed)
{
    qc_arm_pack_w(w, n, k, NR, KB, packed);
    return 0;
}

#define PAIR(p, av) \
    c##p##0 = vmmlaq_s32(c##p##0, av, b0); c##p##1 = vmmlaq_s32(c##p##1, av, b1); \
    c##p##2 = vmmlaq_s32(c##p##2, av, b2); c##p##3 = vmmlaq_s32(c##p##3, av, b3)

/* rows 2p (zip1) or 2p + 1 (zip2) of two 2x2 blocks [r0c0 r0c1 r1c0 r1c1]: 4 columns */
#define ROWS(x, y, zip) vreinterpretq_s32_s64(zip(vreinterpretq_s64_s32(x), vreinterpretq_s64_s32(y)))

static void i8mm_tile_8x8(const int8_t *pa, const int8_t *pb, int64_t nkb, const int32_t *bias, const int32_t *colsum,
                     int32_t za, const qc_rq *rq, int64_t n0, int nr, int mr, int8_t *c, int64_t ldc)
{
    int32x4_t c00 = vdupq_n_s32(0), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00,
              c13 = c00, c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00,
              c33 = c00;
    QC_ARM_MCA_BEGIN("i8mm");
    for (int64_t kb = 0; kb < nkb; kb++, pa += MR * KB, pb += NR * KB) {
        int8x16_t a0 = vld1q_s8(pa), a1 = vld1q_s8(pa + 16), a2 = vld1q_s8(pa + 32), a3 = vld1q_s8(pa + 48);
        int8x16_t b0 = vld1q_s8(pb), b1 = vld1q_s8(pb + 16), b2 = vld1q_s8(pb + 32), b3 = vld1q_s8(pb + 48);
        PAIR(0, a0); PAIR(1, a1); PAIR(2, a2); PAIR(3, a3);
    }
    QC_ARM_MCA_END("i8mm");
    const int32x4_t lo[8] = {
        ROWS(c00, c01, vzip1q_s64), ROWS(c00, c01, vzip2q_s64), ROWS(c10, c11, vzip1q_s64), ROWS(c10, c11, vzip2q_s64),
        ROWS(c20, c21, vzip1q_s64), ROWS(c20, c21, vzip2q_s64), ROWS(c30, c31, vzip1q_s64), ROWS(c30, c31, vzip2q_s64),
    };
    const int32x4_t hi[8] = {
        ROWS(c02, c03, vzip1q_s64), ROWS(c02, c03, vzip2q_s64), ROWS(c12, c13, vzip1q_s64), ROWS(c12, c13, vzip2q_s64),
        ROWS(c22, c23, vzip1q_s64), ROWS(c22, c23, vzip2q_s64), ROWS(c32, c33, vzip1q_s64), ROWS(c32, c33, vzip2q_s64),
    };
    qc_arm_ep4 e0 = qc_arm_ep4_cols(bias, colsum, za, rq, n0, 0, nr);
    qc_arm_ep4 e1 = qc_arm_ep4_cols(bias, colsum, za, rq, n0, 1, nr);
    for (int i = 0; i < mr; i++) qc_arm_row8_out(&e0, &e1, lo[i], hi[i], c + i * ldc, nr);
}

void qc_arm_gemm_i8mm(const int8_t *a, int64_t lda, int64_t m, int64_t n, int64_t k, int32_t za,
                      const void *packed, const int32_t *bias, const qc_rq *rq, int8_t *c, int64_t ldc,
                      void *work)
{
    qc_arm_gemm_drive(a, lda, m, n, k, za, packed, bias, rq, c, ldc, work, MR, NR, KB, QC_ARM_A_S8, i8mm_tile_8x8);
}

void qc_arm_gemm_u8_i8mm(const uint8_t *a, int64_t lda, int64_t m, int64_t n, int64_t k, int32_t za,
                         const void *packed, const int32_t *bias, const qc_rq *rq, uint8_t *c, int64_t ldc,
                         void *work)
{
    qc_arm_gemm_drive((const int8_t *)a, lda, m, n, k, za - 128, packed, bias, rq, (int8_t *)c, ldc, work, MR, NR,
                      KB, QC_ARM_A_U8, i8mm_tile_8x8);
}

/* one translation unit may hold every level (the runtime's unity build) */
#undef MR
#undef NR
#undef KB
#undef PAIR
#undef ROWS
