/* A small "help if you can" thread pool (pthreads), shared by every kernel of a runtime
 * translation unit that includes it first (the x86 GEMM does; qc_runtime.h's parallel loops
 * then use it too). Target-neutral: the spin-wait hint is the CPU's own (qc_spin_hint).
 *
 * qc_parallel_for(fn, ctx, total, nt) runs fn(ctx, chunk, slot) for chunk = 0 .. total-1
 * on the calling thread (slot 0) and up to nt-1 helper threads (slots 1 .. nt-1). Chunks
 * are claimed one at a time with a compare-and-swap on one 64-bit word (generation << 32 |
 * next chunk), so:
 *   - the caller starts working at once and never waits for a helper to *arrive*: on a
 *     busy machine, a helper the OS has not scheduled simply claims nothing, and the call
 *     costs what a serial one does (a fork-join barrier, as in OpenMP, would wait for it);
 *   - the caller waits only for chunks a helper has claimed and is still running;
 *   - load balances dynamically (a core shared with another process just takes fewer);
 *   - after a job, helpers stay awake for a while (QC_POOL_SPIN_US, default 1 ms; env
 *     QCOMPILER_GEMM_SPIN_US) so back-to-back calls find them running, yielding the CPU to
 *     any other runnable thread while they wait; then they block on a condition variable.
 *     (On a VM an idle vCPU halts, and waking it again costs 100+ us per call: without
 *     this, a loop of sub-millisecond calls ran its helper threads mostly asleep.)
 * A helper reads the job (fn, ctx, total) under the mutex when it wakes and uses it only
 * after claiming a chunk of that same generation, which cannot end (and so its ctx cannot
 * go away) before the chunk is done. One job at a time: a concurrent or nested call runs
 * serially on its own thread. Helpers are created on first use, detached, and live as long
 * as the process (the library is never unloaded by ctypes); a forked child starts afresh.
 */
#ifndef QC_THREAD_POOL_H
#define QC_THREAD_POOL_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

typedef void (*qc_chunk_fn)(const void *ctx, int64_t chunk, int slot);

/* the CPU's "spinning" hint inside a wait loop: pause (x86), yield (ARM), nothing elsewhere */
#if defined(__x86_64__) || defined(__i386__)
#define qc_spin_hint() __builtin_ia32_pause()
#elif defined(__aarch64__) || defined(__arm__)
#define qc_spin_hint() __asm__ __volatile__("yield")
#else
#define qc_spin_hint() ((void)0)
#endif

#define QC_POOL_MAX_THREADS 256
#ifndef QC_POOL_SPIN_US
#define QC_POOL_SPIN_US 1000   /* microseconds a helper stays awake for the next job */
#endif

typedef struct {
    pthread_mutex_t mu;          /* guards everything below but the two atomics */
    pthread_cond_t cv;           /* helpers wait here for a new generation */
    pthread_mutex_t job;         /* held by the caller for the whole job */
    int started;                 /* helper threads created (slots 1 .. started) */
    int atfork;                  /* child handler registered */
    uint32_t gen;
    qc_chunk_fn fn;
    const void *ctx;
    int64_t total;
    int allowed;                 /* helpers with slot <= allowed may join this job */
    int64_t spin_ns;             /* how long an idle helper stays awake */
    _Atomic uint64_t word;       /* gen << 32 | next unclaimed chunk */
    _Atomic int64_t done;        /* chunks finished in this generation */
} qc_pool_t;

static qc_pool_t qc_pool = {
    .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .job = PTHREAD_MUTEX_INITIALIZER,
};

static void qc_pool_work(uint32_t gen, qc_chunk_fn fn, const void *ctx, int64_t total, int slot)
{
    uint64_t w = atomic_load_explicit(&qc_pool.word, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(w >> 32) != gen || (int64_t)(uint32_t)w >= total) return;
        if (atomic_compare_exchange_weak_explicit(&qc_pool.word, &w, w + 1, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            fn(ctx, (int64_t)(uint32_t)w, slot);
            atomic_fetch_add_explicit(&qc_pool.done, 1, memory_order_acq_rel);
            w = atomic_load_explicit(&qc_pool.word, memory_order_acquire);
        }
    }
}

static int64_t qc_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* waits up to spin_ns for a generation other than `seen`, yielding the CPU now and then */
static void qc_pool_spin(uint32_t seen, int64_t spin_ns)
{
    if (spin_ns <= 0) return;
    const int64_t t0 = qc_now_ns();
    for (int i = 1;; i++) {
        if ((uint32_t)(atomic_load_explicit(&qc_pool.word, memory_order_acquire) >> 32) != seen) return;
        qc_spin_hint();
        if ((i & 255) == 0) {
            if (qc_now_ns() - t0 > spin_ns) return;
            sched_yield();                   /* let anything else runnable here go first */
        }
    }
}

static void *qc_pool_helper(void *arg)
{
    const int slot = (int)(intptr_t)arg;
    pthread_mutex_lock(&qc_pool.mu);
    uint32_t seen = qc_pool.gen;
    for (;;) {
        if (qc_pool.gen == seen) {           /* stay awake a while before sleeping */
            const int64_t spin_ns = qc_pool.spin_ns;
            pthread_mutex_unlock(&qc_pool.mu);
            qc_pool_spin(seen, spin_ns);
            pthread_mutex_lock(&qc_pool.mu);
        }
        while (qc_pool.gen == seen) pthread_cond_wait(&qc_pool.cv, &qc_pool.mu);
        seen = qc_pool.gen;
        const qc_chunk_fn fn = qc_pool.fn;
        const void *ctx = qc_pool.ctx;
        const int64_t total = qc_pool.total;
        const int join = slot <= qc_pool.allowed;
        pthread_mutex_unlock(&qc_pool.mu);
        if (join) qc_pool_work(seen, fn, ctx, total, slot);
        pthread_mutex_lock(&qc_pool.mu);
    }
    return NULL;
}

static void qc_pool_atfork_child(void)
{
    /* only the forking thread exists in the child: forget the helpers, reset the locks */
    pthread_mutex_init(&qc_pool.mu, NULL);
    pthread_cond_init(&qc_pool.cv, NULL);
    pthread_mutex_init(&qc_pool.job, NULL);
    qc_pool.started = 0;
}

/* number of CPUs this process may run on */
static int qc_cpu_count(void)
{
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static void qc_parallel_for(qc_chunk_fn fn, const void *ctx, int64_t total, int nt)
{
    if (nt > QC_POOL_MAX_THREADS) nt = QC_POOL_MAX_THREADS;
    if (total > UINT32_MAX) nt = 1;
    if (nt <= 1 || total <= 1 || pthread_mutex_trylock(&qc_pool.job) != 0) {
        for (int64_t c = 0; c < total; c++) fn(ctx, c, 0);
        return;
    }
    pthread_mutex_lock(&qc_pool.mu);
    if (!qc_pool.atfork) {
        pthread_atfork(NULL, NULL, qc_pool_atfork_child);
        qc_pool.atfork = 1;
        const char *env = getenv("QCOMPILER_GEMM_SPIN_US");
        qc_pool.spin_ns = (int64_t)(env && *env ? atol(env) : QC_POOL_SPIN_US) * 1000;
    }
    while (qc_pool.started < nt - 1) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int err = pthread_create(&th, &attr, qc_pool_helper, (void *)(intptr_t)(qc_pool.started + 1));
        pthread_attr_destroy(&attr);
        if (err != 0) break;                  /* fewer helpers: the work still gets done */
        qc_pool.started++;
    }
    const uint32_t gen = ++qc_pool.gen;
    qc_pool.fn = fn;
    qc_pool.ctx = ctx;
    qc_pool.total = total;
    qc_pool.allowed = nt - 1 < qc_pool.started ? nt - 1 : qc_pool.started;
    atomic_store_explicit(&qc_pool.done, 0, memory_order_relaxed);
    atomic_store_explicit(&qc_pool.word, (uint64_t)gen << 32, memory_order_release);
    pthread_cond_broadcast(&qc_pool.cv);
    pthread_mutex_unlock(&qc_pool.mu);

    qc_pool_work(gen, fn, ctx, total, 0);
    for (int spins = 0; atomic_load_explicit(&qc_pool.done, memory_order_acquire) < total; spins++) {
        if (spins < 200) qc_spin_hint();
        else sched_yield();                  /* a helper on this core may need the CPU */
    }
    pthread_mutex_unlock(&qc_pool.job);
}

#endif /* QC_THREAD_POOL_H */
