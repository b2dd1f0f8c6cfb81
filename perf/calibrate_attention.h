/*
** calibrate_attention: the attention rates of `moe bench calibrate`.
**
** The fp32 attention kernels do their own work between their GEMMs (scores
** scaled and masked, the softmax, backward's dS), which the cost model charges
** per score element: attention_gelems for the CP = 1 kernel
** (layers/attention.c, the causal rows) and attention_block_gelems for the
** blocked kernel of context parallelism (layers/attention_block.c, every
** tile a ring hop visits).
**
** Each is measured on configs/tiny.yaml's and configs/small.yaml's
** micro-batch: one layer's forward + backward (CP = 1: attention_forward,
** attention_backward; CP = 2: what one of the two ranks runs, init, both
** hops, finish, backward prep and both hops, on the load-balanced positions
** of runtime/model_attn.c), the median over runs of its time outside its
** GEMM calls (timed inside by moe_gemm_timer on every thread, over the
** threads) less the kernel overhead of its own calls, over the elements the
** model counts (moe_cost_attention_parts), both directions. The two shapes
** are pooled (elements over seconds, both together), as elementwise_gbs is.
**
** Runs on the calling thread's OpenMP team (the threads calibrate measures
** with). Allocates its buffers and frees them before returning.
*/
#ifndef MOE_CALIBRATE_ATTENTION_H
#define MOE_CALIBRATE_ATTENTION_H

#include "runtime/base/status.h"

typedef struct {
    double gelems, block_gelems;        /* the pooled rates, 1e9 elements/s */
    double tiny_gelems, small_gelems;   /* CP = 1, each shape alone */
    double tiny_block, small_block;     /* CP = 2, each shape alone */
    double us[2][2];                    /* measured forward + backward, [cp 1, 2][tiny, small] */
    double own_us[2][2];                /* of which outside the GEMMs, less the calls' overhead */
} moe_attention_rates;

/* kern_s: the kernel overhead being written (kernel_overhead_us, seconds).
** MOE_ERR_NOMEM if a buffer cannot be had; MOE_ERR_SYSTEM if a kernel's time
** outside its GEMMs is not positive (no rate to solve for). */
moe_status moe_calibrate_attention(double kern_s, moe_attention_rates *out);

#endif
