/*
** moe bench lockstep: what ranks that share a machine pay for working in
** lockstep, run under mpirun (`moe bench lockstep --nproc N`, default one
** rank per core).
**
** One iteration is `calls` GEMM calls of M x K x N on operands the rank keeps
** in cache (each rank with the threads moe train gives it), and in the
** lockstep phase a 4-byte all-reduce after them: a training step whose ranks
** exchange every few kernels (the EP dispatch and combine, TP's all-reduce,
** the pipeline's hand-off). Three phases, interleaved over rounds so that the
** machine's drift falls on all three alike:
**   alone     rank 0 runs the iterations while the others sleep;
**   together  every rank runs them, one barrier at the end;
**   lockstep  every rank runs them with the all-reduce after each.
** Reported per work size: the median over rounds of each phase's mean
** iteration (the slowest rank's for together and lockstep), and together /
** alone, lockstep / alone. A cost model that takes its rates from one rank
** measured alone sees neither: together is what the other cores' work costs
** a rank (shared caches, memory, the host's scheduling of the VM's cores),
** lockstep adds waiting at every exchange for whichever rank was slowest.
** docs/perf-model-validation.md has this machine's numbers.
*/
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm.h"
#include "layers/gemm.h"
#include "perf/bench.h"
#include "runtime/base/mem.h"
#include "runtime/base/timer.h"

#define MAX_POINTS 16
#define ROUNDS_MAX 1000

typedef struct {
    int M, K, N, rounds, iters, json, npoints;
    int calls[MAX_POINTS];
} lockstep_args;

typedef enum { ALONE, TOGETHER, LOCKSTEP, NPHASES } phase;
static const char *PHASE_NAME[NPHASES] = {"alone", "together", "lockstep"};

static const char *USAGE =
    "usage: moe bench lockstep [--nproc N] [--calls K1,K2,..] [--shape MxKxN] [--rounds R] [--iters I] [--json]\n"
    "  GEMM work between 4-byte all-reduces on N local ranks (default: one per core), against the\n"
    "  same work on rank 0 alone and on every rank without the all-reduces; defaults: calls 1,4,16\n"
    "  of 256x64x256 (operands in cache), 5 rounds of 200 iterations per phase. Prints the median\n"
    "  mean iteration of each phase and together / alone, lockstep / alone.\n";

/* "1,4,16" -> calls[]; 0 on a malformed list or a count outside 1..100000. */
static int parse_calls(const char *s, lockstep_args *a)
{
    a->npoints = 0;
    for (const char *p = s; *p;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 100000 || a->npoints == MAX_POINTS || (*end && *end != ',') ||
            (*end == ',' && !end[1]))
            return 0;
        a->calls[a->npoints++] = (int)v;
        p = *end ? end + 1 : end;
    }
    return a->npoints > 0;
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < lo || v > hi)
        return 0;
    *out = (int)v;
    return 1;
}

/* 0: run; -1: --help printed; 2: bad usage (message on stderr). */
static int parse(int argc, char **argv, lockstep_args *a)
{
    *a = (lockstep_args){.M = 256, .K = 64, .N = 256, .rounds = 5, .iters = 200, .npoints = 3, .calls = {1, 4, 16}};
    for (int i = 0; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) {
            fputs(USAGE, stdout);
            return -1;
        } else if (strcmp(f, "--json") == 0) {
            a->json = 1;
            continue;
        } else if (!v) {
            ok = 0;
        } else if (strcmp(f, "--calls") == 0) {
            ok = parse_calls(v, a);
        } else if (strcmp(f, "--shape") == 0) {
            char tail;
            ok = sscanf(v, "%dx%dx%d%c", &a->M, &a->K, &a->N, &tail) == 3 && a->M > 0 && a->K > 0 && a->N > 0 &&
                 a->M <= 8192 && a->K <= 8192 && a->N <= 8192;
        } else if (strcmp(f, "--rounds") == 0) {
            ok = parse_int(v, 1, ROUNDS_MAX, &a->rounds);
        } else if (strcmp(f, "--iters") == 0) {
            ok = parse_int(v, 1, 1000000, &a->iters);
        } else {
            fprintf(stderr, "moe bench lockstep: error: unknown argument '%s'\n%s", f, USAGE);
            return 2;
        }
        if (!ok) {
            fprintf(stderr, "moe bench lockstep: error: bad value for %s: '%s'\n%s", f, v ? v : "(missing)", USAGE);
            return 2;
        }
        i++;
    }
    return 0;
}

typedef struct {
    const lockstep_args *a;
    moe_comm *world;
    float *A, *B, *C;
} bench;

static void work(const bench *b, int calls)
{
    const lockstep_args *a = b->a;
    for (int c = 0; c < calls; c++)
        moe_gemm(0, 1, a->M, a->N, a->K, 1.0f, b->A, a->K, b->B, a->K, 0.0f, b->C, a->N);
}

/* The other ranks sleep through rank 0's phase: a pending all-reduce polled
** every 200 us keeps their cores idle (a blocking one would spin on them). */
static moe_status sleep_until_rank0(moe_comm *world)
{
    int token = 0, done = 0;
    moe_request *req = NULL;
    MOE_TRY(moe_iallreduce(world, &token, 1, MOE_DT_I32, MOE_OP_SUM, &req));
    while (!done) {
        MOE_TRY(moe_test(&req, &done));
        if (!done)
            nanosleep(&(struct timespec){.tv_nsec = 200000}, NULL);
    }
    return MOE_OK;
}

/* One phase of `calls` per iteration; *mean_s: the mean iteration, the
** slowest rank's (rank 0's alone). */
static moe_status run_phase(const bench *b, phase ph, int calls, double *mean_s)
{
    int rank = moe_comm_rank(b->world), token = 0;
    MOE_TRY(moe_barrier(b->world));
    double t = 0;
    if (ph == ALONE && rank != 0) {
        MOE_TRY(sleep_until_rank0(b->world));
    } else {
        double t0 = moe_now();
        for (int it = 0; it < b->a->iters; it++) {
            work(b, calls);
            if (ph == LOCKSTEP)
                MOE_TRY(moe_allreduce(b->world, &token, 1, MOE_DT_I32, MOE_OP_SUM));
        }
        t = (moe_now() - t0) / b->a->iters;
        if (ph == ALONE) {
            moe_request *req = NULL; /* wakes the sleepers */
            MOE_TRY(moe_iallreduce(b->world, &token, 1, MOE_DT_I32, MOE_OP_SUM, &req));
            MOE_TRY(moe_wait(&req));
        }
    }
    MOE_TRY(moe_allreduce(b->world, &t, 1, MOE_DT_F64, MOE_OP_MAX));
    *mean_s = t;
    return MOE_OK;
}

/* Median over rounds of each phase at each work size, into med[point][phase] (seconds). */
static moe_status measure(const bench *b, double med[][NPHASES])
{
    const lockstep_args *a = b->a;
    double *t = malloc(sizeof(double) * (size_t)a->rounds * NPHASES);
    if (!t)
        return moe_fail(MOE_ERR_NOMEM, "lockstep: out of memory for %d rounds", a->rounds);
    moe_status st = MOE_OK;
    for (int p = 0; p < a->npoints && st == MOE_OK; p++) {
        st = run_phase(b, LOCKSTEP, a->calls[p], &t[0]); /* warm-up: BLAS buffers, MPI connections */
        for (int r = 0; r < a->rounds && st == MOE_OK; r++)
            for (int ph = 0; ph < NPHASES && st == MOE_OK; ph++)
                st = run_phase(b, (phase)ph, a->calls[p], &t[ph * a->rounds + r]);
        for (int ph = 0; ph < NPHASES && st == MOE_OK; ph++)
            med[p][ph] = moe_bench_median(&t[ph * a->rounds], a->rounds);
    }
    free(t);
    return st;
}

static void report(const lockstep_args *a, int ranks, double med[][NPHASES])
{
    if (a->json) {
        printf("{\"bench\": \"lockstep\", \"ranks\": %d, \"threads\": %d, \"shape\": [%d, %d, %d], \"rounds\": %d, "
               "\"iters\": %d, \"points\": [",
               ranks, omp_get_max_threads(), a->M, a->K, a->N, a->rounds, a->iters);
        for (int p = 0; p < a->npoints; p++) {
            printf("%s{\"calls\": %d", p ? ", " : "", a->calls[p]);
            for (int ph = 0; ph < NPHASES; ph++)
                printf(", \"%s_us\": %.2f", PHASE_NAME[ph], med[p][ph] * 1e6);
            printf(", \"together_ratio\": %.4f, \"lockstep_ratio\": %.4f}", med[p][TOGETHER] / med[p][ALONE],
                   med[p][LOCKSTEP] / med[p][ALONE]);
        }
        printf("]}\n");
        return;
    }
    printf("lockstep: %d ranks, %d thread(s) each, sgemm %dx%dx%d, median of %d rounds of %d iterations\n", ranks,
           omp_get_max_threads(), a->M, a->K, a->N, a->rounds, a->iters);
    printf("  %6s %11s %12s %12s %15s %15s\n", "calls", "alone_us", "together_us", "lockstep_us", "together/alone",
           "lockstep/alone");
    for (int p = 0; p < a->npoints; p++)
        printf("  %6d %11.1f %12.1f %12.1f %15.3f %15.3f\n", a->calls[p], med[p][ALONE] * 1e6,
               med[p][TOGETHER] * 1e6, med[p][LOCKSTEP] * 1e6, med[p][TOGETHER] / med[p][ALONE],
               med[p][LOCKSTEP] / med[p][ALONE]);
}

int moe_bench_lockstep(int argc, char **argv)
{
    lockstep_args a;
    int rc = parse(argc, argv, &a);
    if (rc)
        return rc < 0 ? 0 : rc;
    bench b = {.a = &a};
    moe_status st = moe_comm_init(&argc, &argv);
    if (st == MOE_OK)
        st = moe_comm_world(&b.world);
    if (st != MOE_OK) {
        moe_error_print(stderr, "moe bench lockstep");
        return 1;
    }
    st = moe_alloc((void **)&b.A, sizeof(float) * (size_t)a.M * a.K, "lockstep A");
    if (st == MOE_OK)
        st = moe_alloc((void **)&b.B, sizeof(float) * (size_t)a.N * a.K, "lockstep B");
    if (st == MOE_OK)
        st = moe_alloc((void **)&b.C, sizeof(float) * (size_t)a.M * a.N, "lockstep C");
    double med[MAX_POINTS][NPHASES];
    if (st == MOE_OK) {
        for (size_t i = 0; i < (size_t)a.M * a.K; i++)
            b.A[i] = (float)((i * 7) % 13) * 0.01f;
        for (size_t i = 0; i < (size_t)a.N * a.K; i++)
            b.B[i] = (float)((i * 5) % 11) * 0.01f;
        st = measure(&b, med);
    }
    if (st != MOE_OK) {
        moe_error_print(stderr, "moe bench lockstep");
        moe_comm_abort(1);
    }
    if (moe_comm_rank(b.world) == 0)
        report(&a, moe_comm_size(b.world), med);
    moe_free(b.A);
    moe_free(b.B);
    moe_free(b.C);
    moe_comm_finalize();
    return 0;
}
