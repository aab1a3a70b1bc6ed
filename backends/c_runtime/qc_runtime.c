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

void qc_rt_quantize(const float *x, uint8_t *q, int64_t n, int64_t c, int64_t hw, int nhwc,
                    float scale, int32_t zp, int32_t qmin, int32_t qmax, int threads)
{
    const float lo = (float)(qmin - zp), hi = (float)(qmax - zp);
    for (int64_t b = 0; b < n; b++)
        for (int64_t ch = 0; ch < c; ch++) {
            const float *src = x + (b * c + ch) * hw;
            for (int64_t i = 0; i < hw; i++) {
                float y = src[i] / scale;               /* IEEE division, as the reference */
                if (!(y >= lo)) y = lo;
                if (y > hi) y = hi;
                uint8_t v = (uint8_t)((int32_t)qc_round_half_even(y) + zp);
                if (nhwc) q[(b * hw + i) * c + ch] = v;
                else q[(b * c + ch) * hw + i] = v;
            }
        }
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

/* copies n bytes: an inline loop for the few bytes of a thin input, memcpy otherwise */
static inline void qc_copy_bytes(uint8_t *restrict dst, const uint8_t *restrict src, int64_t n)
{
    if (n < 32) {
        for (int64_t i = 0; i < n; i++) dst[i] = src[i];
    } else {
        memcpy(dst, src, (size_t)n);
    }
}

/* one output row (chunk = b * oh + oy) of im2col */
static void qc_im2col_row(const void *ctx, int64_t chunk, int slot)
{
    const qc_im2col_job *j = (const qc_im2col_job *)ctx;
    const qc_window *g = j->g;
    const int64_t b = chunk / g->oh, oy = chunk % g->oh, cg = j->cg;
    const int64_t k = (int64_t)g->kh * g->kw * cg;
    /* all channels, undilated: the kw taps of a kernel row are kw * c adjacent bytes */
    const int whole_rows = cg == g->c && g->dw == 1;
    (void)slot;
    for (int64_t ox = 0; ox < g->ow; ox++) {
        uint8_t *row = j->col + (chunk * g->ow + ox) * k;
        const int64_t ix0 = ox * g->sw - g->pw;
        const int inside_x = ix0 >= 0 && ix0 + (int64_t)(g->kw - 1) * g->dw < g->w;
        for (int32_t i = 0; i < g->kh; i++) {
            const int64_t iy = oy * g->sh - g->ph + (int64_t)i * g->dh;
            if (whole_rows && inside_x && iy >= 0 && iy < g->h) {
                qc_copy_bytes(row, j->x + ((b * g->h + iy) * g->w + ix0) * g->c, g->kw * cg);
                row += g->kw * cg;
                continue;
            }
            for (int32_t t = 0; t < g->kw; t++, row += cg) {
                const int64_t ix = ix0 + (int64_t)t * g->dw;
                if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w)
                    memset(row, j->pad, (size_t)cg);
                else
                    qc_copy_bytes(row, j->x + ((b * g->h + iy) * g->w + ix) * g->c + j->c0, cg);
            }
        }
    }
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

/* out[ch] = requant(acc[ch]) with the per-channel parameters of channels [0, n): the mode
 * test is hoisted so each loop vectorizes */
void qc_rt_requant_channels(const int32_t *restrict acc, uint8_t *restrict out, int64_t n, const qc_rq *rq)
{
    if (rq->mode == QC_RQ_FP32) {
        const float lo = (float)(rq->qmin - rq->zp), hi = (float)(rq->qmax - rq->zp);
        const float *restrict mult = rq->mult;
        const int32_t zp = rq->zp;
        for (int64_t ch = 0; ch < n; ch++) {
            float y = (float)acc[ch] * mult[ch];
            y = y < lo ? lo : y;            /* acc and mult are finite: no NaN here */
            y = y > hi ? hi : y;
            out[ch] = (uint8_t)((int32_t)qc_round_half_even(y) + zp);
        }
    } else {
        const int32_t *restrict m0 = rq->m0, *restrict shift = rq->shift;
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

typedef struct {
    const uint8_t *x;
    uint8_t *y;
    const qc_window *g;
    int32_t zx;
    const int16_t *w;
    const int32_t *bias;
    const qc_rq *rq;
} qc_depthwise_job;

/* one output row (chunk = b * oh + oy) of a depthwise convolution */
static void qc_depthwise_row(const void *ctx, int64_t chunk, int slot)
{
    const qc_depthwise_job *j = (const qc_depthwise_job *)ctx;
    const qc_window *g = j->g;
    const int64_t c = g->c, b = chunk / g->oh, oy = chunk % g->oh;
    const int16_t zx = (int16_t)j->zx;
    int32_t acc[QC_DW_MAX_CHANNELS];
    (void)slot;
    for (int64_t ox = 0; ox < g->ow; ox++) {
        memcpy(acc, j->bias, (size_t)c * sizeof(int32_t));
        for (int32_t i = 0; i < g->kh; i++) {
            const int64_t iy = oy * g->sh - g->ph + (int64_t)i * g->dh;
            if (iy < 0 || iy >= g->h) continue;     /* zero padding adds nothing */
            for (int32_t t = 0; t < g->kw; t++) {
                const int64_t ix = ox * g->sw - g->pw + (int64_t)t * g->dw;
                if (ix < 0 || ix >= g->w) continue;
                const uint8_t *restrict px = j->x + ((b * g->h + iy) * g->w + ix) * c;
                const int16_t *restrict pw = j->w + ((int64_t)i * g->kw + t) * c;
                /* |x - zx| <= 255 and |w| <= 128: the int16 product widened to int32 is exact */
                for (int64_t ch = 0; ch < c; ch++)
                    acc[ch] += (int32_t)(int16_t)((int16_t)px[ch] - zx) * (int32_t)pw[ch];
            }
        }
        qc_rt_requant_channels(acc, j->y + (chunk * g->ow + ox) * c, c, j->rq);
    }
}

void qc_rt_depthwise(const uint8_t *x, uint8_t *y, const qc_window *g, int32_t zx,
                     const int16_t *w, const int32_t *bias, const qc_rq *rq, int threads)
{
    const qc_depthwise_job job = {x, y, g, zx, w, bias, rq};
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

void qc_rt_add(const uint8_t *a, const uint8_t *b, uint8_t *y, int64_t count, int32_t za, int32_t zb,
               int32_t mode, float ma, float mb, int64_t m0a, int64_t m0b, int32_t shift,
               int32_t zo, int32_t qmin, int32_t qmax, int threads)
{
    if (mode == QC_RQ_FP32) {
        const float lo = (float)(qmin - zo), hi = (float)(qmax - zo);
        for (int64_t i = 0; i < count; i++) {
            /* two float32 products and one float32 sum, each rounded (no FMA) */
            float v = (float)((int32_t)a[i] - za) * ma + (float)((int32_t)b[i] - zb) * mb;
            if (!(v >= lo)) v = lo;
            if (v > hi) v = hi;
            y[i] = (uint8_t)((int32_t)qc_round_half_even(v) + zo);
        }
    } else {
        const int64_t half = (int64_t)1 << (shift - 1);
        for (int64_t i = 0; i < count; i++) {
            int64_t acc = ((int64_t)a[i] - za) * m0a + ((int64_t)b[i] - zb) * m0b + half;
            int64_t q = (acc >> shift) + zo;
            y[i] = (uint8_t)(q < qmin ? qmin : q > qmax ? qmax : q);
        }
    }
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
