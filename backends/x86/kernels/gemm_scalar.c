/* int8 GEMM, portable C (baseline x86-64, no intrinsics): the fallback and the plain
 * statement of what every vector kernel computes. Packed W: KR = 4, int8, NR columns.
 * Accumulation in uint32 (wrapping, as the vector kernels; signed overflow would be UB).
 */
#include "gemm_common.h"

#ifndef QC_SCALAR_MR
#define QC_SCALAR_MR 4
#endif
#ifndef QC_SCALAR_NR
#define QC_SCALAR_NR 16
#endif
#ifndef QC_SCALAR_MC
#define QC_SCALAR_MC 0
#endif
#ifndef QC_SCALAR_KC
#define QC_SCALAR_KC 0
#endif

#define MR QC_SCALAR_MR
#define NR QC_SCALAR_NR
#define KR 4
#define ELEM 1
#define A_ELEM 1
#define MC QC_SCALAR_MC
#define KC QC_SCALAR_KC
#define QC_FN(name) QC_CAT(name, scalar)

static inline __attribute__((always_inline)) void
QC_FN(tile)(const int mr, const qc_task *t, const uint8_t *a, const uint8_t *b, int64_t groups,
            int rem, int32_t *scr, int first, int last, int64_t row0, int64_t n0)
{
    uint32_t acc[MR][NR];
    const int64_t lda = t->lda_bytes;
    const int8_t *w = (const int8_t *)b;
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < NR; j++)
            acc[i][j] = (uint32_t)(first ? t->bias[n0 + j] : scr[i * NR + j]);
    const int64_t kn = groups * KR + rem;   /* k in this block; W beyond K is zero */
    for (int64_t k = 0; k < kn; k++) {
        const int8_t *wk = w + (k / KR) * NR * KR + (k % KR);
        for (int i = 0; i < mr; i++) {
            const uint32_t av = a[i * lda + k];
            for (int j = 0; j < NR; j++) acc[i][j] += av * (uint32_t)(int32_t)wk[j * KR];
        }
    }
    if (!last) {
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < NR; j++) scr[i * NR + j] = (int32_t)acc[i][j];
        return;
    }
    const int64_t nvalid = qc_min64(NR, t->n - n0);
    for (int i = 0; i < mr; i++)
        for (int64_t j = 0; j < nvalid; j++) qc_store_scalar(t, row0 + i, n0 + j, (int32_t)acc[i][j]);
}

#include "gemm_driver.h"

QC_EXPORT int QC_FN(qc_gemm)(const qc_gemm_args *p)
{
    int err = qc_validate(p, NR, KR, ELEM);
    if (err != QC_OK) return err;
    if (p->post_add != NULL) return QC_ERR_PARAM;   /* AVX-512 VNNI / AMX only */
    qc_task t;
    qc_task_init(&t, p);
    return QC_FN(run)(&t, qc_threads(p));
}

#undef QC_FN
#undef MR
#undef NR
#undef KR
#undef ELEM
#undef A_ELEM
#undef MC
#undef KC
