/* Entries of qc_x86_weight_only.h: argument checks, the CPU check, the choice of kernel, and the
 * portable kernels (CPUs without AVX2 + FMA, and $QCOMPILER_CPU_FEATURES-narrowed builds).
 *
 * The portable kernels dequantize each weight exactly as the reference does (value * scale, one
 * multiply), then accumulate x * w in float32 along K (a multiply and an add, each rounded:
 * -ffp-contract=off), one running sum per output; y = sum + bias. */
#include "weight_only_common.h"
#include "weight_only_avx2.c"

/* rows of one chunk of the portable kernels (their running sums live on the stack) */
#define QC_WO_SCALAR_ROWS 64

static int qc_wo_isa_ok(int32_t isa, int need_f16c)
{
    if (isa == QC_WO_ISA_SCALAR) return 1;
    if (isa != QC_WO_ISA_AVX2) return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           (!need_f16c || __builtin_cpu_supports("f16c"));
}

static void qc_wo_round_rows(const float *x, float *xr, int64_t count, int32_t type)
{
    for (int64_t i = 0; i < count; i++) xr[i] = qc_wo_round_half(x[i], type);
}

/* y[r, col..) = acc (+ bias) for the valid columns of a panel */
static void qc_wo_store_panel(const qc_wo_job *j, int64_t r, int64_t col, const float *acc)
{
    for (int64_t c = 0; c < QC_WO_NR && col + c < j->n; c++)
        j->y[r * j->n + col + c] = j->bias ? acc[c] + j->bias[col + c] : acc[c];
}

/* chunks: 8-column panels x blocks of QC_WO_SCALAR_ROWS rows */
static void qc_wo_scalar_chunk(const void *ctx, int64_t chunk, int slot)
{
    const qc_wo_job *j = (const qc_wo_job *)ctx;
    const qc_wo_linear_weights *w = j->w;
    const int64_t p = chunk / j->m_blocks, m0 = (chunk % j->m_blocks) * QC_WO_SCALAR_ROWS;
    const int64_t rows = j->m - m0 < QC_WO_SCALAR_ROWS ? j->m - m0 : QC_WO_SCALAR_ROWS, k = j->k;
    const int64_t bb = qc_wo_block_bytes(w->format);
    float acc[QC_WO_SCALAR_ROWS][QC_WO_NR], wv[QC_WO_KB][QC_WO_NR];
    (void)slot;
    memset(acc, 0, sizeof acc);
    for (int64_t kb = 0; kb < j->k8; kb++) {
        const int64_t g = kb / w->group_blocks;
        const float *s = w->scales + (p * j->groups + g) * QC_WO_NR;
        const uint8_t *zp = w->format == QC_WO_INT4_ASYM ? w->zero_points + (p * j->groups + g) * QC_WO_NR : NULL;
        const uint8_t *blk = (const uint8_t *)w->codes + (p * j->k8 + kb) * bb;
        const int kn = k - kb * QC_WO_KB < QC_WO_KB ? (int)(k - kb * QC_WO_KB) : QC_WO_KB;
        for (int i = 0; i < kn; i++)
            for (int c = 0; c < QC_WO_NR; c++) {
                const float v = qc_wo_code_value(w->format, blk, i, c, zp ? zp[c] : 0, w->nf4) * s[c];
                wv[i][c] = j->compute_bf16 ? qc_wo_round_bf16(v) : v;
            }
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = j->x + (m0 + r) * k + kb * QC_WO_KB;
            for (int i = 0; i < kn; i++)
                for (int c = 0; c < QC_WO_NR; c++) acc[r][c] = acc[r][c] + xr[i] * wv[i][c];
        }
    }
    for (int64_t r = 0; r < rows; r++) qc_wo_store_panel(j, m0 + r, p * QC_WO_NR, acc[r]);
}

static void qc_wo_scalar_half_chunk(const void *ctx, int64_t chunk, int slot)
{
    const qc_wo_job *j = (const qc_wo_job *)ctx;
    const int64_t p = chunk / j->m_blocks, m0 = (chunk % j->m_blocks) * QC_WO_SCALAR_ROWS;
    const int64_t rows = j->m - m0 < QC_WO_SCALAR_ROWS ? j->m - m0 : QC_WO_SCALAR_ROWS, k = j->k;
    float acc[QC_WO_SCALAR_ROWS][QC_WO_NR], wv[QC_WO_NR];
    (void)slot;
    memset(acc, 0, sizeof acc);
    for (int64_t kk = 0; kk < k; kk++) {
        for (int c = 0; c < QC_WO_NR; c++) wv[c] = qc_wo_half_value(j->hw[(p * k + kk) * QC_WO_NR + c], j->half_type);
        for (int64_t r = 0; r < rows; r++) {
            const float xv = j->x[(m0 + r) * k + kk];
            for (int c = 0; c < QC_WO_NR; c++) acc[r][c] = acc[r][c] + xv * wv[c];
        }
    }
    for (int64_t r = 0; r < rows; r++) qc_wo_store_panel(j, m0 + r, p * QC_WO_NR, acc[r]);
}

static int qc_wo_threads(int threads, int64_t macs)
{
    return (threads <= 1 || macs < (1 << 18)) ? 1 : threads;
}

/* runs the job: GEMV chunks (8 panels each) for at most 8 rows on AVX2, else prefill chunks
 * (QC_WO_MB rows x 16 columns), or the portable chunks (QC_WO_SCALAR_ROWS rows x 8 columns) */
static void qc_wo_run(qc_wo_job *j, int32_t isa, int gemv, qc_rt_chunk_fn avx2_gemv, qc_rt_chunk_fn scalar,
                      int threads)
{
    const int nt = qc_wo_threads(threads, j->m * j->n * j->k);
    const int64_t panels = (j->n + QC_WO_NR - 1) / QC_WO_NR;
    if (isa == QC_WO_ISA_AVX2 && gemv) {
        QC_RT_PARALLEL_FOR(avx2_gemv, j, (panels + QC_WO_GEMV_PANELS - 1) / QC_WO_GEMV_PANELS, nt);
    } else if (isa == QC_WO_ISA_AVX2) {
        j->m_blocks = (j->m + QC_WO_MB - 1) / QC_WO_MB;
        const int64_t n_pad = (j->n + QC_WO_N_ALIGN - 1) / QC_WO_N_ALIGN * QC_WO_N_ALIGN;
        QC_RT_PARALLEL_FOR(qc_wo_avx2_prefill_chunk, j, j->m_blocks * (n_pad / 16), nt);
    } else {
        j->m_blocks = (j->m + QC_WO_SCALAR_ROWS - 1) / QC_WO_SCALAR_ROWS;
        QC_RT_PARALLEL_FOR(scalar, j, j->m_blocks * panels, nt);
    }
}

int qc_x86_wo_linear(int32_t isa, const float *x, int64_t m, const qc_wo_linear_weights *w, int32_t compute_bf16,
                     float *xbuf, float *y, int threads)
{
    if (w == NULL) return QC_RT_ERR_NULL;
    const int32_t fmt = w->format;
    if (fmt < QC_WO_INT8 || fmt > QC_WO_NF4) return QC_RT_ERR_WO_LAYOUT;
    if (m < 0 || w->n <= 0 || w->k <= 0 || m > INT32_MAX || w->n > INT32_MAX || w->k > INT32_MAX)
        return QC_RT_ERR_SIZE;
    if (threads < 0) return QC_WO_ERR_THREADS;
    const int64_t n = w->n, k = w->k, k8 = (k + QC_WO_KB - 1) / QC_WO_KB;
    const int64_t n_pad = (n + QC_WO_N_ALIGN - 1) / QC_WO_N_ALIGN * QC_WO_N_ALIGN;
    if (w->group_blocks <= 0 || w->group_blocks > k8 || (fmt != QC_WO_INT8 && k % 2 != 0)) return QC_RT_ERR_WO_LAYOUT;
    if (w->codes_bytes != n_pad / QC_WO_NR * k8 * qc_wo_block_bytes(fmt)) return QC_RT_ERR_WO_LAYOUT;
    if (x == NULL || y == NULL || w->codes == NULL || w->scales == NULL) return QC_RT_ERR_NULL;
    if ((fmt == QC_WO_INT4_ASYM && w->zero_points == NULL) || (fmt == QC_WO_NF4 && w->nf4 == NULL) ||
        (compute_bf16 && xbuf == NULL))
        return QC_RT_ERR_NULL;
    if (!qc_wo_isa_ok(isa, 0)) return QC_WO_ERR_ISA;
    if (m == 0) return 0;
    qc_wo_job j;
    memset(&j, 0, sizeof j);
    j.w = w;
    j.x = x;
    j.y = y;
    j.m = m; j.n = n; j.k = k; j.k8 = k8;
    j.groups = (k8 + w->group_blocks - 1) / w->group_blocks;
    j.compute_bf16 = compute_bf16 != 0;
    j.bias = w->bias;
    if (j.compute_bf16) {
        if (isa == QC_WO_ISA_AVX2) qc_wo_avx2_round_rows(x, xbuf, m * k, QC_HALF_BF16);
        else qc_wo_round_rows(x, xbuf, m * k, QC_HALF_BF16);
        j.x = xbuf;
    }
    qc_wo_run(&j, isa, m <= QC_WO_GEMV_ROWS && !j.compute_bf16, qc_wo_avx2_gemv_chunk, qc_wo_scalar_chunk,
              threads);
    return 0;
}

int qc_x86_half_linear(int32_t isa, const float *x, int64_t m, int64_t n, int64_t k, int32_t half_type,
                       const uint16_t *w, int64_t w_bytes, const float *bias, float *xbuf, float *y, int threads)
{
    if (half_type != QC_HALF_BF16 && half_type != QC_HALF_FP16) return QC_RT_ERR_WO_LAYOUT;
    if (m < 0 || n <= 0 || k <= 0 || m > INT32_MAX || n > INT32_MAX || k > INT32_MAX) return QC_RT_ERR_SIZE;
    if (threads < 0) return QC_WO_ERR_THREADS;
    const int64_t n_pad = (n + QC_WO_N_ALIGN - 1) / QC_WO_N_ALIGN * QC_WO_N_ALIGN;
    if (w_bytes != n_pad * k * 2) return QC_RT_ERR_WO_LAYOUT;
    if (x == NULL || y == NULL || w == NULL || xbuf == NULL) return QC_RT_ERR_NULL;
    if (!qc_wo_isa_ok(isa, half_type == QC_HALF_FP16)) return QC_WO_ERR_ISA;
    if (m == 0) return 0;
    if (isa == QC_WO_ISA_AVX2) qc_wo_avx2_round_rows(x, xbuf, m * k, half_type);
    else qc_wo_round_rows(x, xbuf, m * k, half_type);
    qc_wo_job j;
    memset(&j, 0, sizeof j);
    j.x = xbuf;
    j.y = y;
    j.m = m; j.n = n; j.k = k;
    j.half_type = half_type;
    j.hw = w;
    j.bias = bias;
    qc_wo_run(&j, isa, m <= QC_WO_GEMV_ROWS, qc_wo_avx2_half_gemv_chunk, qc_wo_scalar_half_chunk, threads);
    return 0;
}
