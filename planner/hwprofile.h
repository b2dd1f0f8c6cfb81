/*
** hwprofile: what the cost model (planner/costmodel.h) knows about a machine,
** read from a YAML file (one per machine in configs/hw). No MPI and no
** measurement here: the numbers come from datasheets or from measurements
** written down elsewhere, and every number says which in its `source`.
**
** File format: one mapping. `name` is a plain string, `description` an
** optional plain string; every other key is required and is a mapping with
** a `value` and a non-empty `source` string:
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
    MOE_HW_NFIELDS
} moe_hw_field;

#define MOE_HW_EFF_POINTS 32

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
    char source[MOE_HW_NFIELDS][512]; /* each field's source, as written */
    int eff_points;                          /* 0: no gemm_efficiency_table */
    double eff_flops[MOE_HW_EFF_POINTS];     /* increasing */
    double eff_value[MOE_HW_EFF_POINTS];
    char eff_source[512];
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

/* Bytes per element of dtype (2 for bf16, 4 for fp32). */
int moe_hwprofile_dtype_bytes(const moe_hwprofile *hw);

#endif
