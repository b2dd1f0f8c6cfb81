/*
** ep_internal: what ep.c (the plain dispatcher) shares with ep_overlap.c
** (the overlapped ones). Not for use outside parallel/ep*.c.
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

moe_status moe_ep_forward_overlap(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map, const float *x,
                                  const int32_t *row_token, float *xs, const int32_t *slot_offsets, int C, int F,
                                  const float *w13, const float *w2, float *ys);
moe_status moe_ep_backward_overlap(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map, const float *dys,
                                   int C, int F, const float *w13, const float *w2, float *dw13, float *dw2,
                                   float *dxs);

#endif
