/*
** costmodel_internal: what costmodel.c shares with costmodel_search.c. Not
** for use outside planner/costmodel*.c.
*/
#ifndef MOE_COSTMODEL_INTERNAL_H
#define MOE_COSTMODEL_INTERNAL_H

#include "planner/costmodel.h"
#include "runtime/base/topology.h"

/* MOE_ERR_USAGE naming the option out of range. */
moe_status moe_cost_check_opts(const moe_cost_opts *o);
/* What the runtime would refuse: the config's own relations, the layout, the
** model against the layout, tokens per micro-batch against TP, and (with
** virtual stages) Megatron's interleaving rules. cfg is validated in place. */
moe_status moe_cost_check_layout(moe_config *cfg, const moe_cost_opts *o, moe_layout *l);

#endif
