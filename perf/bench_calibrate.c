/*
** moe bench calibrate [--out FILE] [--base PROFILE] [--threads N] [--json]:
** measures this machine for the cost model and writes a hardware profile
** (planner/hwprofile.h's format) whose measured numbers say "measured by moe
** bench calibrate on <date>". One rank's rates with N threads (default: all
** cores; `threads` in the profile says which):
**
**   - sgemm (through layers/gemm, the trainer's BLAS) at squares 16..2048, the
**     forward shapes of configs/tiny.yaml and configs/small.yaml, one
**     attention block of one head and one expert segment: the median call over
**     at least 7 and 0.07 s, the best of 3 such windows, each on operands out
**     of cache (the calls walk 512 MiB arrays, as a training step's kernels
**     touch other data in between).
**     gemm_tflops is the best rate; gemm_efficiency_table each size's rate less
**     kernel_overhead_us (which the model adds per call) over it, calls under
**     twice the overhead left out; gemm_efficiency the FLOP-weighted
**     efficiency of small's shapes. No factor: element-wise work is costed by
**     the model apart. gemm_efficiency_table_cached: the same shapes with
**     every call on the same operands, over the same peak;
**   - kernel_overhead_us: the median call of the runtime's kernels on the least
**     input, averaged over seven kernels;
**   - elementwise_gbs: the runtime's element-wise kernels on one layer of
**     tiny's and small's micro-batch, bytes as the model counts them over the
**     median times less the overhead; softmax_gelems: the cross-entropy
**     forward's elements over its median time less the overhead;
**   - attention_gelems, attention_block_gelems: the attention kernels' own
**     work per score element, outside their GEMMs (perf/calibrate_attention.h);
**   - optimizer_gparams: the gradient norm and AdamW per parameter
**     (perf/calibrate_optimizer.h);
**   - memory bandwidth: triad a = b + 3c over 3 x 128 MiB doubles, median of 5;
**   - MPI, started from here so the timings above run alone: `mpirun -np 2`
**     of itself (--pingpong: ping-pong latency and rate, a 4-byte
**     MPI_Alltoall, which is intra_node_latency_us, and MPI_Allreduce), then
**     2 x cores ranks oversubscribed as moe train starts them (--pingpong-over:
**     pairs ping-pong with 50 us of work between, oversubscribed_latency_us);
**   - cores: the online processors; core_cache_kb: the cache private to
**     core 0, from hwloc (left out, with a warning, when hwloc cannot say).
**
** Keys not measured here (memory size, ranks per node, shared, the link
** rates, the inter-node latency, link efficiency) are copied from --base with
** their sources (default configs/hw/this-machine.yaml).
*/
#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "layers/crossentropy.h"
#include "layers/experts.h"
#include "layers/gemm.h"
#include "layers/rmsnorm.h"
#include "layers/rope.h"
#include "layers/swiglu.h"
#include "perf/bench.h"
#include "perf/calibrate_attention.h"
#include "perf/calibrate_optimizer.h"
#include "perf/gemm_stall.h"
#include "planner/hwprofile.h"
#include "runtime/base/core_cache.h"
#include "runtime/base/mem.h"
#include "runtime/base/timer.h"

typedef struct {
    int M, K, N;
    const char *what;
    int small; /* one of configs/small.yaml's training shapes */
} shape;

/* tiny: hidden 64, ffn 256, experts 4 x 128 (top-2), 4 heads + 2 kv of 16, 512
** tokens per micro-batch (128 at micro-batch 2); small: hidden 512, experts 8
** x 1024 (top-2), 8 heads of 64, 1024 tokens. Forward shapes, x W^T. */
static const shape SHAPES[] = {
    {16, 16, 16, "square", 0}, {32, 32, 32, "square", 0},
    {64, 64, 64, "square", 0}, {128, 128, 128, "square", 0}, {256, 256, 256, "square", 0},
    {512, 512, 512, "square", 0}, {1024, 1024, 1024, "square", 0}, {2048, 2048, 2048, "square", 0},
    {128, 64, 128, "tiny qkv, 128 tokens", 0}, {64, 64, 256, "tiny expert w13, 64 rows", 0},
    {512, 64, 128, "tiny qkv", 0}, {512, 64, 64, "tiny out proj", 0}, {256, 64, 256, "tiny expert w13", 0},
    {256, 128, 64, "tiny expert w2", 0}, {512, 64, 256, "tiny lm head", 0},
    {64, 16, 64, "tiny attention scores, one head", 0}, {64, 64, 16, "tiny attention values, one head", 0},
    {32, 64, 256, "tiny expert w13, one segment", 0}, {32, 128, 64, "tiny expert w2, one segment", 0},
    {64, 64, 256, "small attention scores, one head, last block", 0},
    {64, 256, 64, "small attention values, one head, last block", 0},
    {1024, 512, 1536, "small qkv", 1}, {1024, 512, 512, "small out proj", 1},
    {256, 512, 2048, "small expert w13", 1}, {256, 1024, 512, "small expert w2", 1},
    {1024, 512, 256, "small lm head", 1},
};
#define NSHAPES ((int)(sizeof SHAPES / sizeof SHAPES[0]))

/* Median seconds of C = A B^T at (M, K, N) over at least 7 calls and 0.07
** s, the best of 3 such windows (the model predicts median steps, and calls
** vary on a shared machine; a window in which a BLAS thread lost its core
** runs every call milliseconds slow, and one such window once put a
** 1-MFLOP shape at 0.0002 of the peak). Each call takes the next A, B and C
** along arrays of `cap` floats, so no call finds its operands in the caches
** the previous ones filled, as in a training step, where the kernels in
** between touch other data; `cached`: every call on the same operands, as
** the attention kernels' tile GEMMs find theirs. */
static double time_gemm(const shape *s, float *a, float *b, float *c, size_t cap, int cached)
{
    static double t[4096];
    size_t na = (size_t)s->M * s->K, nb = (size_t)s->K * s->N, nc = (size_t)s->M * s->N;
    size_t ia = 0, ib = 0, ic = 0;
    double best = 0;
    for (int w = 0; w < 3; w++) {
        int n = 0;
        double start = moe_now();
        for (int r = -1; (r < 7 || moe_now() - start < 0.07) && n < 4096; r++) { /* r = -1: warm-up */
            if (!cached)
                ia = ia + 2 * na <= cap ? ia + na : 0, ib = ib + 2 * nb <= cap ? ib + nb : 0,
                ic = ic + 2 * nc <= cap ? ic + nc : 0;
            double t0 = moe_now();
            moe_gemm(0, 1, s->M, s->N, s->K, 1.0f, a + ia, s->K, b + ib, s->K, 0.0f, c + ic, s->N);
            double dt = moe_now() - t0;
            if (r >= 0)
                t[n++] = dt;
        }
        qsort(t, (size_t)n, sizeof *t, moe_bench_cmp_double);
        best = w == 0 || t[n / 2] < best ? t[n / 2] : best;
    }
    return best;
}

/* gf[i]: shape i's rate (GFLOP/s); net[i]: the same less the kernel overhead
** the model adds per call itself (at most half the call taken off). */
static void rate_gemm(int i, float *a, float *b, float *c, size_t cap, int cached, double kern, double *gf,
                      double *net)
{
    double fl = 2.0 * SHAPES[i].M * SHAPES[i].K * SHAPES[i].N, t = time_gemm(&SHAPES[i], a, b, c, cap, cached);
    gf[i] = fl / t / 1e9;
    net[i] = fl / (t - kern > 0.5 * t ? t - kern : 0.5 * t) / 1e9;
}

/* The shape calibrate must measure again (perf/gemm_stall.h), or -1. */
static int stalled(const double *gf, int *than)
{
    int mkn[NSHAPES][3];
    for (int i = 0; i < NSHAPES; i++)
        mkn[i][0] = SHAPES[i].M, mkn[i][1] = SHAPES[i].K, mkn[i][2] = SHAPES[i].N;
    return moe_gemm_stalled((const int(*)[3])mkn, gf, NSHAPES, 1.5, than);
}

/* Measures the stalled shapes again, three times at most; returns -1, or
** the shape still stalled, after saying so. */
static int remeasure_stalled(float *a, float *b, float *c, size_t cap, double kern, double *gf, double *net,
                             double *gf_c, double *net_c)
{
    int i = -1, j = -1;
    for (int cached = 0; cached < 2; cached++)
        for (int tries = 0; tries <= 3; tries++) {
            double *g = cached ? gf_c : gf, *n = cached ? net_c : net;
            if ((i = stalled(g, &j)) < 0)
                break;
            if (tries == 3) {
                fprintf(stderr,
                        "moe bench calibrate: error: sgemm %dx%dx%d%s ran at %.2f GFLOP/s, slower per call than "
                        "%dx%dx%d, which is no smaller in any dimension, in 4 measurements: the machine is busy "
                        "(uptime); run again when it is idle\n",
                        SHAPES[i].M, SHAPES[i].K, SHAPES[i].N, cached ? " (cached)" : "", g[i], SHAPES[j].M,
                        SHAPES[j].K, SHAPES[j].N);
                return i;
            }
            rate_gemm(i, a, b, c, cap, cached, kern, g, n);
        }
    return -1;
}

static double triad_gbs(void)
{
    size_t n = (size_t)16 << 20;
    double *a = NULL, *b = NULL, *c = NULL;
    if (moe_alloc((void **)&a, n * 8, "triad a") != MOE_OK || moe_alloc((void **)&b, n * 8, "triad b") != MOE_OK ||
        moe_alloc((void **)&c, n * 8, "triad c") != MOE_OK) {
        moe_free(a);
        moe_free(b);
        return -1;
    }
#pragma omp parallel for
    for (size_t i = 0; i < n; i++)
        a[i] = 0, b[i] = 1, c[i] = 2;
    double ts[5];
    for (int r = 0; r < 5; r++) {
        double t = moe_now();
#pragma omp parallel for
        for (size_t i = 0; i < n; i++)
            a[i] = b[i] + 3.0 * c[i];
        ts[r] = moe_now() - t;
    }
    qsort(ts, 5, sizeof *ts, moe_bench_cmp_double);
    double best = ts[2];
    int ok = a[7] == 7.0;
    moe_free(a);
    moe_free(b);
    moe_free(c);
    return ok ? 24.0 * n / best / 1e9 : -1;
}

// ----------------------------------------------------------------------------
// kernel calls and element-wise passes

#define NSAMPLE 2001


/* The buffers the element-wise kernels run on, big enough for small.yaml's
** micro-batch (2048 routed rows x 2 x 1024 columns). */
typedef struct {
    float *a, *b, *c, *d, *w, *cos_t, *sin_t, *rstd;
    int32_t *idx;
    size_t cap;
} ew_bufs;

typedef enum { K_GEMM, K_NORM_F, K_NORM_B, K_ROPE_F, K_ROPE_B, K_SWIGLU_F, K_SWIGLU_B, K_PERM_F, K_UNPERM_F,
               K_UNPERM_B, K_PERM_B, K_ADD, K_ZERO, K_CE_F, K_CE_B } kern_kind;

/* One call of kernel k on shape n (tokens), C (hidden), R (routed rows), F
** (expert width), V (vocabulary), with attention heads nh + 2 nkv of hd. */
typedef struct {
    kern_kind k;
    int n, C, R, F, V, B, T, nh, nkv, hd;
} kern_call;

static void residual_add(float *out, const float *x, const float *y, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        out[i] = x[i] + y[i];
}

static void run_kernel(const kern_call *q, ew_bufs *e)
{
    size_t nc = (size_t)q->n * q->C;
    switch (q->k) {
    case K_GEMM: moe_gemm(0, 1, 1, 1, 1, 1.0f, e->a, 1, e->b, 1, 0.0f, e->c, 1); break;
    case K_NORM_F: moe_rmsnorm_forward(e->c, e->rstd, e->a, e->w, q->n, q->C, 1e-5f); break;
    case K_NORM_B: moe_rmsnorm_backward(e->c, e->d, e->b, e->a, e->w, e->rstd, q->n, q->C); break;
    case K_ROPE_F: moe_rope_forward(e->c, e->a, e->cos_t, e->sin_t, q->B, q->T, q->nh, q->nkv, q->hd); break;
    case K_ROPE_B: moe_rope_backward(e->c, e->a, e->cos_t, e->sin_t, q->B, q->T, q->nh, q->nkv, q->hd); break;
    case K_SWIGLU_F: moe_swiglu_forward(e->c, e->a, q->R, q->F); break;
    case K_SWIGLU_B: moe_swiglu_backward(e->c, e->b, e->a, q->R, q->F); break;
    case K_PERM_F: moe_permute_forward(e->c, e->a, e->idx, q->R, q->C); break;
    case K_UNPERM_F: moe_unpermute_forward(e->c, e->a, e->w, e->idx, q->n, q->R / q->n, q->C); break;
    case K_UNPERM_B: moe_unpermute_backward(e->c, e->d, e->b, e->a, e->w, e->idx, q->n, q->R / q->n, q->C, q->R); break;
    case K_PERM_B: moe_permute_backward(e->c, e->a, e->idx, q->n, q->R / q->n, q->C); break;
    case K_ADD: residual_add(e->c, e->a, e->b, nc); break;
    case K_ZERO: memset(e->c, 0, nc * sizeof(float)); break;
    case K_CE_F: moe_crossentropy_forward(e->d, e->c, e->a, e->idx, q->n, q->V); break;
    case K_CE_B: moe_crossentropy_backward(e->c, e->b, e->idx, q->n, q->V, 1e-3f); break;
    }
}

/* Bytes a call moves, as the cost model counts them (costmodel.c). */
static double kernel_bytes(const kern_call *q)
{
    double nc = (double)q->n * q->C, qkv = (double)q->n * (q->nh + 2 * q->nkv) * q->hd, rc = (double)q->R * q->C;
    double rf = (double)q->R * q->F, nv = (double)q->n * q->V;
    double elems[] = {[K_GEMM] = 0, [K_NORM_F] = 2 * nc, [K_NORM_B] = 5 * nc, [K_ROPE_F] = 2 * qkv,
                      [K_ROPE_B] = 3 * qkv, [K_SWIGLU_F] = 3 * rf, [K_SWIGLU_B] = 7 * rf, [K_PERM_F] = 2 * rc,
                      [K_UNPERM_F] = rc + nc, [K_UNPERM_B] = 3 * rc + nc, [K_PERM_B] = rc + 2 * nc,
                      [K_ADD] = 3 * nc, [K_ZERO] = nc, [K_CE_F] = 2 * nv, [K_CE_B] = 3 * nv};
    return elems[q->k] * 4;
}

/* Median seconds of one call over NSAMPLE calls (after one warm-up). */
static double median_call(const kern_call *q, ew_bufs *e)
{
    static double t[NSAMPLE];
    run_kernel(q, e);
    for (int r = 0; r < NSAMPLE; r++) {
        double t0 = moe_now();
        run_kernel(q, e);
        t[r] = moe_now() - t0;
    }
    qsort(t, NSAMPLE, sizeof *t, moe_bench_cmp_double);
    return t[NSAMPLE / 2];
}

static moe_status ew_alloc(ew_bufs *e)
{
    memset(e, 0, sizeof *e);
    e->cap = (size_t)2048 * 2 * 1024;
    float **f[] = {&e->a, &e->b, &e->c, &e->d, &e->w, &e->cos_t, &e->sin_t, &e->rstd};
    for (int i = 0; i < 8; i++)
        MOE_TRY(moe_alloc((void **)f[i], e->cap * sizeof(float), "calibrate element-wise buffers"));
    MOE_TRY(moe_alloc((void **)&e->idx, e->cap * sizeof(int32_t), "calibrate indices"));
    for (size_t i = 0; i < e->cap; i++) {
        e->a[i] = (float)((i * 7) % 13) * 0.01f - 0.06f, e->b[i] = (float)((i * 5) % 11) * 0.01f;
        e->w[i] = 0.5f, e->rstd[i] = 1.0f, e->cos_t[i] = 0.8f, e->sin_t[i] = 0.6f;
        e->idx[i] = (int32_t)((i * 37) % 256); /* targets and row indices: < 256 and < every row count here */
    }
    return MOE_OK;
}

static void ew_free(ew_bufs *e)
{
    void *p[] = {e->a, e->b, e->c, e->d, e->w, e->cos_t, e->sin_t, e->rstd, e->idx};
    for (int i = 0; i < 9; i++)
        moe_free(p[i]);
}

/* The fixed cost of one kernel call: the median call of the runtime's
** kernels on the least input (a 1 x 1 x 1 GEMM, one row of RMSNorm,
** SwiGLU, permute and unpermute, a 64-element residual add, a 256-byte
** memset), averaged over the seven. */
static double kernel_overhead_s(ew_bufs *e)
{
    kern_call one[] = {{K_GEMM, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1}, {K_NORM_F, 1, 64, 1, 1, 1, 1, 1, 1, 0, 1},
                       {K_SWIGLU_F, 1, 64, 1, 64, 1, 1, 1, 1, 0, 1}, {K_PERM_F, 1, 64, 1, 1, 1, 1, 1, 1, 0, 1},
                       {K_UNPERM_F, 1, 64, 1, 1, 1, 1, 1, 1, 0, 1}, {K_ADD, 1, 64, 1, 1, 1, 1, 1, 1, 0, 1},
                       {K_ZERO, 1, 64, 1, 1, 1, 1, 1, 1, 0, 1}};
    double sum = 0;
    for (int i = 0; i < 7; i++)
        sum += median_call(&one[i], e);
    return sum / 7;
}

/* One layer's element-wise passes (forward and backward) and the loss
** backward of one micro-batch of a config, each kernel as often as the model
** counts it per layer (RMSNorm and residual add twice). Fills the bytes and
** seconds (their kernel overheads taken off). */
static const char *const KNAME[] = {"gemm", "rmsnorm_fwd", "rmsnorm_bwd", "rope_fwd", "rope_bwd", "swiglu_fwd",
                                    "swiglu_bwd", "permute_fwd", "unpermute_fwd", "unpermute_bwd", "permute_bwd",
                                    "residual_add", "memset", "crossentropy_fwd", "crossentropy_bwd"};
/* Each kernel's median call, for --json. */
typedef struct {
    kern_kind k;
    int tokens;
    double bytes, us;
} ew_record;
static ew_record ew_recs[64];
static int ew_nrec;

static void ew_workload(const kern_call *base, ew_bufs *e, double kern_s, double *bytes, double *secs)
{
    static const struct {
        kern_kind k;
        int times;
    } mix[] = {{K_NORM_F, 2}, {K_NORM_B, 2}, {K_ROPE_F, 1}, {K_ROPE_B, 1}, {K_SWIGLU_F, 1},
               {K_SWIGLU_B, 1}, {K_PERM_F, 1},  {K_UNPERM_F, 1}, {K_UNPERM_B, 1}, {K_PERM_B, 1},
               {K_ADD, 2},      {K_ZERO, 4},    {K_CE_B, 1}};
    *bytes = *secs = 0;
    for (size_t i = 0; i < sizeof mix / sizeof *mix; i++) {
        kern_call q = *base;
        q.k = mix[i].k;
        double t = median_call(&q, e) - kern_s;
        if (ew_nrec < 64)
            ew_recs[ew_nrec++] = (ew_record){q.k, q.n, kernel_bytes(&q), (t + kern_s) * 1e6};
        *bytes += mix[i].times * kernel_bytes(&q);
        *secs += mix[i].times * (t > 0 ? t : 0);
    }
}

/* The cross-entropy forward of a micro-batch (the runtime's softmax over
** the vocabulary: max, exp, sum, normalise): its elements and seconds less
** the kernel overhead. */
static void softmax_workload(const kern_call *base, ew_bufs *e, double kern_s, double *elems, double *secs)
{
    kern_call q = *base;
    q.k = K_CE_F;
    double t = median_call(&q, e);
    if (ew_nrec < 64)
        ew_recs[ew_nrec++] = (ew_record){q.k, q.n, kernel_bytes(&q), t * 1e6};
    *elems = (double)q.n * q.V;
    *secs = t - kern_s > 0 ? t - kern_s : 0;
}

/* The --pingpong mode, one of 2 ranks: prints "pingpong LAT_US GBS" on rank 0. */
static int pingpong(void)
{
    MPI_Init(NULL, NULL);
    int r, w;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    MPI_Comm_size(MPI_COMM_WORLD, &w);
    size_t big = (size_t)16 << 20;
    char *buf = calloc(big, 1);
    if (w != 2 || !buf) {
        fprintf(stderr, "moe bench calibrate: --pingpong needs exactly 2 ranks and 16 MiB\n");
        free(buf);
        MPI_Finalize();
        return 2;
    }
    double lat = 1e30, bw = 0;
    for (int i = 0; i < 1000; i++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t = MPI_Wtime();
        if (r == 0) {
            MPI_Send(buf, 8, MPI_CHAR, 1, 0, MPI_COMM_WORLD);
            MPI_Recv(buf, 8, MPI_CHAR, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
            MPI_Recv(buf, 8, MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf, 8, MPI_CHAR, 0, 0, MPI_COMM_WORLD);
        }
        t = (MPI_Wtime() - t) / 2;
        lat = t < lat ? t : lat;
    }
    for (int i = 0; i < 20; i++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t = MPI_Wtime();
        if (r == 0) {
            MPI_Send(buf, (int)big, MPI_CHAR, 1, 0, MPI_COMM_WORLD);
            MPI_Recv(buf, 1, MPI_CHAR, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
            MPI_Recv(buf, (int)big, MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf, 1, MPI_CHAR, 0, 0, MPI_COMM_WORLD);
        }
        t = MPI_Wtime() - t;
        bw = big / t > bw ? big / t : bw;
    }
    /* a collective of 4 bytes per rank: MPI_Alltoall (one message to the
    ** peer) and MPI_Allreduce, medians of 1001 after a barrier each */
    static double ta[1001], tr[1001];
    int32_t one = r, snd[2] = {r, r}, got[2];
    for (int i = 0; i < 1001; i++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t = MPI_Wtime();
        MPI_Alltoall(snd, 1, MPI_INT32_T, got, 1, MPI_INT32_T, MPI_COMM_WORLD);
        ta[i] = MPI_Wtime() - t;
        MPI_Barrier(MPI_COMM_WORLD);
        t = MPI_Wtime();
        MPI_Allreduce(&one, got, 1, MPI_INT32_T, MPI_SUM, MPI_COMM_WORLD);
        tr[i] = MPI_Wtime() - t;
    }
    qsort(ta, 1001, sizeof *ta, moe_bench_cmp_double);
    qsort(tr, 1001, sizeof *tr, moe_bench_cmp_double);
    if (r == 0)
        printf("pingpong %.3f %.3f %.3f %.3f\n", lat * 1e6, bw / 1e9, ta[500] * 1e6, tr[500] * 1e6);
    free(buf);
    MPI_Finalize();
    return 0;
}

/* The --pingpong-over mode, under more ranks than cores: rank pairs (0 1),
** (2 3)... ping-pong 8 bytes with about 50 us of work between messages (a
** kernel's worth), as training ranks time-sharing the cores do; prints
** "oversub MEDIAN_HALF_ROUND_TRIP_US" on rank 0. */
static int pingpong_over(void)
{
    MPI_Init(NULL, NULL);
    int r, w;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    MPI_Comm_size(MPI_COMM_WORLD, &w);
    if (w % 2) {
        fprintf(stderr, "moe bench calibrate: --pingpong-over needs an even number of ranks\n");
        MPI_Finalize();
        return 2;
    }
    static double t[1001];
    char buf[8] = {0};
    volatile double acc = 0;
    int peer = r ^ 1;
    for (int i = 0; i < 1001; i++) {
        double w0 = MPI_Wtime();
        while (MPI_Wtime() - w0 < 50e-6)
            acc += 1e-9;
        double t0 = MPI_Wtime();
        if (r % 2 == 0) {
            MPI_Send(buf, 8, MPI_CHAR, peer, 0, MPI_COMM_WORLD);
            MPI_Recv(buf, 8, MPI_CHAR, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
            MPI_Recv(buf, 8, MPI_CHAR, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf, 8, MPI_CHAR, peer, 0, MPI_COMM_WORLD);
        }
        t[i] = (MPI_Wtime() - t0) / 2;
    }
    qsort(t, 1001, sizeof *t, moe_bench_cmp_double);
    if (r == 0)
        printf("oversub %.3f\n", t[500] * 1e6);
    MPI_Finalize();
    return 0;
}

/* popen of `mpirun <mpirun_args> [--allow-run-as-root] <this program> calibrate <mode>`. */
static FILE *start_self(const char *mpirun_args, const char *mode)
{
    char self[1024], cmd[1500];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return NULL;
    self[n] = 0;
    snprintf(cmd, sizeof cmd, "mpirun %s %s %s calibrate %s", mpirun_args,
             geteuid() == 0 ? "--allow-run-as-root" : "", self, mode);
    return popen(cmd, "r");
}

/* Starts `mpirun -np 2 * cores --oversubscribe` (the launcher's flags for
** more ranks than cores) of --pingpong-over; 0 on success. */
static int run_pingpong_over(int cores, double *us)
{
    char args[160];
    snprintf(args, sizeof args,
             "-np %d --oversubscribe --mca mpi_yield_when_idle 1 --bind-to none -x OMP_NUM_THREADS=1", 2 * cores);
    FILE *p = start_self(args, "--pingpong-over");
    if (!p)
        return -1;
    char line[256];
    int found = 0;
    while (fgets(line, sizeof line, p))
        found |= sscanf(line, "oversub %lf", us) == 1;
    return pclose(p) == 0 && found ? 0 : -1;
}

/* Starts `mpirun -np 2 <this program> calibrate --pingpong`; 0 on success. */
static int run_pingpong(double *lat_us, double *gbs, double *a2a_us, double *ar_us)
{
    FILE *p = start_self("-np 2 --oversubscribe --bind-to none", "--pingpong");
    if (!p)
        return -1;
    char line[256];
    int found = 0;
    while (fgets(line, sizeof line, p))
        found |= sscanf(line, "pingpong %lf %lf %lf %lf", lat_us, gbs, a2a_us, ar_us) == 4;
    return pclose(p) == 0 && found ? 0 : -1;
}

typedef struct {
    double flops, eff;
} point;

static int cmp_point(const void *a, const void *b)
{
    double x = ((const point *)a)->flops, y = ((const point *)b)->flops;
    return (x > y) - (x < y);
}

/* The efficiency table of the shapes' net rates over `peak`: calls under
** twice the overhead are mostly overhead and left out; equal sizes merged
** (their mean) so the flops increase. Returns the points written. */
static int efficiency_points(const double *gf, const double *net, double peak, double kern, point *pts)
{
    int np = 0;
    for (int i = 0; i < NSHAPES; i++) {
        double fl = 2.0 * SHAPES[i].M * SHAPES[i].K * SHAPES[i].N, eff = net[i] / peak;
        if (fl / (gf[i] * 1e9) >= 2 * kern)
            pts[np++] = (point){fl, eff < 1 ? eff : 1};
    }
    qsort(pts, (size_t)np, sizeof *pts, cmp_point);
    int m = 0;
    for (int i = 0; i < np;) {
        int j = i;
        double sum = 0;
        for (; j < np && pts[j].flops == pts[i].flops; j++)
            sum += pts[j].eff;
        pts[m++] = (point){pts[i].flops, sum / (j - i)};
        i = j;
    }
    return m;
}

static void put_table(FILE *f, const char *key, const char *source, const point *pts, int m)
{
    fprintf(f, "%s:\n  source: \"%s\"\n  points:\n", key, source);
    for (int i = 0; i < m; i++)
        fprintf(f, "    - [%.4g, %.4f]\n", pts[i].flops, pts[i].eff);
}

/* core_cache_kb from hwloc; left out (the model then takes no GEMM as
** cached but the attention tiles') when hwloc cannot say. */
static void put_core_cache(FILE *f, const char *date)
{
    size_t bytes;
    if (moe_core_cache_bytes(&bytes) != MOE_OK) {
        fprintf(stderr, "moe bench calibrate: warning: %s; core_cache_kb left out\n", moe_errmsg());
        return;
    }
    fprintf(f, "core_cache_kb:\n  value: %zu\n  source: \"read by moe bench calibrate on %s from hwloc: the largest "
            "cache private to core 0\"\n", bytes / 1024, date);
}

static void put(FILE *f, const char *key, const char *value, const char *source)
{
    fprintf(f, "%s:\n  value: %s\n  source: \"%s\"\n", key, value, source);
}

static void put_num(FILE *f, const char *key, double v, const char *source)
{
    char s[64];
    snprintf(s, sizeof s, "%.6g", v);
    put(f, key, s, source);
}

/* A key copied from the base profile, its source kept (the loader takes at
** most 511 characters, so the text is cut to fit). */
/* One of the attention rates, with each shape's kernel time and rate in its source. */
static void put_attention(FILE *f, const char *key, const char *date, const char *kernel, const char *elems,
                          const double us[2], double tiny, double small, int cores, double rate)
{
    char src[700];
    snprintf(src, sizeof src,
             "measured by moe bench calibrate on %s: %s on configs/tiny.yaml's micro-batch (%.1f us: %.3f G/s) and "
             "configs/small.yaml's (%.1f us: %.3f G/s), %d thread(s), %s x 2 / the time outside its GEMM calls "
             "(timed inside) less its own calls' kernel overhead, both together",
             date, kernel, us[0], tiny, us[1], small, cores, elems);
    put_num(f, key, rate, src);
}

static void put_base(FILE *f, const moe_hwprofile *b, moe_hw_field k, double v, const char *extra)
{
    const char *file = strrchr(b->path, '/') ? strrchr(b->path, '/') + 1 : b->path;
    char src[1400];
    snprintf(src, sizeof src, "from %s, not measured: %s%s", file, b->source[k], extra ? extra : "");
    src[500] = 0;
    for (char *q = src; *q; q++)
        if (*q == '"')
            *q = '\'';
    put_num(f, moe_hw_field_key(k), v, src);
}

int moe_bench_calibrate(int argc, char **argv)
{
    const char *out = NULL, *base_path = MOE_SRC_DIR "/configs/hw/this-machine.yaml";
    int json = 0, threads = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--pingpong") == 0)
            return pingpong();
        if (strcmp(argv[i], "--pingpong-over") == 0)
            return pingpong_over();
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc && atoi(argv[i + 1]) > 0)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            out = argv[++i];
        else if (strcmp(argv[i], "--base") == 0 && i + 1 < argc)
            base_path = argv[++i];
        else {
            fprintf(stderr,
                    "moe bench calibrate: error: unknown argument '%s' (--out FILE, --base PROFILE, --threads N, "
                    "--json)\n", argv[i]);
            return 2;
        }
    }
    moe_hwprofile base;
    if (moe_hwprofile_load(base_path, &base) != MOE_OK) {
        moe_error_print(stderr, "moe bench calibrate");
        return 2;
    }
    int ncores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    ncores = ncores > 0 ? ncores : 1;
    int cores = threads > 0 ? threads : ncores; /* the threads measured with */
    omp_set_num_threads(cores);

    ew_bufs e;
    if (ew_alloc(&e) != MOE_OK) {
        moe_error_print(stderr, "moe bench calibrate");
        ew_free(&e);
        return 1;
    }
    double kern = kernel_overhead_s(&e);
    /* configs/tiny.yaml at micro-batch 2 and configs/small.yaml at 4: tokens,
    ** hidden, routed rows (top-2), expert width, vocabulary, B, T, heads */
    kern_call tiny_mb = {K_ZERO, 128, 64, 256, 128, 256, 2, 64, 4, 2, 16};
    kern_call small_mb = {K_ZERO, 1024, 512, 2048, 1024, 256, 4, 256, 8, 8, 64};
    double tb, ts, sb, ss;
    ew_workload(&tiny_mb, &e, kern, &tb, &ts);
    ew_workload(&small_mb, &e, kern, &sb, &ss);
    double te, tt, se, st;
    softmax_workload(&tiny_mb, &e, kern, &te, &tt);
    softmax_workload(&small_mb, &e, kern, &se, &st);
    ew_free(&e);
    double ew_gbs = (tb + sb) / (ts + ss) / 1e9, sm_gelems = (te + se) / (tt + st) / 1e9;

    size_t cap = (size_t)1 << 27; /* 512 MiB each: past every cache, as a training step's working set is */
    float *a = NULL, *b = NULL, *c = NULL;
    if (moe_alloc((void **)&a, cap * 4, "calibrate A") != MOE_OK || moe_alloc((void **)&b, cap * 4, "calibrate B") != MOE_OK ||
        moe_alloc((void **)&c, cap * 4, "calibrate C") != MOE_OK) {
        moe_error_print(stderr, "moe bench calibrate");
        moe_free(a);
        moe_free(b);
        return 1;
    }
    for (size_t i = 0; i < cap; i++)
        a[i] = (float)((i * 7) % 13) * 0.01f, b[i] = (float)((i * 5) % 11) * 0.01f;
    /* gf: the raw rate (peak = the best); net: without the kernel overhead
    ** the model adds to every call itself (at most half the call taken off);
    ** _c: on cached operands (not part of the peak, which is out of cache) */
    double gf[NSHAPES], net[NSHAPES], gf_c[NSHAPES], net_c[NSHAPES], peak = 0;
    for (int i = 0; i < NSHAPES; i++)
        for (int cached = 0; cached < 2; cached++)
            rate_gemm(i, a, b, c, cap, cached, kern, cached ? gf_c : gf, cached ? net_c : net);
    int bad = remeasure_stalled(a, b, c, cap, kern, gf, net, gf_c, net_c);
    moe_free(a);
    moe_free(b);
    moe_free(c);
    if (bad >= 0)
        return 1;
    for (int i = 0; i < NSHAPES; i++)
        peak = gf[i] > peak ? gf[i] : peak;
    double small_flops = 0, small_time = 0; /* FLOP-weighted: total flops / total time at peak units */
    for (int i = 0; i < NSHAPES; i++)
        if (SHAPES[i].small) {
            double fl = 2.0 * SHAPES[i].M * SHAPES[i].K * SHAPES[i].N;
            small_flops += fl, small_time += fl / net[i];
        }
    double small_eff = small_flops / small_time / peak;
    point pts[NSHAPES], pts_c[NSHAPES];
    int m = efficiency_points(gf, net, peak, kern, pts), m_c = efficiency_points(gf_c, net_c, peak, kern, pts_c);
    moe_attention_rates att;
    moe_optimizer_rate opt;
    if (moe_calibrate_attention(kern, &att) != MOE_OK || moe_calibrate_optimizer(&opt) != MOE_OK) {
        moe_error_print(stderr, "moe bench calibrate");
        return 1;
    }
    double membw = triad_gbs(), lat_us = 0, p2p_gbs = 0, a2a_us = 0, ar_us = 0;
    double over_us = 0;
    int have_mpi = run_pingpong(&lat_us, &p2p_gbs, &a2a_us, &ar_us) == 0 && run_pingpong_over(ncores, &over_us) == 0;
    if (membw <= 0 || !have_mpi) {
        fprintf(stderr, "moe bench calibrate: error: %s failed\n",
                membw <= 0 ? "the triad" : "the MPI ping-pong (mpirun -np 2, and 2 x cores oversubscribed)");
        return 1;
    }

    char date[32], src[700];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d", gmtime(&now));
    FILE *f = out ? fopen(out, "w") : stdout;
    if (!f) {
        fprintf(stderr, "moe bench calibrate: error: cannot write %s\n", out);
        return 1;
    }
    char load[64] = "?";
    FILE *la = fopen("/proc/loadavg", "r");
    if (la) {
        if (!fgets(load, sizeof load, la))
            snprintf(load, sizeof load, "?");
        load[strcspn(load, "\n")] = 0;
        fclose(la);
    }
    const char *shown = base.path; /* the shipped profile names its base inside the tree, not this checkout's path */
    size_t root = strlen(MOE_SRC_DIR);
    if (strncmp(shown, MOE_SRC_DIR, root) == 0 && shown[root] == '/')
        shown += root + 1;
    fprintf(f, "# written by `moe bench calibrate%s` on %s (%d of %d cores, load average %s at the end); keys not "
            "measured come from %s\n", threads > 0 ? " --threads N" : "", date, cores, ncores, load, shown);
    if (cores < ncores)
        fprintf(f, "name: %s-calibrated-%dt\n", base.name, cores);
    else
        fprintf(f, "name: %s-calibrated\n", base.name);
    fprintf(f, "description: \"%s\"\n", base.description);
    put(f, "dtype", "fp32", "moe.c trains in fp32; calibrate times sgemm");
    snprintf(src, sizeof src,
             "measured by moe bench calibrate on %s: the best median sgemm rate over squares 16..2048 and the tiny/small "
             "training shapes, %d thread(s): %.1f GFLOP/s",
             date, cores, peak);
    put_num(f, "gemm_tflops", peak / 1e3, src);
    snprintf(src, sizeof src,
             "measured by moe bench calibrate on %s: the FLOP-weighted sgemm efficiency of configs/small.yaml's "
             "forward shapes (used where the table below is not)",
             date);
    put_num(f, "gemm_efficiency", small_eff, src);
    snprintf(src, sizeof src, "measured by moe bench calibrate on %s: triad a = b + 3c, 3 x 128 MiB doubles, %d thread(s), median of 5",
             date, cores);
    put_num(f, "mem_bw_gbs", membw, src);
    put_base(f, &base, MOE_HW_MEM_GIB, base.mem_gib, NULL);
    put_base(f, &base, MOE_HW_RANKS_PER_NODE, base.ranks_per_node, NULL);
    put_base(f, &base, MOE_HW_SHARED, base.shared, NULL);
    char b2[256];
    snprintf(b2, sizeof b2, "; ping-pong measured by moe bench calibrate on %s: %.2f GB/s one way for 16 MiB (a "
             "point-to-point rate, not the all-to-all rate the model uses)", date, p2p_gbs);
    put_base(f, &base, MOE_HW_INTRA_GBS, base.intra_gbs, b2);
    snprintf(src, sizeof src,
             "measured by moe bench calibrate on %s: MPI_Alltoall of 4 bytes per rank on 2 local ranks (one "
             "message each way), median of 1001 (ping-pong half round trip %.3f us; 4-byte MPI_Allreduce %.3f us)",
             date, lat_us, ar_us);
    put_num(f, "intra_node_latency_us", a2a_us, src);
    put_base(f, &base, MOE_HW_INTER_GBS, base.inter_gbs, NULL);
    put_base(f, &base, MOE_HW_INTER_LAT_US, base.inter_lat_us, NULL);
    put_base(f, &base, MOE_HW_INTER_BURST_KB, base.inter_burst_kb, NULL);
    put_base(f, &base, MOE_HW_LINK_EFFICIENCY, base.link_efficiency, NULL);
    snprintf(src, sizeof src,
             "measured by moe bench calibrate on %s: median call of the runtime's kernels on the least input (1x1x1 "
             "GEMM; one row of RMSNorm, SwiGLU, permute, unpermute; a 64-float residual add; a 256-byte memset), "
             "%d thread(s), mean of the seven",
             date, cores);
    put_num(f, "kernel_overhead_us", kern * 1e6, src);
    snprintf(src, sizeof src,
             "measured by moe bench calibrate on %s: the runtime's element-wise kernels (RMSNorm, RoPE, SwiGLU, "
             "permute, unpermute, residual add, memset, cross-entropy backward; forward and backward) on one layer "
             "of configs/tiny.yaml (micro-batch 2: %.1f GB/s) and configs/small.yaml (micro-batch 4: %.1f GB/s), "
             "%d thread(s), bytes as the cost model counts them / median time less the kernel overhead, both together",
             date, tb / ts / 1e9, sb / ss / 1e9, cores);
    put_num(f, "elementwise_gbs", ew_gbs, src);
    snprintf(src, sizeof src,
             "measured by moe bench calibrate on %s: the runtime's softmax over the vocabulary (cross-entropy "
             "forward: max, exp, sum, normalise) on configs/tiny.yaml's micro-batch (128 x 256: %.3f G/s) and "
             "configs/small.yaml's (1024 x 256: %.3f G/s), %d thread(s), elements / median time less the kernel "
             "overhead, both together",
             date, te / tt / 1e9, se / st / 1e9, cores);
    put_num(f, "softmax_gelems", sm_gelems, src);
    put_attention(f, "attention_gelems", date, "the runtime's attention kernel (layers/attention.c, forward and "
                  "backward of one layer)", "causal score elements", att.us[0], att.tiny_gelems, att.small_gelems,
                  cores, att.gelems);
    put_attention(f, "attention_block_gelems", date,
                  "the runtime's blocked attention kernel (layers/attention_block.c) as one of 2 context-parallel "
                  "ranks runs it (both ring hops, forward and backward of one layer)",
                  "tile elements", att.us[1], att.tiny_block, att.small_block, cores, att.block_gelems);
    snprintf(src, sizeof src,
             "measured by moe bench calibrate on %s: the runtime's optimizer step (moe_sum_squares for the gradient "
             "norm, then moe_adamw_update) on %.0fk parameters (%.3f G/s) and %.0fM (%.3f G/s), %d thread(s), the "
             "best of 3 windows' mean step, parameters / seconds, both together",
             date, opt.tiny_n / 1e3, opt.tiny_gparams, opt.large_n / 1048576.0, opt.large_gparams, cores);
    put_num(f, "optimizer_gparams", opt.gparams, src);
    snprintf(src, sizeof src, "measured by moe bench calibrate on %s: online processors (sysconf)", date);
    put_num(f, "cores", ncores, src);
    snprintf(src, sizeof src,
             "the threads moe bench calibrate measured with on %s (%s): the rates above are one rank's at %d "
             "thread%s",
             date, threads > 0 ? "--threads" : "all cores", cores, cores > 1 ? "s" : "");
    put_num(f, "threads", cores, src);
    snprintf(src, sizeof src,
             "measured by moe bench calibrate on %s: %d ranks on the %d cores (mpirun --oversubscribe --mca "
             "mpi_yield_when_idle 1, one thread each, as moe train starts them), pairs ping-pong 8 bytes with 50 us "
             "of work between messages, median half round trip of 1001",
             date, 2 * ncores, ncores);
    put_num(f, "oversubscribed_latency_us", over_us, src);
    put_core_cache(f, date);
    snprintf(src, sizeof src,
             "measured by moe bench calibrate on %s: sgemm rate at each size, %d thread(s) (the median call, operands "
             "out of cache, less kernel_overhead_us, which the model adds per call; calls under twice it left out) / "
             "%.1f GFLOP/s", date, cores, peak);
    put_table(f, "gemm_efficiency_table", src, pts, m);
    snprintf(src, sizeof src,
             "measured by moe bench calibrate on %s: the same with every call on the same operands (in cache, as the "
             "attention kernels' tile GEMMs find theirs) / %.1f GFLOP/s", date, peak);
    put_table(f, "gemm_efficiency_table_cached", src, pts_c, m_c);
    if (out && fclose(f) != 0) {
        fprintf(stderr, "moe bench calibrate: error: cannot write %s\n", out);
        return 1;
    }
    if (json) {
        printf("{\"bench\": \"calibrate\", \"peak_gflops\": %.2f, \"mem_bw_gbs\": %.2f, \"mpi_latency_us\": %.3f, "
               "\"mpi_gbs\": %.3f, \"mpi_alltoall_us\": %.3f, \"mpi_allreduce_us\": %.3f, \"mpi_oversubscribed_us\": %.3f, "
               "\"kernel_overhead_us\": %.3f, \"elementwise_gbs\": %.2f, \"elementwise_tiny_gbs\": %.2f, "
               "\"elementwise_small_gbs\": %.2f, \"softmax_gelems\": %.4f, \"attention_gelems\": %.4f, "
               "\"attention_block_gelems\": %.4f, \"optimizer_gparams\": %.4f, \"threads\": %d, "
               "\"small_sgemm_efficiency\": %.4f, \"gemm\": [",
               peak, membw, lat_us, p2p_gbs, a2a_us, ar_us, over_us, kern * 1e6, ew_gbs, tb / ts / 1e9, sb / ss / 1e9, sm_gelems,
               att.gelems, att.block_gelems, opt.gparams, cores, small_eff);
        for (int i = 0; i < NSHAPES; i++)
            printf("%s{\"m\": %d, \"k\": %d, \"n\": %d, \"what\": \"%s\", \"gflops\": %.2f, \"net_gflops\": %.2f, "
                   "\"cached_gflops\": %.2f}",
                   i ? ", " : "", SHAPES[i].M, SHAPES[i].K, SHAPES[i].N, SHAPES[i].what, gf[i], net[i], gf_c[i]);
        printf("], \"elementwise\": [");
        for (int i = 0; i < ew_nrec; i++)
            printf("%s{\"kernel\": \"%s\", \"tokens\": %d, \"bytes\": %.0f, \"us\": %.3f}", i ? ", " : "",
                   KNAME[ew_recs[i].k], ew_recs[i].tokens, ew_recs[i].bytes, ew_recs[i].us);
        printf("]}\n");
    } else if (out) {
        for (int i = 0; i < NSHAPES; i++)
            printf("sgemm %5d x %5d x %5d  %-44s %8.2f GFLOP/s (%.3f of peak; %.3f without the kernel overhead; "
                   "cached %.2f)\n", SHAPES[i].M, SHAPES[i].K, SHAPES[i].N, SHAPES[i].what, gf[i], gf[i] / peak,
                   net[i] / peak, gf_c[i]);
        printf("triad %.2f GB/s; MPI ping-pong %.2f us, %.2f GB/s; 4-byte MPI_Alltoall %.2f us, MPI_Allreduce %.2f us "
               "(2 ranks); %d ranks on %d cores %.2f us\n", membw, lat_us, p2p_gbs, a2a_us, ar_us, 2 * ncores, ncores,
               over_us);
        printf("attention (CP 1) tiny %.1f us (outside its GEMMs and calls %.1f), small %.1f (%.1f): %.3f G "
               "elements/s; "
               "blocked (CP 2) tiny %.1f (%.1f), small %.1f (%.1f): %.3f G elements/s\n", att.us[0][0],
               att.own_us[0][0], att.us[0][1], att.own_us[0][1], att.gelems, att.us[1][0], att.own_us[1][0],
               att.us[1][1], att.own_us[1][1], att.block_gelems);
        printf("kernel overhead %.3f us; element-wise %.2f GB/s (tiny %.2f, small %.2f); softmax %.3f G elements/s; "
               "optimizer %.3f G parameters/s (%.0fk %.3f, %.0fM %.3f); wrote %s\n", kern * 1e6, ew_gbs, tb / ts / 1e9,
               sb / ss / 1e9, sm_gelems, opt.gparams, opt.tiny_n / 1e3, opt.tiny_gparams, opt.large_n / 1048576.0,
               opt.large_gparams, out);
    }
    return 0;
}
