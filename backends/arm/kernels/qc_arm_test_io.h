/* Reading a test driver's input file (tests/test_arm_kernels.py, tests/test_arm_gemm_call.py):
 * the whole file in [cur, end), consumed field by field; any shortfall ends the process. */
#ifndef QC_ARM_TEST_IO_H
#define QC_ARM_TEST_IO_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t *cur, *end;

/* the next `bytes` bytes, copied into a fresh buffer with 16 bytes of slack */
static void *take(size_t bytes)
{
    if ((size_t)(end - cur) < bytes) { fprintf(stderr, "truncated input\n"); exit(2); }
    void *p = malloc(bytes + 16);
    memcpy(p, cur, bytes);
    cur += bytes;
    return p;
}

static int64_t next_i64(void) { int64_t v; void *p = take(8); memcpy(&v, p, 8); free(p); return v; }

/* 16-byte aligned, rounded up to 16 with 16 bytes of slack */
static void *xalloc(size_t bytes)
{
    void *p = aligned_alloc(16, (bytes + 15) / 16 * 16 + 16);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(2); }
    return p;
}

#endif
