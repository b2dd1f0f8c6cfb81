/*
** plan_placement: `moe plan placement`, expert placement from a routing trace.
**
**   moe plan placement --trace FILE --ep N [--ranks-per-node K]
**        [--slots-per-rank S] [--replicas R] [--method ilp|greedy|contiguous|
**        round-robin|eplb] [--time-limit SEC] [--gap F] [--jobs J] --out PLAN
**        [--json]
**
** Reads the trace (planner/trace.h), sums each layer's expert load over
** sources and windows, places experts (planner/placement.h: method, bound,
** watchdog) and writes PLAN atomically (planner/plan.h). Prints a summary, or
** with --json one object: {"out", "method", "ep", "ranks_per_node",
** "slots_per_rank", "layers", "experts", "objective", "lower_bound", "gap",
** "solve_s", "contiguous_objective", "max_mean": [per-layer max/mean load],
** "ilp_optimal", "ilp_limited", "fallback", "watchdog_kills"}.
**
** argv holds the words after `moe plan placement`. Returns the exit status:
** 0 ok (and --help), 2 bad usage or a bad trace ("moe plan placement: error:
** <message>" on stderr), 1 any other failure.
*/
#ifndef MOE_PLAN_PLACEMENT_H
#define MOE_PLAN_PLACEMENT_H

int moe_plan_placement_main(int argc, char **argv);

#endif
