/* The loop nest around a micro-kernel, instantiated once per ISA file (no include guard).
 *
 * Before including, the ISA file defines:
 *   QC_FN(name)  name with the variant suffix (name_avx2, name_avx512vnni_emu, ...)
 *   MR, NR, KR   rows per tile, columns per packed panel, k per packed group
 *   ELEM         bytes per packed weight element (1: int8, 2: int16)
 *   A_ELEM       bytes per A element as the kernel reads it (2 for the int16 copy of AVX2)
 *   MC, KC       cache blocking: rows per M block, k per K block (0: no blocking)
 *   QC_FN(tile)(mr, task, a, b, groups, rem, scratch, first, last, row0, n0):
 *                one MR x NR tile over `groups` full K groups plus `rem` trailing k,
 *                starting from the bias (first) or the scratch partial sums, ending with
 *                the epilogue (last) or a store of the partial sums to scratch.
 *
 * Loop nest (per thread): M blocks of MC rows > N panels of this thread > K blocks >
 * M tiles. A K block of one panel (KC x NR bytes) stays in L1 while every tile of the M
 * block streams past it; the M block of A (MC x K) stays in L2 across panels. Threads
 * split the N panels (or the M tiles when there are too few panels); nothing is shared
 * but read-only inputs, and each output element is written by exactly one thread.
 */

static void QC_FN(tile_any)(int mr, const qc_task *t, const uint8_t *a, const uint8_t *b,
                            int64_t groups, int rem, int32_t *scr, int first, int last,
                            int64_t row0, int64_t n0)
{
#define QC_TILE_CASE(r) case r: QC_FN(tile)(r, t, a, b, groups, rem, scr, first, last, row0, n0); break;
    switch (mr) {
    QC_TILE_CASE(1)
#if MR >= 2
    QC_TILE_CASE(2)
#endif
#if MR >= 3
    QC_TILE_CASE(3)
#endif
#if MR >= 4
    QC_TILE_CASE(4)
#endif
#if MR >= 5
    QC_TILE_CASE(5)
#endif
#if MR >= 6
    QC_TILE_CASE(6)
#endif
#if MR >= 7
    QC_TILE_CASE(7)
#endif
#if MR >= 8
    QC_TILE_CASE(8)
#endif
#if MR >= 9
    QC_TILE_CASE(9)
#endif
#if MR >= 10
    QC_TILE_CASE(10)
#endif
#if MR >= 11
    QC_TILE_CASE(11)
#endif
#if MR >= 12
    QC_TILE_CASE(12)
#endif
#if MR > 12
#error "MR > 12 is not instantiated"
#endif
    default: break;
    }
#undef QC_TILE_CASE
}

static void QC_FN(worker)(const void *vt, int tid, int nt)
{
    const qc_task *t = (const qc_task *)vt;
    const int64_t panels = qc_ceil_div(t->n, NR), mtiles = qc_ceil_div(t->m, MR);
    int64_t j0 = 0, j1 = panels, i0 = 0, i1 = mtiles;
    if (qc_split_n(panels, mtiles, nt)) {
        j0 = panels * tid / nt;
        j1 = panels * (tid + 1) / nt;
    } else {
        i0 = mtiles * tid / nt;
        i1 = mtiles * (tid + 1) / nt;
    }
    int32_t *scr = t->scratch ? t->scratch + (int64_t)tid * t->scratch_per_thread : NULL;
    const int64_t tiles_per_block = t->mc / MR;
    const int64_t panel_bytes = t->kgroups * NR * KR * ELEM;
    for (int64_t ib = i0; ib < i1; ib += tiles_per_block) {
        const int64_t ie = qc_min64(ib + tiles_per_block, i1);
        for (int64_t j = j0; j < j1; j++) {
            const uint8_t *bp = t->b + j * panel_bytes;
            for (int64_t kb = 0; kb < t->k; kb += t->kc) {
                const int64_t kcur = qc_min64(t->kc, t->k - kb);
                const int first = kb == 0, last = kb + kcur >= t->k;
                const uint8_t *bk = bp + (kb / KR) * NR * KR * ELEM;
                for (int64_t it = ib; it < ie; it++) {
                    const int64_t row0 = it * MR;
                    const int mr = (int)qc_min64(MR, t->m - row0);
                    QC_FN(tile_any)(mr, t, t->a + row0 * t->lda_bytes + kb * A_ELEM, bk,
                                    kcur / KR, (int)(kcur % KR),
                                    scr ? scr + (it - ib) * MR * NR : NULL,
                                    first, last, row0, j * NR);
                }
            }
        }
    }
}

/* sets the blocking, allocates the K-blocking scratch, runs the worker on nt threads */
static int QC_FN(run)(qc_task *t, int nt)
{
    t->kgroups = qc_ceil_div(t->k, KR);
    int64_t kc = KC > 0 ? ((int64_t)KC / KR) * KR : t->k;
    if (kc <= 0 || kc >= t->k) kc = t->k;
    t->kc = kc;
    int64_t mc = MC > 0 ? ((int64_t)MC / MR) * MR : qc_ceil_div(t->m, MR) * MR;
    if (mc < MR) mc = MR;
    t->mc = mc;
    t->scratch = NULL;
    if (kc < t->k) {
        t->scratch_per_thread = mc * NR;
        t->scratch = (int32_t *)aligned_alloc(64, (size_t)(nt * mc * NR * 4 + 63) / 64 * 64);
        if (t->scratch == NULL) return QC_ERR_NOMEM;
    }
    qc_parallel_run(QC_FN(worker), t, nt);
    free(t->scratch);
    t->scratch = NULL;
    return QC_OK;
}
