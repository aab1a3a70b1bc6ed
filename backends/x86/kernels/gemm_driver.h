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
 * Work is cut into chunks, one (M block, run of N panels) pair each, claimed dynamically by
 * the threads of the pool (c_runtime/qc_thread_pool.h). Within a chunk: K blocks > M tiles, so a K block of
 * the panel (KC x NR elements) stays in L1 while every tile of the M block streams past
 * it. Nothing is shared but read-only inputs, each output element is written by exactly
 * one chunk, and partial sums between K blocks live in the claiming thread's scratch.
 */

/* QC_FN(any)(mr, ...): the tile function `tile` instantiated for a constant row count */
#define QC_TILE_CASE(tile, r) case r: QC_FN(tile)(r, t, a, b, groups, rem, scr, first, last, row0, n0); break;
#define QC_DEFINE_TILE_ANY(any, tile, maxmr)                                                        \
    static void QC_FN(any)(int mr, const qc_task *t, const uint8_t *a, const uint8_t *b, int64_t groups, \
                           int rem, int32_t *scr, int first, int last, int64_t row0, int64_t n0)    \
    {                                                                                              \
        switch (mr < (maxmr) ? mr : (maxmr)) {                                                      \
        QC_TILE_CASE(tile, 1) QC_TILE_CASE(tile, 2) QC_TILE_CASE(tile, 3) QC_TILE_CASE(tile, 4)     \
        QC_TILE_CASE(tile, 5) QC_TILE_CASE(tile, 6) QC_TILE_CASE(tile, 7) QC_TILE_CASE(tile, 8)     \
        QC_TILE_CASE(tile, 9) QC_TILE_CASE(tile, 10) QC_TILE_CASE(tile, 11) QC_TILE_CASE(tile, 12)  \
        default: break;                                                                            \
        }                                                                                          \
    }
#if MR > 12
#error "MR > 12 is not instantiated"
#endif
QC_DEFINE_TILE_ANY(tile_any, tile, MR)
#ifdef QC_NARROW_MR
QC_DEFINE_TILE_ANY(tile_n32_any, tile_n32, QC_NARROW_MR)
QC_DEFINE_TILE_ANY(tile_n16_any, tile_n16, QC_NARROW_MR)
#endif
#undef QC_DEFINE_TILE_ANY
#undef QC_TILE_CASE

/* one N panel j of the M tiles ib .. ie-1, on thread slot `slot` */
static void QC_FN(panel)(const qc_task *t, int64_t ib, int64_t ie, int64_t j, int slot)
{
    int32_t *scr = t->scratch ? t->scratch + (int64_t)slot * t->scratch_per_slot : NULL;
    const uint8_t *bp = t->b + j * (t->kgroups * NR * KR * ELEM);
#ifdef QC_NARROW_MR
    /* a panel with at most 32 (16) valid columns, K unblocked: taller tiles of 2 (1) vectors */
    const int64_t ncols = t->n - j * NR;
    if (ncols <= 32 && t->kc >= t->k) {
        const int64_t r1 = qc_min64(ie * MR, t->m);
        for (int64_t row0 = ib * MR; row0 < r1; row0 += QC_NARROW_MR) {
            const int mr = (int)qc_min64(QC_NARROW_MR, r1 - row0);
            const uint8_t *a = t->a + row0 * t->lda_bytes;
            if (ncols <= 16) QC_FN(tile_n16_any)(mr, t, a, bp, t->k / KR, (int)(t->k % KR), NULL, 1, 1, row0, j * NR);
            else QC_FN(tile_n32_any)(mr, t, a, bp, t->k / KR, (int)(t->k % KR), NULL, 1, 1, row0, j * NR);
        }
        return;
    }
#endif
    if (t->map_wp > 0) {
        /* a shifted view (K unblocked): tiles run along the image's output rows, from the
         * first output column to the last, and skip the padded border's rows (the view's
         * right columns and bottom rows) instead of computing and dropping them — 7 % of
         * the rows at 56x56, 15 % at 28x28, 31 % at 14x14 (3x3) */
        const int64_t r1 = qc_min64(ie * MR, t->m);
        for (int64_t r = ib * MR; r < r1;) {
            const int64_t rem = (r + t->map_base) % t->map_plane, y = rem / t->map_wp, x = rem % t->map_wp;
            if (y >= t->map_oh) { r += t->map_plane - rem; continue; }   /* below the image */
            if (x >= t->map_ow) { r += t->map_wp - x; continue; }        /* right of it */
            /* the rest of the row in tiles of near-equal height (7 as 4 + 3, not 6 + 1: a one-row
             * tile's few accumulators wait on the vpdpbusd latency) */
            const int64_t left = t->map_ow - x, tiles = qc_ceil_div(left, MR);
            const int mr = (int)qc_min64(qc_ceil_div(left, tiles), r1 - r);
            QC_FN(tile_any)(mr, t, t->a + r * t->lda_bytes, bp, t->k / KR, 0, NULL, 1, 1, r, j * NR);
            r += mr;
        }
        return;
    }
    for (int64_t kb = 0; kb < t->k; kb += t->kc) {
        const int64_t kcur = qc_min64(t->kc, t->k - kb);
        const int first = kb == 0, last = kb + kcur >= t->k;
        const uint8_t *bk = bp + (kb / KR) * NR * KR * ELEM;
        for (int64_t it = ib; it < ie; it++) {
            const int64_t row0 = it * MR;
            const int mr = (int)qc_min64(MR, t->m - row0);
            QC_FN(tile_any)(mr, t, t->a + row0 * t->lda_bytes + kb * A_ELEM, bk, kcur / KR, (int)(kcur % KR),
                            scr ? scr + (it - ib) * MR * NR : NULL, first, last, row0, j * NR);
        }
    }
}

/* one chunk of work: its M tiles x its N panels (qc_chunk_range) */
static void QC_FN(chunk)(const void *vt, int64_t c, int slot)
{
    const qc_task *t = (const qc_task *)vt;
    int64_t ib, ie, j0, j1;
    qc_chunk_range(t, c, MR, &ib, &ie, &j0, &j1);
    for (int64_t j = j0; j < j1; j++) QC_FN(panel)(t, ib, ie, j, slot);
}

/* sets the blocking and the chunking (qc_plan_chunks), allocates the K-blocking scratch,
 * runs the chunks on up to nt threads */
static int QC_FN(run)(qc_task *t, int nt)
{
    t->kgroups = qc_ceil_div(t->k, KR);
    int64_t kc = KC > 0 ? ((int64_t)KC / KR) * KR : t->k;
    if (kc <= 0 || kc >= t->k || t->koff) kc = t->k;     /* a shifted view's offsets index all of K */
    t->kc = kc;
    const int64_t chunks = qc_plan_chunks(t, MR, NR, MC, nt);
    if (nt > chunks) nt = (int)chunks;
    t->scratch = NULL;
    if (kc < t->k) {
        t->scratch_per_slot = t->mc * NR;
        t->scratch = (int32_t *)aligned_alloc(64, (size_t)(nt * t->mc * NR * 4 + 63) / 64 * 64);
        if (t->scratch == NULL) return QC_ERR_NOMEM;
    }
    qc_parallel_for(QC_FN(chunk), t, chunks, nt);
    free(t->scratch);
    t->scratch = NULL;
    return QC_OK;
}
