/* qc_model_main: runs one generated model (model.c, the ABI of model.h) as a program, for
 * targets whose code the host cannot load (an ARM model under qemu-aarch64 on an x86 host)
 * and for device bundles.
 *
 *   qc_model_main manifest                                  print the model's manifest (JSON)
 *   qc_model_main run WEIGHTS INPUTS OUTPUTS [int] [THREADS]
 *   qc_model_main profile WEIGHTS INPUTS REPEATS WARMUP [THREADS]   (a -DQC_PROFILE build: per
 *                                           step, nanoseconds over REPEATS runs and its name)
 *
 * INPUTS is every input's bytes, in order, as the manifest lists them (float32, int64 token
 * ids, or raw int8/uint8); OUTPUTS receives every output's bytes in order: float32, or with
 * `int` the integers the final dequantize reads (qc_model_run_int). Sizes are checked against
 * the model before anything runs. Exit status 0 on success; otherwise a line
 * "qc_model_main: error <code>: <what>" on stderr, where <code> is the model's return code
 * (negative: QC_MODEL_ERR_*, positive: a kernel error) or 0 for a usage / file problem, and
 * <what> says what it means (a kernel's code in the runtime's words: qc_rt_gemm_strerror),
 * and exit status 1. Linked into one program with model.c and the target's runtime. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int qc_model_init(const void *weights, int64_t nbytes);
int64_t qc_model_arena_bytes(void);
int qc_model_num_inputs(void);
int qc_model_num_outputs(void);
const char *qc_model_manifest(void);
int64_t qc_model_input_numel(int i);
int64_t qc_model_output_numel(int i);
int64_t qc_model_input_bytes(int i);
int64_t qc_model_output_bytes(int i, int as_int);
int qc_model_run_checked(const float *const *inputs, const int64_t *input_numel, int n_inputs,
                         void *const *outputs, const int64_t *output_numel, int n_outputs,
                         int as_int, void *arena, int64_t arena_bytes, int threads);
const char *qc_rt_gemm_strerror(int err);
int qc_model_num_steps(void);
const char *qc_model_step_name(int i);
#ifdef QC_PROFILE
int qc_model_profile(int64_t *ns, int reset);
#endif   /* every C target's runtime names its kernels' errors */

static int qc_fail(int code, const char *what, const char *detail)
{
    fprintf(stderr, "qc_model_main: error %d: %s%s%s\n", code, what, detail ? ": " : "", detail ? detail : "");
    return 1;
}

/* what a return code of the model means (QC_MODEL_ERR_* in model.c; positive: a kernel's) */
static const char *qc_code_text(int code)
{
    switch (code) {
    case -1: return "a required pointer is NULL";
    case -2: return "the weights do not match this model (size or digest): a corrupt or foreign weights file";
    case -3: return "model not initialized";
    case -4: return "out of memory";
    case -5: return "a buffer or the arena has the wrong size";
    case -6: return "an index input is outside its embedding table";
    case -7: return "an input holds NaN or an infinity";
    case -8: return "a row that dynamic quantization measures spans more than float32's range";
    default: return code > 0 ? qc_rt_gemm_strerror(code) : "unknown error";
    }
}

/* the whole file in a 64-byte aligned buffer; its size in *nbytes */
static void *qc_read_file(const char *path, int64_t *nbytes)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    void *data = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        const long size = ftell(f);
        if (size >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
            posix_memalign(&data, 64, (size_t)size + 64) == 0) {
            if (fread(data, 1, (size_t)size, f) != (size_t)size) {
                free(data);
                data = NULL;
            }
            *nbytes = size;
        }
    }
    fclose(f);
    return data;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "manifest") == 0) {
        puts(qc_model_manifest());
        return 0;
    }
    /* run WEIGHTS INPUTS OUTPUTS [int|float] [THREADS]; in a -DQC_PROFILE build also
     * profile WEIGHTS INPUTS REPEATS WARMUP [THREADS]: per step "<ns over REPEATS runs>\t<step>" */
    const int profile = argc >= 6 && argc <= 7 && strcmp(argv[1], "profile") == 0;
    if (!profile && (argc < 5 || argc > 7 || strcmp(argv[1], "run") != 0))
        return qc_fail(0, "usage", "qc_model_main manifest | run WEIGHTS INPUTS OUTPUTS [int] [THREADS]"
                                   " | profile WEIGHTS INPUTS REPEATS WARMUP [THREADS] (a -DQC_PROFILE build)");
    const int as_int = !profile && argc > 5 && strcmp(argv[5], "int") == 0;
    if (!profile && argc > 5 && !as_int && strcmp(argv[5], "float") != 0)
        return qc_fail(0, "usage", "expected int or float");
    const int threads = argc > 6 ? atoi(argv[6]) : 0;

    int64_t wbytes = 0, ibytes = 0;
    void *weights = qc_read_file(argv[2], &wbytes);
    if (weights == NULL) return qc_fail(0, "cannot read the weights", argv[2]);
    int code = qc_model_init(weights, wbytes);
    if (code != 0) {
        char what[512];
        snprintf(what, sizeof what, "qc_model_init failed on %s", argv[2]);
        return qc_fail(code, what, qc_code_text(code));
    }
    uint8_t *in = (uint8_t *)qc_read_file(argv[3], &ibytes);
    if (in == NULL) return qc_fail(0, "cannot read the inputs", argv[3]);

    const int ni = qc_model_num_inputs(), no = qc_model_num_outputs();
    const float *inputs[ni > 0 ? ni : 1];
    void *outputs[no > 0 ? no : 1];
    int64_t in_numel[ni > 0 ? ni : 1], out_numel[no > 0 ? no : 1], total = 0, out_total = 0;
    for (int i = 0; i < ni; i++) {
        in_numel[i] = qc_model_input_numel(i);
        if (total + qc_model_input_bytes(i) > ibytes) break;
        inputs[i] = (const float *)(in + total);
        total += qc_model_input_bytes(i);
    }
    if (total != ibytes) return qc_fail(0, "the inputs file does not have the model's input sizes", argv[3]);
    for (int i = 0; i < no; i++) {
        out_numel[i] = qc_model_output_numel(i);
        out_total += qc_model_output_bytes(i, as_int);
    }
    uint8_t *out = NULL;
    void *arena = NULL;
    const int64_t arena_bytes = qc_model_arena_bytes();
    if (posix_memalign((void **)&out, 64, (size_t)out_total + 64) != 0 ||
        posix_memalign(&arena, 64, (size_t)arena_bytes + 64) != 0)
        return qc_fail(-4, "out of memory", NULL);
    for (int64_t i = 0, off = 0; i < no; off += qc_model_output_bytes((int)i, as_int), i++) outputs[i] = out + off;
    if (profile) {
#ifdef QC_PROFILE
        const int repeats = atoi(argv[4]), warmup = atoi(argv[5]), steps = qc_model_num_steps();
        int64_t ns[steps > 0 ? steps : 1];
        for (int i = 0; i < warmup + repeats && code == 0; i++) {
            if (i == warmup) qc_model_profile(NULL, 1);
            code = qc_model_run_checked(inputs, in_numel, ni, outputs, out_numel, no, 0, arena, arena_bytes, threads);
        }
        if (code != 0) return qc_fail(code, qc_code_text(code), NULL);
        qc_model_profile(ns, 1);
        for (int i = 0; i < steps; i++) printf("%lld\t%s\n", (long long)ns[i], qc_model_step_name(i));
        return 0;
#else
        return qc_fail(0, "usage", "profile needs a build with -DQC_PROFILE");
#endif
    }
    code = qc_model_run_checked(inputs, in_numel, ni, outputs, out_numel, no, as_int, arena, arena_bytes, threads);
    if (code != 0) return qc_fail(code, qc_code_text(code), NULL);
    FILE *f = fopen(argv[4], "wb");
    if (f == NULL || fwrite(out, 1, (size_t)out_total, f) != (size_t)out_total || fclose(f) != 0)
        return qc_fail(0, "cannot write the outputs", argv[4]);
    return 0;
}
