/*
** ep_internal: what ep.c (the plain dispatcher) shares with ep_overlap.c
** and ep_fine.c (the overlapped ones). Not for use outside parallel/ep*.c.
*/
#ifndef MOE_EP_INTERNAL_H
#define MOE_EP_INTERNAL_H

#include "parallel/ep.h"

/* Exchanges the per-(peer, local expert) row counts and derives the receive
** layout: segments, rows and element splits per peer, buffers reserved. */
moe_status moe_ep_exchange_counts(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map,
                                  const int32_t *slot_offsets, int C, int F);
/* Element splits (sc, sd, rc, rd) again from the row counts forward kept. */
void moe_ep_refresh_splits(moe_ep_layer *s, int P, int C);

/* What one overlapped pass moves: rows out from `src` (slot order) into
** `dst` (received order: xr forward, ye backward), a task on each piece of
** received rows, and the results from `res` (received order) back into `out`
** (slot order). Backward, fine accumulates the weight gradients into dw13 /
** dw2 inside the pass. */
typedef struct {
    moe_ep_layer *s;
    moe_comm *ep;
    const moe_expert_map *map;
    int C, F, backward;
    const float *src;
    float *dst;
    float *res;
    float *out;
    const float *w13, *w2;
    float *dw13, *dw2;
} moe_ep_pass;

/* The fine mode's pass (ep_fine.c). */
moe_status moe_ep_fine_pass(const moe_ep_pass *a);
/* The test hook of ep.h (delay_us): a pseudo-random pause before a send. */
void moe_ep_maybe_delay(moe_ep_layer *s);

moe_status moe_ep_forward_overlap(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map, const float *x,
                                  const int32_t *row_token, float *xs, const int32_t *slot_offsets, int C, int F,
                                  const float *w13, const float *w2, float *ys);
moe_status moe_ep_backward_overlap(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map, const float *dys,
                                   int C, int F, const float *w13, const float *w2, float *dw13, float *dw2,
                                   float *dxs);

#endif
