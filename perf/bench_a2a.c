/*
** moe bench a2a: the expert dispatcher's token exchange against a bare
** MPI_Alltoallv of the same bytes, run under mpirun (`moe bench a2a --nproc N`).
**
** Every rank routes `tokens` tokens of width `hidden` to top-k of `experts`
** experts spread over all ranks (uniform random routing, seeded per rank).
** One iteration is what a training step's MoE layer exchanges: forward
** dispatch (gathering each peer's rows from the token activations as it
** sends them) + combine, backward dispatch + combine (the experts themselves are
** skipped: combine sends the dispatched rows straight back). The baseline is
** four MPI_Alltoallv calls with exactly the same counts, on buffers already
** laid out: what the exchange costs with no counting, permuting or regrouping.
** Reported: median times over the iterations and bare / dispatcher (1.0 =
** the dispatcher adds nothing; the goal is >= 0.9).
*/
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layers/experts.h"
#include "parallel/ep.h"
#include "perf/bench.h"
#include "runtime/base/rng.h"
#include "runtime/base/timer.h"

typedef struct {
    int tokens, hidden, topk, experts, iters, json;
} a2a_args;

static const char *USAGE =
    "usage: moe bench a2a [--nproc N] [--tokens T] [--hidden C] [--topk K] [--experts E] [--iters I] [--json]\n"
    "  the dispatcher's exchange (forward dispatch + combine, backward the same) against four bare\n"
    "  MPI_Alltoallv of the same counts, on N local ranks (default 4); defaults: 4096 tokens per rank,\n"
    "  hidden 1024, top-2 of 16 experts, 20 iterations. Prints median times and bare / dispatcher.\n";

/* 0: run; -1: --help printed; 2: bad usage. */
static int parse(int argc, char **argv, a2a_args *a)
{
    *a = (a2a_args){.tokens = 4096, .hidden = 1024, .topk = 2, .experts = 16, .iters = 20};
    for (int i = 0; i < argc; i++) {
        int *dst = NULL;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(USAGE, stdout);
            return -1;
        }
        if (strcmp(argv[i], "--json") == 0) { a->json = 1; continue; }
        if (strcmp(argv[i], "--tokens") == 0) dst = &a->tokens;
        else if (strcmp(argv[i], "--hidden") == 0) dst = &a->hidden;
        else if (strcmp(argv[i], "--topk") == 0) dst = &a->topk;
        else if (strcmp(argv[i], "--experts") == 0) dst = &a->experts;
        else if (strcmp(argv[i], "--iters") == 0) dst = &a->iters;
        if (!dst || i + 1 >= argc || (*dst = atoi(argv[++i])) <= 0) {
            fprintf(stderr, "moe bench a2a: error: bad argument '%s'\n%s", argv[i], USAGE);
            return 2;
        }
    }
    return 0;
}

int moe_bench_a2a(int argc, char **argv)
{
    a2a_args a;
    int rc = parse(argc, argv, &a);
    if (rc)
        return rc < 0 ? 0 : rc;
    moe_comm *world;
    moe_status st = moe_comm_init(&argc, &argv);
    if (st == MOE_OK)
        st = moe_comm_world(&world);
    if (st != MOE_OK) {
        moe_error_print(stderr, "moe bench a2a");
        return 1;
    }
    int P = moe_comm_size(world), rank = moe_comm_rank(world);
    if (a.experts % P != 0 || a.topk > a.experts) {
        if (rank == 0)
            fprintf(stderr, "moe bench a2a: error: experts (%d) must be a multiple of ranks (%d) and >= topk (%d)\n",
                    a.experts, P, a.topk);
        moe_comm_finalize();
        return 2;
    }
    int N = a.tokens, C = a.hidden, K = a.topk, E = a.experts, R = N * K;
    moe_expert_map map;
    moe_expert_map_contiguous(&map, E, P, rank);
    int32_t *slots = malloc(sizeof(int32_t) * R), *counts = malloc(sizeof(int32_t) * E);
    int32_t *offsets = malloc(sizeof(int32_t) * (E + 1)), *slot_row = malloc(sizeof(int32_t) * R);
    int32_t *row_token = malloc(sizeof(int32_t) * R), *row_slot = malloc(sizeof(int32_t) * R);
    float *x = malloc(sizeof(float) * (size_t)N * C), *xs = malloc(sizeof(float) * (size_t)R * C);
    float *back = malloc(sizeof(float) * (size_t)R * C);
    moe_rng rng;
    moe_rng_seed(&rng, 1234 + (uint64_t)rank);
    for (int n = 0; n < N; n++) /* k distinct experts per token */
        for (int k = 0; k < K; k++) {
            int e, dup;
            do {
                e = (int)moe_rng_below(&rng, (uint64_t)E);
                dup = 0;
                for (int j = 0; j < k; j++)
                    dup |= slots[n * K + j] == e;
            } while (dup);
            slots[n * K + k] = e;
        }
    for (size_t i = 0; i < (size_t)N * C; i++)
        x[i] = (float)moe_rng_uniform(&rng);
    moe_route_plan(counts, offsets, slot_row, row_token, row_slot, slots, NULL, N, E, K, 0, MOE_DROP_POSITION, 0);

    moe_permute_forward(xs, x, row_token, R, C); /* the bare baseline's rows, already in place */
    moe_ep_layer s;
    memset(&s, 0, sizeof s);
    double *t_disp = malloc(sizeof(double) * a.iters), *t_bare = malloc(sizeof(double) * a.iters);
    for (int it = -2; it < a.iters; it++) { /* two warm-up iterations */
        moe_barrier(world);
        double t0 = moe_now();
        st = moe_ep_dispatch(&s, world, &map, x, row_token, xs, offsets, C, 1);
        if (st == MOE_OK)
            st = moe_ep_combine(&s, world, &map, s.xr, C, back);
        if (st == MOE_OK)
            st = moe_ep_dispatch_again(&s, world, &map, back, C, s.ye);
        if (st == MOE_OK)
            st = moe_ep_combine(&s, world, &map, s.ye, C, back);
        double t1 = moe_now();
        if (st != MOE_OK) {
            moe_error_print(stderr, "moe bench a2a");
            moe_comm_abort(1);
        }
        /* the same bytes with bare MPI_Alltoallv, counts already known */
        int sc[P], sd[P], rcn[P], rd[P];
        for (int p = 0, so = 0, ro = 0; p < P; p++) {
            sc[p] = (int)(s.send_rows[p] * C);
            rcn[p] = (int)(s.recv_rows[p] * C);
            sd[p] = so;
            rd[p] = ro;
            so += sc[p];
            ro += rcn[p];
        }
        moe_barrier(world);
        double t2 = moe_now();
        for (int rep = 0; rep < 2; rep++) {
            MPI_Alltoallv(xs, sc, sd, MPI_FLOAT, s.xr, rcn, rd, MPI_FLOAT, MPI_COMM_WORLD);
            MPI_Alltoallv(s.xr, rcn, rd, MPI_FLOAT, back, sc, sd, MPI_FLOAT, MPI_COMM_WORLD);
        }
        double t3 = moe_now();
        if (it >= 0) {
            t_disp[it] = t1 - t0;
            t_bare[it] = t3 - t2;
        }
    }
    /* the slowest rank sets the pace */
    moe_allreduce(world, t_disp, (size_t)a.iters, MOE_DT_F64, MOE_OP_MAX);
    moe_allreduce(world, t_bare, (size_t)a.iters, MOE_DT_F64, MOE_OP_MAX);
    double md = moe_bench_median(t_disp, a.iters), mb = moe_bench_median(t_bare, a.iters);
    double bytes = 4.0 * (double)R * C * sizeof(float); /* per rank, per iteration */
    if (rank == 0) {
        if (a.json)
            printf("{\"bench\": \"a2a\", \"ranks\": %d, \"tokens\": %d, \"hidden\": %d, \"topk\": %d, \"experts\": %d, "
                   "\"dispatcher_ms\": %.3f, \"bare_alltoallv_ms\": %.3f, \"ratio\": %.3f, \"dispatcher_gbps\": %.3f}\n",
                   P, N, C, K, E, md * 1e3, mb * 1e3, mb / md, bytes / md / 1e9);
        else
            printf("a2a: %d ranks, %d tokens x %d, top-%d of %d experts: dispatcher %.3f ms, bare MPI_Alltoallv "
                   "%.3f ms, ratio %.3f (%.2f GB/s per rank)\n",
                   P, N, C, K, E, md * 1e3, mb * 1e3, mb / md, bytes / md / 1e9);
    }
    moe_ep_layer_free(&s);
    moe_expert_map_free(&map);
    free(slots); free(counts); free(offsets); free(slot_row); free(row_token); free(row_slot);
    free(x); free(xs); free(back); free(t_disp); free(t_bare);
    moe_comm_finalize();
    return 0;
}
