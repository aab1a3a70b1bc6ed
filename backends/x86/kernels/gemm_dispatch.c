/* qcompiler x86 int8 GEMM library: one translation unit, one shared library.
 *
 * Why one library with `#pragma GCC target` regions rather than one library per ISA:
 * the CPUID dispatch (qc_gemm with QC_ISA_AUTO) and the per-ISA entry points live in the
 * same .so, so there is one build, one cache entry and one ctypes handle; each ISA file
 * still compiles with exactly its own instruction set (its region's target), the code
 * outside the regions is baseline x86-64, and nothing runs an instruction the CPU lacks
 * (each entry checks __builtin_cpu_supports first and returns QC_ERR_ISA). The VNNI and
 * AMX sources are included twice: natively, and with QC_EMULATE_VNNI / QC_EMULATE_AMX
 * (exact emulations), so CI machines without VNNI or AMX run the very same kernel code.
 *
 * Helpers shared by several regions (vnni_emulation.h, epilogue_*.h) carry their own
 * minimal target attribute and are included here first, outside every region.
 *
 * Threads: a pthread pool (c_runtime/qc_thread_pool.h) rather than OpenMP, because on a shared machine
 * a fork-join barrier waits for every thread the OS has not scheduled yet, while here the
 * caller claims whatever chunks no helper has taken (and idle helpers spin only ~40 us).
 */
#define _GNU_SOURCE 1   /* sched_getaffinity / CPU_COUNT */
#include "gemm_common.h"
#include "vnni_emulation.h"
#include "epilogue_avx2.h"
#include "epilogue_avx512.h"

#include "gemm_scalar.c"
#include "gemm_avx2.c"
#include "gemm_avxvnni.c"
#include "gemm_avx512vnni.c"
#include "gemm_amx.c"
#ifndef QC_NO_EMULATION   /* the model runtime calls native kernels only: it builds without */
#define QC_EMULATE_VNNI 1
#include "gemm_avxvnni.c"
#include "gemm_avx512vnni.c"
#undef QC_EMULATE_VNNI
#define QC_EMULATE_AMX 1
#include "gemm_amx.c"
#undef QC_EMULATE_AMX
#else
static int qc_gemm_no_emulation(const qc_gemm_args *p) { (void)p; return QC_ERR_ISA; }
#define qc_gemm_avxvnni_emu qc_gemm_no_emulation
#define qc_gemm_avx512vnni_emu qc_gemm_no_emulation
#define qc_gemm_amx_emu qc_gemm_no_emulation
#endif

typedef int (*qc_gemm_fn)(const qc_gemm_args *);

static const qc_gemm_fn qc_gemm_table[QC_ISA_COUNT] = {
    NULL, qc_gemm_scalar, qc_gemm_avx2, qc_gemm_avxvnni, qc_gemm_avx512vnni,
    qc_gemm_avxvnni_emu, qc_gemm_avx512vnni_emu, qc_gemm_amx, qc_gemm_amx_emu,
};

/* 1 if this CPU (and this build) can run the ISA's kernel */
QC_EXPORT int qc_isa_supported(int isa)
{
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2");
    const int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                       __builtin_cpu_supports("avx512vl");
    switch (isa) {
    case QC_ISA_SCALAR: return 1;
    case QC_ISA_AVX2: return avx2;
#ifndef QC_NO_EMULATION
    case QC_ISA_AVXVNNI_EMU: return avx2;
    case QC_ISA_AVX512VNNI_EMU: return avx512;
    case QC_ISA_AMX_EMU: return avx512;
#endif
#ifndef QC_NO_NATIVE_AMX
    case QC_ISA_AMX: return qc_amx_ready();
#endif
#ifndef QC_NO_NATIVE_VNNI
    case QC_ISA_AVXVNNI: return avx2 && __builtin_cpu_supports("avxvnni");
    case QC_ISA_AVX512VNNI: return avx512 && __builtin_cpu_supports("avx512vnni");
#endif
    default: return 0;
    }
}

/* the fastest kernel this CPU runs: AMX > AVX-512 VNNI > AVX-VNNI > AVX2 > scalar */
QC_EXPORT int qc_best_isa(void)
{
    static const int order[] = {QC_ISA_AMX, QC_ISA_AVX512VNNI, QC_ISA_AVXVNNI, QC_ISA_AVX2, QC_ISA_SCALAR};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (qc_isa_supported(order[i])) return order[i];
    return QC_ISA_SCALAR;
}

/* the one entry point: args->isa names the kernel, QC_ISA_AUTO picks qc_best_isa();
 * the packed weights must have that kernel's layout (else QC_ERR_LAYOUT) */
QC_EXPORT int qc_gemm(const qc_gemm_args *p)
{
    if (p == NULL) return QC_ERR_NULL;
    if (p->struct_size != sizeof(qc_gemm_args)) return QC_ERR_ABI;
    int isa = p->isa == QC_ISA_AUTO ? qc_best_isa() : p->isa;
    if (isa <= 0 || isa >= QC_ISA_COUNT) return QC_ERR_ISA;
    return qc_gemm_table[isa](p);
}

/* the compiled blocking of an ISA: out = {MR, NR, KR, ELEM, MC, KC} */
QC_EXPORT int qc_layout(int isa, int32_t *out)
{
    if (out == NULL) return QC_ERR_NULL;
    switch (isa) {
    case QC_ISA_SCALAR:
        out[0] = QC_SCALAR_MR; out[1] = QC_SCALAR_NR; out[2] = 4; out[3] = 1;
        out[4] = QC_SCALAR_MC; out[5] = QC_SCALAR_KC; return QC_OK;
    case QC_ISA_AVX2:
        out[0] = QC_AVX2_MR; out[1] = QC_AVX2_NR; out[2] = 2; out[3] = 2;
        out[4] = QC_AVX2_MC; out[5] = QC_AVX2_KC; return QC_OK;
    case QC_ISA_AVXVNNI: case QC_ISA_AVXVNNI_EMU:
        out[0] = QC_AVXVNNI_MR; out[1] = QC_AVXVNNI_NR; out[2] = 4; out[3] = 1;
        out[4] = QC_AVXVNNI_MC; out[5] = QC_AVXVNNI_KC; return QC_OK;
    case QC_ISA_AVX512VNNI: case QC_ISA_AVX512VNNI_EMU:
        out[0] = QC_AVX512VNNI_MR; out[1] = QC_AVX512VNNI_NR; out[2] = 4; out[3] = 1;
        out[4] = QC_AVX512VNNI_MC; out[5] = QC_AVX512VNNI_KC; return QC_OK;
    case QC_ISA_AMX: case QC_ISA_AMX_EMU:
        out[0] = QC_AMX_MR; out[1] = QC_AMX_NR; out[2] = 4; out[3] = 1;
        out[4] = QC_AMX_MC; out[5] = QC_AMX_KC; return QC_OK;
    default:
        return QC_ERR_ISA;
    }
}

QC_EXPORT int qc_abi_version(void) { return QC_GEMM_ABI_VERSION; }
QC_EXPORT int qc_args_size(void) { return (int)sizeof(qc_gemm_args); }

/* threads a call with threads = 0 uses: the CPUs this process may run on */
QC_EXPORT int qc_default_threads(void) { return qc_cpu_count(); }

QC_EXPORT const char *qc_strerror(int err)
{
    switch (err) {
    case QC_OK: return "ok";
    case QC_ERR_NULL: return "a required pointer is NULL";
    case QC_ERR_SIZE: return "m, n and k must be positive (and below 2^31)";
    case QC_ERR_STRIDE: return "row stride too small (lda < k or ldc < n), or a_cols outside [k, lda]";
    case QC_ERR_LAYOUT: return "packed weights do not match this kernel's layout (NR, KR, element size or buffer size)";
    case QC_ERR_ISA: return "this CPU (or this build) does not support the requested ISA";
    case QC_ERR_PARAM: return "bad requantization or output parameters";
    case QC_ERR_NOMEM: return "out of memory for the kernel's scratch buffers";
    case QC_ERR_ABI: return "argument struct size mismatch (library and caller disagree on the ABI)";
    case QC_ERR_THREADS: return "thread count must be >= 0";
    default: return "unknown error";
    }
}
