/* Dynamic int8 linear layers (QDynamicLinear, qcompiler/core/dynamic_ops.py), bit for bit.
 *
 *   per row r of x [m, k] (per_token), or once for all of x (per_tensor):
 *     range -> (s, inv, zp), float32 exactly as quantize_rows computes them
 *     q = clamp(rint(x · inv) + zp)     written straight into the A operand the GEMM tile reads
 *   acc[r, c] = Σ_k (q[r, k] − zp[r]) · W[c, k]             exact int32
 *   y[r, c]   = f32(acc) · (s[r] · w_scale[c]) (+ bias[c])   each operation rounded once: the
 *                                                           runtime is built with -ffp-contract=off
 * Phase 1, threaded over blocks of rows: per_token scans a row and quantizes it at once (the row
 * is still in L1), per_tensor scans every block, reduces the partial ranges, then quantizes.
 * Phase 2: gemm_driver.h's loop nest (chunks of M blocks x N panels on the thread pool) around a
 * tile of this file whose epilogue is the float one above.
 *
 * The A operand (no separate packing pass: the quantizer writes it):
 *   - scalar and AVX2: int16 d = q − zp, rows zero-padded to an even K, against W packed for
 *     AVX2 (int16, KR = 2): acc = Σ d·W directly, and vpmaddwd's pair sums |d0·w0 + d1·w1| ≤
 *     2·255·127 are exact (vpmaddubsw is never used, as in the GEMM library);
 *   - VNNI (vpdpbusd, u8 × s8): uint8 a = q + 128 (symmetric) or q (asymmetric), W packed for
 *     AVX-VNNI (int8, KR = 4); the tile starts from −z[r]·colsum[c] (z = 128 or zp), wrapping
 *     int32 adds: the true accumulator fits int32 (checked below), so it comes out exact.
 *
 * Corner cases as the reference: a range below 2^-120 (zeros included) gives s = inv = 0, so every
 * q = zp = 0 and the row's output is the bias; NaN or ±inf is refused (QC_RT_ERR_NONFINITE), and
 * so is an asymmetric range whose max − min overflows float32 (QC_RT_ERR_DYNAMIC_RANGE).
 *
 * Appended to the x86 runtime translation unit after the GEMM library and the shared runtime
 * (backends/x86/dynamic.py kernel_source: gemm_driver.h and the tile templates are expanded in
 * place, the other includes are already in the unit).
 */
#include <immintrin.h>
#include "gemm_common.h"
#include "vnni_emulation.h"
#include "qc_x86_dynamic.h"

#define QC_DYN_FLT_MAX 3.40282347e+38f
/* floats per phase-1 block of rows (a block is at least one row) */
#define QC_DYN_BLOCK_FLOATS 16384

/* the range of some floats: max |x| as bits (the integer order of the bit patterns of
 * non-negative floats is their order, and NaN and ±inf lie above 0x7f7fffff), min and max with 0 */
typedef struct { uint32_t absmax; float mn, mx; } qc_dyn_range;

static inline int qc_dyn_nonfinite(const qc_dyn_range *r) { return r->absmax > 0x7f7fffffu; }

static inline void qc_dyn_merge(qc_dyn_range *r, const qc_dyn_range *o)
{
    if (o->absmax > r->absmax) r->absmax = o->absmax;
    if (o->mn < r->mn) r->mn = o->mn;
    if (o->mx > r->mx) r->mx = o->mx;
}

/* the quantization of one row (or of the tensor): d = q − zp lies in [lo, hi] */
typedef struct {
    float scale, inv;
    int32_t zp, lo, hi;
} qc_dyn_qp;

/* ranges below this quantize as zero rows (TINY_RANGE of dynamic_ops.py): 127 / a and 255 / r
 * stay finite above it */
#define QC_DYN_TINY_RANGE 0x1p-120f

/* the parameters of a finite range; 0 when an asymmetric span overflows float32 (refused) */
static int qc_dyn_qparams(int symmetric, const qc_dyn_range *r, qc_dyn_qp *p)
{
    memset(p, 0, sizeof *p);
    if (symmetric) {
        float a;
        memcpy(&a, &r->absmax, 4);
        if (a >= QC_DYN_TINY_RANGE) { p->inv = 127.0f / a; p->scale = a / 127.0f; }
        p->lo = -127; p->hi = 127;
        return 1;
    }
    const float lo = r->mn < 0.0f ? r->mn : 0.0f, hi = r->mx > 0.0f ? r->mx : 0.0f, span = hi - lo;
    if (!(span <= QC_DYN_FLT_MAX)) return 0;
    if (span >= QC_DYN_TINY_RANGE) { p->inv = 255.0f / span; p->scale = span / 255.0f; }
    const float z = -lo * p->inv;                  /* in [0, 255 (1 + 2^-23)] */
    p->zp = (int32_t)qc_round_even_f32(z < 255.0f ? z : 255.0f);
    p->lo = -p->zp; p->hi = 255 - p->zp;
    return 1;
}

/* d = clamp(rint(x · inv), lo, hi): clamping first is the same (the bounds are integers) */
static inline int32_t qc_dyn_quantize1(float x, const qc_dyn_qp *p)
{
    float v = x * p->inv;
    if (v < (float)p->lo) v = (float)p->lo;
    if (v > (float)p->hi) v = (float)p->hi;
    return (int32_t)qc_round_even_f32(v);
}

/* ---------------------------------------------------------------------------------- */
/* phase 1, portable C                                                                  */
/* ---------------------------------------------------------------------------------- */

static void qc_dyn_scan_scalar(const float *x, int64_t len, qc_dyn_range *r)
{
    uint32_t amax = 0;
    float mn = 0.0f, mx = 0.0f;
    for (int64_t i = 0; i < len; i++) {
        uint32_t b;
        memcpy(&b, x + i, 4);
        b &= 0x7fffffffu;
        amax = b > amax ? b : amax;
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
    }
    r->absmax = amax; r->mn = mn; r->mx = mx;
}

/* one row of A: int16 d (a_u8 = 0) or uint8 d + off, zero-padded to k_pad */
static void qc_dyn_quantize_scalar(const float *x, int64_t k, int64_t k_pad, const qc_dyn_qp *p, uint8_t *dst,
                                   int a_u8, int32_t off)
{
    for (int64_t i = 0; i < k; i++) {
        const int32_t d = qc_dyn_quantize1(x[i], p);
        if (a_u8) dst[i] = (uint8_t)(d + off);
        else ((int16_t *)dst)[i] = (int16_t)d;
    }
    if (a_u8) memset(dst + k, 0, (size_t)(k_pad - k));
    else memset((int16_t *)dst + k, 0, (size_t)(k_pad - k) * 2);
}

/* ---------------------------------------------------------------------------------- */
/* phase 1, AVX2                                                                        */
/* ---------------------------------------------------------------------------------- */

#define QC_DYN_AVX2 __attribute__((target("avx2")))

static QC_DYN_AVX2 __m256i qc_dyn_tail_mask(int64_t cnt)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int32_t)cnt), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static QC_DYN_AVX2 void qc_dyn_scan_avx2(const float *x, int64_t len, int symmetric, qc_dyn_range *r)
{
    const __m256i absmask = _mm256_set1_epi32(0x7fffffff);
    __m256i amax = _mm256_setzero_si256();
    __m256 mn = _mm256_setzero_ps(), mx = _mm256_setzero_ps();
    int64_t i = 0;
    if (symmetric) {
        for (; i + 8 <= len; i += 8)
            amax = _mm256_max_epi32(amax, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i)), absmask));
    } else {
        for (; i + 8 <= len; i += 8) {
            const __m256 v = _mm256_loadu_ps(x + i);
            amax = _mm256_max_epi32(amax, _mm256_and_si256(_mm256_castps_si256(v), absmask));
            mn = _mm256_min_ps(mn, v);
            mx = _mm256_max_ps(mx, v);
        }
    }
    if (i < len) {   /* masked lanes load 0, which every range already holds */
        const __m256 v = _mm256_maskload_ps(x + i, qc_dyn_tail_mask(len - i));
        amax = _mm256_max_epi32(amax, _mm256_and_si256(_mm256_castps_si256(v), absmask));
        mn = _mm256_min_ps(mn, v);
        mx = _mm256_max_ps(mx, v);
    }
    uint32_t ab[8];
    float lo[8], hi[8];
    _mm256_storeu_si256((__m256i *)ab, amax);
    _mm256_storeu_ps(lo, mn);
    _mm256_storeu_ps(hi, mx);
    qc_dyn_range out = {0, 0.0f, 0.0f};
    for (int j = 0; j < 8; j++) {
        const qc_dyn_range one = {ab[j], lo[j], hi[j]};
        qc_dyn_merge(&out, &one);
    }
    *r = out;
}

static QC_DYN_AVX2 inline __m256i qc_dyn_q8_avx2(const float *x, __m256 inv, __m256 lo, __m256 hi)
{
    const __m256 v = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(x), inv), lo), hi);
    return _mm256_cvtps_epi32(v);    /* MXCSR: nearest-even, as rint and torch.round */
}

static QC_DYN_AVX2 void qc_dyn_quantize_avx2(const float *x, int64_t k, int64_t k_pad, const qc_dyn_qp *p,
                                            uint8_t *dst, int a_u8, int32_t off)
{
    int64_t i = 0;
    {
        const __m256 inv = _mm256_set1_ps(p->inv), lo = _mm256_set1_ps((float)p->lo), hi = _mm256_set1_ps((float)p->hi);
        if (a_u8) {
            const __m256i voff = _mm256_set1_epi32(off), order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            for (; i + 32 <= k; i += 32) {
                const __m256i q0 = _mm256_add_epi32(qc_dyn_q8_avx2(x + i, inv, lo, hi), voff);
                const __m256i q1 = _mm256_add_epi32(qc_dyn_q8_avx2(x + i + 8, inv, lo, hi), voff);
                const __m256i q2 = _mm256_add_epi32(qc_dyn_q8_avx2(x + i + 16, inv, lo, hi), voff);
                const __m256i q3 = _mm256_add_epi32(qc_dyn_q8_avx2(x + i + 24, inv, lo, hi), voff);
                /* values in [0, 255]: the saturating packs are exact; packs work per 128-bit lane,
                 * so the dwords come out as q0 q1 q2 q3 (low halves) then the high halves */
                const __m256i b = _mm256_packus_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
                _mm256_storeu_si256((__m256i *)(dst + i), _mm256_permutevar8x32_epi32(b, order));
            }
        } else {
            int16_t *d16 = (int16_t *)dst;
            for (; i + 16 <= k; i += 16) {
                const __m256i w = _mm256_packs_epi32(qc_dyn_q8_avx2(x + i, inv, lo, hi),
                                                     qc_dyn_q8_avx2(x + i + 8, inv, lo, hi));
                _mm256_storeu_si256((__m256i *)(d16 + i), _mm256_permute4x64_epi64(w, 0xD8));
            }
        }
    }
    qc_dyn_quantize_scalar(x + i, k - i, k_pad - i, p, a_u8 ? dst + i : dst + 2 * i, a_u8, off);
}

/* ---------------------------------------------------------------------------------- */
/* phase 1: the threaded pass                                                          */
/* ---------------------------------------------------------------------------------- */

typedef struct {
    const float *x;
    int64_t m, k, k_pad, rows_per_block;
    int symmetric, vec, a_u8;
    uint8_t *a;                 /* A: rows of k_pad elements (a_u8 ? 1 : 2 bytes) */
    float *row_scale;
    int32_t *row_z;             /* the VNNI tiles' z[r]: 128 symmetric, zp asymmetric */
    qc_dyn_range *partial;      /* per_tensor scan: one range per block */
    const qc_dyn_qp *tensor_qp; /* per_tensor quantize: the tensor's; NULL: per row */
    int *nonfinite, *overflow;  /* set by any block that meets NaN/inf, an overflowing span */
} qc_dyn_prep;

static void qc_dyn_row(const qc_dyn_prep *j, int64_t r, const qc_dyn_qp *p)
{
    const int32_t z = j->symmetric ? 128 : p->zp;
    uint8_t *dst = j->a + r * j->k_pad * (j->a_u8 ? 1 : 2);
    if (j->vec) qc_dyn_quantize_avx2(j->x + r * j->k, j->k, j->k_pad, p, dst, j->a_u8, z);
    else qc_dyn_quantize_scalar(j->x + r * j->k, j->k, j->k_pad, p, dst, j->a_u8, z);
    j->row_scale[r] = p->scale;
    j->row_z[r] = z;
}

static void qc_dyn_scan(const qc_dyn_prep *j, const float *x, int64_t len, qc_dyn_range *r)
{
    if (j->vec) qc_dyn_scan_avx2(x, len, j->symmetric, r);
    else qc_dyn_scan_scalar(x, len, r);
}

/* per_token: each row of the block scanned, then quantized */
static void qc_dyn_rows_chunk(const void *ctx, int64_t c, int slot)
{
    const qc_dyn_prep *j = (const qc_dyn_prep *)ctx;
    const int64_t r0 = c * j->rows_per_block, r1 = qc_min64(r0 + j->rows_per_block, j->m);
    (void)slot;
    for (int64_t r = r0; r < r1; r++) {
        qc_dyn_range range;
        qc_dyn_scan(j, j->x + r * j->k, j->k, &range);
        if (qc_dyn_nonfinite(&range)) {
            __atomic_store_n(j->nonfinite, 1, __ATOMIC_RELAXED);
            return;
        }
        qc_dyn_qp p;
        if (!qc_dyn_qparams(j->symmetric, &range, &p)) {
            __atomic_store_n(j->overflow, 1, __ATOMIC_RELAXED);
            return;
        }
        qc_dyn_row(j, r, &p);
    }
}

/* per_tensor, first pass: the block's range */
static void qc_dyn_scan_chunk(const void *ctx, int64_t c, int slot)
{
    const qc_dyn_prep *j = (const qc_dyn_prep *)ctx;
    const int64_t r0 = c * j->rows_per_block, r1 = qc_min64(r0 + j->rows_per_block, j->m);
    (void)slot;
    qc_dyn_scan(j, j->x + r0 * j->k, (r1 - r0) * j->k, &j->partial[c]);
}

/* per_tensor, second pass: the block's rows with the tensor's parameters */
static void qc_dyn_quantize_chunk(const void *ctx, int64_t c, int slot)
{
    const qc_dyn_prep *j = (const qc_dyn_prep *)ctx;
    const int64_t r0 = c * j->rows_per_block, r1 = qc_min64(r0 + j->rows_per_block, j->m);
    (void)slot;
    for (int64_t r = r0; r < r1; r++) qc_dyn_row(j, r, j->tensor_qp);
}

/* ---------------------------------------------------------------------------------- */
/* phase 2: the GEMM tiles                                                              */
/* ---------------------------------------------------------------------------------- */

/* the driver's task (gemm_driver.h passes &t to the tiles) and what the float epilogue reads;
 * t.c is y (float, row stride t.ldc) */
typedef struct {
    qc_task t;
    const float *row_scale, *w_scale, *bias;   /* w_scale, bias: n_pad entries (bias may be NULL) */
    const int32_t *row_z, *colsum;              /* VNNI only */
} qc_dyn_task;

/* y of one row's 8 columns (cnt of them valid) from 8 accumulators */
static inline __attribute__((always_inline, target("avx2")))
void qc_dyn_store8_avx2(float *dst, __m256i acc, __m256 row_scale, const float *w_scale, const float *bias,
                        int64_t cnt)
{
    const __m256 scale = _mm256_mul_ps(row_scale, _mm256_loadu_ps(w_scale));   /* s[r] · s_w[c], rounded */
    __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), scale);   /* f32(acc): nearest-even, as torch's */
    if (bias != NULL) y = _mm256_add_ps(y, _mm256_loadu_ps(bias));
    if (cnt >= 8) _mm256_storeu_ps(dst, y);
    else _mm256_maskstore_ps(dst, qc_dyn_tail_mask(cnt), y);
}

/* the epilogue of an mr x 16 tile, from its accumulators stored right after the k loop (kept in
 * registers through the epilogue's branches, some of the twelve were spilled inside the loop) */
static __attribute__((noinline, target("avx2")))
void qc_dyn_store_tile_avx2(const qc_task *t, const int32_t (*acc)[16], int mr, int64_t row0, int64_t n0)
{
    const qc_dyn_task *d = (const qc_dyn_task *)t;
    const float *ws = d->w_scale + n0, *bias = d->bias != NULL ? d->bias + n0 : NULL, *rs = d->row_scale + row0;
    const int64_t nvalid = t->n - n0, ldy = t->ldc;
    float *y = (float *)t->c + row0 * ldy + n0;
    for (int i = 0; i < mr; i++) {
        const __m256 s = _mm256_set1_ps(rs[i]);
        for (int v = 0; v < 2 && 8 * v < nvalid; v++)
            qc_dyn_store8_avx2(y + i * ldy + 8 * v, _mm256_loadu_si256((const __m256i *)(acc[i] + 8 * v)), s, ws + 8 * v,
                               bias != NULL ? bias + 8 * v : NULL, nvalid - 8 * v);
    }
}

/* -- scalar: 4 x 16 tiles over int16 A and the AVX2 packing ------------------------------ */

#define MR 4
#define NR 16
#define KR 2
#define ELEM 2
#define A_ELEM 2
#define MC 0
#define KC 0
#define QC_FN(name) QC_CAT(name, dyn_scalar)

static inline void QC_FN(tile)(const int mr, const qc_task *t, const uint8_t *a, const uint8_t *b, int64_t groups,
                               int rem, int32_t *scr, int first, int last, int64_t row0, int64_t n0)
{
    (void)rem; (void)scr; (void)first; (void)last;   /* K is one block (KC = 0), A and W padded to KR */
    if (mr > MR) __builtin_unreachable();            /* tile_any's cases past MR */
    int32_t acc[MR][NR];
    memset(acc, 0, sizeof acc);
    const int16_t *w = (const int16_t *)b;
    for (int64_t g = 0; g < groups; g++, w += NR * KR) {
        for (int i = 0; i < mr; i++) {
            const int16_t *ar = (const int16_t *)(a + i * t->lda_bytes) + KR * g;
            const int32_t a0 = ar[0], a1 = ar[1];
            /* no overflow: every partial sum is bounded by Σ|d·w| <= k·255·127 < 2^31 (checked) */
            for (int c = 0; c < NR; c++) acc[i][c] += a0 * w[2 * c] + a1 * w[2 * c + 1];
        }
    }
    const qc_dyn_task *d = (const qc_dyn_task *)t;
    const int64_t nvalid = qc_min64(t->n - n0, NR);
    for (int i = 0; i < mr; i++) {
        float *y = (float *)t->c + (row0 + i) * t->ldc + n0;
        const float s = d->row_scale[row0 + i];
        for (int c = 0; c < nvalid; c++) {
            const float scale = s * d->w_scale[n0 + c];
            float v = (float)acc[i][c] * scale;
            if (d->bias != NULL) v = v + d->bias[n0 + c];
            y[c] = v;
        }
    }
}

#include "gemm_driver.h"

#undef QC_FN
#undef MR
#undef KR
#undef ELEM
#undef A_ELEM

/* -- AVX2: 6 x 16 tiles of vpmaddwd over int16 A and W ------------------------------------ */

#pragma GCC push_options
#pragma GCC target("avx2")
#define MR 6
#define KR 2
#define ELEM 2
#define A_ELEM 2
#define QC_FN(name) QC_CAT(name, dyn_avx2)

static inline __attribute__((always_inline)) void
QC_FN(tile)(const int mr, const qc_task *t, const uint8_t *a, const uint8_t *b, int64_t groups, int rem,
            int32_t *scr, int first, int last, int64_t row0, int64_t n0)
{
    (void)rem; (void)scr; (void)first; (void)last;
    if (mr > MR) __builtin_unreachable();            /* tile_any's cases past MR */
    __m256i acc[MR][2];
#pragma GCC unroll 16
    for (int i = 0; i < mr; i++) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
    const int64_t lda = t->lda_bytes;
    for (int64_t g = 0; g < groups; g++) {
        const __m256i b0 = _mm256_loadu_si256((const __m256i *)b), b1 = _mm256_loadu_si256((const __m256i *)(b + 32));
        b += NR * KR * ELEM;
#pragma GCC unroll 16
        for (int i = 0; i < mr; i++) {
            int32_t x;
            memcpy(&x, a + i * lda + 4 * g, 4);   /* (d[2g], d[2g + 1]) */
            const __m256i av = _mm256_set1_epi32(x);
            acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(av, b0));
            acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(av, b1));
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

#pragma GCC pop_options
#undef QC_FN
#undef MR
#undef KR
#undef ELEM
#undef A_ELEM

/* -- VNNI: 6 x 16 tiles of vpdpbusd ymm over uint8 A and int8 W (dynamic_vnni_tile.h) ------ */

#define MR 6
#define KR 4
#define ELEM 1
#define A_ELEM 1
#ifndef QC_NO_EMULATION
#pragma GCC push_options
#pragma GCC target("avx2")
#define QC_FN(name) QC_CAT(name, dyn_vnni_emu)
#define QC_DPBUSD(acc, a, b) qc_emu_dpbusd256(acc, a, b)
#include "dynamic_vnni_tile.h"
#undef QC_FN
#undef QC_DPBUSD
#pragma GCC pop_options
#endif
#ifndef QC_NO_NATIVE_VNNI
#pragma GCC push_options
#pragma GCC target("avx2,avxvnni")
#define QC_FN(name) QC_CAT(name, dyn_avxvnni)
#define QC_DPBUSD(acc, a, b) _mm256_dpbusd_avx_epi32(acc, a, b)
#include "dynamic_vnni_tile.h"
#undef QC_FN
#undef QC_DPBUSD
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,avx512f,avx512vl,avx512vnni")
#define QC_FN(name) QC_CAT(name, dyn_avx512vnni)
#define QC_DPBUSD(acc, a, b) _mm256_dpbusd_epi32(acc, a, b)  /* the EVEX form on ymm */
#include "dynamic_vnni_tile.h"
#undef QC_FN
#undef QC_DPBUSD
#pragma GCC pop_options
#endif
#undef MR
#undef NR
#undef KR
#undef ELEM
#undef A_ELEM
#undef MC
#undef KC

/* ---------------------------------------------------------------------------------- */
/* the entry                                                                            */
/* ---------------------------------------------------------------------------------- */

typedef int (*qc_dyn_run_fn)(qc_task *t, int nt);

/* the kernel of an ISA id: its W layout, A element size and tile loop; 0 if none here */
static int qc_dyn_kernel(int32_t isa, int *nr, int *kr, int *elem, int *a_u8, qc_dyn_run_fn *run, int *cpu_ok)
{
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2");
    *nr = 16;
    switch (isa) {
    case QC_ISA_SCALAR: *kr = 2; *elem = 2; *a_u8 = 0; *run = run_dyn_scalar; *cpu_ok = 1; return 1;
    case QC_ISA_AVX2: *kr = 2; *elem = 2; *a_u8 = 0; *run = run_dyn_avx2; *cpu_ok = avx2; return 1;
#ifndef QC_NO_EMULATION
    case QC_ISA_AVXVNNI_EMU:
    case QC_ISA_AVX512VNNI_EMU:
        *kr = 4; *elem = 1; *a_u8 = 1; *run = run_dyn_vnni_emu; *cpu_ok = avx2; return 1;
#endif
#ifndef QC_NO_NATIVE_VNNI
    case QC_ISA_AVXVNNI:
        *kr = 4; *elem = 1; *a_u8 = 1; *run = run_dyn_avxvnni;
        *cpu_ok = avx2 && __builtin_cpu_supports("avxvnni");
        return 1;
    case QC_ISA_AVX512VNNI:
    case QC_ISA_AMX:
        *kr = 4; *elem = 1; *a_u8 = 1; *run = run_dyn_avx512vnni;
        *cpu_ok = avx2 && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
        return 1;
#endif
    default: return 0;
    }
}

static inline int64_t qc_dyn_align(int64_t n) { return (n + 63) / 64 * 64; }

/* scratch: 64 bytes of slack (the arena's alignment is not assumed), A, row scales, row z,
 * per_tensor partial ranges (one per block, at most m) */
static int64_t qc_dyn_scratch(int64_t m, int64_t k_pad, int a_elem)
{
    return 64 + qc_dyn_align(m * k_pad * a_elem) + 2 * qc_dyn_align(4 * m) +
           qc_dyn_align((int64_t)sizeof(qc_dyn_range) * m);
}

int64_t qc_rt_dynamic_linear_scratch(int32_t isa, int64_t m, int64_t k)
{
    int nr, kr, elem, a_u8, ok;
    qc_dyn_run_fn run;
    if (!qc_dyn_kernel(isa, &nr, &kr, &elem, &a_u8, &run, &ok) || m < 0 || k <= 0 || m > INT32_MAX || k > INT32_MAX)
        return -1;
    return qc_dyn_scratch(m, qc_ceil_div(k, kr) * kr, a_u8 ? 1 : 2);
}

int qc_rt_dynamic_linear(int32_t isa, const float *x, int64_t m, int64_t k, int64_t n,
                         const void *w, int64_t w_bytes, int32_t nr, int32_t kr, int32_t elem,
                         const int32_t *colsum, const float *w_scale, const float *bias,
                         int32_t per_token, int32_t symmetric, float *y,
                         void *scratch, int64_t scratch_bytes, int threads)
{
    int knr, kkr, kelem, a_u8, cpu_ok;
    qc_dyn_run_fn run;
    if (!qc_dyn_kernel(isa, &knr, &kkr, &kelem, &a_u8, &run, &cpu_ok)) return QC_ERR_ISA;
    if (m < 0 || k <= 0 || n <= 0 || m > INT32_MAX || k > INT32_MAX || n > INT32_MAX) return QC_ERR_SIZE;
    /* the int32 accumulator must be exact: |q − zp| <= 127 (symmetric) or 255, |w| <= 127 */
    if (k * (symmetric ? 127 : 255) * 127 > INT32_MAX) return QC_ERR_SIZE;
    if ((per_token != 0 && per_token != 1) || (symmetric != 0 && symmetric != 1)) return QC_ERR_PARAM;
    if (threads < 0) return QC_ERR_THREADS;
    if (x == NULL || w == NULL || w_scale == NULL || y == NULL || scratch == NULL || (a_u8 && colsum == NULL))
        return QC_ERR_NULL;
    const int64_t n_pad = qc_ceil_div(n, knr) * knr, k_pad = qc_ceil_div(k, kkr) * kkr;
    if (nr != knr || kr != kkr || elem != kelem || w_bytes != n_pad * k_pad * kelem) return QC_ERR_LAYOUT;
    const int a_elem = a_u8 ? 1 : 2;
    if (scratch_bytes < qc_dyn_scratch(m, k_pad, a_elem)) return QC_ERR_SIZE;
    if (!cpu_ok) return QC_ERR_ISA;
    if (m == 0) return QC_OK;

    uint8_t *base = (uint8_t *)scratch + (64 - (uintptr_t)scratch % 64) % 64;
    qc_dyn_prep j;
    memset(&j, 0, sizeof j);
    j.x = x; j.m = m; j.k = k; j.k_pad = k_pad;
    j.rows_per_block = k >= QC_DYN_BLOCK_FLOATS ? 1 : QC_DYN_BLOCK_FLOATS / k;
    j.symmetric = symmetric; j.vec = isa != QC_ISA_SCALAR; j.a_u8 = a_u8;
    j.a = base;
    j.row_scale = (float *)(base + qc_dyn_align(m * k_pad * a_elem));
    j.row_z = (int32_t *)((uint8_t *)j.row_scale + qc_dyn_align(4 * m));
    j.partial = (qc_dyn_range *)((uint8_t *)j.row_z + qc_dyn_align(4 * m));
    int nonfinite = 0, overflow = 0;
    j.nonfinite = &nonfinite;
    j.overflow = &overflow;
    const int64_t blocks = qc_ceil_div(m, j.rows_per_block);
    const int nt = qc_rt_threads(threads, m * k);
    if (per_token) {
        QC_RT_PARALLEL_FOR(qc_dyn_rows_chunk, &j, blocks, nt);
        if (__atomic_load_n(&nonfinite, __ATOMIC_RELAXED)) return QC_RT_ERR_NONFINITE;
        if (__atomic_load_n(&overflow, __ATOMIC_RELAXED)) return QC_RT_ERR_DYNAMIC_RANGE;
    } else {
        QC_RT_PARALLEL_FOR(qc_dyn_scan_chunk, &j, blocks, nt);
        qc_dyn_range range = j.partial[0];
        for (int64_t b = 1; b < blocks; b++) qc_dyn_merge(&range, &j.partial[b]);
        if (qc_dyn_nonfinite(&range)) return QC_RT_ERR_NONFINITE;
        qc_dyn_qp p;
        if (!qc_dyn_qparams(symmetric, &range, &p)) return QC_RT_ERR_DYNAMIC_RANGE;
        j.tensor_qp = &p;
        QC_RT_PARALLEL_FOR(qc_dyn_quantize_chunk, &j, blocks, nt);
    }

    qc_dyn_task d;
    memset(&d, 0, sizeof d);
    qc_task *t = &d.t;
    t->a = j.a;
    t->lda_bytes = k_pad * a_elem;
    t->a_cols = k_pad;
    t->m = m; t->n = n; t->k = k_pad;
    t->b = (const uint8_t *)w;
    t->out_type = QC_OUT_F32;
    t->c = (uint8_t *)y;
    t->ldc = n;
    d.row_scale = j.row_scale; d.w_scale = w_scale; d.bias = bias;
    d.row_z = j.row_z; d.colsum = colsum;
    return run(t, threads > 0 ? threads : 1);
}
