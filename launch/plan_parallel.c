#include "launch/plan_parallel.h"
#include "launch/args.h"
#include "runtime/base/flops.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "planner/costmodel.h"
#include "planner/hwprofile.h"
#include "planner/placement.h"
#include "planner/trace.h"
#include "runtime/base/config.h"
#include "runtime/base/status.h"

static const char *PROG = "moe plan parallel";
static const char *USAGE =
    "usage: moe plan parallel --config CFG.yaml --world W --hw PROFILE.yaml [options]\n"
    "       moe plan parallel --reproduce [--hw-dir DIR] [--json]\n"
    "  --config FILE          model and training config (moe train's YAML; also --model)   required\n"
    "  --world W              ranks                                                     required\n"
    "  --hw FILE              hardware profile, configs/hw/*.yaml (also --hardware)      required\n"
    "  --global-batch G       sequences per step                      default: the config's\n"
    "  --micro-batch M        sequences per micro-batch               default: the config's\n"
    "  --top K                show the K fastest layouts (0 = all)                  default 10\n"
    "  --tp/--cp/--pp/--ep/--etp N   only layouts with this size (all five: one layout)\n"
    "  --sp on|off            sequence parallelism                default: on when TP > 1\n"
    "  --vpp V                virtual pipeline stages per rank                       default 1\n"
    "  --ranks-per-node K     ranks sharing a node's links            default: the profile's\n"
    "  --precision P          fp32 (this runtime) or bf16 (mixed)     default: the profile's\n"
    "  --gemm-efficiency F    fraction of the GEMM peak reached       default: the profile's\n"
    "  --link-efficiency F    fraction of link bandwidth reached      default: the profile's\n"
    "  --ep-hidden F          fraction of min(EP comm, expert compute) hidden\n"
    "                         default: moe-overlap none 0, coarse 1-1/min(4,E/EP), fine 1-1/EP\n"
    "  --dp-hidden F          fraction of the last backward the grad sync hides behind  default bf16 1, fp32 0\n"
    "  --tp-hidden F          fraction of TP comm hidden                             default 0\n"
    "  --imbalance F          max/mean expert load (1 = uniform routing)             default 1\n"
    "  --routing-trace FILE   the expert load from a routing trace (moe train --trace-routing, best with\n"
    "                         --trace-window 1): each layout's max/mean rank load, contiguous experts or\n"
    "                         the config's --expert-placement plan where its EP size matches\n"
    "  --trace-from-step N    only the trace windows from step N (skips warm-up)        default 0\n"
    "  --mem-usable F         fraction of device memory a run may use              default 0.9\n"
    "  --param-gather-overlap the distributed optimizer's all-gather hides behind forward\n"
    "  --all                  also list the layouts the runtime would refuse, with why\n"
    "  --<key> V              any moe train config key (--use-distributed-optimizer, --moe-overlap fine...)\n"
    "  --reproduce            predicted against published MFU and layer times (docs/perf-model.md)\n"
    "  --hw-dir DIR           where --reproduce finds h100-sxm.yaml, h800.yaml  default configs/hw\n"
    "  --json                 one JSON object on stdout instead of tables\n"
    "Layouts that do not fit memory are listed apart with the reason; the rest are ranked by\n"
    "predicted tokens/s. The model and its assumptions: docs/perf-model.md.\n"
    "Exit status: 0 ok, 2 bad usage, config or profile, 1 other failures.\n";

enum { MAX_PASS = 256 };

typedef struct {
    const char *hw, *hw_dir;
    int world, top, json, help, all, reproduce, global_batch, micro_batch;
    moe_cost_filter filter;
    moe_cost_opts opts;
    int npass;
    char *pass[MAX_PASS]; /* config flags for moe_config_parse_args */
    const char *config;
    const char *trace;     /* --routing-trace */
    int trace_from_step;
    double *ep_imbalance;  /* [experts + 1] from the trace, owned */
} options;

// ----------------------------------------------------------------------------
// command line



static moe_status add_pass(options *o, char *s)
{
    if (o->npass == MAX_PASS)
        return moe_fail(MOE_ERR_USAGE, "too many config flags (more than %d words)", MAX_PASS);
    o->pass[o->npass++] = s;
    return MOE_OK;
}

/* Flags of this command taking an integer size; the pointer to fill. */
static int *size_flag(options *o, const char *a, const char **name)
{
    static const char *N[] = {"--world", "--top", "--tp", "--cp", "--pp", "--ep", "--etp", "--vpp",
                              "--ranks-per-node", "--global-batch", "--micro-batch", "--trace-from-step"};
    int *P[] = {&o->world,          &o->top,          &o->filter.tp, &o->filter.cp, &o->filter.pp,
                &o->filter.ep,      &o->filter.etp,   &o->opts.vpp,  &o->opts.ranks_per_node,
                &o->global_batch,   &o->micro_batch,  &o->trace_from_step};
    for (size_t k = 0; k < sizeof N / sizeof N[0]; k++)
        if (moe_arg_is(a, N[k])) {
            *name = N[k];
            return P[k];
        }
    return NULL;
}

static double *real_flag(options *o, const char *a, const char **name, double *lo)
{
    static const char *N[] = {"--gemm-efficiency", "--link-efficiency", "--ep-hidden", "--dp-hidden",
                              "--tp-hidden",       "--imbalance",       "--mem-usable"};
    double *P[] = {&o->opts.gemm_efficiency, &o->opts.link_efficiency, &o->opts.ep_hidden, &o->opts.dp_hidden,
                   &o->opts.tp_hidden,       &o->opts.expert_imbalance, &o->opts.mem_usable};
    for (size_t k = 0; k < sizeof N / sizeof N[0]; k++)
        if (moe_arg_is(a, N[k])) {
            *name = N[k];
            *lo = k == 5 ? 1 : 0;
            return P[k];
        }
    return NULL;
}

static moe_status parse_args(int argc, char **argv, options *o)
{
    for (int i = 0; i < argc; i++) {
        char *a = argv[i];
        const char *v, *name;
        int *ip;
        double *dp, lo;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            o->help = 1;
        else if (strcmp(a, "--json") == 0)
            o->json = 1;
        else if (strcmp(a, "--all") == 0)
            o->all = 1;
        else if (strcmp(a, "--reproduce") == 0)
            o->reproduce = 1;
        else if (strcmp(a, "--param-gather-overlap") == 0)
            o->opts.param_gather_overlap = 1;
        else if (moe_arg_is(a, "--hw") || moe_arg_is(a, "--hardware"))
            MOE_TRY(moe_arg_value(argc, argv, &i, moe_arg_is(a, "--hw") ? "--hw" : "--hardware", &o->hw));
        else if (moe_arg_is(a, "--routing-trace"))
            MOE_TRY(moe_arg_value(argc, argv, &i, "--routing-trace", &o->trace));
        else if (moe_arg_is(a, "--hw-dir"))
            MOE_TRY(moe_arg_value(argc, argv, &i, "--hw-dir", &o->hw_dir));
        else if (moe_arg_is(a, "--config") || moe_arg_is(a, "--model"))
            MOE_TRY(moe_arg_value(argc, argv, &i, moe_arg_is(a, "--config") ? "--config" : "--model", &o->config));
        else if (moe_arg_is(a, "--sp")) {
            MOE_TRY(moe_arg_value(argc, argv, &i, "--sp", &v));
            if (strcmp(v, "on") && strcmp(v, "off"))
                return moe_fail(MOE_ERR_USAGE, "--sp must be on or off, got '%s'", v);
            o->filter.sp = strcmp(v, "on") == 0;
        } else if (moe_arg_is(a, "--precision")) {
            MOE_TRY(moe_arg_value(argc, argv, &i, "--precision", &v));
            if (strcmp(v, "fp32") && strcmp(v, "bf16"))
                return moe_fail(MOE_ERR_USAGE, "--precision must be fp32 or bf16, got '%s'", v);
            o->opts.precision = strcmp(v, "bf16") == 0 ? MOE_PREC_BF16 : MOE_PREC_FP32;
        } else if ((ip = size_flag(o, a, &name))) {
            MOE_TRY(moe_arg_value(argc, argv, &i, name, &v));
            MOE_TRY(moe_arg_int(name, v, strcmp(name, "--top") && strcmp(name, "--trace-from-step") ? 1 : 0, ip));
        } else if ((dp = real_flag(o, a, &name, &lo))) {
            MOE_TRY(moe_arg_value(argc, argv, &i, name, &v));
            MOE_TRY(moe_arg_real(name, v, lo, lo == 1 ? 1e6 : 1, dp));
        } else if (moe_arg_is_flag(a)) { /* a config key, with its value if one follows */
            MOE_TRY(add_pass(o, a));
            if (!strchr(a, '=') && i + 1 < argc && !moe_arg_is_flag(argv[i + 1]))
                MOE_TRY(add_pass(o, argv[++i]));
        } else
            return moe_fail(MOE_ERR_USAGE, "unexpected argument '%s'", a);
    }
    if (o->help || o->reproduce)
        return MOE_OK;
    if (!o->config)
        return moe_fail(MOE_ERR_USAGE, "--config FILE is required");
    if (!o->hw)
        return moe_fail(MOE_ERR_USAGE, "--hw PROFILE.yaml is required");
    if (o->world < 1)
        return moe_fail(MOE_ERR_USAGE, "--world W is required");
    if (o->trace && o->opts.expert_imbalance != 1)
        return moe_fail(MOE_ERR_USAGE, "--imbalance and --routing-trace both set the expert load: give one");
    return MOE_OK;
}

static moe_status load_config(const options *o, moe_config *c)
{
    moe_config_defaults(c);
    char *argv[MAX_PASS + 2];
    int n = 0;
    argv[n++] = "--config";
    argv[n++] = (char *)o->config;
    for (int i = 0; i < o->npass; i++)
        argv[n++] = o->pass[i];
    MOE_TRY(moe_config_parse_args(c, n, argv, 0));
    if (o->global_batch)
        c->global_batch_size = o->global_batch;
    if (o->micro_batch)
        c->micro_batch_size = o->micro_batch;
    /* the model on one rank: resolves moe-layer-freq and checks the shapes */
    moe_config one = *c;
    one.nproc = 1;
    one.tensor_model_parallel_size = one.context_parallel_size = one.pipeline_model_parallel_size = 1;
    one.expert_model_parallel_size = one.expert_tensor_parallel_size = 1;
    one.global_batch_size = one.micro_batch_size;
    MOE_TRY(moe_config_validate(&one));
    memcpy(c->moe_layer_is_moe, one.moe_layer_is_moe, sizeof c->moe_layer_is_moe);
    c->num_query_groups = one.num_query_groups;
    if (c->vocab_size == 0)
        c->vocab_size = 256; /* the byte tokenizer */
    return MOE_OK;
}

static int count_moe_layers(const moe_config *c)
{
    int n = 0;
    for (int l = 0; l < c->num_layers; l++)
        n += c->moe_layer_is_moe[l] != 0;
    return n;
}

/* Each EP size's expert load imbalance from --routing-trace: contiguous
** experts, or the config's expert-placement plan for its own EP size. */
static moe_status trace_imbalance(options *o, const moe_config *c)
{
    int moe_layers = count_moe_layers(c), E = c->num_experts;
    moe_trace t = {0};
    moe_plan plan = {0};
    int have_plan = 0;
    MOE_TRY(moe_trace_read(o->trace, &t));
    moe_status st = MOE_OK;
    if (t.layers != moe_layers || t.experts != E || t.topk != c->moe_router_topk)
        st = moe_fail(MOE_ERR_USAGE,
                      "--routing-trace %s: %d MoE layers, %d experts, top-%d; the config has %d, %d, top-%d",
                      o->trace, t.layers, t.experts, t.topk, moe_layers, E, c->moe_router_topk);
    if (st == MOE_OK && c->expert_placement[0]) {
        st = moe_plan_read(c->expert_placement, &plan);
        have_plan = st == MOE_OK;
    }
    if (st == MOE_OK && !(o->ep_imbalance = calloc((size_t)E + 1, sizeof *o->ep_imbalance)))
        st = moe_fail(MOE_ERR_NOMEM, "imbalance table of %d experts", E);
    for (int ep = 1; st == MOE_OK && ep <= E; ep++)
        if (E % ep == 0)
            st = moe_plan_trace_imbalance(&t, have_plan && plan.ep == ep ? &plan : NULL, ep, o->trace_from_step,
                                          &o->ep_imbalance[ep]);
    if (st == MOE_OK)
        o->opts.ep_imbalance = o->ep_imbalance, o->opts.ep_imbalance_n = E + 1;
    if (have_plan)
        moe_plan_free(&plan);
    moe_trace_free(&t);
    return st;
}

// ----------------------------------------------------------------------------
// output: text

static const char *const DIM[MOE_COMM_N] = {"tp", "cp", "ep", "etp", "pp", "dp"};
#define GIB 1073741824.0

static void print_assumptions(FILE *f, const options *op, const moe_cost_report *r, const moe_hwprofile *hw,
                              const moe_config *c)
{
    const moe_cost_opts *o = &op->opts;
    fprintf(f, "  assumptions: %s training, GEMM efficiency %.2f, link efficiency %.2f, %d ranks per node,\n",
            r->precision == MOE_PREC_BF16 ? "bf16 mixed-precision" : "fp32", r->gemm_efficiency,
            r->link_efficiency, o->ranks_per_node > 0 ? o->ranks_per_node : hw->ranks_per_node);
    fprintf(f,
            "    EP comm hidden %.2f x min(comm, experts) (moe-overlap %s), DP sync hidden behind %.2f of the "
            "last\n",
            r->ep_hidden, c->moe_overlap == 2 ? "fine" : c->moe_overlap == 1 ? "coarse" : "none", r->dp_hidden);
    fprintf(f, "    backward, TP comm %.0f%% hidden, distributed optimizer %s, parameter all-gather %s, vpp %d,\n",
            100 * o->tp_hidden, c->use_distributed_optimizer ? "on" : "off",
            o->param_gather_overlap ? "overlapped" : "exposed", o->vpp);
    if (op->trace)
        fprintf(f, "    expert load max/mean %.2f for the first layout (each layout's from the routing trace %s,\n"
                   "    windows from step %d, %s), %.0f%% of device memory usable\n",
                r->expert_imbalance, op->trace, op->trace_from_step,
                c->expert_placement[0] ? "the config's placement at its EP size, else contiguous" : "contiguous",
                100 * o->mem_usable);
    else
        fprintf(f, "    expert load max/mean %.2f, %.0f%% of device memory usable\n", o->expert_imbalance,
                100 * o->mem_usable);
}

static void print_row(FILE *f, int rank, const moe_cost_layout *e)
{
    const moe_cost_report *r = &e->r;
    fprintf(f, "  %3d  %2d %2d %2d %3d %3d %2s %3d %3d %4d %9.1f %11.4g %5.1f%% %7.2f |%8.1f %7.1f", rank, e->tp, e->cp,
            e->pp, e->ep, e->etp, e->sp ? "on" : "-", r->dp, r->edp, r->micro_batches, 1e3 * r->step_s,
            r->tokens_per_s, 100 * r->mfu, r->mem_total / GIB, 1e3 * r->compute_s, 1e3 * r->bubble_s);
    for (int d = 0; d < MOE_COMM_N; d++)
        fprintf(f, " %7.1f", 1e3 * r->comm[d].exposed_s);
    fprintf(f, " %6.1f\n", 1e3 * r->optimizer_s);
}

static void print_header(FILE *f)
{
    fprintf(f, "    #  tp cp pp  ep etp sp  dp edp    m   step_ms    tokens/s    MFU mem_GiB |"
               "  ---------------------- ms per step, exposed ----------------------\n");
    fprintf(f, "                                                                             |"
               " compute  bubble      tp      cp      ep     etp      pp      dp    opt\n");
}

static void print_detail(FILE *f, const moe_cost_layout *e)
{
    const moe_cost_report *r = &e->r;
    fprintf(f, "\n  layout tp %d cp %d pp %d ep %d etp %d (dp %d, edp %d), sequence parallel %s, %d micro-batches:\n",
            e->tp, e->cp, e->pp, e->ep, e->etp, r->dp, r->edp, e->sp ? "on" : "off", r->micro_batches);
    fprintf(f, "    micro-batch on the slowest stage: forward %.3f ms, backward %.3f ms (compute + exposed comm)\n",
            1e3 * r->fwd_mb_s, 1e3 * r->bwd_mb_s);
    fprintf(f, "    step %.3f ms = compute %.3f + bubble %.3f (%.1f%%) + exposed comm + optimizer %.3f\n",
            1e3 * r->step_s, 1e3 * r->compute_s, 1e3 * r->bubble_s, 100 * r->bubble_fraction,
            1e3 * r->optimizer_s);
    fprintf(f, "    compute %.3f ms = GEMMs %.3f + element-wise passes %.3f; of it %.0f kernel calls x overhead = %.3f\n",
            1e3 * r->compute_s, 1e3 * (r->compute_s - r->elementwise_s), 1e3 * r->elementwise_s, r->kernel_calls,
            1e3 * r->overhead_s);
    fprintf(f, "    comm     exposed_ms  hidden_ms   MB_sent  link\n");
    for (int d = 0; d < MOE_COMM_N; d++)
        fprintf(f, "    %-5s %12.3f %10.3f %9.1f  %s\n", DIM[d], 1e3 * r->comm[d].exposed_s,
                1e3 * r->comm[d].hidden_s, r->comm[d].bytes / 1e6,
                r->comm[d].bytes > 0 ? (r->comm[d].inter_node ? "inter-node" : "intra-node") : "-");
    fprintf(f, "    tokens/s %.6g, model %.4g GFLOP/token, MFU %.2f%%\n", r->tokens_per_s, r->flops_per_token / 1e9,
            100 * r->mfu);
    fprintf(f, "    memory per rank (stage %d): params %.3f + grads %.3f + optimizer %.3f + activations %.3f + "
               "buffers %.3f = %.3f GiB of %.3f usable (%s)\n",
            r->mem_stage, r->mem_params / GIB, r->mem_grads / GIB, r->mem_optimizer / GIB, r->mem_activations / GIB,
            r->mem_buffers / GIB, r->mem_total / GIB, r->mem_capacity / GIB, r->fits ? "fits" : "does not fit");
}

typedef struct {
    int fit, nofit, invalid;
} counts;

static counts count_layouts(const moe_cost_layout *t, int n)
{
    counts k = {0, 0, 0};
    for (int i = 0; i < n; i++) {
        if (!t[i].valid)
            k.invalid++;
        else if (t[i].r.fits)
            k.fit++;
        else
            k.nofit++;
    }
    return k;
}

static void print_text(FILE *f, const options *o, const moe_config *c, const moe_hwprofile *hw,
                       const moe_cost_layout *t, int n)
{
    counts k = count_layouts(t, n);
    double total, active;
    moe_cost_param_counts(c, &total, &active);
    int moe_layers = count_moe_layers(c);
    fprintf(f, "%s: %s on %d ranks of %s (%s), global batch %d x %d tokens\n", PROG, o->config, o->world, hw->name,
            hw->path, c->global_batch_size, c->seq_length);
    fprintf(f, "  model: %d layers (%d MoE), hidden %d, %d experts top-%d, vocab %d; %.4g B parameters (%.4g B "
               "active), %.4g GFLOP/token\n",
            c->num_layers, moe_layers, c->hidden_size, c->num_experts, c->moe_router_topk, c->vocab_size, total / 1e9,
            active / 1e9, moe_flops_per_token(c) / 1e9);
    if (k.fit + k.nofit > 0)
        print_assumptions(f, o, &t[0].r, hw, c);
    fprintf(f, "  layouts: %d considered: %d fit, %d do not fit memory, %d refused by the runtime's checks%s\n\n", n,
            k.fit, k.nofit, k.invalid, k.invalid && !o->all ? " (--all lists them)" : "");
    int top = o->top > 0 ? o->top : n;
    if (k.fit) {
        print_header(f);
        for (int i = 0; i < k.fit && i < top; i++)
            print_row(f, i + 1, &t[i]);
        if (k.fit > top)
            fprintf(f, "  ... %d more (--top 0 lists all)\n", k.fit - top);
        print_detail(f, &t[0]);
    } else
        fprintf(f, "  no layout fits.\n");
    if (k.nofit) {
        fprintf(f, "\n  do not fit memory (%d):\n", k.nofit);
        for (int i = k.fit; i < k.fit + k.nofit && i < k.fit + top; i++)
            fprintf(f, "    tp %d cp %d pp %d ep %d etp %d: %s\n", t[i].tp, t[i].cp, t[i].pp, t[i].ep, t[i].etp,
                    t[i].r.reason);
        if (k.nofit > top)
            fprintf(f, "    ... %d more\n", k.nofit - top);
    }
    if (o->all && k.invalid) {
        fprintf(f, "\n  refused by the runtime's checks (%d):\n", k.invalid);
        for (int i = k.fit + k.nofit; i < n; i++)
            fprintf(f, "    tp %d cp %d pp %d ep %d etp %d: %s\n", t[i].tp, t[i].cp, t[i].pp, t[i].ep, t[i].etp,
                    t[i].why);
    }
}

// ----------------------------------------------------------------------------
// output: JSON

static void json_layout(FILE *f, const moe_cost_layout *e)
{
    const moe_cost_report *r = &e->r;
    fprintf(f,
            "{\"tp\":%d,\"cp\":%d,\"pp\":%d,\"ep\":%d,\"etp\":%d,\"dp\":%d,\"edp\":%d,\"sp\":%s,\"vpp\":%d,"
            "\"micro_batches\":%d,\"step_ms\":%.6g,\"tokens_per_s\":%.6g,\"mfu\":%.6g,\"mem_gib\":%.6g,\"fits\":%s,"
            "\"expert_imbalance\":%.6g,",
            e->tp, e->cp, e->pp, e->ep, e->etp, r->dp, r->edp, e->sp ? "true" : "false", r->vpp, r->micro_batches,
            1e3 * r->step_s, r->tokens_per_s, r->mfu, r->mem_total / GIB, r->fits ? "true" : "false",
            r->expert_imbalance);
    fprintf(f, "\"compute_ms\":%.6g,\"bubble_ms\":%.6g,\"bubble_fraction\":%.6g,\"optimizer_ms\":%.6g,",
            1e3 * r->compute_s, 1e3 * r->bubble_s, r->bubble_fraction, 1e3 * r->optimizer_s);
    fprintf(f, "\"core_wait_ms\":%.6g,\"core_wait_filled_ms\":%.6g,", 1e3 * r->core_wait_s,
            1e3 * r->core_wait_filled_s);
    fprintf(f, "\"fwd_microbatch_ms\":%.6g,\"bwd_microbatch_ms\":%.6g,", 1e3 * r->fwd_mb_s, 1e3 * r->bwd_mb_s);
    fprintf(f, "\"elementwise_ms\":%.6g,\"kernel_calls\":%.6g,\"overhead_ms\":%.6g,", 1e3 * r->elementwise_s,
            r->kernel_calls, 1e3 * r->overhead_s);
    const char *what[] = {"comm_exposed_ms", "comm_hidden_ms", "comm_mb"};
    for (int w = 0; w < 3; w++) {
        fprintf(f, "\"%s\":{", what[w]);
        for (int d = 0; d < MOE_COMM_N; d++) {
            double v = w == 0   ? 1e3 * r->comm[d].exposed_s
                       : w == 1 ? 1e3 * r->comm[d].hidden_s
                                : r->comm[d].bytes / 1e6;
            fprintf(f, "%s\"%s\":%.6g", d ? "," : "", DIM[d], v);
        }
        fputs("},", f);
    }
    fprintf(f,
            "\"mem\":{\"stage\":%d,\"params_gib\":%.6g,\"grads_gib\":%.6g,\"optimizer_gib\":%.6g,"
            "\"activations_gib\":%.6g,\"buffers_gib\":%.6g,\"capacity_gib\":%.6g}",
            r->mem_stage, r->mem_params / GIB, r->mem_grads / GIB, r->mem_optimizer / GIB, r->mem_activations / GIB,
            r->mem_buffers / GIB, r->mem_capacity / GIB);
    if (!r->fits) {
        fputs(",\"reason\":", f);
        moe_json_string(f, r->reason);
    }
    fputc('}', f);
}

static void print_json(FILE *f, const options *o, const moe_config *c, const moe_hwprofile *hw,
                       const moe_cost_layout *t, int n)
{
    counts k = count_layouts(t, n);
    double total, active;
    moe_cost_param_counts(c, &total, &active);
    fprintf(f, "{\"world\":%d,\"hardware\":", o->world);
    moe_json_string(f, hw->name);
    fprintf(f, ",\"config\":");
    moe_json_string(f, o->config);
    fprintf(f,
            ",\"model\":{\"layers\":%d,\"hidden\":%d,\"experts\":%d,\"topk\":%d,\"vocab\":%d,\"params\":%.6g,"
            "\"active_params\":%.6g,\"flops_per_token\":%.6g},\"global_batch\":%d,\"micro_batch\":%d,"
            "\"seq_length\":%d,\"considered\":%d,\"valid\":%d,\"invalid\":%d,",
            c->num_layers, c->hidden_size, c->num_experts, c->moe_router_topk, c->vocab_size, total, active,
            moe_flops_per_token(c), c->global_batch_size, c->micro_batch_size, c->seq_length, n, k.fit + k.nofit,
            k.invalid);
    const moe_cost_opts *p = &o->opts;
    fprintf(f,
            "\"assumptions\":{\"gemm_efficiency\":%.6g,\"link_efficiency\":%.6g,\"ranks_per_node\":%d,"
            "\"dp_hidden\":%.6g,\"tp_hidden\":%.6g,\"ep_hidden\":%.6g,\"param_gather_overlap\":%s,\"vpp\":%d,"
            "\"expert_imbalance\":%.6g,\"mem_usable\":%.6g,\"distributed_optimizer\":%s},",
            p->gemm_efficiency > 0 ? p->gemm_efficiency : hw->gemm_efficiency,
            p->link_efficiency > 0 ? p->link_efficiency : hw->link_efficiency,
            p->ranks_per_node > 0 ? p->ranks_per_node : hw->ranks_per_node, p->dp_hidden, p->tp_hidden, p->ep_hidden,
            p->param_gather_overlap ? "true" : "false", p->vpp, p->expert_imbalance, p->mem_usable,
            c->use_distributed_optimizer ? "true" : "false");
    fputs("\"routing_trace\":", f);
    if (o->trace) {
        moe_json_string(f, o->trace);
        fprintf(f, ",\"trace_from_step\":%d,", o->trace_from_step);
    } else
        fputs("null,", f);
    int top = o->top > 0 ? o->top : n;
    fputs("\"layouts\":[", f);
    for (int i = 0; i < k.fit && i < top; i++) {
        if (i)
            fputc(',', f);
        json_layout(f, &t[i]);
    }
    fputs("],\"refused\":[", f);
    for (int i = k.fit; i < k.fit + k.nofit && i < k.fit + top; i++) {
        if (i > k.fit)
            fputc(',', f);
        json_layout(f, &t[i]);
    }
    fputs("]", f);
    if (o->all) {
        fputs(",\"invalid_layouts\":[", f);
        for (int i = k.fit + k.nofit; i < n; i++) {
            fprintf(f, "%s{\"tp\":%d,\"cp\":%d,\"pp\":%d,\"ep\":%d,\"etp\":%d,\"why\":", i > k.fit + k.nofit ? "," : "",
                    t[i].tp, t[i].cp, t[i].pp, t[i].ep, t[i].etp);
            moe_json_string(f, t[i].why);
            fputc('}', f);
        }
        fputc(']', f);
    }
    fputs("}\n", f);
}

// ----------------------------------------------------------------------------
// --reproduce: published settings against the model (docs/perf-model.md)

/* A published end-to-end run: the model, its layout and the published MFU. */
typedef struct {
    const char *model, *source;
    int layers, hidden, ffn, heads, groups, experts, topk, expert_ffn, shared_ffn, vocab, seq;
    int world, tp, pp, ep, etp, cp, vpp, mbs, gbs;
    double published_mfu;
} published_run;

/* Model shapes: the Hugging Face configs (Mixtral-8x22B-v0.1: 56 layers,
** hidden 6144, 48 heads, 8 KV heads, FFN 16384, 8 experts top-2, vocab 32000;
** Qwen2-57B-A14B: 28 layers, hidden 3584, 28 heads, 4 KV heads, 64 experts
** top-8 of width 2560, shared expert 20480, vocab 151936), the same as
** Megatron-MoE-ModelZoo's model_configs. Layouts: Megatron-MoE-ModelZoo
** runtime_configs/benchmarking/runtime.conf (the folding paper's first
** authors' recipes; ETP 1 as its Mixtral-8x22B.yaml sets), which lists
** Mixtral-8x22B as TP2 PP8 EP8 on 16 nodes with VPP 1 in one version and VPP
** 7 in another, and Qwen2-57B-A14B as TP2 PP4 EP4 VPP7 on 8 nodes, both MBS
** 1, GBS 256, seq 4096. The MFUs are the paper's abstract (arXiv
** 2504.14960); which exact run they come from is not stated there. */
static const published_run RUNS[] = {
    {"Mixtral 8x22B", "arXiv 2504.14960 abstract; layout: ModelZoo runtime.conf (VPP 1)", 56, 6144, 16384, 48, 8, 8,
     2, 16384, 0, 32000, 4096, 128, 2, 8, 8, 1, 1, 1, 1, 256, 0.493},
    {"Mixtral 8x22B", "arXiv 2504.14960 abstract; layout: ModelZoo runtime.conf (VPP 7)", 56, 6144, 16384, 48, 8, 8,
     2, 16384, 0, 32000, 4096, 128, 2, 8, 8, 1, 1, 7, 1, 256, 0.493},
    {"Qwen2-57B-A14B", "arXiv 2504.14960 abstract; layout: ModelZoo runtime.conf (VPP 7)", 28, 3584, 18944, 28, 4,
     64, 8, 2560, 20480, 151936, 4096, 64, 2, 4, 4, 1, 1, 7, 1, 256, 0.390},
    {"Qwen2-57B-A14B", "arXiv 2504.14960 abstract; layout: ModelZoo runtime.conf, VPP 1 instead of 7", 28, 3584,
     18944, 28, 4, 64, 8, 2560, 20480, 151936, 4096, 64, 2, 4, 4, 1, 1, 1, 1, 256, 0.390},
};

/* One MoE layer of flux's docs/performance.md (notes/comet.md section 4):
** 8 H800, TP8 EP1, 8192 tokens, hidden = FFN = 8192, bf16, non-gated. */
typedef struct {
    int experts, topk;
    double torch0_ms, flux0_ms, torch1_ms, flux1_ms;
} flux_row;

static const flux_row FLUX[] = {
    {32, 4, 4.702, 1.146, 10.452, 1.863},
    {8, 2, 2.124, 0.657, 4.561, 1.019},
};

static void run_config(const published_run *p, moe_config *c)
{
    moe_config_defaults(c);
    c->num_layers = p->layers, c->hidden_size = p->hidden, c->ffn_hidden_size = p->ffn;
    c->num_attention_heads = p->heads, c->num_query_groups = p->groups;
    c->num_experts = p->experts, c->moe_router_topk = p->topk, c->moe_ffn_hidden_size = p->expert_ffn;
    c->moe_shared_expert_intermediate_size = p->shared_ffn, c->vocab_size = p->vocab, c->seq_length = p->seq;
    snprintf(c->moe_layer_freq, sizeof c->moe_layer_freq, "1");
    c->untie_embeddings_and_output_weights = 1;
    c->nproc = p->world, c->tensor_model_parallel_size = p->tp, c->pipeline_model_parallel_size = p->pp;
    c->expert_model_parallel_size = p->ep, c->expert_tensor_parallel_size = p->etp;
    c->context_parallel_size = p->cp, c->sequence_parallel = p->tp > 1;
    c->micro_batch_size = p->mbs, c->global_batch_size = p->gbs;
    c->use_distributed_optimizer = 1;
    c->moe_overlap = 0; /* Megatron's alltoall dispatcher without EP overlap */
}

static moe_status load_profile(const char *dir, const char *name, moe_hwprofile *hw)
{
    char path[1024];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return moe_fail(MOE_ERR_USAGE, "--hw-dir path too long");
    MOE_TRY(moe_hwprofile_load(path, hw));
    return MOE_OK;
}

static moe_status reproduce(const options *o)
{
    const char *dir = o->hw_dir ? o->hw_dir : "configs/hw";
    moe_hwprofile h100, h800;
    MOE_TRY(load_profile(dir, "h100-sxm.yaml", &h100));
    MOE_TRY(load_profile(dir, "h800.yaml", &h800));
    moe_cost_opts opt = o->opts;
    opt.param_gather_overlap = 1; /* the published runs set --overlap-grad-reduce --overlap-param-gather */
    enum { NR = sizeof RUNS / sizeof RUNS[0], NF = sizeof FLUX / sizeof FLUX[0] };
    moe_cost_report rep[NR];
    moe_cost_layer_report lay[NF];
    for (int i = 0; i < NR; i++) {
        moe_config c;
        run_config(&RUNS[i], &c);
        moe_cost_opts ro = opt;
        ro.vpp = RUNS[i].vpp;
        MOE_TRY(moe_costmodel_step(&c, &h100, &ro, &rep[i]));
    }
    for (int i = 0; i < NF; i++) {
        moe_cost_layer_shape s = {.tokens = 8192, .hidden = 8192, .ffn = 8192, .experts = FLUX[i].experts,
                                  .topk = FLUX[i].topk, .tp = 8, .ep = 1, .gated = 0, .allgather = 1, .splits = 8};
        MOE_TRY(moe_costmodel_moe_layer_fwd(&s, &h800, &opt, &lay[i]));
    }
    FILE *f = stdout;
    if (o->json) {
        fputs("{\"runs\":[", f);
        for (int i = 0; i < NR; i++) {
            const published_run *p = &RUNS[i];
            const moe_cost_report *r = &rep[i];
            fprintf(f, "%s{\"model\":", i ? "," : "");
            moe_json_string(f, p->model);
            fprintf(f,
                    ",\"gpus\":%d,\"tp\":%d,\"pp\":%d,\"ep\":%d,\"etp\":%d,\"cp\":%d,\"vpp\":%d,\"dp\":%d,\"edp\":%d,"
                    "\"mbs\":%d,\"gbs\":%d,\"seq\":%d,\"published_mfu\":%.4g,\"predicted_mfu\":%.4g,"
                    "\"step_ms\":%.6g,\"tokens_per_s\":%.6g,\"bubble_fraction\":%.4g,\"mem_gib\":%.4g,\"fits\":%s,"
                    "\"source\":",
                    p->world, p->tp, p->pp, p->ep, p->etp, p->cp, p->vpp, r->dp, r->edp, p->mbs, p->gbs, p->seq,
                    p->published_mfu, r->mfu, 1e3 * r->step_s, r->tokens_per_s, r->bubble_fraction,
                    r->mem_total / GIB, r->fits ? "true" : "false");
            moe_json_string(f, p->source);
            fputc('}', f);
        }
        fputs("],\"flux_layers\":[", f);
        for (int i = 0; i < NF; i++)
            fprintf(f,
                    "%s{\"experts\":%d,\"topk\":%d,\"layer0_torch_ms\":%.4g,\"layer0_flux_ms\":%.4g,"
                    "\"layer0_seq_ms\":%.4g,\"layer0_overlap_ms\":%.4g,\"layer1_torch_ms\":%.4g,"
                    "\"layer1_flux_ms\":%.4g,"
                    "\"layer1_seq_ms\":%.4g,\"layer1_overlap_ms\":%.4g}",
                    i ? "," : "", FLUX[i].experts, FLUX[i].topk, FLUX[i].torch0_ms, FLUX[i].flux0_ms,
                    1e3 * lay[i].layer0_seq_s, 1e3 * lay[i].layer0_ov_s, FLUX[i].torch1_ms, FLUX[i].flux1_ms,
                    1e3 * lay[i].layer1_seq_s, 1e3 * lay[i].layer1_ov_s);
        fputs("]}\n", f);
        return MOE_OK;
    }
    fprintf(f, "%s --reproduce: predicted against published (docs/perf-model.md)\n", PROG);
    fprintf(f, "  global parameters (the same for every row): %s GEMM efficiency %.2f, link efficiency %.2f;\n",
            h100.name, opt.gemm_efficiency > 0 ? opt.gemm_efficiency : h100.gemm_efficiency,
            opt.link_efficiency > 0 ? opt.link_efficiency : h100.link_efficiency);
    fprintf(f, "  bf16 mixed precision, distributed optimizer, SP, flash attention with causal skip, dropless\n"
               "  uniform routing, EP all-to-all exposed (no EP overlap), TP exposed, DP sync hidden behind the\n"
               "  last backward, parameter all-gather overlapped, %.0f%% of memory usable\n\n",
               100 * opt.mem_usable);
    fprintf(f, "  model           GPUs  TP PP EP ETP VPP  DP EDP  step_s  tokens/s  bubble  mem_GiB fits  "
               "MFU pred  published\n");
    for (int i = 0; i < NR; i++) {
        const published_run *p = &RUNS[i];
        const moe_cost_report *r = &rep[i];
        fprintf(f, "  %-15s %4d  %2d %2d %2d %3d %3d %3d %3d %7.2f %9.4g %6.1f%% %8.1f %4s %8.1f%% %9.1f%%\n", p->model,
                p->world, p->tp, p->pp, p->ep, p->etp, p->vpp, r->dp, r->edp, r->step_s, r->tokens_per_s,
                100 * r->bubble_fraction, r->mem_total / GIB, r->fits ? "yes" : "no", 100 * r->mfu,
                100 * p->published_mfu);
    }
    fprintf(f, "\n  one MoE layer forward, flux docs (8 x %s, TP8 EP1, 8192 tokens, hidden = FFN = 8192, bf16):\n",
            h800.name);
    fprintf(f, "  experts top-k | layer0 ms: torch  flux | predicted seq  overlapped | layer1 ms: torch  flux |"
               " predicted seq  overlapped\n");
    for (int i = 0; i < NF; i++)
        fprintf(f, "  %7d %5d |       %8.3f %5.3f | %13.3f %11.3f |       %8.3f %5.3f | %13.3f %11.3f\n",
                FLUX[i].experts, FLUX[i].topk, FLUX[i].torch0_ms, FLUX[i].flux0_ms, 1e3 * lay[i].layer0_seq_s,
                1e3 * lay[i].layer0_ov_s, FLUX[i].torch1_ms, FLUX[i].flux1_ms, 1e3 * lay[i].layer1_seq_s,
                1e3 * lay[i].layer1_ov_s);
    return MOE_OK;
}

// ----------------------------------------------------------------------------

static moe_status run(int argc, char **argv)
{
    options o = {0};
    moe_cost_opts_default(&o.opts);
    o.top = 10;
    o.filter.sp = -1;
    MOE_TRY(parse_args(argc, argv, &o));
    if (o.help) {
        fputs(USAGE, stdout);
        fflush(stdout);
        return MOE_OK;
    }
    if (o.reproduce) {
        MOE_TRY(reproduce(&o));
    } else {
        moe_config *c = malloc(sizeof *c);
        moe_hwprofile *hw = malloc(sizeof *hw);
        moe_cost_layout *t = NULL;
        int n = 0;
        moe_status st = c && hw ? MOE_OK : moe_fail(MOE_ERR_NOMEM, "config");
        if (st == MOE_OK)
            st = load_config(&o, c);
        if (st == MOE_OK)
            st = moe_hwprofile_load(o.hw, hw);
        if (st == MOE_OK && o.trace)
            st = trace_imbalance(&o, c);
        if (st == MOE_OK)
            st = moe_costmodel_search(c, o.world, hw, &o.opts, &o.filter, &t, &n);
        if (st == MOE_OK && n == 0)
            st = moe_fail(MOE_ERR_USAGE, "no layout of %d ranks matches the sizes given", o.world);
        if (st == MOE_OK) {
            if (o.json)
                print_json(stdout, &o, c, hw, t, n);
            else
                print_text(stdout, &o, c, hw, t, n);
        }
        free(t), free(c), free(hw), free(o.ep_imbalance);
        if (st != MOE_OK) {
            moe_trace_frame(__FILE__, __LINE__);
            return st;
        }
    }
    if (fflush(stdout) != 0 || ferror(stdout))
        return moe_fail(MOE_ERR_IO, "writing to stdout failed");
    return MOE_OK;
}

int moe_plan_parallel_main(int argc, char **argv)
{
    moe_error_clear();
    return moe_cmd_exit(PROG, run(argc, argv));
}
