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

/* qc_epi16's residual-add fields are set only with an add and read only with one (e->r);
 * inlined into the tiles, GCC cannot pair the two and warns on every read. Zeroing them
 * instead measured 2-3 % slower on MobileNetV2 batch 1 (3 paired runs), so this (false)
 * warning is off from here on. */
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

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
    /* a fused residual add (qc_post_add), when r != NULL */
    const uint8_t *r;
    int64_t ldr;
    int32_t add_mode, add_shift;
    __m512i za, zb, add_zo, add_lo64, add_hi64, m0a, m0b, half;
    __m512 ma, mb, add_lo, add_hi;
    int packed64;                  /* qc_store64 applies (qc_packed64_ok) */
    __m512i zo16, lo8, hi8, order;
} qc_epi16;

/* qc_store64 applies: fp32 requantization to uint8 without a fused add */
static inline int qc_packed64_ok(const qc_task *t)
{
    return t->mode == QC_REQUANT_FP32 && t->out_type == QC_OUT_U8 && t->post_add == NULL;
}

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
    e->r = NULL;
    e->packed64 = qc_packed64_ok(t);
    e->zo16 = _mm512_set1_epi16((int16_t)t->zo);
    e->lo8 = _mm512_set1_epi8((char)t->lo);
    e->hi8 = _mm512_set1_epi8((char)t->hi);
    /* after the two packs, dword 4L + s holds outputs 4L..4L+3 of source vector s: output
     * dword t is packed dword 4 (t % 4) + t / 4 */
    e->order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    if (t->post_add != NULL) {
        const qc_post_add *a = t->post_add;
        e->r = a->r;
        e->ldr = a->ldr;
        e->add_mode = a->mode;
        e->add_shift = a->shift;
        e->za = _mm512_set1_epi32(a->za);
        e->zb = _mm512_set1_epi32(a->zb);
        e->add_zo = _mm512_set1_epi32(a->zo);
        e->add_lo64 = _mm512_set1_epi64((int64_t)a->qmin - a->zo);
        e->add_hi64 = _mm512_set1_epi64((int64_t)a->qmax - a->zo);
        e->ma = _mm512_set1_ps(a->ma);
        e->mb = _mm512_set1_ps(a->mb);
        e->add_lo = _mm512_set1_ps((float)(a->qmin - a->zo));
        e->add_hi = _mm512_set1_ps((float)(a->qmax - a->zo));
        e->m0a = _mm512_set1_epi64(a->m0a);
        e->m0b = _mm512_set1_epi64(a->m0b);
        e->half = _mm512_set1_epi64((int64_t)1 << (a->shift - 1));
    }
}

/* the fused residual add of 16 requantized outputs q (row i, channels j..): exactly
 * qc_rt_add (c_runtime) on q and the other addend's bytes */
QC_AVX512_FN __m512i qc_post_add16(const qc_epi16 *e, __m512i q, int64_t i, int64_t j, __mmask16 mask)
{
    const __m512i b = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, e->r + i * e->ldr + j));
    const __m512i da = _mm512_sub_epi32(q, e->za), db = _mm512_sub_epi32(b, e->zb);
    if (e->add_mode == QC_REQUANT_FP32) {
        /* two float32 products and one float32 sum, each rounded (no FMA), clamped, half to even */
        __m512 v = _mm512_add_round_ps(_mm512_mul_round_ps(_mm512_cvt_roundepi32_ps(da, QC_RN), e->ma, QC_RN),
                                       _mm512_mul_round_ps(_mm512_cvt_roundepi32_ps(db, QC_RN), e->mb, QC_RN), QC_RN);
        v = _mm512_min_ps(_mm512_max_ps(v, e->add_lo), e->add_hi);
        return _mm512_add_epi32(_mm512_cvt_roundps_epi32(v, QC_RN), e->add_zo);
    }
    /* int64 lanes, even and odd channels: (da * m0a + db * m0b + 2^(t-1)) >> t */
    const __m512i ev = _mm512_add_epi64(_mm512_add_epi64(_mm512_mul_epi32(da, e->m0a), _mm512_mul_epi32(db, e->m0b)),
                                        e->half);
    const __m512i od = _mm512_add_epi64(_mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(da, 32), e->m0a),
                                                         _mm512_mul_epi32(_mm512_srli_epi64(db, 32), e->m0b)),
                                        e->half);
    /* clamped in 64 bits (to [qmin - zo, qmax - zo]), then the zero point */
    const __m512i shift = _mm512_set1_epi64(e->add_shift);
    const __m512i qe = _mm512_min_epi64(_mm512_max_epi64(_mm512_srav_epi64(ev, shift), e->add_lo64), e->add_hi64);
    const __m512i qo = _mm512_min_epi64(_mm512_max_epi64(_mm512_srav_epi64(od, shift), e->add_lo64), e->add_hi64);
    const __m512i qq = _mm512_mask_blend_epi32((__mmask16)0xAAAA, qe, _mm512_slli_epi64(qo, 32));
    return _mm512_add_epi32(qq, e->add_zo);
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
    if (e->r != NULL) q = qc_post_add16(e, q, i, j, mask);
    /* q is inside the byte range already: truncating vpmovdb is exact */
    if (cnt == 16) _mm_storeu_si128((__m128i *)(e->c + i * e->ldc + j), _mm512_cvtepi32_epi8(q));
    else _mm_mask_storeu_epi8(e->c + i * e->ldc + j, mask, _mm512_cvtepi32_epi8(q));
}

/* 64 uint8 outputs of row i, channels j..j+63 (e->packed64): the same bytes as four
 * qc_store16, with the clamp done by saturation. round(y) for y = acc * mult <= hi - zo (the
 * upper clamp stays in float, so the conversion cannot overflow) is narrowed with signed
 * saturation to int16, gets the zero point with saturation, and is narrowed with unsigned
 * saturation to uint8: every step is exact inside [lo, hi] and monotonic outside it, so
 * anything below lo - zo lands at or below lo, and the byte min/max give [lo, hi] exactly.
 * (Fused adds and fixed-point requantization keep qc_store16: a packed store of their exact
 * per-vector results measured 2-5 % slower.) */
QC_AVX512_FN __m512i qc_requant16_upper(const qc_epi16 *e, __m512i acc, int64_t j)
{
    const __m512 y = _mm512_mul_round_ps(_mm512_cvt_roundepi32_ps(acc, QC_RN), _mm512_loadu_ps(e->mult + j), QC_RN);
    return _mm512_cvt_roundps_epi32(_mm512_min_ps(y, e->hi), QC_RN);
}

QC_AVX512_FN void qc_store64(const qc_epi16 *e, __m512i a0, __m512i a1, __m512i a2, __m512i a3, int64_t i,
                             int64_t j)
{
    const __m512i w01 = _mm512_adds_epi16(_mm512_packs_epi32(qc_requant16_upper(e, a0, j),
                                                             qc_requant16_upper(e, a1, j + 16)), e->zo16);
    const __m512i w23 = _mm512_adds_epi16(_mm512_packs_epi32(qc_requant16_upper(e, a2, j + 32),
                                                             qc_requant16_upper(e, a3, j + 48)), e->zo16);
    const __m512i b = _mm512_permutexvar_epi32(e->order, _mm512_packus_epi16(w01, w23));
    _mm512_storeu_si512((void *)(e->c + i * e->ldc + j), _mm512_max_epu8(_mm512_min_epu8(b, e->hi8), e->lo8));
}

#endif /* QC_EPILOGUE_AVX512_H */
