/*
** trace: routing traces, what the planner places experts from.
**
** A trace holds, for each MoE layer, how many (token, slot) pairs each source
** rank routed to each expert, summed over a window of steps; and for each
** pair of consecutive MoE layers, how many tokens went from expert i in layer
** l to expert j in layer l+1 (all k x k pairs of a token's choices). A file
** may hold several windows (drift over training). On disk it is a
** RoutingTrace protobuf (proto/routing_trace.proto); in memory, this struct.
** Offline only: no MPI.
*/
#ifndef MOE_TRACE_H
#define MOE_TRACE_H

#include <stdint.h>

#include "runtime/base/status.h"

typedef struct {
    int64_t first_step, steps; /* the training steps this window summed */
    double *load;              /* [layers][sources][experts] pairs routed */
    double *transitions;       /* [layers-1][experts][experts], may be NULL */
} moe_trace_window;

typedef struct {
    int layers, experts, topk, sources; /* sources: ranks that recorded (EP x DP ranks) */
    int nwindows;
    moe_trace_window *windows;
} moe_trace;

/*
** Invariants (moe_trace_validate checks them; read and write call it):
** layers, experts, sources >= 1; 1 <= topk <= experts; nwindows >= 1; each
** window has first_step >= 0, steps >= 1 and starts after the previous one
** ends (windows are in step order and do not overlap); every count is finite
** and >= 0. transitions is NULL when not recorded (always NULL if layers == 1).
** The struct owns every array; moe_trace_free releases them.
*/

/* Zeroed trace of this shape with nwindows windows (first_step = w, steps = 1
** until the caller sets them); transitions allocated when with_transitions and
** layers > 1. MOE_ERR_USAGE on a bad shape. */
moe_status moe_trace_alloc(moe_trace *t, int layers, int experts, int topk, int sources, int nwindows,
                           int with_transitions);

/* MOE_ERR_INPUT "<what>: <problem>" on any broken invariant above. */
moe_status moe_trace_validate(const moe_trace *t, const char *what);

/* load summed over sources and windows: out[layers][experts] (caller frees with free()). */
moe_status moe_trace_expert_load(const moe_trace *t, double **out);

/* Routing drift between consecutive windows: out[nwindows-1] (NULL-safe when
** nwindows == 1: *out is a valid buffer of 0 doubles); out[w] is the L1
** distance between windows w and w+1 of each layer's expert-load vector
** (summed over sources, normalised to sum 1; an all-zero layer stays zero),
** averaged over layers. 0 = same distribution, 2 = disjoint. Caller frees with free(). */
moe_status moe_trace_drift(const moe_trace *t, double **out);

/* Atomic: writes PATH.tmp, fsyncs it, renames it over path, fsyncs the
** directory. Validates first: an invalid trace is never written. */
moe_status moe_trace_write(const char *path, const moe_trace *t);
/* Validates everything (shapes, counts >= 0, finite, sizes consistent); a bad
** or truncated file is MOE_ERR_INPUT naming the file and the problem. On
** failure *t is left empty (nothing to free). */
moe_status moe_trace_read(const char *path, moe_trace *t);
/* Frees every array and zeroes *t; safe on a zeroed or already-freed trace. */
void moe_trace_free(moe_trace *t);

/*
** Synthetic traces for tests and benchmarks: Zipf(skew) expert popularity
** per layer (a random permutation per layer), inter-layer affinity (a token's
** next-layer choice follows its current expert with probability `affinity`),
** drift (the popularity permutation changes by `drift` swaps per window).
**
** Exactly: layer l ranks its experts by a random permutation perm_l; the
** expert of rank r (0-based) has weight 1/(r+1)^skew (skew 0: uniform). For
** each window, source and token, layer 0 draws topk distinct experts by
** weight (sequentially without replacement); each later layer, with
** probability `affinity`, keeps the previous layer's expert ids (identity
** map), else draws afresh by its own weights. Before every window after the
** first, each perm_l gets `drift` swaps of two random ranks. Window w has
** first_step = w, steps = 1. Transitions are recorded when layers > 1.
** Deterministic for a seed (one moe_rng stream, no threads). MOE_ERR_USAGE on
** layers/experts/sources/windows < 1, topk outside 1..experts,
** tokens_per_window < 0, skew < 0 or not finite, affinity outside [0, 1],
** drift < 0.
*/
typedef struct {
    int layers, experts, topk, sources, windows;
    int64_t tokens_per_window; /* per source */
    double skew, affinity;
    int drift;
    uint64_t seed;
} moe_trace_gen;

moe_status moe_trace_generate(const moe_trace_gen *g, moe_trace *out);

#endif
