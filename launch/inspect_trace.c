#include "launch/inspect_trace.h"
#include "launch/args.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "planner/trace.h"
#include "runtime/base/mem.h"
#include "runtime/base/status.h"

#define TOP_SHOWN 4 /* busiest experts listed per layer */

static const char *USAGE = "usage: moe inspect trace FILE [--json]\n"
                           "  FILE    a routing trace (RoutingTrace protobuf): per layer the pairs routed,\n"
                           "          max/mean expert load (imbalance), coefficient of variation (skew),\n"
                           "          busiest experts; drift between consecutive windows\n"
                           "  --json  one JSON object on stdout\n"
                           "Exit status: 0 valid, 2 bad usage or invalid trace, 1 I/O failure.\n";

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "moe inspect trace: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n%s", USAGE);
    va_end(ap);
    return 2;
}

/* Per-layer summary of the load summed over sources and windows. */
typedef struct {
    double *load;  /* [L][E] */
    double *pairs, *max, *mean, *imbalance, *cv; /* [L] */
    int *top;      /* [L][ntop] */
    int ntop;
    double *drift; /* [nwindows-1] */
} trace_stats;

static void stats_free(trace_stats *s)
{
    free(s->load);
    moe_free(s->pairs);
    moe_free(s->top);
    free(s->drift);
    memset(s, 0, sizeof *s);
}

/* The ntop largest loads of one layer, largest first, ties to the lower id. */
static void top_experts(const double *v, int E, int *top, int ntop)
{
    for (int k = 0; k < ntop; k++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int used = 0;
            for (int j = 0; j < k; j++)
                used |= top[j] == e;
            if (!used && (best < 0 || v[e] > v[best]))
                best = e;
        }
        top[k] = best;
    }
}

static moe_status stats_compute(const moe_trace *t, trace_stats *s)
{
    memset(s, 0, sizeof *s);
    const int L = t->layers, E = t->experts;
    moe_status st = MOE_OK;
    MOE_TRY_GOTO(moe_trace_expert_load(t, &s->load), st, fail);
    MOE_TRY_GOTO(moe_trace_drift(t, &s->drift), st, fail);
    /* One block for the five per-layer columns. */
    MOE_TRY_GOTO(moe_alloc((void **)&s->pairs, sizeof(double) * 5 * (size_t)L, "trace stats"), st, fail);
    s->max = s->pairs + L;
    s->mean = s->max + L;
    s->imbalance = s->mean + L;
    s->cv = s->imbalance + L;
    s->ntop = E < TOP_SHOWN ? E : TOP_SHOWN;
    MOE_TRY_GOTO(moe_alloc((void **)&s->top, sizeof(int) * (size_t)L * (size_t)s->ntop, "trace stats"), st, fail);
    for (int l = 0; l < L; l++) {
        const double *v = s->load + (size_t)l * (size_t)E;
        double sum = 0, mx = 0;
        for (int e = 0; e < E; e++) {
            sum += v[e];
            mx = v[e] > mx ? v[e] : mx;
        }
        double mean = sum / E, var = 0;
        for (int e = 0; e < E; e++)
            var += (v[e] - mean) * (v[e] - mean);
        var /= E;
        s->pairs[l] = sum;
        s->max[l] = mx;
        s->mean[l] = mean;
        /* An empty layer is "even": 0 would read as better than perfect. */
        s->imbalance[l] = mean > 0 ? mx / mean : 1;
        s->cv[l] = mean > 0 ? sqrt(var) / mean : 0;
        top_experts(v, E, s->top + (size_t)l * (size_t)s->ntop, s->ntop);
    }
    return MOE_OK;
fail:
    stats_free(s);
    return st;
}

/* ------------------------------------------------------------------------- */
/* output                                                                     */

static void json_doubles(FILE *f, const char *key, const double *v, int n)
{
    fprintf(f, ",\"%s\":[", key);
    for (int i = 0; i < n; i++)
        fprintf(f, "%s%.17g", i ? "," : "", v[i]);
    fputc(']', f);
}

static int any_transitions(const moe_trace *t)
{
    for (int w = 0; w < t->nwindows; w++)
        if (t->windows[w].transitions)
            return 1;
    return 0;
}

static void print_json(FILE *f, const char *path, const moe_trace *t, const trace_stats *s)
{
    const int L = t->layers, E = t->experts;
    const moe_trace_window *last = &t->windows[t->nwindows - 1];
    fputs("{\"file\":", f);
    moe_json_string(f, path);
    fprintf(f, ",\"layers\":%d,\"experts\":%d,\"topk\":%d,\"sources\":%d,\"windows\":%d", L, E, t->topk, t->sources,
            t->nwindows);
    fprintf(f, ",\"first_step\":%" PRId64 ",\"last_step\":%" PRId64 ",\"transitions\":%s", t->windows[0].first_step,
            last->first_step + last->steps - 1, any_transitions(t) ? "true" : "false");
    json_doubles(f, "pairs", s->pairs, L);
    fputs(",\"expert_load\":[", f);
    for (int l = 0; l < L; l++) {
        fputs(l ? ",[" : "[", f);
        for (int e = 0; e < E; e++)
            fprintf(f, "%s%.17g", e ? "," : "", s->load[(size_t)l * (size_t)E + (size_t)e]);
        fputc(']', f);
    }
    fputc(']', f);
    json_doubles(f, "max_load", s->max, L);
    json_doubles(f, "mean_load", s->mean, L);
    json_doubles(f, "imbalance", s->imbalance, L);
    json_doubles(f, "cv", s->cv, L);
    fputs(",\"top_experts\":[", f);
    for (int l = 0; l < L; l++) {
        fputs(l ? ",[" : "[", f);
        for (int k = 0; k < s->ntop; k++)
            fprintf(f, "%s%d", k ? "," : "", s->top[(size_t)l * (size_t)s->ntop + (size_t)k]);
        fputc(']', f);
    }
    fputc(']', f);
    json_doubles(f, "drift", s->drift, t->nwindows - 1);
    fputs("}\n", f);
}

static void print_text(FILE *f, const char *path, const moe_trace *t, const trace_stats *s)
{
    const moe_trace_window *last = &t->windows[t->nwindows - 1];
    fprintf(f, "routing trace %s\n", path);
    fprintf(f, "  %d MoE layers, %d experts, top-%d, %d sources, %d windows (steps %" PRId64 "..%" PRId64 "), "
            "transitions %s\n", t->layers, t->experts, t->topk, t->sources, t->nwindows, t->windows[0].first_step,
            last->first_step + last->steps - 1, any_transitions(t) ? "recorded" : "not recorded");
    fprintf(f, "\n  %5s %14s %12s %12s %9s %7s  %s\n", "layer", "pairs", "max/expert", "mean/expert", "imbalance",
            "cv", "busiest experts (share of the layer)");
    for (int l = 0; l < t->layers; l++) {
        fprintf(f, "  %5d %14.0f %12.0f %12.1f %9.3f %7.3f ", l, s->pairs[l], s->max[l], s->mean[l],
                s->imbalance[l], s->cv[l]);
        for (int k = 0; k < s->ntop; k++) {
            int e = s->top[(size_t)l * (size_t)s->ntop + (size_t)k];
            double v = s->load[(size_t)l * (size_t)t->experts + (size_t)e];
            fprintf(f, " %d (%.1f%%)", e, s->pairs[l] > 0 ? 100 * v / s->pairs[l] : 0.0);
        }
        fputc('\n', f);
    }
    if (t->nwindows < 2) {
        fputs("\n  drift: one window, nothing to compare\n", f);
        return;
    }
    fputs("\n  drift between consecutive windows (L1 of normalised expert load, mean over layers; 0..2):\n", f);
    for (int w = 0; w + 1 < t->nwindows; w++)
        fprintf(f, "    window %d -> %d (steps %" PRId64 " -> %" PRId64 "): %.4f\n", w, w + 1, t->windows[w].first_step,
                t->windows[w + 1].first_step, s->drift[w]);
}

int moe_inspect_trace_main(int argc, char **argv)
{
    const char *path = NULL;
    int json = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(USAGE, stdout);
            return 0;
        } else if (argv[i][0] == '-' && argv[i][1])
            return usage_error("unknown flag %s", argv[i]);
        else if (path)
            return usage_error("one FILE expected, got %s and %s", path, argv[i]);
        else
            path = argv[i];
    }
    if (!path)
        return usage_error("missing FILE");

    moe_error_clear();
    moe_trace t;
    trace_stats s;
    moe_status st = moe_trace_read(path, &t);
    if (st != MOE_OK) {
        moe_error_print(stderr, "moe inspect trace");
        return moe_exit_code(st);
    }
    st = stats_compute(&t, &s);
    if (st == MOE_OK) {
        if (json)
            print_json(stdout, path, &t, &s);
        else
            print_text(stdout, path, &t, &s);
        fflush(stdout);
        stats_free(&s);
    } else {
        moe_error_print(stderr, "moe inspect trace");
    }
    moe_trace_free(&t);
    return moe_exit_code(st);
}
