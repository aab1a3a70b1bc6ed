/* Vector epilogue on 8 int32 accumulators (AVX2): requantize, clamp, convert, store.
 * Bit-exact with qc_requant_scalar / qc_store_scalar (gemm_common.h):
 *   fp32:        cvtepi32_ps, one mul_ps, round-to-nearest-even (vroundps imm), clamp
 *   fixed_point: 64-bit products (vpmuldq on even/odd lanes), + 2^(t-1), arithmetic >> t
 *                (AVX2 has no vpsravq: (x ^ s) >>logical t ^ s with s the sign mask),
 *                clamp in 64 bits, + zero point.
 * int32->float and the multiply follow MXCSR (round-to-nearest-even unless a caller changed
 * it; flush-to-zero cannot change a result: such products round to 0 anyway).
 * Target "avx2" only, so the AVX2, AVX-VNNI and emulated regions can all inline these.
 */
#ifndef QC_EPILOGUE_AVX2_H
#define QC_EPILOGUE_AVX2_H

#include <immintrin.h>
#include "gemm_common.h"

#define QC_AVX2_FN static inline __attribute__((always_inline, target("avx2")))

QC_AVX2_FN __m256i qc_sra64_avx2(__m256i x, __m256i t)
{
    __m256i s = _mm256_cmpgt_epi64(_mm256_setzero_si256(), x);
    return _mm256_xor_si256(_mm256_srlv_epi64(_mm256_xor_si256(x, s), t), s);
}

QC_AVX2_FN __m256i qc_clamp64_avx2(__m256i x, __m256i lo, __m256i hi)
{
    x = _mm256_blendv_epi8(x, lo, _mm256_cmpgt_epi64(lo, x));
    return _mm256_blendv_epi8(x, hi, _mm256_cmpgt_epi64(x, hi));
}

/* q (zero point added, clamped to [lo, hi]) for channels j .. j+7 */
QC_AVX2_FN __m256i qc_requant8(const qc_task *t, __m256i acc, int64_t j)
{
    const __m256i zo = _mm256_set1_epi32(t->zo);
    if (t->mode == QC_REQUANT_FP32) {
        const __m256 lo = _mm256_set1_ps((float)(t->lo - t->zo));
        const __m256 hi = _mm256_set1_ps((float)(t->hi - t->zo));
        __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_loadu_ps(t->mult + j));
        y = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        y = _mm256_min_ps(_mm256_max_ps(y, lo), hi);
        return _mm256_add_epi32(_mm256_cvttps_epi32(y), zo);   /* exact: y is integral */
    } else {
        const __m256i lo = _mm256_set1_epi64x((int64_t)t->lo - t->zo);
        const __m256i hi = _mm256_set1_epi64x((int64_t)t->hi - t->zo);
        const __m256i one = _mm256_set1_epi64x(1);
        const __m256i low32 = _mm256_set1_epi64x(0xFFFFFFFFll);
        __m256i m0 = _mm256_loadu_si256((const __m256i *)(t->m0 + j));
        __m256i sh = _mm256_loadu_si256((const __m256i *)(t->shift + j));
        __m256i t_ev = _mm256_and_si256(sh, low32), t_od = _mm256_srli_epi64(sh, 32);
        __m256i ev = _mm256_mul_epi32(acc, m0);                              /* channels 0,2,4,6 */
        __m256i od = _mm256_mul_epi32(_mm256_srli_epi64(acc, 32), _mm256_srli_epi64(m0, 32));
        ev = _mm256_add_epi64(ev, _mm256_sllv_epi64(one, _mm256_sub_epi64(t_ev, one)));
        od = _mm256_add_epi64(od, _mm256_sllv_epi64(one, _mm256_sub_epi64(t_od, one)));
        ev = qc_clamp64_avx2(qc_sra64_avx2(ev, t_ev), lo, hi);
        od = qc_clamp64_avx2(qc_sra64_avx2(od, t_od), lo, hi);
        __m256i q = _mm256_blend_epi32(ev, _mm256_slli_epi64(od, 32), 0xAA);
        return _mm256_add_epi32(q, zo);
    }
}

/* 8 int32 (already in the byte range) -> 8 bytes in the low half */
QC_AVX2_FN __m128i qc_narrow8(__m256i q, int is_signed)
{
    __m256i w = _mm256_packs_epi32(q, q);                 /* lane l: q[4l..4l+3] twice */
    __m256i b = is_signed ? _mm256_packs_epi16(w, w) : _mm256_packus_epi16(w, w);
    return _mm_unpacklo_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
}

/* writes the outputs of row i, channels j .. j+cnt-1 (cnt in 1..8) */
QC_AVX2_FN void qc_store8(const qc_task *t, __m256i acc, int64_t i, int64_t j, int cnt)
{
    if (t->out_type == QC_OUT_I32) {
        int32_t *dst = (int32_t *)t->c + i * t->ldc + j;
        if (cnt == 8) { _mm256_storeu_si256((__m256i *)dst, acc); return; }
        int32_t tmp[8];
        _mm256_storeu_si256((__m256i *)tmp, acc);
        memcpy(dst, tmp, (size_t)cnt * 4);
        return;
    }
    __m256i q = qc_requant8(t, acc, j);
    if (t->out_type == QC_OUT_F32) {
        __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q, _mm256_set1_epi32(t->zo))),
                                 _mm256_set1_ps(t->out_scale));
        float *dst = (float *)t->c + i * t->ldc + j;
        if (cnt == 8) { _mm256_storeu_ps(dst, f); return; }
        float tmp[8];
        _mm256_storeu_ps(tmp, f);
        memcpy(dst, tmp, (size_t)cnt * 4);
        return;
    }
    __m128i b = qc_narrow8(q, t->out_type == QC_OUT_S8);
    uint8_t *dst = t->c + i * t->ldc + j;
    if (cnt == 8) { _mm_storel_epi64((__m128i *)dst, b); return; }
    uint8_t tmp[16];
    _mm_storeu_si128((__m128i *)tmp, b);
    memcpy(dst, tmp, (size_t)cnt);
}

/* The common case hoisted out of qc_store8: uint8 output, fp32 requantization, 16 full
 * columns of one row per call. The caller builds the constants once per tile (qc_store8
 * re-reads them from the task after every byte store, which may alias it). Same results as
 * qc_store8: the clamp bounds are integers, so clamping before vcvtps2dq's rounding (MXCSR,
 * nearest-even by default, as the multiply) equals rounding first; the zero point is added to
 * the packed int16 values, which lie in [lo - zo, hi - zo]. */
typedef struct { __m256 lo, hi; __m256i zo16; } qc_u8_fp32_avx2;

QC_AVX2_FN qc_u8_fp32_avx2 qc_u8_fp32_init(const qc_task *t)
{
    qc_u8_fp32_avx2 k;
    k.lo = _mm256_set1_ps((float)(t->lo - t->zo));
    k.hi = _mm256_set1_ps((float)(t->hi - t->zo));
    k.zo16 = _mm256_set1_epi16((int16_t)t->zo);
    return k;
}

/* dst[0..16) = requant(acc0 (columns 0-7), acc1 (columns 8-15)) with multipliers mult[0..16) */
QC_AVX2_FN void qc_store16_u8_fp32(const qc_u8_fp32_avx2 *k, __m256i acc0, __m256i acc1, const float *mult,
                                   uint8_t *dst)
{
    __m256 y0 = _mm256_mul_ps(_mm256_cvtepi32_ps(acc0), _mm256_loadu_ps(mult));
    __m256 y1 = _mm256_mul_ps(_mm256_cvtepi32_ps(acc1), _mm256_loadu_ps(mult + 8));
    y0 = _mm256_min_ps(_mm256_max_ps(y0, k->lo), k->hi);
    y1 = _mm256_min_ps(_mm256_max_ps(y1, k->lo), k->hi);
    /* packs per 128-bit lane: columns 0-3, 8-11 | 4-7, 12-15; the qword permute orders them */
    __m256i w = _mm256_packs_epi32(_mm256_cvtps_epi32(y0), _mm256_cvtps_epi32(y1));
    w = _mm256_add_epi16(_mm256_permute4x64_epi64(w, 0xD8), k->zo16);
    _mm_storeu_si128((__m128i *)dst, _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
}

#endif /* QC_EPILOGUE_AVX2_H */
