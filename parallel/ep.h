/*
** ep: expert parallelism, the all-to-all token dispatcher.
**
** The E global experts are spread over the ep group by a table (moe_expert_map,
** contiguous by default, replaceable by a placement plan): expert e lives on
** rank expert_rank[e] as its local expert expert_local[e]. The router and the
** route plan work in "slot" order, slot(e) = expert_rank[e] * E_local +
** expert_local[e], so a rank's expert-sorted rows are already grouped by the
** rank they go to, and within it by that rank's local expert.
**
** Forward, per MoE layer and micro-batch:
**   counts:   rows per slot -> all-to-all of E_local counts per peer
**   dispatch: all-to-all(v) of the rows; they arrive ordered (source, expert),
**             i.e. as P * E_local segments, segment (p, l) run by local expert l
**   experts:  grouped SwiGLU GEMMs over those segments, in place: no copy
**             regroups rows by expert (an expert's weight gradient sums its
**             segments in source order)
**   combine:  all-to-all(v) home; the rows land in the caller's slot order,
**             ready for unpermute
** Backward mirrors it: the row gradients travel out like the tokens did, the
** expert backward runs, the input gradients travel home.
**
** A rank may send or receive zero rows from any peer, or in total; every path
** handles it. Buffers on the expert side grow to the largest step seen.
*/
#ifndef MOE_EP_H
#define MOE_EP_H

#include <stdint.h>

#include "comm/comm.h"

/*
** Replication: a placement plan may give an expert copies on several ranks,
** each taking a share of the expert's tokens (moe_expert_map_from_copies).
** Copy 0 of an expert is its canonical copy: it alone counts in the gradient
** norm and is written to checkpoints. On every rank the canonical copies come
** first in local order (increasing expert id), then the extra copies
** (increasing expert id), so a tensor's canonical rows are its first
** n_canonical rows. The copies of an expert stay identical because their
** gradients are summed among them (copy_comm) before the optimizer runs.
*/
typedef struct {
    int E, E_local, ep_size, ep_rank;
    int *expert_rank;   /* [E] rank of expert e's canonical copy */
    int *expert_local;  /* [E] its local index there */
    int *local_experts; /* [E_local] global expert id of each local copy, in local order */
    int *local_index;   /* [E] the local index of expert e's copy here, -1: none */
    int n_canonical;    /* local copies [0, n_canonical) are canonical */
    int max_copies;     /* 1 without replication */
    int replicated;     /* some expert has more than one copy */
    int *ncopies;       /* [E] */
    int *copy_slot;     /* [E * max_copies] slot of each copy, copy 0 first */
    double *copy_share; /* [E * max_copies] share of the expert's tokens */
    moe_comm **copy_comm; /* [E_local] the ranks holding the local copy's expert,
                             NULL for one copy; set by moe_expert_maps_connect */
} moe_expert_map;

/* Experts [r*E/ep, (r+1)*E/ep) on rank r. E % ep_size must be 0. */
moe_status moe_expert_map_contiguous(moe_expert_map *m, int E, int ep_size, int ep_rank);
/* Expert e on rank rank_of_expert[e] (E entries, each in [0, ep_size)); every
** rank must hold exactly E / ep_size experts (the grouped layout needs equal
** counts). MOE_ERR_USAGE when the table breaks either rule. */
moe_status moe_expert_map_from_ranks(moe_expert_map *m, int E, int ep_size, int ep_rank,
                                     const int *rank_of_expert);
/* Expert e has ncopies[e] >= 1 copies, copy c on rank ranks[e * max_copies + c]
** with share shares[e * max_copies + c] (> 0, an expert's shares summing to 1
** within 1e-6); copy 0 is canonical. No expert twice on one rank, and every
** rank holds exactly `slots` copies. MOE_ERR_USAGE naming the broken rule. */
moe_status moe_expert_map_from_copies(moe_expert_map *m, int E, int ep_size, int ep_rank, int slots,
                                      const int *ncopies, const int *ranks, const double *shares, int max_copies);
void moe_expert_map_free(moe_expert_map *m);
/* Collective over ep (every rank passing the same maps): one communicator
** per distinct set of ranks that hold copies of a replicated expert, shared
** by every map and expert with that set, pointed to by the maps' copy_comm.
** *comms gets them ([*ncomms], NULL where this rank is not a member); the
** caller frees each with moe_comm_free, in order, then the array (moe_free),
** after the maps are done with them. */
moe_status moe_expert_maps_connect(moe_expert_map *maps, int nmaps, moe_comm *ep, moe_comm ***comms, int *ncomms);
/* The slot of expert e's canonical copy. */
static inline int moe_expert_slot(const moe_expert_map *m, int e)
{
    return m->expert_rank[e] * m->E_local + m->expert_local[e];
}
/*
** slot[i] for each of n routed (token, expert) pairs idx[i] (row-major over
** tokens, so in token order). Expert e's n_e pairs, in order, are cut into
** consecutive runs: copy c takes pairs [round(n_e * S_c), round(n_e * S_c+1))
** where S_c is the sum of the shares of the copies before c. A function of idx
** alone, so every rank that routes the same tokens sends them to the same
** copies. work: moe_expert_map_work(m) ints of scratch.
*/
void moe_expert_map_slots(const moe_expert_map *m, const int32_t *idx, int n, int32_t *slot, int32_t *work);
static inline size_t moe_expert_map_work(const moe_expert_map *m)
{
    return (size_t)m->E * (size_t)(m->max_copies + 1);
}

/* How the expert layer overlaps its all-to-alls with compute
** (--moe-overlap; ep_overlap.c): none, coarse (chunks of local experts, one
** non-blocking all-to-all each, Tutel-like), fine (one message per source
** rank, computed as it lands, results sent home as they finish: Comet-like;
** thread 0 drives MPI while the others compute). All three give
** bit-identical outputs and gradients. */
typedef enum { MOE_EP_NONE = 0, MOE_EP_COARSE = 1, MOE_EP_FINE = 2 } moe_ep_overlap;

/* Timeline hook (benchmarks): called by coarse and fine with what happened
** ("compute" a source's or chunk's GEMMs from t0 to t1, "arrived" when a
** source's rows were seen complete, "sent" when its results left; t0 == t1
** for instants), the source rank or chunk, and moe_now() times. It may be
** called from a compute thread; it must be thread-safe. */
typedef void (*moe_ep_event_fn)(void *ctx, const char *what, int source, double t0, double t1);

/* One MoE layer's dispatch state: what forward leaves for backward. */
typedef struct {
    moe_ep_event_fn on_event; /* NULL: no timeline */
    void *event_ctx;
    int overlap; /* moe_ep_overlap, set by the owner (0: none) */
    int chunks;  /* coarse: chunks of local experts (0: 4; at most E_local) */
    int fine_chunks; /* fine: messages per source, cut at local-expert boundaries (0: 2; at most E_local) */
    double compute_s; /* seconds of expert GEMMs (all threads) in the last forward or backward */
    int delay_us; /* tests: coarse and fine sleep up to this long (pseudo-random) before
                     each send, so messages land in ever-changing orders */
    unsigned delay_state;
    size_t *send_rows, *recv_rows;      /* [ep] rows to / from each peer */
    int32_t *send_counts, *recv_counts; /* [ep * E_local] rows per (peer, local expert) */
    int32_t *offsets;                   /* [ep * E_local + 1] segments of the received rows */
    int32_t *seg_expert;                /* [ep * E_local] local expert of each segment */
    size_t *sc, *sd, *rc, *rd;          /* [ep] element counts/displacements, send and receive */
    size_t recv_total, cap_rows; /* rows received; rows the expert-side buffers hold (ep.c's reserve) */
    float *xr;   /* (recv, C) rows as received: the experts' inputs, kept for backward */
    float *h13;  /* (recv, 2F) */
    float *act;  /* (recv, F) */
    float *ye;   /* (recv, C) expert outputs; in backward the row gradients */
    float *dx;   /* (recv, C) backward: input gradients */
    float *dh13, *dact; /* backward scratch */
} moe_ep_layer;

void moe_ep_layer_free(moe_ep_layer *s);

/*
** x (N, C): this rank's token activations; row r of the slot-ordered rows is
** x[row_token[r]] (-1: a zero padding row); slot_offsets[E+1] delimit each
** slot's rows. xs (R, C) is scratch for the rows in flight. ys (R, C)
** receives the expert outputs of the same rows. w13 (E_local, 2F, C),
** w2 (E_local, C, F): this rank's experts.
*/
moe_status moe_ep_forward(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map,
                          const float *x, const int32_t *row_token, float *xs,
                          const int32_t *slot_offsets, int R, int C, int F,
                          const float *w13, const float *w2, float *ys);

/*
** The two halves of the exchange, for callers that put their own work in
** between (benchmarks, the overlap engine). dispatch: counts, then each
** peer's rows are gathered from x (row r is x[row_token[r]], zero for padding
** rows) into xs and sent at once, so gathering the next peer's rows overlaps
** the transfer of the last; this rank's own rows are gathered straight into
** s->xr. Received rows land in s->xr (segments s->offsets / s->seg_expert).
** dispatch_again: more rows along the same routes (backward), into out.
** combine: rows laid out like s->xr travel home into out (R, C), slot order.
*/
moe_status moe_ep_dispatch(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map,
                           const float *x, const int32_t *row_token, float *xs,
                           const int32_t *slot_offsets, int C, int F);
moe_status moe_ep_dispatch_again(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map,
                                 const float *rows, int C, float *out);
moe_status moe_ep_combine(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map,
                          const float *rows, int C, float *out);

/* dys (R, C) -> dxs (R, C) written; dw13, dw2 accumulated. */
moe_status moe_ep_backward(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map,
                           const float *dys, int R, int C, int F, const float *w13,
                           const float *w2, float *dw13, float *dw2, float *dxs);

#endif
