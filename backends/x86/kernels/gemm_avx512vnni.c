/* int8 GEMM micro-kernel, AVX-512 VNNI: vpdpbusd zmm, u8 x s8 groups of 4, exact int32.
 *
 * Tile: MR rows x NR columns = MR x NR/16 zmm accumulators (6 x 64: 24 zmm, + 4 zmm of W,
 * + 1 broadcast of A). Per K group of 4: NR/16 loads of packed W (16 columns x 4 k each),
 * MR 4-byte broadcasts of A (vpbroadcastd from the A row), MR * NR/16 vpdpbusd.
 * Packed W: KR = 4, int8 (gemm_common.h). The K tail (K % 4) reads only the bytes that
 * exist (the packed W is zero there), so nothing past A[m, K-1] is ever read.
 *
 * With QC_EMULATE_VNNI defined the same source builds for AVX-512F/BW only: every
 * vpdpbusd becomes its exact emulation (vnni_emulation.h), entry qc_gemm_avx512vnni_emu.
 */
#include <immintrin.h>
#include "gemm_common.h"
#include "vnni_emulation.h"
#include "epilogue_avx512.h"

#ifndef QC_AVX512VNNI_MR
#define QC_AVX512VNNI_MR 6
#endif
#ifndef QC_AVX512VNNI_NR
#define QC_AVX512VNNI_NR 64
#endif
#ifndef QC_AVX512VNNI_MC
#define QC_AVX512VNNI_MC 0
#endif
#ifndef QC_AVX512VNNI_KC
#define QC_AVX512VNNI_KC 0
#endif

#define MR QC_AVX512VNNI_MR
#define NR QC_AVX512VNNI_NR
#define KR 4
#define ELEM 1
#define A_ELEM 1
#define MC QC_AVX512VNNI_MC
#define KC QC_AVX512VNNI_KC
#define NV (NR / 16)
#if NR % 16 != 0
#error "QC_AVX512VNNI_NR must be a multiple of 16"
#endif

#pragma GCC push_options
#if defined(QC_EMULATE_VNNI) || defined(QC_NO_NATIVE_VNNI)
#pragma GCC target("avx512f,avx512bw,avx512vl")
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")
#endif
#ifdef QC_EMULATE_VNNI
#define QC_FN(name) QC_CAT(name, avx512vnni_emu)
#define QC_DPBUSD(acc, a, b) qc_emu_dpbusd512(acc, a, b)
#else
#define QC_FN(name) QC_CAT(name, avx512vnni)
#define QC_DPBUSD(acc, a, b) _mm512_dpbusd_epi32(acc, a, b)
#endif

#if !defined(QC_NO_NATIVE_VNNI) || defined(QC_EMULATE_VNNI)

#define QC_VEC __m512i
#define QC_LANES 16
#define QC_VLOAD(p) _mm512_loadu_si512((const void *)(p))
#define QC_VSTORE(p, v) _mm512_storeu_si512((void *)(p), (v))
#define QC_VSET1(x) _mm512_set1_epi32(x)
#define QC_VSTORE_OUT qc_store16
#define QC_VSTORE_OUT64 qc_store64
#define QC_EPI_T qc_epi16
#define QC_EPI_PREP qc_epi16_prep
#define QC_TILE_NAME tile
#define QC_TILE_MR MR
#define QC_TILE_NV NV
#include "vnni_tile.h"
/* narrow panels (at most 32 or 16 of the 64 columns valid: MobileNet's projections, N tails)
 * take taller tiles of fewer vectors, so no vpdpbusd works on padding */
#define QC_NARROW_MR 12
#define QC_TILE_NAME tile_n32
#define QC_TILE_MR QC_NARROW_MR
#define QC_TILE_NV 2
#include "vnni_tile.h"
#define QC_TILE_NAME tile_n16
#define QC_TILE_MR QC_NARROW_MR
#define QC_TILE_NV 1
#include "vnni_tile.h"
#undef QC_VEC
#undef QC_LANES
#undef QC_VLOAD
#undef QC_VSTORE
#undef QC_VSET1
#undef QC_VSTORE_OUT
#undef QC_VSTORE_OUT64
#undef QC_EPI_T
#undef QC_EPI_PREP

#include "gemm_driver.h"
#undef QC_NARROW_MR

static int QC_FN(cpu_ok)(void)
{
    __builtin_cpu_init();
#ifdef QC_EMULATE_VNNI
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
#else
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
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

/* the instruction itself (or its emulation) on nvec vectors, for the desc/impl tests */
QC_EXPORT int QC_FN(qc_dpbusd512)(const int32_t *acc, const uint8_t *a, const int8_t *b,
                                  int32_t *out, int64_t nvec)
{
    if (acc == NULL || a == NULL || b == NULL || out == NULL) return QC_ERR_NULL;
    if (nvec <= 0) return QC_ERR_SIZE;
    if (!QC_FN(cpu_ok)()) return QC_ERR_ISA;
    for (int64_t i = 0; i < nvec; i++) {
        __m512i r = QC_DPBUSD(_mm512_loadu_si512((const void *)(acc + 16 * i)),
                              _mm512_loadu_si512((const void *)(a + 64 * i)),
                              _mm512_loadu_si512((const void *)(b + 64 * i)));
        _mm512_storeu_si512((void *)(out + 16 * i), r);
    }
    return QC_OK;
}

#else  /* the compiler cannot target AVX-512 VNNI: the native entry exists but reports it */

QC_EXPORT int QC_FN(qc_gemm)(const qc_gemm_args *p)
{
    int err = qc_validate(p, NR, KR, ELEM);
    return err != QC_OK ? err : QC_ERR_ISA;
}

QC_DEFINE_GEMM_SHIFTED_UNSUPPORTED

QC_EXPORT int QC_FN(qc_dpbusd512)(const int32_t *acc, const uint8_t *a, const int8_t *b,
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
