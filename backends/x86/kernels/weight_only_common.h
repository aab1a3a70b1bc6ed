/* What the weight-only / half-precision linear kernels share (qc_x86_weight_only.h): the job of
 * one call, the blocking, and the scalar forms of every conversion (the portable kernels use them;
 * the AVX2 kernels are tested against them through the reference). */
#ifndef QC_X86_WEIGHT_ONLY_COMMON_H
#define QC_X86_WEIGHT_ONLY_COMMON_H

#include <string.h>

#include "qc_x86_weight_only.h"

/* rows at most for the GEMV kernels (decode: stream the packed weights once, every row per
 * panel; instantiated for 1..8 rows); more rows take the prefill path (dequantize a panel,
 * register-blocked fp32 GEMM) */
#define QC_WO_GEMV_MAX_ROWS 8
#ifndef QC_WO_GEMV_ROWS
#define QC_WO_GEMV_ROWS QC_WO_GEMV_MAX_ROWS
#endif
/* GEMV chunk: panels of 8 columns a thread claims at a time */
#define QC_WO_GEMV_PANELS 8
/* prefill chunk: rows of one 16-column panel; k blocks of 8 per dequantized panel (16 KB of
 * float32 that stays in L1 while every 6-row tile of the chunk reads it) */
#define QC_WO_MB 96
#define QC_WO_KCB 32
#define QC_HALF_KC (QC_WO_KCB * QC_WO_KB)

/* one call of qc_x86_wo_linear / qc_x86_half_linear, as the chunk functions see it */
typedef struct {
    const qc_wo_linear_weights *w;  /* weight-only; NULL for half */
    const float *x;                 /* the rows the products read (xbuf when rounded first) */
    float *y;
    int64_t m, n, k, k8, groups;
    int32_t compute_bf16;           /* weight-only: round the dequantized weights to bfloat16 */
    int32_t half_type;              /* half: QC_HALF_* */
    const uint16_t *hw;             /* half: the packed weights */
    const float *bias;
    int64_t m_blocks;               /* prefill chunks: m_blocks x 16-column panels */
} qc_wo_job;

static inline float qc_wo_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t qc_wo_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* float32 -> bfloat16 -> float32, ties to even; NaN -> the quiet NaN 0x7FC0 (c10::BFloat16) */
static inline float qc_wo_round_bf16(float f)
{
    uint32_t u = qc_wo_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return qc_wo_f32(0x7FC00000u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return qc_wo_f32(u & 0xFFFF0000u);
}

/* float32 -> float16 bits, ties to even; past the largest half (65520 and up) -> infinity */
static inline uint16_t qc_wo_fp16_bits(float f)
{
    const uint32_t u = qc_wo_bits(f), sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
    if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);
    if (a < 0x38800000u) {
        /* below 2^-14: a multiple of 2^-24 (a subnormal half); the scaling is exact and the
         * rounding of a value below 2^10 to an integer is qc_round_half_even's */
        const float units = qc_round_half_even(qc_wo_f32(a) * 16777216.0f);
        return (uint16_t)(sign | (uint32_t)units);
    }
    const uint32_t r = a + 0x0FFFu + ((a >> 13) & 1u);   /* ties to even at bit 13 */
    return (uint16_t)(sign | ((r - (112u << 23)) >> 13));
}

/* float16 bits -> float32 (exact) */
static inline float qc_wo_fp16_value(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    if (e == 0x1F) return qc_wo_f32(sign | 0x7F800000u | (man << 13));
    if (e == 0) return qc_wo_f32(sign | qc_wo_bits((float)man * 0x1p-24f));
    return qc_wo_f32(sign | ((e + 112u) << 23) | (man << 13));
}

static inline float qc_wo_round_half(float f, int32_t half_type)
{
    return half_type == QC_HALF_BF16 ? qc_wo_round_bf16(f) : qc_wo_fp16_value(qc_wo_fp16_bits(f));
}

static inline float qc_wo_half_value(uint16_t h, int32_t half_type)
{
    return half_type == QC_HALF_BF16 ? qc_wo_f32((uint32_t)h << 16) : qc_wo_fp16_value(h);
}

/* bytes of one (panel, 8-k block) of packed codes */
static inline int64_t qc_wo_block_bytes(int32_t format)
{
    return format == QC_WO_INT8 ? QC_WO_NR * QC_WO_KB : QC_WO_NR * 4;
}

/* the value (before its scale) of code i of column j in one packed (panel, block) */
static inline float qc_wo_code_value(int32_t format, const uint8_t *block, int i, int j, int32_t zp, const float *nf4)
{
    if (format == QC_WO_INT8) return (float)(int8_t)block[QC_WO_NR * i + j];
    uint32_t word;
    memcpy(&word, block + 4 * j, 4);
    const int32_t nibble = (int32_t)((word >> (4 * i)) & 15u);
    if (format == QC_WO_INT4) return (float)((nibble ^ 8) - 8);      /* stored as the signed nibble */
    if (format == QC_WO_INT4_ASYM) return (float)(nibble - zp);
    return nf4[nibble];
}

#endif
