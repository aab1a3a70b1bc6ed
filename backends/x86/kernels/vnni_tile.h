/* The VNNI register tile, shared by the AVX-VNNI (ymm) and AVX-512 VNNI (zmm) kernels.
 * No include guard on purpose: each ISA file includes it inside its own target region,
 * after defining MR, NR, NV, QC_FN, QC_DPBUSD and the vector vocabulary:
 *   QC_VEC            the vector type (__m256i / __m512i)
 *   QC_LANES          int32 lanes per vector (8 / 16)
 *   QC_VLOAD(p)       unaligned load;  QC_VSTORE(p, v)  unaligned store
 *   QC_VSET1(x)       broadcast one int32
 *   QC_VSTORE_OUT     the epilogue writing up to QC_LANES outputs (qc_store8 / qc_store16)
 *
 * Accumulates MR rows x NR columns over `groups` K-groups of 4 (+ a K tail of `rem` bytes,
 * reading only bytes that exist), starting from the packed bias or the K-block scratch.
 */
static inline __attribute__((always_inline)) void
QC_FN(tile)(const int mr, const qc_task *t, const uint8_t *a, const uint8_t *b, int64_t groups,
            int rem, int32_t *scr, int first, int last, int64_t row0, int64_t n0)
{
    QC_VEC acc[MR][NV];
    const int64_t lda = t->lda_bytes;
#pragma GCC unroll 16
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 16
        for (int v = 0; v < NV; v++)
            acc[i][v] = first ? QC_VLOAD(t->bias + n0 + QC_LANES * v) : QC_VLOAD(scr + i * NR + QC_LANES * v);
    const uint8_t *ap = a;
    for (int64_t g = 0; g < groups; g++) {
        QC_VEC bv[NV];
#pragma GCC unroll 16
        for (int v = 0; v < NV; v++) bv[v] = QC_VLOAD(b + 4 * QC_LANES * v);
        b += NR * 4;
#pragma GCC unroll 16
        for (int i = 0; i < mr; i++) {
            int32_t x;
            memcpy(&x, ap + i * lda, 4);
            const QC_VEC av = QC_VSET1(x);
#pragma GCC unroll 16
            for (int v = 0; v < NV; v++) acc[i][v] = QC_DPBUSD(acc[i][v], av, bv[v]);
        }
        ap += 4;
    }
    if (rem) {
        QC_VEC bv[NV];
#pragma GCC unroll 16
        for (int v = 0; v < NV; v++) bv[v] = QC_VLOAD(b + 4 * QC_LANES * v);
#pragma GCC unroll 16
        for (int i = 0; i < mr; i++) {
            const QC_VEC av = QC_VSET1(qc_load_partial4(ap + i * lda, rem));
#pragma GCC unroll 16
            for (int v = 0; v < NV; v++) acc[i][v] = QC_DPBUSD(acc[i][v], av, bv[v]);
        }
    }
    if (!last) {
#pragma GCC unroll 16
        for (int i = 0; i < mr; i++)
#pragma GCC unroll 16
            for (int v = 0; v < NV; v++) QC_VSTORE(scr + i * NR + QC_LANES * v, acc[i][v]);
        return;
    }
    const int64_t nvalid = t->n - n0;
    /* a local copy: the output stores (uint8_t *) could alias *t, so every epilogue would
     * reload its parameters; they cannot alias this one, which stays in registers */
    const qc_task tl = *t;
#pragma GCC unroll 16
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 16
        for (int v = 0; v < NV; v++) {
            const int64_t cnt = nvalid - QC_LANES * v;
            if (cnt > 0)
                QC_VSTORE_OUT(&tl, acc[i][v], row0 + i, n0 + QC_LANES * v, cnt >= QC_LANES ? QC_LANES : (int)cnt);
        }
}

#undef QC_VEC
#undef QC_LANES
#undef QC_VLOAD
#undef QC_VSTORE
#undef QC_VSET1
#undef QC_VSTORE_OUT
