/*
** calibrate_optimizer.c: the optimizer rate of `moe bench calibrate`
** (contract in calibrate_optimizer.h).
*/
#include "perf/calibrate_optimizer.h"

#include "layers/adamw.h"
#include "runtime/base/mem.h"
#include "runtime/base/timer.h"

#define TINY_PARAMS 238000
#define LARGE_PARAMS (16u << 20)

/* Seconds per optimizer step on n parameters: the best of 3 windows' means. */
static moe_status time_step(size_t n, double *secs)
{
    float *p = NULL, *g = NULL, *m = NULL, *v = NULL;
    moe_status st = MOE_OK;
    if ((st = moe_alloc((void **)&p, n * sizeof *p, "calibrate optimizer params")) != MOE_OK ||
        (st = moe_alloc((void **)&g, n * sizeof *g, "calibrate optimizer grads")) != MOE_OK ||
        (st = moe_alloc((void **)&m, n * sizeof *m, "calibrate optimizer m")) != MOE_OK ||
        (st = moe_alloc((void **)&v, n * sizeof *v, "calibrate optimizer v")) != MOE_OK)
        goto out;
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(i % 7) * 0.01f, g[i] = (float)(i % 11) * 1e-3f - 5e-3f, m[i] = 0, v[i] = 0;
    long step = 1;
    double best = 0;
    for (int w = -1; w < 3; w++) { /* w = -1: warm-up, pages touched */
        int k = 0;
        double start = moe_now();
        while (k < 5 || moe_now() - start < 0.1) {
            (void)moe_sum_squares(g, n);
            moe_adamw_update(p, g, m, v, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, step++, 1.0f);
            k++;
        }
        double mean = (moe_now() - start) / k;
        if (w == 0 || (w > 0 && mean < best))
            best = mean;
    }
    *secs = best;
out:
    moe_free(p);
    moe_free(g);
    moe_free(m);
    moe_free(v);
    return st;
}

moe_status moe_calibrate_optimizer(moe_optimizer_rate *out)
{
    double ts, tl;
    MOE_TRY(time_step(TINY_PARAMS, &ts));
    MOE_TRY(time_step(LARGE_PARAMS, &tl));
    out->tiny_n = TINY_PARAMS, out->large_n = LARGE_PARAMS;
    out->tiny_gparams = TINY_PARAMS / ts / 1e9;
    out->large_gparams = LARGE_PARAMS / tl / 1e9;
    out->gparams = (out->tiny_n + out->large_n) / (ts + tl) / 1e9;
    return MOE_OK;
}
