/*
** inspect_trace: `moe inspect trace FILE [--json]`, a read-only view of a
** routing trace (planner/trace.h).
**
** Per MoE layer (load summed over sources and windows): the (token, slot)
** pairs routed, max and mean tokens per expert and their ratio (imbalance;
** 1 = perfectly even), the coefficient of variation of the expert loads
** (skew: population std / mean) and the busiest experts. Then the drift
** between consecutive windows (moe_trace_drift: L1 distance of normalised
** expert-load vectors, averaged over layers; 0 same, 2 disjoint).
**
** With --json, one JSON object on stdout and nothing else there:
**   {"file", "layers", "experts", "topk", "sources", "windows",
**    "first_step", "last_step", "transitions" (bool: recorded in any window),
**    "pairs": [per layer], "expert_load": [[tokens per expert] per layer],
**    "max_load", "mean_load", "imbalance", "cv": [per layer],
**    "top_experts": [[expert ids, busiest first] per layer],
**    "drift": [per window pair]}
** Counts are printed with %.17g, so integers read back exactly.
**
** Exit status: 0 valid; 2 bad usage or an invalid trace (stderr:
** "moe inspect trace: error: <file>: <problem>"); 1 an I/O failure.
*/
#ifndef MOE_INSPECT_TRACE_H
#define MOE_INSPECT_TRACE_H

/* argv[0] is FILE (the words after `moe inspect trace`), then flags; returns the exit status. */
int moe_inspect_trace_main(int argc, char **argv);

#endif
