/*
** flops: what one training token costs the model, by formula from the config
** (no model needed), so the trainer's MFU, the benchmarks and the offline
** performance model (planner/costmodel) all count the same FLOPs.
*/
#ifndef MOE_FLOPS_H
#define MOE_FLOPS_H

#include "runtime/base/config.h"

/* Model FLOPs of one training token (forward + backward = 3x forward):
** dense matmuls, top-k experts, router, attention (full T x T per query,
** the PaLM/Megatron convention), LM head. */
double moe_flops_per_token(const moe_config *cfg);
/* Parameters a token touches (embedding counted once), for reports. */
double moe_active_params(const moe_config *cfg);

#endif
