/* Fills qc_gemm_args for one layer and calls the kernel of the ISA the weights were packed for. */
#include "qc_x86_gemm_call.h"

int qc_rt_gemm(int32_t isa, int64_t m, int64_t n, int64_t k, const uint8_t *a, int64_t lda,
               const void *w, int64_t w_bytes, int32_t nr, int32_t kr, int32_t elem,
               const int32_t *bias, const qc_rq *rq, uint8_t *c, int64_t ldc, int threads)
{
    qc_gemm_args p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    p.isa = isa;
    p.m = m; p.n = n; p.k = k;
    p.a = a; p.lda = lda;
    p.b = w; p.b_bytes = w_bytes;
    p.b_nr = nr; p.b_kr = kr; p.b_elem = elem;
    p.requant_mode = rq->mode == QC_RQ_FP32 ? QC_REQUANT_FP32 : QC_REQUANT_FIXED_POINT;
    p.bias = bias;
    p.mult = rq->mult; p.m0 = rq->m0; p.shift = rq->shift;
    p.zero_point = rq->zp; p.qmin = rq->qmin; p.qmax = rq->qmax;
    p.out_type = QC_OUT_U8;      /* int8 tensors are stored shifted to uint8 (qc_runtime.h) */
    p.c = c; p.ldc = ldc;
    p.threads = threads > 0 ? threads : 0;
    return qc_gemm(&p);
}

const char *qc_rt_gemm_strerror(int err) { return qc_strerror(err); }
