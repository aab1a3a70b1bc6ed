/* Exact emulation of the AMX tile operations the AMX kernel uses (ldtilecfg, tileloadd,
 * tilestored, tilezero, tdpbusd), in plain C, so gemm_amx.c compiles with QC_EMULATE_AMX
 * and runs the very same loop nest on CPUs without AMX (tests, CI).
 *
 *   tdpbusd C, A, B — for m < rows(C), n < colsb(C)/4, per 32-bit element:
 *       C[m][n] += sum_{k < colsb(A)/4} sum_{i<4} (uint8)A[m][4k+i] * (int8)B[k][4n+i]
 *   with wrapping int32 arithmetic (no saturation), as the instruction.
 * Tiles live in a qc_tiles struct local to the calling function (per thread, as the real
 * tile registers); loading a configuration zeroes them, as ldtilecfg does.
 */
#ifndef QC_AMX_EMULATION_H
#define QC_AMX_EMULATION_H

#include <stdint.h>
#include <string.h>

/* the 64-byte palette-1 tile configuration (ldtilecfg's memory operand) */
typedef struct __attribute__((aligned(64))) {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} qc_tilecfg;

typedef struct {
    uint8_t rows[8];
    uint16_t colsb[8];
    uint8_t data[8][16][64];
} qc_tiles;

static inline void qc_emu_tile_config(qc_tiles *T, const qc_tilecfg *cfg)
{
    memset(T, 0, sizeof *T);
    for (int t = 0; t < 8; t++) {
        T->rows[t] = cfg->rows[t];
        T->colsb[t] = cfg->colsb[t];
    }
}

static inline void qc_emu_tile_load(qc_tiles *T, int t, const void *base, int64_t stride)
{
    const uint8_t *p = (const uint8_t *)base;
    memset(T->data[t], 0, sizeof T->data[t]);
    for (int r = 0; r < T->rows[t]; r++) memcpy(T->data[t][r], p + r * stride, T->colsb[t]);
}

static inline void qc_emu_tile_store(const qc_tiles *T, int t, void *base, int64_t stride)
{
    uint8_t *p = (uint8_t *)base;
    for (int r = 0; r < T->rows[t]; r++) memcpy(p + r * stride, T->data[t][r], T->colsb[t]);
}

static inline void qc_emu_tile_zero(qc_tiles *T, int t)
{
    memset(T->data[t], 0, sizeof T->data[t]);
}

static inline void qc_emu_tile_dpbusd(qc_tiles *T, int c, int a, int b)
{
    for (int m = 0; m < T->rows[c]; m++)
        for (int n = 0; n < T->colsb[c] / 4; n++) {
            uint32_t acc;
            memcpy(&acc, &T->data[c][m][4 * n], 4);
            for (int k = 0; k < T->colsb[a] / 4; k++)
                for (int i = 0; i < 4; i++)
                    acc += (uint32_t)T->data[a][m][4 * k + i] * (uint32_t)(int32_t)(int8_t)T->data[b][k][4 * n + i];
            memcpy(&T->data[c][m][4 * n], &acc, 4);
        }
}

#endif /* QC_AMX_EMULATION_H */
