/*
** pp_schedule: the pipeline-parallel schedule as pure code (no communication).
**
** The model's layers are cut into p stages (one per pipeline rank); a step's
** m micro-batches flow through them, forward then backward. What each stage
** does, in which order, is a list of actions (forward or backward of one
** micro-batch on one model chunk). The trainer walks that list; the tests and
** the planner reason about it without running anything.
**
** v = 1: plain 1F1B (PipeDream-Flush, Megatron's
**   forward_backward_pipelining_without_interleaving). Stage s runs
**   w = min(p - s - 1, m) warm-up forwards, then m - w steady steps of one
**   forward followed by one backward, then w cool-down backwards. Forwards and
**   backwards each go in micro-batch order. At most min(p - s, m) forward
**   activations are alive at once, whatever m is.
**
** v > 1: Megatron-Core's interleaved schedule
**   (forward_backward_pipelining_with_interleaving). Each stage holds v model
**   chunks; chunk c of stage s is virtual stage k = c*p + s of the p*v. The
**   stage's m*v forwards are numbered j = 0 .. m*v-1 and run on
**     chunk(j) = (j / p) % v,   micro(j) = (j / (p*v)) * p + j % p
**   (micro-batches go through a chunk in groups of p, then the next chunk);
**   backwards use the same numbering with the chunk reversed (v-1 - chunk(j)).
**   Warm-up: w = min(2*(p - s - 1) + (v - 1)*p, m*v) forwards, then m*v - w
**   steady steps (forward j = w + i, then backward i), then the remaining
**   backwards. This is current Megatron-Core with its default group size p
**   (microbatch_group_size_per_vp_stage). Older Megatron ran all forwards
**   then all backwards on every stage when m == p; here the cap does that only
**   on stages s < p/2 (both orders are deadlock-free).
**   Requires m % p == 0, as Megatron asserts.
**
** Every list holds each (micro, chunk) forward and backward exactly once, the
** backward after its forward. Run with blocking receives (a forward waits for
** the previous virtual stage's forward of that micro-batch, a backward for the
** next virtual stage's backward) the p lists never deadlock.
**
** Arguments: p >= 1, 0 <= s < p, m >= 1, v >= 1, m % p == 0 when v > 1, and
** 2*m*v and p*v*m*2 fit in an int. Memory: the caller owns every buffer;
** moe_pp_simulate allocates its own scratch and frees it before returning.
*/
#ifndef MOE_PP_SCHEDULE_H
#define MOE_PP_SCHEDULE_H

#include "runtime/base/status.h"

typedef enum { MOE_PP_FWD = 0, MOE_PP_BWD = 1 } moe_pp_kind;

/* One step of a stage: forward or backward of micro-batch `micro` (0..m-1)
** on the stage's model chunk `chunk` (0..v-1; virtual stage chunk*p + s). */
typedef struct {
    moe_pp_kind kind;
    int micro;
    int chunk;
} moe_pp_action;

/* Actions of stage s in execution order: writes exactly 2*m*v entries into
** out (the caller provides that many). MOE_ERR_USAGE naming the sizes for bad
** arguments (out is then untouched). */
moe_status moe_pp_schedule(int p, int s, int m, int v, moe_pp_action *out);

/* The most forward activations (one per (micro, chunk) forward whose backward
** has not run yet) stage s holds at once under moe_pp_schedule: the number of
** activation slots it needs. min(p - s, m) for v = 1. -1 for bad arguments
** (no error is recorded). */
int moe_pp_max_in_flight(int p, int s, int m, int v);

/* Simulated makespan of one step. Every stage runs its moe_pp_schedule list
** in order, each action as soon as the stage is free and its input is there:
** forward of (micro, virtual stage k > 0) once the forward of (micro, k-1)
** finished plus comm; backward of (micro, k) once the backward of (micro, k+1)
** finished plus comm, the last virtual stage's backward once its own forward
** finished (no comm). comm is paid on every virtual-stage hop, also when both
** sides share a rank (p = 1). Each forward of one chunk takes tf, each backward
** tb. Returns the makespan and, if bubble is not NULL, the idle fraction
** averaged over stages, (makespan*p - busy) / (makespan*p) with
** busy = p*m*v*(tf + tb). Returns -1 (bubble untouched) for bad arguments,
** tf or tb not > 0, comm < 0, or failed scratch allocation (recorded as
** MOE_ERR_NOMEM). */
double moe_pp_simulate(int p, int m, int v, double tf, double tb, double comm, double *bubble);

/* The analytic bubble fraction: (p-1)/(m+p-1) for 1F1B, (p-1)/(v*m+p-1) for
** the interleaved schedule (Narayanan et al. 2021, sec. 2.2), tf and tb being
** per-chunk times. With comm = 0 moe_pp_simulate gives exactly this, for any
** tf, tb (tested for p <= 8, m <= 16, v <= 3). -1 for bad arguments (the
** moe_pp_schedule rules without s). */
double moe_pp_bubble_formula(int p, int m, int v);

#endif
