/* qemu TCG plugin (user mode) counting executed guest instructions, in total and per address
 * group; used by benchmarks/arm_qemu_count.py, which builds it and reads its output.
 *
 *   qemu-aarch64 -plugin ./plugin.so,groups=FILE,out=FILE ./prog args
 *
 * groups FILE: lines "NAME START END" (hex, END exclusive); ranges of one NAME may repeat, a
 * guest address belongs to the first listed range holding it. out FILE, written at exit:
 * "total N" then "NAME N" per group in order of first appearance.
 *
 * How: at translation, each block's instructions are tallied per group; one callback per
 * block execution adds those tallies atomically (guest threads run in parallel and qemu's
 * inline adds are not atomic). A block that leaves early (a fault mid-block) still counts all
 * its instructions: exact for code that does not fault, which is the case measured here.
 *
 * Declarations: qemu's plugin ABI, API version 1 (qemu 7.x; its loader checks
 * qemu_plugin_version), declared here for the calls used so that building needs no qemu
 * headers. Only these entry points are used; the types are opaque or plain. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
typedef void (*qc_tb_trans_cb)(qemu_plugin_id_t, struct qemu_plugin_tb *);
typedef void (*qc_vcpu_udata_cb)(unsigned int vcpu_index, void *userdata);
typedef void (*qc_udata_cb)(qemu_plugin_id_t, void *userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, qc_tb_trans_cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *, qc_vcpu_udata_cb, enum qemu_plugin_cb_flags,
                                          void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, qc_udata_cb, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *);

#ifndef QC_PLUGIN_API_VERSION
#define QC_PLUGIN_API_VERSION 1
#endif
__attribute__((visibility("default"))) int qemu_plugin_version = QC_PLUGIN_API_VERSION;

#define MAX_GROUPS 64
#define MAX_RANGES 4096
static struct range { uint64_t start, end; int group; } ranges[MAX_RANGES];
static int nranges, ngroups;
static char group_names[MAX_GROUPS][128];
static uint64_t counts[MAX_GROUPS + 1];   /* [ngroups]: outside every group */
static char out_path[4096];

/* what one block adds when it runs: (group, instructions) pairs */
struct tally { int n; struct { int group; uint64_t insns; } e[]; };

static int group_of(uint64_t addr)
{
    for (int i = 0; i < nranges; i++)
        if (addr >= ranges[i].start && addr < ranges[i].end) return ranges[i].group;
    return ngroups;
}

static void on_exec(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    const struct tally *t = userdata;
    for (int i = 0; i < t->n; i++) __atomic_fetch_add(&counts[t->e[i].group], t->e[i].insns, __ATOMIC_RELAXED);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    if (n == 0) return;
    /* at most one entry per instruction; kept for the block's lifetime (qemu has no free hook) */
    struct tally *t = calloc(1, sizeof *t + n * sizeof t->e[0]);
    if (!t) { fprintf(stderr, "insn-count plugin: out of memory\n"); abort(); }
    for (size_t i = 0; i < n; i++) {
        int g = group_of(qemu_plugin_insn_vaddr(qemu_plugin_tb_get_insn(tb, i)));
        if (t->n == 0 || t->e[t->n - 1].group != g) t->e[t->n].group = g, t->e[t->n].insns = 0, t->n++;
        t->e[t->n - 1].insns++;
    }
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_exec, QEMU_PLUGIN_CB_NO_REGS, t);
}

static void write_counts(qemu_plugin_id_t id, void *userdata)
{
    (void)id, (void)userdata;
    FILE *f = fopen(out_path, "w");
    if (!f) { fprintf(stderr, "insn-count plugin: cannot write %s\n", out_path); return; }
    uint64_t total = 0;
    for (int g = 0; g <= ngroups; g++) total += __atomic_load_n(&counts[g], __ATOMIC_RELAXED);
    fprintf(f, "total %" PRIu64 "\n", total);
    for (int g = 0; g < ngroups; g++) fprintf(f, "%s %" PRIu64 "\n", group_names[g], counts[g]);
    fclose(f);
}

static int read_groups(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) { fprintf(stderr, "insn-count plugin: cannot read %s\n", path); return -1; }
    char name[128];
    uint64_t start, end;
    int rc = 0;
    while (fscanf(f, "%127s %" SCNx64 " %" SCNx64, name, &start, &end) == 3) {
        int g = 0;
        while (g < ngroups && strcmp(group_names[g], name) != 0) g++;
        if (g == ngroups) {
            if (ngroups == MAX_GROUPS) { rc = -1; break; }
            strcpy(group_names[ngroups++], name);
        }
        if (nranges == MAX_RANGES) { rc = -1; break; }
        ranges[nranges++] = (struct range){start, end, g};
    }
    if (rc == 0 && !feof(f)) rc = -1;   /* a malformed line */
    fclose(f);
    if (rc) fprintf(stderr, "insn-count plugin: %s: malformed, or more than %d groups / %d ranges\n", path,
                    MAX_GROUPS, MAX_RANGES);
    return rc;
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const void *info, int argc,
                                                               char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "groups=", 7) == 0) {
            if (read_groups(argv[i] + 7)) return -1;
        } else if (strncmp(argv[i], "out=", 4) == 0 && strlen(argv[i] + 4) < sizeof out_path) {
            strcpy(out_path, argv[i] + 4);
        } else {
            fprintf(stderr, "insn-count plugin: unknown argument %s (groups=FILE, out=FILE)\n", argv[i]);
            return -1;
        }
    }
    if (!out_path[0]) { fprintf(stderr, "insn-count plugin: out=FILE is required\n"); return -1; }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, write_counts, NULL);
    return 0;
}
