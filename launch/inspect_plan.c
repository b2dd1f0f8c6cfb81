#include "launch/inspect_plan.h"
#include "launch/args.h"

#include <stdio.h>
#include <string.h>

#include "planner/placement.h"
#include "planner/plan.h"
#include "runtime/base/status.h"

static const char *PROG = "moe inspect plan";
static const char *USAGE = "usage: moe inspect plan PLAN [--json]\n"
                           "  validate an expert placement plan and show it (--json: one object on stdout)\n"
                           "Exit status: 0 valid, 2 bad usage or invalid plan, 1 I/O failure.\n";

static void print_json(FILE *f, const char *path, const moe_plan *p)
{
    fputs("{\"file\":", f);
    moe_json_string(f, path);
    fputs(",\"method\":", f);
    moe_json_string(f, p->method);
    fprintf(f, ",\"ep\":%d,\"ranks_per_node\":%d,\"slots_per_rank\":%d,\"layers\":%d,\"experts\":%d,"
               "\"objective\":%.17g,\"lower_bound\":%.17g,\"gap\":%.17g,\"solve_s\":%.17g,\"placement\":[",
            p->ep, p->ranks_per_node, p->slots_per_rank, p->layers, p->experts, p->objective, p->lower_bound, p->gap,
            p->solve_s);
    for (int l = 0; l < p->layers; l++) {
        fputs(l ? ",[" : "[", f);
        for (int e = 0; e < p->experts; e++) {
            const moe_plan_copy *c = moe_plan_copies(p, l, e);
            fputs(e ? ",[" : "[", f);
            for (int k = 0; k < p->ncopies[(size_t)l * p->experts + e]; k++)
                fprintf(f, "%s{\"rank\":%d,\"share\":%.17g}", k ? "," : "", c[k].rank, c[k].share);
            fputc(']', f);
        }
        fputc(']', f);
    }
    fputs("]}\n", f);
}

static void print_text(FILE *f, const char *path, const moe_plan *p)
{
    fprintf(f, "%s: %s\n", PROG, path);
    fprintf(f, "  method %s, EP %d, %d ranks per node, %d slots per rank\n", p->method, p->ep, p->ranks_per_node,
            p->slots_per_rank);
    fprintf(f, "  %d layers x %d experts, up to %d copies per expert\n", p->layers, p->experts, p->max_copies);
    fprintf(f, "  objective %.6g, lower bound %.6g, gap %.3f%%, solve %.2f s\n", p->objective, p->lower_bound,
            100 * p->gap, p->solve_s);
    for (int l = 0; l < p->layers; l++) {
        fprintf(f, "  layer %d\n", l);
        for (int r = 0; r < p->ep; r++) {
            fprintf(f, "    rank %4d:", r);
            for (int e = 0; e < p->experts; e++) {
                const moe_plan_copy *c = moe_plan_copies(p, l, e);
                for (int k = 0; k < p->ncopies[(size_t)l * p->experts + e]; k++)
                    if (c[k].rank == r && c[k].share < 1)
                        fprintf(f, " %d(%.3g)", e, c[k].share);
                    else if (c[k].rank == r)
                        fprintf(f, " %d", e);
            }
            fputc('\n', f);
        }
    }
}

static moe_status run(int argc, char **argv)
{
    const char *path = NULL;
    int json = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(USAGE, stdout);
            fflush(stdout);
            return MOE_OK;
        }
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (argv[i][0] == '-')
            return moe_fail(MOE_ERR_USAGE, "unknown flag '%s'", argv[i]);
        else if (path)
            return moe_fail(MOE_ERR_USAGE, "unexpected argument '%s' (one PLAN only)", argv[i]);
        else
            path = argv[i];
    }
    if (!path)
        return moe_fail(MOE_ERR_USAGE, "missing PLAN (usage: moe inspect plan PLAN [--json])");
    moe_plan p;
    MOE_TRY(moe_plan_read(path, &p));
    if (json)
        print_json(stdout, path, &p);
    else
        print_text(stdout, path, &p);
    moe_plan_free(&p);
    if (fflush(stdout) != 0 || ferror(stdout))
        return moe_fail(MOE_ERR_IO, "writing to stdout failed");
    return MOE_OK;
}

int moe_inspect_plan_main(int argc, char **argv)
{
    moe_error_clear();
    return moe_cmd_exit(PROG, run(argc, argv));
}
