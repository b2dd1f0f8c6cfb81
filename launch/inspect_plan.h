/*
** inspect_plan: `moe inspect plan PLAN [--json]`, a read-only view of an
** expert placement plan (planner/plan.h), validated on read.
**
** Prints the header (method, EP size, ranks per node, slots per rank, layers,
** experts, objective, lower bound, gap, solve seconds) and, per layer, the
** experts on each rank (a copy with share < 1 is shown as e(share)). With
** --json, one object on stdout and nothing else there:
**   {"file", "method", "ep", "ranks_per_node", "slots_per_rank", "layers",
**    "experts", "objective", "lower_bound", "gap", "solve_s",
**    "placement": [[[{"rank": r, "share": s}, ...] per expert] per layer]}
**
** argv holds the words after `moe inspect plan` (argv[0] is PLAN). Exit
** status: 0 valid; 2 bad usage or an invalid plan ("moe inspect plan: error:
** plan <file>: <problem>" on stderr); 1 an I/O failure.
*/
#ifndef MOE_INSPECT_PLAN_H
#define MOE_INSPECT_PLAN_H

int moe_inspect_plan_main(int argc, char **argv);

#endif
