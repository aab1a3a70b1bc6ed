/* The VNNI register tile, shared by the AVX-VNNI (ymm) and AVX-512 VNNI (zmm) kernels.
 * No include guard on purpose: each ISA file includes it inside its own target region (once
 * per tile shape), after defining NR, QC_FN, QC_DPBUSD, the tile's shape and name
 *   QC_TILE_NAME      the function's name (before QC_FN's suffix), e.g. tile
 *   QC_TILE_MR, QC_TILE_NV   rows, and vectors of columns (the first QC_TILE_NV of a panel)
 * and the vector vocabulary (the ISA file undefines it after its last include):
 *   QC_VEC            the vector type (__m256i / __m512i)
 *   QC_LANES          int32 lanes per vector (8 / 16)
 *   QC_VLOAD(p)       unaligned load;  QC_VSTORE(p, v)  unaligned store
 *   QC_VSET1(x)       broadcast one int32
 *   QC_EPI_T, QC_EPI_PREP(e, t)   the epilogue's prepared parameters (qc_epi16 / a qc_task copy)
 *   QC_VSTORE_OUT     the epilogue writing up to QC_LANES outputs (qc_store8 / qc_store16)
 *   QC_VSTORE_OUT64   optional: four vectors of a row at once where the prepared epilogue
 *                     allows (e.packed64; qc_store64)
 *
 * Accumulates MR rows x NV vectors of columns over `groups` K-groups of 4 (+ a K tail of `rem` bytes,
 * reading only bytes that exist), starting from the packed bias or the K-block scratch.
 */
static inline __attribute__((always_inline)) void
QC_FN(QC_TILE_NAME)(const int mr, const qc_task *t, const uint8_t *a, const uint8_t *b, int64_t groups,
                    int rem, int32_t *scr, int first, int last, int64_t row0, int64_t n0)
{
    QC_VEC acc[QC_TILE_MR][QC_TILE_NV];
    const int64_t lda = t->lda_bytes;
#pragma GCC unroll 16
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 16
        for (int v = 0; v < QC_TILE_NV; v++)
            acc[i][v] = first ? QC_VLOAD(t->bias + n0 + QC_LANES * v) : QC_VLOAD(scr + i * NR + QC_LANES * v);
    /* K in blocks of 16 groups (64 bytes): a shifted view (t->koff) starts each block elsewhere */
    for (int64_t g0 = 0; g0 < groups; g0 += 16) {
        const uint8_t *ap = t->koff ? a + t->koff[g0 / 16] : a + 4 * g0;
        const int64_t g1 = g0 + 16 < groups ? g0 + 16 : groups;
        for (int64_t g = g0; g < g1; g++) {
            QC_VEC bv[QC_TILE_NV];
#pragma GCC unroll 16
            for (int v = 0; v < QC_TILE_NV; v++) bv[v] = QC_VLOAD(b + 4 * QC_LANES * v);
            b += NR * 4;
#pragma GCC unroll 16
            for (int i = 0; i < mr; i++) {
                int32_t x;
                memcpy(&x, ap + i * lda, 4);
                const QC_VEC av = QC_VSET1(x);
#pragma GCC unroll 16
                for (int v = 0; v < QC_TILE_NV; v++) acc[i][v] = QC_DPBUSD(acc[i][v], av, bv[v]);
            }
            ap += 4;
        }
    }
    const uint8_t *ap = a + 4 * groups;       /* the K tail (plain A only: views have K % 64 == 0) */
    if (rem) {
        QC_VEC bv[QC_TILE_NV];
#pragma GCC unroll 16
        for (int v = 0; v < QC_TILE_NV; v++) bv[v] = QC_VLOAD(b + 4 * QC_LANES * v);
#pragma GCC unroll 16
        for (int i = 0; i < mr; i++) {
            const QC_VEC av = QC_VSET1(qc_load_partial4(ap + i * lda, rem));
#pragma GCC unroll 16
            for (int v = 0; v < QC_TILE_NV; v++) acc[i][v] = QC_DPBUSD(acc[i][v], av, bv[v]);
        }
    }
    if (!last) {
#pragma GCC unroll 16
        for (int i = 0; i < mr; i++)
#pragma GCC unroll 16
            for (int v = 0; v < QC_TILE_NV; v++) QC_VSTORE(scr + i * NR + QC_LANES * v, acc[i][v]);
        return;
    }
    const int64_t nvalid = t->n - n0;
    /* the epilogue's parameters in a local (see qc_epi16), prepared once for the tile */
    QC_EPI_T e;
    QC_EPI_PREP(&e, t);
    /* output row of each tile row (-1: a view's border); 12 = the most rows any tile_any case
     * instantiates, its dead cases past QC_TILE_MR included */
    int64_t rows[12];
    qc_map_rows(t, row0, mr, rows);
#pragma GCC unroll 16
    for (int i = 0; i < mr; i++) {
        if (rows[i] < 0) continue;
#ifdef QC_VSTORE_OUT64
        /* (the indices stay inside the narrower tiles' rows, where this branch is dead code) */
        if (QC_TILE_NV == 4 && nvalid >= 4 * QC_LANES && e.packed64) {
            QC_VSTORE_OUT64(&e, acc[i][0], acc[i][QC_TILE_NV > 1 ? 1 : 0], acc[i][QC_TILE_NV > 2 ? 2 : 0],
                            acc[i][QC_TILE_NV > 3 ? 3 : 0], rows[i], n0);
            continue;
        }
#endif
#pragma GCC unroll 16
        for (int v = 0; v < QC_TILE_NV; v++) {
            const int64_t cnt = nvalid - QC_LANES * v;
            if (cnt > 0)
                QC_VSTORE_OUT(&e, acc[i][v], rows[i], n0 + QC_LANES * v, cnt >= QC_LANES ? QC_LANES : (int)cnt);
        }
    }
}

#undef QC_TILE_NAME
#undef QC_TILE_MR
#undef QC_TILE_NV
