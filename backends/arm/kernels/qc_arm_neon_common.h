/* Shared by the NEON kernel files: the vector epilogue (qc_requant on 4 lanes, bit-exact),
 * tail-safe loads and stores. Internal: static inline only. */
#ifndef QC_ARM_NEON_COMMON_H
#define QC_ARM_NEON_COMMON_H

#include <arm_neon.h>
#include <string.h>
#include "qc_arm_kernels.h"

#define QC_ARM_ROUND_UP(x, r) ((((x) + (r) - 1) / (r)) * (r))

/* hot-loop markers for benchmarks/arm_proxy.py (llvm-mca reads the loop between them);
 * asm comments only, no code (empty unless QC_ARM_MCA_MARKERS is defined: a volatile asm
 * could still constrain scheduling) */
#ifdef QC_ARM_MCA_MARKERS
#define QC_ARM_MCA_BEGIN(name) __asm__ volatile("# LLVM-MCA-BEGIN " name)
#define QC_ARM_MCA_END(name) __asm__ volatile("# LLVM-MCA-END " name)
#else
#define QC_ARM_MCA_BEGIN(name) ((void)0)
#define QC_ARM_MCA_END(name) ((void)0)
#endif

/* int32 lanes j0 .. j0 + 3 of p, lanes at or past `valid` read as 0 (arrays of length j0 + valid) */
static inline int32x4_t qc_arm_load4_s32(const int32_t *p, int64_t j0, int valid)
{
    if (valid >= 4) return vld1q_s32(p + j0);
    int32_t t[4] = {0, 0, 0, 0};
    memcpy(t, p + j0, (size_t)valid * sizeof(int32_t));
    return vld1q_s32(t);
}

/* per-channel requantization of 4 output channels j0 .. j0 + 3 (offset: the int32 added to
 * the accumulator first: bias − za · colsum), loaded once per column block */
typedef struct {
    int32x4_t offset;
    float32x4_t mult, lo, hi;      /* fp32 */
    int32x4_t m0;                  /* fixed point */
    int64x2_t nshift_lo, nshift_hi;
    int32x4_t zp, qmin, qmax;
    int fp32;
} qc_arm_ep4;

static inline qc_arm_ep4 qc_arm_ep4_load(const qc_rq *rq, int32x4_t offset, int64_t j0, int valid)
{
    qc_arm_ep4 e;
    e.offset = offset;
    e.fp32 = rq->mode == QC_RQ_FP32;
    e.zp = vdupq_n_s32(rq->zp);
    e.qmin = vdupq_n_s32(rq->qmin);
    e.qmax = vdupq_n_s32(rq->qmax);
    /* clamping before rounding is exact: the bounds are integers (qc_requant) */
    e.lo = vdupq_n_f32((float)(rq->qmin - rq->zp));
    e.hi = vdupq_n_f32((float)(rq->qmax - rq->zp));
    if (e.fp32) {
        if (valid >= 4) e.mult = vld1q_f32(rq->mult + j0);
        else {
            float t[4] = {0, 0, 0, 0};
            memcpy(t, rq->mult + j0, (size_t)valid * sizeof(float));
            e.mult = vld1q_f32(t);
        }
        e.m0 = vdupq_n_s32(0);
        e.nshift_lo = e.nshift_hi = vdupq_n_s64(0);
    } else {
        e.mult = vdupq_n_f32(0);
        e.m0 = qc_arm_load4_s32(rq->m0, j0, valid);
        int32x4_t ns = vnegq_s32(qc_arm_load4_s32(rq->shift, j0, valid));
        e.nshift_lo = vmovl_s32(vget_low_s32(ns));
        e.nshift_hi = vmovl_high_s32(ns);
    }
    return e;
}

/* qc_requant of acc + offset on 4 lanes -> int16 in [qmin, qmax].
 * fp32:  scvtf (round to nearest, as C's (float)int), fmul (no fma), clamp, fcvtns (round
 *        half to even) — the same float32 operations as qc_requant / requantize_fp32.
 * fixed: smull to int64 (exact, |acc| · M0 < 2^62), srshl by −t = (x + 2^(t−1)) >> t in
 *        exact arithmetic, saturating narrow (order-preserving, then clamped), + zp. */
static inline int16x4_t qc_arm_ep4_apply(const qc_arm_ep4 *e, int32x4_t acc)
{
    acc = vaddq_s32(acc, e->offset);
    int32x4_t q;
    if (e->fp32) {
        float32x4_t y = vmulq_f32(vcvtq_f32_s32(acc), e->mult);
        y = vminq_f32(vmaxq_f32(y, e->lo), e->hi);
        q = vaddq_s32(vcvtnq_s32_f32(y), e->zp);
    } else {
        int64x2_t lo = vrshlq_s64(vmull_s32(vget_low_s32(acc), vget_low_s32(e->m0)), e->nshift_lo);
        int64x2_t hi = vrshlq_s64(vmull_high_s32(acc, e->m0), e->nshift_hi);
        q = vqaddq_s32(vcombine_s32(vqmovn_s64(lo), vqmovn_s64(hi)), e->zp);
        q = vminq_s32(vmaxq_s32(q, e->qmin), e->qmax);
    }
    return vmovn_s32(q);
}

/* 8 int8 results to dst, only the first `valid` */
static inline void qc_arm_store8(int8_t *dst, int8x8_t v, int valid)
{
    if (valid >= 8) { vst1_s8(dst, v); return; }
    int8_t t[8];
    vst1_s8(t, v);
    memcpy(dst, t, (size_t)valid);
}

/* 4 int8 results (low half of v) to dst, only the first `valid`. All 4 (every tile but a
 * ragged last column panel): one 4-byte store, not a libc call with a run-time length. */
static inline void qc_arm_store4(int8_t *dst, int8x8_t v, int valid)
{
    if (valid >= 4) {
        const uint32_t four = vget_lane_u32(vreinterpret_u32_s8(v), 0);
        memcpy(dst, &four, 4);   /* constant size: a plain (unaligned) str, no call */
        return;
    }
    int8_t t[8];
    vst1_s8(t, v);
    memcpy(dst, t, (size_t)valid);
}

/* the run-time offset bias[j] − za · colsum[j] for 4 channels (wrapping int32) */
static inline int32x4_t qc_arm_offset4(const int32_t *bias, const int32_t *colsum, int32_t za, int64_t j0,
                                       int valid)
{
    int32x4_t b = bias ? qc_arm_load4_s32(bias, j0, valid) : vdupq_n_s32(0);
    return vmlsq_s32(b, vld1q_s32(colsum + j0), vdupq_n_s32(za));
}

/* The panel layout every level uses, for W panels here and A strips (qc_arm_pack_a) alike: [k / KB][R][KB] —
 * KB consecutive k of row 0, of row 1, ... R rows, then the next KB. Rows past `rows` and k
 * past `k` are zero (a zero weight adds nothing whatever A holds there).
 *   neon R=4 KB=16 (one q register per row); dotprod R=8 KB=4 (4 rows per q register, the
 *   sdot-by-element operand); i8mm R=8 KB=8 (a row pair per q register, smmla's 2x8). */
static inline void qc_arm_pack_panel(const int8_t *src, int64_t ld, int64_t rows, int64_t k, int R, int KB,
                                     int8_t *dst)
{
    const int64_t nkb = QC_ARM_ROUND_UP(k, KB) / KB;
    for (int64_t kb = 0; kb < nkb; kb++)
        for (int r = 0; r < R; r++, dst += KB) {
            int64_t len = r < rows ? (k - kb * KB < KB ? k - kb * KB : KB) : 0;
            if (len > 0) memcpy(dst, src + r * ld + kb * KB, (size_t)len);
            if (len < KB) memset(dst + (len > 0 ? len : 0), 0, (size_t)(KB - (len > 0 ? len : 0)));
        }
}

/* packed weights: int32 column sums [npad], then the panels [npad / NR][kpad / KB][NR][KB] */
static inline int64_t qc_arm_packed_size(int64_t n, int64_t k, int NR, int KB)
{
    int64_t npad = QC_ARM_ROUND_UP(n, NR);
    return npad * (int64_t)sizeof(int32_t) + npad * QC_ARM_ROUND_UP(k, KB);
}

static inline void qc_arm_pack_w(const int8_t *w, int64_t n, int64_t k, int NR, int KB, void *packed)
{
    const int64_t npad = QC_ARM_ROUND_UP(n, NR), kpad = QC_ARM_ROUND_UP(k, KB);
    int32_t *colsum = (int32_t *)packed;
    int8_t *panels = (int8_t *)(colsum + npad);
    for (int64_t j = 0; j < npad; j++) {
        uint32_t s = 0;
        for (int64_t p = 0; j < n && p < k; p++) s += (uint32_t)(int32_t)w[j * k + p];
        colsum[j] = (int32_t)s;
    }
    for (int64_t j0 = 0; j0 < npad; j0 += NR)
        qc_arm_pack_panel(w + j0 * k, k, n - j0, k, NR, KB, panels + j0 * kpad);
}

/* one register tile: packed A strip pa, W panel pb (nkb blocks of KB), writing rows < mr and
 * columns < nr of c (the tile's top-left) after the epilogue of channels n0 .. */
typedef void (*qc_arm_tile_fn)(const int8_t *pa, const int8_t *pb, int64_t nkb, const int32_t *bias,
                               const int32_t *colsum, int32_t za, const qc_rq *rq, int64_t n0, int nr, int mr,
                               int8_t *c, int64_t ldc);

/* A storage. Signed (QC_ARM_A_S8): A holds the int8 values. uint8 (QC_ARM_A_U8, the shared
 * runtime's storage: int8 stored + 128, uint8 as is): u ^ 0x80 read as int8 is u − 128, so
 * (u − za) == ((u ^ 0x80) − (za − 128)); the A strip is packed with its sign bits flipped and
 * the kernel runs on za − 128 (one eor per 16 bytes of A; the tile loops are the same). The
 * epilogue needs nothing: with zp / qmin / qmax in the uint8 domain the results lie in
 * [0, 255], and its narrowing (xtn: the low 8 bits) stores them as uint8. */
enum { QC_ARM_A_S8 = 0, QC_ARM_A_U8 = 0x80 };

/* KB bytes from src to dst, XOR flip (KB a constant after inlining: one load / eor / store) */
static inline void qc_arm_copy_block(int8_t *dst, const int8_t *src, int KB, uint8_t flip)
{
    if (KB == 16) {
        vst1q_u8((uint8_t *)dst, veorq_u8(vld1q_u8((const uint8_t *)src), vdupq_n_u8(flip)));
    } else if (KB == 8) {
        vst1_u8((uint8_t *)dst, veor_u8(vld1_u8((const uint8_t *)src), vdup_n_u8(flip)));
    } else if (KB == 4) {
        uint32_t v;
        memcpy(&v, src, 4);
        v ^= flip * 0x01010101u;
        memcpy(dst, &v, 4);
    } else {
        for (int i = 0; i < KB; i++) dst[i] = (int8_t)(src[i] ^ flip);
    }
}

#define QC_ARM_U32(v) vreinterpretq_u32_u8(v)
#define QC_ARM_U64(v) vreinterpretq_u64_u8(v)
#define QC_ARM_STORE32(d, v) vst1q_u8((d), vreinterpretq_u8_u32(v))
#define QC_ARM_STORE64(d, v) vst1q_u8((d), vreinterpretq_u8_u64(v))

/* 16 k of an 8-row strip (KB 4 or 8): one 16-byte load per row, then a register transpose
 * into the 16 / KB blocks [8 rows][KB] (KB 4: two 4x4 transposes of 32-bit lanes; KB 8: zips
 * of 64-bit lanes) — 0.25 instructions a byte where KB-byte copies took 1.5 */
static inline void qc_arm_pack_a16_r8(const int8_t *src, int64_t ld, int64_t rows, int KB, uint8_t flip,
                                      int8_t *dst)
{
    uint8x16_t v[8];
    for (int r = 0; r < 8; r++)
        v[r] = r < rows ? veorq_u8(vld1q_u8((const uint8_t *)src + r * ld), vdupq_n_u8(flip)) : vdupq_n_u8(0);
    uint8_t *d = (uint8_t *)dst;
    if (KB == 8) {
        for (int r = 0; r < 8; r += 2) {
            QC_ARM_STORE64(d + 8 * r, vzip1q_u64(QC_ARM_U64(v[r]), QC_ARM_U64(v[r + 1])));
            QC_ARM_STORE64(d + 64 + 8 * r, vzip2q_u64(QC_ARM_U64(v[r]), QC_ARM_U64(v[r + 1])));
        }
    } else {
        for (int h = 0; h < 8; h += 4) {   /* rows h .. h + 3: lanes [b0 b1 b2 b3] -> block b's 4 rows */
            uint32x4_t t0 = vtrn1q_u32(QC_ARM_U32(v[h]), QC_ARM_U32(v[h + 1]));       /* a0 b0 a2 b2 */
            uint32x4_t t1 = vtrn2q_u32(QC_ARM_U32(v[h]), QC_ARM_U32(v[h + 1]));       /* a1 b1 a3 b3 */
            uint32x4_t t2 = vtrn1q_u32(QC_ARM_U32(v[h + 2]), QC_ARM_U32(v[h + 3]));   /* c0 d0 c2 d2 */
            uint32x4_t t3 = vtrn2q_u32(QC_ARM_U32(v[h + 2]), QC_ARM_U32(v[h + 3]));   /* c1 d1 c3 d3 */
            uint64x2_t x0 = vreinterpretq_u64_u32(t0), x1 = vreinterpretq_u64_u32(t1);
            uint64x2_t x2 = vreinterpretq_u64_u32(t2), x3 = vreinterpretq_u64_u32(t3);
            QC_ARM_STORE64(d + 0 * 32 + 4 * h, vtrn1q_u64(x0, x2));
            QC_ARM_STORE64(d + 1 * 32 + 4 * h, vtrn1q_u64(x1, x3));
            QC_ARM_STORE64(d + 2 * 32 + 4 * h, vtrn2q_u64(x0, x2));
            QC_ARM_STORE64(d + 3 * 32 + 4 * h, vtrn2q_u64(x1, x3));
        }
    }
}

/* A strip of rows [0, rows) (rows <= R) in the panel layout below, each byte XOR flip
 * (QC_ARM_A_*). Rows past `rows` and k past `k` are zero: the weights there are zero too, and
 * rows past `rows` are never stored, so they only need defined contents. */
static inline void qc_arm_pack_a(const int8_t *src, int64_t ld, int64_t rows, int64_t k, int R, int KB,
                                 uint8_t flip, int8_t *dst)
{
    const int64_t kfull = k / KB * KB;
    int64_t p = 0;
    if (R == 8 && (KB == 4 || KB == 8))
        for (; p + 16 <= k; p += 16, dst += 16 * R) qc_arm_pack_a16_r8(src + p, ld, rows, KB, flip, dst);
    for (; p < kfull; p += KB) {
        for (int64_t r = 0; r < rows; r++, dst += KB) qc_arm_copy_block(dst, src + r * ld + p, KB, flip);
        if (rows < R) {
            memset(dst, 0, (size_t)((R - rows) * KB));
            dst += (R - rows) * KB;
        }
    }
    if (kfull < k) {
        memset(dst, 0, (size_t)(R * KB));
        for (int64_t r = 0; r < rows; r++)
            for (int64_t p = kfull; p < k; p++) dst[r * KB + (p - kfull)] = (int8_t)(src[r * ld + p] ^ flip);
    }
}

/* the loop nest: per strip of MR rows, pack A once into work (flip: QC_ARM_A_*; za is then
 * the kernel's, i.e. already − 128 for uint8 storage), then every W panel. Always inlined:
 * each entry point gets its own copy with MR / KB / flip constants. */
static inline __attribute__((always_inline)) void
qc_arm_gemm_drive(const int8_t *a, int64_t lda, int64_t m, int64_t n, int64_t k, int32_t za, const void *packed,
                  const int32_t *bias, const qc_rq *rq, int8_t *c, int64_t ldc, void *work, int MR, int NR, int KB,
                  uint8_t flip, qc_arm_tile_fn tile)
{
    const int64_t npad = QC_ARM_ROUND_UP(n, NR), kpad = QC_ARM_ROUND_UP(k, KB);
    const int32_t *colsum = (const int32_t *)packed;
    const int8_t *panels = (const int8_t *)(colsum + npad);
    int8_t *pa = (int8_t *)work;
    for (int64_t i0 = 0; i0 < m; i0 += MR) {
        int mr = m - i0 < MR ? (int)(m - i0) : MR;
        qc_arm_pack_a(a + i0 * lda, lda, mr, k, MR, KB, flip, pa);
        for (int64_t j0 = 0; j0 < n; j0 += NR) {
            int nr = n - j0 < NR ? (int)(n - j0) : NR;
            tile(pa, panels + j0 * kpad, kpad / KB, bias, colsum, za, rq, j0, nr, mr, c + i0 * ldc + j0, ldc);
        }
    }
}

/* the epilogue of one tile row of 8 columns (two 4-lane halves) */
static inline void qc_arm_row8_out(const qc_arm_ep4 *e0, const qc_arm_ep4 *e1, int32x4_t lo, int32x4_t hi,
                                   int8_t *dst, int nr)
{
    int16x8_t q = vcombine_s16(qc_arm_ep4_apply(e0, lo), qc_arm_ep4_apply(e1, hi));
    qc_arm_store8(dst, vmovn_s16(q), nr);
}

/* the epilogue parameters of columns n0 + 4h .. n0 + 4h + 3 of a tile with nr valid columns */
static inline qc_arm_ep4 qc_arm_ep4_cols(const int32_t *bias, const int32_t *colsum, int32_t za,
                                         const qc_rq *rq, int64_t n0, int h, int nr)
{
    int valid = nr - 4 * h;
    valid = valid < 0 ? 0 : valid > 4 ? 4 : valid;
    return qc_arm_ep4_load(rq, qc_arm_offset4(bias, colsum, za, n0 + 4 * h, valid), n0 + 4 * h, valid);
}
#endif
