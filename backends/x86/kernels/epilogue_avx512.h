/* Vector epilogue on 16 int32 accumulators (AVX-512F/BW/VL): requantize, clamp, store.
 * Bit-exact with qc_requant_scalar / qc_store_scalar (gemm_common.h). The float steps use
 * embedded rounding ({rn-sae}), so they do not depend on MXCSR at all:
 *   fp32:        vcvtdq2ps{rn}, one vmulps{rn}, clamp, vcvtps2dq{rn} (half to even)
 *   fixed_point: vpmuldq on even/odd lanes, + 2^(t-1), vpsravq, 64-bit clamp, + zero point.
 * Partial vectors (the N tail) use masked stores: nothing past channel n-1 is written.
 */
#ifndef QC_EPILOGUE_AVX512_H
#define QC_EPILOGUE_AVX512_H

#include <immintrin.h>
#include "gemm_common.h"

#define QC_AVX512_FN static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl")))
#define QC_RN (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

/* the epilogue's parameters as the vector code uses them, prepared once per tile: a kernel
 * keeps this (a local) in registers, where fields read through the qc_task pointer would be
 * reloaded, and the bounds converted and broadcast again, after every output store */
typedef struct {
    int32_t mode, out_type;
    __m512 lo, hi, out_scale;      /* fp32: the clamp bounds (zero point removed) */
    __m512i zo, lo64, hi64;        /* fixed_point: the bounds in int64 lanes */
    const float *mult;
    const int32_t *m0, *shift;
    uint8_t *c;
    int64_t ldc;
} qc_epi16;

QC_AVX512_FN void qc_epi16_prep(qc_epi16 *e, const qc_task *t)
{
    e->mode = t->mode;
    e->out_type = t->out_type;
    e->lo = _mm512_set1_ps((float)(t->lo - t->zo));
    e->hi = _mm512_set1_ps((float)(t->hi - t->zo));
    e->out_scale = _mm512_set1_ps(t->out_scale);
    e->zo = _mm512_set1_epi32(t->zo);
    e->lo64 = _mm512_set1_epi64((int64_t)t->lo - t->zo);
    e->hi64 = _mm512_set1_epi64((int64_t)t->hi - t->zo);
    e->mult = t->mult;
    e->m0 = t->m0;
    e->shift = t->shift;
    e->c = t->c;
    e->ldc = t->ldc;
}

QC_AVX512_FN __m512i qc_requant16(const qc_epi16 *e, __m512i acc, int64_t j)
{
    if (e->mode == QC_REQUANT_FP32) {
        __m512 y = _mm512_mul_round_ps(_mm512_cvt_roundepi32_ps(acc, QC_RN),
                                       _mm512_loadu_ps(e->mult + j), QC_RN);
        y = _mm512_min_ps(_mm512_max_ps(y, e->lo), e->hi);
        return _mm512_add_epi32(_mm512_cvt_roundps_epi32(y, QC_RN), e->zo);
    } else {
        const __m512i one = _mm512_set1_epi64(1);
        const __m512i low32 = _mm512_set1_epi64(0xFFFFFFFFll);
        __m512i m0 = _mm512_loadu_si512((const void *)(e->m0 + j));
        __m512i sh = _mm512_loadu_si512((const void *)(e->shift + j));
        __m512i t_ev = _mm512_and_si512(sh, low32), t_od = _mm512_srli_epi64(sh, 32);
        __m512i ev = _mm512_mul_epi32(acc, m0);
        __m512i od = _mm512_mul_epi32(_mm512_srli_epi64(acc, 32), _mm512_srli_epi64(m0, 32));
        ev = _mm512_add_epi64(ev, _mm512_sllv_epi64(one, _mm512_sub_epi64(t_ev, one)));
        od = _mm512_add_epi64(od, _mm512_sllv_epi64(one, _mm512_sub_epi64(t_od, one)));
        ev = _mm512_min_epi64(_mm512_max_epi64(_mm512_srav_epi64(ev, t_ev), e->lo64), e->hi64);
        od = _mm512_min_epi64(_mm512_max_epi64(_mm512_srav_epi64(od, t_od), e->lo64), e->hi64);
        __m512i q = _mm512_mask_blend_epi32((__mmask16)0xAAAA, ev, _mm512_slli_epi64(od, 32));
        return _mm512_add_epi32(q, e->zo);
    }
}

/* writes the outputs of row i, channels j .. j+cnt-1 (cnt in 1..16) */
QC_AVX512_FN void qc_store16(const qc_epi16 *e, __m512i acc, int64_t i, int64_t j, int cnt)
{
    const __mmask16 mask = (__mmask16)((1u << cnt) - 1u);
    if (e->out_type == QC_OUT_I32) {
        _mm512_mask_storeu_epi32((int32_t *)e->c + i * e->ldc + j, mask, acc);
        return;
    }
    __m512i q = qc_requant16(e, acc, j);
    if (e->out_type == QC_OUT_F32) {
        __m512 f = _mm512_mul_round_ps(_mm512_cvt_roundepi32_ps(_mm512_sub_epi32(q, e->zo), QC_RN),
                                       e->out_scale, QC_RN);
        _mm512_mask_storeu_ps((float *)e->c + i * e->ldc + j, mask, f);
        return;
    }
    /* q is inside the byte range already: truncating vpmovdb is exact */
    if (cnt == 16) _mm_storeu_si128((__m128i *)(e->c + i * e->ldc + j), _mm512_cvtepi32_epi8(q));
    else _mm_mask_storeu_epi8(e->c + i * e->ldc + j, mask, _mm512_cvtepi32_epi8(q));
}

#endif /* QC_EPILOGUE_AVX512_H */
