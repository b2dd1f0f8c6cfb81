#include "runtime/world.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/base/bind.h"
#include "runtime/base/log.h"

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
    if (!r)
        r = getenv("SLURM_LOCALID");
    *rank = r ? atoi(r) : 0;
    *size = s ? atoi(s) : 1;
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
    MOE_TRY(moe_layout_check_build(&w->layout));
    MOE_TRY(moe_config_check_build(cfg));

    static const moe_group_kind used[] = {MOE_G_DP_CP, MOE_G_EP, MOE_G_EDP, MOE_G_TP_DP_CP};
    for (size_t i = 0; i < sizeof used / sizeof *used; i++)
        MOE_TRY(make_group(w, used[i]));
    moe_coords c;
    moe_layout_coords(&w->layout, w->rank, &c);
    MOE_TRY(moe_expert_map_contiguous(&w->map, cfg->num_experts, w->layout.ep, c.ep));

    w->par = (moe_trainer_par){
        .world = world,
        .dp_cp = w->groups[MOE_G_DP_CP],
        .ep = w->groups[MOE_G_EP],
        .edp = w->groups[MOE_G_EDP],
        .tp_dp_cp = w->groups[MOE_G_TP_DP_CP],
        .map = &w->map,
        .dp_rank = c.dp,
        .dp_size = w->layout.dp,
    };

    int lr, ls;
    char desc[256];
    local_rank(&lr, &ls);
    if (moe_bind_rank(lr, ls, desc, sizeof desc) == MOE_OK)
        moe_info("%s", desc);
    else {
        moe_warn("core binding failed: %s", moe_errmsg());
        moe_error_clear();
    }
    if (w->rank == 0)
        moe_info("layout: world %d = DP %d x EP %d (EDP %d); %d experts, %d per rank", w->size, w->layout.dp,
                 w->layout.ep, w->layout.edp, cfg->num_experts, w->map.E_local);
    return MOE_OK;
}

void moe_world_free(moe_world *w)
{
    for (int k = 0; k < MOE_G_COUNT; k++)
        moe_comm_free(w->groups[k]);
    moe_expert_map_free(&w->map);
    memset(w, 0, sizeof *w);
}
