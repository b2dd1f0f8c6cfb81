/*
** plan: an expert placement, what the planner produces and the runtime reads.
**
** For every MoE layer and expert, the ranks (of the EP group) that hold a copy
** and the share of the expert's tokens each copy takes (shares sum to 1). On
** disk a PlacementPlan protobuf (proto/placement_plan.proto) recording the EP
** size, ranks per node and slots per rank it was made for; in memory, this
** struct. Offline only: no MPI.
*/
#ifndef MOE_PLANNER_PLAN_H
#define MOE_PLANNER_PLAN_H

#include "runtime/base/status.h"

typedef struct {
    int rank;
    double share;
} moe_plan_copy;

typedef struct {
    int layers, experts, ep, ranks_per_node, slots_per_rank;
    int *ncopies;          /* [layers][experts] */
    moe_plan_copy *copies; /* [layers][experts][max_copies] */
    int max_copies;
    char method[32];       /* "ilp", "greedy", "contiguous", ... */
    double objective, lower_bound, gap, solve_s;
} moe_plan;

moe_status moe_plan_alloc(moe_plan *p, int layers, int experts, int ep, int max_copies);
void moe_plan_free(moe_plan *p);
moe_status moe_plan_write(const char *path, const moe_plan *p);
/* Validates: shapes, every rank in [0, ep), shares in (0, 1] summing to 1,
** at most slots_per_rank copies per rank per layer. MOE_ERR_INPUT names the
** file and the problem. */
moe_status moe_plan_read(const char *path, moe_plan *p);
moe_status moe_plan_validate(const moe_plan *p);

#endif
