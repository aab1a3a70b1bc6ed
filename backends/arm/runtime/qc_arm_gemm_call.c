/* The ARM model's GEMM entry (qc_arm_gemm_call.h): validates, then splits M over the runtime's
 * thread pool; each thread packs its A strips into a scratch buffer of its own. */
#include "qc_thread_pool.h"   /* first: qc_runtime.h's parallel loops then use the pool too */
#include "qc_arm_gemm_call.h"
#include "qc_arm_kernels.h"

#include <math.h>
#include <pthread.h>
#include <string.h>
#if defined(__linux__)
#include <sys/auxv.h>
#endif

#if !defined(__aarch64__)
#error "qc_arm_gemm_call.c is AArch64 code (build it with an aarch64 compiler and a level's -march)"
#endif

/* below this many multiply-adds a call stays on the calling thread: on one core it takes a
 * few microseconds, about what handing chunks to the pool's helpers costs */
#define QC_ARM_RT_SERIAL_MACS (1 << 16)
/* rows per chunk are a multiple of every level's strip height (neon 4, dotprod / i8mm 8), so
 * that only the last chunk has a partial strip */
#define QC_ARM_RT_ROW_ALIGN 8

typedef void (*qc_arm_rt_gemm_fn)(const uint8_t *a, int64_t lda, int64_t m, int64_t n, int64_t k, int32_t za,
                                  const void *packed, const int32_t *bias, const qc_rq *rq, uint8_t *c,
                                  int64_t ldc, void *work);
typedef struct {
    qc_arm_rt_gemm_fn gemm;
    int64_t (*packed_size)(int64_t n, int64_t k);
    int64_t (*work_size)(int64_t k);
} qc_arm_rt_kernel;

/* the uint8-storage kernel of `level`, if this build has it */
static int qc_arm_rt_kernel_of(int32_t level, qc_arm_rt_kernel *kr)
{
    switch (level) {
    case QC_ARM_LEVEL_NEON:
        *kr = (qc_arm_rt_kernel){qc_arm_gemm_u8_neon, qc_arm_packed_size_neon, qc_arm_work_size_neon};
        return 1;
#if defined(__ARM_FEATURE_DOTPROD)
    case QC_ARM_LEVEL_DOTPROD:
        *kr = (qc_arm_rt_kernel){qc_arm_gemm_u8_dotprod, qc_arm_packed_size_dotprod, qc_arm_work_size_dotprod};
        return 1;
#endif
#if defined(__ARM_FEATURE_MATMUL_INT8)
    case QC_ARM_LEVEL_I8MM:
        *kr = (qc_arm_rt_kernel){qc_arm_gemm_u8_i8mm, qc_arm_packed_size_i8mm, qc_arm_work_size_i8mm};
        return 1;
#endif
    default:
        return 0;
    }
}

int qc_arm_rt_levels(void)
{
    int mask = 0;
    qc_arm_rt_kernel kr;
    for (int32_t level = QC_ARM_LEVEL_NEON; level <= QC_ARM_LEVEL_I8MM; level++)
        if (qc_arm_rt_kernel_of(level, &kr)) mask |= 1 << level;
    return mask;
}

/* whether this CPU runs `level`'s instructions (Linux hwcaps; elsewhere assumed, as the build's
 * -march already is) */
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1UL << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1UL << 13)
#endif
static int qc_arm_rt_cpu_has(int32_t level)
{
#if defined(__linux__)
    switch (level) {
    case QC_ARM_LEVEL_NEON: return (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0;
    case QC_ARM_LEVEL_DOTPROD: return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
    case QC_ARM_LEVEL_I8MM: return (getauxval(AT_HWCAP2) & HWCAP2_I8MM) != 0;
    default: return 0;
    }
#else
    (void)level;
    return 1;
#endif
}

/* the requantization's parameters, n channels (uint8 output): what the vector epilogue needs
 * to equal qc_requant (a NaN or infinite multiplier would not: fmax / fcvtns treat NaN as
 * torch does not) */
static int qc_arm_rt_check_rq(const qc_rq *rq, int64_t n)
{
    if (rq->qmin < 0 || rq->qmax > 255 || rq->qmin > rq->qmax) return QC_ARM_RT_ERR_PARAM;
    if (rq->zp < -(1 << 20) || rq->zp > (1 << 20)) return QC_ARM_RT_ERR_PARAM;   /* |q − zp| stays exact in float32 */
    if (rq->mode == QC_RQ_FP32) {
        if (rq->mult == NULL) return QC_ARM_RT_ERR_NULL;
        for (int64_t j = 0; j < n; j++)
            if (!isfinite(rq->mult[j])) return QC_ARM_RT_ERR_PARAM;
    } else if (rq->mode == QC_RQ_FIXED_POINT) {
        if (rq->m0 == NULL || rq->shift == NULL) return QC_ARM_RT_ERR_NULL;
        for (int64_t j = 0; j < n; j++)
            if (rq->m0[j] < 0 || rq->shift[j] < 1 || rq->shift[j] > 62) return QC_ARM_RT_ERR_PARAM;
    } else {
        return QC_ARM_RT_ERR_PARAM;
    }
    return QC_ARM_RT_OK;
}

/* each thread's A-strip scratch, grown on first use (a model's steady state allocates
 * nothing) and freed when the thread exits */
static pthread_key_t qc_arm_rt_key;
static pthread_once_t qc_arm_rt_once = PTHREAD_ONCE_INIT;
#define QC_ARM_RT_HEADER 64   /* bytes before the buffer: its capacity, and alignment */

static void qc_arm_rt_key_init(void) { (void)pthread_key_create(&qc_arm_rt_key, free); }

static void *qc_arm_rt_scratch(size_t bytes)
{
    (void)pthread_once(&qc_arm_rt_once, qc_arm_rt_key_init);
    size_t *h = (size_t *)pthread_getspecific(qc_arm_rt_key);
    if (h == NULL || h[0] < bytes) {
        free(h);
        (void)pthread_setspecific(qc_arm_rt_key, NULL);
        h = (size_t *)aligned_alloc(64, (QC_ARM_RT_HEADER + bytes + 63) / 64 * 64);
        if (h == NULL) return NULL;
        h[0] = bytes;
        if (pthread_setspecific(qc_arm_rt_key, h) != 0) {
            free(h);
            return NULL;
        }
    }
    return (uint8_t *)h + QC_ARM_RT_HEADER;
}

typedef struct {
    qc_arm_rt_gemm_fn gemm;
    const uint8_t *a;
    int64_t lda, m, n, k, rows;   /* rows: per chunk */
    int32_t za;
    const void *packed;
    const int32_t *bias;
    const qc_rq *rq;
    uint8_t *c;
    int64_t ldc;
    size_t work_bytes;
    _Atomic int err;
} qc_arm_rt_job;

/* rows [chunk * rows, + rows) of C, on the claiming thread's scratch */
static void qc_arm_rt_chunk(const void *ctx, int64_t chunk, int slot)
{
    qc_arm_rt_job *j = (qc_arm_rt_job *)ctx;
    (void)slot;
    void *work = qc_arm_rt_scratch(j->work_bytes);
    if (work == NULL) {
        atomic_store_explicit(&j->err, QC_ARM_RT_ERR_NOMEM, memory_order_relaxed);
        return;
    }
    const int64_t r0 = chunk * j->rows, rows = j->m - r0 < j->rows ? j->m - r0 : j->rows;
    j->gemm(j->a + r0 * j->lda, j->lda, rows, j->n, j->k, j->za, j->packed, j->bias, j->rq, j->c + r0 * j->ldc,
            j->ldc, work);
}

int qc_arm_rt_gemm(int32_t level, int64_t m, int64_t n, int64_t k, const uint8_t *a, int64_t lda, int32_t za,
                   const void *packed, int64_t packed_bytes, const int32_t *bias, const qc_rq *rq, uint8_t *c,
                   int64_t ldc, int threads)
{
    if (a == NULL || packed == NULL || rq == NULL || c == NULL) return QC_ARM_RT_ERR_NULL;
    if (m <= 0 || n <= 0 || k <= 0 || m > INT32_MAX || n > INT32_MAX || k > INT32_MAX) return QC_ARM_RT_ERR_SIZE;
    if (lda < k || ldc < n) return QC_ARM_RT_ERR_STRIDE;
    if (threads < 0) return QC_ARM_RT_ERR_THREADS;
    qc_arm_rt_kernel kr;
    if (!qc_arm_rt_kernel_of(level, &kr)) return QC_ARM_RT_ERR_LEVEL;
    if (!qc_arm_rt_cpu_has(level)) return QC_ARM_RT_ERR_CPU;
    if (packed_bytes != kr.packed_size(n, k)) return QC_ARM_RT_ERR_LAYOUT;
    if (za < 0 || za > 255) return QC_ARM_RT_ERR_PARAM;
    const int err = qc_arm_rt_check_rq(rq, n);
    if (err != QC_ARM_RT_OK) return err;

    int nt = threads > 0 ? threads : qc_cpu_count();
    if ((double)m * (double)n * (double)k < QC_ARM_RT_SERIAL_MACS) nt = 1;
    /* about four chunks a thread: the pool hands them out as threads come free */
    const int64_t strips = (m + QC_ARM_RT_ROW_ALIGN - 1) / QC_ARM_RT_ROW_ALIGN;
    const int64_t want = nt > 1 ? 4 * (int64_t)nt : 1;
    const int64_t per = (strips + want - 1) / want;
    qc_arm_rt_job job = {
        .gemm = kr.gemm, .a = a, .lda = lda, .m = m, .n = n, .k = k, .rows = per * QC_ARM_RT_ROW_ALIGN,
        .za = za, .packed = packed, .bias = bias, .rq = rq, .c = c, .ldc = ldc,
        .work_bytes = (size_t)kr.work_size(k),
    };
    atomic_init(&job.err, QC_ARM_RT_OK);
    qc_parallel_for(qc_arm_rt_chunk, &job, (strips + per - 1) / per, nt);
    return atomic_load_explicit(&job.err, memory_order_relaxed);
}

/* the layer of a blocked convolution, as qc_rt_conv_blocked hands it to qc_arm_block_gemm */
typedef struct {
    int32_t level;
    int64_t n, k;
    int32_t za;
    const void *packed;
    int64_t packed_bytes;
    const int32_t *bias;
    const qc_rq *rq;
} qc_arm_conv_layer;

static int qc_arm_block_gemm(const void *layer, int64_t rows, const uint8_t *col, int64_t ldk, uint8_t *c,
                             int64_t ldc, const qc_rt_add_params *add)
{
    const qc_arm_conv_layer *l = (const qc_arm_conv_layer *)layer;
    (void)add;                      /* no fused residual adds here (ArmGemm.fuses_add is False) */
    /* one thread per block: the pool is busy with the blocks */
    return qc_arm_rt_gemm(l->level, rows, l->n, l->k, col, ldk, l->za, l->packed, l->packed_bytes, l->bias, l->rq,
                          c, ldc, 1);
}

int qc_arm_rt_conv_gemm(int32_t level, const uint8_t *x, const qc_window *g, int64_t c0, int64_t cg, uint8_t pad,
                        int64_t n, int32_t za, const void *packed, int64_t packed_bytes, const int32_t *bias,
                        const qc_rq *rq, uint8_t *c, int64_t ldc, int64_t block_bytes, int threads)
{
    if (g == NULL) return QC_ARM_RT_ERR_NULL;
    const qc_arm_conv_layer layer = {level, n, (int64_t)g->kh * g->kw * cg, za, packed, packed_bytes, bias, rq};
    /* rows of k bytes rounded up to 16: one q-register load per 16 taps */
    return qc_rt_conv_blocked(x, g, c0, cg, pad, 16, qc_arm_block_gemm, &layer, c, ldc, NULL, block_bytes, threads);
}

const char *qc_rt_gemm_strerror(int err) { return qc_arm_rt_strerror(err); }

const char *qc_arm_rt_strerror(int err)
{
    switch (err) {
    case QC_ARM_RT_OK: return "ok";
    case QC_ARM_RT_ERR_NULL: return "a required pointer is NULL";
    case QC_ARM_RT_ERR_SIZE: return "m, n and k must be positive (and below 2^31)";
    case QC_ARM_RT_ERR_STRIDE: return "row stride too small (lda < k or ldc < n)";
    case QC_ARM_RT_ERR_LAYOUT: return "packed weights are not qc_arm_packed_size_<level>(n, k) bytes: packed for "
                                      "another level or shape";
    case QC_ARM_RT_ERR_LEVEL: return "GEMM level unknown or not compiled into this runtime (each level's runtime is "
                                     "built with its -march: dotprod armv8.2-a+dotprod, i8mm armv8.6-a+i8mm)";
    case QC_ARM_RT_ERR_PARAM: return "bad parameters: za, zero point or clamp outside uint8, NaN or infinite fp32 "
                                     "multiplier, fixed-point shift outside [1, 62] or negative M0";
    case QC_ARM_RT_ERR_NOMEM: return "out of memory for a thread's A-strip scratch (C may be partly written)";
    case QC_ARM_RT_ERR_THREADS: return "thread count must be >= 0";
    case QC_ARM_RT_ERR_CPU: return "this CPU lacks the GEMM level's instructions (dotprod: asimddp, i8mm: i8mm)";
    default: return "unknown error";
    }
}
