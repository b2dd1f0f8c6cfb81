/*
** plan_trainable: the check that a placement plan fits the model being trained
** (--expert-placement), shared by the launcher (before any worker starts) and
** the workers.
*/
#include <stdio.h>
#include <string.h>

#include "planner/placement.h"

/* Copies of layer l's experts on each rank into held[ep]; returns the total. */
static int count_held(const moe_plan *p, int l, int *held)
{
    int E = p->experts, total = 0;
    memset(held, 0, sizeof(int) * (size_t)p->ep);
    for (int e = 0; e < E; e++)
        for (int c = 0; c < p->ncopies[(size_t)l * E + e]; c++, total++)
            held[moe_plan_copies(p, l, e)[c].rank]++;
    return total;
}

/* A plan the runtime can train with: the model's shape, and the same number
** of expert copies on every rank in every layer (the grouped expert tensors
** have one shape); replicated experts only with dropless routing. */
static moe_status check_trainable(const moe_plan *p, const char *path, int layers, int E, int ep,
                                  double capacity_factor)
{
    if (moe_plan_check_named(p, path, layers, E, ep) != MOE_OK) {
        char why[1024];
        snprintf(why, sizeof why, "%s", moe_errmsg());
        moe_error_clear();
        return moe_fail(MOE_ERR_USAGE, "expert-placement %s does not fit this model: %s", path, why);
    }
    int held[ep], slots = count_held(p, 0, held) / ep;
    for (int l = 0; l < layers; l++) {
        count_held(p, l, held);
        for (int r = 0; r < ep; r++)
            if (held[r] != slots)
                return moe_fail(MOE_ERR_USAGE, "expert-placement %s: layer %d puts %d expert copies on rank %d; "
                                "training needs the same number on every rank in every layer (%d: layer 0's "
                                "copies / EP)", path, l, held[r], r, slots);
        for (int e = 0; e < E && capacity_factor > 0; e++)
            if (p->ncopies[(size_t)l * E + e] > 1)
                return moe_fail(MOE_ERR_USAGE, "expert-placement %s replicates layer %d expert %d; replicated "
                                "experts need dropless routing (moe-expert-capacity-factor is %g: unset it, or "
                                "plan without --replicas)", path, l, e, capacity_factor);
    }
    return MOE_OK;
}

moe_status moe_plan_read_trainable(const char *path, int layers, int experts, int ep, double capacity_factor,
                                   moe_plan *out)
{
    memset(out, 0, sizeof *out);
    if (moe_plan_read(path, out) != MOE_OK) {
        char why[1024];
        snprintf(why, sizeof why, "%s", moe_errmsg());
        moe_error_clear();
        return moe_fail(MOE_ERR_USAGE, "expert-placement %s: %s", path, why);
    }
    moe_status st = check_trainable(out, path, layers, experts, ep, capacity_factor);
    if (st != MOE_OK)
        moe_plan_free(out);
    return st;
}
