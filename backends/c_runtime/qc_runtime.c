/* qcompiler C runtime: portable kernels (gcc auto-vectorizes the channel loops).
 * Semantics and conventions: qc_runtime.h. Build with -ffp-contract=off. */
#include "qc_runtime.h"

#include <string.h>

/* Parallel loops: fn(ctx, chunk, slot) for chunk in [0, total). A target whose runtime
 * translation unit includes a thread pool first (x86: the GEMM's thread_pool.h) shares it;
 * elsewhere the loop runs serially. */
typedef void (*qc_rt_chunk_fn)(const void *ctx, int64_t chunk, int slot);
#ifdef QC_THREAD_POOL_H
#define QC_RT_PARALLEL_FOR(fn, ctx, total, nt) qc_parallel_for((fn), (ctx), (total), (nt))
#else
#define QC_RT_PARALLEL_FOR(fn, ctx, total, nt) qc_rt_serial_for((fn), (ctx), (total))
static void qc_rt_serial_for(qc_rt_chunk_fn fn, const void *ctx, int64_t total)
{
    for (int64_t i = 0; i < total; i++) fn(ctx, i, 0);
}
#endif

/* threads for a kernel of `work` elements: tiny ones stay on the calling thread */
static inline int qc_rt_threads(int threads, int64_t work)
{
    return (threads <= 1 || work < 32768) ? 1 : threads;
}

static inline uint8_t qc_clamp_u8(int32_t v, int32_t lo, int32_t hi)
{
    return (uint8_t)(v < lo ? lo : v > hi ? hi : v);
}

/* ---------------------------------------------------------------------------------- */
/* graph boundary                                                                        */
/* ---------------------------------------------------------------------------------- */

typedef struct {
    const float *x;
    uint8_t *q;
    int64_t c, hw, blocks;
    int nhwc;
    float scale;
    int32_t zp, qmin, qmax;
} qc_quantize_job;

/* positions per chunk of the boundary conversions (threaded: at batch 8 the input alone is
 * 1.2 M floats) */
#define QC_BOUNDARY_BLOCK 8192

/* chunk = image * blocks + block: positions [block * QC_BOUNDARY_BLOCK, ...) of every
 * channel, quantized 256 at a time per channel (a loop gcc vectorizes), then interleaved */
static void qc_quantize_chunk(const void *ctx, int64_t chunk, int slot)
{
    const qc_quantize_job *j = (const qc_quantize_job *)ctx;
    const int64_t b = chunk / j->blocks, c = j->c, hw = j->hw;
    const int64_t start = chunk % j->blocks * QC_BOUNDARY_BLOCK;
    const int64_t end = start + QC_BOUNDARY_BLOCK < hw ? start + QC_BOUNDARY_BLOCK : hw;
    const float lo = (float)(j->qmin - j->zp), hi = (float)(j->qmax - j->zp), scale = j->scale;
    const int32_t zp = j->zp;
    uint8_t *restrict q = j->q;
    uint8_t tmp[256];
    (void)slot;
    for (int64_t i0 = start; i0 < end; i0 += 256) {
        const int64_t len = end - i0 < 256 ? end - i0 : 256;
        for (int64_t ch = 0; ch < c; ch++) {
            const float *restrict src = j->x + (b * c + ch) * hw + i0;
            uint8_t *restrict dst = j->nhwc ? tmp : q + (b * c + ch) * hw + i0;
            for (int64_t i = 0; i < len; i++) {
                float y = src[i] / scale;           /* IEEE division, as the reference */
                y = y >= lo ? y : lo;               /* NaN -> lo, as torch */
                y = y > hi ? hi : y;
                dst[i] = (uint8_t)((int32_t)qc_round_half_even(y) + zp);
            }
            if (j->nhwc) {
                uint8_t *restrict out = q + (b * hw + i0) * c + ch;
                for (int64_t i = 0; i < len; i++) out[i * c] = tmp[i];
            }
        }
    }
}

void qc_rt_quantize(const float *x, uint8_t *q, int64_t n, int64_t c, int64_t hw, int nhwc,
                    float scale, int32_t zp, int32_t qmin, int32_t qmax, int threads)
{
    const int64_t blocks = (hw + QC_BOUNDARY_BLOCK - 1) / QC_BOUNDARY_BLOCK;
    const qc_quantize_job job = {x, q, c, hw, blocks, nhwc, scale, zp, qmin, qmax};
    QC_RT_PARALLEL_FOR(qc_quantize_chunk, &job, n * blocks, qc_rt_threads(threads, n * c * hw));
}

void qc_rt_dequantize(const uint8_t *q, float *x, int64_t n, int64_t c, int64_t hw, int nhwc,
                      float scale, int32_t zp)
{
    for (int64_t b = 0; b < n; b++)
        for (int64_t ch = 0; ch < c; ch++)
            for (int64_t i = 0; i < hw; i++) {
                uint8_t v = nhwc ? q[(b * hw + i) * c + ch] : q[(b * c + ch) * hw + i];
                x[(b * c + ch) * hw + i] = (float)((int32_t)v - zp) * scale;
            }
}

void qc_rt_export_int(const uint8_t *q, void *out, int64_t n, int64_t c, int64_t hw, int nhwc, int is_signed)
{
    uint8_t *o = (uint8_t *)out;
    const uint8_t flip = is_signed ? 0x80 : 0;    /* int8 storage: undo the +128 shift */
    for (int64_t b = 0; b < n; b++)
        for (int64_t ch = 0; ch < c; ch++)
            for (int64_t i = 0; i < hw; i++) {
                uint8_t v = nhwc ? q[(b * hw + i) * c + ch] : q[(b * c + ch) * hw + i];
                o[(b * c + ch) * hw + i] = v ^ flip;
            }
}

void qc_rt_nhwc_to_nchw(const uint8_t *x, uint8_t *y, int64_t n, int64_t c, int64_t hw)
{
    for (int64_t b = 0; b < n; b++)
        for (int64_t i = 0; i < hw; i++)
            for (int64_t ch = 0; ch < c; ch++)
                y[(b * c + ch) * hw + i] = x[(b * hw + i) * c + ch];
}

void qc_rt_nchw_to_nhwc(const uint8_t *x, uint8_t *y, int64_t n, int64_t c, int64_t hw)
{
    for (int64_t b = 0; b < n; b++)
        for (int64_t ch = 0; ch < c; ch++)
            for (int64_t i = 0; i < hw; i++)
                y[(b * hw + i) * c + ch] = x[(b * c + ch) * hw + i];
}

/* ---------------------------------------------------------------------------------- */
/* convolution helpers                                                                   */
/* ---------------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *x;
    uint8_t *col;
    const qc_window *g;
    int64_t c0, cg;
    uint8_t pad;
} qc_im2col_job;

/* copies n bytes: up to 64 (a thin input's kernel row: 21 bytes for a 3-channel 7x7 stem, 48
 * after its space-to-depth), two overlapping fixed-size copies (single loads and stores, no
 * call); memcpy otherwise */
static inline void qc_copy_bytes(uint8_t *restrict dst, const uint8_t *restrict src, int64_t n)
{
    if (n > 64) {
        memcpy(dst, src, (size_t)n);
    } else if (n >= 32) {
        memcpy(dst, src, 32);
        memcpy(dst + n - 32, src + n - 32, 32);
    } else if (n >= 16) {
        memcpy(dst, src, 16);
        memcpy(dst + n - 16, src + n - 16, 16);
    } else if (n >= 8) {
        memcpy(dst, src, 8);
        memcpy(dst + n - 8, src + n - 8, 8);
    } else if (n >= 4) {
        memcpy(dst, src, 4);
        memcpy(dst + n - 4, src + n - 4, 4);
    } else {
        for (int64_t i = 0; i < n; i++) dst[i] = src[i];
    }
}

/* rows [r0, r0 + count) of the im2col matrix (row r = (b * oh + oy) * ow + ox; columns
 * (ky, kx, channel) of channels [c0, c0 + cg)), row stride ldcol; columns past
 * kh * kw * cg are not written */
void qc_rt_im2col_rows(const uint8_t *x, uint8_t *col, int64_t ldcol, const qc_window *g, int64_t c0,
                       int64_t cg, uint8_t pad, int64_t r0, int64_t count)
{
    /* all channels, undilated: the kw taps of a kernel row are kw * c adjacent bytes */
    const int whole_rows = cg == g->c && g->dw == 1;
    const int64_t seg = (int64_t)g->kw * cg;
    /* thin inputs (a 3-channel stem: 21 bytes a kernel row): one 32-byte copy per kernel
     * row, whose spill the next row's copy overwrites (the last one's lands in the row's
     * K pad, when ldcol leaves room), as long as the 32 bytes lie inside the input */
    const int wide = whole_rows && seg <= 32 && (g->kh - 1) * seg + 32 <= ldcol;
    const uint8_t *const x_end = x + g->n * g->h * g->w * g->c;
    int64_t b = r0 / (g->oh * g->ow), oy = r0 / g->ow % g->oh, ox = r0 % g->ow;
    for (int64_t r = 0; r < count; r++) {
        uint8_t *row = col + r * ldcol;
        const int64_t ix0 = ox * g->sw - g->pw;
        const int inside_x = ix0 >= 0 && ix0 + (int64_t)(g->kw - 1) * g->dw < g->w;
        for (int32_t i = 0; i < g->kh; i++) {
            const int64_t iy = oy * g->sh - g->ph + (int64_t)i * g->dh;
            if (whole_rows && inside_x && iy >= 0 && iy < g->h) {
                const uint8_t *src = x + ((b * g->h + iy) * g->w + ix0) * g->c;
                if (wide && src + 32 <= x_end) memcpy(row, src, 32);
                else qc_copy_bytes(row, src, seg);
                row += seg;
                continue;
            }
            for (int32_t t = 0; t < g->kw; t++, row += cg) {
                const int64_t ix = ix0 + (int64_t)t * g->dw;
                if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w)
                    memset(row, pad, (size_t)cg);
                else
                    qc_copy_bytes(row, x + ((b * g->h + iy) * g->w + ix) * g->c + c0, cg);
            }
        }
        if (++ox == g->ow) {
            ox = 0;
            if (++oy == g->oh) { oy = 0; b++; }
        }
    }
}

/* one output row (chunk = b * oh + oy) of im2col */
static void qc_im2col_row(const void *ctx, int64_t chunk, int slot)
{
    const qc_im2col_job *j = (const qc_im2col_job *)ctx;
    const int64_t k = (int64_t)j->g->kh * j->g->kw * j->cg;
    (void)slot;
    qc_rt_im2col_rows(j->x, j->col + chunk * j->g->ow * k, k, j->g, j->c0, j->cg, j->pad, chunk * j->g->ow,
                      j->g->ow);
}

void qc_rt_im2col(const uint8_t *x, uint8_t *col, const qc_window *g, int64_t c0, int64_t cg,
                  uint8_t pad, int threads)
{
    const qc_im2col_job job = {x, col, g, c0, cg, pad};
    const int64_t rows = g->n * g->oh;
    QC_RT_PARALLEL_FOR(qc_im2col_row, &job, rows,
                       qc_rt_threads(threads, rows * g->ow * g->kh * g->kw * cg));
}

/* channels per register-resident block of the pooling accumulators */
#define QC_CBLOCK 64
/* the depthwise kernel keeps one int32 accumulator per channel on the stack */
#define QC_DW_MAX_CHANNELS 4096

/* out[ch] = requant(acc[ch]) with the parameters of channels [c0, c0 + n): the mode test is
 * hoisted so each loop vectorizes (fully, when inlined with a constant n) */
static inline void qc_requant_block(const int32_t *restrict acc, uint8_t *restrict out, int64_t n,
                                    const qc_rq *rq, int64_t c0)
{
    if (rq->mode == QC_RQ_FP32) {
        const float lo = (float)(rq->qmin - rq->zp), hi = (float)(rq->qmax - rq->zp);
        const float *restrict mult = rq->mult + c0;
        const int32_t zp = rq->zp;
        for (int64_t ch = 0; ch < n; ch++) {
            float y = (float)acc[ch] * mult[ch];
            y = y < lo ? lo : y;            /* acc and mult are finite: no NaN here */
            y = y > hi ? hi : y;
            out[ch] = (uint8_t)((int32_t)qc_round_half_even(y) + zp);
        }
    } else {
        const int32_t *restrict m0 = rq->m0 + c0, *restrict shift = rq->shift + c0;
        const int64_t zp = rq->zp, lo = rq->qmin, hi = rq->qmax;
        for (int64_t ch = 0; ch < n; ch++) {
            /* (p + 2^(t-1)) >> t == ((p >> (t-1)) + 1) >> 1 exactly (floors of floors), and
             * this form has no variable 64-bit shift of a constant, so it vectorizes */
            const int64_t p = (int64_t)acc[ch] * (int64_t)m0[ch];
            int64_t q = (((p >> (shift[ch] - 1)) + 1) >> 1) + zp;
            q = q < lo ? lo : q;
            q = q > hi ? hi : q;
            out[ch] = (uint8_t)(int32_t)q;
        }
    }
}

void qc_rt_requant_channels(const int32_t *restrict acc, uint8_t *restrict out, int64_t n, const qc_rq *rq)
{
    qc_requant_block(acc, out, n, rq, 0);
}

typedef struct {
    const uint8_t *x;
    uint8_t *y;
    const qc_window *g;
    int32_t zx;
    const int32_t *w;
    const int32_t *bias;
    const int32_t *bias3;    /* 3x3 kernels: bias - zx * (sum of the 9 taps), see qc_dw_block16_3x3 */
    const qc_rq *rq;
} qc_depthwise_job;

/* 16 channels of one depthwise output pixel: acc = bias + sum over the taps [i0, i1) x
 * [t0, t1) of (x - zx) * w, in int32 lanes kept in registers. Intrinsics of the runtime
 * variant's ISA (-mavx512bw / -mavx2 builds), plain C otherwise (gcc's own vectorization of
 * this loop widened u8 -> int32 one lane at a time). x: the first tap of the block; xi / xt:
 * byte steps per kernel row / column; w: the weights of that tap, wi / wt: steps likewise. */
#define QC_DW_BLOCK 16
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
static inline void qc_dw_block16(int32_t *restrict acc, const int32_t *restrict bias, const uint8_t *restrict x,
                                 int64_t xi, int64_t xt, const int32_t *restrict w, int64_t wi, int64_t wt,
                                 int32_t i0, int32_t i1, int32_t t0, int32_t t1, int32_t zx)
{
#if defined(__AVX512F__)
    const __m512i z = _mm512_set1_epi32(zx);
    __m512i s = _mm512_loadu_si512(bias);
    for (int32_t i = i0; i < i1; i++)
        for (int32_t t = t0; t < t1; t++) {
            const __m512i xv = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(x + i * xi + t * xt)));
            s = _mm512_add_epi32(s, _mm512_mullo_epi32(_mm512_sub_epi32(xv, z),
                                                       _mm512_loadu_si512(w + i * wi + t * wt)));
        }
    _mm512_storeu_si512(acc, s);
#elif defined(__AVX2__)
    const __m256i z = _mm256_set1_epi32(zx);
    __m256i s0 = _mm256_loadu_si256((const __m256i *)bias), s1 = _mm256_loadu_si256((const __m256i *)(bias + 8));
    for (int32_t i = i0; i < i1; i++)
        for (int32_t t = t0; t < t1; t++) {
            const uint8_t *px = x + i * xi + t * xt;
            const int32_t *pw = w + i * wi + t * wt;
            const __m256i x0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)px));
            const __m256i x1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(px + 8)));
            s0 = _mm256_add_epi32(s0, _mm256_mullo_epi32(_mm256_sub_epi32(x0, z),
                                                         _mm256_loadu_si256((const __m256i *)pw)));
            s1 = _mm256_add_epi32(s1, _mm256_mullo_epi32(_mm256_sub_epi32(x1, z),
                                                         _mm256_loadu_si256((const __m256i *)(pw + 8))));
        }
    _mm256_storeu_si256((__m256i *)acc, s0);
    _mm256_storeu_si256((__m256i *)(acc + 8), s1);
#else
    for (int l = 0; l < QC_DW_BLOCK; l++) acc[l] = bias[l];
    for (int32_t i = i0; i < i1; i++)
        for (int32_t t = t0; t < t1; t++)
            for (int l = 0; l < QC_DW_BLOCK; l++)
                acc[l] += ((int32_t)x[i * xi + t * xt + l] - zx) * w[i * wi + t * wt + l];
#endif
}

/* the same for a whole 3x3 window inside the input, with x - zx folded out: acc = bias3
 * + sum x * w, where bias3 = bias - zx * sum w (wrapping int32, exact as the sum fits).
 * x zero-extended to int32 lanes has zero upper halves, so vpmaddwd of it with an int32 w
 * is exactly x * w: one instruction instead of vpsubd + vpmulld (two uops). */
static inline void qc_dw_block16_3x3(int32_t *restrict acc, const int32_t *restrict bias3,
                                     const uint8_t *restrict x, int64_t xi, int64_t xt,
                                     const int32_t *restrict w, int64_t wi, int64_t wt)
{
#if defined(__AVX512BW__)
    __m512i s = _mm512_loadu_si512(bias3);
    for (int32_t i = 0; i < 3; i++)
        for (int32_t t = 0; t < 3; t++) {
            const __m512i xv = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(x + i * xi + t * xt)));
            s = _mm512_add_epi32(s, _mm512_madd_epi16(xv, _mm512_loadu_si512(w + i * wi + t * wt)));
        }
    _mm512_storeu_si512(acc, s);
#elif defined(__AVX2__)
    __m256i s0 = _mm256_loadu_si256((const __m256i *)bias3), s1 = _mm256_loadu_si256((const __m256i *)(bias3 + 8));
    for (int32_t i = 0; i < 3; i++)
        for (int32_t t = 0; t < 3; t++) {
            const uint8_t *px = x + i * xi + t * xt;
            const int32_t *pw = w + i * wi + t * wt;
            const __m256i x0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)px));
            const __m256i x1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(px + 8)));
            s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(x0, _mm256_loadu_si256((const __m256i *)pw)));
            s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(x1, _mm256_loadu_si256((const __m256i *)(pw + 8))));
        }
    _mm256_storeu_si256((__m256i *)acc, s0);
    _mm256_storeu_si256((__m256i *)(acc + 8), s1);
#else
    for (int l = 0; l < QC_DW_BLOCK; l++) {
        uint32_t v = (uint32_t)bias3[l];
        for (int32_t i = 0; i < 3; i++)
            for (int32_t t = 0; t < 3; t++)
                v += (uint32_t)((int32_t)x[i * xi + t * xt + l] * w[i * wi + t * wt + l]);
        acc[l] = (int32_t)v;
    }
#endif
}

/* one output row (chunk = b * oh + oy) of a depthwise convolution: per output pixel, the
 * accumulators of each block of 16 channels stay in registers over the taps; padded taps
 * add (zx - zx) * w = 0 and are skipped */
static void qc_depthwise_row(const void *ctx, int64_t chunk, int slot)
{
    const qc_depthwise_job *j = (const qc_depthwise_job *)ctx;
    const qc_window *g = j->g;
    const int64_t c = g->c, b = chunk / g->oh, oy = chunk % g->oh;
    const int64_t cfull = c - c % QC_DW_BLOCK;
    const int32_t zx = j->zx;
    const int64_t xi = (int64_t)g->dh * g->w * c, xt = (int64_t)g->dw * c;   /* steps of the taps */
    const int64_t wi = (int64_t)g->kw * c, wt = c;
    int32_t acc[QC_DW_MAX_CHANNELS];
    (void)slot;
    /* kernel rows inside the input: the same for the whole output row */
    int32_t i0 = 0, i1 = g->kh;
    while (i0 < i1 && oy * g->sh - g->ph + (int64_t)i0 * g->dh < 0) i0++;
    while (i1 > i0 && oy * g->sh - g->ph + (int64_t)(i1 - 1) * g->dh >= g->h) i1--;
    for (int64_t ox = 0; ox < g->ow; ox++) {
        int32_t t0 = 0, t1 = g->kw;
        while (t0 < t1 && ox * g->sw - g->pw + (int64_t)t0 * g->dw < 0) t0++;
        while (t1 > t0 && ox * g->sw - g->pw + (int64_t)(t1 - 1) * g->dw >= g->w) t1--;
        /* the first tap inside the input (x and w); an empty window adds nothing but the bias */
        const int32_t ni = i1 - i0, nt = t1 - t0;
        const int64_t iy = oy * g->sh - g->ph + (int64_t)i0 * g->dh, ix = ox * g->sw - g->pw + (int64_t)t0 * g->dw;
        const uint8_t *x0 = j->x + (ni > 0 && nt > 0 ? ((b * g->h + iy) * g->w + ix) * c : 0);
        const int32_t *w0 = j->w + (int64_t)i0 * wi + (int64_t)t0 * wt;
        uint8_t *out = j->y + (chunk * g->ow + ox) * c;
        if (g->kh == 3 && g->kw == 3 && ni == 3 && nt == 3) {
            /* interior 3x3 windows (most of them): unrolled taps, zx folded into bias3 */
            for (int64_t cb = 0; cb < cfull; cb += QC_DW_BLOCK)
                qc_dw_block16_3x3(acc + cb, j->bias3 + cb, x0 + cb, xi, xt, w0 + cb, wi, wt);
        } else {
            for (int64_t cb = 0; cb < cfull; cb += QC_DW_BLOCK)
                qc_dw_block16(acc + cb, j->bias + cb, x0 + cb, xi, xt, w0 + cb, wi, wt, 0, ni, 0, nt, zx);
        }
        if (cfull < c) {                           /* the channel tail, one at a time */
            for (int64_t ch = cfull; ch < c; ch++) {
                int32_t s = j->bias[ch];
                for (int32_t i = 0; i < ni; i++)
                    for (int32_t t = 0; t < nt; t++)
                        s += ((int32_t)x0[i * xi + t * xt + ch] - zx) * w0[i * wi + t * wt + ch];
                acc[ch] = s;
            }
        }
        /* one requantization loop over all channels (a constant 16 would be unrolled, not vectorized) */
        qc_requant_block(acc, out, c, j->rq, 0);
    }
}

void qc_rt_depthwise(const uint8_t *x, uint8_t *y, const qc_window *g, int32_t zx,
                     const int32_t *w, const int32_t *bias, const qc_rq *rq, int threads)
{
    int32_t bias3[QC_DW_MAX_CHANNELS];
    if (g->kh == 3 && g->kw == 3)
        for (int64_t ch = 0; ch < g->c; ch++) {
            uint32_t v = (uint32_t)bias[ch];        /* wrapping: exact once the taps are added */
            for (int t = 0; t < 9; t++) v -= (uint32_t)(zx * w[t * g->c + ch]);
            bias3[ch] = (int32_t)v;
        }
    const qc_depthwise_job job = {x, y, g, zx, w, bias, bias3, rq};
    const int64_t rows = g->n * g->oh;
    QC_RT_PARALLEL_FOR(qc_depthwise_row, &job, rows,
                       qc_rt_threads(threads, rows * g->ow * g->c * g->kh * g->kw));
}

/* ---------------------------------------------------------------------------------- */
/* pools                                                                                 */
/* ---------------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *x;
    uint8_t *y;
    const qc_window *g;
} qc_max_pool_job;

/* one output row (chunk = b * oh + oy) of a max pool */
static void qc_max_pool_row(const void *ctx, int64_t chunk, int slot)
{
    const qc_max_pool_job *j = (const qc_max_pool_job *)ctx;
    const qc_window *g = j->g;
    const int64_t c = g->c, b = chunk / g->oh, oy = chunk % g->oh;
    (void)slot;
    for (int64_t ox = 0; ox < g->ow; ox++) {
        uint8_t *restrict out = j->y + (chunk * g->ow + ox) * c;
        memset(out, 0, (size_t)c);            /* 0 is the smallest stored value */
        for (int32_t i = 0; i < g->kh; i++) {
            const int64_t iy = oy * g->sh - g->ph + (int64_t)i * g->dh;
            if (iy < 0 || iy >= g->h) continue;
            for (int32_t t = 0; t < g->kw; t++) {
                const int64_t ix = ox * g->sw - g->pw + (int64_t)t * g->dw;
                if (ix < 0 || ix >= g->w) continue;
                const uint8_t *restrict px = j->x + ((b * g->h + iy) * g->w + ix) * c;
                for (int64_t ch = 0; ch < c; ch++)
                    out[ch] = px[ch] > out[ch] ? px[ch] : out[ch];
            }
        }
    }
}

void qc_rt_max_pool(const uint8_t *x, uint8_t *y, const qc_window *g, int threads)
{
    const qc_max_pool_job job = {x, y, g};
    const int64_t rows = g->n * g->oh;
    QC_RT_PARALLEL_FOR(qc_max_pool_row, &job, rows, qc_rt_threads(threads, rows * g->ow * g->c * g->kh * g->kw));
}

void qc_rt_avg_pool(const uint8_t *x, uint8_t *y, const qc_window *g, const int32_t *h0, const int32_t *h1,
                    const int32_t *w0, const int32_t *w1, int32_t zx, const qc_rq *rq, int threads)
{
    const int64_t c = g->c;
    for (int64_t b = 0; b < g->n; b++)
        for (int64_t oy = 0; oy < g->oh; oy++)
            for (int64_t ox = 0; ox < g->ow; ox++) {
                uint8_t *out = y + ((b * g->oh + oy) * g->ow + ox) * c;
                const int64_t pos = oy * g->ow + ox;
                const int32_t count = (h1[oy] - h0[oy]) * (w1[ox] - w0[ox]);
                for (int64_t cb = 0; cb < c; cb += QC_CBLOCK) {
                    const int64_t cn = c - cb < QC_CBLOCK ? c - cb : QC_CBLOCK;
                    int32_t acc[QC_CBLOCK];
                    for (int64_t ch = 0; ch < cn; ch++) acc[ch] = -count * zx;
                    for (int64_t iy = h0[oy]; iy < h1[oy]; iy++)
                        for (int64_t ix = w0[ox]; ix < w1[ox]; ix++) {
                            const uint8_t *px = x + ((b * g->h + iy) * g->w + ix) * c + cb;
                            for (int64_t ch = 0; ch < cn; ch++) acc[ch] += px[ch];
                        }
                    for (int64_t ch = 0; ch < cn; ch++)
                        out[cb + ch] = (uint8_t)qc_requant(acc[ch], rq, pos);
                }
            }
}

/* ---------------------------------------------------------------------------------- */
/* elementwise                                                                           */
/* ---------------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *a, *b;
    uint8_t *y;
    int64_t count;
    int32_t za, zb, mode;
    float ma, mb;
    int64_t m0a, m0b;
    int32_t shift, zo, qmin, qmax;
} qc_add_job;

/* elements per chunk of the threaded elementwise kernels */
#define QC_EW_BLOCK 16384

static void qc_add_chunk(const void *ctx, int64_t chunk, int slot)
{
    const qc_add_job *j = (const qc_add_job *)ctx;
    const int64_t i0 = chunk * QC_EW_BLOCK, n = j->count - i0 < QC_EW_BLOCK ? j->count - i0 : QC_EW_BLOCK;
    const uint8_t *restrict a = j->a + i0, *restrict b = j->b + i0;
    uint8_t *restrict y = j->y + i0;
    const int32_t za = j->za, zb = j->zb, zo = j->zo, qmin = j->qmin, qmax = j->qmax;
    (void)slot;
    if (j->mode == QC_RQ_FP32) {
        const float lo = (float)(qmin - zo), hi = (float)(qmax - zo), ma = j->ma, mb = j->mb;
        for (int64_t i = 0; i < n; i++) {
            /* two float32 products and one float32 sum, each rounded (no FMA) */
            float v = (float)((int32_t)a[i] - za) * ma + (float)((int32_t)b[i] - zb) * mb;
            v = v >= lo ? v : lo;       /* NaN -> lo */
            v = v > hi ? hi : v;
            y[i] = (uint8_t)((int32_t)qc_round_half_even(v) + zo);
        }
    } else {
        const int64_t m0a = j->m0a, m0b = j->m0b;
        const int32_t shift = j->shift;
        const int64_t half = (int64_t)1 << (shift - 1);
        for (int64_t i = 0; i < n; i++) {
            int64_t acc = ((int64_t)a[i] - za) * m0a + ((int64_t)b[i] - zb) * m0b + half;
            int64_t q = (acc >> shift) + zo;
            y[i] = (uint8_t)(q < qmin ? qmin : q > qmax ? qmax : q);
        }
    }
}

void qc_rt_add(const uint8_t *a, const uint8_t *b, uint8_t *y, int64_t count, int32_t za, int32_t zb,
               int32_t mode, float ma, float mb, int64_t m0a, int64_t m0b, int32_t shift,
               int32_t zo, int32_t qmin, int32_t qmax, int threads)
{
    const qc_add_job job = {a, b, y, count, za, zb, mode, ma, mb, m0a, m0b, shift, zo, qmin, qmax};
    QC_RT_PARALLEL_FOR(qc_add_chunk, &job, (count + QC_EW_BLOCK - 1) / QC_EW_BLOCK, qc_rt_threads(threads, count));
}

void qc_rt_mul(const uint8_t *a, const uint8_t *b, uint8_t *y, int64_t count, int32_t za, int32_t zb,
               const qc_rq *rq, int threads)
{
    for (int64_t i = 0; i < count; i++)
        y[i] = (uint8_t)qc_requant(((int64_t)a[i] - za) * ((int64_t)b[i] - zb), rq, 0);
}

void qc_rt_requantize(const uint8_t *x, uint8_t *y, int64_t count, int32_t zx, const qc_rq *rq)
{
    for (int64_t i = 0; i < count; i++)
        y[i] = (uint8_t)qc_requant((int64_t)x[i] - zx, rq, 0);
}

void qc_rt_clamp(const uint8_t *x, uint8_t *y, int64_t count, int32_t lo, int32_t hi)
{
    for (int64_t i = 0; i < count; i++)
        y[i] = qc_clamp_u8(x[i], lo, hi);
}

void qc_rt_cat_part(const uint8_t *x, uint8_t *y, int64_t outer, int64_t inner, int64_t dst_inner,
                    int64_t offset, int32_t zx, const qc_rq *rq)
{
    for (int64_t o = 0; o < outer; o++) {
        const uint8_t *src = x + o * inner;
        uint8_t *dst = y + o * dst_inner + offset;
        if (rq == NULL) {
            memcpy(dst, src, (size_t)inner);
        } else {
            for (int64_t i = 0; i < inner; i++)
                dst[i] = (uint8_t)qc_requant((int64_t)src[i] - zx, rq, 0);
        }
    }
}

int qc_rt_abi_version(void) { return QC_RT_ABI_VERSION; }
