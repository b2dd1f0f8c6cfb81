/*
** plan_trainable: the check that a placement plan fits the model being trained
** (--expert-placement), shared by the launcher (before any worker starts) and
** the workers.
*/
#include <stdio.h>
#include <string.h>

#include "planner/placement.h"

/* A plan this build can train with: one copy per expert, E / EP per rank and layer. */
static moe_status check_trainable(const moe_plan *p, const char *path, int layers, int E, int ep)
{
    if (moe_plan_check_named(p, path, layers, E, ep) != MOE_OK) {
        char why[1024];
        snprintf(why, sizeof why, "%s", moe_errmsg());
        moe_error_clear();
        return moe_fail(MOE_ERR_USAGE, "expert-placement %s does not fit this model: %s", path, why);
    }
    for (int l = 0; l < layers; l++) {
        int held[ep];
        memset(held, 0, sizeof held);
        for (int e = 0; e < E; e++) {
            if (p->ncopies[(size_t)l * E + e] != 1)
                return moe_fail(MOE_ERR_USAGE, "replicated plans are not supported by this build: expert-placement "
                                "%s gives layer %d expert %d %d copies (train with a plan of one copy per expert)",
                                path, l, e, p->ncopies[(size_t)l * E + e]);
            held[moe_plan_copies(p, l, e)[0].rank]++;
        }
        for (int r = 0; r < ep; r++)
            if (held[r] != E / ep)
                return moe_fail(MOE_ERR_USAGE, "expert-placement %s: layer %d puts %d experts on rank %d; this "
                                "build needs exactly num-experts / EP = %d on every rank", path, l, held[r], r, E / ep);
    }
    return MOE_OK;
}

moe_status moe_plan_read_trainable(const char *path, int layers, int experts, int ep, moe_plan *out)
{
    memset(out, 0, sizeof *out);
    if (moe_plan_read(path, out) != MOE_OK) {
        char why[1024];
        snprintf(why, sizeof why, "%s", moe_errmsg());
        moe_error_clear();
        return moe_fail(MOE_ERR_USAGE, "expert-placement %s: %s", path, why);
    }
    moe_status st = check_trainable(out, path, layers, experts, ep);
    if (st != MOE_OK)
        moe_plan_free(out);
    return st;
}
