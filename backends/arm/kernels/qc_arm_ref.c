/* Portable scalar references of the ARM kernels (see qc_arm_kernels.h): plain C, any target.
 * Accumulation in uint32 (wrapping, defined in C) as the NEON code does in int32 lanes. */
#include "qc_arm_kernels.h"

/* QLinear.forward on stored int8 */
void qc_arm_gemm_ref(const int8_t *a, int64_t lda, int64_t m, int64_t n, int64_t k, int32_t za,
                     const int8_t *w, const int32_t *bias, const qc_rq *rq, int8_t *c, int64_t ldc)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            uint32_t acc = bias ? (uint32_t)bias[j] : 0u;
            for (int64_t p = 0; p < k; p++)
                acc += (uint32_t)(((int32_t)a[i * lda + p] - za) * (int32_t)w[j * k + p]);
            c[i * ldc + j] = (int8_t)qc_requant((int32_t)acc, rq, j);
        }
}

/* QConv.forward, groups == channels (depthwise), NHWC */
void qc_arm_depthwise_ref(const int8_t *x, int8_t *y, const qc_window *g, int32_t zx, const int8_t *w,
                          const int32_t *bias, const qc_rq *rq)
{
    const int64_t c = g->c;
    for (int64_t b = 0; b < g->n; b++)
        for (int64_t oy = 0; oy < g->oh; oy++)
            for (int64_t ox = 0; ox < g->ow; ox++)
                for (int64_t ch = 0; ch < c; ch++) {
                    uint32_t acc = bias ? (uint32_t)bias[ch] : 0u;
                    for (int32_t ky = 0; ky < g->kh; ky++) {
                        int64_t iy = oy * g->sh - g->ph + (int64_t)ky * g->dh;
                        if (iy < 0 || iy >= g->h) continue;
                        for (int32_t kx = 0; kx < g->kw; kx++) {
                            int64_t ix = ox * g->sw - g->pw + (int64_t)kx * g->dw;
                            if (ix < 0 || ix >= g->w) continue;
                            int32_t xv = x[((b * g->h + iy) * g->w + ix) * c + ch];
                            acc += (uint32_t)((xv - zx) * (int32_t)w[(ch * g->kh + ky) * g->kw + kx]);
                        }
                    }
                    y[((b * g->oh + oy) * g->ow + ox) * c + ch] = (int8_t)qc_requant((int32_t)acc, rq, ch);
                }
}
