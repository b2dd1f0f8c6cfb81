/*
** moe bench layer: one MoE layer's expert part (dispatch, experts, combine;
** forward then backward) under the three overlap modes of parallel/ep.h, run
** under mpirun (`moe bench layer --nproc N`) or across an emulated cluster
** (`moe bench layer --hosts N --link-rate RATE`, launch/cli.c).
**
** Inputs, the same for every measurement and mode: each rank holds `tokens`
** tokens of width `hidden`; `experts` SwiGLU experts of width `ffn` lie
** contiguously over the ranks (w13 (E_local, 2F, H), w2 (E_local, H, F));
** every token picks `topk` distinct experts, uniformly (skew 0) or Zipf-like,
** p(e) ~ 1 / (popularity rank of e + 1)^skew, the popularity order a fixed
** permutation shared by all ranks. Seeds are fixed.
**
** Measured, interleaved within each iteration so that all of them see the same
** machine state (barrier before, the slowest rank's elapsed time after):
**   C     comm only: dispatch + combine (forward), dispatch_again + combine
**         (backward); no expert compute
**   P     compute only: the experts' forward + backward over the rows as
**         received (one dispatch up front), no comm
**   none, coarse, fine: moe_ep_forward + moe_ep_backward in that mode; and
**         the GEMM seconds of the mode (moe_ep_layer.compute_s, forward +
**         backward, summed over ranks) over those of none: the slowdown the
**         GEMMs suffer from sharing the cores with communication
** Reported: medians over the iterations after warm-up, and per mode the
** hidden fraction (T_none - T_mode) / min(C, P): 1 = the smaller of comm and
** compute entirely hidden behind the other, 0 = nothing gained over none.
**
** Defaults (2048 tokens x 512, ffn 448, top-2 of 8 experts) make C about P
** on 4 emulated hosts at 1gbit on the 2-core test machine (C 390 ms, P 367 ms).
** With more than one OpenMP thread per rank the GEMM slowdown compares unlike
** things: none's compute_s is the wall time of multi-threaded GEMMs, fine's
** the sum over its compute threads of single-threaded ones.
**
** --trace FILE: rank 0 writes a Chrome / Perfetto trace (JSON, traceEvents
** with ph "X", microseconds) of the median iteration of each measurement:
** one process per measurement, one thread per rank, each iteration starting
** at 0 from the barrier; for coarse and fine also the engine's own events
** (moe_ep_layer.on_event): each source's (fine) or chunk's (coarse) compute
** span, and instants when a source's rows arrived and its results were sent.
**
** --check N (used by `moe bench layer` before it starts any ranks): checks
** the arguments against N ranks without MPI and exits 0 or 2.
*/
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "layers/experts.h"
#include "parallel/ep.h"
#include "perf/bench.h"
#include "runtime/base/mem.h"
#include "runtime/base/rng.h"
#include "runtime/base/timer.h"

#define PROG "moe bench layer"
#define USAGE                                                                                                   \
    "usage: moe bench layer [--nproc N | --hosts N [--link-rate RATE]] [--tokens T] [--hidden H] [--ffn F]\n"    \
    "                       [--experts E] [--topk K] [--skew S] [--iters I] [--warmup W] [--chunks D]\n"         \
    "                       [--fine-chunks K]\n"                                                                \
    "                       [--trace FILE] [--json]\n"                                                           \
    "One MoE layer's expert part (dispatch, SwiGLU experts, combine; forward + backward) on N ranks:\n"          \
    "comm only (C), compute only (P), and overlap none / coarse / fine, medians of the slowest rank.\n"          \
    "  --nproc N        local ranks under mpirun (default 4)\n"                                                  \
    "  --hosts N        one rank on each of N emulated hosts (scripts/emu/emu.sh; root)\n"                       \
    "  --link-rate R    their links, e.g. 1gbit (default), 200mbit, none\n"                                      \
    "  --tokens T       tokens per rank (2048)        --hidden H   model width (512)\n"                           \
    "  --ffn F          expert FFN width (448)        --experts E  experts over all ranks (8)\n"                 \
    "  --topk K         experts per token (2)         --skew S     Zipf-like routing skew, 0 = uniform (0)\n"     \
    "  --iters I        measured iterations (10)      --warmup W   warm-up iterations (2)\n"                      \
    "  --chunks D       coarse: chunks of local experts (4)\n"                                                   \
    "  --fine-chunks K  fine: messages per source, cut at local-expert boundaries (0: the rule, 2)\n"          \
    "  --trace FILE     Chrome / Perfetto trace of the median iteration of each, written by rank 0\n"            \
    "  --json           one JSON line instead of the table\n"

enum { M_COMM, M_COMP, M_NONE, M_COARSE, M_FINE, NMEAS };
enum { NMARK = 4 };   /* phase end times kept per measurement and iteration */
enum { TR_FIELDS = 6 }; /* per rank in the trace: NMARK marks, forward and backward GEMM seconds */
/* The engine's own events (moe_ep_layer.on_event: per source or chunk compute
** spans, arrivals, sends) of coarse and fine, EV_FIELDS doubles each: kind
** (1 compute, 2 arrived, 3 sent), source or chunk, start, end (seconds from
** the iteration's start), at most max_events(P) per run. */
enum { EV_FIELDS = 4 };
static int max_events(int P) { return 12 * P + 64; }

static const char *meas_name[NMEAS] = {"comm only (C)", "compute only (P)", "none", "coarse", "fine"};
static const char *mode_key[3] = {"none", "coarse", "fine"};

typedef struct {
    int tokens, hidden, ffn, experts, topk, iters, warmup, chunks, fine_chunks, json, check;
    double skew;
    const char *trace;
} layer_args;

/* ---- arguments ------------------------------------------------------------ */

static int parse_int(const char *s, int lo, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > INT_MAX)
        return -1;
    *out = (int)v;
    return 0;
}

static int parse(int argc, char **argv, layer_args *a)
{
    *a = (layer_args){.tokens = 2048, .hidden = 512, .ffn = 448, .experts = 8, .topk = 2,
                      .iters = 10, .warmup = 2, .chunks = 4, .skew = 0};
    for (int i = 0; i < argc; i++) {
        const char *f = argv[i];
        if (strcmp(f, "--json") == 0) {
            a->json = 1;
            continue;
        }
        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) {
            printf("%s", USAGE);
            return -1;
        }
        int *dst = NULL, lo = 1;
        if (strcmp(f, "--tokens") == 0) dst = &a->tokens;
        else if (strcmp(f, "--hidden") == 0) dst = &a->hidden;
        else if (strcmp(f, "--ffn") == 0) dst = &a->ffn;
        else if (strcmp(f, "--experts") == 0) dst = &a->experts;
        else if (strcmp(f, "--topk") == 0) dst = &a->topk;
        else if (strcmp(f, "--iters") == 0) dst = &a->iters;
        else if (strcmp(f, "--warmup") == 0) dst = &a->warmup, lo = 0;
        else if (strcmp(f, "--chunks") == 0) dst = &a->chunks;
        else if (strcmp(f, "--fine-chunks") == 0) dst = &a->fine_chunks, lo = 0;
        else if (strcmp(f, "--check") == 0) dst = &a->check;
        else if (strcmp(f, "--skew") != 0 && strcmp(f, "--trace") != 0) {
            fprintf(stderr, PROG ": error: unknown argument '%s'\n", f);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, PROG ": error: %s needs a value\n", f);
            return 2;
        }
        const char *v = argv[++i];
        if (dst) {
            if (parse_int(v, lo, dst) != 0) {
                fprintf(stderr, PROG ": error: %s must be an integer >= %d, not '%s'\n", f, lo, v);
                return 2;
            }
        } else if (strcmp(f, "--skew") == 0) {
            char *end;
            a->skew = strtod(v, &end);
            if (end == v || *end || !isfinite(a->skew) || a->skew < 0 || a->skew > 16) {
                fprintf(stderr, PROG ": error: --skew must be a number in [0, 16], not '%s'\n", v);
                return 2;
            }
        } else {
            a->trace = v;
        }
    }
    return 0;
}

/* Shapes the layer cannot run with P ranks; says why when `say`. */
static int check_shape(const layer_args *a, int P, int say)
{
    FILE *out = say ? stderr : NULL;
    if (a->experts % P != 0) {
        if (out)
            fprintf(out, PROG ": error: --experts %d must be a multiple of the ranks (%d)\n", a->experts, P);
        return 2;
    }
    if (a->iters > 10000 || a->warmup > 10000 || a->experts > 65536) {
        if (out)
            fprintf(out, PROG ": error: --iters and --warmup are 10000 at most, --experts 65536\n");
        return 2;
    }
    if (a->topk > a->experts) {
        if (out)
            fprintf(out, PROG ": error: --topk %d is more than --experts %d\n", a->topk, a->experts);
        return 2;
    }
    /* the expert side receives up to P * tokens * topk rows; offsets are int32 */
    double rows = (double)P * a->tokens * a->topk, width = a->hidden > 2.0 * a->ffn ? a->hidden : 2.0 * a->ffn;
    double wsize = (double)(a->experts / P) * 2.0 * a->ffn * a->hidden;
    if (rows * width > INT_MAX || wsize > INT_MAX) {
        if (out)
            fprintf(out, PROG ": error: shape too large (%.3g rows x %.0f, %.3g weights per rank; 2^31 each at most)\n",
                rows, width, wsize);
        return 2;
    }
    return 0;
}

/* The trace is written at the end: find out now that it can be. */
static int writable(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f || fclose(f) != 0) {
        fprintf(stderr, PROG ": error: cannot write trace '%s': %s\n", path, strerror(errno));
        return 0;
    }
    return 1;
}

/* ---- routing ------------------------------------------------------------- */

/* Popularity weight of every expert: 1 / (rank + 1)^skew, ranks a fixed
** permutation shared by all ranks (so the hot experts are not simply rank 0's). */
static void expert_weights(double *w, int E, double skew)
{
    int perm[E];
    for (int e = 0; e < E; e++)
        perm[e] = e;
    moe_rng r;
    moe_rng_seed(&r, 4242);
    for (int e = E - 1; e > 0; e--) {
        int j = (int)moe_rng_below(&r, (uint64_t)e + 1), t = perm[e];
        perm[e] = perm[j];
        perm[j] = t;
    }
    for (int k = 0; k < E; k++)
        w[perm[k]] = pow(k + 1.0, -skew);
}

/* topk distinct experts per token, drawn without replacement from w. */
static void draw_routing(int32_t *slots, const moe_expert_map *map, const double *w, int N, int E, int K,
                         moe_rng *r)
{
    double left[E];
    for (int n = 0; n < N; n++) {
        memcpy(left, w, sizeof left);
        for (int k = 0; k < K; k++) {
            double total = 0;
            for (int e = 0; e < E; e++)
                total += left[e];
            double u = moe_rng_uniform(r) * total;
            int pick = -1;
            for (int e = 0; e < E && pick < 0; e++) {
                if (left[e] > 0 && (u < left[e] || e == E - 1))
                    pick = e;
                u -= left[e];
            }
            for (int e = E - 1; pick < 0; e--) /* rounding ran past the end: the last one left */
                if (left[e] > 0)
                    pick = e;
            left[pick] = 0;
            slots[n * K + k] = moe_expert_slot(map, pick);
        }
    }
}

/* ---- statistics ---------------------------------------------------------- */

static double median(const double *v, int n)
{
    double s[n];
    memcpy(s, v, sizeof s);
    return moe_bench_median(s, n);
}

/* The iteration whose time is the (lower) median: the one the trace shows. */
static int median_index(const double *v, int n)
{
    double m = median(v, n);
    int best = 0;
    for (int i = 1; i < n; i++)
        if (fabs(v[i] - m) < fabs(v[best] - m))
            best = i;
    return best;
}

/* ---- the bench ----------------------------------------------------------- */

typedef struct {
    int N, C, F, E, K, El, R, P, rank;
    moe_expert_map map;
    int32_t *slots, *counts, *offsets, *slot_row, *row_token, *row_slot;
    float *x, *xs, *ys, *dys, *dxs, *w13, *w2, *dw13, *dw2;
    float *dyr; /* (recv, H) the row gradients as received: compute-only backward's input */
    moe_ep_layer s;
} bench;

static float uni(moe_rng *r, float scale) { return scale * (float)(moe_rng_uniform(r) * 2 - 1); }

static moe_status bench_init(bench *b, const layer_args *a, moe_comm *world)
{
    memset(b, 0, sizeof *b);
    b->P = moe_comm_size(world);
    b->rank = moe_comm_rank(world);
    b->N = a->tokens, b->C = a->hidden, b->F = a->ffn, b->E = a->experts, b->K = a->topk;
    b->R = b->N * b->K;
    MOE_TRY(moe_expert_map_contiguous(&b->map, b->E, b->P, b->rank));
    b->El = b->map.E_local;
    size_t R = (size_t)b->R, N = (size_t)b->N, C = (size_t)b->C, F = (size_t)b->F, El = (size_t)b->El;
    struct {
        void **p;
        size_t bytes;
        const char *what;
    } bufs[] = {
        {(void **)&b->slots, R * 4, "routing"},       {(void **)&b->counts, (size_t)b->E * 4, "counts"},
        {(void **)&b->offsets, (size_t)(b->E + 1) * 4, "offsets"}, {(void **)&b->slot_row, R * 4, "slot_row"},
        {(void **)&b->row_token, R * 4, "row_token"}, {(void **)&b->row_slot, R * 4, "row_slot"},
        {(void **)&b->x, N * C * 4, "tokens"},        {(void **)&b->xs, R * C * 4, "rows"},
        {(void **)&b->ys, R * C * 4, "outputs"},      {(void **)&b->dys, R * C * 4, "output gradients"},
        {(void **)&b->dxs, R * C * 4, "input gradients"}, {(void **)&b->w13, El * 2 * F * C * 4, "w13"},
        {(void **)&b->w2, El * C * F * 4, "w2"},      {(void **)&b->dw13, El * 2 * F * C * 4, "dw13"},
        {(void **)&b->dw2, El * C * F * 4, "dw2"},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        MOE_TRY(moe_alloc(bufs[i].p, bufs[i].bytes, bufs[i].what));

    double w[b->E];
    expert_weights(w, b->E, a->skew);
    moe_rng r;
    moe_rng_seed(&r, 1234 + (uint64_t)b->rank);
    draw_routing(b->slots, &b->map, w, b->N, b->E, b->K, &r);
    if (moe_route_plan(b->counts, b->offsets, b->slot_row, b->row_token, b->row_slot, b->slots, NULL, b->N, b->E,
                       b->K, 0, MOE_DROP_POSITION, 0) != b->R)
        return moe_fail(MOE_ERR_INTERNAL, "route plan: expected %d rows", b->R);
    for (size_t i = 0; i < N * C; i++)
        b->x[i] = uni(&r, 1.0f);
    for (size_t i = 0; i < R * C; i++)
        b->dys[i] = uni(&r, 1.0f);
    float s13 = 1.0f / sqrtf((float)C), s2 = 1.0f / sqrtf((float)F); /* keeps activations O(1) */
    for (size_t i = 0; i < El * 2 * F * C; i++)
        b->w13[i] = uni(&r, s13);
    for (size_t i = 0; i < El * C * F; i++)
        b->w2[i] = uni(&r, s2);

    /* one dispatch sizes the layer's buffers and tells how many rows arrive */
    b->s.chunks = a->chunks;
    b->s.fine_chunks = a->fine_chunks;
    MOE_TRY(moe_ep_dispatch(&b->s, world, &b->map, b->x, b->row_token, b->xs, b->offsets, b->C, b->F));
    return moe_alloc((void **)&b->dyr, (b->s.recv_total > 0 ? b->s.recv_total : 1) * C * 4, "received gradients");
}

static void bench_free(bench *b)
{
    void *p[] = {b->slots, b->counts, b->offsets, b->slot_row, b->row_token, b->row_slot, b->x, b->xs, b->ys,
                 b->dys, b->dxs, b->w13, b->w2, b->dw13, b->dw2, b->dyr};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++)
        moe_free(p[i]);
    moe_ep_layer_free(&b->s);
    moe_expert_map_free(&b->map);
}

typedef struct {
    double t0;      /* the run's start */
    double *ev;     /* [cap][EV_FIELDS] */
    atomic_int n;
    int cap;
} event_log;

/* moe_ep_event_fn: compute threads call it too, so slots are taken atomically. */
static void log_event(void *ctx, const char *what, int source, double t0, double t1)
{
    event_log *l = ctx;
    int i = atomic_fetch_add(&l->n, 1);
    if (i >= l->cap)
        return;
    double *e = l->ev + (size_t)i * EV_FIELDS;
    e[0] = strcmp(what, "compute") == 0 ? 1 : strcmp(what, "arrived") == 0 ? 2 : 3;
    e[1] = source;
    e[2] = t0 - l->t0;
    e[3] = t1 - l->t0;
}

/* One timed run of measurement m: phase end times (seconds from the start)
** into mark[NMARK], GEMM seconds of forward and backward into gemm[2]. */
static moe_status run_once(bench *b, moe_comm *w, int m, double *mark, double *gemm, event_log *log)
{
    moe_ep_layer *s = &b->s;
    int C = b->C, F = b->F, segs = b->P * b->El;
    double t0 = moe_now();
    log->t0 = t0;
    atomic_store(&log->n, 0);
    s->on_event = m == M_COARSE || m == M_FINE ? log_event : NULL;
    s->event_ctx = log;
    if (m == M_COMM) {
        MOE_TRY(moe_ep_dispatch(s, w, &b->map, b->x, b->row_token, b->xs, b->offsets, C, F));
        mark[0] = moe_now() - t0;
        MOE_TRY(moe_ep_combine(s, w, &b->map, s->xr, C, b->ys));
        mark[1] = moe_now() - t0;
        MOE_TRY(moe_ep_dispatch_again(s, w, &b->map, b->dys, C, b->dyr));
        mark[2] = moe_now() - t0;
        MOE_TRY(moe_ep_combine(s, w, &b->map, b->dyr, C, b->dxs));
        mark[3] = moe_now() - t0;
    } else if (m == M_COMP) {
        /* the rows of the comm-only run's dispatch, still in s->xr and b->dyr */
        moe_experts_forward_segments(s->ye, s->h13, s->act, s->xr, b->w13, b->w2, s->offsets, s->seg_expert, segs,
                                     C, F);
        mark[0] = mark[1] = moe_now() - t0;
        moe_experts_backward_segments(s->dx, b->dw13, b->dw2, s->dh13, s->dact, b->dyr, s->xr, s->h13, s->act,
                                      b->w13, b->w2, s->offsets, s->seg_expert, segs, C, F);
        mark[2] = mark[3] = moe_now() - t0;
        gemm[0] = mark[0];
        gemm[1] = mark[2] - mark[0];
    } else {
        s->overlap = m == M_NONE ? MOE_EP_NONE : m == M_COARSE ? MOE_EP_COARSE : MOE_EP_FINE;
        MOE_TRY(moe_ep_forward(s, w, &b->map, b->x, b->row_token, b->xs, b->offsets, b->R, C, F, b->w13, b->w2,
                               b->ys));
        mark[0] = mark[1] = moe_now() - t0;
        gemm[0] = s->compute_s;
        MOE_TRY(moe_ep_backward(s, w, &b->map, b->dys, b->R, C, F, b->w13, b->w2, b->dw13, b->dw2, b->dxs));
        mark[2] = mark[3] = moe_now() - t0;
        gemm[1] = s->compute_s;
    }
    return MOE_OK;
}

typedef struct {
    double *elapsed; /* [NMEAS][iters] this rank's, then the slowest rank's */
    double *gemm;    /* [NMEAS][iters] this rank's forward + backward GEMM seconds, then summed over ranks */
    double *mark;    /* [NMEAS][iters][NMARK] this rank's */
    double *gparts;  /* [NMEAS][iters][2] this rank's */
    double *events;  /* [NMEAS][iters][max_events][EV_FIELDS] this rank's (zero: no event) */
} samples;

static moe_status measure(bench *b, moe_comm *w, const layer_args *a, samples *out)
{
    int I = a->iters;
    MOE_TRY(moe_alloc((void **)&out->elapsed, sizeof(double) * NMEAS * I, "timings"));
    MOE_TRY(moe_alloc((void **)&out->gemm, sizeof(double) * NMEAS * I, "timings"));
    MOE_TRY(moe_alloc((void **)&out->mark, sizeof(double) * NMEAS * I * NMARK, "timings"));
    MOE_TRY(moe_alloc((void **)&out->gparts, sizeof(double) * NMEAS * I * 2, "timings"));
    size_t evn = (size_t)max_events(b->P) * EV_FIELDS;
    MOE_TRY(moe_alloc((void **)&out->events, sizeof(double) * NMEAS * I * evn, "timeline"));
    size_t wn13 = (size_t)b->El * 2 * b->F * b->C, wn2 = (size_t)b->El * b->C * b->F;
    for (int it = -a->warmup; it < I; it++) {
        for (int m = 0; m < NMEAS; m++) {
            /* weight gradients accumulate: start each run from zero, outside the clock */
            memset(b->dw13, 0, wn13 * sizeof(float));
            memset(b->dw2, 0, wn2 * sizeof(float));
            double mark[NMARK] = {0}, gemm[2] = {0};
            size_t k = (size_t)m * I + (it < 0 ? 0 : it);
            event_log log = {.ev = out->events + k * evn, .cap = max_events(b->P)};
            MOE_TRY(moe_barrier(w));
            double t0 = moe_now();
            MOE_TRY(run_once(b, w, m, mark, gemm, &log));
            double dt = moe_now() - t0;
            b->s.on_event = NULL; /* log lives on this stack frame */
            if (it < 0) { /* a warm-up's events are not kept */
                memset(log.ev, 0, evn * sizeof(double));
                continue;
            }
            out->elapsed[k] = dt;
            out->gemm[k] = gemm[0] + gemm[1];
            memcpy(out->mark + k * NMARK, mark, sizeof mark);
            memcpy(out->gparts + k * 2, gemm, sizeof gemm);
        }
    }
    /* the slowest rank sets each iteration's pace; GEMM time is the job's total */
    MOE_TRY(moe_allreduce(w, out->elapsed, (size_t)NMEAS * I, MOE_DT_F64, MOE_OP_MAX));
    MOE_TRY(moe_allreduce(w, out->gemm, (size_t)NMEAS * I, MOE_DT_F64, MOE_OP_SUM));
    return MOE_OK;
}

static void samples_free(samples *s)
{
    moe_free(s->elapsed);
    moe_free(s->gemm);
    moe_free(s->mark);
    moe_free(s->gparts);
    moe_free(s->events);
}

/* ---- trace --------------------------------------------------------------- */

static void trace_event(FILE *f, int *first, const char *name, int pid, int rank, double t0, double t1,
                        const char *args)
{
    fprintf(f, "%s\n  {\"name\": \"%s\", \"cat\": \"%s\", \"ph\": \"X\", \"pid\": %d, \"tid\": %d, "
               "\"ts\": %.3f, \"dur\": %.3f%s%s%s}",
            *first ? "" : ",", name, meas_name[pid], pid, rank, t0 * 1e6, (t1 - t0) * 1e6, args ? ", \"args\": {" : "",
            args ? args : "", args ? "}" : "");
    *first = 0;
}

/* The engine's events of one rank's traced run (see EV_FIELDS): compute spans
** as slices, arrivals and sends as instants. */
static void trace_engine_events(FILE *f, int *first, const double *ev, int nev, int m, int r)
{
    static const char *kind[4] = {"?", "compute", "arrived", "sent"};
    for (int i = 0; i < nev; i++) {
        const double *e = ev + (size_t)i * EV_FIELDS;
        int k = (int)e[0];
        if (k < 1 || k > 3)
            continue; /* an empty slot */
        char name[48];
        snprintf(name, sizeof name, "%s %s %d", kind[k], m == M_COARSE ? "chunk" : "source", (int)e[1]);
        if (k == 1)
            trace_event(f, first, name, m, r, e[2], e[3], NULL);
        else
            fprintf(f, ",\n  {\"name\": \"%s\", \"cat\": \"%s\", \"ph\": \"i\", \"s\": \"t\", \"pid\": %d, "
                       "\"tid\": %d, \"ts\": %.3f}",
                    name, meas_name[m], m, r, e[2] * 1e6);
    }
}

/* tr: [NMEAS][P][TR_FIELDS] every rank's marks and GEMM seconds of the traced
** iterations; ev: [NMEAS][P][nev][EV_FIELDS] their engine events. */
static moe_status write_trace(const char *path, const double *tr, const double *ev, int nev, const int *iter, int P,
                              const layer_args *a)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return moe_fail(MOE_ERR_IO, "cannot write trace '%s': %s", path, strerror(errno));
    int first = 1;
    fprintf(f, "{\"displayTimeUnit\": \"ms\", \"otherData\": {\"ranks\": %d, \"tokens\": %d, \"hidden\": %d, "
               "\"ffn\": %d, \"experts\": %d, \"topk\": %d, \"skew\": %g, \"chunks\": %d},\n\"traceEvents\": [",
            P, a->tokens, a->hidden, a->ffn, a->experts, a->topk, a->skew, a->chunks);
    static const char *comm_phase[NMARK] = {"dispatch", "combine", "dispatch (backward)", "combine (backward)"};
    for (int m = 0; m < NMEAS; m++) {
        fprintf(f, "%s\n  {\"name\": \"process_name\", \"ph\": \"M\", \"pid\": %d, \"args\": {\"name\": \"%s, "
                   "iteration %d\"}},\n  {\"name\": \"process_sort_index\", \"ph\": \"M\", \"pid\": %d, "
                   "\"args\": {\"sort_index\": %d}}",
                first ? "" : ",", m, meas_name[m], iter[m], m, m);
        first = 0;
        for (int r = 0; r < P; r++) {
            const double *v = tr + ((size_t)m * P + r) * TR_FIELDS;
            fprintf(f, ",\n  {\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": %d, \"tid\": %d, "
                       "\"args\": {\"name\": \"rank %d\"}}",
                    m, r, r);
            char args[128];
            if (m == M_COMM) {
                for (int k = 0; k < NMARK; k++)
                    trace_event(f, &first, comm_phase[k], m, r, k ? v[k - 1] : 0, v[k], NULL);
                continue;
            }
            snprintf(args, sizeof args, "\"gemm_ms\": %.3f", v[NMARK] * 1e3);
            trace_event(f, &first, "forward", m, r, 0, v[1], args);
            snprintf(args, sizeof args, "\"gemm_ms\": %.3f", v[NMARK + 1] * 1e3);
            trace_event(f, &first, "backward", m, r, v[1], v[3], args);
            trace_engine_events(f, &first, ev + ((size_t)m * P + r) * nev * EV_FIELDS, nev, m, r);
        }
    }
    fprintf(f, "\n]}\n");
    if (fclose(f) != 0)
        return moe_fail(MOE_ERR_IO, "cannot write trace '%s': %s", path, strerror(errno));
    return MOE_OK;
}

/* Every rank's phases of the median iteration of each measurement, to rank 0's file. */
static moe_status trace(moe_comm *w, const samples *sm, const layer_args *a, int P, int rank)
{
    int I = a->iters, iter[NMEAS], nev = max_events(P);
    size_t evn = (size_t)nev * EV_FIELDS;
    double *tr, *ev = NULL;
    MOE_TRY(moe_alloc((void **)&tr, sizeof(double) * NMEAS * P * TR_FIELDS, "trace"));
    moe_status st = moe_alloc((void **)&ev, sizeof(double) * NMEAS * P * evn, "trace");
    if (st != MOE_OK) {
        moe_free(tr);
        return st;
    }
    for (int m = 0; m < NMEAS; m++) {
        iter[m] = median_index(sm->elapsed + (size_t)m * I, I);
        size_t k = (size_t)m * I + iter[m];
        double *v = tr + ((size_t)m * P + rank) * TR_FIELDS;
        memcpy(v, sm->mark + k * NMARK, NMARK * sizeof(double));
        memcpy(v + NMARK, sm->gparts + k * 2, 2 * sizeof(double));
        memcpy(ev + ((size_t)m * P + rank) * evn, sm->events + k * evn, evn * sizeof(double));
    }
    st = moe_allreduce(w, tr, (size_t)NMEAS * P * TR_FIELDS, MOE_DT_F64, MOE_OP_SUM);
    if (st == MOE_OK)
        st = moe_allreduce(w, ev, (size_t)NMEAS * P * evn, MOE_DT_F64, MOE_OP_SUM);
    if (st == MOE_OK && rank == 0)
        st = write_trace(a->trace, tr, ev, nev, iter, P, a);
    moe_free(tr);
    moe_free(ev);
    return st;
}

/* ---- report -------------------------------------------------------------- */

static void report(const samples *sm, const layer_args *a, int P, int threads)
{
    int I = a->iters;
    double c = median(sm->elapsed + (size_t)M_COMM * I, I), p = median(sm->elapsed + (size_t)M_COMP * I, I);
    double t[3], slow[3], hidden[3];
    double g_none = median(sm->gemm + (size_t)M_NONE * I, I), lo = c < p ? c : p;
    for (int k = 0; k < 3; k++) {
        t[k] = median(sm->elapsed + (size_t)(M_NONE + k) * I, I);
        slow[k] = g_none > 0 ? median(sm->gemm + (size_t)(M_NONE + k) * I, I) / g_none : 1;
        hidden[k] = k && lo > 0 ? (t[0] - t[k]) / lo : 0;
    }
    if (a->json) {
        printf("{\"bench\": \"layer\", \"c_ms\": %.3f, \"p_ms\": %.3f, \"ranks\": %d, \"tokens\": %d, "
               "\"hidden\": %d, \"ffn\": %d, \"experts\": %d, \"topk\": %d, \"skew\": %g, \"threads\": %d, "
               "\"chunks\": %d, \"fine_chunks\": %d, \"iters\": %d, \"modes\": {",
               c * 1e3, p * 1e3, P, a->tokens, a->hidden, a->ffn, a->experts, a->topk, a->skew, threads, a->chunks,
               a->fine_chunks, I);
        for (int k = 0; k < 3; k++)
            printf("%s\"%s\": {\"t_ms\": %.3f, \"hidden\": %.3f, \"gemm_slowdown\": %.3f}", k ? ", " : "",
                   mode_key[k], t[k] * 1e3, hidden[k], slow[k]);
        printf("}}\n");
        return;
    }
    printf("layer: %d ranks x %d threads, %d tokens x %d per rank, ffn %d, top-%d of %d experts, skew %g, "
           "coarse chunks %d, fine chunks %d (0: the rule); median of %d iterations, slowest rank\n\n",
           P, threads, a->tokens, a->hidden, a->ffn, a->topk, a->experts, a->skew, a->chunks, a->fine_chunks, I);
    printf("comm only C = %.2f ms, compute only P = %.2f ms (C + P = %.2f, max(C, P) = %.2f)\n\n", c * 1e3,
           p * 1e3, (c + p) * 1e3, (c > p ? c : p) * 1e3);
    printf("| mode | T (ms) | hidden | GEMM slowdown |\n|---|---|---|---|\n");
    for (int k = 0; k < 3; k++)
        printf("| %s | %.2f | %.2f | %.2f |\n", mode_key[k], t[k] * 1e3, hidden[k], slow[k]);
}

static int threads_now(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int moe_bench_layer(int argc, char **argv)
{
    layer_args a;
    int rc = parse(argc, argv, &a);
    if (rc)
        return rc < 0 ? 0 : rc;
    if (a.check) { /* before any rank starts: arguments only */
        if (a.trace && !writable(a.trace))
            return 2;
        return check_shape(&a, a.check, 1);
    }
    moe_comm *world;
    moe_status st = moe_comm_init(&argc, &argv);
    if (st == MOE_OK)
        st = moe_comm_world(&world);
    if (st != MOE_OK) {
        moe_error_print(stderr, PROG);
        return 1;
    }
    int P = moe_comm_size(world), rank = moe_comm_rank(world);
    rc = check_shape(&a, P, rank == 0); /* every rank decides the same; one says why */
    if (rc) {
        moe_comm_finalize();
        return rc;
    }
    bench b;
    samples sm = {0};
    st = bench_init(&b, &a, world);
    if (st == MOE_OK)
        st = measure(&b, world, &a, &sm);
    if (st == MOE_OK && a.trace)
        st = trace(world, &sm, &a, P, rank);
    if (st != MOE_OK) {
        moe_error_print(stderr, PROG);
        moe_comm_abort(1);
    }
    if (rank == 0)
        report(&sm, &a, P, threads_now());
    samples_free(&sm);
    bench_free(&b);
    moe_comm_finalize();
    return 0;
}
