/*
** moe-bench: benchmark programs behind `moe bench`.
**
**   moe bench gemm  [--size N] [--reps R] [--json]
**       measures the fp32 GEMM peak (the MFU denominator) and caches it.
**   moe bench a2a [--nproc N] ...   (perf/bench_a2a.c, under mpirun)
**   moe bench layer [--nproc N | --hosts N --link-rate R] ...   (perf/bench_layer.c:
**       one MoE layer's expert part under overlap none / coarse / fine)
**   moe bench lockstep [--nproc N] [--calls K1,..] ...   (perf/bench_lockstep.c, under mpirun:
**       GEMM work between all-reduces against the same work alone)
**   moe bench calibrate [--out FILE] [--base PROFILE] [--threads N] [--json]   (perf/bench_calibrate.c:
**       sgemm at training shapes, triad, MPI ping-pong; writes a hardware profile)
**   moe bench train [--config F] [--<model key> V ...] [--steps S] [--warmup W]
**                   [--vs-torch] [--json]
**       times optimizer steps of the model on random tokens; with --vs-torch,
**       times the PyTorch model of tests/oracle on the same config and thread
**       count in the same run and reports the ratio.
** Numbers are measured, never estimated; --json prints one object on stdout.
*/
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "perf/bench.h"
#include "runtime/base/cpu.h"
#include "runtime/base/mem.h"
#include "runtime/base/rng.h"
#include "runtime/base/timer.h"
#include "runtime/peak.h"
#include "runtime/trainer.h"

static int fail(moe_status st)
{
    moe_error_print(stderr, "moe bench");
    return moe_exit_code(st);
}

static int bench_gemm(int argc, char **argv)
{
    int size = 2048, reps = 5, json = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (strcmp(argv[i], "--size") == 0 && i + 1 < argc)
            size = atoi(argv[++i]);
        else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "moe bench gemm: error: unknown argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (size < 64 || reps < 1) {
        fprintf(stderr, "moe bench gemm: error: --size must be >= 64 and --reps >= 1\n");
        return 2;
    }
    moe_peak p;
    moe_status st = moe_peak_measure(&p, size, reps);
    if (st != MOE_OK)
        return fail(st);
    double measured = p.gflops;
    if ((st = moe_peak_store(&p)) != MOE_OK)
        return fail(st);
    char path[1024];
    moe_peak_cache_path(path, sizeof path);
    if (json)
        printf("{\"bench\": \"gemm\", \"gflops\": %.2f, \"peak_gflops\": %.2f, \"threads\": %d, \"size\": %d, "
               "\"coretype\": \"%s\"}\n", measured, p.gflops, p.threads, size, p.coretype);
    else
        printf("sgemm %dx%dx%d, %d threads, BLAS core %s: %.1f GFLOP/s (peak on record %.1f, in %s)\n", size, size,
               size, p.threads, p.coretype, measured, p.gflops, path);
    return 0;
}

/* Runs perf/torch_bench.py on the same model and threads; fills its tokens/s. */
static int run_torch(const moe_config *c, int steps, int warmup, double *tok_s)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 %s/perf/torch_bench.py --threads %d --steps %d --warmup %d "
             "--num-layers %d --hidden-size %d --num-attention-heads %d --num-query-groups %d "
             "--num-experts %d --moe-router-topk %d --moe-ffn-hidden-size %d --ffn-hidden-size %d "
             "--moe-shared-expert-intermediate-size %d --seq-length %d --micro-batch-size %d "
             "--vocab-size %d",
             MOE_SRC_DIR, omp_get_max_threads(), steps, warmup, c->num_layers, c->hidden_size,
             c->num_attention_heads, c->num_query_groups, c->num_experts, c->moe_router_topk,
             c->moe_ffn_hidden_size, c->ffn_hidden_size, c->moe_shared_expert_intermediate_size,
             c->seq_length, c->global_batch_size, c->vocab_size);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    char line[4096];
    int found = 0;
    while (fgets(line, sizeof line, p)) {
        char *k = strstr(line, "\"tokens_per_s\":");
        if (k && sscanf(k, "\"tokens_per_s\": %lf", tok_s) == 1)
            found = 1;
    }
    int rc = pclose(p);
    return found && rc == 0 ? 0 : -1;
}

static int bench_train(int argc, char **argv)
{
    int steps = 5, warmup = 2, json = 0, vs_torch = 0;
    char *rest[argc + 1];
    int nrest = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (strcmp(argv[i], "--vs-torch") == 0)
            vs_torch = 1;
        else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--warmup") == 0 && i + 1 < argc)
            warmup = atoi(argv[++i]);
        else
            rest[nrest++] = argv[i];
    }
    moe_config c;
    moe_config_defaults(&c);
    moe_status st = moe_config_parse_args(&c, nrest, rest, 0);
    if (st == MOE_OK && c.vocab_size == 0)
        c.vocab_size = 256;
    if (st == MOE_OK)
        st = moe_config_validate(&c);
    if (st != MOE_OK)
        return fail(st);
    moe_cpu_set_threads(c.num_threads);

    moe_peak peak;
    moe_trainer *t = NULL;
    int32_t *in = NULL, *tg = NULL;
    size_t n = (size_t)c.global_batch_size * c.seq_length;
    if ((st = moe_peak_get(&peak)) != MOE_OK || (st = moe_trainer_create(&t, &c)) != MOE_OK ||
        (st = moe_alloc((void **)&in, n * sizeof *in, "tokens")) != MOE_OK ||
        (st = moe_alloc((void **)&tg, n * sizeof *tg, "targets")) != MOE_OK)
        return fail(st);
    moe_rng rng;
    moe_rng_seed(&rng, 7);
    double best = 1e30, total = 0;
    for (int s = 0; s < warmup + steps; s++) {
        for (size_t i = 0; i < n; i++) {
            in[i] = (int32_t)moe_rng_below(&rng, (uint64_t)c.vocab_size);
            tg[i] = (int32_t)moe_rng_below(&rng, (uint64_t)c.vocab_size);
        }
        moe_train_metrics r;
        double t0 = moe_now();
        if ((st = moe_trainer_step(t, in, tg, s, &r)) != MOE_OK)
            return fail(st);
        double dt = moe_now() - t0;
        if (s >= warmup) {
            total += dt;
            best = dt < best ? dt : best;
        }
    }
    double step_s = total / steps;
    double tok_s = (double)n / step_s;
    double tflops = tok_s * moe_flops_per_token(&c) / 1e12;
    double mfu = tflops * 1e3 / peak.gflops;
    double torch_tok_s = 0;
    int have_torch = vs_torch && run_torch(&c, steps, warmup, &torch_tok_s) == 0;
    if (json) {
        printf("{\"bench\": \"train\", \"tokens_per_s\": %.1f, \"step_ms\": %.2f, \"best_step_ms\": %.2f, "
               "\"tflops\": %.4f, \"mfu\": %.4f, \"peak_gflops\": %.2f, \"threads\": %d, \"steps\": %d",
               tok_s, step_s * 1e3, best * 1e3, tflops, mfu, peak.gflops, omp_get_max_threads(), steps);
        if (have_torch)
            printf(", \"torch_tokens_per_s\": %.1f, \"speedup_vs_torch\": %.3f", torch_tok_s, tok_s / torch_tok_s);
        printf("}\n");
    } else {
        printf("moe.c   : %.1f tokens/s, %.1f ms/step, %.4f TFLOP/s, MFU %.1f%% (peak %.1f GFLOP/s, %d threads)\n",
               tok_s, step_s * 1e3, tflops, 100 * mfu, peak.gflops, omp_get_max_threads());
        if (have_torch)
            printf("pytorch : %.1f tokens/s  -> moe.c is %.2fx\n", torch_tok_s, tok_s / torch_tok_s);
    }
    if (vs_torch && !have_torch)
        fprintf(stderr, "moe bench train: the PyTorch comparison did not run (is python3-torch installed?)\n");
    moe_free(in);
    moe_free(tg);
    moe_trainer_free(t);
    return vs_torch && !have_torch ? 1 : 0;
}

int main(int argc, char **argv)
{
    moe_cpu_pick_blas_kernels(argv);
    if (argc < 2 || strcmp(argv[1], "--help") == 0) {
        printf("usage: moe bench gemm [--size N] [--reps R] [--json]\n"
               "       moe bench train [--config F] [--<key> V ...] [--steps S] [--warmup W] [--vs-torch] [--json]\n"
               "       moe bench planner [--json] [--points LxExN,.. | --layers-list/--experts-list/--ranks-list ..]\n"
               "                         [--methods M[:R],..] [--hw FILE] ...   (placement methods over a grid)\n"
               "       moe bench planner --gen-trace FILE [--layers L --experts E --topk K --skew S --seed N ...]\n"
               "       moe bench a2a [--nproc N] [--tokens T] [--hidden C] [--topk K] [--experts E] [--iters I] [--json]\n"
               "       moe bench layer [--nproc N | --hosts N [--link-rate RATE]] [--tokens T] [--hidden H] [--ffn F]\n"
               "                       [--experts E] [--topk K] [--skew S] [--iters I] [--warmup W] [--chunks D]\n"
               "                       [--trace FILE] [--json]\n"
               "       moe bench lockstep [--nproc N] [--calls K1,K2,..] [--shape MxKxN] [--rounds R] [--iters I] [--json]\n"
               "       moe bench calibrate [--out FILE] [--base PROFILE] [--threads N] [--json]\n");
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "gemm") == 0)
        return bench_gemm(argc - 2, argv + 2);
    if (strcmp(argv[1], "train") == 0)
        return bench_train(argc - 2, argv + 2);
    if (strcmp(argv[1], "a2a") == 0)
        return moe_bench_a2a(argc - 2, argv + 2);
    if (strcmp(argv[1], "layer") == 0)
        return moe_bench_layer(argc - 2, argv + 2);
    if (strcmp(argv[1], "planner") == 0)
        return moe_bench_planner(argc - 2, argv + 2);
    if (strcmp(argv[1], "calibrate") == 0)
        return moe_bench_calibrate(argc - 2, argv + 2);
    if (strcmp(argv[1], "lockstep") == 0)
        return moe_bench_lockstep(argc - 2, argv + 2);
    fprintf(stderr, "moe bench: error: unknown benchmark '%s' (gemm, train, a2a, layer, planner, calibrate, lockstep)\n", argv[1]);
    return 2;
}
