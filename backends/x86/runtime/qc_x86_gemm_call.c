/* Fills qc_gemm_args for one layer and calls the kernel of the ISA the weights were packed for;
 * the blocked convolution (im2col of a block of rows, then its GEMM, per thread); the AMX
 * convolution on shifted views of the padded input. */
#include "qc_x86_gemm_call.h"

#include <pthread.h>

/* the shared runtime's kernel error codes are the GEMM's */
_Static_assert((int)QC_RT_ERR_NULL == (int)QC_ERR_NULL && (int)QC_RT_ERR_SIZE == (int)QC_ERR_SIZE &&
               (int)QC_RT_ERR_NOMEM == (int)QC_ERR_NOMEM,
               "qc_runtime.h's error codes must equal gemm_common.h's");

/* the GEMM ABI's form of the runtime's fused-add parameters */
static void qc_post_add_from(qc_post_add *p, const qc_rt_add_params *a)
{
    memset(p, 0, sizeof *p);
    p->r = a->r; p->ldr = a->ldr;
    p->mode = a->mode == QC_RQ_FP32 ? QC_REQUANT_FP32 : QC_REQUANT_FIXED_POINT;
    p->za = a->za; p->zb = a->zb; p->zo = a->zo; p->qmin = a->qmin; p->qmax = a->qmax; p->shift = a->shift;
    p->ma = a->ma; p->mb = a->mb; p->m0a = a->m0a; p->m0b = a->m0b;
}

/* the GEMM arguments of one layer (uint8 output: int8 tensors are stored shifted, qc_runtime.h);
 * post: storage for the fused add's GEMM form, used when add != NULL */
static void qc_layer_args(qc_gemm_args *p, int32_t isa, int64_t m, int64_t n, int64_t k, const uint8_t *a,
                          int64_t lda, const void *w, int64_t w_bytes, int32_t nr, int32_t kr, int32_t elem,
                          const int32_t *bias, const qc_rq *rq, uint8_t *c, int64_t ldc, const qc_rt_add_params *add,
                          qc_post_add *post, int threads)
{
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->isa = isa;
    p->m = m; p->n = n; p->k = k;
    p->a = a; p->lda = lda;
    p->b = w; p->b_bytes = w_bytes;
    p->b_nr = nr; p->b_kr = kr; p->b_elem = elem;
    p->requant_mode = rq->mode == QC_RQ_FP32 ? QC_REQUANT_FP32 : QC_REQUANT_FIXED_POINT;
    p->bias = bias;
    p->mult = rq->mult; p->m0 = rq->m0; p->shift = rq->shift;
    p->zero_point = rq->zp; p->qmin = rq->qmin; p->qmax = rq->qmax;
    p->out_type = QC_OUT_U8;
    p->c = c; p->ldc = ldc;
    if (add != NULL) {
        qc_post_add_from(post, add);
        p->post_add = post;
    }
    p->threads = threads > 0 ? threads : 0;
}

static int qc_rt_gemm_cols(int32_t isa, int64_t m, int64_t n, int64_t k, const uint8_t *a, int64_t lda,
                           int64_t a_cols, const void *w, int64_t w_bytes, int32_t nr, int32_t kr, int32_t elem,
                           const int32_t *bias, const qc_rq *rq, uint8_t *c, int64_t ldc, const qc_rt_add_params *add,
                           int threads)
{
    qc_gemm_args p;
    qc_post_add post;
    qc_layer_args(&p, isa, m, n, k, a, lda, w, w_bytes, nr, kr, elem, bias, rq, c, ldc, add, &post, threads);
    p.a_cols = a_cols;
    return qc_gemm(&p);
}

int qc_rt_gemm(int32_t isa, int64_t m, int64_t n, int64_t k, const uint8_t *a, int64_t lda,
               const void *w, int64_t w_bytes, int32_t nr, int32_t kr, int32_t elem,
               const int32_t *bias, const qc_rq *rq, uint8_t *c, int64_t ldc, const qc_rt_add_params *add, int threads)
{
    return qc_rt_gemm_cols(isa, m, n, k, a, lda, 0, w, w_bytes, nr, kr, elem, bias, rq, c, ldc, add, threads);
}

/* ---------------------------------------------------------------------------------- */
/* blocked convolution                                                                   */
/* ---------------------------------------------------------------------------------- */

/* the layer of a blocked convolution, as qc_rt_conv_blocked hands it to qc_x86_block_gemm */
typedef struct {
    int32_t isa;
    int64_t n, k;
    const void *w;
    int64_t w_bytes;
    int32_t nr, kr, elem;
    const int32_t *bias;
    const qc_rq *rq;
} qc_x86_conv_layer;

static int qc_x86_block_gemm(const void *layer, int64_t rows, const uint8_t *col, int64_t ldk, uint8_t *c,
                             int64_t ldc, const qc_rt_add_params *add)
{
    const qc_x86_conv_layer *l = (const qc_x86_conv_layer *)layer;
    /* one thread per block (the pool is busy with the blocks: a nested call is serial); the GEMM
     * reads whole 64-byte K blocks of the padded rows (a_cols = ldk) */
    return qc_rt_gemm_cols(l->isa, rows, l->n, l->k, col, ldk, ldk, l->w, l->w_bytes, l->nr, l->kr, l->elem,
                           l->bias, l->rq, c, ldc, add, 1);
}

int qc_rt_conv_gemm(int32_t isa, const uint8_t *x, const qc_window *g, int64_t c0, int64_t cg, uint8_t pad,
                    int64_t n, const void *w, int64_t w_bytes, int32_t nr, int32_t kr, int32_t elem,
                    const int32_t *bias, const qc_rq *rq, uint8_t *c, int64_t ldc, const qc_rt_add_params *add,
                    int64_t block_bytes, int threads)
{
    if (x == NULL || g == NULL || w == NULL || bias == NULL || rq == NULL || c == NULL) return QC_ERR_NULL;
    const int64_t k = (int64_t)g->kh * g->kw * cg;
    if (k <= 0 || n <= 0) return QC_ERR_SIZE;
    const qc_x86_conv_layer layer = {isa, n, k, w, w_bytes, nr, kr, elem, bias, rq};
    /* rows padded to whole 64-byte K blocks, so AMX loads the last one in place */
    return qc_rt_conv_blocked(x, g, c0, cg, pad, 64, qc_x86_block_gemm, &layer, c, ldc, add, block_bytes, threads);
}

/* ---------------------------------------------------------------------------------- */
/* convolution without im2col (AMX): shifted views of the padded input                  */
/* ---------------------------------------------------------------------------------- */

/* positions [p0, p0 + count) of the zero-point-padded image (hp x wp per image, the input at
 * (ph, pw)) into dst: the border filled with `pad`, the rest copied from the input x */
static void qc_pad_span(const uint8_t *x, const qc_window *g, int64_t hp, int64_t wp, uint8_t pad, int64_t p0,
                        int64_t count, uint8_t *dst)
{
    const int64_t c = g->c;
    for (int64_t p = p0, end = p0 + count; p < end;) {
        const int64_t row = p / wp, xq = p % wp, run = wp - xq < end - p ? wp - xq : end - p;
        const int64_t b = row / hp, y = row % hp - g->ph;
        uint8_t *d = dst + (p - p0) * c;
        if (y < 0 || y >= g->h) {
            memset(d, pad, (size_t)(run * c));
        } else {
            /* padded columns [xq, xq + run): input columns [lo, hi) of them, pad around */
            const int64_t lo = xq > g->pw ? xq : g->pw, hi = xq + run < g->pw + g->w ? xq + run : g->pw + g->w;
            if (hi <= lo) {
                memset(d, pad, (size_t)(run * c));
            } else {
                memset(d, pad, (size_t)((lo - xq) * c));
                memcpy(d + (lo - xq) * c, x + ((b * g->h + y) * g->w + lo - g->pw) * c, (size_t)((hi - lo) * c));
                memset(d + (hi - xq) * c, pad, (size_t)((xq + run - hi) * c));
            }
        }
        p += run;
    }
}

#define QC_SHIFTED_MAX_KBLOCKS 4096

typedef struct {
    qc_gemm_args p;                 /* the whole GEMM; blocks take rows [r0, r0 + mb) of it */
    const int64_t *koff;
    int64_t koff_max;
    const uint8_t *x;               /* the input */
    const qc_window *g;
    uint8_t pad;
    int in_place;                   /* no padding: the input is its own padded image */
    int64_t reach;                  /* padded positions a row's taps read past the row */
    int64_t a_bytes, mb, hp, plane, wp, oh, ow;
    _Atomic int err;
} qc_shifted_job;

static void qc_shifted_fail(qc_shifted_job *j, int err)
{
    int expected = 0;
    atomic_compare_exchange_strong(&j->err, &expected, err);
}

/* one block of rows on one thread: its slab of the padded input (its rows and the taps'
 * reach below, and 64 bytes of slack: a K block may read past its last tap's bytes, which
 * meet zero weights) is built in the thread's buffer, where it stays in cache over the taps;
 * without padding a block reads the input in place, unless its reads would pass its end */
static void qc_shifted_block(const void *ctx, int64_t chunk, int slot)
{
    qc_shifted_job *j = (qc_shifted_job *)ctx;
    (void)slot;
    if (atomic_load_explicit(&j->err, memory_order_relaxed) != 0) return;
    const int64_t r0 = chunk * j->mb, lda = j->p.lda;
    qc_gemm_args p = j->p;
    p.m = j->p.m - r0 < j->mb ? j->p.m - r0 : j->mb;
    p.threads = 1;
    int64_t a_bytes = j->a_bytes - r0 * lda;
    if (j->in_place && j->koff_max + (p.m - 1) * lda + 64 <= a_bytes) {
        p.a = j->x + r0 * lda;
    } else {
        const int64_t span = p.m + j->reach;
        uint8_t *slab = qc_rt_thread_scratch((size_t)(span * lda + 64));
        if (slab == NULL) {
            qc_shifted_fail(j, QC_ERR_NOMEM);
            return;
        }
        qc_pad_span(j->x, j->g, j->hp, j->wp, j->pad, r0, span, slab);
        p.a = slab;
        a_bytes = span * lda + 64;
    }
    const int err = p.isa == QC_ISA_AMX
        ? qc_gemm_shifted_amx(&p, j->koff, a_bytes, r0, j->plane, j->wp, j->oh, j->ow)
        : p.isa == QC_ISA_AVX512VNNI
        ? qc_gemm_shifted_avx512vnni(&p, j->koff, a_bytes, r0, j->plane, j->wp, j->oh, j->ow)
#ifndef QC_NO_EMULATION
        : p.isa == QC_ISA_AMX_EMU
        ? qc_gemm_shifted_amx_emu(&p, j->koff, a_bytes, r0, j->plane, j->wp, j->oh, j->ow)
        : p.isa == QC_ISA_AVX512VNNI_EMU
        ? qc_gemm_shifted_avx512vnni_emu(&p, j->koff, a_bytes, r0, j->plane, j->wp, j->oh, j->ow)
#endif
        : QC_ERR_ISA;
    if (err != 0) qc_shifted_fail(j, err);
}

int qc_rt_conv_shifted(int32_t isa, const uint8_t *x, const qc_window *g, uint8_t pad, int64_t n, const void *w,
                       int64_t w_bytes, int32_t nr, int32_t kr, int32_t elem, const int32_t *bias, const qc_rq *rq,
                       uint8_t *c, int64_t ldc, const qc_rt_add_params *add, int64_t block_bytes, int threads)
{
    if (x == NULL || g == NULL || w == NULL || bias == NULL || rq == NULL || c == NULL)
        return QC_ERR_NULL;
    /* a K block is 64 channels of one tap or, for thin inputs, one kernel row's taps
     * (kw * c <= 64 bytes, zero weights past them) */
    const int rows_of_taps = g->c % 64 != 0;
    if (g->sh != 1 || g->sw != 1 || g->dh != 1 || g->dw != 1 || g->ph < 0 || g->pw < 0 || block_bytes <= 0 ||
        g->c <= 0 || (rows_of_taps && (int64_t)g->kw * g->c > 64))
        return QC_ERR_SIZE;
    const int64_t hp = g->oh + g->kh - 1, wp = g->ow + g->kw - 1;     /* stride 1: the padded image */
    if (hp < g->h + g->ph || wp < g->w + g->pw) return QC_ERR_SIZE;
    const int64_t cblocks = g->c / 64, kblocks = rows_of_taps ? g->kh : (int64_t)g->kh * g->kw * cblocks;
    if (kblocks <= 0 || kblocks > QC_SHIFTED_MAX_KBLOCKS) return QC_ERR_SIZE;
    const int nt = threads > 0 ? threads : qc_cpu_count();
    qc_shifted_job job;
    memset(&job, 0, sizeof job);
    int64_t koff[QC_SHIFTED_MAX_KBLOCKS];
    if (rows_of_taps) {
        for (int64_t ky = 0; ky < g->kh; ky++) koff[ky] = ky * wp * g->c;
    } else {
        for (int64_t ky = 0, kb = 0; ky < g->kh; ky++)
            for (int64_t kx = 0; kx < g->kw; kx++)
                for (int64_t cb = 0; cb < cblocks; cb++, kb++) koff[kb] = (ky * wp + kx) * g->c + cb * 64;
    }
    /* rows over the padded images up to the last valid output pixel; the fused add's rows
     * are absolute output rows (the row map) */
    qc_post_add post;
    qc_layer_args(&job.p, isa, (g->n - 1) * hp * wp + (g->oh - 1) * wp + g->ow, n, kblocks * 64, x, g->c, w,
                  w_bytes, nr, kr, elem, bias, rq, c, ldc, add, &post, nt);
    qc_gemm_args *p = &job.p;
    job.koff = koff;
    job.koff_max = koff[kblocks - 1];
    job.x = x;
    job.g = g;
    job.pad = pad;
    job.in_place = hp == g->h && wp == g->w;
    job.reach = (g->kh - 1) * wp + g->kw - 1;
    job.a_bytes = g->n * hp * wp * g->c;
    job.hp = hp; job.plane = hp * wp; job.wp = wp; job.oh = g->oh; job.ow = g->ow;
    /* blocks of rows whose input slab (their rows and the taps' reach below) is ~block_bytes,
     * at least four a thread, whole 32-row AMX tiles */
    int64_t mb = block_bytes / g->c - job.reach;
    const int64_t even = (p->m + 4 * (int64_t)nt - 1) / (4 * (int64_t)nt);
    if (mb > even) mb = even;
    mb = (mb + 31) / 32 * 32;
    if (mb < 32) mb = 32;
    job.mb = mb;
    qc_parallel_for(qc_shifted_block, &job, (p->m + mb - 1) / mb, nt);
    return atomic_load(&job.err);
}

const char *qc_rt_gemm_strerror(int err) { return qc_strerror(err); }
