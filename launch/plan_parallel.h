/*
** plan_parallel: `moe plan parallel`, the parallel-layout search on the cost
** model (planner/costmodel.h).
**
**   moe plan parallel --config CFG.yaml --world W --hw PROFILE.yaml
**        [--global-batch G] [--micro-batch M] [--top K] [--tp N] [--cp N]
**        [--pp N] [--ep N] [--etp N] [--sp on|off] [--vpp V]
**        [--ranks-per-node K] [--precision fp32|bf16] [--gemm-efficiency F]
**        [--link-efficiency F] [--ep-hidden F] [--dp-hidden F] [--tp-hidden F]
**        [--imbalance F] [--mem-usable F] [--param-gather-overlap]
**        [--<config key> V ...] [--json]
**   moe plan parallel --reproduce [--hw-dir DIR] [--json]
**
** (--model and --hardware are the same as --config and --hw.) Enumerates
** every (TP, CP, PP, EP, ETP) of W ranks (DP and EDP follow, folded), keeps
** the ones the runtime would run (topology.h's checks, the model's
** divisibility, the global batch), predicts step time, tokens/s, MFU and
** memory per rank, lists the layouts that do not fit memory separately with
** the reason, and ranks the rest by predicted tokens/s. Sizes given with
** --tp ... --etp restrict the search; with all five it is one layout, shown
** with its full breakdown. Any other `--key value` is a `moe train` config
** key. --json prints one object: {"world", "hardware", "model": {...},
** "global_batch", "seq_length", "considered", "valid", "invalid",
** "assumptions": {...}, "layouts": [{tp, cp, pp, ep, etp, dp, edp, sp,
** micro_batches, step_ms, tokens_per_s, mfu, mem_gib, fits, ...}],
** "refused": [{..., fits: false, reason}]}.
**
** --reproduce prints the predicted-against-published table of
** docs/perf-model.md (Mixtral 8x22B and Qwen2-57B-A14B with their published
** layouts on H100, flux's single MoE layer on H800), reading h100-sxm.yaml and
** h800.yaml from --hw-dir (default configs/hw).
**
** argv holds the words after `moe plan parallel`. Returns the exit status: 0
** ok (and --help), 2 bad usage, config or profile ("moe plan parallel: error:
** <message>" on stderr), 1 any other failure.
*/
#ifndef MOE_PLAN_PARALLEL_H
#define MOE_PLAN_PARALLEL_H

int moe_plan_parallel_main(int argc, char **argv);

#endif
