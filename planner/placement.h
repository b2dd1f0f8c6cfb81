/*
** placement: where each MoE layer's experts live across the EP ranks.
**
** Input: a load matrix w (layers, experts), the tokens (token-expert pairs)
** each expert received in a trace window (planner/trace.h,
** moe_trace_expert_load). Output: a moe_plan (planner/plan.h). A rank's load
** in a layer is the sum over the copies it holds of w[e] * share; the cost of
** a plan is the sum over layers of the most loaded rank's load, because EP
** ranks wait for each other at every layer's all-to-all (step time follows
** sum_l max_r, not max_r sum_l). Without a communication term the problem
** separates by layer, and every method below places one layer at a time.
**
** Methods (slots S per rank per layer, R = ep ranks):
**   contiguous   expert e on rank e*R/E (Megatron's default)
**   round-robin  expert e on rank e mod R
**   greedy       LPT with a cardinality limit (EPLB's balanced_packing):
**                heaviest expert first, onto the lightest rank with a free slot
**   eplb         EPLB's global policy: `replicas` extra copies per layer go one
**                by one to the expert with the largest w/copies, copies split
**                the expert's tokens equally, then greedy packing of the copies
**                (two copies of one expert never share a rank)
**   ilp          per layer, CBC, one model per layer in a forked child under
**                a wall-clock watchdog (CBC overruns its own limit in
**                preprocessing); a layer whose solve is killed or finds nothing
**                better than the warm start keeps the warm start
**                (stats->fallback). Without replicas: binary x[e][r],
**                sum_r x = 1, sum_e x <= S, sum_e w_e x_er <= M, minimise M;
**                experts in descending-load order with x[i][r] = 0 for r > i
**                (breaks rank symmetry); warm start greedy improved by local
**                search (moe_place_improve). With replicas: binary x (copy)
**                and continuous y (share), see moe_place_ilp_replicated;
**                warm start moe_place_replicated_start. No solve at all when
**                the start is already within the gap of the analytic bound.
**
** Ranks per node is recorded but does not change any method. Why: this
** runtime dispatches tokens to their experts and combines them back home, so
** with data spread evenly over ranks each expert's tokens come equally from
** every source rank; a rank's inter-node receive volume is then its load
** times the fraction of sources on other nodes, the same fraction for every
** rank. Minimising the max load therefore already minimises the max
** inter-node traffic, and no placement changes the total.
**
** The lower bound per layer is max(solver bound, sum(w)/R, max_e w_e/c_e)
** with c_e the copies of expert e under the optimal equal-split apportionment
** (c_e = 1 without replication), rounded up when all loads are integers,
** and without replication also the slot bound (moe_place_layer_bound_slots);
** plan->lower_bound is its sum over layers, plan->gap =
** (objective - lower_bound) / objective.
*/
#ifndef MOE_PLACEMENT_H
#define MOE_PLACEMENT_H

#include "planner/plan.h"
#include "planner/trace.h"
#include "runtime/base/status.h"

typedef enum {
    MOE_PLACE_CONTIGUOUS,
    MOE_PLACE_ROUND_ROBIN,
    MOE_PLACE_GREEDY,
    MOE_PLACE_EPLB,
    MOE_PLACE_ILP,
} moe_place_method;

const char *moe_place_method_name(moe_place_method m);
/* "ilp", "greedy", "contiguous", "round-robin", "eplb"; else MOE_ERR_USAGE. */
moe_status moe_place_method_parse(const char *s, moe_place_method *out);

typedef struct {
    moe_place_method method;
    int ep;              /* ranks R */
    int ranks_per_node;  /* 0: ep (one node) */
    int slots_per_rank;  /* 0: ceil((experts + replicas) / ep) */
    int replicas;        /* extra copies per layer (exactly E + replicas copies); eplb or ilp */
    double time_limit_s; /* ilp: wall-clock seconds per layer (> 0) */
    double gap;          /* ilp: relative optimality gap to stop at (>= 0) */
    int jobs;            /* ilp: layers solved at once; 0: online CPUs */
} moe_place_opts;

/* ilp, ep 1, time limit 10 s, gap 0.005, everything else derived. */
void moe_place_opts_default(moe_place_opts *o);

typedef struct {
    int ilp_optimal;    /* layers within the gap: the solver finished, or the start met the bound */
    int ilp_limited;    /* layers stopped at the time limit with a plan better than the start */
    int fallback;       /* layers that kept the start (greedy + local search, or
                        ** moe_place_replicated_start): nothing better in time */
    int watchdog_kills; /* layers whose solver the watchdog killed */
} moe_place_stats;

/* load is (layers, experts). *out is allocated here (moe_plan_free) and holds
** the placement with objective, lower_bound, gap, solve_s filled in. stats may
** be NULL. MOE_ERR_USAGE for impossible options (slots cannot hold the
** copies, replicas with a method other than eplb or ilp, more replicas than
** E * (ep - 1), ...). With replicas every layer holds exactly E + replicas
** copies; when slots * ep > E + replicas some ranks hold fewer than slots. */
moe_status moe_place(const double *load, int layers, int experts, const moe_place_opts *o, moe_plan *out,
                     moe_place_stats *stats);

/* --- one layer, no replication: rank_of[e] for e in [0, E) ------------- */
void moe_place_contiguous(int experts, int ranks, int *rank_of);
void moe_place_round_robin(int experts, int ranks, int *rank_of);
/* Needs ranks * slots >= experts. */
moe_status moe_place_greedy(const double *w, int experts, int ranks, int slots, int *rank_of);

typedef struct {
    double objective;   /* max rank load of rank_of */
    double bound;       /* max(solver bound, analytic bound) */
    double seconds;     /* wall time including fork and model building */
    int finished;       /* solver stopped on its own (optimal within gap) */
    int killed;         /* the watchdog killed it */
    int improved;       /* rank_of is the solver's, strictly better than start */
} moe_ilp_result;

/* Local search on a placement without replication, in place: moves and swaps
** of one or two experts between two ranks that lower the pair's larger load
** (single moves and 1-for-1 swaps between any two ranks first, then up to
** 2-for-2 for the busiest rank), until none is left or the max load meets
** the analytic bound. Keeps at most `slots` experts per rank; never raises
** the max rank load. Deterministic. */
moe_status moe_place_improve(const double *w, int experts, int ranks, int slots, int *rank_of);

/* Solves one layer in a forked child with a wall-clock watchdog. start is a
** valid placement (e.g. greedy); rank_of gets the solver's plan if strictly
** better, else a copy of start. A start within `gap` of the analytic bound
** (moe_place_layer_bound_slots) is returned as finished without a solve. */
moe_status moe_place_ilp(const double *w, int experts, int ranks, int slots, const int *start, double time_limit_s,
                         double gap, int *rank_of, moe_ilp_result *res);

/* --- one layer with replication --------------------------------------- */
/* A layer's copies as a dense matrix share[e * ranks + r]: > 0 iff expert e
** has a copy on rank r, that copy's share of e's tokens; every expert's shares
** sum to 1. */

/* EPLB: `extra` copies to the experts with the largest w / copies, equal
** shares, copies packed heaviest first onto the lightest rank with a free
** slot that does not hold the expert yet. Needs ranks * slots >= E + extra
** and extra <= E * (ranks - 1). */
moe_status moe_place_eplb(const double *w, int experts, int ranks, int slots, int extra, double *share);

/* Splits instead of apportioning: greedy + local search with at most
** ceil(E / ranks) experts per rank, then `extra` times a new copy of an
** expert e held by the busiest rank c on a rank b with a free slot that lacks
** e, taking share d from c's copy (b: the lowest pair max after it; d evens
** out c and b, kept within [1e-3, 1 - 1e-3] of c's share), then the local
** search over copies again, with shifts of share between two copies of one
** expert (a copy keeps at least 1e-3 of its expert). Same contract as
** moe_place_eplb. Why: on flat loads eplb's equal shares of a few copies sit
** far above what one copy per expert reaches. */
moe_status moe_place_split(const double *w, int experts, int ranks, int slots, int extra, double *share);
/* The ILP's start with replicas, and its fallback: the better of eplb's
** copies rebalanced by that local search (moves, swaps, shifts) and
** moe_place_split (the former on ties). Never worse than moe_place_eplb. */
moe_status moe_place_replicated_start(const double *w, int experts, int ranks, int slots, int extra, double *share);

/* The ILP with replication, one layer, in a forked child under the same
** watchdog as moe_place_ilp. Binary x[e][r] (a copy of e on r), continuous
** y[e][r] (its share): y <= x, sum_r y = 1, sum_e x <= slots per rank,
** sum of all x = E + extra exactly, sum_e w_e y_er <= M, minimise M. Every
** copy carries a floor share y >= f_e x with f_e = min(1e-5 * mean rank load
** / w_e, 1 / ranks^2) (the plan format needs shares > 0); the solver's bound
** is lowered by slots * 1e-5 * mean rank load to stay a bound of the problem
** without the floor. Symmetry: ranks ordered by the heaviest expert they
** hold. Warm start: `start` (moe_place_replicated_start). Once the copies are
** fixed, a small LP raises the smallest share as far as the max load
** allows. share gets the solver's plan if strictly better than start, else
** a copy of start; res as for moe_place_ilp (bound: max of that and the
** analytic bound with `extra` copies). */
moe_status moe_place_ilp_replicated(const double *w, int experts, int ranks, int slots, int extra,
                                    const double *start, double time_limit_s, double gap, double *share,
                                    moe_ilp_result *res);

/* --- measures ------------------------------------------------------------ */
/* Max and mean rank load of one layer of p under loads w[experts]. */
void moe_plan_layer_load(const moe_plan *p, int layer, const double *w, double *max_load, double *mean_load);
/* sum over layers of max rank load; load is (layers, experts). */
double moe_plan_cost(const moe_plan *p, const double *load);

/* The rank-load imbalance a routing trace implies for a placement, what the
** cost model's expert_imbalance stands for: over the windows starting at or
** after from_step and every layer, the sum of the busiest rank's pairs over
** the sum of the mean rank's pairs (each window's load summed over its
** sources; >= 1). Windows are taken one at a time because EP ranks wait for
** the busiest at every layer of every micro-batch: the shorter the windows
** (moe train --trace-window 1), the closer to what a step sees. plan NULL:
** contiguous on ep ranks; else plan->ep ranks (ep ignored) and the plan must
** match the trace's layers and experts. MOE_ERR_INPUT when no window from
** from_step routed a pair or the plan does not fit the trace. */
moe_status moe_plan_trace_imbalance(const moe_trace *t, const moe_plan *plan, int ep, int64_t from_step,
                                    double *out);
/* The analytic lower bound of one layer (see top) with `copies` extra copies. */
double moe_place_layer_bound(const double *w, int experts, int ranks, int copies);
/* Same, and without copies also the slot bound: every rank holds at least
** m = E - (ranks - 1) * slots experts, so the heaviest expert shares its rank
** with at least the m - 1 lightest others (m = slots when ranks * slots = E). */
double moe_place_layer_bound_slots(const double *w, int experts, int ranks, int slots, int copies);

/* --- plan helpers (planner/plan.c) -------------------------------------- */
/* The copies of expert e in layer l: p->ncopies[l * experts + e] of them. */
static inline moe_plan_copy *moe_plan_copies(const moe_plan *p, int l, int e)
{
    return p->copies + ((size_t)l * p->experts + e) * p->max_copies;
}
/* moe_plan_validate, then refuses a plan made for another EP size (ep > 0),
** layer count (layers > 0) or expert count (experts > 0). MOE_ERR_INPUT. */
moe_status moe_plan_check(const moe_plan *p, int layers, int experts, int ep);
/* Same, naming the plan (its file) in messages. */
moe_status moe_plan_check_named(const moe_plan *p, const char *name, int layers, int experts, int ep);

/* Reads a plan for training (--expert-placement) and refuses, as MOE_ERR_USAGE
** naming the file, one the runtime cannot train with: another model or EP
** size, a layer or rank holding another number of expert copies than rank 0
** of layer 0 (the expert tensors have one shape), or replicated experts with
** a capacity factor (> 0: copies split tokens only when nothing is dropped).
** The launcher calls it before starting workers, the workers again. */
moe_status moe_plan_read_trainable(const char *path, int layers, int experts, int ep, double capacity_factor,
                                   moe_plan *out);

#endif
