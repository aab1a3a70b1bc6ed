/* int8 GEMM micro-kernel, AVX2, EXACT without reduce_range: vpmaddwd on int16.
 *
 * vpmaddubsw (u8 x s8 pairs -> saturating int16) is never used: 2 * 255 * (-128) does not
 * fit int16. Instead both operands are widened to int16 and vpmaddwd forms exact int32
 * pair sums (|a0*b0 + a1*b1| <= 2 * 255 * 128), accumulated with wrapping vpaddd.
 *   - W is widened once, at pack time: KR = 2, int16 (ELEM = 2), so one 32-byte load
 *     gives 8 columns x 2 consecutive k;
 *   - A is widened once per call into an int16 copy (row stride k_pad, zero padded), so
 *     the inner loop broadcasts a 4-byte (a[k], a[k+1]) pair with a plain vpbroadcastd.
 * Tile: MR rows x NR columns = MR x NR/8 ymm accumulators (6 x 16: 12 ymm + 2 ymm of W +
 * 1 broadcast + 1 product = 16 ymm). Per pair of k: NR/8 loads, MR broadcasts,
 * MR * NR/8 (vpmaddwd + vpaddd): 2 uops per 16 MACs, so the peak is ~1/4 of AVX-512 VNNI's.
 */
#include <immintrin.h>
#include "gemm_common.h"
#include "epilogue_avx2.h"

#ifndef QC_AVX2_MR
#define QC_AVX2_MR 6
#endif
#ifndef QC_AVX2_NR
#define QC_AVX2_NR 16
#endif
#ifndef QC_AVX2_MC
#define QC_AVX2_MC 0
#endif
#ifndef QC_AVX2_KC
#define QC_AVX2_KC 0
#endif

#define MR QC_AVX2_MR
#define NR QC_AVX2_NR
#define KR 2
#define ELEM 2
#define A_ELEM 2
#define MC QC_AVX2_MC
#define KC QC_AVX2_KC
#define NV (NR / 8)
#if NR % 8 != 0
#error "QC_AVX2_NR must be a multiple of 8"
#endif

#pragma GCC push_options
#pragma GCC target("avx2")
#define QC_FN(name) QC_CAT(name, avx2)

static inline __attribute__((always_inline)) void
QC_FN(tile)(const int mr, const qc_task *t, const uint8_t *a, const uint8_t *b, int64_t groups,
            int rem, int32_t *scr, int first, int last, int64_t row0, int64_t n0)
{
    (void)rem;  /* A and W are both zero-padded to an even K: no tail */
    __m256i acc[MR][NV];
    const int64_t lda = t->lda_bytes;
#pragma GCC unroll 16
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 16
        for (int v = 0; v < NV; v++)
            acc[i][v] = first ? _mm256_loadu_si256((const __m256i *)(t->bias + n0 + 8 * v))
                              : _mm256_loadu_si256((const __m256i *)(scr + i * NR + 8 * v));
    const uint8_t *ap = a;
    for (int64_t g = 0; g < groups; g++) {
        __m256i bv[NV];
#pragma GCC unroll 16
        for (int v = 0; v < NV; v++) bv[v] = _mm256_loadu_si256((const __m256i *)(b + 32 * v));
        b += NR * 4;
#pragma GCC unroll 16
        for (int i = 0; i < mr; i++) {
            int32_t x;
            memcpy(&x, ap + i * lda, 4);
            const __m256i av = _mm256_set1_epi32(x);
#pragma GCC unroll 16
            for (int v = 0; v < NV; v++)
                acc[i][v] = _mm256_add_epi32(acc[i][v], _mm256_madd_epi16(av, bv[v]));
        }
        ap += 4;
    }
    if (!last) {
#pragma GCC unroll 16
        for (int i = 0; i < mr; i++)
#pragma GCC unroll 16
            for (int v = 0; v < NV; v++)
                _mm256_storeu_si256((__m256i *)(scr + i * NR + 8 * v), acc[i][v]);
        return;
    }
    const int64_t nvalid = t->n - n0;
#if NV % 2 == 0
    if (t->out_type == QC_OUT_U8 && t->mode == QC_REQUANT_FP32) {
        /* 16 columns per store, constants hoisted (qc_store16_u8_fp32); a partial pair of
         * vectors at the N edge takes qc_store8 */
        const qc_u8_fp32_avx2 kq = qc_u8_fp32_init(t);
        const float *mult = t->mult + n0;
        uint8_t *c = t->c + row0 * t->ldc + n0;
        const int64_t ldc = t->ldc;
#pragma GCC unroll 16
        for (int i = 0; i < mr; i++)
#pragma GCC unroll 16
            for (int v = 0; v < NV; v += 2) {
                const int64_t cnt = nvalid - 8 * v;
                if (cnt >= 16) {
                    qc_store16_u8_fp32(&kq, acc[i][v], acc[i][v + 1], mult + 8 * v, c + i * ldc + 8 * v);
                } else {
                    if (cnt > 0) qc_store8(t, acc[i][v], row0 + i, n0 + 8 * v, cnt >= 8 ? 8 : (int)cnt);
                    if (cnt > 8) qc_store8(t, acc[i][v + 1], row0 + i, n0 + 8 * v + 8, (int)cnt - 8);
                }
            }
        return;
    }
#endif
#pragma GCC unroll 16
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 16
        for (int v = 0; v < NV; v++) {
            const int64_t cnt = nvalid - 8 * v;
            if (cnt > 0) qc_store8(t, acc[i][v], row0 + i, n0 + 8 * v, cnt >= 8 ? 8 : (int)cnt);
        }
}

#include "gemm_driver.h"

/* the int16 copy of A, zero-padded to k_pad; chunks of 64 rows */
typedef struct { const uint8_t *a; int64_t lda, m, k, k_pad; int16_t *out; } QC_FN(apack);
#define QC_APACK_ROWS 64

static void QC_FN(apack_chunk)(const void *vp, int64_t c, int slot)
{
    (void)slot;
    const QC_FN(apack) *p = (const QC_FN(apack) *)vp;
    const int64_t r0 = c * QC_APACK_ROWS, r1 = qc_min64(r0 + QC_APACK_ROWS, p->m);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *src = p->a + r * p->lda;
        int16_t *dst = p->out + r * p->k_pad;
        int64_t k = 0;
        for (; k + 16 <= p->k; k += 16)
            _mm256_storeu_si256((__m256i *)(dst + k),
                                _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(src + k))));
        for (; k < p->k; k++) dst[k] = src[k];
        for (; k < p->k_pad; k++) dst[k] = 0;
    }
}

QC_EXPORT int QC_FN(qc_gemm)(const qc_gemm_args *p)
{
    int err = qc_validate(p, NR, KR, ELEM);
    if (err != QC_OK) return err;
    if (p->post_add != NULL) return QC_ERR_PARAM;   /* AVX-512 VNNI / AMX only */
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2")) return QC_ERR_ISA;
    const int nt = qc_threads(p);
    const int64_t k_pad = qc_ceil_div(p->k, 2) * 2;
    int16_t *a16 = (int16_t *)aligned_alloc(64, (size_t)((p->m * k_pad * 2 + 63) / 64 * 64));
    if (a16 == NULL) return QC_ERR_NOMEM;
    QC_FN(apack) ap = {p->a, p->lda, p->m, p->k, k_pad, a16};
    qc_parallel_for(QC_FN(apack_chunk), &ap, qc_ceil_div(p->m, QC_APACK_ROWS), nt);
    qc_task t;
    qc_task_init(&t, p);
    t.a = (const uint8_t *)a16;
    t.lda_bytes = k_pad * 2;
    t.k = k_pad;
    err = QC_FN(run)(&t, nt);
    free(a16);
    return err;
}

#pragma GCC pop_options
#undef QC_FN
#undef QC_APACK_ROWS
#undef MR
#undef NR
#undef KR
#undef ELEM
#undef A_ELEM
#undef MC
#undef KC
#undef NV
