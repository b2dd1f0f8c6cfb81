/*
** world: this worker's place in the job. From the world communicator and the
** config it validates the parallel layout (before anything large is
** allocated), creates the groups the trainer needs (runtime/base/topology.h
** gives the rank tables, comm/ makes them communicators), builds the expert
** map, and binds the process to its cores.
**
** All five dimensions run: tensor (with sequence parallelism), context,
** pipeline, expert (with expert tensor parallelism) and data parallelism,
** with attention and experts folded onto the same ranks.
*/
#ifndef MOE_WORLD_H
#define MOE_WORLD_H

#include "parallel/ep.h"
#include "runtime/base/config.h"
#include "runtime/base/topology.h"
#include "runtime/trainer.h"

typedef struct {
    moe_comm *world;
    moe_layout layout;
    moe_comm *groups[MOE_G_COUNT]; /* the ones this build uses; others NULL */
    moe_expert_map *maps; /* [nmaps]: one per MoE layer (at least one) */
    int nmaps;
    moe_comm **copy_comms; /* [ncopy_comms]: the maps' copy groups (moe_expert_maps_connect) */
    int ncopy_comms;
    moe_trainer_par par;
    int rank, size;
    char binding[256]; /* this process's core binding as logged ("" if binding failed) */
} moe_world;

/* cfg->nproc is set to the world size. */
moe_status moe_world_setup(moe_world *w, moe_comm *world, moe_config *cfg);
void moe_world_free(moe_world *w);

#endif
