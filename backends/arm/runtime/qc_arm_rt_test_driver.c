/* Test driver of the ARM GEMM glue (tests/test_arm_gemm_call.py), compiled after one level's
 * runtime unit (qcompiler.backends.arm.gemm.library_source(level, runtime=True)) and linked
 * with -Wl,--wrap=aligned_alloc (allocations are counted). One process runs many cases:
 *   qc_arm_rt_test_driver IN OUT
 * IN: records, each an int64 tag then its fields (see run_gemm / run_texts); tag 0 ends. */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "qc_arm_gemm_call.h"
#include "qc_arm_kernels.h"
#include "qc_arm_test_io.h"

/* allocations through aligned_alloc (the per-thread scratch's allocator), all threads */
static _Atomic long qc_test_allocs;
void *__real_aligned_alloc(size_t alignment, size_t size);
void *__wrap_aligned_alloc(size_t alignment, size_t size)
{
    atomic_fetch_add(&qc_test_allocs, 1);
    return __real_aligned_alloc(alignment, size);
}

static void put(FILE *out, const void *p, size_t bytes) { fwrite(p, 1, bytes, out); }
static void put_i32(FILE *out, int32_t v) { put(out, &v, 4); }

/* the C packer of `level`, or -100 when this build lacks it */
static int c_pack(int64_t level, const int8_t *w, int64_t n, int64_t k, void **packed, int64_t *bytes)
{
    *packed = NULL, *bytes = 0;
    switch (level) {
    case QC_ARM_LEVEL_NEON:
        *bytes = qc_arm_packed_size_neon(n, k), *packed = xalloc((size_t)*bytes);
        return qc_arm_pack_neon(w, n, k, *packed);
#if defined(__ARM_FEATURE_DOTPROD)
    case QC_ARM_LEVEL_DOTPROD:
        *bytes = qc_arm_packed_size_dotprod(n, k), *packed = xalloc((size_t)*bytes);
        return qc_arm_pack_dotprod(w, n, k, *packed);
#endif
#if defined(__ARM_FEATURE_MATMUL_INT8)
    case QC_ARM_LEVEL_I8MM:
        *bytes = qc_arm_packed_size_i8mm(n, k), *packed = xalloc((size_t)*bytes);
        return qc_arm_pack_i8mm(w, n, k, *packed);
#endif
    default:
        return -100;
    }
}

/* header: level m n k lda ldc za threads mode zp qmin qmax has_bias repeat packed_len mutation;
 * arrays: a uint8 [m][lda], w int8 [n][k], the Python-packed weights [packed_len], bias, mult,
 * m0, shift [n]. Out: int32 C-pack status, int64 C-packed size, its bytes; int32 GEMM status,
 * int32 allocations during the last of `repeat` calls, C [m][ldc] (pre-filled with 0x5A).
 * mutation != 0 spoils one argument of the call (the test expects its error code). */
static void run_gemm(FILE *out, int64_t index)
{
    int64_t level = next_i64(), m = next_i64(), n = next_i64(), k = next_i64(), lda = next_i64(), ldc = next_i64();
    int64_t za = next_i64(), threads = next_i64(), mode = next_i64(), zp = next_i64(), qmin = next_i64();
    int64_t qmax = next_i64(), has_bias = next_i64(), repeat = next_i64(), packed_len = next_i64();
    int64_t mutation = next_i64();
    uint8_t *a_in = take((size_t)(m * lda));
    int8_t *w = take((size_t)(n * k));
    uint8_t *py_in = take((size_t)packed_len);
    int32_t *bias = take((size_t)n * 4);
    float *mult = take((size_t)n * 4);
    int32_t *m0 = take((size_t)n * 4), *shift = take((size_t)n * 4);

    void *cpacked;
    int64_t cbytes;
    const int pack_status = c_pack(level, w, n, k, &cpacked, &cbytes);
    put_i32(out, pack_status);
    put(out, &cbytes, 8);
    if (cbytes) put(out, cpacked, (size_t)cbytes);
    free(cpacked);

    /* A and C at odd addresses now and then: the call may not assume alignment of either */
    uint8_t *a_base = xalloc((size_t)(m * lda) + 8), *a = a_base + index % 4;
    memcpy(a, a_in, (size_t)(m * lda));
    void *packed = xalloc((size_t)packed_len + 1);
    memcpy(packed, py_in, (size_t)packed_len);
    const size_t cb = (size_t)(m * ldc);
    uint8_t *c_base = xalloc(cb + 8), *c = c_base + (index / 4) % 3;
    qc_rq rq = {(int32_t)mode, mult, m0, shift, (int32_t)zp, (int32_t)qmin, (int32_t)qmax};
    const qc_rq *rqp = &rq;
    const uint8_t *ap = a;
    uint8_t *cp = c;
    const void *pp = packed;
    int64_t pbytes = packed_len;
    switch (mutation) {
    case 0: break;
    case 1: ap = NULL; break;
    case 2: pp = NULL; break;
    case 3: rqp = NULL; break;
    case 4: cp = NULL; break;
    case 5: m = 0; break;
    case 6: k = -1; break;
    case 7: n = (int64_t)1 << 31; break;
    case 8: lda = k - 1; break;
    case 9: ldc = n - 1; break;
    case 10: threads = -1; break;
    case 11: level = 7; break;
    case 12: pbytes += 1; break;
    case 13: za = 256; break;
    case 14: za = -1; break;
    case 15: rq.qmin = rq.qmax + 1; break;
    case 16: rq.qmax = 256; break;
    case 17: mult[0] = NAN; break;
    case 18: mult[n - 1] = INFINITY; break;
    case 19: shift[0] = 0; break;
    case 20: shift[n - 1] = 63; break;
    case 21: m0[0] = -1; break;
    case 22: rq.mode = 0; break;
    case 23: rq.mult = NULL; break;
    case 24: rq.m0 = NULL; break;
    default: fprintf(stderr, "bad mutation %lld\n", (long long)mutation); exit(2);
    }
    int status = 0;
    long allocs = 0;
    for (int64_t r = 0; r < repeat; r++) {
        memset(c, 0x5A, cb);
        atomic_store(&qc_test_allocs, 0);
        status = qc_arm_rt_gemm((int32_t)level, m, n, k, ap, lda, (int32_t)za, pp, pbytes, has_bias ? bias : NULL,
                                rqp, cp, ldc, (int)threads);
        allocs = atomic_load(&qc_test_allocs);
    }
    put_i32(out, status);
    put_i32(out, (int32_t)allocs);
    put(out, c, cb);
    free(a_in), free(w), free(py_in), free(bias), free(mult), free(m0), free(shift);
    free(a_base), free(packed), free(c_base);
}

/* Out: int32 qc_arm_rt_levels(), then for codes -1 .. 11: int32 length, qc_arm_rt_strerror's text */
static void run_texts(FILE *out)
{
    put_i32(out, qc_arm_rt_levels());
    for (int code = -1; code <= 11; code++) {
        const char *t = qc_arm_rt_strerror(code);
        put_i32(out, (int32_t)strlen(t));
        put(out, t, strlen(t));
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) { fprintf(stderr, "usage: %s IN OUT\n", argv[0]); return 2; }
    if (read_input(argv[1])) return 2;
    FILE *out = fopen(argv[2], "wb");
    if (!out) { perror("open"); return 2; }
    for (int64_t index = 0;; index++) {
        int64_t tag = next_i64();
        if (tag == 0) break;
        if (tag == 1) run_gemm(out, index);
        else if (tag == 2) run_texts(out);
        else { fprintf(stderr, "bad tag %lld\n", (long long)tag); return 2; }
    }
    return fclose(out) ? 2 : 0;
}
