#include "runtime/world.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/base/bind.h"
#include "runtime/base/log.h"
#include "runtime/base/mem.h"
#include "planner/placement.h"
#include "planner/plan.h"

static moe_status make_group(moe_world *w, moe_group_kind k)
{
    int ngroups, size, *ranks = NULL;
    MOE_TRY(moe_layout_groups(&w->layout, k, &ngroups, &size, &ranks));
    moe_status st = moe_comm_create(w->world, ranks, ngroups, size, moe_group_name(k), &w->groups[k]);
    free(ranks);
    return st;
}

/* Local rank and size on this host, from the launcher's environment. */
static void local_rank(int *rank, int *size)
{
    const char *r = getenv("OMPI_COMM_WORLD_LOCAL_RANK"), *s = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    if (!r) /* under srun: "2" or "2(x3)"; moe submit asks for the same count on every node */
        r = getenv("SLURM_LOCALID"), s = getenv("SLURM_STEP_TASKS_PER_NODE");
    *rank = r ? atoi(r) : 0;
    *size = s ? atoi(s) : 1;
}

static int count_moe_layers(const moe_config *cfg)
{
    int n = 0;
    for (int l = 0; l < cfg->num_layers; l++)
        n += cfg->moe_layer_is_moe[l] != 0;
    return n;
}

/* Layer l's copies as moe_expert_map_from_copies takes them. */
static void plan_layer(const moe_plan *p, int l, int *ncopies, int *ranks, double *shares)
{
    int maxc = p->max_copies;
    for (int e = 0; e < p->experts; e++) {
        ncopies[e] = p->ncopies[(size_t)l * p->experts + e];
        const moe_plan_copy *c = moe_plan_copies(p, l, e);
        for (int k = 0; k < ncopies[e]; k++) {
            ranks[(size_t)e * maxc + k] = c[k].rank;
            shares[(size_t)e * maxc + k] = c[k].share;
        }
    }
}

static moe_status maps_from_plan(moe_world *w, const moe_plan *p, int ep, int ep_rank)
{
    int E = p->experts, maxc = p->max_copies, copies = 0;
    for (int e = 0; e < E; e++)
        copies += p->ncopies[e];
    int *ncopies = NULL, *ranks = NULL;
    double *shares = NULL;
    moe_status st = moe_alloc((void **)&ncopies, sizeof(int) * (size_t)E, "expert placement");
    if (st == MOE_OK)
        st = moe_alloc((void **)&ranks, sizeof(int) * (size_t)E * maxc, "expert placement");
    if (st == MOE_OK)
        st = moe_alloc((void **)&shares, sizeof(double) * (size_t)E * maxc, "expert placement");
    for (int l = 0; l < p->layers && st == MOE_OK; l++) {
        plan_layer(p, l, ncopies, ranks, shares);
        st = moe_expert_map_from_copies(&w->maps[l], E, ep, ep_rank, copies / ep, ncopies, ranks, shares, maxc);
    }
    moe_free(ncopies);
    moe_free(ranks);
    moe_free(shares);
    return st;
}

/* One expert map per MoE layer: the plan's, or contiguous without one; then
** the groups that sum a replicated expert's gradients. */
static moe_status build_maps(moe_world *w, const moe_config *cfg, int ep, int ep_rank)
{
    int layers = count_moe_layers(cfg), E = cfg->num_experts;
    w->nmaps = layers > 0 ? layers : 1;
    MOE_TRY(moe_alloc((void **)&w->maps, sizeof *w->maps * (size_t)w->nmaps, "expert maps"));
    if (!cfg->expert_placement[0]) {
        for (int i = 0; i < w->nmaps; i++)
            MOE_TRY(moe_expert_map_contiguous(&w->maps[i], E, ep, ep_rank));
        return MOE_OK;
    }
    const char *path = cfg->expert_placement;
    moe_plan plan;
    MOE_TRY(moe_plan_read_trainable(path, layers, E, ep, cfg->moe_expert_capacity_factor, &plan));
    moe_status st = maps_from_plan(w, &plan, ep, ep_rank);
    if (st == MOE_OK && w->rank == 0) {
        int extra = 0;
        for (int i = 0; i < layers * E; i++)
            extra += plan.ncopies[i] - 1;
        moe_info("expert placement from %s (%s plan, %d MoE layers, %d copies per rank, %d extra copies in all)",
                 path, plan.method, layers, w->maps[0].E_local, extra);
    }
    moe_plan_free(&plan);
    MOE_TRY(st);
    return moe_expert_maps_connect(w->maps, w->nmaps, w->groups[MOE_G_EP], &w->copy_comms, &w->ncopy_comms);
}

moe_status moe_world_setup(moe_world *w, moe_comm *world, moe_config *cfg)
{
    memset(w, 0, sizeof *w);
    w->world = world;
    w->rank = moe_comm_rank(world);
    w->size = moe_comm_size(world);
    cfg->nproc = w->size;
    MOE_TRY(moe_config_validate(cfg));
    MOE_TRY(moe_layout_init(&w->layout, w->size, cfg->tensor_model_parallel_size, cfg->context_parallel_size,
                            cfg->pipeline_model_parallel_size, cfg->expert_model_parallel_size,
                            cfg->expert_tensor_parallel_size, NULL));
    MOE_TRY(moe_layout_check_model(&w->layout, cfg->num_experts, cfg->num_attention_heads,
                                   cfg->num_query_groups, cfg->num_layers, cfg->seq_length,
                                   cfg->sequence_parallel));
    MOE_TRY(moe_config_check_build(cfg));

    static const moe_group_kind used[] = {MOE_G_DP_CP, MOE_G_EP, MOE_G_EDP, MOE_G_TP_DP_CP,
                                          MOE_G_TP,    MOE_G_CP, MOE_G_ETP, MOE_G_TP_CP, MOE_G_PP};
    for (size_t i = 0; i < sizeof used / sizeof *used; i++)
        MOE_TRY(make_group(w, used[i]));
    moe_coords c;
    moe_layout_coords(&w->layout, w->rank, &c);
    MOE_TRY(build_maps(w, cfg, w->layout.ep, c.ep));

    w->par = (moe_trainer_par){
        .world = world,
        .dp_cp = w->groups[MOE_G_DP_CP],
        .ep = w->groups[MOE_G_EP],
        .edp = w->groups[MOE_G_EDP],
        .tp_dp_cp = w->groups[MOE_G_TP_DP_CP],
        .tp = w->groups[MOE_G_TP],
        .cp = w->groups[MOE_G_CP],
        .etp = w->groups[MOE_G_ETP],
        .tp_cp = w->groups[MOE_G_TP_CP],
        .pp = w->groups[MOE_G_PP],
        .pp_rank = c.pp,
        .pp_size = w->layout.pp,
        .maps = w->maps,
        .dp_rank = c.dp,
        .dp_size = w->layout.dp,
    };

    int lr, ls;
    char *desc = w->binding;
    local_rank(&lr, &ls);
    if (moe_bind_rank(lr, ls, desc, sizeof w->binding) == MOE_OK)
        moe_info("%s", desc);
    else {
        moe_warn("core binding failed: %s", moe_errmsg());
        moe_error_clear();
        w->binding[0] = '\0';
    }
    if (w->rank == 0)
        moe_info("layout: world %d; PP %d; attention TP %d x CP %d x DP %d%s, experts ETP %d x EP %d x EDP %d; "
                 "%d experts, %d per rank", w->size, w->layout.pp, w->layout.tp, w->layout.cp, w->layout.dp,
                 cfg->sequence_parallel && w->layout.tp > 1 ? " (sequence parallel)" : "", w->layout.etp,
                 w->layout.ep, w->layout.edp, cfg->num_experts, w->maps[0].E_local);
    return MOE_OK;
}

void moe_world_free(moe_world *w)
{
    for (int i = 0; i < w->ncopy_comms; i++)
        moe_comm_free(w->copy_comms[i]);
    moe_free(w->copy_comms);
    for (int k = 0; k < MOE_G_COUNT; k++)
        moe_comm_free(w->groups[k]);
    for (int i = 0; w->maps && i < w->nmaps; i++)
        moe_expert_map_free(&w->maps[i]);
    moe_free(w->maps);
    memset(w, 0, sizeof *w);
}
