/* Test driver of the ARM kernels (tests/test_arm_kernels.py): runs a batch of cases from a
 * file through the scalar reference and the requested NEON levels, one process for many
 * cases (qemu starts once).
 *   qc_arm_test_driver LEVELS IN OUT      LEVELS: comma list of neon, dotprod, i8mm
 * IN: records, each an int64 header then little-endian arrays (see read_gemm / read_dw);
 * tag 0 ends. OUT, per record and per result (reference first, then LEVELS in order):
 * int32 status, then the output buffer (C is [m][ldc], pre-filled with 0x5A so that writes
 * outside [m][n] show). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "qc_arm_kernels.h"
#include "qc_arm_test_io.h"

typedef int (*pack_fn)(const int8_t *, int64_t, int64_t, void *);
typedef int64_t (*size_fn)(int64_t, int64_t);
typedef void (*gemm_fn)(const int8_t *, int64_t, int64_t, int64_t, int64_t, int32_t, const void *,
                        const int32_t *, const qc_rq *, int8_t *, int64_t, void *);
static const struct level {
    const char *name;
    size_fn packed_size;
    pack_fn pack;
    gemm_fn gemm;
} LEVELS[] = {
    {"neon", qc_arm_packed_size_neon, qc_arm_pack_neon, qc_arm_gemm_neon},
    {"dotprod", qc_arm_packed_size_dotprod, qc_arm_pack_dotprod, qc_arm_gemm_dotprod},
    {"i8mm", qc_arm_packed_size_i8mm, qc_arm_pack_i8mm, qc_arm_gemm_i8mm},
};
static int64_t work_size(int lv, int64_t k)
{
    return lv == 0 ? qc_arm_work_size_neon(k) : lv == 1 ? qc_arm_work_size_dotprod(k) : qc_arm_work_size_i8mm(k);
}

static void emit(FILE *out, int32_t status, const void *buf, size_t bytes)
{
    fwrite(&status, 4, 1, out);
    fwrite(buf, 1, bytes, out);
}

static void read_rq(qc_rq *rq, int64_t channels, int64_t mode, int64_t zp, int64_t qmin, int64_t qmax,
                    int32_t **bias, int has_bias)
{
    *bias = take((size_t)channels * 4);
    rq->mode = (int32_t)mode;
    rq->mult = take((size_t)channels * 4);
    rq->m0 = take((size_t)channels * 4);
    rq->shift = take((size_t)channels * 4);
    rq->zp = (int32_t)zp, rq->qmin = (int32_t)qmin, rq->qmax = (int32_t)qmax;
    if (!has_bias) { free(*bias); *bias = NULL; }
}
static void free_rq(qc_rq *rq, int32_t *bias)
{
    free((void *)rq->mult), free((void *)rq->m0), free((void *)rq->shift), free(bias);
}

/* header: m n k lda ldc za mode zp qmin qmax has_bias; arrays: a [m][lda], w [n][k], then bias,
 * mult, m0, shift [n] */
static void run_gemm(FILE *out, const int *levels, int nlevels, int64_t index)
{
    int64_t m = next_i64(), n = next_i64(), k = next_i64(), lda = next_i64(), ldc = next_i64(), za = next_i64();
    int64_t mode = next_i64(), zp = next_i64(), qmin = next_i64(), qmax = next_i64(), has_bias = next_i64();
    int8_t *a_raw = take((size_t)(m * lda)), *w = take((size_t)(n * k));
    /* A at an odd address now and then: the kernels may not assume alignment of A or C */
    int8_t *a = (int8_t *)xalloc((size_t)(m * lda) + 8) + index % 4;
    memcpy(a, a_raw, (size_t)(m * lda));
    int32_t *bias;
    qc_rq rq;
    read_rq(&rq, n, mode, zp, qmin, qmax, &bias, (int)has_bias);
    size_t cbytes = (size_t)(m * ldc);
    int8_t *c_base = xalloc(cbytes + 8), *c = c_base + (index / 4) % 3;
    memset(c, 0x5A, cbytes);
    qc_arm_gemm_ref(a, lda, m, n, k, (int32_t)za, w, bias, &rq, c, ldc);
    emit(out, 0, c, cbytes);
    for (int i = 0; i < nlevels; i++) {
        const struct level *L = &LEVELS[levels[i]];
        void *packed = xalloc((size_t)L->packed_size(n, k));
        void *work = xalloc((size_t)work_size(levels[i], k));
        memset(c, 0x5A, cbytes);
        int status = L->pack(w, n, k, packed);
        if (status == 0) L->gemm(a, lda, m, n, k, (int32_t)za, packed, bias, &rq, c, ldc, work);
        emit(out, status, c, cbytes);
        free(packed), free(work);
    }
    free(a_raw), free(w), free(a - index % 4), free(c_base);
    free_rq(&rq, bias);
}

/* header: n h w c oh ow kh kw sh sw ph pw dh dw zx mode zp qmin qmax has_bias; arrays: x NHWC,
 * w [c][kh][kw], then bias, mult, m0, shift [c]. Results: reference, then neon when asked. */
static void run_dw(FILE *out, const int *levels, int nlevels)
{
    qc_window g;
    g.n = next_i64(), g.h = next_i64(), g.w = next_i64(), g.c = next_i64(), g.oh = next_i64(), g.ow = next_i64();
    g.kh = (int32_t)next_i64(), g.kw = (int32_t)next_i64(), g.sh = (int32_t)next_i64(), g.sw = (int32_t)next_i64();
    g.ph = (int32_t)next_i64(), g.pw = (int32_t)next_i64(), g.dh = (int32_t)next_i64(), g.dw = (int32_t)next_i64();
    int64_t zx = next_i64(), mode = next_i64(), zp = next_i64(), qmin = next_i64(), qmax = next_i64();
    int64_t has_bias = next_i64();
    int8_t *x = take((size_t)(g.n * g.h * g.w * g.c)), *w = take((size_t)(g.c * g.kh * g.kw));
    int32_t *bias;
    qc_rq rq;
    read_rq(&rq, g.c, mode, zp, qmin, qmax, &bias, (int)has_bias);
    size_t ybytes = (size_t)(g.n * g.oh * g.ow * g.c);
    int8_t *y = xalloc(ybytes);
    memset(y, 0x5A, ybytes);
    qc_arm_depthwise_ref(x, y, &g, (int32_t)zx, w, bias, &rq);
    emit(out, 0, y, ybytes);
    for (int i = 0; i < nlevels; i++) {
        memset(y, 0x5A, ybytes);
        int status = -1;     /* only the baseline level has a depthwise kernel */
        if (levels[i] == QC_ARM_LEVEL_NEON) {
            void *packed = xalloc((size_t)qc_arm_dw_packed_size_neon(g.c, g.kh, g.kw));
            qc_arm_dw_pack_neon(w, g.c, g.kh, g.kw, packed);
            qc_arm_depthwise_neon(x, y, &g, (int32_t)zx, packed, bias, &rq);
            free(packed);
            status = 0;
        }
        emit(out, status, y, ybytes);
    }
    free(x), free(w), free(y);
    free_rq(&rq, bias);
}

int main(int argc, char **argv)
{
    if (argc != 4) { fprintf(stderr, "usage: %s LEVELS IN OUT\n", argv[0]); return 2; }
    int levels[3], nlevels = 0;
    for (char *tok = strtok(argv[1], ","); tok && nlevels < 3; tok = strtok(NULL, ",")) {
        int found = -1;
        for (int i = 0; i < 3; i++)
            if (!strcmp(tok, LEVELS[i].name)) found = i;
        if (found < 0) { fprintf(stderr, "unknown level %s\n", tok); return 2; }
        levels[nlevels++] = found;
    }
    if (read_input(argv[2])) return 2;
    FILE *out = fopen(argv[3], "wb");
    if (!out) { perror("open"); return 2; }
    for (int64_t index = 0;; index++) {
        int64_t tag = next_i64();
        if (tag == 0) break;
        if (tag == 1) run_gemm(out, levels, nlevels, index);
        else if (tag == 2) run_dw(out, levels, nlevels);
        else { fprintf(stderr, "bad tag %lld\n", (long long)tag); return 2; }
    }
    return fclose(out) ? 2 : 0;
}
