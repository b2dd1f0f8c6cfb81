/*
** costmodel_internal: what costmodel.c shares with costmodel_machine.c and
** costmodel_search.c. Not for use outside planner/costmodel*.c.
*/
#ifndef MOE_COSTMODEL_INTERNAL_H
#define MOE_COSTMODEL_INTERNAL_H

#include "planner/costmodel.h"
#include "runtime/base/topology.h"

// ----------------------------------------------------------------------------
// the machine (costmodel_machine.c): compute roofline and links

/* A group kind on this layout: size, whether any of its groups spans nodes,
** and the fewest members any member shares its node with (itself included). */
typedef struct {
    int n, cross, local;
} group_link;

typedef struct {
    double peak;        /* FLOP/s per rank */
    double eff;         /* the single factor (profile or --gemm-efficiency) */
    const moe_hwprofile *table; /* non-NULL: per-GEMM efficiency from its gemm_efficiency_table */
    double membw;       /* bytes/s per rank */
    double ewbw;        /* bytes/s per rank of element-wise passes */
    double smrate;      /* elements/s per rank of softmax passes */
    double attrate;     /* score elements/s per rank of the fp32 attention kernel's own work (CP = 1) */
    double blockrate;   /* tile elements/s per rank of the blocked attention kernel's own work (CP > 1) */
    double optrate;     /* parameters/s per rank of the fp32 optimizer step (gradient norm + AdamW) */
    double kern;        /* s: fixed cost of one kernel call */
    double intra_bw, inter_bw; /* bytes/s per rank per direction, link_efficiency applied */
    double intra_lat, inter_lat; /* s: the links' own */
    double core_lat;    /* s: at least this per message when the ranks outnumber a shared machine's cores (its
                           receiver waits for a core; oversubscribed_latency_us), else 0 */
    double inter_burst; /* bytes a token-bucket inter-node link passes at once */
    double w;           /* bytes per activation / weight element */
    double own_cache;   /* bytes: a one-thread rank's GEMMs whose operands fit take the cached table (the
                           profile's core_cache_kb); 0 with several threads, more ranks than cores, or no
                           core_cache_kb */
} machine;

/* On a shared machine of `cores` cores, W ranks run max(1, cores / W)
** threads each: rank_slice is the fraction of a core's time a rank's thread
** gets; rank_share the fraction of the profile's rates (measured on one rank
** of `threads` threads) one of W ranks gets, its threads / threads,
** time-shared. Both 1 on a machine that is not shared. */
double moe_cost_rank_slice(const moe_hwprofile *hw, int W);
double moe_cost_rank_share(const moe_hwprofile *hw, int W);
/* The threads each of W ranks runs: max(1, cores / W) on a shared machine
** (launch/local.c), else 1. */
int moe_cost_rank_threads(const moe_hwprofile *hw, int W);

/* The precision a profile and the options give (o->precision, or the
** profile's dtype when auto). */
int moe_cost_resolve_precision(const moe_hwprofile *hw, const moe_cost_opts *o);

/* One of W ranks' share of the profile: rates, kernel overhead, links
** (link_efficiency applied; core_lat, the oversubscribed latency, when the
** ranks outnumber a shared machine's cores), element size of `prec`. */
void moe_cost_machine_init(machine *m, const moe_hwprofile *hw, const moe_cost_opts *o, int W, int prec);

/* Efficiency of one GEMM of `flops`: the profile's table at that size when
** it has one (and no --gemm-efficiency override), else the single factor. */
double moe_cost_eff_at(const machine *m, double flops);
/* Roofline of one GEMM call, without its kernel overhead: at the cached
** table when its operands fit in own_cache, else the out-of-cache one;
** _cached: on operands already in cache (the profile's cached table, if it
** has one). */
double moe_cost_gemm_time(const machine *m, double M, double K, double N);
double moe_cost_gemm_time_cached(const machine *m, double M, double K, double N);
double moe_cost_link_bw(const machine *m, const group_link *g);
double moe_cost_link_lat(const machine *m, const group_link *g);
/* A ring collective of `steps` steps sending `bytes` per rank in all. */
double moe_cost_ring_time(const machine *m, const group_link *g, double steps, double bytes);
/* All-gather / reduce-scatter (ag) and all-reduce (ar) of a tensor of `full` bytes. */
double moe_cost_ag_time(const machine *m, const group_link *g, double full);
double moe_cost_ar_time(const machine *m, const group_link *g, double full);
/* All-to-all of `held` bytes per rank, spread evenly over the n ranks (own
** share stays): one message to each of the n - 1 peers, each costing its
** link's latency, node-local and remote peers served at once, each over its
** own link. held = 0: the messages alone (the dispatcher's counts). */
double moe_cost_a2a_time(const machine *m, const group_link *g, double held);
double moe_cost_p2p_time(const machine *m, const group_link *g, double bytes);
/* Group kind k of layout l with rpn ranks per node: its size, whether it spans nodes. */
moe_status moe_cost_group_links(const moe_layout *l, moe_group_kind k, int rpn, group_link *out);

// ----------------------------------------------------------------------------
// options and checks (costmodel_search.c)

/* MOE_ERR_USAGE naming the option out of range. */
moe_status moe_cost_check_opts(const moe_cost_opts *o);
/* What the runtime would refuse: the config's own relations, the layout, the
** model against the layout, tokens per micro-batch against TP, and (with
** virtual stages) Megatron's interleaving rules. cfg is validated in place. */
moe_status moe_cost_check_layout(moe_config *cfg, const moe_cost_opts *o, moe_layout *l);

#endif
