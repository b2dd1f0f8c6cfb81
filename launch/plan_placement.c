#include "launch/plan_placement.h"
#include "launch/args.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "planner/placement.h"
#include "planner/plan.h"
#include "planner/trace.h"
#include "runtime/base/status.h"

static const char *PROG = "moe plan placement";
static const char *USAGE =
    "usage: moe plan placement --trace FILE --ep N --out PLAN [options]\n"
    "  --trace FILE         routing trace (moe inspect trace FILE shows it)         required\n"
    "  --ep N               expert-parallel ranks to place experts on               required\n"
    "  --out PLAN           plan file to write (atomically)                         required\n"
    "  --ranks-per-node K   ranks per node (recorded; see docs/planner.md)          default N\n"
    "  --slots-per-rank S   expert copies a rank may hold per layer    default ceil((E+R)/N)\n"
    "  --replicas R         extra expert copies per layer (eplb or ilp): every      default 0\n"
    "                       layer gets exactly E+R copies, so with S*N = E+R every\n"
    "                       rank holds exactly S; at most E*(N-1)\n"
    "  --method M           ilp, greedy, contiguous, round-robin or eplb            default ilp\n"
    "  --time-limit SEC     ilp: wall-clock limit per layer (watchdog enforced)     default 10\n"
    "  --gap F              ilp: relative optimality gap to stop at                 default 0.005\n"
    "  --jobs J             ilp: layers solved at once                     default: CPU count\n"
    "  --json               one JSON object on stdout instead of a summary\n"
    "Methods: contiguous (e on rank e*N/E), round-robin (e mod N), greedy (heaviest\n"
    "first onto the lightest rank), eplb (R copies to the experts with the largest\n"
    "load per copy, equal shares, greedy packing), ilp (CBC per layer; with\n"
    "--replicas copies take any shares. Warm start: greedy + local search, or with\n"
    "--replicas the better of eplb rebalanced and greedy + splits; a layer whose\n"
    "start is within --gap of the bound needs no solve, one the solver cannot\n"
    "improve in time keeps its start).\n"
    "The cost of a plan is the sum over layers of the most loaded rank's load; it\n"
    "is compared with contiguous (one copy per expert, no replicas).\n"
    "Exit status: 0 ok, 2 bad usage or bad trace, 1 other failures.\n";

typedef struct {
    const char *trace, *out;
    moe_place_opts place;
    int json, help;
} options;



static moe_status parse_args(int argc, char **argv, options *o)
{
    moe_place_opts_default(&o->place);
    o->place.ep = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            o->help = 1;
        else if (strcmp(a, "--json") == 0)
            o->json = 1;
        else if (moe_arg_is(a, "--trace"))
            MOE_TRY(moe_arg_value(argc, argv, &i, "--trace", &o->trace));
        else if (moe_arg_is(a, "--out"))
            MOE_TRY(moe_arg_value(argc, argv, &i, "--out", &o->out));
        else if (moe_arg_is(a, "--method")) {
            MOE_TRY(moe_arg_value(argc, argv, &i, "--method", &v));
            MOE_TRY(moe_place_method_parse(v, &o->place.method));
        } else if (moe_arg_is(a, "--ep")) {
            MOE_TRY(moe_arg_value(argc, argv, &i, "--ep", &v));
            MOE_TRY(moe_arg_int("--ep", v, 1, &o->place.ep));
        } else if (moe_arg_is(a, "--ranks-per-node")) {
            MOE_TRY(moe_arg_value(argc, argv, &i, "--ranks-per-node", &v));
            MOE_TRY(moe_arg_int("--ranks-per-node", v, 1, &o->place.ranks_per_node));
        } else if (moe_arg_is(a, "--slots-per-rank")) {
            MOE_TRY(moe_arg_value(argc, argv, &i, "--slots-per-rank", &v));
            MOE_TRY(moe_arg_int("--slots-per-rank", v, 1, &o->place.slots_per_rank));
        } else if (moe_arg_is(a, "--replicas")) {
            MOE_TRY(moe_arg_value(argc, argv, &i, "--replicas", &v));
            MOE_TRY(moe_arg_int("--replicas", v, 0, &o->place.replicas));
        } else if (moe_arg_is(a, "--jobs")) {
            MOE_TRY(moe_arg_value(argc, argv, &i, "--jobs", &v));
            MOE_TRY(moe_arg_int("--jobs", v, 1, &o->place.jobs));
        } else if (moe_arg_is(a, "--time-limit")) {
            MOE_TRY(moe_arg_value(argc, argv, &i, "--time-limit", &v));
            MOE_TRY(moe_arg_real("--time-limit", v, 0, 1e9, &o->place.time_limit_s));
            if (o->place.time_limit_s <= 0)
                return moe_fail(MOE_ERR_USAGE, "--time-limit must be > 0, got '%s'", v);
        } else if (moe_arg_is(a, "--gap")) {
            MOE_TRY(moe_arg_value(argc, argv, &i, "--gap", &v));
            MOE_TRY(moe_arg_real("--gap", v, 0, 1e9, &o->place.gap));
        } else if (moe_arg_is_flag(a) || a[0] == '-')
            return moe_fail(MOE_ERR_USAGE, "unknown flag '%s'", a);
        else
            return moe_fail(MOE_ERR_USAGE, "unexpected argument '%s'", a);
    }
    if (o->help)
        return MOE_OK;
    if (!o->trace)
        return moe_fail(MOE_ERR_USAGE, "--trace FILE is required");
    if (!o->out)
        return moe_fail(MOE_ERR_USAGE, "--out PLAN is required");
    if (o->place.ep < 1)
        return moe_fail(MOE_ERR_USAGE, "--ep N is required");
    return MOE_OK;
}

static void print_result(const options *o, const moe_plan *p, const double *load, const moe_place_stats *s,
                         double contiguous)
{
    FILE *f = stdout;
    if (o->json) {
        fprintf(f, "{\"out\":");
        moe_json_string(f, o->out);
        fprintf(f, ",\"method\":\"%s\",\"ep\":%d,\"ranks_per_node\":%d,\"slots_per_rank\":%d,\"replicas\":%d,"
                   "\"layers\":%d,\"experts\":%d,\"objective\":%.17g,\"lower_bound\":%.17g,\"gap\":%.17g,\"solve_s\":%.6f,"
                   "\"contiguous_objective\":%.17g,\"max_mean\":[",
                p->method, p->ep, p->ranks_per_node, p->slots_per_rank, o->place.replicas, p->layers, p->experts,
                p->objective,
                p->lower_bound, p->gap, p->solve_s, contiguous);
        for (int l = 0; l < p->layers; l++) {
            double mx, mean;
            moe_plan_layer_load(p, l, load + (size_t)l * p->experts, &mx, &mean);
            fprintf(f, "%s%.17g", l ? "," : "", mean > 0 ? mx / mean : 1.0);
        }
        fprintf(f, "],\"ilp_optimal\":%d,\"ilp_limited\":%d,\"fallback\":%d,\"watchdog_kills\":%d}\n", s->ilp_optimal,
                s->ilp_limited, s->fallback, s->watchdog_kills);
        return;
    }
    fprintf(f, "%s: %s plan for %d layers x %d experts on %d ranks (%d slots each, %d extra copies per layer) -> %s\n",
            PROG, p->method, p->layers, p->experts, p->ep, p->slots_per_rank, o->place.replicas, o->out);
    fprintf(f, "  objective    %.6g (sum over layers of max rank load)\n", p->objective);
    fprintf(f, "  lower bound  %.6g   gap %.3f%%   solve %.2f s\n", p->lower_bound, 100 * p->gap, p->solve_s);
    if (contiguous > 0)
        fprintf(f, "  contiguous   %.6g   (this plan: %.1f%% lower)\n", contiguous,
                100 * (1 - p->objective / contiguous));
    if (strcmp(p->method, "ilp") == 0)
        fprintf(f, "  ilp layers   %d optimal within gap, %d stopped at the limit, %d kept the start (%s; %d killed)\n",
                s->ilp_optimal, s->ilp_limited, s->fallback,
                o->place.replicas ? "eplb or splits" : "greedy + local search", s->watchdog_kills);
    fprintf(f, "  layer  max/mean\n");
    for (int l = 0; l < p->layers; l++) {
        double mx, mean;
        moe_plan_layer_load(p, l, load + (size_t)l * p->experts, &mx, &mean);
        fprintf(f, "  %5d  %.4f\n", l, mean > 0 ? mx / mean : 1.0);
    }
}

static moe_status run(int argc, char **argv)
{
    options o = {0};
    MOE_TRY(parse_args(argc, argv, &o));
    if (o.help) {
        fputs(USAGE, stdout);
        fflush(stdout);
        return MOE_OK;
    }
    moe_trace t;
    MOE_TRY(moe_trace_read(o.trace, &t));
    double *load = NULL;
    moe_status st = moe_trace_expert_load(&t, &load);
    int layers = t.layers, experts = t.experts;
    moe_trace_free(&t);
    if (st != MOE_OK) {
        moe_trace_frame(__FILE__, __LINE__);
        return st;
    }
    moe_plan p, ref;
    moe_place_stats s = {0};
    MOE_TRY_GOTO(moe_place(load, layers, experts, &o.place, &p, &s), st, out_load);
    /* The baseline every plan is compared to: contiguous, one copy each. */
    moe_place_opts c = o.place;
    c.method = MOE_PLACE_CONTIGUOUS;
    c.replicas = 0;
    c.slots_per_rank = 0;
    MOE_TRY_GOTO(moe_place(load, layers, experts, &c, &ref, NULL), st, out_plan);
    double contiguous = ref.objective;
    moe_plan_free(&ref);
    MOE_TRY_GOTO(moe_plan_write(o.out, &p), st, out_plan);
    print_result(&o, &p, load, &s, contiguous);
    if (fflush(stdout) != 0 || ferror(stdout))
        st = moe_fail(MOE_ERR_IO, "writing to stdout failed");
out_plan:
    moe_plan_free(&p);
out_load:
    free(load);
    return st;
}

int moe_plan_placement_main(int argc, char **argv)
{
    moe_error_clear();
    return moe_cmd_exit(PROG, run(argc, argv));
}
