#include "launch/plan.h"
#include "launch/plan_placement.h"
#include "launch/plan_parallel.h"
#include "launch/args.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"
#include "runtime/base/topology.h"

static const char *PLAN_USAGE = "usage: moe plan SUBCOMMAND [options]\n"
                                "  topology   show the parallel layout of W ranks: sizes, coordinates, groups\n"
                                "  placement  place experts on ranks from a routing trace (ILP on CBC, baselines)\n"
                                "  parallel   rank the parallel layouts of a model on W devices by predicted step time\n"
                                "Run 'moe plan SUBCOMMAND --help' for its options.\n";

static const char *TOPO_PROG = "moe plan topology";
static const char *TOPO_USAGE =
    "usage: moe plan topology --world W [--tp N] [--cp N] [--pp N] [--ep N] [--etp N]\n"
    "                         [--order S] [--json]\n"
    "  --world W   number of ranks (required)\n"
    "  --tp N      tensor parallel size (attention)                    default 1\n"
    "  --cp N      context parallel size (attention)                   default 1\n"
    "  --pp N      pipeline parallel size (both)                       default 1\n"
    "  --ep N      expert parallel size (MoE layers)                   default 1\n"
    "  --etp N     expert tensor parallel size (MoE layers)            default: --tp\n"
    "  --order S   axes from fastest- to slowest-varying               default tp-cp-ep-dp-pp\n"
    "  --json      one JSON object on stdout instead of tables\n"
    "DP = W/(TP*CP*PP) and EDP = W/(ETP*EP*PP) follow. Attention ranks are\n"
    "tp + TP*(cp + CP*(dp + DP*pp)), expert ranks etp + ETP*(ep + EP*(edp + EDP*pp))\n"
    "(default order). Exit status: 0 ok, 2 bad usage or invalid layout.\n";

typedef struct {
    int world, tp, cp, pp, ep, etp; /* etp < 0: same as tp */
    const char *order;
    int json, help;
} topo_options;

// ----------------------------------------------------------------------------
// command line

static moe_status parse_size(const char *name, const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s < '0' || *s > '9' || *end || errno || v < 1 || v > INT_MAX)
        return moe_fail(MOE_ERR_USAGE, "%s must be a positive integer, got '%s'", name, s);
    *out = (int)v;
    return MOE_OK;
}

static moe_status parse_topology_args(int argc, char **argv, topo_options *o)
{
    static const struct { const char *name; size_t off; } SIZES[] = {
        {"--world", offsetof(topo_options, world)}, {"--tp", offsetof(topo_options, tp)},
        {"--cp", offsetof(topo_options, cp)},       {"--pp", offsetof(topo_options, pp)},
        {"--ep", offsetof(topo_options, ep)},       {"--etp", offsetof(topo_options, etp)},
    };
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v;
        int matched = 0;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            o->help = 1;
            continue;
        }
        if (strcmp(a, "--json") == 0) {
            o->json = 1;
            continue;
        }
        if (moe_arg_is(a, "--order")) {
            MOE_TRY(moe_arg_value(argc, argv, &i, "--order", &o->order));
            continue;
        }
        for (size_t k = 0; k < sizeof SIZES / sizeof SIZES[0] && !matched; k++) {
            if (moe_arg_is(a, SIZES[k].name)) {
                MOE_TRY(moe_arg_value(argc, argv, &i, SIZES[k].name, &v));
                MOE_TRY(parse_size(SIZES[k].name, v, (int *)((char *)o + SIZES[k].off)));
                matched = 1;
            }
        }
        if (matched)
            continue;
        if (moe_arg_is_flag(a) || a[0] == '-')
            return moe_fail(MOE_ERR_USAGE, "unknown flag '%s'", a);
        return moe_fail(MOE_ERR_USAGE, "unexpected argument '%s'", a);
    }
    if (!o->help && o->world == 0)
        return moe_fail(MOE_ERR_USAGE, "--world W is required");
    return MOE_OK;
}

// ----------------------------------------------------------------------------
// output

/* Every group table, fetched once; tables[k] is (ngroups[k], gsize[k]). */
typedef struct {
    int ngroups[MOE_G_COUNT], gsize[MOE_G_COUNT];
    int *tables[MOE_G_COUNT];
} all_groups;

static void free_groups(all_groups *g)
{
    for (int k = 0; k < MOE_G_COUNT; k++)
        free(g->tables[k]);
}

static moe_status fetch_groups(const moe_layout *l, all_groups *g)
{
    memset(g, 0, sizeof *g);
    for (int k = 0; k < MOE_G_COUNT; k++) {
        moe_status st = moe_layout_groups(l, (moe_group_kind)k, &g->ngroups[k], &g->gsize[k], &g->tables[k]);
        if (st != MOE_OK) {
            free_groups(g);
            moe_trace_frame(__FILE__, __LINE__);
            return st;
        }
    }
    return MOE_OK;
}

static void print_json(FILE *f, const moe_layout *l, const all_groups *g)
{
    fprintf(f, "{\"world\":%d,\"sizes\":{\"tp\":%d,\"cp\":%d,\"pp\":%d,\"dp\":%d,\"ep\":%d,\"etp\":%d,\"edp\":%d},"
               "\"order\":\"%s\",\"groups\":{",
            l->world, l->tp, l->cp, l->pp, l->dp, l->ep, l->etp, l->edp, l->order);
    for (int k = 0; k < MOE_G_COUNT; k++) {
        fprintf(f, "%s\"%s\":[", k ? "," : "", moe_group_name((moe_group_kind)k));
        for (int i = 0; i < g->ngroups[k]; i++) {
            fputs(i ? ",[" : "[", f);
            for (int j = 0; j < g->gsize[k]; j++)
                fprintf(f, "%s%d", j ? "," : "", g->tables[k][(size_t)i * g->gsize[k] + j]);
            fputc(']', f);
        }
        fputc(']', f);
    }
    fputs("}}\n", f);
}

static const char *const GROUP_USE[MOE_G_COUNT] = {
    "attention tensor parallel",
    "context parallel (attention KV exchange)",
    "data parallel",
    "non-expert gradient reduce",
    "aux-loss token counts",
    "expert-bias / global aux counts",
    "pipeline stage send/recv (both mappings)",
    "token all-to-all",
    "expert tensor parallel",
    "routing-count all-gather",
    "expert gradient reduce",
};

/* Printed width of one group, "[a,b,c]". */
static int group_width(const int *m, int n)
{
    int w = 2;
    for (int j = 0; j < n; j++)
        w += snprintf(NULL, 0, "%d", m[j]) + (j > 0);
    return w;
}

/* Groups of one kind, wrapped under a hanging indent. */
static void print_group_row(FILE *f, moe_group_kind k, const all_groups *g)
{
    enum { INDENT = 24, WIDTH = 100 };
    int n = g->gsize[k];
    int col = fprintf(f, "  %-9s %4d %6d  ", moe_group_name(k), n, g->ngroups[k]);
    for (int i = 0; i < g->ngroups[k]; i++) {
        const int *m = g->tables[k] + (size_t)i * n;
        int w = group_width(m, n);
        if (i > 0 && col + 1 + w > WIDTH) {
            fprintf(f, "\n%*s", INDENT, "");
            col = INDENT;
        } else if (i > 0) {
            fputc(' ', f);
            col++;
        }
        fputc('[', f);
        for (int j = 0; j < n; j++)
            fprintf(f, "%s%d", j ? "," : "", m[j]);
        fputc(']', f);
        col += w;
    }
    fputc('\n', f);
}

static void print_tables(FILE *f, const moe_layout *l, const all_groups *g)
{
    fprintf(f, "%s: world %d, order %s\n", TOPO_PROG, l->world, l->order);
    fprintf(f, "  attention  TP %d x CP %d x DP %d x PP %d\n", l->tp, l->cp, l->dp, l->pp);
    fprintf(f, "  experts    ETP %d x EP %d x EDP %d x PP %d\n\n", l->etp, l->ep, l->edp, l->pp);

    fprintf(f, "  rank    tp   cp   dp   pp  |  etp   ep  edp\n");
    for (int r = 0; r < l->world; r++) {
        moe_coords c;
        moe_layout_coords(l, r, &c);
        fprintf(f, "  %4d  %4d %4d %4d %4d  | %4d %4d %4d\n", r, c.tp, c.cp, c.dp, c.pp, c.etp, c.ep, c.edp);
    }

    fprintf(f, "\n  group     size groups  members\n");
    for (int k = 0; k < MOE_G_COUNT; k++) {
        if (k == MOE_G_EP)
            fputc('\n', f);
        print_group_row(f, (moe_group_kind)k, g);
    }
    fprintf(f, "\n  group     used for\n");
    for (int k = 0; k < MOE_G_COUNT; k++)
        fprintf(f, "  %-9s %s\n", moe_group_name((moe_group_kind)k), GROUP_USE[k]);
}

// ----------------------------------------------------------------------------
// subcommands

static moe_status run_topology(int argc, char **argv)
{
    topo_options o = {.tp = 1, .cp = 1, .pp = 1, .ep = 1, .etp = -1};
    MOE_TRY(parse_topology_args(argc, argv, &o));
    if (o.help) {
        fputs(TOPO_USAGE, stdout);
        fflush(stdout);
        return MOE_OK;
    }
    moe_layout l;
    MOE_TRY(moe_layout_init(&l, o.world, o.tp, o.cp, o.pp, o.ep, o.etp < 0 ? o.tp : o.etp, o.order));
    all_groups g;
    MOE_TRY(fetch_groups(&l, &g));
    if (o.json)
        print_json(stdout, &l, &g);
    else
        print_tables(stdout, &l, &g);
    free_groups(&g);
    if (fflush(stdout) != 0 || ferror(stdout))
        return moe_fail(MOE_ERR_IO, "writing to stdout failed");
    return MOE_OK;
}

static int topology_main(int argc, char **argv)
{
    moe_status st = run_topology(argc, argv);
    if (st != MOE_OK) {
        moe_error_print(stderr, TOPO_PROG);
        if (st == MOE_ERR_USAGE)
            fprintf(stderr, "run '%s --help' for usage\n", TOPO_PROG);
    }
    return moe_exit_code(st);
}

int moe_plan_main(int argc, char **argv)
{
    moe_error_clear();
    if (argc < 1) {
        fprintf(stderr, "moe plan: error: missing plan (expected: topology, placement, parallel)\n%s", PLAN_USAGE);
        return 2;
    }
    if (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        fputs(PLAN_USAGE, stdout);
        fflush(stdout);
        return 0;
    }
    if (strcmp(argv[0], "topology") == 0)
        return topology_main(argc - 1, argv + 1);
    if (strcmp(argv[0], "placement") == 0)
        return moe_plan_placement_main(argc - 1, argv + 1);
    if (strcmp(argv[0], "parallel") == 0)
        return moe_plan_parallel_main(argc - 1, argv + 1);
    fprintf(stderr, "moe plan: error: unknown plan '%s' (expected: topology, placement, parallel)\n", argv[0]);
    return 2;
}
