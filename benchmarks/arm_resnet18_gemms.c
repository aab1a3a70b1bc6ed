/* Runs a sequence of int8 GEMMs through one level's kernel, for instruction counting under qemu
 * (benchmarks/arm_qemu_count.py resnet18). Built with -DQC_LEVEL=neon|dotprod|i8mm and that
 * level's -march, linked with that level's kernel file only.
 *   arm_resnet18_gemms [--no-gemm] M,N,K [M,N,K ...]
 * --no-gemm: everything but the GEMM calls, so that the difference of two runs' counts is
 * what the GEMMs execute, libc calls included (the weight packing calls memcpy too).
 * Per GEMM: pseudo-random A [M][K] and weights [N][K] in [-127, 127] (the baseline's range),
 * weights packed once, one qc_arm_gemm_<level> call (fp32 requantization, za = 3). Prints a
 * checksum of the outputs so that a wrong run shows. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "qc_arm_kernels.h"

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define LEVEL_FN(name) CAT(name, QC_LEVEL)

/* xorshift64, eight bytes a step (the fill is counted too: kept cheap); -128 becomes 0 */
static void fill(int8_t *p, long long count)
{
    static uint64_t s = 0x9E3779B97F4A7C15u;
    for (long long j = 0; j < count; j++) {
        if (j % 8 == 0) s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        int8_t v = (int8_t)(s >> (8 * (j % 8)));
        p[j] = v == -128 ? 0 : v;
    }
}

static void *xalloc(size_t bytes)
{
    void *p = aligned_alloc(16, (bytes + 15) / 16 * 16);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(2); }
    return p;
}

int main(int argc, char **argv)
{
    uint64_t checksum = 0;
    const int gemm = !(argc > 1 && strcmp(argv[1], "--no-gemm") == 0);
    for (int i = 2 - gemm; i < argc; i++) {
        long long m, n, k;
        if (sscanf(argv[i], "%lld,%lld,%lld", &m, &n, &k) != 3 || m < 1 || n < 1 || k < 1) {
            fprintf(stderr, "argument %d: want M,N,K (positive), got %s\n", i, argv[i]);
            return 2;
        }
        int8_t *a = xalloc((size_t)(m * k)), *w = xalloc((size_t)(n * k)), *c = xalloc((size_t)(m * n));
        fill(a, m * k), fill(w, n * k);
        int32_t *bias = xalloc((size_t)n * 4), *m0 = xalloc((size_t)n * 4), *shift = xalloc((size_t)n * 4);
        float *mult = xalloc((size_t)n * 4);
        for (long long j = 0; j < n; j++) bias[j] = (int32_t)j, mult[j] = 1.0f / 4096, m0[j] = 0, shift[j] = 1;
        qc_rq rq = {.mode = QC_RQ_FP32, .mult = mult, .m0 = m0, .shift = shift, .zp = 0, .qmin = -128, .qmax = 127};
        void *packed = xalloc((size_t)LEVEL_FN(qc_arm_packed_size_)(n, k));
        void *work = xalloc((size_t)LEVEL_FN(qc_arm_work_size_)(k));
        if (LEVEL_FN(qc_arm_pack_)(w, n, k, packed) != 0) { fprintf(stderr, "packing refused\n"); return 2; }
        if (gemm) {
            LEVEL_FN(qc_arm_gemm_)(a, k, m, n, k, 3, packed, bias, &rq, c, n, work);
            for (long long j = 0; j < m * n; j++) checksum = checksum * 31 + (uint8_t)c[j];
        }
        free(a), free(w), free(c), free(bias), free(m0), free(shift), free(mult), free(packed), free(work);
    }
    printf("checksum %016llx\n", (unsigned long long)checksum);
    return 0;
}
