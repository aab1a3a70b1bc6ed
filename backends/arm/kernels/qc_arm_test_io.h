/* Reading a test driver's input file (tests/test_arm_kernels.py, tests/test_arm_gemm_call.py):
 * the whole file in [cur, end) (read_input), consumed field by field; any shortfall ends the process. */
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

/* reads the file `path` whole into [cur, end); 0, or 2 (the drivers' exit status) after perror */
static int read_input(const char *path)
{
    FILE *in = fopen(path, "rb");
    if (!in) { perror("open"); return 2; }
    fseek(in, 0, SEEK_END);
    long size = ftell(in);
    fseek(in, 0, SEEK_SET);
    uint8_t *data = malloc((size_t)size + 1);
    if (fread(data, 1, (size_t)size, in) != (size_t)size) { perror("read"); return 2; }
    fclose(in);
    cur = data, end = data + size;
    return 0;
}

#endif
