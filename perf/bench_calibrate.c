/*
** moe bench calibrate [--out FILE] [--base PROFILE] [--json]: measures this
** machine for the cost model and writes a hardware profile (planner/
** hwprofile.h's format) whose measured numbers say "measured by moe bench
** calibrate on <date>":
**
**   - sgemm GFLOP/s (through layers/gemm, the trainer's BLAS and threads, all
**     cores) at square sizes 64..2048 and the skinny shapes training runs:
**     M = tokens of a micro-batch or per-expert rows, K/N = the hidden and FFN
**     sizes of configs/tiny.yaml and configs/small.yaml. gemm_tflops is the
**     best rate; gemm_efficiency_table the efficiency against it by GEMM
**     FLOPs, scaled by one global factor (below);
**   - memory bandwidth: triad a = b + 3c over 3 x 128 MiB doubles, best of 5;
**   - MPI ping-pong between 2 local ranks: min half round trip of 8 bytes and
**     the one-way rate of 16 MiB. It runs as `mpirun -np 2 moe-bench
**     calibrate --pingpong` started from here, so the GEMM and triad timings
**     run alone on the machine.
**
** The model's efficiency is MFU-like (element-wise work is inside it), so the
** table is sgemm efficiency x s with one s for every size: s = the base
** profile's gemm_efficiency (derived from configs/small.yaml's measured MFU)
** / the FLOP-weighted sgemm efficiency of small.yaml's shapes, which keeps
** small's calibration and lets the size dependence come from measurement.
** Keys not measured here (memory size, ranks per node, shared, the link
** rates and the inter-node latency) are copied from --base with their
** sources (default configs/hw/this-machine.yaml).
*/
#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "layers/gemm.h"
#include "perf/bench.h"
#include "planner/hwprofile.h"
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
    {64, 64, 64, "square", 0}, {128, 128, 128, "square", 0}, {256, 256, 256, "square", 0},
    {512, 512, 512, "square", 0}, {1024, 1024, 1024, "square", 0}, {2048, 2048, 2048, "square", 0},
    {128, 64, 128, "tiny qkv, 128 tokens", 0}, {64, 64, 256, "tiny expert w13, 64 rows", 0},
    {512, 64, 128, "tiny qkv", 0}, {512, 64, 64, "tiny out proj", 0}, {256, 64, 256, "tiny expert w13", 0},
    {256, 128, 64, "tiny expert w2", 0}, {512, 64, 256, "tiny lm head", 0},
    {1024, 512, 1536, "small qkv", 1}, {1024, 512, 512, "small out proj", 1},
    {256, 512, 2048, "small expert w13", 1}, {256, 1024, 512, "small expert w2", 1},
    {1024, 512, 256, "small lm head", 1},
};
#define NSHAPES ((int)(sizeof SHAPES / sizeof SHAPES[0]))

/* Best GFLOP/s of C = A B^T at (M, K, N) over at least 5 runs and 0.2 s. */
static double time_gemm(const shape *s, float *a, float *b, float *c)
{
    moe_gemm(0, 1, s->M, s->N, s->K, 1.0f, a, s->K, b, s->K, 0.0f, c, s->N);
    double best = 1e30, start = moe_now();
    for (int r = 0; r < 5 || moe_now() - start < 0.2; r++) {
        double t0 = moe_now();
        moe_gemm(0, 1, s->M, s->N, s->K, 1.0f, a, s->K, b, s->K, 0.0f, c, s->N);
        double dt = moe_now() - t0;
        best = dt < best ? dt : best;
    }
    return 2.0 * s->M * s->K * (double)s->N / best / 1e9;
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
    double best = 1e30;
    for (int r = 0; r < 5; r++) {
        double t = moe_now();
#pragma omp parallel for
        for (size_t i = 0; i < n; i++)
            a[i] = b[i] + 3.0 * c[i];
        t = moe_now() - t;
        best = t < best ? t : best;
    }
    int ok = a[7] == 7.0;
    moe_free(a);
    moe_free(b);
    moe_free(c);
    return ok ? 24.0 * n / best / 1e9 : -1;
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
    if (r == 0)
        printf("pingpong %.3f %.3f\n", lat * 1e6, bw / 1e9);
    free(buf);
    MPI_Finalize();
    return 0;
}

/* Starts `mpirun -np 2 <this program> calibrate --pingpong`; 0 on success. */
static int run_pingpong(double *lat_us, double *gbs)
{
    char self[1024], cmd[1400];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return -1;
    self[n] = 0;
    snprintf(cmd, sizeof cmd, "mpirun -np 2 --oversubscribe --bind-to none %s %s calibrate --pingpong",
             geteuid() == 0 ? "--allow-run-as-root" : "", self);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    char line[256];
    int found = 0;
    while (fgets(line, sizeof line, p))
        found |= sscanf(line, "pingpong %lf %lf", lat_us, gbs) == 2;
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
    int json = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--pingpong") == 0)
            return pingpong();
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            out = argv[++i];
        else if (strcmp(argv[i], "--base") == 0 && i + 1 < argc)
            base_path = argv[++i];
        else {
            fprintf(stderr, "moe bench calibrate: error: unknown argument '%s' (--out FILE, --base PROFILE, --json)\n",
                    argv[i]);
            return 2;
        }
    }
    moe_hwprofile base;
    if (moe_hwprofile_load(base_path, &base) != MOE_OK) {
        moe_error_print(stderr, "moe bench calibrate");
        return 2;
    }
    int cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    omp_set_num_threads(cores > 0 ? cores : 1);

    size_t cap = (size_t)2048 * 2048;
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
    double gf[NSHAPES], peak = 0;
    for (int i = 0; i < NSHAPES; i++) {
        gf[i] = time_gemm(&SHAPES[i], a, b, c);
        peak = gf[i] > peak ? gf[i] : peak;
    }
    moe_free(a);
    moe_free(b);
    moe_free(c);
    double small_flops = 0, small_time = 0; /* FLOP-weighted: total flops / total time at peak units */
    for (int i = 0; i < NSHAPES; i++)
        if (SHAPES[i].small) {
            double fl = 2.0 * SHAPES[i].M * SHAPES[i].K * SHAPES[i].N;
            small_flops += fl, small_time += fl / gf[i];
        }
    double small_eff = small_flops / small_time / peak, scale = base.gemm_efficiency / small_eff;
    point pts[NSHAPES];
    int np = 0;
    for (int i = 0; i < NSHAPES; i++)
        pts[np++] = (point){2.0 * SHAPES[i].M * SHAPES[i].K * SHAPES[i].N, gf[i] / peak};
    qsort(pts, (size_t)np, sizeof *pts, cmp_point);
    int m = 0; /* merge equal sizes (their mean) so the table's flops increase */
    for (int i = 0; i < np;) {
        int j = i;
        double sum = 0;
        for (; j < np && pts[j].flops == pts[i].flops; j++)
            sum += pts[j].eff;
        pts[m++] = (point){pts[i].flops, sum / (j - i)};
        i = j;
    }
    double membw = triad_gbs(), lat_us = 0, p2p_gbs = 0;
    int have_mpi = run_pingpong(&lat_us, &p2p_gbs) == 0;
    if (membw <= 0 || !have_mpi) {
        fprintf(stderr, "moe bench calibrate: error: %s failed\n", membw <= 0 ? "the triad" : "the MPI ping-pong (mpirun -np 2)");
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
    fprintf(f, "# written by `moe bench calibrate` on %s (%d cores); keys not measured come from %s\n", date, cores,
            base.path);
    fprintf(f, "name: %s-calibrated\ndescription: \"%s\"\n", base.name, base.description);
    put(f, "dtype", "fp32", "moe.c trains in fp32; calibrate times sgemm");
    snprintf(src, sizeof src,
             "measured by moe bench calibrate on %s: best sgemm rate over squares 64..2048 and the tiny/small "
             "training shapes, %d threads: %.1f GFLOP/s",
             date, cores, peak);
    put_num(f, "gemm_tflops", peak / 1e3, src);
    put_base(f, &base, MOE_HW_GEMM_EFFICIENCY, base.gemm_efficiency, NULL);
    snprintf(src, sizeof src, "measured by moe bench calibrate on %s: triad a = b + 3c, 3 x 128 MiB doubles, %d threads, best of 5",
             date, cores);
    put_num(f, "mem_bw_gbs", membw, src);
    put_base(f, &base, MOE_HW_MEM_GIB, base.mem_gib, NULL);
    put_base(f, &base, MOE_HW_RANKS_PER_NODE, base.ranks_per_node, NULL);
    put_base(f, &base, MOE_HW_SHARED, base.shared, NULL);
    char b2[256];
    snprintf(b2, sizeof b2, "; ping-pong measured by moe bench calibrate on %s: %.2f GB/s one way for 16 MiB (a "
             "point-to-point rate, not the all-to-all rate the model uses)", date, p2p_gbs);
    put_base(f, &base, MOE_HW_INTRA_GBS, base.intra_gbs, b2);
    snprintf(src, sizeof src, "measured by moe bench calibrate on %s: MPI ping-pong, 2 local ranks, 8 bytes, half round trip, min of 1000",
             date);
    put_num(f, "intra_node_latency_us", lat_us, src);
    put_base(f, &base, MOE_HW_INTER_GBS, base.inter_gbs, NULL);
    put_base(f, &base, MOE_HW_INTER_LAT_US, base.inter_lat_us, NULL);
    put_base(f, &base, MOE_HW_LINK_EFFICIENCY, base.link_efficiency, NULL);
    fprintf(f,
            "gemm_efficiency_table:\n  source: \"measured by moe bench calibrate on %s: sgemm rate / %.1f GFLOP/s at "
            "each size, times %.4f = %.2f (%s's gemm_efficiency) / %.4f (the FLOP-weighted sgemm efficiency of "
            "configs/small.yaml's shapes), one factor for every size\"\n  points:\n",
            date, peak, scale, base.gemm_efficiency, base.name, small_eff);
    for (int i = 0; i < m; i++) {
        double e = pts[i].eff * scale;
        fprintf(f, "    - [%.4g, %.4f]\n", pts[i].flops, e > 1 ? 1 : e);
    }
    if (out && fclose(f) != 0) {
        fprintf(stderr, "moe bench calibrate: error: cannot write %s\n", out);
        return 1;
    }
    if (json) {
        printf("{\"bench\": \"calibrate\", \"peak_gflops\": %.2f, \"mem_bw_gbs\": %.2f, \"mpi_latency_us\": %.3f, "
               "\"mpi_gbs\": %.3f, \"small_sgemm_efficiency\": %.4f, \"scale\": %.4f, \"gemm\": [",
               peak, membw, lat_us, p2p_gbs, small_eff, scale);
        for (int i = 0; i < NSHAPES; i++)
            printf("%s{\"m\": %d, \"k\": %d, \"n\": %d, \"what\": \"%s\", \"gflops\": %.2f}", i ? ", " : "", SHAPES[i].M,
                   SHAPES[i].K, SHAPES[i].N, SHAPES[i].what, gf[i]);
        printf("]}\n");
    } else if (out) {
        for (int i = 0; i < NSHAPES; i++)
            printf("sgemm %5d x %5d x %5d  %-26s %8.2f GFLOP/s  (%.3f of peak)\n", SHAPES[i].M, SHAPES[i].K, SHAPES[i].N,
                   SHAPES[i].what, gf[i], gf[i] / peak);
        printf("triad %.2f GB/s; MPI ping-pong %.2f us, %.2f GB/s; wrote %s\n", membw, lat_us, p2p_gbs, out);
    }
    return 0;
}
