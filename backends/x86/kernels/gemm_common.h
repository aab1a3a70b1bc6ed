/* qcompiler x86 int8 GEMM: the C ABI, input validation and the scalar epilogue.
 *
 *   C[m, n] = requant( sum_k A[m, k] * W[n, k] + bias'[n] )
 *
 * A is uint8 [M, K] (row stride lda), W int8 [N, K] packed ahead of time into panels
 * (layout below), bias' the packed int32 bias with the zero-point compensation
 * -za * sum_k W[n, k] already folded in, so the kernels accumulate sum A*W directly.
 * All int32 arithmetic wraps (two's complement): the true accumulator fits int32 (proved
 * when lowering), so wrapped partial sums give it exactly in any order.
 *
 * Packed W layout (per ISA: NR columns per panel, KR consecutive k per group, element
 * size ELEM bytes: int8, or int16 for the AVX2 vpmaddwd path):
 *     panel p = n / NR, group g = k / KR
 *     byte offset = (((p * (k_pad / KR) + g) * NR + n % NR) * KR + k % KR) * ELEM
 * with N padded to n_pad = ceil(N / NR) * NR and K to k_pad = ceil(K / KR) * KR by zeros.
 * bias / mult / m0 / shift are arrays of n_pad entries (padding entries must be valid).
 *
 * This file is included into one translation unit (gemm_dispatch.c) together with every
 * ISA file; each ISA file sets its own `#pragma GCC target` region.
 */
#ifndef QC_GEMM_COMMON_H
#define QC_GEMM_COMMON_H

#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* the pool is target-neutral: backends/c_runtime/qc_thread_pool.h */
#include "qc_thread_pool.h"

#define QC_GEMM_ABI_VERSION 3
#define QC_EXPORT __attribute__((visibility("default")))

/* error codes (qc_strerror gives the text) */
enum {
    QC_OK = 0,
    QC_ERR_NULL = 1,        /* a required pointer is NULL */
    QC_ERR_SIZE = 2,        /* m, n or k not positive (or too large) */
    QC_ERR_STRIDE = 3,      /* lda < k or ldc < n */
    QC_ERR_LAYOUT = 4,      /* packed weights do not match the kernel's layout */
    QC_ERR_ISA = 5,         /* this CPU (or this build) lacks the requested ISA */
    QC_ERR_PARAM = 6,       /* bad requant / output parameters */
    QC_ERR_NOMEM = 7,       /* scratch allocation failed */
    QC_ERR_ABI = 8,         /* struct_size mismatch: caller built against another ABI */
    QC_ERR_THREADS = 9      /* negative thread count */
};

/* ISA ids; the *_EMU variants are the VNNI / AMX sources compiled with QC_EMULATE_VNNI
 * (exact emulation of vpdpbusd with AVX2 / AVX-512BW instructions) or QC_EMULATE_AMX
 * (tile operations emulated in C). */
enum {
    QC_ISA_AUTO = 0,
    QC_ISA_SCALAR = 1,
    QC_ISA_AVX2 = 2,
    QC_ISA_AVXVNNI = 3,
    QC_ISA_AVX512VNNI = 4,
    QC_ISA_AVXVNNI_EMU = 5,
    QC_ISA_AVX512VNNI_EMU = 6,
    QC_ISA_AMX = 7,            /* AMX-INT8 tiles (tdpbusd), AVX-512 VNNI's packed layout */
    QC_ISA_AMX_EMU = 8,        /* the AMX source with every tile op emulated in C */
    QC_ISA_COUNT = 9
};

enum { QC_REQUANT_NONE = 0, QC_REQUANT_FP32 = 1, QC_REQUANT_FIXED_POINT = 2 };
enum { QC_OUT_U8 = 0, QC_OUT_S8 = 1, QC_OUT_I32 = 2, QC_OUT_F32 = 3 };

/* a residual add fused into the epilogue (QAdd of core/integer_ops.py): the GEMM's requantized
 * uint8 output q ("own", zero point za) and the uint8 tensor r of the same shape ("other", zero
 * point zb) give clamp(round(f32(f32(q - za) * ma) + f32(f32(r - zb) * mb)) + zo, qmin, qmax)
 * (fp32), or clamp(((q - za) * m0a + (r - zb) * m0b + 2^(shift-1)) >> shift) + zo ...) (fixed
 * point); only the sum is stored. AVX-512 VNNI and AMX kernels only. */
typedef struct qc_post_add {
    const uint8_t *r;          /* [m, n] uint8, row stride ldr (elements) */
    int64_t ldr;
    int32_t mode;              /* QC_REQUANT_FP32 / QC_REQUANT_FIXED_POINT */
    int32_t za, zb, zo, qmin, qmax, shift;
    float ma, mb;
    int64_t m0a, m0b;          /* fixed point: in [0, 2^31) */
} qc_post_add;

typedef struct qc_gemm_args {
    uint32_t struct_size;      /* = sizeof(qc_gemm_args) */
    int32_t isa;               /* QC_ISA_*; AUTO = best the CPU supports (CPUID) */
    int64_t m, n, k;           /* logical sizes, all > 0 */
    const uint8_t *a;          /* [m, k] uint8, row stride lda (elements) */
    int64_t lda;
    const void *b;             /* packed weights (layout above) */
    int64_t b_bytes;           /* size of the packed buffer: checked against the layout */
    int32_t b_nr, b_kr, b_elem;/* layout the weights were packed with */
    int32_t requant_mode;      /* QC_REQUANT_*; NONE only with QC_OUT_I32 */
    const int32_t *bias;       /* [n_pad] packed bias (zero-point compensation folded in) */
    const float *mult;         /* [n_pad] fp32 mode: float32 multipliers */
    const int32_t *m0;         /* [n_pad] fixed_point mode: M0 in [0, 2^31) */
    const int32_t *shift;      /* [n_pad] fixed_point mode: t in [1, 62] */
    int32_t zero_point;        /* output zero point */
    int32_t qmin, qmax;        /* output clamp (type bounds narrowed by a fused relu) */
    float out_scale;           /* QC_OUT_F32: out = (float)(q - zero_point) * out_scale */
    int32_t out_type;          /* QC_OUT_* */
    void *c;                   /* [m, n] output, row stride ldc (elements) */
    int64_t ldc;
    int32_t threads;           /* 0: every CPU this process may use; > 0: at most that many */
    int64_t a_cols;            /* 0, or bytes readable in every row of A (k <= a_cols <= lda):
                                  a kernel that pads K may then read the pad A[i, k..) in place
                                  (its weights are zero there) instead of copying the row tail */
    const qc_post_add *post_add;   /* NULL, or a residual add fused into the epilogue (ABI 3) */
} qc_gemm_args;

/* what one kernel call needs, shared by every thread (read-only during the run) */
typedef struct qc_task {
    const qc_gemm_args *args;
    const uint8_t *a;          /* A as the kernel reads it (the int16 copy for AVX2) */
    int64_t lda_bytes;
    int64_t a_cols;            /* bytes readable per row of A (>= k) */
    int64_t m, n, k;           /* k: the K the kernel iterates (k_pad for AVX2) */
    const uint8_t *b;
    int64_t kgroups;           /* k_pad / KR: groups per panel */
    int64_t mc, kc;            /* cache blocking: rows per M block, K per K block */
    int32_t *scratch;          /* per-thread-slot int32 partial sums when K is blocked */
    int64_t scratch_per_slot;
    int64_t panels, tiles_per_block;  /* work chunks: (M block, run of N panels) pairs */
    int64_t panels_per_chunk;
    int32_t mode, out_type;
    const int32_t *bias;
    const float *mult;
    const int32_t *m0, *shift;
    int32_t zo, lo, hi;
    float out_scale;
    uint8_t *c;
    int64_t ldc;
    /* shifted views (convolutions without im2col, qc_gemm_shifted_<isa>): A's 64-k block kb
     * starts at a + koff[kb] (NULL: at a + 64 kb); output row r is row map(r) of C, or none */
    const qc_post_add *post_add;
    const int64_t *koff;
    int64_t map_base, map_plane, map_wp, map_oh, map_ow;   /* map_wp 0: the identity */
} qc_task;

/* the output rows of GEMM rows r0 .. r0+n-1 under the task's row map into out (-1: a padding
 * row, not stored): base + r = image * plane + y * wp + x over a padded image, valid where
 * y < oh and x < ow. One division, then steps (a tile's rows serve every column panel). */
static inline void qc_map_rows(const qc_task *t, int64_t r0, int n, int64_t *out)
{
    if (t->map_wp == 0) {
        for (int i = 0; i < n; i++) out[i] = r0 + i;
        return;
    }
    const int64_t r = r0 + t->map_base, rem = r % t->map_plane;
    int64_t img = r / t->map_plane, y = rem / t->map_wp, x = rem % t->map_wp;
    for (int i = 0; i < n; i++) {
        out[i] = (y < t->map_oh && x < t->map_ow) ? (img * t->map_oh + y) * t->map_ow + x : -1;
        if (++x == t->map_wp) {
            x = 0;
            if (++y * t->map_wp == t->map_plane) { y = 0; img++; }
        }
    }
}

/* threads for a call: the caller's count, or every CPU this process may use */
static inline int qc_threads(const qc_gemm_args *p)
{
    return p->threads > 0 ? p->threads : qc_cpu_count();
}

static inline int64_t qc_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline int64_t qc_min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Work chunks of a GEMM, claimed dynamically by the pool's threads: (M block, N panel)
 * pairs, panels fastest (consecutive chunks share an M block of A) — or, where an output
 * row is not a whole number of cache lines and is short, (M block, every panel): each row
 * is then written by one thread (MobileNetV2's 1x1 expansions to 96 and 144 channels, split
 * by panel, wrote both halves of a shared cache line from two threads and took 0.9x the
 * 1-thread time). M is cut into blocks of mc rows, or — with mc = 0 — into as few blocks as
 * give every thread about four chunks. Sets t's chunking for tiles of mr rows and panels of
 * nr columns; returns the number of chunks. */
#ifndef QC_WHOLE_ROW_COLUMNS
#define QC_WHOLE_ROW_COLUMNS 256     /* outputs up to this wide take whole rows per chunk */
#endif
static inline int64_t qc_plan_chunks(qc_task *t, int64_t mr, int64_t nr, int64_t mc, int nt)
{
    const int64_t mtiles = qc_ceil_div(t->m, mr);
    t->panels = qc_ceil_div(t->n, nr);
    const int64_t elem = t->out_type == QC_OUT_U8 || t->out_type == QC_OUT_S8 ? 1 : 4;
    const int lines_split = ((uintptr_t)t->c | (uintptr_t)(t->ldc * elem)) % 64 != 0;
    t->panels_per_chunk = lines_split && t->n <= QC_WHOLE_ROW_COLUMNS ? t->panels : 1;
    const int64_t runs = qc_ceil_div(t->panels, t->panels_per_chunk);
    if (mc > 0) {
        t->tiles_per_block = mc / mr > 0 ? mc / mr : 1;
    } else {
        const int64_t want = 4 * (int64_t)nt;
        const int64_t mblocks = runs >= want ? 1 : qc_ceil_div(want, runs);
        t->tiles_per_block = qc_ceil_div(mtiles, mblocks);
    }
    if (t->tiles_per_block > mtiles) t->tiles_per_block = mtiles;
    t->mc = t->tiles_per_block * mr;
    return qc_ceil_div(mtiles, t->tiles_per_block) * runs;
}

/* chunk c's M tiles [*ib, *ie) and N panels [*j0, *j1) (see qc_plan_chunks) */
static inline void qc_chunk_range(const qc_task *t, int64_t c, int64_t mr, int64_t *ib, int64_t *ie,
                                  int64_t *j0, int64_t *j1)
{
    const int64_t runs = qc_ceil_div(t->panels, t->panels_per_chunk);
    *ib = (c / runs) * t->tiles_per_block;
    *ie = qc_min64(*ib + t->tiles_per_block, qc_ceil_div(t->m, mr));
    *j0 = (c % runs) * t->panels_per_chunk;
    *j1 = qc_min64(*j0 + t->panels_per_chunk, t->panels);
}

/* ------------------------------------------------------------------------------------ */
/* validation: everything is checked before any pointer is dereferenced                   */
/* ------------------------------------------------------------------------------------ */

static int qc_validate(const qc_gemm_args *p, int nr, int kr, int elem)
{
    if (p == NULL) return QC_ERR_NULL;
    if (p->struct_size != sizeof(qc_gemm_args)) return QC_ERR_ABI;
    if (p->m <= 0 || p->n <= 0 || p->k <= 0) return QC_ERR_SIZE;
    if (p->m > INT32_MAX || p->n > INT32_MAX || p->k > INT32_MAX) return QC_ERR_SIZE;
    if (p->a == NULL || p->b == NULL || p->bias == NULL || p->c == NULL) return QC_ERR_NULL;
    if (p->lda < p->k || p->ldc < p->n) return QC_ERR_STRIDE;
    if (p->a_cols != 0 && (p->a_cols < p->k || p->a_cols > p->lda)) return QC_ERR_STRIDE;
    if (p->threads < 0) return QC_ERR_THREADS;
    if (p->b_nr != nr || p->b_kr != kr || p->b_elem != elem) return QC_ERR_LAYOUT;
    {
        int64_t n_pad = qc_ceil_div(p->n, nr) * nr, k_pad = qc_ceil_div(p->k, kr) * kr;
        if (p->b_bytes != n_pad * k_pad * elem) return QC_ERR_LAYOUT;
    }
    switch (p->out_type) {
    case QC_OUT_I32:
        if (p->requant_mode != QC_REQUANT_NONE) return QC_ERR_PARAM;
        return QC_OK;
    case QC_OUT_U8:
        if (p->qmin < 0 || p->qmax > 255) return QC_ERR_PARAM;
        break;
    case QC_OUT_S8:
        if (p->qmin < -128 || p->qmax > 127) return QC_ERR_PARAM;
        break;
    case QC_OUT_F32:
        if (!(p->out_scale == p->out_scale)) return QC_ERR_PARAM;   /* NaN */
        if (p->qmin < -(1 << 20) || p->qmax > (1 << 20)) return QC_ERR_PARAM;
        break;
    default:
        return QC_ERR_PARAM;
    }
    if (p->qmin > p->qmax) return QC_ERR_PARAM;
    if (p->post_add != NULL) {
        const qc_post_add *a = p->post_add;
        if (p->out_type != QC_OUT_U8) return QC_ERR_PARAM;
        if (a->r == NULL) return QC_ERR_NULL;
        if (a->ldr < p->n) return QC_ERR_STRIDE;
        if (a->qmin < 0 || a->qmax > 255 || a->qmin > a->qmax || a->za < 0 || a->za > 255 || a->zb < 0 ||
            a->zb > 255 || a->zo < -(1 << 20) || a->zo > (1 << 20))
            return QC_ERR_PARAM;
        if (a->mode == QC_REQUANT_FP32) {
            if (!(a->ma == a->ma && a->mb == a->mb) || a->ma > 1e30f || a->ma < -1e30f || a->mb > 1e30f ||
                a->mb < -1e30f)
                return QC_ERR_PARAM;
        } else if (a->mode == QC_REQUANT_FIXED_POINT) {
            if (a->shift < 1 || a->shift > 62 || a->m0a < 0 || a->m0a > INT32_MAX || a->m0b < 0 || a->m0b > INT32_MAX)
                return QC_ERR_PARAM;
        } else {
            return QC_ERR_PARAM;
        }
    }
    /* keeps |q - zero_point| < 2^22: exact in float32 and in qc_round_even_f32 */
    if (p->zero_point < -(1 << 20) || p->zero_point > (1 << 20)) return QC_ERR_PARAM;
    {
        int64_t n_pad = qc_ceil_div(p->n, nr) * nr;
        if (p->requant_mode == QC_REQUANT_FP32) {
            if (p->mult == NULL) return QC_ERR_NULL;
            for (int64_t j = 0; j < n_pad; j++) {
                float f = p->mult[j];
                if (!(f == f) || f > 3.0e38f || f < -3.0e38f) return QC_ERR_PARAM;  /* NaN/inf */
            }
        } else if (p->requant_mode == QC_REQUANT_FIXED_POINT) {
            if (p->m0 == NULL || p->shift == NULL) return QC_ERR_NULL;
            for (int64_t j = 0; j < n_pad; j++)
                if (p->m0[j] < 0 || p->shift[j] < 1 || p->shift[j] > 62) return QC_ERR_PARAM;
        } else {
            return QC_ERR_PARAM;
        }
    }
    return QC_OK;
}

/* fills the fields every ISA shares; the ISA entry then sets a, lda_bytes, k, blocking */
static void qc_task_init(qc_task *t, const qc_gemm_args *p)
{
    memset(t, 0, sizeof *t);
    t->args = p;
    t->a = p->a;
    t->lda_bytes = p->lda;
    t->a_cols = p->a_cols > 0 ? p->a_cols : p->k;
    t->m = p->m; t->n = p->n; t->k = p->k;
    t->b = (const uint8_t *)p->b;
    t->mode = p->requant_mode; t->out_type = p->out_type;
    t->bias = p->bias; t->mult = p->mult; t->m0 = p->m0; t->shift = p->shift;
    t->zo = p->zero_point; t->lo = p->qmin; t->hi = p->qmax;
    t->out_scale = p->out_scale;
    t->c = (uint8_t *)p->c;
    t->ldc = p->ldc;
    t->post_add = p->post_add;
}

/* The GEMM over shifted views of one buffer (qc_gemm_shifted_<isa>): A's 64-k block kb of row r
 * is the 64 bytes at a + koff[kb] + r * lda (a_bytes readable from a), K a multiple of 64;
 * output row r goes to row map(base + r) of C (qc_map_rows: plane / wp / oh / ow) or nowhere.
 * A stride-1 convolution over a padded NHWC image is this with lda = channels and koff =
 * (ky * wp + kx) * channels + 64 c: no im2col. Validates everything (every offset against
 * a_bytes before any load), then sets up the task. */
static int qc_shifted_task_init(qc_task *t, const qc_gemm_args *p, int nr, int kr, int elem, const int64_t *koff,
                                int64_t a_bytes, int64_t base, int64_t plane, int64_t wp, int64_t oh, int64_t ow)
{
    if (p == NULL || koff == NULL) return QC_ERR_NULL;
    if (p->struct_size != sizeof(qc_gemm_args)) return QC_ERR_ABI;
    if (p->k <= 0 || p->k % 64 != 0 || p->m <= 0 || p->lda <= 0 || a_bytes <= 0) return QC_ERR_SIZE;
    qc_gemm_args whole = *p;             /* everything but A's shape, as a plain GEMM checks it */
    whole.lda = p->k;
    whole.a_cols = 0;
    int err = qc_validate(&whole, nr, kr, elem);
    if (err != QC_OK) return err;
    for (int64_t kb = 0; kb < p->k / 64; kb++)
        if (koff[kb] < 0 || koff[kb] + (p->m - 1) * p->lda + 64 > a_bytes) return QC_ERR_STRIDE;
    if (wp < 0 || base < 0 || (wp > 0 && (ow <= 0 || ow > wp || oh <= 0 || plane < oh * wp))) return QC_ERR_SIZE;
    if (wp > 0 && (base + p->m - 1) / plane * oh * ow + oh * ow > INT32_MAX) return QC_ERR_SIZE;
    qc_task_init(t, p);
    t->a_cols = p->k;                    /* no K tail: the views are read in place */
    t->koff = koff;
    t->map_base = base; t->map_plane = plane; t->map_wp = wp; t->map_oh = oh; t->map_ow = ow;
    return QC_OK;
}

/* A kernel file's qc_gemm_shifted entry (those with a shifted-view driver: AVX-512 VNNI,
 * AMX): expanded after the file's QC_FN, NR, KR, ELEM, cpu_ok and run; or, where the
 * compiler cannot target the ISA, the entry that reports it */
#define QC_SHIFTED_ENTRY_ARGS                                                                     \
    const qc_gemm_args *p, const int64_t *koff, int64_t a_bytes, int64_t base, int64_t plane,     \
    int64_t wp, int64_t oh, int64_t ow
#define QC_DEFINE_GEMM_SHIFTED                                                                    \
    QC_EXPORT int QC_FN(qc_gemm_shifted)(QC_SHIFTED_ENTRY_ARGS)                                   \
    {                                                                                             \
        qc_task t;                                                                                \
        const int err = qc_shifted_task_init(&t, p, NR, KR, ELEM, koff, a_bytes, base, plane, wp, oh, ow); \
        if (err != QC_OK) return err;                                                             \
        if (!QC_FN(cpu_ok)()) return QC_ERR_ISA;                                                  \
        return QC_FN(run)(&t, qc_threads(p));                                                     \
    }
#define QC_DEFINE_GEMM_SHIFTED_UNSUPPORTED                                                        \
    QC_EXPORT int QC_FN(qc_gemm_shifted)(QC_SHIFTED_ENTRY_ARGS)                                   \
    {                                                                                             \
        (void)p; (void)koff; (void)a_bytes; (void)base; (void)plane; (void)wp; (void)oh; (void)ow; \
        return QC_ERR_ISA;                                                                        \
    }

/* ------------------------------------------------------------------------------------ */
/* scalar epilogue (the specification the vector epilogues are tested against)            */
/* ------------------------------------------------------------------------------------ */

/* round half to even of |y| < 2^22 with float adds only (no libm, no FMA: the file is
 * compiled with -ffp-contract=off); under the default round-to-nearest-even mode */
static inline float qc_round_even_f32(float y)
{
    const float magic = 12582912.0f;   /* 1.5 * 2^23 */
    volatile float t = y + magic;      /* volatile: keep the two roundings apart */
    return t - magic;
}

/* requantized, clamped integer q (zero point added) of one accumulator of channel j */
static inline int32_t qc_requant_scalar(const qc_task *t, int32_t acc, int64_t j)
{
    int64_t lo = (int64_t)t->lo - t->zo, hi = (int64_t)t->hi - t->zo, q;
    if (t->mode == QC_REQUANT_FP32) {
        float y = (float)acc * t->mult[j];          /* one IEEE float32 multiply */
        if (y < (float)lo) y = (float)lo;            /* clamp first: bounds are integers, */
        if (y > (float)hi) y = (float)hi;            /* so round(clamp) == clamp(round)   */
        q = (int64_t)qc_round_even_f32(y);
    } else {
        int s = t->shift[j];
        int64_t prod = (int64_t)acc * (int64_t)t->m0[j] + ((int64_t)1 << (s - 1));
        q = prod >> s;                              /* arithmetic shift (GCC semantics) */
        if (q < lo) q = lo;
        if (q > hi) q = hi;
    }
    return (int32_t)(q + t->zo);
}

/* writes one output element (row i, channel j) from a wrapped int32 accumulator */
static inline void qc_store_scalar(const qc_task *t, int64_t i, int64_t j, int32_t acc)
{
    if (t->out_type == QC_OUT_I32) {
        ((int32_t *)t->c)[i * t->ldc + j] = acc;
        return;
    }
    int32_t q = qc_requant_scalar(t, acc, j);
    switch (t->out_type) {
    case QC_OUT_U8: t->c[i * t->ldc + j] = (uint8_t)q; break;
    case QC_OUT_S8: ((int8_t *)t->c)[i * t->ldc + j] = (int8_t)q; break;
    default: ((float *)t->c)[i * t->ldc + j] = (float)(q - t->zo) * t->out_scale; break;
    }
}

/* loads the last n (< 4) bytes of a K group without reading past them */
static inline int32_t qc_load_partial4(const uint8_t *p, int n)
{
    uint32_t x = 0;
    for (int i = 0; i < n; i++) x |= (uint32_t)p[i] << (8 * i);
    return (int32_t)x;
}

#define QC_CAT_(a, b) a##_##b
#define QC_CAT(a, b) QC_CAT_(a, b)

#endif /* QC_GEMM_COMMON_H */
