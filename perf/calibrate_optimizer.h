/*
** calibrate_optimizer: the optimizer rate of `moe bench calibrate`.
**
** The fp32 runtime's optimizer step touches every parameter twice: the
** gradient norm's sum of squares (moe_sum_squares) and the AdamW update
** (moe_adamw_update: reads the parameter, gradient, m and v, writes three).
** The cost model charges the pair per parameter at optimizer_gparams; the
** zeroing of the gradients after it is a memset, costed at mem_bw_gbs.
**
** Measured on flat arrays of configs/tiny.yaml's parameter count per rank
** (DP2: 238k, whose 3.8 MB of state sit in the caches between steps) and of
** 16M parameters (256 MB, past every cache, as small's 109M are): the best
** of 3 windows of at least 5 steps and 0.1 s, each window's mean step. The
** two sizes are pooled (parameters over seconds, both together), as
** elementwise_gbs is.
**
** Runs on the calling thread's OpenMP team (the threads calibrate measures
** with). Allocates its arrays and frees them before returning.
*/
#ifndef MOE_CALIBRATE_OPTIMIZER_H
#define MOE_CALIBRATE_OPTIMIZER_H

#include "runtime/base/status.h"

typedef struct {
    double gparams;                      /* the pooled rate, 1e9 parameters/s */
    double tiny_gparams, large_gparams;  /* each size alone */
    double tiny_n, large_n;              /* the sizes, parameters */
} moe_optimizer_rate;

/* MOE_ERR_NOMEM if the arrays cannot be had. */
moe_status moe_calibrate_optimizer(moe_optimizer_rate *out);

#endif
