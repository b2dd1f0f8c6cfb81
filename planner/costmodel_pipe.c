/*
** costmodel_pipe: a 1F1B pipeline on a shared machine whose ranks outnumber
** its cores (contract in costmodel.h, moe_cost_pipeline_shared).
*/
#include "planner/costmodel.h"

#include <stdlib.h>
#include <string.h>

/* The op stage s runs k-th in 1F1B: min(p - s - 1, m) forwards, then one
** forward and one backward in turn, the backwards left at the end. Sets *bwd
** and *mb (the micro-batch). */
static void op_of(int p, int s, int m, int k, int *bwd, int *mb)
{
    int w = p - s - 1 < m ? p - s - 1 : m;
    if (k < w) {
        *bwd = 0, *mb = k;
        return;
    }
    int j = k - w, steady = 2 * (m - w); /* F(w), B(0), F(w+1), B(1), ... then B only */
    if (j < steady) {
        *bwd = j % 2, *mb = j % 2 ? j / 2 : w + j / 2;
        return;
    }
    *bwd = 1, *mb = m - w + (j - steady);
}

moe_status moe_cost_pipeline_shared(int p, int m, const double *tf, const double *tb, double rank_threads,
                                    double cores, double *out)
{
    if (p < 1 || m < 1 || rank_threads <= 0 || cores <= 0)
        return moe_fail(MOE_ERR_USAGE, "pipeline: p %d, m %d, threads %g, cores %g must be positive", p, m,
                        rank_threads, cores);
    size_t n = (size_t)p * (size_t)m;
    char *fdone = calloc(n, 1), *bdone = calloc(n, 1);
    int *next = calloc((size_t)p, sizeof *next);
    double *rem = malloc((size_t)p * sizeof *rem);
    if (!fdone || !bdone || !next || !rem) {
        free(fdone), free(bdone), free(next), free(rem);
        return moe_fail(MOE_ERR_NOMEM, "pipeline: %zu stage x micro-batch flags", n);
    }
    for (int s = 0; s < p; s++)
        rem[s] = -1; /* -1: no op under way */
    double t = 0;
    for (int left = 2 * p * m; left > 0;) {
        int active = 0;
        for (int s = 0; s < p; s++) {
            if (rem[s] < 0 && next[s] < 2 * m) {
                int bwd, mb;
                op_of(p, s, m, next[s], &bwd, &mb);
                int ready = bwd ? (s == p - 1 ? fdone[(size_t)s * m + mb] : bdone[(size_t)(s + 1) * m + mb])
                                : (s == 0 || fdone[(size_t)(s - 1) * m + mb]);
                if (ready)
                    rem[s] = bwd ? tb[s] : tf[s];
            }
            active += rem[s] >= 0;
        }
        double speed = cores / (active * rank_threads), dt = -1;
        speed = speed < 1 ? speed : 1;
        for (int s = 0; s < p; s++)
            if (rem[s] >= 0 && (dt < 0 || rem[s] / speed < dt))
                dt = rem[s] / speed;
        t += dt;
        for (int s = 0; s < p; s++) {
            if (rem[s] < 0)
                continue;
            rem[s] -= dt * speed;
            if (rem[s] > 1e-12 * (tf[s] + tb[s]))
                continue;
            int bwd, mb;
            op_of(p, s, m, next[s], &bwd, &mb);
            (bwd ? bdone : fdone)[(size_t)s * m + mb] = 1;
            next[s]++, left--, rem[s] = -1;
        }
    }
    free(fdone), free(bdone), free(next), free(rem);
    *out = t;
    return MOE_OK;
}
