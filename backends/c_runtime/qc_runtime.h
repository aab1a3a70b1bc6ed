/* qcompiler C runtime: the non-GEMM kernels generated models call (shared by every CPU target).
 *
 * Conventions (the emitter relies on them):
 *   - every quantized tensor is stored as uint8; an int8 tensor is stored shifted by +128
 *     (q' = q + 128, zero point and clamp bounds shifted alike), so (q' - zp') == (q - zp)
 *     and the GEMM sees the u8 operand it wants;
 *   - 4-d activations are NHWC, everything else is in torch's (contiguous) order;
 *   - requantization is bit-exact with qcompiler/core/quantize.py (see qc_requant below);
 *   - kernels never allocate; the caller passes every buffer (the model's arena).
 * Each kernel's comment names the integer op of qcompiler/core/integer_ops.py it implements.
 */
#ifndef QC_RUNTIME_H
#define QC_RUNTIME_H

#include <stdint.h>
#include <stddef.h>

#define QC_RT_EXPORT __attribute__((visibility("default")))
#define QC_RT_ABI_VERSION 1

/* Parallel loops of the runtime's kernels: fn(ctx, chunk, slot) for chunk in [0, total). A
 * target whose runtime translation unit includes a thread pool before this header (x86: the
 * GEMM, through qc_thread_pool.h) shares it; elsewhere (and in a file compiled alone) the loop runs
 * serially. */
typedef void (*qc_rt_chunk_fn)(const void *ctx, int64_t chunk, int slot);
#ifdef QC_THREAD_POOL_H
#define QC_RT_PARALLEL_FOR(fn, ctx, total, nt) qc_parallel_for((fn), (ctx), (total), (nt))
#else
#define QC_RT_PARALLEL_FOR(fn, ctx, total, nt) ((void)(nt), qc_rt_serial_for((fn), (ctx), (total)))
static inline void qc_rt_serial_for(qc_rt_chunk_fn fn, const void *ctx, int64_t total)
{
    for (int64_t i = 0; i < total; i++) fn(ctx, i, 0);
}
#endif

/* Kernel error codes (positive; a model returns them as they are). Every C target's runtime
 * exports qc_rt_gemm_strerror(code) naming them; its GEMM's own codes keep these values. */
enum { QC_RT_ERR_NULL = 1, QC_RT_ERR_SIZE = 2, QC_RT_ERR_NOMEM = 7 };

/* threads for a kernel of `work` elementary operations: tiny ones stay on the calling thread */
static inline int qc_rt_threads(int threads, int64_t work)
{
    return (threads <= 1 || work < 32768) ? 1 : threads;
}

enum { QC_RQ_FP32 = 1, QC_RQ_FIXED_POINT = 2 };

/* one requantization: per-channel (or per-position) arrays indexed by the kernel,
 * zero point and clamp already in the stored (shifted) domain */
typedef struct qc_rq {
    int32_t mode;            /* QC_RQ_* */
    const float *mult;       /* fp32: float32 multipliers */
    const int32_t *m0;       /* fixed_point: M0 in [0, 2^31) */
    const int32_t *shift;    /* fixed_point: t in [1, 62] */
    int32_t zp, qmin, qmax;
} qc_rq;

/* a residual add fused into a producer's epilogue (QAdd; qc_rt_add's parameters): the
 * producer's requantized output q (stored zero point za) plus r (zero point zb), same shape,
 * row stride ldr; m0a / m0b / shift used in fixed-point mode, ma / mb in fp32 mode */
typedef struct qc_rt_add_params {
    const uint8_t *r;
    int64_t ldr;
    int32_t mode;            /* QC_RQ_* */
    int32_t za, zb, zo, qmin, qmax, shift;
    float ma, mb;
    int64_t m0a, m0b;
} qc_rt_add_params;

/* round half to even of a float32 already clamped to |y| < 2^22 (default rounding mode;
 * no libm call, so it vectorizes; -ffp-contract=off keeps the two additions apart) */
static inline float qc_round_half_even(float y)
{
    const float magic = 12582912.0f;   /* 1.5 * 2^23 */
    return (y + magic) - magic;
}

/* QRequant.apply: fp32  -> clamp(round(float32(acc) * float32(m)) + zp, qmin, qmax)
 *                fixed -> clamp(((acc * M0 + 2^(t-1)) >> t) + zp, qmin, qmax)     (int64) */
static inline int32_t qc_requant(int64_t acc, const qc_rq *r, int64_t j)
{
    if (r->mode == QC_RQ_FP32) {
        float y = (float)acc * r->mult[j];
        const float lo = (float)(r->qmin - r->zp), hi = (float)(r->qmax - r->zp);
        /* clamping before rounding is exact: the bounds are integers (NaN -> qmin, as torch) */
        if (!(y >= lo)) y = lo;
        if (y > hi) y = hi;
        return (int32_t)qc_round_half_even(y) + r->zp;
    }
    int s = r->shift[j];
    int64_t q = ((acc * (int64_t)r->m0[j] + ((int64_t)1 << (s - 1))) >> s) + r->zp;
    return (int32_t)(q < r->qmin ? r->qmin : q > r->qmax ? r->qmax : q);
}

/* out[j] = qc_requant(acc[j], rq, j) for j < n: the vectorized form the channel loops use
 * (tested against qcompiler.core.quantize directly) */
QC_RT_EXPORT void qc_rt_requant_channels(const int32_t *acc, uint8_t *out, int64_t n, const qc_rq *rq);

/* Quantize: float NCHW [n, c, hw] -> uint8, NHWC when nhwc (else same order).
 * q = clamp(round_half_even(x / s) + zp, qmin, qmax) with an IEEE float32 division.
 * Returns 0, or QC_RT_ERR_NONFINITE when x holds a NaN or an infinity (q is then garbage): no
 * integer stands for them, and the float model would propagate them (docs/robustness.md). */
#define QC_RT_ERR_NONFINITE (-1)
QC_RT_EXPORT int qc_rt_quantize(const float *x, uint8_t *q, int64_t n, int64_t c, int64_t hw, int nhwc,
                                 float scale, int32_t zp, int32_t qmin, int32_t qmax, int threads);

/* Dequantize: uint8 (NHWC when nhwc) -> float NCHW, x = float32(q - zp) * s */
QC_RT_EXPORT void qc_rt_dequantize(const uint8_t *q, float *x, int64_t n, int64_t c, int64_t hw, int nhwc,
                                   float scale, int32_t zp, int threads);

/* the reference's integers (int8 or uint8, numel bytes) -> storage (int8: +128) */
QC_RT_EXPORT void qc_rt_import_int(const void *in, uint8_t *q, int64_t numel, int is_signed);

/* the stored integers as the reference's dtype (int8: undo the +128 shift), NCHW order */
QC_RT_EXPORT void qc_rt_export_int(const uint8_t *q, void *out, int64_t n, int64_t c, int64_t hw, int nhwc,
                                   int is_signed);

/* layout changes of uint8 tensors [n, c, hw] */
QC_RT_EXPORT void qc_rt_nhwc_to_nchw(const uint8_t *x, uint8_t *y, int64_t n, int64_t c, int64_t hw);
QC_RT_EXPORT void qc_rt_nchw_to_nhwc(const uint8_t *x, uint8_t *y, int64_t n, int64_t c, int64_t hw);

/* geometry of a 2-d window op on NHWC [n, h, w, c] -> [n, oh, ow, *] */
typedef struct qc_window {
    int64_t n, h, w, c, oh, ow;
    int32_t kh, kw, sh, sw, ph, pw, dh, dw;
} qc_window;

/* Quantize of a float NCHW [n, c, h, w] input straight into the space-to-depth layout a
 * strided convolution reads: [n, oh, ow, (dy, dx, ch)] for the window g (kh = kw = sh = sw =
 * s, padding ph / pw filled with zp); c <= 4, s * c * ow * s <= 16384 and w <= 4096.
 * Returns as qc_rt_quantize. */
QC_RT_EXPORT int qc_rt_quantize_s2d(const float *x, uint8_t *q, const qc_window *g, float scale, int32_t zp,
                                     int32_t qmin, int32_t qmax, int threads);

/* QConv (im2col half): rows [n*oh*ow, kh*kw*cg] of channels [c0, c0+cg); padding = pad
 * (the input zero point, so padded taps add (zp - zp) * w = 0 as zero padding does) */
QC_RT_EXPORT void qc_rt_im2col(const uint8_t *x, uint8_t *col, const qc_window *g, int64_t c0, int64_t cg,
                               uint8_t pad, int threads);
/* the same for rows [r0, r0 + count) only, into col with row stride ldcol >= kh*kw*cg
 * (row r = (b * oh + oy) * ow + ox); the building block of blocked convolutions */
QC_RT_EXPORT void qc_rt_im2col_rows(const uint8_t *x, uint8_t *col, int64_t ldcol, const qc_window *g,
                                    int64_t c0, int64_t cg, uint8_t pad, int64_t r0, int64_t count);

/* One target's GEMM over a block of im2col rows, single-threaded: C[rows, n] = requant(col · Wᵀ +
 * bias), col of row stride ldk; `add` (NULL: none) has its rows already offset to this block.
 * `gemm` is the target's own description of the layer. Returns a kernel error code (0 = ok). */
typedef int (*qc_rt_block_gemm)(const void *gemm, int64_t rows, const uint8_t *col, int64_t ldk, uint8_t *c,
                                int64_t ldc, const qc_rt_add_params *add);

/* QConv (one group) by blocks of output rows, for every C target: per thread, im2col of a block
 * of rows [n*oh*ow] (channels [c0, c0 + cg) of the NHWC input x, padded with `pad`, rows of
 * k = kh*kw*cg bytes rounded up to k_align) into a buffer of about block_bytes that stays in
 * cache, then that block's GEMM through block_gemm; output rows of stride ldc. The whole im2col
 * matrix never exists. Returns the first kernel error (0 = success). */
QC_RT_EXPORT int qc_rt_conv_blocked(const uint8_t *x, const qc_window *g, int64_t c0, int64_t cg, uint8_t pad,
                                    int64_t k_align, qc_rt_block_gemm block_gemm, const void *gemm, uint8_t *c,
                                    int64_t ldc, const qc_rt_add_params *add, int64_t block_bytes, int threads);

/* A buffer of at least `bytes` (64-byte aligned) private to the calling thread, grown on first
 * use and freed when the thread exits, so a model's steady state allocates nothing; the same
 * buffer is returned to every caller on this thread (NULL when out of memory). */
QC_RT_EXPORT uint8_t *qc_rt_thread_scratch(size_t bytes);

/* QConv, depthwise (groups == channels, one output per channel): exact int32
 * sum of (x - zx) * w + bias[c], requantized per channel. Weights blocked by B = QC_DW_BLOCK
 * channels (a target setting, 16 unless the runtime is built with another):
 * w[c / B][ky * kw + kx][c % B] as int32 (the kernel works in int32 lanes), channels past
 * c zero; bias padded to a multiple of B likewise; c <= 4096 */
QC_RT_EXPORT void qc_rt_depthwise(const uint8_t *x, uint8_t *y, const qc_window *g, int32_t zx,
                                  const int32_t *w, const int32_t *bias, const qc_rq *rq, int threads);

/* max_pool2d on NHWC (padding never wins; windows are clipped to the input) */
QC_RT_EXPORT void qc_rt_max_pool(const uint8_t *x, uint8_t *y, const qc_window *g, int threads);

/* QAvgPool2d / QAdaptiveAvgPool2d: exact window sums of (x - zx) over rows [h0[i], h1[i]) and
 * columns [w0[j], w1[j]), requantized with the multiplier of position i*ow + j */
QC_RT_EXPORT void qc_rt_avg_pool(const uint8_t *x, uint8_t *y, const qc_window *g, const int32_t *h0,
                                 const int32_t *h1, const int32_t *w0, const int32_t *w1, int32_t zx,
                                 const qc_rq *rq, int threads);

/* QAdd: fp32: round(f32(f32(a-za)*ma) + f32(f32(b-zb)*mb)) + zo; fixed_point: one shared shift */
QC_RT_EXPORT void qc_rt_add(const uint8_t *a, const uint8_t *b, uint8_t *y, int64_t count, int32_t za, int32_t zb,
                            int32_t mode, float ma, float mb, int64_t m0a, int64_t m0b, int32_t shift,
                            int32_t zo, int32_t qmin, int32_t qmax, int threads);

/* QMul: requant((a - za) * (b - zb)), per tensor */
QC_RT_EXPORT void qc_rt_mul(const uint8_t *a, const uint8_t *b, uint8_t *y, int64_t count, int32_t za,
                            int32_t zb, const qc_rq *rq, int threads);

/* QRequantize: requant(x - zx), per tensor */
QC_RT_EXPORT void qc_rt_requantize(const uint8_t *x, uint8_t *y, int64_t count, int32_t zx, const qc_rq *rq);

/* clamp of a quantized value to [lo, hi] (stored domain); relu is clamp(zp, 255) */
QC_RT_EXPORT void qc_rt_clamp(const uint8_t *x, uint8_t *y, int64_t count, int32_t lo, int32_t hi);

/* QCat, one input: [outer, inner] into [outer, dst_inner] at column offset; requantized
 * from zx when rq is not NULL, else copied */
QC_RT_EXPORT void qc_rt_cat_part(const uint8_t *x, uint8_t *y, int64_t outer, int64_t inner, int64_t dst_inner,
                                 int64_t offset, int32_t zx, const qc_rq *rq);

QC_RT_EXPORT int qc_rt_abi_version(void);

#endif /* QC_RUNTIME_H */
