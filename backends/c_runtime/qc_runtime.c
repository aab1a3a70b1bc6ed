/* qcompiler C runtime: portable kernels (gcc auto-vectorizes the channel loops).
 * Semantics and conventions: qc_runtime.h. Build with -ffp-contract=off. */
#include "qc_runtime.h"

#include <stdlib.h>
#include <string.h>

static inline void qc_copy_bytes(uint8_t *restrict dst, const uint8_t *restrict src, int64_t n);

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
    int *nonfinite;                 /* set (to 1) by any chunk that met a NaN or an infinity */
} qc_quantize_job;

/* x - x is 0 for every finite x and NaN for NaN and +-inf: one compare a lane, vectorized */
#define QC_NONFINITE(v) ((v) - (v) != 0.0f)
static inline void qc_flag_nonfinite(int *flag, int seen)
{
    if (seen) __atomic_store_n(flag, 1, __ATOMIC_RELAXED);
}

/* positions per chunk of the boundary conversions (threaded: at batch 8 the input alone is
 * 1.2 M floats) */
#define QC_BOUNDARY_BLOCK 8192

#if defined(__SSSE3__)
#include <tmmintrin.h>
#endif
/* out[3 i + p] = plane p [i] for i < n: 16 positions (48 bytes) per step with pshufb where the
 * variant has SSSE3 (a byte at a time, the tail and elsewhere) */
static void qc_interleave3(const uint8_t *restrict p0, const uint8_t *restrict p1, const uint8_t *restrict p2,
                           uint8_t *restrict out, int64_t n)
{
    int64_t i = 0;
#if defined(__SSSE3__)
    /* output byte 16 k + r comes from plane (16 k + r) % 3, position (16 k + r) / 3 */
    int8_t sel[3][3][16];
    for (int k = 0; k < 3; k++)
        for (int pl = 0; pl < 3; pl++)
            for (int r = 0; r < 16; r++)
                sel[k][pl][r] = (int8_t)((16 * k + r) % 3 == pl ? (16 * k + r) / 3 : -128);
    __m128i m[3][3];
    for (int k = 0; k < 3; k++)
        for (int pl = 0; pl < 3; pl++) m[k][pl] = _mm_loadu_si128((const __m128i *)sel[k][pl]);
    for (; i + 16 <= n; i += 16) {
        const __m128i a = _mm_loadu_si128((const __m128i *)(p0 + i)), b = _mm_loadu_si128((const __m128i *)(p1 + i)),
                      c = _mm_loadu_si128((const __m128i *)(p2 + i));
        for (int k = 0; k < 3; k++)
            _mm_storeu_si128((__m128i *)(out + 3 * i + 16 * k),
                             _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(a, m[k][0]), _mm_shuffle_epi8(b, m[k][1])),
                                          _mm_shuffle_epi8(c, m[k][2])));
    }
#endif
    for (; i < n; i++) {
        out[3 * i] = p0[i];
        out[3 * i + 1] = p1[i];
        out[3 * i + 2] = p2[i];
    }
}

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
    uint8_t tmp[3][256];
    const int rgb = j->nhwc && c == 3;     /* RGB images: three planes interleaved at once */
    (void)slot;
    for (int64_t i0 = start; i0 < end; i0 += 256) {
        const int64_t len = end - i0 < 256 ? end - i0 : 256;
        for (int64_t ch = 0; ch < c; ch++) {
            const float *restrict src = j->x + (b * c + ch) * hw + i0;
            uint8_t *restrict dst = j->nhwc ? tmp[rgb ? ch : 0] : q + (b * c + ch) * hw + i0;
            int seen = 0;
            for (int64_t i = 0; i < len; i++) seen |= QC_NONFINITE(src[i]);
            qc_flag_nonfinite(j->nonfinite, seen);
            for (int64_t i = 0; i < len; i++) {
                float y = src[i] / scale;           /* IEEE division, as the reference */
                y = y >= lo ? y : lo;               /* NaN -> lo, as torch */
                y = y > hi ? hi : y;
                dst[i] = (uint8_t)((int32_t)qc_round_half_even(y) + zp);
            }
            if (j->nhwc && !rgb) {
                uint8_t *restrict out = q + (b * hw + i0) * c + ch;
                for (int64_t i = 0; i < len; i++) out[i * c] = tmp[0][i];
            }
        }
        if (rgb) qc_interleave3(tmp[0], tmp[1], tmp[2], q + (b * hw + i0) * 3, len);
    }
}

/* Quantize straight into the space-to-depth layout of a strided convolution's input: output
 * [n, oh, ow, (dy, dx, ch)] of the window g (kh = kw = sh = sw = s, padding ph / pw filled
 * with the zero point), so an RGB stem needs no separate pass. One call per output row b * oh + Y. */
#define QC_S2D_MAX_ROW 16384
typedef struct {
    const float *x;
    uint8_t *q;
    const qc_window *g;
    float scale;
    int32_t zp, qmin, qmax;
    int *nonfinite;
} qc_quantize_s2d_job;

static void qc_quantize_s2d_row(const qc_quantize_s2d_job *j, int64_t chunk)
{
    const qc_window *g = j->g;
    const int64_t c = g->c, s = g->sh, b = chunk / g->oh, oy = chunk % g->oh;
    const int64_t seg = s * c, padded_w = g->ow * s;         /* bytes per (X, dy); input columns covered */
    const float lo = (float)(j->qmin - j->zp), hi = (float)(j->qmax - j->zp), scale = j->scale;
    uint8_t row[QC_S2D_MAX_ROW], plane[4][QC_S2D_MAX_ROW / 4];
    for (int64_t dy = 0; dy < s; dy++) {
        const int64_t y = oy * s + dy - g->ph;
        memset(row, j->zp, (size_t)(padded_w * c));
        if (y >= 0 && y < g->h) {
            /* input columns [x0, x1) land at padded columns [x0 + pw, x1 + pw) */
            const int64_t x1 = g->w < padded_w - g->pw ? g->w : padded_w - g->pw;
            for (int64_t ch = 0; ch < c; ch++) {
                const float *restrict src = j->x + ((b * c + ch) * g->h + y) * g->w;
                uint8_t *restrict dst = plane[ch];
                int seen = 0;
                for (int64_t i = 0; i < x1; i++) seen |= QC_NONFINITE(src[i]);
                qc_flag_nonfinite(j->nonfinite, seen);
                for (int64_t i = 0; i < x1; i++) {
                    float v = src[i] / scale;           /* IEEE division, as the reference */
                    v = v >= lo ? v : lo;               /* NaN -> lo, as torch */
                    v = v > hi ? hi : v;
                    dst[i] = (uint8_t)((int32_t)qc_round_half_even(v) + j->zp);
                }
            }
            if (c == 3) {
                qc_interleave3(plane[0], plane[1], plane[2], row + g->pw * 3, x1);
            } else {
                for (int64_t i = 0; i < x1; i++)
                    for (int64_t ch = 0; ch < c; ch++) row[(g->pw + i) * c + ch] = plane[ch][i];
            }
        }
        uint8_t *out = j->q + chunk * g->ow * s * seg + dy * seg;
        for (int64_t ox = 0; ox < g->ow; ox++) qc_copy_bytes(out + ox * s * seg, row + ox * seg, seg);
    }
}

/* QC_S2D_ROWS output rows a chunk: each input plane is then read as one run of consecutive
 * rows, which the hardware prefetchers follow (a chunk per row: 1.35x slower, ResNet-18 batch 8) */
#define QC_S2D_ROWS 8
static void qc_quantize_s2d_rows(const void *ctx, int64_t chunk, int slot)
{
    const qc_quantize_s2d_job *j = (const qc_quantize_s2d_job *)ctx;
    const int64_t rows = j->g->n * j->g->oh, r1 = (chunk + 1) * QC_S2D_ROWS < rows ? (chunk + 1) * QC_S2D_ROWS : rows;
    (void)slot;
    for (int64_t r = chunk * QC_S2D_ROWS; r < r1; r++) qc_quantize_s2d_row(j, r);
}

int qc_rt_quantize_s2d(const float *x, uint8_t *q, const qc_window *g, float scale, int32_t zp, int32_t qmin,
                       int32_t qmax, int threads)
{
    int nonfinite = 0;
    const qc_quantize_s2d_job job = {x, q, g, scale, zp, qmin, qmax, &nonfinite};
    const int64_t rows = g->n * g->oh;
    QC_RT_PARALLEL_FOR(qc_quantize_s2d_rows, &job, (rows + QC_S2D_ROWS - 1) / QC_S2D_ROWS,
                       qc_rt_threads(threads, rows * g->ow * g->sh * g->sw * g->c));
    return nonfinite ? QC_RT_ERR_NONFINITE : 0;
}

int qc_rt_quantize(const float *x, uint8_t *q, int64_t n, int64_t c, int64_t hw, int nhwc,
                   float scale, int32_t zp, int32_t qmin, int32_t qmax, int threads)
{
    int nonfinite = 0;
    if (!nhwc || c == 1 || hw == 1) {       /* one contiguous run ([M, K] rows too): split it evenly */
        hw *= c * n;
        c = n = 1;
        nhwc = 0;
    }
    const int64_t blocks = (hw + QC_BOUNDARY_BLOCK - 1) / QC_BOUNDARY_BLOCK;
    const qc_quantize_job job = {x, q, c, hw, blocks, nhwc, scale, zp, qmin, qmax, &nonfinite};
    QC_RT_PARALLEL_FOR(qc_quantize_chunk, &job, n * blocks, qc_rt_threads(threads, n * c * hw));
    return nonfinite ? QC_RT_ERR_NONFINITE : 0;
}

/* chunk = image * blocks + block: QC_BOUNDARY_BLOCK positions of every channel. NCHW order
 * is one contiguous run (vectorized); NHWC is read a position row at a time */
typedef struct {
    const uint8_t *q;
    float *x;
    int64_t c, hw, blocks;
    int nhwc;
    float scale;
    int32_t zp;
} qc_dequantize_job;

static void qc_dequantize_chunk(const void *ctx, int64_t chunk, int slot)
{
    const qc_dequantize_job *j = (const qc_dequantize_job *)ctx;
    const int64_t b = chunk / j->blocks, c = j->c, hw = j->hw;
    const int64_t start = chunk % j->blocks * QC_BOUNDARY_BLOCK;
    const int64_t end = start + QC_BOUNDARY_BLOCK < hw ? start + QC_BOUNDARY_BLOCK : hw;
    const float scale = j->scale;
    const int32_t zp = j->zp;
    (void)slot;
    for (int64_t ch = 0; ch < c; ch++) {
        float *restrict dst = j->x + (b * c + ch) * hw;
        if (j->nhwc) {
            const uint8_t *restrict src = j->q + b * hw * c + ch;
            for (int64_t i = start; i < end; i++) dst[i] = (float)((int32_t)src[i * c] - zp) * scale;
        } else {
            const uint8_t *restrict src = j->q + (b * c + ch) * hw;
            for (int64_t i = start; i < end; i++) dst[i] = (float)((int32_t)src[i] - zp) * scale;
        }
    }
}

void qc_rt_dequantize(const uint8_t *q, float *x, int64_t n, int64_t c, int64_t hw, int nhwc,
                      float scale, int32_t zp, int threads)
{
    if (!nhwc || c == 1 || hw == 1) {       /* one contiguous run: split it evenly */
        hw *= c * n;
        c = n = 1;
        nhwc = 0;
    }
    const int64_t blocks = (hw + QC_BOUNDARY_BLOCK - 1) / QC_BOUNDARY_BLOCK;
    const qc_dequantize_job job = {q, x, c, hw, blocks, nhwc, scale, zp};
    QC_RT_PARALLEL_FOR(qc_dequantize_chunk, &job, n * blocks, qc_rt_threads(threads, n * c * hw));
}

/* integers as the reference holds them (int8: shifted by +128 on the way in) -> storage */
void qc_rt_import_int(const void *in, uint8_t *q, int64_t numel, int is_signed)
{
    const uint8_t *restrict src = (const uint8_t *)in;
    const uint8_t flip = is_signed ? 0x80 : 0;
    for (int64_t i = 0; i < numel; i++) q[i] = src[i] ^ flip;
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

/* copies n bytes: up to 256 (an im2col kernel row: 21 bytes for a 3-channel 7x7 stem, 48 after
 * its space-to-depth, 192 for 3 taps of 64 channels) by fixed-size moves, the last one
 * overlapping (no libc call per row); memcpy beyond */
static inline void qc_copy_bytes(uint8_t *restrict dst, const uint8_t *restrict src, int64_t n)
{
    if (n > 256) {
        memcpy(dst, src, (size_t)n);
    } else if (n >= 32) {            /* 32-byte moves, the last one overlapping: no libc call */
        for (int64_t i = 0; i + 32 < n; i += 32) memcpy(dst + i, src + i, 32);
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

/* the taps of one im2col row whose window crosses the input's border (or dilated, or a
 * channel slice), padded taps filled with `pad`: undilated over all channels, the taps of a
 * kernel row inside the input are one run of bytes (one copy, not one per tap: a 3-channel
 * stem's border rows took as long as all its inside rows tap by tap); else tap by tap */
static void qc_im2col_row_taps(const uint8_t *x, uint8_t *row, const qc_window *g, int64_t c0, int64_t cg,
                               uint8_t pad, int64_t b, int64_t oy, int64_t ox)
{
    if (cg == g->c && g->dw == 1) {
        const int64_t ix0 = ox * g->sw - g->pw;
        const int64_t t0 = ix0 < 0 ? -ix0 : 0;                              /* first tap inside */
        const int64_t t1 = ix0 + g->kw > g->w ? g->w - ix0 : g->kw;         /* past the last one */
        for (int32_t i = 0; i < g->kh; i++, row += (int64_t)g->kw * cg) {
            const int64_t iy = oy * g->sh - g->ph + (int64_t)i * g->dh;
            if (iy < 0 || iy >= g->h || t0 >= t1) {
                memset(row, pad, (size_t)(g->kw * cg));
                continue;
            }
            memset(row, pad, (size_t)(t0 * cg));
            qc_copy_bytes(row + t0 * cg, x + ((b * g->h + iy) * g->w + ix0 + t0) * g->c, (t1 - t0) * cg);
            memset(row + t1 * cg, pad, (size_t)((g->kw - t1) * cg));
        }
        return;
    }
    for (int32_t i = 0; i < g->kh; i++) {
        const int64_t iy = oy * g->sh - g->ph + (int64_t)i * g->dh;
        for (int32_t t = 0; t < g->kw; t++, row += cg) {
            const int64_t ix = ox * g->sw - g->pw + (int64_t)t * g->dw;
            if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w)
                memset(row, pad, (size_t)cg);
            else
                qc_copy_bytes(row, x + ((b * g->h + iy) * g->w + ix) * g->c + c0, cg);
        }
    }
}

/* output columns [*lo, *hi) of a window op whose window lies inside the input horizontally */
static void qc_inside_columns(const qc_window *g, int64_t *lo, int64_t *hi)
{
    int64_t l = g->pw > 0 ? (g->pw + g->sw - 1) / g->sw : 0;
    int64_t h = g->w - 1 - (int64_t)(g->kw - 1) * g->dw + g->pw;
    h = h < 0 ? 0 : h / g->sw + 1;
    if (h > g->ow) h = g->ow;
    *lo = l > h ? h : l;
    *hi = h;
}

/* rows [r0, r0 + count) of the im2col matrix (row r = (b * oh + oy) * ow + ox; columns
 * (ky, kx, channel) of channels [c0, c0 + cg)), row stride ldcol; columns past
 * kh * kw * cg are not written (but see `wide`) */
void qc_rt_im2col_rows(const uint8_t *x, uint8_t *col, int64_t ldcol, const qc_window *g, int64_t c0,
                       int64_t cg, uint8_t pad, int64_t r0, int64_t count)
{
    /* all channels, undilated: the kw taps of a kernel row are seg = kw * c adjacent bytes */
    const int whole_rows = cg == g->c && g->dw == 1;
    const int64_t seg = (int64_t)g->kw * cg, step = g->sw * g->c;
    /* thin inputs (an RGB stem: 21 bytes a kernel row, 24 or 48 after space-to-depth): one
     * 32-byte copy per kernel row, whose spill the next kernel row overwrites (it is written
     * later) and the last one's lands in the row's K pad, when ldcol leaves room for it */
    const int wide = whole_rows && seg <= 32 && (g->kh - 1) * seg + 32 <= ldcol;
    const uint8_t *const x_end = x + g->n * g->h * g->w * g->c;
    int64_t ox_lo, ox_hi;
    qc_inside_columns(g, &ox_lo, &ox_hi);
    int64_t r = r0;
    while (r < r0 + count) {
        /* the part of one output row (b, oy) in the range: columns [ox0, ox1) */
        const int64_t b = r / (g->oh * g->ow), oy = r / g->ow % g->oh, ox0 = r % g->ow;
        const int64_t ox1 = ox0 + (r0 + count - r) < g->ow ? ox0 + (r0 + count - r) : g->ow;
        uint8_t *base = col + (r - r0) * ldcol - ox0 * ldcol;      /* row ox lands at base + ox * ldcol */
        const int64_t lo = ox0 > ox_lo ? ox0 : ox_lo, hi = ox1 < ox_hi ? ox1 : ox_hi;
        for (int64_t ox = ox0; ox < ox1; ox++)
            if (!whole_rows || ox < lo || ox >= hi)
                qc_im2col_row_taps(x, base + ox * ldcol, g, c0, cg, pad, b, oy, ox);
        if (whole_rows && lo < hi) {
            /* inside columns, one kernel row at a time: a run of equal-sized copies */
            for (int32_t i = 0; i < g->kh; i++) {
                const int64_t iy = oy * g->sh - g->ph + (int64_t)i * g->dh;
                uint8_t *dst = base + lo * ldcol + i * seg;
                if (iy < 0 || iy >= g->h) {
                    for (int64_t ox = lo; ox < hi; ox++, dst += ldcol) memset(dst, pad, (size_t)seg);
                    continue;
                }
                const uint8_t *src = x + ((b * g->h + iy) * g->w + lo * g->sw - g->pw) * g->c;
                int64_t ox = lo;
                if (wide)
                    for (; ox < hi && src + 32 <= x_end; ox++, src += step, dst += ldcol) memcpy(dst, src, 32);
                for (; ox < hi; ox++, src += step, dst += ldcol) qc_copy_bytes(dst, src, seg);
            }
        }
        r += ox1 - ox0;
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
/* the depthwise kernel keeps its folded 3x3 bias (one int32 per channel) on the stack */
#define QC_DW_MAX_CHANNELS 4096

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* ---------------------------------------------------------------------------------- */
/* blocked convolution: im2col of a block of rows, then the target's GEMM, per thread    */
/* ---------------------------------------------------------------------------------- */

#ifdef QC_THREAD_POOL_H              /* threads: a pthread key per thread's buffer */
static pthread_key_t qc_scratch_key;
static pthread_once_t qc_scratch_once = PTHREAD_ONCE_INIT;
static void qc_scratch_key_init(void) { (void)pthread_key_create(&qc_scratch_key, free); }
#define QC_SCRATCH_GET() ((void)pthread_once(&qc_scratch_once, qc_scratch_key_init), \
                          (size_t *)pthread_getspecific(qc_scratch_key))
#define QC_SCRATCH_SET(h) (pthread_setspecific(qc_scratch_key, (h)) == 0)
#else                                /* serial runtime: one buffer */
static size_t *qc_scratch_one;
#define QC_SCRATCH_GET() (qc_scratch_one)
#define QC_SCRATCH_SET(h) ((qc_scratch_one = (h)), 1)
#endif
#define QC_SCRATCH_HEADER 64         /* bytes before the buffer: its capacity, and alignment */

uint8_t *qc_rt_thread_scratch(size_t bytes)
{
    size_t *h = QC_SCRATCH_GET();
    if (h == NULL || h[0] < bytes) {
        free(h);
        (void)QC_SCRATCH_SET(NULL);
        const size_t total = (QC_SCRATCH_HEADER + bytes + 63) / 64 * 64;
        h = (size_t *)aligned_alloc(64, total);
        if (h == NULL) return NULL;
        memset(h, 0, total);         /* defined bytes in a K pad the first time too */
        h[0] = bytes;
        if (!QC_SCRATCH_SET(h)) { free(h); return NULL; }
    }
    return (uint8_t *)h + QC_SCRATCH_HEADER;
}

typedef struct {
    const uint8_t *x;
    const qc_window *g;
    int64_t c0, cg;
    uint8_t pad;
    int64_t m, ldk, mb;
    qc_rt_block_gemm block_gemm;
    const void *gemm;
    uint8_t *c;
    int64_t ldc;
    const qc_rt_add_params *add;
    int err;                         /* the first error; written under the compare-and-swap below */
} qc_conv_job;

static void qc_conv_block(const void *ctx, int64_t chunk, int slot)
{
    qc_conv_job *j = (qc_conv_job *)ctx;
    const int64_t r0 = chunk * j->mb, rows = j->m - r0 < j->mb ? j->m - r0 : j->mb;
    (void)slot;
    if (__atomic_load_n(&j->err, __ATOMIC_RELAXED) != 0) return;
    uint8_t *col = qc_rt_thread_scratch((size_t)(j->mb * j->ldk));
    int err = QC_RT_ERR_NOMEM;
    if (col != NULL) {
        qc_rt_im2col_rows(j->x, col, j->ldk, j->g, j->c0, j->cg, j->pad, r0, rows);
        qc_rt_add_params add;               /* the other addend's rows of this block */
        if (j->add != NULL) {
            add = *j->add;
            add.r += r0 * add.ldr;
        }
        err = j->block_gemm(j->gemm, rows, col, j->ldk, j->c + r0 * j->ldc, j->ldc, j->add ? &add : NULL);
    }
    if (err != 0) {
        int expected = 0;
        __atomic_compare_exchange_n(&j->err, &expected, err, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
}

int qc_rt_conv_blocked(const uint8_t *x, const qc_window *g, int64_t c0, int64_t cg, uint8_t pad, int64_t k_align,
                       qc_rt_block_gemm block_gemm, const void *gemm, uint8_t *c, int64_t ldc,
                       const qc_rt_add_params *add, int64_t block_bytes, int threads)
{
    if (x == NULL || g == NULL || block_gemm == NULL || c == NULL) return QC_RT_ERR_NULL;
    const int64_t m = g->n * g->oh * g->ow, k = (int64_t)g->kh * g->kw * cg;
    if (m <= 0 || k <= 0 || block_bytes <= 0 || k_align <= 0) return QC_RT_ERR_SIZE;
#ifdef QC_THREAD_POOL_H
    const int nt = threads > 0 ? threads : qc_cpu_count();
#else
    const int nt = 1;
    (void)threads;
#endif
    const int64_t ldk = (k + k_align - 1) / k_align * k_align;
    int64_t mb = block_bytes / ldk / 32 * 32;
    const int64_t even = ((m + 4 * (int64_t)nt - 1) / (4 * (int64_t)nt) + 31) / 32 * 32;  /* >= 4 blocks a thread */
    if (mb > even) mb = even;
    if (mb < 32) mb = 32;
    qc_conv_job job = {x, g, c0, cg, pad, m, ldk, mb, block_gemm, gemm, c, ldc, add, 0};
    QC_RT_PARALLEL_FOR(qc_conv_block, &job, (m + mb - 1) / mb, nt);
    return job.err;
}

/* ---------------------------------------------------------------------------------- */
/* depthwise convolution                                                                 */
/* ---------------------------------------------------------------------------------- */

/* Weights come blocked by QC_DW_BLOCK channels, w[cb][tap][QC_DW_BLOCK] (int32, channels past c
 * zero), bias padded to whole blocks. Per output pixel and block, the int32 accumulators stay in
 * registers over the taps and are requantized there (AVX-512 / AVX2 variants; plain C
 * otherwise); a block never leaves the cache line of its weights. */
#ifndef QC_DW_BLOCK       /* a target setting (c_target.TargetSettings.depthwise_lanes) */
#define QC_DW_BLOCK 16       /* the x86 vector code below needs 16: one zmm of int32 */
#endif

typedef struct {
    const uint8_t *x;
    uint8_t *y;
    const qc_window *g;
    int32_t zx;
    const int32_t *w;        /* [ceil(c/B)][kh*kw][B], B = QC_DW_BLOCK */
    const int32_t *bias;     /* [ceil(c/B) * B] */
    const int32_t *bias3;    /* 3x3 kernels: bias - zx * (sum of the 9 taps) */
    const qc_rq *rq;
    int64_t ox_lo, ox_hi;    /* output columns whose window lies inside the input horizontally */
} qc_depthwise_job;

#if defined(__AVX512F__) && defined(__AVX512BW__)
/* requantizes 16 accumulators of channels [c0, c0 + 16) and stores those of mask k */
static inline __attribute__((always_inline)) void
qc_requant16_store(__m512i acc, uint8_t *out, const qc_rq *rq, int64_t c0, __mmask16 k, int full)
{
    __m128i bytes;
    if (rq->mode == QC_RQ_FP32) {
        const __m512 m = full ? _mm512_loadu_ps(rq->mult + c0) : _mm512_maskz_loadu_ps(k, rq->mult + c0);
        __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), m);
        y = _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps((float)(rq->qmin - rq->zp))),
                          _mm512_set1_ps((float)(rq->qmax - rq->zp)));
        bytes = _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(y), _mm512_set1_epi32(rq->zp)));
    } else {
        /* two halves of 8 channels in int64 lanes: (p >> (t-1)) + 1) >> 1 == (p + 2^(t-1)) >> t */
        const __m512i one = _mm512_set1_epi64(1), zp = _mm512_set1_epi64(rq->zp);
        const __m512i lo = _mm512_set1_epi64((int64_t)rq->qmin - rq->zp), hi = _mm512_set1_epi64((int64_t)rq->qmax - rq->zp);
        const __m512i m0 = full ? _mm512_loadu_si512(rq->m0 + c0) : _mm512_maskz_loadu_epi32(k, rq->m0 + c0);
        const __m512i sh = full ? _mm512_loadu_si512(rq->shift + c0)
                                : _mm512_mask_loadu_epi32(_mm512_set1_epi32(1), k, rq->shift + c0);
        __m128i half[2];
        for (int h = 0; h < 2; h++) {
            const __m512i a = _mm512_cvtepi32_epi64(h ? _mm512_extracti64x4_epi64(acc, 1) : _mm512_castsi512_si256(acc));
            const __m512i mm = _mm512_cvtepi32_epi64(h ? _mm512_extracti64x4_epi64(m0, 1) : _mm512_castsi512_si256(m0));
            const __m512i t = _mm512_cvtepi32_epi64(h ? _mm512_extracti64x4_epi64(sh, 1) : _mm512_castsi512_si256(sh));
            const __m512i prod = _mm512_mul_epi32(a, mm);              /* exact: |acc|, M0 < 2^31 */
            __m512i q = _mm512_srai_epi64(_mm512_add_epi64(_mm512_srav_epi64(prod, _mm512_sub_epi64(t, one)), one), 1);
            q = _mm512_min_epi64(_mm512_max_epi64(q, lo), hi);
            half[h] = _mm512_cvtepi64_epi8(_mm512_add_epi64(q, zp));
        }
        bytes = _mm_unpacklo_epi64(half[0], half[1]);
    }
    if (full) _mm_storeu_si128((__m128i *)out, bytes);
    else _mm_mask_storeu_epi8(out, k, bytes);
}
#endif

/* out[ch] = requant(acc[ch]) with the parameters of channels [c0, c0 + n) */
static inline void qc_requant_block(const int32_t *restrict acc, uint8_t *restrict out, int64_t n,
                                    const qc_rq *rq, int64_t c0)
{
    int64_t ch = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
    for (; ch + 16 <= n; ch += 16)
        qc_requant16_store(_mm512_loadu_si512(acc + ch), out + ch, rq, c0 + ch, 0xFFFF, 1);
    if (ch < n) {
        const __mmask16 k = (__mmask16)((1u << (n - ch)) - 1u);
        qc_requant16_store(_mm512_maskz_loadu_epi32(k, acc + ch), out + ch, rq, c0 + ch, k, 0);
    }
    return;
#elif defined(__AVX2__)
    if (rq->mode == QC_RQ_FP32) {
        const __m256 lo = _mm256_set1_ps((float)(rq->qmin - rq->zp)), hi = _mm256_set1_ps((float)(rq->qmax - rq->zp));
        const __m256i zp = _mm256_set1_epi32(rq->zp);
        for (; ch + 8 <= n; ch += 8) {
            __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(acc + ch))),
                                     _mm256_loadu_ps(rq->mult + c0 + ch));
            y = _mm256_min_ps(_mm256_max_ps(y, lo), hi);
            const __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(y), zp);   /* in [0, 255] */
            const __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
            _mm_storel_epi64((__m128i *)(out + ch), _mm_packus_epi16(w16, w16));
        }
    }
#endif
    for (; ch < n; ch++) out[ch] = (uint8_t)qc_requant(acc[ch], rq, c0 + ch);
}

void qc_rt_requant_channels(const int32_t *restrict acc, uint8_t *restrict out, int64_t n, const qc_rq *rq)
{
    qc_requant_block(acc, out, n, rq, 0);
}

/* one block of `cnt` (<= 16) channels of one output pixel: taps [0, ni) x [0, nt) from x (the
 * first tap inside the input, this block's channel 0; xi / xt: byte steps per kernel row /
 * column) with weights wb (the same tap's 16 weights; wi / 16: steps likewise). interior3: a
 * whole window (3x3 in the AVX-512 blocks, any size in the others), with zx folded into
 * bias3 (x zero-extended to int32 has zero upper halves, so vpmaddwd of it with an int32
 * weight is exactly x * w: one uop, not sub + mullo) */
static inline __attribute__((always_inline)) void
qc_dw_block(const qc_depthwise_job *j, const qc_rq *rq, uint8_t *out, const uint8_t *x, int64_t xi, int64_t xt,
            const int32_t *wb, int64_t wi, int32_t ni, int32_t nt, int interior3, int64_t c0, int cnt)
{
    const int32_t *bias = interior3 ? j->bias3 + c0 : j->bias + c0;
#if QC_DW_BLOCK == 16 && defined(__AVX512F__) && defined(__AVX512BW__)
    const int full = cnt == QC_DW_BLOCK;
    const __mmask16 k = full ? (__mmask16)0xFFFF : (__mmask16)((1u << cnt) - 1u);
#define QC_DW_X(p) _mm512_cvtepu8_epi32(full ? _mm_loadu_si128((const __m128i *)(p)) : _mm_maskz_loadu_epi8(k, (p)))
    __m512i s = _mm512_loadu_si512(bias);
    if (interior3) {
#if defined(__AVX512VNNI__)
        /* vpdpwssd: acc += x_lo * w_lo + x_hi * w_hi = x * w, one uop per tap; a partial sum
         * per kernel row keeps the dependency chains short */
        __m512i r[3] = {s, _mm512_setzero_si512(), _mm512_setzero_si512()};
#pragma GCC unroll 3
        for (int32_t i = 0; i < 3; i++)
#pragma GCC unroll 3
            for (int32_t t = 0; t < 3; t++)
                r[i] = _mm512_dpwssd_epi32(r[i], QC_DW_X(x + i * xi + t * xt), _mm512_loadu_si512(wb + i * wi + t * 16));
        s = _mm512_add_epi32(_mm512_add_epi32(r[0], r[1]), r[2]);
#else
#pragma GCC unroll 3
        for (int32_t i = 0; i < 3; i++)
#pragma GCC unroll 3
            for (int32_t t = 0; t < 3; t++)
                s = _mm512_add_epi32(s, _mm512_madd_epi16(QC_DW_X(x + i * xi + t * xt),
                                                          _mm512_loadu_si512(wb + i * wi + t * 16)));
#endif
    } else {
        const __m512i z = _mm512_set1_epi32(j->zx);
        for (int32_t i = 0; i < ni; i++)
            for (int32_t t = 0; t < nt; t++)
                s = _mm512_add_epi32(s, _mm512_mullo_epi32(_mm512_sub_epi32(QC_DW_X(x + i * xi + t * xt), z),
                                                           _mm512_loadu_si512(wb + i * wi + t * 16)));
    }
#undef QC_DW_X
    qc_requant16_store(s, out, rq, c0, k, full);
#else
    int32_t acc[QC_DW_BLOCK];
    int l0 = 0;
#if QC_DW_BLOCK == 16 && defined(__AVX2__)
    if (cnt == QC_DW_BLOCK) {
        __m256i s0 = _mm256_loadu_si256((const __m256i *)bias), s1 = _mm256_loadu_si256((const __m256i *)(bias + 8));
        const __m256i z = _mm256_set1_epi32(interior3 ? 0 : j->zx);
        if (interior3) {        /* zx folded into bias3: vpmaddwd, no subtraction, no vpmulld */
            for (int32_t i = 0; i < ni; i++)
                for (int32_t t = 0; t < nt; t++) {
                    const uint8_t *px = x + i * xi + t * xt;
                    const int32_t *pw = wb + i * wi + t * 16;
                    s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)px)),
                                                                _mm256_loadu_si256((const __m256i *)pw)));
                    s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(px + 8))),
                                                                _mm256_loadu_si256((const __m256i *)(pw + 8))));
                }
        } else {
            for (int32_t i = 0; i < ni; i++)
                for (int32_t t = 0; t < nt; t++) {
                    const uint8_t *px = x + i * xi + t * xt;
                    const int32_t *pw = wb + i * wi + t * 16;
                    const __m256i x0 = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)px)), z);
                    const __m256i x1 = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(px + 8))), z);
                    s0 = _mm256_add_epi32(s0, _mm256_mullo_epi32(x0, _mm256_loadu_si256((const __m256i *)pw)));
                    s1 = _mm256_add_epi32(s1, _mm256_mullo_epi32(x1, _mm256_loadu_si256((const __m256i *)(pw + 8))));
                }
        }
        _mm256_storeu_si256((__m256i *)acc, s0);
        _mm256_storeu_si256((__m256i *)(acc + 8), s1);
        l0 = QC_DW_BLOCK;
    }
#endif
    for (int l = l0; l < cnt; l++) {
        uint32_t v = (uint32_t)bias[l];              /* wrapping: exact once every tap is in */
        const int32_t zx = interior3 ? 0 : j->zx;
        for (int32_t i = 0; i < ni; i++)
            for (int32_t t = 0; t < nt; t++)
                v += (uint32_t)(((int32_t)x[i * xi + t * xt + l] - zx) * wb[i * wi + t * QC_DW_BLOCK + l]);
        acc[l] = (int32_t)v;
    }
    qc_requant_block(acc, out, cnt, rq, c0);
#endif
}

#if QC_DW_BLOCK == 16 && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define QC_DW_SLIDING 1
#define QC_DW_SLIDING_MAX_CHANNELS 64
/* output columns [lo, hi) of one output row of a 3x3 depthwise with stride s (1 or 2) and its
 * three kernel rows inside the input, block by block of 16 channels: the block's 9 weights
 * stay in registers, and each input column is widened once and kept for the windows that
 * share it (3 widenings per output for s = 1 instead of 9). rows[i]: kernel row i's input
 * row at channel 0; ix0: the input column of output column lo's first tap. */
static inline __attribute__((always_inline)) void
qc_dw3_sliding(const qc_depthwise_job *j, const qc_rq *rq, uint8_t *out_row, const uint8_t *const rows[3],
               int64_t ix0, int64_t lo, int64_t hi, const int s)
{
    const int64_t c = j->g->c, cfull = c - c % QC_DW_BLOCK;
#define QC_DW_COL(i, col) _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(rows[i] + (col) * c + cb)))
    for (int64_t cb = 0; cb < cfull; cb += QC_DW_BLOCK) {
        const int32_t *wb = j->w + cb * 9;
        __m512i w[3][3], v[3][3];
        for (int i = 0; i < 3; i++)
            for (int t = 0; t < 3; t++) w[i][t] = _mm512_loadu_si512(wb + (i * 3 + t) * QC_DW_BLOCK);
        const __m512i bias3 = _mm512_loadu_si512(j->bias3 + cb);
        int64_t ix = ix0;
        for (int i = 0; i < 3; i++) {
            v[i][0] = QC_DW_COL(i, ix);
            v[i][1] = QC_DW_COL(i, ix + 1);
        }
        for (int64_t ox = lo; ox < hi; ox++, ix += s) {
            for (int i = 0; i < 3; i++) v[i][2] = QC_DW_COL(i, ix + 2);
            __m512i r0 = _mm512_dpwssd_epi32(bias3, v[0][0], w[0][0]);
            __m512i r1 = _mm512_dpwssd_epi32(_mm512_setzero_si512(), v[1][0], w[1][0]);
            __m512i r2 = _mm512_dpwssd_epi32(_mm512_setzero_si512(), v[2][0], w[2][0]);
            r0 = _mm512_dpwssd_epi32(r0, v[0][1], w[0][1]);
            r1 = _mm512_dpwssd_epi32(r1, v[1][1], w[1][1]);
            r2 = _mm512_dpwssd_epi32(r2, v[2][1], w[2][1]);
            r0 = _mm512_dpwssd_epi32(r0, v[0][2], w[0][2]);
            r1 = _mm512_dpwssd_epi32(r1, v[1][2], w[1][2]);
            r2 = _mm512_dpwssd_epi32(r2, v[2][2], w[2][2]);
            qc_requant16_store(_mm512_add_epi32(_mm512_add_epi32(r0, r1), r2), out_row + ox * c + cb, rq, cb,
                               0xFFFF, 1);
            for (int i = 0; i < 3; i++) {          /* the next window: s columns on */
                if (s == 1) {
                    v[i][0] = v[i][1];
                    v[i][1] = v[i][2];
                } else if (ox + 1 < hi) {
                    v[i][0] = v[i][2];
                    v[i][1] = QC_DW_COL(i, ix + 3);
                }
            }
        }
    }
#undef QC_DW_COL
}
#endif

/* one output row (chunk = b * oh + oy): padded taps add (zx - zx) * w = 0 and are skipped */
static void qc_depthwise_row(const void *ctx, int64_t chunk, int slot)
{
    const qc_depthwise_job *j = (const qc_depthwise_job *)ctx;
    const qc_window *g = j->g;
    const int64_t c = g->c, b = chunk / g->oh, oy = chunk % g->oh;
    const int64_t taps = (int64_t)g->kh * g->kw;
    const int64_t xi = (int64_t)g->dh * g->w * c, xt = (int64_t)g->dw * c;   /* byte steps of the taps */
    const int64_t wi = (int64_t)g->kw * QC_DW_BLOCK;                         /* weight steps per kernel row */
    const qc_rq rq = *j->rq;    /* a local copy: the byte stores cannot alias it, so it stays in registers */
    (void)slot;
    /* kernel rows inside the input: the same for the whole output row */
    int32_t i0 = 0, i1 = g->kh;
    while (i0 < i1 && oy * g->sh - g->ph + (int64_t)i0 * g->dh < 0) i0++;
    while (i1 > i0 && oy * g->sh - g->ph + (int64_t)(i1 - 1) * g->dh >= g->h) i1--;
    const int32_t ni = i1 - i0;
    int64_t slide_lo = 0, slide_hi = 0;                /* output columns done by the sliding kernel */
#ifdef QC_DW_SLIDING
    /* thin layers only (MobileNet's first, 32 channels: 1.3x): with more blocks per pixel the
     * block-by-block order's strided stores cost more than the widenings it saves */
    if (g->kh == 3 && g->kw == 3 && ni == 3 && g->sw == 1 && g->dh == 1 && g->dw == 1 &&
        c >= QC_DW_BLOCK && c <= QC_DW_SLIDING_MAX_CHANNELS && j->ox_hi - j->ox_lo >= 4) {
        const uint8_t *rows[3];
        for (int i = 0; i < 3; i++) rows[i] = j->x + (b * g->h + oy * g->sh - g->ph + i) * g->w * c;
        slide_lo = j->ox_lo;
        slide_hi = j->ox_hi;
        const int64_t ix0 = slide_lo * g->sw - g->pw;
        uint8_t *out_row = j->y + chunk * g->ow * c;
        if (g->sw == 1) qc_dw3_sliding(j, &rq, out_row, rows, ix0, slide_lo, slide_hi, 1);
        else qc_dw3_sliding(j, &rq, out_row, rows, ix0, slide_lo, slide_hi, 2);
    }
#endif
    for (int64_t ox = 0; ox < g->ow; ox++) {
        /* the channel tail of the columns the sliding kernel did (its blocks are whole) */
        const int tail_only = ox >= slide_lo && ox < slide_hi;
        if (tail_only && c % QC_DW_BLOCK == 0) continue;
        int32_t t0 = 0, t1 = g->kw;
        if (ox < j->ox_lo || ox >= j->ox_hi) {
            while (t0 < t1 && ox * g->sw - g->pw + (int64_t)t0 * g->dw < 0) t0++;
            while (t1 > t0 && ox * g->sw - g->pw + (int64_t)(t1 - 1) * g->dw >= g->w) t1--;
        }
        const int32_t nt = t1 - t0;
        const int64_t iy = oy * g->sh - g->ph + (int64_t)i0 * g->dh, ix = ox * g->sw - g->pw + (int64_t)t0 * g->dw;
        /* the first tap inside the input; an empty window adds nothing but the bias */
        const uint8_t *x0 = j->x + (ni > 0 && nt > 0 ? ((b * g->h + iy) * g->w + ix) * c : 0);
        const int32_t *w0 = j->w + ((int64_t)i0 * g->kw + t0) * QC_DW_BLOCK;
        uint8_t *out = j->y + (chunk * g->ow + ox) * c;
        const int64_t cfull = c - c % QC_DW_BLOCK;
        if (g->kh == 3 && g->kw == 3 && ni == 3 && nt == 3) {
            for (int64_t cb = tail_only ? cfull : 0; cb < cfull; cb += QC_DW_BLOCK)
                qc_dw_block(j, &rq, out + cb, x0 + cb, xi, xt, w0 + cb * taps, wi, 3, 3, 1, cb, QC_DW_BLOCK);
            if (cfull < c)
                qc_dw_block(j, &rq, out + cfull, x0 + cfull, xi, xt, w0 + cfull * taps, wi, 3, 3, 1, cfull, (int)(c - cfull));
        } else {
            /* a whole window of another size (5x5) reads bias3 with zx folded too, except in the
             * AVX-512 blocks, whose folded path is the unrolled 3x3 */
#if QC_DW_BLOCK == 16 && defined(__AVX512F__) && defined(__AVX512BW__)
            const int fold = 0;
#else
            const int fold = ni == g->kh && nt == g->kw;
#endif
            for (int64_t cb = 0; cb < cfull; cb += QC_DW_BLOCK)
                qc_dw_block(j, &rq, out + cb, x0 + cb, xi, xt, w0 + cb * taps, wi, ni, nt, fold, cb, QC_DW_BLOCK);
            if (cfull < c)
                qc_dw_block(j, &rq, out + cfull, x0 + cfull, xi, xt, w0 + cfull * taps, wi, ni, nt, fold, cfull,
                            (int)(c - cfull));
        }
    }
}

void qc_rt_depthwise(const uint8_t *x, uint8_t *y, const qc_window *g, int32_t zx,
                     const int32_t *w, const int32_t *bias, const qc_rq *rq, int threads)
{
    /* bias - zx * (sum of the taps), for windows wholly inside the input (any kernel size;
     * the AVX-512 blocks use it for 3x3 only); block by block, so the lanes vectorize */
    int32_t bias3[QC_DW_MAX_CHANNELS + QC_DW_BLOCK];
    const int64_t cpad = (g->c + QC_DW_BLOCK - 1) / QC_DW_BLOCK * QC_DW_BLOCK;
    const int64_t taps = (int64_t)g->kh * g->kw;
    for (int64_t cb = 0; cb < cpad; cb += QC_DW_BLOCK) {
        uint32_t v[QC_DW_BLOCK];                     /* wrapping: exact once the taps are added */
        for (int l = 0; l < QC_DW_BLOCK; l++) v[l] = (uint32_t)bias[cb + l];
        for (int64_t t = 0; t < taps; t++)
            for (int l = 0; l < QC_DW_BLOCK; l++) v[l] -= (uint32_t)zx * (uint32_t)w[cb * taps + t * QC_DW_BLOCK + l];
        for (int l = 0; l < QC_DW_BLOCK; l++) bias3[cb + l] = (int32_t)v[l];
    }
    int64_t ox_lo, ox_hi;
    qc_inside_columns(g, &ox_lo, &ox_hi);
    const qc_depthwise_job job = {x, y, g, zx, w, bias, bias3, rq, ox_lo, ox_hi};
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

/* one output row (chunk = b * oh + oy) of a max pool: per pixel and block of 64 channels,
 * the running max stays in registers over the taps inside the input (padding never wins) */
static void qc_max_pool_row(const void *ctx, int64_t chunk, int slot)
{
    const qc_max_pool_job *j = (const qc_max_pool_job *)ctx;
    const qc_window *g = j->g;
    const int64_t c = g->c, b = chunk / g->oh, oy = chunk % g->oh;
    (void)slot;
    int32_t i0 = 0, i1 = g->kh;
    while (i0 < i1 && oy * g->sh - g->ph + (int64_t)i0 * g->dh < 0) i0++;
    while (i1 > i0 && oy * g->sh - g->ph + (int64_t)(i1 - 1) * g->dh >= g->h) i1--;
    for (int64_t ox = 0; ox < g->ow; ox++) {
        int32_t t0 = 0, t1 = g->kw;
        while (t0 < t1 && ox * g->sw - g->pw + (int64_t)t0 * g->dw < 0) t0++;
        while (t1 > t0 && ox * g->sw - g->pw + (int64_t)(t1 - 1) * g->dw >= g->w) t1--;
        uint8_t *restrict out = j->y + (chunk * g->ow + ox) * c;
        const uint8_t *x0 = j->x + ((b * g->h + oy * g->sh - g->ph) * g->w + ox * g->sw - g->pw) * c;
        const int64_t xi = (int64_t)g->dh * g->w * c, xt = (int64_t)g->dw * c;
        for (int64_t cb = 0; cb < c; cb += QC_CBLOCK) {
            uint8_t m[QC_CBLOCK] = {0};           /* 0 is the smallest stored value */
            if (c - cb >= QC_CBLOCK) {
                for (int32_t i = i0; i < i1; i++)
                    for (int32_t t = t0; t < t1; t++) {
                        const uint8_t *restrict px = x0 + i * xi + t * xt + cb;
                        for (int l = 0; l < QC_CBLOCK; l++) m[l] = px[l] > m[l] ? px[l] : m[l];
                    }
                memcpy(out + cb, m, QC_CBLOCK);
            } else {
                const int64_t cn = c - cb;
                for (int32_t i = i0; i < i1; i++)
                    for (int32_t t = t0; t < t1; t++) {
                        const uint8_t *restrict px = x0 + i * xi + t * xt + cb;
                        for (int64_t l = 0; l < cn; l++) m[l] = px[l] > m[l] ? px[l] : m[l];
                    }
                memcpy(out + cb, m, (size_t)cn);
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
