/* int8 GEMM with AMX (Sapphire Rapids and later): tdpbusd on 16 x 64-byte tiles, u8 x s8,
 * exact int32 accumulation (no saturation, no reduce_range).
 *
 * Tiles (palette 1): C 2 x 2 (tiles 0-3, 32 rows x 32 columns of int32), A 2 (tiles 4, 5:
 * 16 rows x 64 k each, loaded straight from the row-major uint8 A with stride lda), W 2
 * (tiles 6, 7: 16 groups of 4 k x 16 columns each). One tdpbusd is 16 x 16 x 64 MACs.
 * Packed W is the AVX-512 VNNI layout (KR = 4, NR = 64, int8): a W tile is 16 rows of 64
 * bytes at stride NR * 4 inside a panel, so both kernels share packed weights.
 * Per chunk (M block x one 64-column panel): for each 32-row tile, two passes of 32
 * columns; C stays in tiles over all of K (or a K block, then an int32 scratch), then both
 * halves go through an 8 KB buffer into the AVX-512 epilogue (bias, requantization, stores
 * of 64 outputs where it can: qc_store64).
 * Tails: the last K block (K % 64) is read from a zero-padded copy of W and, unless A's rows
 * are readable that far (args->a_cols: then in place, the extra bytes meet zero weights),
 * of A, so no load passes the end of either buffer; M tails reconfigure the tiles with fewer rows (at a
 * pass boundary, where the C tiles hold nothing); N tails are zero columns of the packed
 * panel that the masked epilogue never stores.
 *
 * With QC_EMULATE_AMX the same source runs on AVX-512 CPUs without AMX: each tile op is
 * its exact C emulation (amx_emulation.h). Linux requires a process to ask for the tile
 * data state first (arch_prctl ARCH_REQ_XCOMP_PERM); qc_amx_ready() does, once.
 */
#include <immintrin.h>
#include <sys/syscall.h>
#include "gemm_common.h"
#include "epilogue_avx512.h"
#include "amx_emulation.h"

#ifndef QC_AMX_MR
#define QC_AMX_MR 32
#endif
#ifndef QC_AMX_NR
#define QC_AMX_NR 64
#endif
#ifndef QC_AMX_MC
#define QC_AMX_MC 0
#endif
#ifndef QC_AMX_KC
#define QC_AMX_KC 0
#endif

#define MR QC_AMX_MR
#define NR QC_AMX_NR
#define KR 4
#define ELEM 1
#define MC QC_AMX_MC
#define KC QC_AMX_KC
#if MR != 32 || NR % 32 != 0
#error "the AMX kernel needs QC_AMX_MR == 32 and QC_AMX_NR a multiple of 32"
#endif

#ifndef QC_AMX_READY_DEFINED
#define QC_AMX_READY_DEFINED
/* 1 if this CPU has AMX-INT8 and the OS granted this process the tile data state */
static __attribute__((unused)) int qc_amx_ready(void)
{
    static _Atomic int state = 0;   /* 0 unknown, 1 ready, -1 not available */
    int s = atomic_load(&state);
    if (s != 0) return s > 0;
    __builtin_cpu_init();
    int ok = __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-int8") &&
             __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl");
#if defined(__linux__) && defined(SYS_arch_prctl)
    if (ok) ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
#else
    ok = 0;
#endif
    atomic_store(&state, ok ? 1 : -1);
    return ok;
}
#endif

#pragma GCC push_options
#if defined(QC_EMULATE_AMX) || defined(QC_NO_NATIVE_AMX)
#pragma GCC target("avx512f,avx512bw,avx512vl")
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,amx-tile,amx-int8")
#endif

#ifdef QC_EMULATE_AMX
#define QC_FN(name) QC_CAT(name, amx_emu)
#define QC_TILE_CONFIG(cfg) qc_emu_tile_config(qc_T, (cfg))
#define QC_TILE_RELEASE() ((void)0)
#define QC_TILE_ZERO(t) qc_emu_tile_zero(qc_T, (t))
#define QC_TILE_LOAD(t, p, s) qc_emu_tile_load(qc_T, (t), (p), (s))
#define QC_TILE_STORE(t, p, s) qc_emu_tile_store(qc_T, (t), (p), (s))
#define QC_TILE_DPBUSD(c, a, b) qc_emu_tile_dpbusd(qc_T, (c), (a), (b))
#define QC_PASS_TILES , qc_tiles *qc_T          /* the emulated tile registers */
#define QC_PASS_TILES_ARG , qc_T
#else
#define QC_FN(name) QC_CAT(name, amx)
#define QC_TILE_CONFIG(cfg) _tile_loadconfig(cfg)
#define QC_TILE_RELEASE() _tile_release()
#define QC_TILE_ZERO(t) _tile_zero(t)
#define QC_TILE_LOAD(t, p, s) _tile_loadd(t, (p), (s))
#define QC_TILE_STORE(t, p, s) _tile_stored(t, (p), (s))
#define QC_TILE_DPBUSD(c, a, b) _tile_dpbusd(c, a, b)
#define QC_PASS_TILES
#define QC_PASS_TILES_ARG
#endif

#if !defined(QC_NO_NATIVE_AMX) || defined(QC_EMULATE_AMX)

static void QC_FN(config)(qc_tilecfg *cfg, int mr)
{
    const int r0 = mr < 16 ? mr : 16, r1 = mr > 16 ? mr - 16 : 0;
    memset(cfg, 0, sizeof *cfg);
    cfg->palette_id = 1;
    const int rows[8] = {r0, r0, r1, r1, r0, r1, 16, 16};
    for (int i = 0; i < 8; i++) {
        cfg->rows[i] = (uint8_t)rows[i];
        cfg->colsb[i] = rows[i] ? 64 : 0;
    }
}

/* per-chunk state the passes share */
typedef struct {
    const qc_task *t;
    const uint8_t *panel;      /* packed W panel */
    uint8_t *wtail;            /* the last, partial K block of the panel, zero-padded: 16 x NR x 4 */
    uint8_t *atail;            /* the last, partial K block of 32 A rows, zero-padded: 32 x 64 */
    int32_t *cbuf;             /* 32 x NR int32: a finished tile row of the panel */
    int64_t *rows;             /* the output rows of the current 32-row tile (-1: none) */
    int wide;                  /* the epilogue runs once per panel, 64 outputs a store (qc_store64):
                                  a full panel and a saturating requantization; else per half */
    int64_t j;                 /* panel index */
    int64_t kfull;             /* full 64-k blocks */
    int ktail;                 /* k in the partial block (0: none) */
} QC_FN(ctx);

/* the epilogue of mr rows x columns [c0, c0 + nc) of the panel, from cbuf: bias, then 64
 * outputs a store (qc_store64) where the chunk runs wide, else 16 at a time */
static inline __attribute__((always_inline)) void QC_FN(epilogue)(const QC_FN(ctx) *x, int mr, int c0, int nc)
{
    const qc_task *t = x->t;
    const int64_t n0 = x->j * NR + c0, nvalid = t->n - n0;
    __m512i bias[NR / 16];
    for (int v = 0; v < nc / 16; v++) bias[v] = _mm512_loadu_si512((const void *)(t->bias + n0 + 16 * v));
    qc_epi16 e;
    qc_epi16_prep(&e, t);
    for (int i = 0; i < mr; i++) {
        const int64_t row = x->rows[i];
        if (row < 0) continue;                      /* a padding row of a shifted view */
        const int32_t *cr = x->cbuf + i * NR + c0;
        __m512i acc[NR / 16];
        for (int v = 0; v < nc / 16; v++)
            acc[v] = _mm512_add_epi32(_mm512_loadu_si512((const void *)(cr + 16 * v)), bias[v]);
        if (x->wide) {
            for (int v = 0; v + 3 < nc / 16; v += 4)
                qc_store64(&e, acc[v], acc[v + 1], acc[v + 2], acc[v + 3], row, n0 + 16 * v);
            continue;
        }
        for (int v = 0; v < nc / 16 && 16 * v < nvalid; v++)
            qc_store16(&e, acc[v], row, n0 + 16 * v, nvalid - 16 * v >= 16 ? 16 : (int)(nvalid - 16 * v));
    }
}

/* 32 rows (two == 1) or up to 16 rows (two == 0) x the 32 columns of panel half `half`, over
 * the full 64-k blocks kb0 .. kb1-1 (and the partial one when `last`); C starts at zero
 * (`first`) or from the int32 partial sums in `cs`, and ends in `cs` or (`last`) in cbuf */
static inline __attribute__((always_inline)) void
QC_FN(pass)(const QC_FN(ctx) *x, const int two, const uint8_t *a, int mr, int half,
            int64_t kb0, int64_t kb1, int first, int last, int32_t *cs QC_PASS_TILES)
{
    const qc_task *t = x->t;
    const int64_t lda = t->lda_bytes;
    const uint8_t *w = x->panel + half * 32 * 4;
    if (first) {
        QC_TILE_ZERO(0);
        QC_TILE_ZERO(1);
        if (two) { QC_TILE_ZERO(2); QC_TILE_ZERO(3); }
    } else {
        QC_TILE_LOAD(0, cs, 32 * 4);
        QC_TILE_LOAD(1, cs + 16, 32 * 4);
        if (two) {
            QC_TILE_LOAD(2, cs + 16 * 32, 32 * 4);
            QC_TILE_LOAD(3, cs + 16 * 32 + 16, 32 * 4);
        }
    }
    for (int64_t kb = kb0; kb < kb1; kb++) {
        const uint8_t *wk = w + kb * 16 * NR * 4;
        const int64_t ak = t->koff ? t->koff[kb] : kb * 64;
        QC_TILE_LOAD(4, a + ak, lda);
        QC_TILE_LOAD(6, wk, NR * 4);
        QC_TILE_LOAD(7, wk + 64, NR * 4);
        QC_TILE_DPBUSD(0, 4, 6);
        QC_TILE_DPBUSD(1, 4, 7);
        if (two) {
            QC_TILE_LOAD(5, a + 16 * lda + ak, lda);
            QC_TILE_DPBUSD(2, 5, 6);
            QC_TILE_DPBUSD(3, 5, 7);
        }
    }
    if (last && x->ktail) {
        /* A's rows readable through the whole last block (t->a_cols): load them in place,
         * the pad meets zero weights; else from a zero-padded copy */
        const uint8_t *at = a + x->kfull * 64;
        int64_t ast = lda;
        if (t->a_cols < (x->kfull + 1) * 64) {
            for (int r = 0; r < mr; r++) {
                memcpy(x->atail + r * 64, at + r * lda, (size_t)x->ktail);
                memset(x->atail + r * 64 + x->ktail, 0, (size_t)(64 - x->ktail));
            }
            at = x->atail;
            ast = 64;
        }
        const uint8_t *wk = x->wtail + half * 32 * 4;
        QC_TILE_LOAD(4, at, ast);
        QC_TILE_LOAD(6, wk, NR * 4);
        QC_TILE_LOAD(7, wk + 64, NR * 4);
        QC_TILE_DPBUSD(0, 4, 6);
        QC_TILE_DPBUSD(1, 4, 7);
        if (two) {
            QC_TILE_LOAD(5, at + 16 * ast, ast);
            QC_TILE_DPBUSD(2, 5, 6);
            QC_TILE_DPBUSD(3, 5, 7);
        }
    }
    /* partial sums to the scratch, or the finished half panel to its columns of cbuf */
    int32_t *cb = last ? x->cbuf + 32 * half : cs;
    const int64_t ldcb = last ? NR : 32;
    QC_TILE_STORE(0, cb, ldcb * 4);
    QC_TILE_STORE(1, cb + 16, ldcb * 4);
    if (two) {
        QC_TILE_STORE(2, cb + 16 * ldcb, ldcb * 4);
        QC_TILE_STORE(3, cb + 16 * ldcb + 16, ldcb * 4);
    }
    if (last && !x->wide) QC_FN(epilogue)(x, mr, 32 * half, 32);
}

/* N panel j of the M tiles ib .. ie-1, on thread slot `slot` */
static void QC_FN(panel)(const qc_task *t, int64_t ib, int64_t ie, int64_t j, int slot)
{
    uint8_t wtail[16 * NR * 4] __attribute__((aligned(64)));
    uint8_t atail[32 * 64] __attribute__((aligned(64)));
    int32_t cbuf[32 * NR] __attribute__((aligned(64)));
    int64_t rows[32];
    const int wide = qc_packed64_ok(t) && t->n - j * NR >= NR;
    QC_FN(ctx) x = {t, t->b + j * (t->kgroups * NR * 4), wtail, atail, cbuf, rows, wide, j, t->k / 64,
                    (int)(t->k % 64)};
    if (x.ktail) {
        const int64_t g0 = x.kfull * 16, ng = t->kgroups - g0;   /* groups in the tail block */
        memcpy(wtail, x.panel + g0 * NR * 4, (size_t)(ng * NR * 4));
        memset(wtail + ng * NR * 4, 0, (size_t)((16 - ng) * NR * 4));
    }
    qc_tilecfg cfg;
#ifdef QC_EMULATE_AMX
    qc_tiles tiles, *qc_T = &tiles;
#endif
    /* K blocks of kcb full 64-k blocks: a K block of the panel (kcb x 4 KB) and of a
     * 32-row tile of A (kcb x 2 KB) stay in L1 while the tiles of the M block pass by;
     * C goes through the slot's scratch between K blocks */
    const int64_t kcb = (KC >= 64 && KC / 64 < x.kfull) ? KC / 64 : (x.kfull > 0 ? x.kfull : 1);
    const int64_t nkc = x.kfull > 0 ? qc_ceil_div(x.kfull, kcb) : 1;
    int32_t *scr = t->scratch ? t->scratch + (int64_t)slot * t->scratch_per_slot : NULL;
    int cfg_mr = -1;
    for (int64_t q = 0; q < nkc; q++) {
        const int64_t kb0 = q * kcb, kb1 = qc_min64(kb0 + kcb, x.kfull);
        const int first = q == 0, last = q == nkc - 1;
        for (int64_t it = ib; it < ie; it++) {
            const int64_t row0 = it * MR;
            const int mr = (int)qc_min64(MR, t->m - row0);
            if (mr != cfg_mr) {                     /* only between passes: tiles hold nothing */
                QC_FN(config)(&cfg, mr);
                QC_TILE_CONFIG(&cfg);
                cfg_mr = mr;
            }
            const uint8_t *a = t->a + row0 * t->lda_bytes;
            if (last) qc_map_rows(t, row0, mr, rows);
            for (int half = 0; half < NR / 32; half++) {
                if (j * NR + 32 * half >= t->n) break;
                int32_t *cs = scr ? scr + ((it - ib) * (NR / 32) + half) * 32 * 32 : NULL;
                if (mr > 16) QC_FN(pass)(&x, 1, a, mr, half, kb0, kb1, first, last, cs QC_PASS_TILES_ARG);
                else QC_FN(pass)(&x, 0, a, mr, half, kb0, kb1, first, last, cs QC_PASS_TILES_ARG);
            }
            if (last && x.wide) QC_FN(epilogue)(&x, mr, 0, NR);
        }
    }
    QC_TILE_RELEASE();
}

/* one chunk of work: its M tiles x its N panels (qc_chunk_range) */
static void QC_FN(chunk)(const void *vt, int64_t c, int slot)
{
    const qc_task *t = (const qc_task *)vt;
    int64_t ib, ie, j0, j1;
    qc_chunk_range(t, c, MR, &ib, &ie, &j0, &j1);
    for (int64_t j = j0; j < j1; j++) QC_FN(panel)(t, ib, ie, j, slot);
}

static int QC_FN(run)(qc_task *t, int nt)
{
    t->kgroups = qc_ceil_div(t->k, KR);
    t->kc = t->k;
    const int64_t chunks = qc_plan_chunks(t, MR, NR, MC, nt);
    if (nt > chunks) nt = (int)chunks;
    t->scratch = NULL;
    if (KC >= 64 && KC / 64 < t->k / 64) {     /* K blocked: C partial sums per slot */
        t->scratch_per_slot = t->tiles_per_block * (NR / 32) * 32 * 32;
        t->scratch = (int32_t *)aligned_alloc(64, (size_t)(nt * t->scratch_per_slot * 4));
        if (t->scratch == NULL) return QC_ERR_NOMEM;
    }
    qc_parallel_for(QC_FN(chunk), t, chunks, nt);
    free(t->scratch);
    t->scratch = NULL;
    return QC_OK;
}

static int QC_FN(cpu_ok)(void)
{
#ifdef QC_EMULATE_AMX
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
#else
    return qc_amx_ready();
#endif
}

QC_EXPORT int QC_FN(qc_gemm)(const qc_gemm_args *p)
{
    int err = qc_validate(p, NR, KR, ELEM);
    if (err != QC_OK) return err;
    if (!QC_FN(cpu_ok)()) return QC_ERR_ISA;
    qc_task t;
    qc_task_init(&t, p);
    return QC_FN(run)(&t, qc_threads(p));
}

/* the GEMM over shifted views (qc_shifted_task_init): a stride-1 convolution without im2col */
QC_DEFINE_GEMM_SHIFTED

#else  /* the compiler cannot target AMX: the native entry exists but reports it */

QC_EXPORT int QC_FN(qc_gemm)(const qc_gemm_args *p)
{
    int err = qc_validate(p, NR, KR, ELEM);
    return err != QC_OK ? err : QC_ERR_ISA;
}

QC_DEFINE_GEMM_SHIFTED_UNSUPPORTED

#endif

#pragma GCC pop_options
#undef QC_FN
#undef QC_TILE_CONFIG
#undef QC_TILE_RELEASE
#undef QC_TILE_ZERO
#undef QC_TILE_LOAD
#undef QC_TILE_STORE
#undef QC_TILE_DPBUSD
#undef QC_PASS_TILES
#undef QC_PASS_TILES_ARG
#undef MR
#undef NR
#undef KR
#undef ELEM
#undef MC
#undef KC
