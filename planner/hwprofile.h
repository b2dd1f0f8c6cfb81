/*
** hwprofile: what the cost model (planner/costmodel.h) knows about a machine,
** read from a YAML file (one per machine in configs/hw). No MPI and no
** measurement here: the numbers come from datasheets or from measurements
** written down elsewhere, and every number says which in its `source`.
**
** File format: one mapping. `name` is a plain string, `description` an
** optional plain string; every other key is required (but the optional ones
** named below) and is a mapping with a `value` and a non-empty `source`
** string:
**
**   name: h100-sxm
**   gemm_tflops:
**     value: 989
**     source: "NVIDIA H100 datasheet: 989 TFLOPS dense BF16 (SXM)"
**
** `dtype` takes a string value (bf16 or fp32): the precision gemm_tflops is
** quoted for, and the precision the cost model assumes training runs in
** (bf16: Megatron-style mixed precision; fp32: this runtime). Units: GB and
** GB/s are 1e9 bytes, GiB 2^30 bytes, us microseconds. Bandwidths are what one
** rank can send while it receives as much (one direction of a full-duplex
** link), before link_efficiency.
**
** Refused with MOE_ERR_USAGE and a message naming the file, line and key: a
** missing or unknown key, a key given twice, a number without a source (a
** plain scalar, or a mapping without `source`), an empty source, a value that
** is not a number or out of range, malformed YAML, an unreadable file.
**
** kernel_overhead_us and elementwise_gbs are the two per-kernel terms of
** the cost model (costmodel.h): every kernel call (each GEMM call and each
** element-wise pass: norms, RoPE, SwiGLU, softmax, permutes, residual adds,
** memsets) costs kernel_overhead_us on top of its roofline time, and the
** element-wise passes move their bytes at elementwise_gbs (shared among the
** ranks like mem_bw_gbs on a shared machine). Softmax passes (the
** cross-entropy over the vocabulary, the router) take the longer of their
** bytes at elementwise_gbs and their elements at softmax_gelems (exp-bound
** on a CPU, memory-bound on a GPU); the fp32 attention kernels have rates of
** their own (below).
**
** attention_gelems and attention_block_gelems are the fp32 runtime's
** attention kernels' own work (scale, mask, softmax, its backward's dS:
** everything but their GEMMs, which the GEMM terms cost), in score elements
** per direction per second: the CP = 1 kernel (layers/attention.c) over the
** causal rows, the blocked kernel of context parallelism
** (layers/attention_block.c) over every tile a ring hop visits. `moe bench
** calibrate` measures both. bf16 profiles (fused attention, costed by
** roofline) do not use them.
**
** optimizer_gparams is the fp32 runtime's optimizer step per parameter: the
** gradient norm's sum of squares and the AdamW update (layers/adamw.c), in
** parameters per second. On this CPU the update runs at about 8 B/ns of
** its 32 B per parameter against a triad's 11 (measured by `moe bench
** calibrate`); bf16 profiles (a fused GPU optimizer, bandwidth-bound) do not
** use it: their optimizer moves its bytes at mem_bw_gbs.
**
** cores and threads describe a shared machine: its rates (GEMM peak and
** table, bandwidths, element-wise and softmax rates) are those of one rank
** running `threads` threads; W ranks each run max(1, cores / W) threads
** (launch/local.c), so a rank gets the rates x its threads / `threads`, x
** cores / (W x its threads) when the ranks outnumber the cores (time-shared;
** the kernel overhead grows by the same factor). A rank running other than
** `threads` threads is scaled linearly, which small kernels do not do: use
** the profile measured at the threads the layout runs (moe bench calibrate
** --threads N). With more ranks than cores a message waits for its
** receiver to get a core: every message then costs at least
** oversubscribed_latency_us. Not shared: one rank per device; cores and
** threads are 1 and oversubscribed_latency_us does not apply.
**
** inter_node_burst_kb describes a link shaped by a token bucket, as the
** emulated cluster's tbf shapes each host (scripts/emu/emu.sh): the bucket
** passes that many kB at once and refills at the link rate. The cost model
** lets each step's first burst of inter-node bytes through free (the bucket
** refills between steps). Real links: 0.
**
** Optional key core_cache_kb (a value with a source, like the others; `moe
** bench calibrate` reads it from hwloc): the cache one core keeps to itself,
** L2 on this CPU. A rank running one thread on a core of its own finds
** there the operands the kernels before it just wrote, so its GEMMs whose
** operands fit take the cached table below; with several threads each
** kernel splits its rows its own way and a row's operands sit in another
** core's cache (measured: tiny on one thread runs its GEMMs at the cached
** table's rates, on two at the out-of-cache table's), and ranks that
** outnumber the cores take turns on a core at every message wait, each
** turn running another rank's kernels through that cache. Absent or 0:
** every GEMM takes the out-of-cache table, as a GPU profile's do.
**
** Optional key `gemm_efficiency_table` (written by `moe bench calibrate`):
** the efficiency a GEMM reaches as a function of its size in FLOPs (2MKN),
** a mapping with a non-empty `source` and `points`, a list of
** [flops, efficiency] pairs, 2 to MOE_HW_EFF_POINTS of them, flops > 0 and
** strictly increasing, efficiency in (0, 1]:
**
**   gemm_efficiency_table:
**     source: "measured by moe bench calibrate on 2026-11-23"
**     points: [[2.1e6, 0.05], [1.3e8, 0.41], [1.7e10, 0.60]]
**
** When present the cost model takes each GEMM's efficiency from it
** (moe_hwprofile_gemm_efficiency) instead of gemm_efficiency, which stays
** required and is what the table is absent from (and --gemm-efficiency
** overrides both).
**
** Optional key `gemm_efficiency_table_cached`, the same format: the
** efficiencies of GEMMs whose operands are already in cache, which the
** calibration measures by repeating each call on the same operands (the
** table above walks memory, as most of a step's GEMMs find their weights
** evicted by the kernels between). The cost model uses it for the fp32
** attention kernels' GEMMs, whose tiles the same kernel has just written
** or read, and for a one-thread rank's GEMMs whose operands fit in
** core_cache_kb; without it they take the table above.
**
** Memory: moe_hwprofile is a plain value; nothing is allocated after return.
*/
#ifndef MOE_HWPROFILE_H
#define MOE_HWPROFILE_H

#include "runtime/base/status.h"

/* The profile's fields, in file order; MOE_HW_NFIELDS counts them. */
typedef enum {
    MOE_HW_DTYPE,            /* bf16 | fp32 */
    MOE_HW_GEMM_TFLOPS,      /* dense GEMM peak per device, TFLOP/s, at dtype */
    MOE_HW_GEMM_EFFICIENCY,  /* fraction of the peak a training step's GEMMs reach (MFU-like) */
    MOE_HW_MEM_BW_GBS,       /* device memory bandwidth, GB/s */
    MOE_HW_MEM_GIB,          /* device memory, GiB */
    MOE_HW_RANKS_PER_NODE,   /* ranks (GPUs) that share the intra-node links */
    MOE_HW_SHARED,           /* 1: compute, memory bandwidth and memory are one machine's, shared by all ranks */
    MOE_HW_INTRA_GBS,        /* per rank, per direction, within a node */
    MOE_HW_INTRA_LAT_US,     /* per message, within a node */
    MOE_HW_INTER_GBS,        /* per rank, per direction, between nodes */
    MOE_HW_INTER_LAT_US,     /* per message, between nodes */
    MOE_HW_LINK_EFFICIENCY,  /* fraction of the link bandwidths collectives achieve */
    MOE_HW_KERNEL_OVERHEAD_US, /* fixed time of one kernel call (a GEMM or an element-wise pass) beyond its roofline */
    MOE_HW_ELEMENTWISE_GBS,  /* rate element-wise passes move data at (whole device / machine), GB/s */
    MOE_HW_SOFTMAX_GELEMS,   /* rate softmax passes (max, exp, sum, normalise) take elements at, 1e9/s */
    MOE_HW_ATTENTION_GELEMS, /* fp32 attention kernel (CP = 1), its work beyond its GEMMs: score elements, 1e9/s */
    MOE_HW_ATTENTION_BLOCK_GELEMS, /* the blocked kernel (CP > 1), the same per visited tile element, 1e9/s */
    MOE_HW_OPTIMIZER_GPARAMS, /* the fp32 optimizer step (gradient norm + AdamW), 1e9 parameters/s */
    MOE_HW_CORES,            /* shared machine: the cores its ranks divide (1 otherwise) */
    MOE_HW_THREADS,          /* shared machine: the threads of the one rank the rates were measured with (1 otherwise) */
    MOE_HW_OVERSUB_LAT_US,   /* shared machine: per-message latency while its ranks outnumber its cores */
    MOE_HW_INTER_BURST_KB,   /* inter-node links as token buckets (tbf): kB a link passes at once; 0 = none */
    MOE_HW_CORE_CACHE_KB,    /* optional: the cache one core keeps to itself, KiB; absent or 0 = not modelled */
    MOE_HW_NFIELDS
} moe_hw_field;

#define MOE_HW_EFF_POINTS 32

/* A GEMM efficiency table: efficiency against FLOPs (2MKN). */
typedef struct {
    int points;                      /* 0: absent; else 2..MOE_HW_EFF_POINTS */
    double flops[MOE_HW_EFF_POINTS]; /* increasing */
    double value[MOE_HW_EFF_POINTS]; /* in (0, 1] */
    char source[512];
} moe_hw_efftable;

typedef struct {
    char name[64];
    char description[256];
    char dtype[8]; /* "bf16" or "fp32" */
    double gemm_tflops;
    double gemm_efficiency;
    double mem_bw_gbs;
    double mem_gib;
    int ranks_per_node;
    int shared;
    double intra_gbs, intra_lat_us;
    double inter_gbs, inter_lat_us;
    double link_efficiency;
    double kernel_overhead_us;
    double elementwise_gbs;
    double softmax_gelems;
    double attention_gelems, attention_block_gelems;
    double optimizer_gparams;
    int cores, threads;
    double oversub_lat_us;
    double inter_burst_kb;
    double core_cache_kb; /* 0 when the profile has none */
    char source[MOE_HW_NFIELDS][512]; /* each field's source, as written */
    moe_hw_efftable eff;        /* gemm_efficiency_table (points 0: absent) */
    moe_hw_efftable eff_cached; /* gemm_efficiency_table_cached (points 0: absent) */
    char path[512];                   /* the file it was read from */
} moe_hwprofile;

/* The YAML key of field f ("gemm_tflops", ...); "?" out of range. */
const char *moe_hw_field_key(moe_hw_field f);

/* Reads and checks a profile file into *hw (untouched on failure). */
moe_status moe_hwprofile_load(const char *path, moe_hwprofile *hw);

/* The efficiency of one GEMM of `flops` FLOPs: with a table, linear in
** log(flops) between its points and the end point's value beyond them;
** without one, gemm_efficiency. */
double moe_hwprofile_gemm_efficiency(const moe_hwprofile *hw, double flops);
/* The same for a GEMM whose operands sit in cache (the attention kernels'
** tiles): gemm_efficiency_table_cached's value when the profile has one,
** else moe_hwprofile_gemm_efficiency's. */
double moe_hwprofile_gemm_efficiency_cached(const moe_hwprofile *hw, double flops);

/* Bytes per element of dtype (2 for bf16, 4 for fp32). */
int moe_hwprofile_dtype_bytes(const moe_hwprofile *hw);

#endif
