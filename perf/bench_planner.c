/*
** moe bench planner: the placement planner's benchmark (issue 6).
**
** Sweep (default): for each grid point (layers L, experts E, ranks N) it
** generates a synthetic routing trace in memory (planner/trace.h, sources =
** N, one window), places it with every method (planner/placement.h) and
** reports per method the summed max-rank load, mean load, their ratio, the
** lower bound, gap, solve time and fallback layers, plus two traffic
** measures computed from the trace's per-source counts and the plan's shares:
**   cross-node fraction  (token, expert) pairs whose copy sits on another node
**                        than their source rank (nodes: ranks-per-node
**                        consecutive ranks)
**   predicted a2a time   per step (one trace window): 4 exchanges per MoE
**                        layer (dispatch and combine, forward and backward),
**                        each as long as its busiest rank's send or receive:
**                        intra-node bytes / (intra_node_gbs x link_efficiency)
**                        + inter-node bytes / (inter_node_gbs x
**                        link_efficiency) + one latency per peer messaged
**                        (hardware profile, planner/hwprofile.h). A row is a
**                        (token, expert) pair of hidden x dtype-bytes bytes;
**                        rows that stay on their rank cost nothing.
**   moe bench planner [--json] [--layers-list L,..] [--experts-list E,..]
**     [--ranks-list N,..] [--points LxExN,..] [--skew S] [--topk K]
**     [--tokens T] [--seed N] [--replicas R|ranks] [--methods M[:R],..]
**     [--time-limit SEC] [--gap F] [--jobs J] [--ranks-per-node K]
**     [--hw FILE] [--hidden H] [--dtype-bytes B]
**
** Trace generator (kept as it was): --gen-trace FILE writes a synthetic trace.
**   --layers L --experts E --topk K --skew S --seed N
**   [--sources R] [--tokens T per source and window] [--windows W]
**   [--affinity A] [--drift D swaps per window]
**
** Text: a header naming the trace, ILP settings and profile numbers, one row
** per point and method, then a summary row per point (max load over
** contiguous's, a2a ms per method). --json: one object (docs/planner.md,
** "moe bench planner"). Numbers are measured, never estimated, except the
** a2a time, which is the model above and says so. Exit status 2 for bad
** flags.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "perf/bench.h"
#include "planner/hwprofile.h"
#include "planner/placement.h"
#include "planner/trace.h"

#define PROG "moe bench planner"
#define MAX_LIST 64
#define MAX_METHODS 16
#define MAX_POINTS 4096
#define REPLICAS_RANKS (-1) /* "ranks": as many extra copies as the point has ranks */

static int bad(const char *what)
{
    fprintf(stderr, PROG ": error: %s\n", what);
    return 2;
}

// ----------------------------------------------------------------------------
// --gen-trace: the synthetic trace writer

static int gen_trace(int argc, char **argv)
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
            fprintf(stderr, PROG ": error: unknown option '%s'\n", a);
            return 2;
        }
    }
    if (!out)
        return bad("--gen-trace FILE is required");
    moe_trace t;
    moe_status st = moe_trace_generate(&g, &t);
    if (st == MOE_OK)
        st = moe_trace_write(out, &t);
    if (st != MOE_OK) {
        moe_error_print(stderr, PROG);
        return moe_exit_code(st);
    }
    printf("wrote %s: %d layers, %d experts, top-%d, %d sources, %d windows, skew %g\n", out, g.layers, g.experts,
           g.topk, g.sources, g.windows, g.skew);
    moe_trace_free(&t);
    return 0;
}

// ----------------------------------------------------------------------------
// sweep options

typedef struct {
    moe_place_method method;
    int replicas; /* >= 0, or REPLICAS_RANKS; only eplb and ilp take copies */
    int has_suffix;
    char spec[48]; /* as given: "ilp", "eplb:ranks", "ilp:4" */
} method_spec;

typedef struct {
    int layers, experts, ranks;
} grid_point;

typedef struct {
    int json;
    grid_point points[MAX_POINTS];
    int npoints;
    double skew;
    int topk;
    long long tokens;
    unsigned long long seed;
    method_spec methods[MAX_METHODS];
    int nmethods;
    double time_limit, gap;
    int jobs;
    int ranks_per_node; /* 0: the profile's */
    const char *hw_path;
    int hidden, dtype_bytes; /* dtype_bytes 0: the profile's dtype */
} sweep_opts;

static const char *default_methods = "contiguous,round-robin,greedy,ilp,eplb:ranks,ilp:ranks";

static int parse_int(const char *flag, const char *v, long long lo, long long hi, long long *out)
{
    char *end;
    long long x = strtoll(v, &end, 10);
    if (!*v || *end || x < lo || x > hi) {
        fprintf(stderr, PROG ": error: %s '%s' must be an integer in [%lld, %lld]\n", flag, v, lo, hi);
        return 2;
    }
    *out = x;
    return 0;
}

static int parse_real(const char *flag, const char *v, double lo, int lo_open, double *out)
{
    char *end;
    double x = strtod(v, &end);
    if (!*v || *end || !isfinite(x) || x < lo || (lo_open && x == lo)) {
        fprintf(stderr, PROG ": error: %s '%s' must be a finite number %s %g\n", flag, v, lo_open ? ">" : ">=", lo);
        return 2;
    }
    *out = x;
    return 0;
}

/* "4,8,16" into out[]; every item an integer in [lo, hi]. */
static int parse_list(const char *flag, const char *v, long long lo, long long hi, int *out, int *n)
{
    char buf[1024];
    if (strlen(v) >= sizeof buf)
        return bad("a list is too long");
    snprintf(buf, sizeof buf, "%s", v);
    *n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        long long x;
        if (*n == MAX_LIST) {
            fprintf(stderr, PROG ": error: %s takes at most %d values\n", flag, MAX_LIST);
            return 2;
        }
        if (parse_int(flag, tok, lo, hi, &x))
            return 2;
        out[(*n)++] = (int)x;
    }
    if (*n == 0) {
        fprintf(stderr, PROG ": error: %s '%s' holds no value\n", flag, v);
        return 2;
    }
    return 0;
}

static int parse_replicas(const char *what, const char *v, int *out)
{
    long long x;
    if (strcmp(v, "ranks") == 0) {
        *out = REPLICAS_RANKS;
        return 0;
    }
    if (parse_int(what, v, 0, 1 << 24, &x))
        return 2;
    *out = (int)x;
    return 0;
}

/* "contiguous,greedy,ilp,eplb:ranks,ilp:8" */
static int parse_methods(const char *v, method_spec *out, int *n)
{
    char buf[1024];
    if (strlen(v) >= sizeof buf)
        return bad("--methods is too long");
    snprintf(buf, sizeof buf, "%s", v);
    *n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (*n == MAX_METHODS) {
            fprintf(stderr, PROG ": error: --methods takes at most %d methods\n", MAX_METHODS);
            return 2;
        }
        method_spec *m = &out[(*n)++];
        snprintf(m->spec, sizeof m->spec, "%s", tok);
        char *colon = strchr(tok, ':');
        m->replicas = 0;
        m->has_suffix = colon != NULL;
        if (colon)
            *colon = '\0';
        if (moe_place_method_parse(tok, &m->method) != MOE_OK) {
            fprintf(stderr, PROG ": error: --methods: unknown method '%s' (contiguous, round-robin, greedy, eplb, ilp;"
                            " eplb and ilp take :R or :ranks extra copies)\n", tok);
            return 2;
        }
        if (colon) {
            if (m->method != MOE_PLACE_EPLB && m->method != MOE_PLACE_ILP) {
                fprintf(stderr, PROG ": error: --methods: '%s': only eplb and ilp take extra copies (:R)\n", m->spec);
                return 2;
            }
            if (parse_replicas("--methods replicas", colon + 1, &m->replicas))
                return 2;
        }
    }
    if (*n == 0)
        return bad("--methods holds no method");
    return 0;
}

/* The default grid: one axis at a time around 24 layers x 64 experts x 8 ranks. */
static void default_grid(sweep_opts *o)
{
    static const int E[] = {8, 16, 32, 64, 128, 256}, N[] = {4, 16, 32, 64}, L[] = {4, 8, 16, 32};
    o->npoints = 0;
    for (size_t i = 0; i < sizeof E / sizeof *E; i++)
        o->points[o->npoints++] = (grid_point){24, E[i], 8};
    for (size_t i = 0; i < sizeof N / sizeof *N; i++)
        o->points[o->npoints++] = (grid_point){24, 64, N[i]};
    for (size_t i = 0; i < sizeof L / sizeof *L; i++)
        o->points[o->npoints++] = (grid_point){L[i], 64, 8};
}

/* "8x16x4,24x64x8" */
static int parse_points(const char *v, sweep_opts *o)
{
    char buf[2048];
    if (strlen(v) >= sizeof buf)
        return bad("--points is too long");
    snprintf(buf, sizeof buf, "%s", v);
    o->npoints = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int l, e, n, used = 0;
        if (sscanf(tok, "%dx%dx%d%n", &l, &e, &n, &used) != 3 || tok[used] || l < 1 || e < 1 || n < 1 ||
            l > 4096 || e > 65536 || n > 65536) {
            fprintf(stderr, PROG ": error: --points: '%s' is not LAYERSxEXPERTSxRANKS (positive integers)\n", tok);
            return 2;
        }
        if (o->npoints == MAX_LIST) {
            fprintf(stderr, PROG ": error: --points takes at most %d points\n", MAX_LIST);
            return 2;
        }
        o->points[o->npoints++] = (grid_point){l, e, n};
    }
    if (o->npoints == 0)
        return bad("--points holds no point");
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: moe bench planner [--json] [--layers-list L,..] [--experts-list E,..] [--ranks-list N,..]\n"
            "                         [--points LxExN,..] [--skew S] [--topk K] [--tokens T] [--seed N]\n"
            "                         [--replicas R|ranks] [--methods M[:R|:ranks],..] [--time-limit SEC] [--gap F]\n"
            "                         [--jobs J] [--ranks-per-node K] [--hw FILE] [--hidden H] [--dtype-bytes B]\n"
            "       moe bench planner --gen-trace FILE [--layers L --experts E --topk K --skew S --seed N\n"
            "                         --sources R --tokens T --windows W --affinity A --drift D]\n"
            "defaults: a grid around 24 layers x 64 experts x 8 ranks varying one axis (E 8..256, N 4..64,\n"
            "L 4..32; the lists give their cross product instead), skew 1.2, top-2, 2048 tokens per rank,\n"
            "seed 7, methods %s, gap 0.01, time limit 30 s,\n"
            "jobs = online CPUs, --hw %s/configs/hw/h100-sxm.yaml (ranks per node and dtype from it),\n"
            "hidden 4096\n",
            default_methods, MOE_SRC_DIR);
}

static int parse_sweep(int argc, char **argv, sweep_opts *o)
{
    int L[MAX_LIST], E[MAX_LIST], N[MAX_LIST], nl = 0, ne = 0, nn = 0, have_points = 0;
    *o = (sweep_opts){.skew = 1.2, .topk = 2, .tokens = 2048, .seed = 7, .time_limit = 30, .gap = 0.01,
                      .hw_path = MOE_SRC_DIR "/configs/hw/h100-sxm.yaml", .hidden = 4096};
    int dflt_replicas = 0;
    if (parse_methods(default_methods, o->methods, &o->nmethods))
        return 2;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--json") == 0) {
            o->json = 1;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return -1;
        }
        if (i + 1 >= argc || strncmp(a, "--", 2) != 0) {
            fprintf(stderr, PROG ": error: %s '%s' (see moe bench planner --help)\n",
                    strncmp(a, "--", 2) ? "unexpected argument" : "missing value after", a);
            return 2;
        }
        const char *v = argv[++i];
        long long x = 0;
        int rc = 0;
        if (strcmp(a, "--layers-list") == 0) rc = parse_list(a, v, 1, 4096, L, &nl);
        else if (strcmp(a, "--experts-list") == 0) rc = parse_list(a, v, 1, 65536, E, &ne);
        else if (strcmp(a, "--ranks-list") == 0) rc = parse_list(a, v, 1, 65536, N, &nn);
        else if (strcmp(a, "--points") == 0) rc = parse_points(v, o), have_points = 1;
        else if (strcmp(a, "--skew") == 0) rc = parse_real(a, v, 0, 0, &o->skew);
        else if (strcmp(a, "--topk") == 0) rc = parse_int(a, v, 1, 65536, &x), o->topk = (int)x;
        else if (strcmp(a, "--tokens") == 0) rc = parse_int(a, v, 1, 1LL << 40, &o->tokens);
        else if (strcmp(a, "--seed") == 0) rc = parse_int(a, v, 0, (1LL << 62), &x), o->seed = (unsigned long long)x;
        else if (strcmp(a, "--replicas") == 0) rc = parse_replicas(a, v, &dflt_replicas);
        else if (strcmp(a, "--methods") == 0) rc = parse_methods(v, o->methods, &o->nmethods);
        else if (strcmp(a, "--time-limit") == 0) rc = parse_real(a, v, 0, 1, &o->time_limit);
        else if (strcmp(a, "--gap") == 0) rc = parse_real(a, v, 0, 0, &o->gap);
        else if (strcmp(a, "--jobs") == 0) rc = parse_int(a, v, 0, 1024, &x), o->jobs = (int)x;
        else if (strcmp(a, "--ranks-per-node") == 0) rc = parse_int(a, v, 1, 65536, &x), o->ranks_per_node = (int)x;
        else if (strcmp(a, "--hw") == 0) o->hw_path = v;
        else if (strcmp(a, "--hidden") == 0) rc = parse_int(a, v, 1, 1 << 20, &x), o->hidden = (int)x;
        else if (strcmp(a, "--dtype-bytes") == 0) rc = parse_int(a, v, 1, 16, &x), o->dtype_bytes = (int)x;
        else {
            fprintf(stderr, PROG ": error: unknown option '%s' (see moe bench planner --help)\n", a);
            return 2;
        }
        if (rc)
            return 2;
    }
    if (o->gap >= 1)
        return bad("--gap must be below 1");
    for (int m = 0; m < o->nmethods; m++) {
        method_spec *ms = &o->methods[m];
        if (!ms->has_suffix && (ms->method == MOE_PLACE_EPLB || ms->method == MOE_PLACE_ILP))
            ms->replicas = dflt_replicas;
    }
    if (have_points && (nl || ne || nn))
        return bad("--points and --layers-list/--experts-list/--ranks-list exclude each other");
    if (!have_points && (nl || ne || nn)) {
        if (!nl) L[nl++] = 24;
        if (!ne) E[ne++] = 64;
        if (!nn) N[nn++] = 8;
        if ((long long)nl * ne * nn > MAX_POINTS) {
            fprintf(stderr, PROG ": error: the lists make %lld points (at most %d)\n", (long long)nl * ne * nn,
                    MAX_POINTS);
            return 2;
        }
        o->npoints = 0;
        for (int a = 0; a < nl; a++)
            for (int b = 0; b < ne; b++)
                for (int c = 0; c < nn; c++)
                    o->points[o->npoints++] = (grid_point){L[a], E[b], N[c]};
    } else if (!have_points)
        default_grid(o);
    for (int p = 0; p < o->npoints; p++)
        if (o->topk > o->points[p].experts) {
            fprintf(stderr, PROG ": error: --topk %d exceeds the %d experts of point %dx%dx%d\n", o->topk,
                    o->points[p].experts, o->points[p].layers, o->points[p].experts, o->points[p].ranks);
            return 2;
        }
    return 0;
}

// ----------------------------------------------------------------------------
// traffic measures

typedef struct {
    double intra_gbps, inter_gbps; /* bytes/s per rank per direction, link_efficiency applied */
    double intra_lat, inter_lat;   /* s per message */
    double row_bytes;              /* hidden x dtype bytes */
    int rpn;                       /* ranks per node */
} a2a_model;

typedef struct {
    double cross_frac;  /* pairs whose copy is on another node than their source */
    double remote_frac; /* pairs whose copy is on another rank than their source */
    double a2a_s;       /* predicted per step, 4 exchanges per layer */
} traffic;

/* One layer's rows from source s to rank r under plan p: v[s * N + r]. */
static void layer_volume(const moe_trace *t, const moe_plan *p, int l, double *v)
{
    int N = p->ep, E = p->experts;
    memset(v, 0, (size_t)N * N * sizeof *v);
    for (int s = 0; s < t->sources; s++) {
        const double *cnt = t->windows[0].load + ((size_t)l * t->sources + s) * E;
        for (int e = 0; e < E; e++) {
            const moe_plan_copy *c = moe_plan_copies(p, l, e);
            for (int k = 0; k < p->ncopies[(size_t)l * E + e]; k++)
                v[(size_t)s * N + c[k].rank] += cnt[e] * c[k].share;
        }
    }
}

/* The busiest rank's time of one exchange whose rows go v[s][r] (s sends to
** r); the transposed exchange (combine) has the same time, since each rank's
** send and receive swap. */
static double exchange_time(const a2a_model *m, const double *v, int N)
{
    double worst = 0;
    for (int x = 0; x < N; x++) {
        double t_send = 0, t_recv = 0;
        for (int y = 0; y < N; y++) {
            if (y == x)
                continue;
            int same = x / m->rpn == y / m->rpn;
            double bw = same ? m->intra_gbps : m->inter_gbps, lat = same ? m->intra_lat : m->inter_lat;
            double out = v[(size_t)x * N + y], in = v[(size_t)y * N + x];
            if (out > 0)
                t_send += lat + out * m->row_bytes / bw;
            if (in > 0)
                t_recv += lat + in * m->row_bytes / bw;
        }
        worst = fmax(worst, fmax(t_send, t_recv));
    }
    return worst;
}

static moe_status measure_traffic(const moe_trace *t, const moe_plan *p, const a2a_model *m, traffic *out)
{
    int N = p->ep;
    double *v = malloc((size_t)N * N * sizeof *v);
    if (!v)
        return moe_fail(MOE_ERR_NOMEM, "out of memory for a %d x %d traffic matrix", N, N);
    double all = 0, cross = 0, remote = 0, a2a = 0;
    for (int l = 0; l < p->layers; l++) {
        layer_volume(t, p, l, v);
        for (int s = 0; s < N; s++)
            for (int r = 0; r < N; r++) {
                double x = v[(size_t)s * N + r];
                all += x;
                remote += r != s ? x : 0;
                cross += s / m->rpn != r / m->rpn ? x : 0;
            }
        /* forward dispatch and the backward of combine send rows s -> r;
        ** forward combine and the backward of dispatch send them back */
        a2a += 4 * exchange_time(m, v, N);
    }
    free(v);
    out->cross_frac = all > 0 ? cross / all : 0;
    out->remote_frac = all > 0 ? remote / all : 0;
    out->a2a_s = a2a;
    return MOE_OK;
}

// ----------------------------------------------------------------------------
// the sweep

typedef struct {
    const method_spec *spec;
    int replicas, slots;
    double max_load, mean_load, bound, gap, solve_s;
    moe_place_stats stats;
    traffic tr;
} method_result;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static moe_status run_method(const sweep_opts *o, const grid_point *pt, const moe_trace *t, const double *load,
                             const a2a_model *m, const method_spec *spec, method_result *r)
{
    moe_place_opts po;
    moe_place_opts_default(&po);
    po.method = spec->method;
    po.ep = pt->ranks;
    po.replicas = spec->replicas == REPLICAS_RANKS ? pt->ranks : spec->replicas;
    po.time_limit_s = o->time_limit;
    po.gap = o->gap;
    po.jobs = o->jobs;
    moe_plan plan;
    moe_place_stats stats = {0};
    moe_status st = moe_place(load, pt->layers, pt->experts, &po, &plan, &stats);
    if (st != MOE_OK) {
        /* the first failure's message sticks: copy it, clear, name the point */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", moe_errmsg());
        moe_error_clear();
        return moe_fail(st, "%dx%dx%d, %s: %s", pt->layers, pt->experts, pt->ranks, spec->spec, msg);
    }
    *r = (method_result){.spec = spec, .replicas = po.replicas, .slots = plan.slots_per_rank,
                         .max_load = plan.objective, .bound = plan.lower_bound, .gap = plan.gap,
                         .solve_s = plan.solve_s, .stats = stats};
    for (int l = 0; l < pt->layers; l++) {
        double mx, mean;
        moe_plan_layer_load(&plan, l, load + (size_t)l * pt->experts, &mx, &mean);
        r->mean_load += mean;
    }
    st = measure_traffic(t, &plan, m, &r->tr);
    moe_plan_free(&plan);
    return st;
}

typedef struct {
    grid_point pt;
    double gen_s;
    method_result res[MAX_METHODS];
} point_result;

static moe_status run_point(const sweep_opts *o, const grid_point *pt, const a2a_model *m, point_result *pr)
{
    moe_trace_gen g = {.layers = pt->layers, .experts = pt->experts, .topk = o->topk, .sources = pt->ranks,
                       .windows = 1, .tokens_per_window = o->tokens, .skew = o->skew, .affinity = 0, .drift = 0,
                       .seed = o->seed};
    moe_trace t;
    double t0 = now_s();
    MOE_TRY(moe_trace_generate(&g, &t));
    pr->pt = *pt;
    pr->gen_s = now_s() - t0;
    double *load = NULL;
    moe_status st = moe_trace_expert_load(&t, &load);
    for (int k = 0; st == MOE_OK && k < o->nmethods; k++)
        st = run_method(o, pt, &t, load, m, &o->methods[k], &pr->res[k]);
    free(load);
    moe_trace_free(&t);
    return st;
}

static const method_result *contiguous_of(const sweep_opts *o, const point_result *pr)
{
    for (int k = 0; k < o->nmethods; k++)
        if (o->methods[k].method == MOE_PLACE_CONTIGUOUS)
            return &pr->res[k];
    return NULL;
}

static void print_text_header(const sweep_opts *o, const moe_hwprofile *hw, const a2a_model *m, int jobs)
{
    printf("moe bench planner: skew %g, top-%d, %lld tokens per rank (sources = ranks), seed %llu; ilp gap %g, "
           "time limit %g s per layer, %d jobs\n",
           o->skew, o->topk, o->tokens, o->seed, o->gap, o->time_limit, jobs);
    printf("a2a model: hw %s (%s): intra-node %g GB/s, %g us; inter-node %g GB/s, %g us; link efficiency %g; "
           "%d ranks per node; rows of %d x %d B; 4 exchanges per layer per step\n",
           hw->name, hw->path, hw->intra_gbs, hw->intra_lat_us, hw->inter_gbs, hw->inter_lat_us, hw->link_efficiency,
           m->rpn, o->hidden, (int)(m->row_bytes / o->hidden));
    printf("%6s %7s %5s | %-12s %4s %3s | %11s %11s %8s %11s %7s %8s %3s | %8s %6s %9s\n", "layers", "experts",
           "ranks", "method", "R", "S", "max_load", "mean_load", "max/mean", "bound", "gap", "solve_s", "fb",
           "vs_cont", "cross", "a2a_ms");
}

static void print_text_point(const sweep_opts *o, const point_result *pr)
{
    const method_result *c = contiguous_of(o, pr);
    for (int k = 0; k < o->nmethods; k++) {
        const method_result *r = &pr->res[k];
        char vs[16] = "-";
        if (c && c->max_load > 0)
            snprintf(vs, sizeof vs, "%.3f", r->max_load / c->max_load);
        printf("%6d %7d %5d | %-12s %4d %3d | %11.0f %11.0f %8.3f %11.0f %6.2f%% %8.2f %3d | %8s %6.3f %9.3f\n",
               pr->pt.layers, pr->pt.experts, pr->pt.ranks, r->spec->spec, r->replicas, r->slots, r->max_load,
               r->mean_load, r->mean_load > 0 ? r->max_load / r->mean_load : 0, r->bound, 100 * r->gap, r->solve_s,
               r->stats.fallback, vs, r->tr.cross_frac, 1e3 * r->tr.a2a_s);
    }
}

/* One row per point: each method's max load over contiguous's (or the max
** load itself when contiguous was not run), then each method's a2a time. */
static void print_text_summary(const sweep_opts *o, const point_result *pr, int n)
{
    int rel = n > 0 && contiguous_of(o, &pr[0]) != NULL;
    printf("\nsummary: %s | predicted a2a ms per step\n", rel ? "max load / contiguous" : "summed max load");
    printf("%6s %7s %5s |", "layers", "experts", "ranks");
    for (int k = 0; k < o->nmethods; k++)
        printf(" %11.11s", o->methods[k].spec);
    printf(" |");
    for (int k = 0; k < o->nmethods; k++)
        printf(" %11.11s", o->methods[k].spec);
    printf("\n");
    for (int p = 0; p < n; p++) {
        const method_result *c = contiguous_of(o, &pr[p]);
        printf("%6d %7d %5d |", pr[p].pt.layers, pr[p].pt.experts, pr[p].pt.ranks);
        for (int k = 0; k < o->nmethods; k++) {
            double v = pr[p].res[k].max_load;
            if (rel)
                printf(" %11.3f", c->max_load > 0 ? v / c->max_load : 0);
            else
                printf(" %11.0f", v);
        }
        printf(" |");
        for (int k = 0; k < o->nmethods; k++)
            printf(" %11.2f", 1e3 * pr[p].res[k].tr.a2a_s);
        printf("\n");
    }
}

/* s as a JSON string (quotes, backslashes and control characters escaped). */
static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static void print_json(const sweep_opts *o, const moe_hwprofile *hw, const a2a_model *m, int jobs,
                       const point_result *pr, int n, double wall)
{
    printf("{\"bench\":\"planner\",\"skew\":%.17g,\"topk\":%d,\"tokens\":%lld,\"seed\":%llu,\"gap_target\":%.17g,"
           "\"time_limit_s\":%.17g,\"jobs\":%d,\"hidden\":%d,\"dtype_bytes\":%d,\"ranks_per_node\":%d,",
           o->skew, o->topk, o->tokens, o->seed, o->gap, o->time_limit, jobs, o->hidden,
           (int)(m->row_bytes / o->hidden), m->rpn);
    printf("\"hw\":{\"name\":");
    json_str(hw->name);
    printf(",\"path\":");
    json_str(hw->path);
    printf(",\"intra_node_gbs\":%.17g,\"intra_node_latency_us\":%.17g,\"inter_node_gbs\":%.17g,"
           "\"inter_node_latency_us\":%.17g,\"link_efficiency\":%.17g},\"points\":[",
           hw->intra_gbs, hw->intra_lat_us, hw->inter_gbs, hw->inter_lat_us, hw->link_efficiency);
    for (int p = 0; p < n; p++) {
        printf("%s{\"layers\":%d,\"experts\":%d,\"ranks\":%d,\"nodes\":%d,\"gen_s\":%.6f,\"methods\":[",
               p ? "," : "", pr[p].pt.layers, pr[p].pt.experts, pr[p].pt.ranks,
               (pr[p].pt.ranks + m->rpn - 1) / m->rpn, pr[p].gen_s);
        for (int k = 0; k < o->nmethods; k++) {
            const method_result *r = &pr[p].res[k];
            printf("%s{\"spec\":\"%s\",\"method\":\"%s\",\"replicas\":%d,\"slots\":%d,\"max_load\":%.17g,"
                   "\"mean_load\":%.17g,\"imbalance\":%.17g,\"lower_bound\":%.17g,\"gap\":%.17g,\"solve_s\":%.6f,"
                   "\"fallback\":%d,\"ilp_optimal\":%d,\"ilp_limited\":%d,\"watchdog_kills\":%d,"
                   "\"cross_node_fraction\":%.17g,\"remote_fraction\":%.17g,\"a2a_s\":%.17g}",
                   k ? "," : "", r->spec->spec, moe_place_method_name(r->spec->method), r->replicas, r->slots,
                   r->max_load, r->mean_load, r->mean_load > 0 ? r->max_load / r->mean_load : 0, r->bound, r->gap,
                   r->solve_s, r->stats.fallback, r->stats.ilp_optimal, r->stats.ilp_limited,
                   r->stats.watchdog_kills, r->tr.cross_frac, r->tr.remote_frac, r->tr.a2a_s);
        }
        printf("]}");
    }
    printf("],\"wall_s\":%.3f}\n", wall);
}

static int sweep(int argc, char **argv)
{
    static sweep_opts o;
    int rc = parse_sweep(argc, argv, &o);
    if (rc)
        return rc < 0 ? 0 : rc;
    moe_hwprofile hw;
    moe_status hst = moe_hwprofile_load(o.hw_path, &hw);
    if (hst != MOE_OK) {
        moe_error_print(stderr, PROG);
        return moe_exit_code(hst);
    }
    a2a_model m = {
        .intra_gbps = hw.intra_gbs * 1e9 * hw.link_efficiency,
        .inter_gbps = hw.inter_gbs * 1e9 * hw.link_efficiency,
        .intra_lat = hw.intra_lat_us * 1e-6,
        .inter_lat = hw.inter_lat_us * 1e-6,
        .row_bytes = (double)o.hidden * (o.dtype_bytes ? o.dtype_bytes : moe_hwprofile_dtype_bytes(&hw)),
        .rpn = o.ranks_per_node ? o.ranks_per_node : hw.ranks_per_node,
    };
    if (m.rpn < 1)
        m.rpn = 1;
    int jobs = o.jobs > 0 ? o.jobs : (int)sysconf(_SC_NPROCESSORS_ONLN);
    point_result *pr = calloc((size_t)o.npoints, sizeof *pr);
    if (!pr)
        return bad("out of memory");
    if (!o.json) {
        print_text_header(&o, &hw, &m, jobs);
        fflush(stdout);
    }
    double t0 = now_s();
    for (int p = 0; p < o.npoints; p++) {
        moe_status st = run_point(&o, &o.points[p], &m, &pr[p]);
        if (st != MOE_OK) {
            moe_error_print(stderr, PROG);
            free(pr);
            return moe_exit_code(st);
        }
        if (!o.json) {
            print_text_point(&o, &pr[p]);
            fflush(stdout);
        }
    }
    double wall = now_s() - t0;
    if (o.json)
        print_json(&o, &hw, &m, jobs, pr, o.npoints, wall);
    else {
        print_text_summary(&o, pr, o.npoints);
        printf("%d points, %d methods each: %.1f s wall\n", o.npoints, o.nmethods, wall);
    }
    free(pr);
    return 0;
}

int moe_bench_planner(int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--gen-trace") == 0)
            return gen_trace(argc, argv);
    return sweep(argc, argv);
}
