/*
** router: the MoE gate after its linear layer (logits[N,E] = x @ w_router^T).
**
** Scores: softmax over E (Mixtral, Switch) or elementwise sigmoid (DeepSeek-V3).
** Selection: the K largest of scores + bias (bias[E] is the aux-loss-free
** expert bias, NULL when off; it steers selection only and gets no gradient).
** Ties go to the lower expert index, so routing is deterministic.
** topk_idx[N,K] lists the chosen experts by descending selection value;
** topk_w[N,K] are their scores (not biased), divided by their sum when
** norm_topk (softmax + norm_topk equals softmax over the K chosen logits).
** Needs 1 <= K <= E. (Should every chosen score underflow to 0, the weights
** stay unnormalised zeros instead of becoming NaN; backward agrees.)
**
** Backward accumulates d(loss)/d(logits) from d(loss)/d(topk_w).
*/
#ifndef MOE_ROUTER_H
#define MOE_ROUTER_H

#include <stdint.h>

#include "layers/real.h"

typedef enum { MOE_SCORE_SOFTMAX = 0, MOE_SCORE_SIGMOID = 1 } moe_score_fn;

void MOE_OP(router_forward)(real *scores, int32_t *topk_idx, real *topk_w, const real *logits,
                            const real *bias, int N, int E, int K, moe_score_fn fn, int norm_topk);
void MOE_OP(router_backward)(real *dlogits, const real *dtopk_w, const real *scores,
                             const int32_t *topk_idx, int N, int E, int K, moe_score_fn fn,
                             int norm_topk);

/* counts[e] += number of (token, slot) pairs routed to e (before any drop). */
void MOE_OP(router_counts)(real *counts, const int32_t *topk_idx, int N, int E, int K);

/*
** Load-balancing loss, Switch/GShard form as Megatron-Core computes it:
**   aux = E / (K * ntok^2) * sum_e counts[e] * sum_n p[n,e]
** p = scores for softmax; for sigmoid, scores normalised over E per token.
** counts may be reduced over more tokens than the N local ones (ntok is their
** number), which is how parallel runs balance over a group. The gradient flows
** through p only; backward adds coeff * d(aux)/d(logits).
*/
double MOE_OP(router_aux_loss_forward)(const real *scores, const real *counts, int N, int E,
                                       int K, double ntok, moe_score_fn fn);
void MOE_OP(router_aux_loss_backward)(real *dlogits, const real *scores, const real *counts,
                                      int N, int E, int K, double ntok, moe_score_fn fn,
                                      real coeff);

/* Router z-loss (ST-MoE): z = (1/N) sum_n logsumexp(logits[n,:])^2.
** Backward adds coeff * dz/dlogits. */
double MOE_OP(router_z_loss_forward)(const real *logits, int N, int E);
void MOE_OP(router_z_loss_backward)(real *dlogits, const real *logits, int N, int E, real coeff);

/* Aux-loss-free balancing (DeepSeek-V3): bias[e] += rate * sign(mean(counts) - counts[e]). */
void MOE_OP(router_bias_update)(real *bias, const real *counts, int E, real rate);

#endif
