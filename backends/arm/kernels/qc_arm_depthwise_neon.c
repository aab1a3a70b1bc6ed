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

void qc_arm_depthwise_neon(const int8_t *x, int8_t *y, const qc_window *g, int32_t zx, const void *packed,
                           const int32_t *bias, const qc_rq *rq)
{
    const int64_t c = g->c, cpad = QC_ARM_ROUND_UP(c, CB);
    const int16_t *wp = (const int16_t *)packed;
    const int8x8_t vzx = vdup_n_s8((int8_t)zx);
    /* output row by output row (its kh input rows stay in cache), 8 channels at a time */
    for (int64_t b = 0; b < g->n; b++)
        for (int64_t oy = 0; oy < g->oh; oy++)
            for (int64_t c0 = 0; c0 < c; c0 += CB) {
                const int valid = c - c0 < CB ? (int)(c - c0) : CB;
                const int v0 = valid < 4 ? valid : 4, v1 = valid > 4 ? valid - 4 : 0;
                qc_arm_ep4 e0 = qc_arm_ep4_load(rq, bias ? qc_arm_load4_s32(bias, c0, v0) : vdupq_n_s32(0), c0, v0);
                qc_arm_ep4 e1 =
                    qc_arm_ep4_load(rq, bias ? qc_arm_load4_s32(bias, c0 + 4, v1) : vdupq_n_s32(0), c0 + 4, v1);
                for (int64_t ox = 0; ox < g->ow; ox++) {
                    int32x4_t lo = vdupq_n_s32(0), hi = lo;
                    for (int32_t ky = 0; ky < g->kh; ky++) {
                        const int64_t iy = oy * g->sh - g->ph + (int64_t)ky * g->dh;
                        if (iy < 0 || iy >= g->h) continue;
                        const int8_t *row = x + (b * g->h + iy) * g->w * c + c0;
                        const int16_t *wrow = wp + (int64_t)ky * g->kw * cpad + c0;
                        QC_ARM_MCA_BEGIN("depthwise");
                        for (int32_t kx = 0; kx < g->kw; kx++) {
                            const int64_t ix = ox * g->sw - g->pw + (int64_t)kx * g->dw;
                            if (ix < 0 || ix >= g->w) continue;
                            int16x8_t xs = vsubl_s8(load8(row + ix * c, valid), vzx);
                            int16x8_t wv = vld1q_s16(wrow + kx * cpad);
                            lo = vmlal_s16(lo, vget_low_s16(xs), vget_low_s16(wv));
                            hi = vmlal_high_s16(hi, xs, wv);
                        }
                        QC_ARM_MCA_END("depthwise");
                    }
                    qc_arm_row8_out(&e0, &e1, lo, hi, y + ((b * g->oh + oy) * g->ow + ox) * c + c0, valid);
                }
    }
}
