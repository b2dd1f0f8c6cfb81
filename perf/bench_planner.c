/*
** moe bench planner --gen-trace FILE: writes a synthetic routing trace
** (planner/trace.h: Zipf skew over a per-layer permutation, inter-layer
** affinity, drift between windows) for tests and planner benchmarks.
**   --layers L --experts E --topk K --skew S --seed N
**   [--sources R] [--tokens T per source and window] [--windows W]
**   [--affinity A] [--drift D swaps per window]
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "perf/bench.h"
#include "planner/trace.h"

static int bad(const char *what)
{
    fprintf(stderr, "moe bench planner: error: %s\n", what);
    return 2;
}

int moe_bench_planner(int argc, char **argv)
{
    moe_trace_gen g = {.layers = 8, .experts = 16, .topk = 2, .sources = 4, .windows = 1,
                       .tokens_per_window = 4096, .skew = 1.2, .affinity = 0.0, .drift = 0, .seed = 1};
    const char *out = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            return bad("every option takes a value");
        i++;
        if (strcmp(a, "--gen-trace") == 0) out = v;
        else if (strcmp(a, "--layers") == 0) g.layers = atoi(v);
        else if (strcmp(a, "--experts") == 0) g.experts = atoi(v);
        else if (strcmp(a, "--topk") == 0) g.topk = atoi(v);
        else if (strcmp(a, "--sources") == 0) g.sources = atoi(v);
        else if (strcmp(a, "--windows") == 0) g.windows = atoi(v);
        else if (strcmp(a, "--tokens") == 0) g.tokens_per_window = atoll(v);
        else if (strcmp(a, "--skew") == 0) g.skew = atof(v);
        else if (strcmp(a, "--affinity") == 0) g.affinity = atof(v);
        else if (strcmp(a, "--drift") == 0) g.drift = atoi(v);
        else if (strcmp(a, "--seed") == 0) g.seed = strtoull(v, NULL, 10);
        else {
            fprintf(stderr, "moe bench planner: error: unknown option '%s'\n", a);
            return 2;
        }
    }
    if (!out)
        return bad("--gen-trace FILE is required (solver sweeps: moe plan placement on generated traces)");
    moe_trace t;
    moe_status st = moe_trace_generate(&g, &t);
    if (st == MOE_OK)
        st = moe_trace_write(out, &t);
    if (st != MOE_OK) {
        moe_error_print(stderr, "moe bench planner");
        return moe_exit_code(st);
    }
    printf("wrote %s: %d layers, %d experts, top-%d, %d sources, %d windows, skew %g\n", out, g.layers, g.experts,
           g.topk, g.sources, g.windows, g.skew);
    moe_trace_free(&t);
    return 0;
}
