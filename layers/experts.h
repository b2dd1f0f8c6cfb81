/*
** experts: E SwiGLU experts run as a grouped GEMM over tokens sorted by expert.
**
** A micro-batch's routing becomes a plan (moe_route_plan): every (token, slot)
** pair gets a row of the expert-sorted buffer, rows of expert e are
** [offsets[e], offsets[e+1]), ordered by token then slot (deterministic).
** Never every token times every expert: an expert only sees its own rows.
**
** Capacity (capacity > 0): expert e keeps at most `capacity` rows; which rows
** are kept follows the drop policy: PROBS keeps the highest topk_w (ties to
** the lower token), POSITION keeps the earliest tokens. A dropped (token, slot)
** has slot_row = -1 and contributes nothing. With pad, every expert gets
** exactly `capacity` rows; padding rows have row_token = -1 and zero inputs.
** capacity <= 0 is dropless. R = offsets[E] is the row count.
**
**   plan:        topk_idx[N,K], topk_w[N,K] -> counts[E] (kept rows),
**                offsets[E+1], slot_row[N*K], row_token[R_max], row_slot[R_max]
**                where R_max = N*K dropless, or E*capacity with capacity.
**   permute:     xs[r,:] = x[row_token[r],:]            (0 for padding)
**   experts:     h13 = xs_e @ w13[e]^T (R_e, 2F); act = swiglu(h13) (R_e, F);
**                ys_e = act @ w2[e]^T (R_e, C)
**                w13 is (E, 2F, C): gate rows then up rows; w2 is (E, C, F)
**   unpermute:   out[n,:] = sum_k topk_w[n,k] * ys[slot_row[n*K+k],:]
**
** Backward passes accumulate (+=) into weight grads and dx; dxs, dys, dh13,
** dact are written (=). dtopk_w is written.
*/
#ifndef MOE_EXPERTS_H
#define MOE_EXPERTS_H

#include <stdint.h>

#include "layers/real.h"

typedef enum { MOE_DROP_PROBS = 0, MOE_DROP_POSITION = 1 } moe_drop_policy;

/* Returns R, the number of rows. Deterministic. Dropped pairs: slot_row -1.
** counts[e] is the number of real (kept, non-padding) rows of expert e, so
** N*K - sum(counts) pairs were dropped; offsets[e+1] - offsets[e] also counts
** padding. row_slot[r] is the flat n*K+k pair of row r, row_token[r] = its n.
** topk_w is read only for PROBS with capacity > 0 (may be NULL otherwise).
** Returns -1 (and leaves the outputs undefined) for an expert index outside
** [0, E), N < 0, K < 0, E <= 0, or a NULL topk_w that PROBS needs.
** No scratch memory: slot_row doubles as the sort buffer. */
int MOE_OP(route_plan)(int32_t *counts, int32_t *offsets, int32_t *slot_row, int32_t *row_token,
                       int32_t *row_slot, const int32_t *topk_idx, const real *topk_w, int N,
                       int E, int K, int capacity, moe_drop_policy policy, int pad);

void MOE_OP(permute_forward)(real *xs, const real *x, const int32_t *row_token, int R, int C);
void MOE_OP(permute_backward)(real *dx, const real *dxs, const int32_t *slot_row, int N, int K,
                              int C);

void MOE_OP(unpermute_forward)(real *out, const real *ys, const real *topk_w,
                               const int32_t *slot_row, int N, int K, int C);
void MOE_OP(unpermute_backward)(real *dys, real *dtopk_w, const real *dout, const real *ys,
                                const real *topk_w, const int32_t *slot_row, int N, int K, int C,
                                int R);

void MOE_OP(experts_forward)(real *ys, real *h13, real *act, const real *xs, const real *w13,
                             const real *w2, const int32_t *offsets, int E, int C, int F);
void MOE_OP(experts_backward)(real *dxs, real *dw13, real *dw2, real *dh13, real *dact,
                              const real *dys, const real *xs, const real *h13, const real *act,
                              const real *w13, const real *w2, const int32_t *offsets, int E,
                              int C, int F);

/*
** The same over nseg row segments [offsets[g], offsets[g+1]), segment g run
** by expert seg_expert[g] (NULL: expert g). An expert may own several
** segments (expert parallelism receives its rows as one segment per source
** rank); its weight gradients accumulate over them in segment order.
*/
void MOE_OP(experts_forward_segments)(real *ys, real *h13, real *act, const real *xs,
                                      const real *w13, const real *w2, const int32_t *offsets,
                                      const int32_t *seg_expert, int nseg, int C, int F);
void MOE_OP(experts_backward_segments)(real *dxs, real *dw13, real *dw2, real *dh13, real *dact,
                                       const real *dys, const real *xs, const real *h13,
                                       const real *act, const real *w13, const real *w2,
                                       const int32_t *offsets, const int32_t *seg_expert, int nseg,
                                       int C, int F);
/* backward_segments in two passes that may run apart: dgrad writes dact,
** dh13 and dxs of its segments; wgrad then accumulates dw2 and dw13 from dys,
** act, dh13 and xs. Running dgrad per segment group in any order and then
** wgrad over all segments gives backward_segments' bits. */
void MOE_OP(experts_dgrad_segments)(real *dxs, real *dh13, real *dact, const real *dys, const real *h13,
                                    const real *w13, const real *w2, const int32_t *offsets,
                                    const int32_t *seg_expert, int nseg, int C, int F);
void MOE_OP(experts_wgrad_segments)(real *dw13, real *dw2, const real *dys, const real *xs, const real *dh13,
                                    const real *act, const int32_t *offsets, const int32_t *seg_expert, int nseg,
                                    int C, int F);

#endif
