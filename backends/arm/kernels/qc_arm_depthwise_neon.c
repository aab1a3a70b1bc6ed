/* Baseline NEON depthwise convolution: QConv with groups == channels on NHWC int8 (see
 * qc_arm_kernels.h). Per output pixel and 8 channels: for every tap inside the image,
 * ssubl (x − zx to int16, exact: |x − zx| <= 255) then smlal / smlal2 with the int16 weights
 * into two int32x4 accumulators; taps in the padding are skipped (they add 0). Then the
 * same epilogue as the GEMM with the bias as offset. */
#include "qc_arm_neon_common.h"

#define CB 8

int64_t qc_arm_dw_packed_size_neon(int64_t c, int32_t kh, int32_t kw)
{
    return (int64_t)kh * kw * QC_ARM_ROUND_UP(c, CB) * (int64_t)sizeof(int16_t);
}

void qc_arm_dw_pack_neon(const int8_t *w, int64_t c, int32_t kh, int32_t kw, void *packed)
{
    const int64_t cpad = QC_ARM_ROUND_UP(c, CB), taps = (int64_t)kh * kw;
    int16_t *p = (int16_t *)packed;
    for (int64_t t = 0; t < taps; t++)
        for (int64_t ch = 0; ch < cpad; ch++) p[t * cpad + ch] = ch < c ? w[ch * taps + t] : 0;
}

/* 8 int8 of x from p, only `valid` of them (the rest 0: their weights are 0 anyway) */
static inline int8x8_t load8(const int8_t *p, int valid)
{
    if (valid >= 8) return vld1_s8(p);
    int8_t t[8] = {0};
    memcpy(t, p, (size_t)valid);
    return vld1_s8(t);
}

/* taps [0, count) of one kernel row: x at xp, xp + xstep, ...; weights at wp, wp + wstep, ... */
static inline void taps8(const int8_t *xp, int64_t xstep, const int16_t *wp, int64_t wstep, int32_t count,
                         int8x8_t vzx, int32x4_t *lo, int32x4_t *hi)
{
    int32x4_t l = *lo, h = *hi;
    QC_ARM_MCA_BEGIN("depthwise");
    for (int32_t t = 0; t < count; t++, xp += xstep, wp += wstep) {
        int16x8_t xs = vsubl_s8(vld1_s8(xp), vzx);
        int16x8_t wv = vld1q_s16(wp);
        l = vmlal_s16(l, vget_low_s16(xs), vget_low_s16(wv));
        h = vmlal_high_s16(h, xs, wv);
    }
    QC_ARM_MCA_END("depthwise");
    *lo = l, *hi = h;
}

/* the same for the last channels (valid < 8): x through a zero-padded copy */
static void taps_tail(const int8_t *xp, int64_t xstep, const int16_t *wp, int64_t wstep, int32_t count,
                      int valid, int8x8_t vzx, int32x4_t *lo, int32x4_t *hi)
{
    for (int32_t t = 0; t < count; t++, xp += xstep, wp += wstep) {
        int16x8_t xs = vsubl_s8(load8(xp, valid), vzx);
        int16x8_t wv = vld1q_s16(wp);
        *lo = vmlal_s16(*lo, vget_low_s16(xs), vget_low_s16(wv));
        *hi = vmlal_high_s16(*hi, xs, wv);
    }
}

/* first tap index t >= 0 with o * s - p + t * d >= 0, and the end of those with ... < size */
static inline void tap_range(int64_t o, int32_t s, int32_t p, int32_t d, int32_t k, int64_t size, int32_t *t0,
                             int32_t *t1)
{
    int64_t base = o * s - p, a = 0, b = k;
    if (base < 0) a = (-base + d - 1) / d;
    if (base >= size) b = 0;                                  /* all in the right padding */
    else if (base + (int64_t)(k - 1) * d >= size) b = (size - 1 - base) / d + 1;
    if (b < a) b = a;
    *t0 = (int32_t)a, *t1 = (int32_t)b;
}

void qc_arm_depthwise_neon(const int8_t *x, int8_t *y, const qc_window *g, int32_t zx, const void *packed,
                           const int32_t *bias, const qc_rq *rq)
{
    const int64_t c = g->c, cpad = QC_ARM_ROUND_UP(c, CB);
    const int16_t *wp = (const int16_t *)packed;
    const int8x8_t vzx = vdup_n_s8((int8_t)zx);
    /* output row by output row (its kh input rows stay in cache), 8 channels at a time; taps
     * in the padding are skipped (tap_range), the rest run without a branch */
    for (int64_t b = 0; b < g->n; b++)
        for (int64_t oy = 0; oy < g->oh; oy++) {
            int32_t ky0, ky1;
            tap_range(oy, g->sh, g->ph, g->dh, g->kh, g->h, &ky0, &ky1);
            for (int64_t c0 = 0; c0 < c; c0 += CB) {
                const int valid = c - c0 < CB ? (int)(c - c0) : CB;
                const int v0 = valid < 4 ? valid : 4, v1 = valid > 4 ? valid - 4 : 0;
                qc_arm_ep4 e0 = qc_arm_ep4_load(rq, bias ? qc_arm_load4_s32(bias, c0, v0) : vdupq_n_s32(0), c0, v0);
                qc_arm_ep4 e1 =
                    qc_arm_ep4_load(rq, bias ? qc_arm_load4_s32(bias, c0 + 4, v1) : vdupq_n_s32(0), c0 + 4, v1);
                for (int64_t ox = 0; ox < g->ow; ox++) {
                    int32_t kx0, kx1;
                    tap_range(ox, g->sw, g->pw, g->dw, g->kw, g->w, &kx0, &kx1);
                    const int64_t ix0 = ox * g->sw - g->pw + (int64_t)kx0 * g->dw;
                    int32x4_t lo = vdupq_n_s32(0), hi = lo;
                    for (int32_t ky = ky0; ky < ky1; ky++) {
                        const int64_t iy = oy * g->sh - g->ph + (int64_t)ky * g->dh;
                        const int8_t *xp = x + ((b * g->h + iy) * g->w + ix0) * c + c0;
                        const int16_t *wq = wp + ((int64_t)ky * g->kw + kx0) * cpad + c0;
                        if (valid == CB) taps8(xp, g->dw * c, wq, cpad, kx1 - kx0, vzx, &lo, &hi);
                        else taps_tail(xp, g->dw * c, wq, cpad, kx1 - kx0, valid, vzx, &lo, &hi);
                    }
                    qc_arm_row8_out(&e0, &e1, lo, hi, y + ((b * g->oh + oy) * g->ow + ox) * c + c0, valid);
                }
            }
        }
}
#undef CB
