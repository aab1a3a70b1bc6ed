/* Exact emulation of the VNNI dot-product instructions, for CPUs without VNNI.
 *
 *   vpdpbusd (no saturation), per 32-bit lane l:
 *       acc[l] + sum_{i<4} (uint8)a[4l+i] * (int8)b[4l+i]     (wrapping int32)
 *
 * Emulation: split each 16-bit pair into its even and odd byte, zero-extend the unsigned
 * bytes and sign-extend the signed ones to int16, and let vpmaddwd form the two pair sums
 * (a0*b0 + a2*b2 and a1*b1 + a3*b3; each |sum| <= 2*255*128, no saturation, no
 * overflow), then add both to the accumulator with wrapping vpaddd. The result equals the
 * instruction bit for bit for every input (tested against it where the CPU has VNNI).
 *
 * The functions carry their own minimal target attribute, so they can be inlined into any
 * region whose target is a superset (include this header before any `#pragma GCC target`).
 */
#ifndef QC_VNNI_EMULATION_H
#define QC_VNNI_EMULATION_H

#include <immintrin.h>

/* _mm256_dpbusd_avx_epi32 with AVX2 only */
static inline __attribute__((always_inline, target("avx2")))
__m256i qc_emu_dpbusd256(__m256i acc, __m256i a_u8, __m256i b_s8)
{
    const __m256i lo_mask = _mm256_set1_epi16(0x00FF);
    __m256i a_even = _mm256_and_si256(a_u8, lo_mask);               /* bytes 0, 2: zero-extended */
    __m256i a_odd = _mm256_srli_epi16(a_u8, 8);                      /* bytes 1, 3 */
    __m256i b_even = _mm256_srai_epi16(_mm256_slli_epi16(b_s8, 8), 8); /* sign-extended */
    __m256i b_odd = _mm256_srai_epi16(b_s8, 8);
    __m256i s_even = _mm256_madd_epi16(a_even, b_even);              /* a0*b0 + a2*b2 */
    __m256i s_odd = _mm256_madd_epi16(a_odd, b_odd);                 /* a1*b1 + a3*b3 */
    return _mm256_add_epi32(acc, _mm256_add_epi32(s_even, s_odd));
}

/* _mm512_dpbusd_epi32 with AVX-512F + BW only */
static inline __attribute__((always_inline, target("avx512f,avx512bw")))
__m512i qc_emu_dpbusd512(__m512i acc, __m512i a_u8, __m512i b_s8)
{
    const __m512i lo_mask = _mm512_set1_epi16(0x00FF);
    __m512i a_even = _mm512_and_si512(a_u8, lo_mask);
    __m512i a_odd = _mm512_srli_epi16(a_u8, 8);
    __m512i b_even = _mm512_srai_epi16(_mm512_slli_epi16(b_s8, 8), 8);
    __m512i b_odd = _mm512_srai_epi16(b_s8, 8);
    __m512i s_even = _mm512_madd_epi16(a_even, b_even);
    __m512i s_odd = _mm512_madd_epi16(a_odd, b_odd);
    return _mm512_add_epi32(acc, _mm512_add_epi32(s_even, s_odd));
}

#endif /* QC_VNNI_EMULATION_H */
