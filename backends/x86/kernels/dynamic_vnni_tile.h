/* The dynamic linear layer's VNNI tile (dynamic_linear.c), instantiated per form of vpdpbusd ymm
 * (no include guard). Before including, define QC_FN(name), QC_DPBUSD(acc, a_u8, b_s8), MR and
 * NR (16), KR (4), ELEM and A_ELEM (1), MC and KC (0), inside a target region that has them.
 *
 * A: uint8 rows a = q + z[r] (dynamic_linear.c), W: int8 packed for AVX-VNNI. The accumulators
 * start at −z[r]·colsum[c], so after the k loop they hold Σ (a − z[r])·w = Σ (q − zp)·w: every add
 * wraps, and the true sum fits int32 (checked by the entry), so the result is exact. */

static inline __attribute__((always_inline)) void
QC_FN(tile)(const int mr, const qc_task *t, const uint8_t *a, const uint8_t *b, int64_t groups, int rem,
            int32_t *scr, int first, int last, int64_t row0, int64_t n0)
{
    (void)rem; (void)scr; (void)first; (void)last;   /* K is one block (KC = 0), A and W padded to KR */
    if (mr > MR) __builtin_unreachable();            /* tile_any's cases past MR */
    const qc_dyn_task *d = (const qc_dyn_task *)t;
    const __m256i cs0 = _mm256_loadu_si256((const __m256i *)(d->colsum + n0));
    const __m256i cs1 = _mm256_loadu_si256((const __m256i *)(d->colsum + n0 + 8));
    __m256i acc[MR][2];
#pragma GCC unroll 16
    for (int i = 0; i < mr; i++) {
        const __m256i nz = _mm256_set1_epi32(-d->row_z[row0 + i]);
        acc[i][0] = _mm256_mullo_epi32(nz, cs0);
        acc[i][1] = _mm256_mullo_epi32(nz, cs1);
    }
    const int64_t lda = t->lda_bytes;
    for (int64_t g = 0; g < groups; g++) {
        const __m256i b0 = _mm256_loadu_si256((const __m256i *)b), b1 = _mm256_loadu_si256((const __m256i *)(b + 32));
        b += NR * KR * ELEM;
#pragma GCC unroll 16
        for (int i = 0; i < mr; i++) {
            int32_t x;
            memcpy(&x, a + i * lda + 4 * g, 4);   /* a[4g .. 4g + 3] */
            const __m256i av = _mm256_set1_epi32(x);
            acc[i][0] = QC_DPBUSD(acc[i][0], av, b0);
            acc[i][1] = QC_DPBUSD(acc[i][1], av, b1);
        }
    }
    int32_t out[MR][16];
#pragma GCC unroll 16
    for (int i = 0; i < mr; i++) {
        _mm256_storeu_si256((__m256i *)out[i], acc[i][0]);
        _mm256_storeu_si256((__m256i *)(out[i] + 8), acc[i][1]);
    }
    qc_dyn_store_tile_avx2(t, (const int32_t (*)[16])out, mr, row0, n0);
}

#include "gemm_driver.h"
