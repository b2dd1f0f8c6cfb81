/*
** costmodel_search.c: the cost model's options and the checks that refuse
** what the runtime would refuse, and the search over 5-D layouts
** (planner/costmodel.h). The model itself is costmodel.c.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "planner/costmodel.h"
#include "planner/costmodel_internal.h"
#include "runtime/base/topology.h"

void moe_cost_opts_default(moe_cost_opts *o)
{
    *o = (moe_cost_opts){
        .precision = MOE_PREC_AUTO,
        .gemm_efficiency = -1,
        .link_efficiency = -1,
        .ranks_per_node = 0,
        .flash_attention = -1,
        .causal_skip = -1,
        .vpp = 1,
        .ep_hidden = -1,
        .dp_hidden = -1,
        .tp_hidden = 0,
        .cp_hidden = 1,
        .param_gather_overlap = 0,
        .expert_imbalance = 1,
        .mem_usable = 0.9,
        .grouped_gemm = -1,
    };
}

// ----------------------------------------------------------------------------
// checks

moe_status moe_cost_check_opts(const moe_cost_opts *o)
{
    if (o->precision < MOE_PREC_AUTO || o->precision > MOE_PREC_BF16)
        return moe_fail(MOE_ERR_USAGE, "cost model: precision %d is not auto, fp32 or bf16", o->precision);
    if (o->vpp < 1)
        return moe_fail(MOE_ERR_USAGE, "cost model: virtual pipeline size %d must be >= 1", o->vpp);
    if (o->gemm_efficiency > 1 || o->link_efficiency > 1)
        return moe_fail(MOE_ERR_USAGE, "cost model: efficiencies must be <= 1 (gemm %g, link %g)", o->gemm_efficiency,
                        o->link_efficiency);
    if (o->dp_hidden > 1)
        return moe_fail(MOE_ERR_USAGE, "cost model: dp-hidden must be <= 1 (or < 0 for the default), got %g",
                        o->dp_hidden);
    double fr[] = {o->tp_hidden, o->cp_hidden, o->mem_usable};
    const char *nm[] = {"tp-hidden", "cp-hidden", "mem-usable"};
    for (int i = 0; i < 3; i++)
        if (!(fr[i] >= 0 && fr[i] <= 1))
            return moe_fail(MOE_ERR_USAGE, "cost model: %s must be in [0, 1], got %g", nm[i], fr[i]);
    if (o->ep_hidden > 1)
        return moe_fail(MOE_ERR_USAGE, "cost model: ep-hidden must be <= 1 (or < 0 for the default), got %g",
                        o->ep_hidden);
    if (o->grouped_gemm < -1 || o->grouped_gemm > 1)
        return moe_fail(MOE_ERR_USAGE, "cost model: grouped-gemm must be -1 (auto), 0 or 1, got %d", o->grouped_gemm);
    if (!(o->expert_imbalance >= 1))
        return moe_fail(MOE_ERR_USAGE, "cost model: expert imbalance (max/mean) must be >= 1, got %g",
                        o->expert_imbalance);
    for (int ep = 0; o->ep_imbalance && ep < o->ep_imbalance_n; ep++)
        if (!(o->ep_imbalance[ep] == 0 || o->ep_imbalance[ep] >= 1))
            return moe_fail(MOE_ERR_USAGE, "cost model: expert imbalance for EP %d must be >= 1 (0: the default), "
                                           "got %g", ep, o->ep_imbalance[ep]);
    return MOE_OK;
}

/* What the runtime would refuse: the config's own relations, the layout, the
** model against the layout, tokens per micro-batch against TP, and (with
** virtual stages) Megatron's interleaving rules. cfg is validated in place. */
moe_status moe_cost_check_layout(moe_config *cfg, const moe_cost_opts *o, moe_layout *l)
{
    if (cfg->vocab_size == 0)
        cfg->vocab_size = 256; /* the byte tokenizer, the one moe data prepare has */
    MOE_TRY(moe_config_validate(cfg));
    MOE_TRY(moe_layout_init(l, cfg->nproc, cfg->tensor_model_parallel_size, cfg->context_parallel_size,
                            cfg->pipeline_model_parallel_size, cfg->expert_model_parallel_size,
                            cfg->expert_tensor_parallel_size, NULL));
    MOE_TRY(moe_layout_check_model(l, cfg->num_experts, cfg->num_attention_heads, cfg->num_query_groups,
                                   cfg->num_layers, cfg->seq_length, cfg->sequence_parallel));
    long long tok = (long long)cfg->micro_batch_size * (cfg->seq_length / l->cp);
    if (tok % l->tp)
        return moe_fail(MOE_ERR_USAGE,
                        "tokens per micro-batch and context-parallel rank (%d x %d) must be divisible by the "
                        "tensor-parallel size (%d)",
                        cfg->micro_batch_size, cfg->seq_length / l->cp, l->tp);
    if (o->vpp > 1) {
        int m = cfg->global_batch_size / (cfg->micro_batch_size * l->dp);
        if (l->pp == 1 || cfg->num_layers % (l->pp * o->vpp) || m % l->pp)
            return moe_fail(MOE_ERR_USAGE,
                            "virtual pipeline size %d needs pipeline size > 1 (%d), num-layers (%d) divisible by "
                            "pipeline x virtual (%d) and micro-batches (%d) divisible by the pipeline size",
                            o->vpp, l->pp, cfg->num_layers, l->pp * o->vpp, m);
    }
    return MOE_OK;
}

// ----------------------------------------------------------------------------
// search

static int category(const moe_cost_layout *a) { return !a->valid ? 2 : a->r.fits ? 0 : 1; }

static int cmp_layout(const void *pa, const void *pb)
{
    const moe_cost_layout *a = pa, *b = pb;
    int ca = category(a), cb = category(b);
    if (ca != cb)
        return ca < cb ? -1 : 1;
    if (ca == 0 && a->r.tokens_per_s != b->r.tokens_per_s)
        return a->r.tokens_per_s > b->r.tokens_per_s ? -1 : 1;
    if (ca == 1 && a->r.mem_total != b->r.mem_total)
        return a->r.mem_total < b->r.mem_total ? -1 : 1;
    int ka[] = {a->tp, a->cp, a->pp, a->ep, a->etp}, kb[] = {b->tp, b->cp, b->pp, b->ep, b->etp};
    for (int i = 0; i < 5; i++)
        if (ka[i] != kb[i])
            return ka[i] < kb[i] ? -1 : 1;
    return 0;
}

static int allowed(int want, int v) { return want <= 0 || want == v; }

moe_status moe_costmodel_search(const moe_config *base, int world, const moe_hwprofile *hw, const moe_cost_opts *o,
                                const moe_cost_filter *f, moe_cost_layout **out, int *n)
{
    if (world < 1)
        return moe_fail(MOE_ERR_USAGE, "cost model: world size must be >= 1, got %d", world);
    MOE_TRY(moe_cost_check_opts(o));
    size_t cap = 64, cnt = 0;
    moe_cost_layout *t = malloc(cap * sizeof *t);
    moe_config *cfg = malloc(sizeof *cfg);
    if (!t || !cfg) {
        free(t), free(cfg);
        return moe_fail(MOE_ERR_NOMEM, "cost model: layout table");
    }
    for (int tp = 1; tp <= world; tp++)
        for (int cp = 1; tp * cp <= world; cp++)
            for (int pp = 1; tp * cp * pp <= world; pp++)
                for (int ep = 1; ep * pp <= world; ep++)
                    for (int etp = 1; etp * ep * pp <= world; etp++) {
                        if (world % (tp * cp * pp) || world % (etp * ep * pp))
                            continue;
                        if (!allowed(f->tp, tp) || !allowed(f->cp, cp) || !allowed(f->pp, pp) ||
                            !allowed(f->ep, ep) || !allowed(f->etp, etp))
                            continue;
                        if (cnt == cap) {
                            moe_cost_layout *g = realloc(t, 2 * cap * sizeof *t);
                            if (!g) {
                                free(t), free(cfg);
                                return moe_fail(MOE_ERR_NOMEM, "cost model: layout table");
                            }
                            t = g, cap *= 2;
                        }
                        moe_cost_layout *e = &t[cnt++];
                        memset(e, 0, sizeof *e);
                        *cfg = *base;
                        cfg->nproc = world;
                        cfg->tensor_model_parallel_size = tp, cfg->context_parallel_size = cp;
                        cfg->pipeline_model_parallel_size = pp, cfg->expert_model_parallel_size = ep;
                        cfg->expert_tensor_parallel_size = etp;
                        cfg->sequence_parallel = f->sp < 0 ? tp > 1 : f->sp;
                        e->tp = tp, e->cp = cp, e->pp = pp, e->ep = ep, e->etp = etp, e->sp = cfg->sequence_parallel;
                        moe_error_clear();
                        if (moe_costmodel_step(cfg, hw, o, &e->r) == MOE_OK)
                            e->valid = 1;
                        else
                            snprintf(e->why, sizeof e->why, "%s", moe_errmsg());
                    }
    moe_error_clear();
    free(cfg);
    qsort(t, cnt, sizeof *t, cmp_layout);
    *out = t;
    *n = (int)cnt;
    return MOE_OK;
}
