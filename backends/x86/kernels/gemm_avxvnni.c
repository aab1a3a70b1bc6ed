/* int8 GEMM micro-kernel, AVX-VNNI: {vex} vpdpbusd ymm (gcc -mavxvnni), u8 x s8 groups of
 * 4, exact int32 accumulation. For CPUs with AVX-VNNI but no AVX-512 (Alder Lake and
 * later client cores), and as the 256-bit variant where AVX-512 is slower.
 *
 * Tile: MR rows x NR columns = MR x NR/8 ymm accumulators (6 x 16: 12 ymm, + 2 ymm of W,
 * + 1 broadcast of A, within the 16 ymm registers). Packed W: KR = 4, int8.
 * With QC_EMULATE_VNNI defined the same source builds for AVX2 only (entry
 * qc_gemm_avxvnni_emu): each vpdpbusd becomes its exact emulation (vnni_emulation.h).
 */
#include <immintrin.h>
#include "gemm_common.h"
#include "vnni_emulation.h"
#include "epilogue_avx2.h"

#ifndef QC_AVXVNNI_MR
#define QC_AVXVNNI_MR 6
#endif
#ifndef QC_AVXVNNI_NR
#define QC_AVXVNNI_NR 16
#endif
#ifndef QC_AVXVNNI_MC
#define QC_AVXVNNI_MC 0
#endif
#ifndef QC_AVXVNNI_KC
#define QC_AVXVNNI_KC 0
#endif

#define MR QC_AVXVNNI_MR
#define NR QC_AVXVNNI_NR
#define KR 4
#define ELEM 1
#define A_ELEM 1
#define MC QC_AVXVNNI_MC
#define KC QC_AVXVNNI_KC
#define NV (NR / 8)
#if NR % 8 != 0
#error "QC_AVXVNNI_NR must be a multiple of 8"
#endif

#pragma GCC push_options
#if defined(QC_EMULATE_VNNI) || defined(QC_NO_NATIVE_VNNI)
#pragma GCC target("avx2")
#else
#pragma GCC target("avx2,avxvnni")
#endif
#ifdef QC_EMULATE_VNNI
#define QC_FN(name) QC_CAT(name, avxvnni_emu)
#define QC_DPBUSD(acc, a, b) qc_emu_dpbusd256(acc, a, b)
#else
#define QC_FN(name) QC_CAT(name, avxvnni)
#define QC_DPBUSD(acc, a, b) _mm256_dpbusd_avx_epi32(acc, a, b)
#endif

#if !defined(QC_NO_NATIVE_VNNI) || defined(QC_EMULATE_VNNI)

#define QC_VEC __m256i
#define QC_LANES 8
#define QC_VLOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define QC_VSTORE(p, v) _mm256_storeu_si256((__m256i *)(p), (v))
#define QC_VSET1(x) _mm256_set1_epi32(x)
#define QC_VSTORE_OUT qc_store8
#define QC_EPI_T qc_task
#define QC_EPI_PREP(e, t) (*(e) = *(t))
#define QC_TILE_NAME tile
#define QC_TILE_MR MR
#define QC_TILE_NV NV
#include "vnni_tile.h"
#undef QC_VEC
#undef QC_LANES
#undef QC_VLOAD
#undef QC_VSTORE
#undef QC_VSET1
#undef QC_VSTORE_OUT
#undef QC_EPI_T
#undef QC_EPI_PREP

#include "gemm_driver.h"

static int QC_FN(cpu_ok)(void)
{
    __builtin_cpu_init();
#ifdef QC_EMULATE_VNNI
    return __builtin_cpu_supports("avx2");
#else
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avxvnni");
#endif
}

QC_EXPORT int QC_FN(qc_gemm)(const qc_gemm_args *p)
{
    int err = qc_validate(p, NR, KR, ELEM);
    if (err != QC_OK) return err;
    if (p->post_add != NULL) return QC_ERR_PARAM;   /* AVX-512 VNNI / AMX only */
    if (!QC_FN(cpu_ok)()) return QC_ERR_ISA;
    qc_task t;
    qc_task_init(&t, p);
    return QC_FN(run)(&t, qc_threads(p));
}

QC_EXPORT int QC_FN(qc_dpbusd256)(const int32_t *acc, const uint8_t *a, const int8_t *b,
                                  int32_t *out, int64_t nvec)
{
    if (acc == NULL || a == NULL || b == NULL || out == NULL) return QC_ERR_NULL;
    if (nvec <= 0) return QC_ERR_SIZE;
    if (!QC_FN(cpu_ok)()) return QC_ERR_ISA;
    for (int64_t i = 0; i < nvec; i++) {
        __m256i r = QC_DPBUSD(_mm256_loadu_si256((const __m256i *)(acc + 8 * i)),
                              _mm256_loadu_si256((const __m256i *)(a + 32 * i)),
                              _mm256_loadu_si256((const __m256i *)(b + 32 * i)));
        _mm256_storeu_si256((__m256i *)(out + 8 * i), r);
    }
    return QC_OK;
}

#else  /* the compiler cannot target AVX-VNNI: the native entry exists but reports it */

QC_EXPORT int QC_FN(qc_gemm)(const qc_gemm_args *p)
{
    int err = qc_validate(p, NR, KR, ELEM);
    return err != QC_OK ? err : QC_ERR_ISA;
}

QC_EXPORT int QC_FN(qc_dpbusd256)(const int32_t *acc, const uint8_t *a, const int8_t *b,
                                  int32_t *out, int64_t nvec)
{
    (void)acc; (void)a; (void)b; (void)out; (void)nvec;
    return QC_ERR_ISA;
}

#endif

#pragma GCC pop_options
#undef QC_FN
#undef QC_DPBUSD
#undef MR
#undef NR
#undef KR
#undef ELEM
#undef A_ELEM
#undef MC
#undef KC
#undef NV
