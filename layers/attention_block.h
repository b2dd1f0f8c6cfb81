/*
** attention_block: causal GQA attention over blocks of keys with absolute
** positions (flash-attention-style online softmax), the inner op of context
** parallelism (ring attention). A rank holds queries for some positions and
** sees the keys/values of the sequence one block at a time (its own block and
** the blocks its peers send round the ring), in any order; merging every
** block and finishing gives exactly causal attention over the whole sequence.
**
** Layouts (all rows of width HD, one "slot" per head):
**   q   (B, Tq, QS, HD): query head h (0 <= h < NH) is slot h of each row of
**       QS slots. A packed qkv row of NH + 2*NKV heads passes QS = NH + 2*NKV.
**   kv  (B, Tk, KS, HD): key head g at slot k_off + g, value head g at slot
**       v_off + g (0 <= g < NKV). Packed qkv: KS = NH + 2*NKV, k_off = NH,
**       v_off = NH + NKV. A K/V block received from a peer: KS = 2*NKV,
**       k_off = 0, v_off = NKV.
**   pos_q[Tq], pos_k[Tk] (int32, shared by every batch row b): absolute
**       positions. Query i may attend key j iff pos_k[j] <= pos_q[i]. The
**       positions need not be sorted or contiguous; sorted ones (what a
**       context-parallel shard holds) let whole tiles be skipped.
**   Query head h reads kv head h / (NH/NKV); NH % NKV == 0. Scale 1/sqrt(HD).
**
** Online-softmax state, per (b, h, i), owned by the caller:
**   mx  (B, NH, Tq)     running max of the scaled scores seen so far
**   l   (B, NH, Tq)     running sum of exp(score - mx)
**   acc (B, Tq, NH, HD) running un-normalised output sum_j exp(s_j - mx) v_j
** attn_block_init resets it (acc 0, mx -INFINITY, l 0); attn_block_forward
** merges one key block, rescaling what was there by exp(old_mx - new_mx);
** attn_block_finish turns it into out (B, Tq, NH, HD) = acc / l and the
** log-sum-exp lse (B, NH, Tq) = mx + log(l) that backward needs. A row that
** saw no visible key at all (l == 0) finishes as out 0, lse -INFINITY.
** A (row, block) pair with no visible key leaves that row's state bitwise
** untouched and costs only the position comparisons (tiles of rows whose
** positions all precede the tile's keys are skipped without any arithmetic).
**
** Backward, per block, after attn_block_backward_prep computed
** D (B, NH, Tq) = sum_d dout * out from the finished out:
**   P = exp(s - lse) over this block's visible keys, dP = dout . v,
**   dS = P * (dP - D); dq += scale * dS k, dk += scale * dS^T q, dv += P^T dout.
** It ACCUMULATES (+=): dq into query slots [0, NH) of rows of dQS slots
** (B, Tq, dQS, HD); dK into slot dk_off + g and dV into slot dv_off + g of
** rows of dKS slots (B, Tk, dKS, HD). Summing over all blocks gives the full
** gradient. Rows with lse == -INFINITY contribute nothing.
**
** Threads: forward parallelises over (b, h) and backward over (b, kv head g)
** (the group's query heads run inside, in order), so every output element is
** written by one thread in a fixed order: results do not depend on the thread
** count; no atomics. The ops never allocate: per-thread scratch is at most
** two score tiles of ATTB_BQ x ATTB_BK reals on the stack (64 KiB in double,
** 32 KiB in float), whatever Tq, Tk and HD are. Output buffers must not alias
** the inputs (dq and dkv may be the same buffer when their slots differ).
*/
#ifndef MOE_ATTENTION_BLOCK_H
#define MOE_ATTENTION_BLOCK_H

#include <stdint.h>

#include "layers/real.h"

#define ATTB_BQ 64 /* query rows per tile */
#define ATTB_BK 64 /* keys per tile */

void MOE_OP(attn_block_init)(real *acc, real *mx, real *l, int B, int Tq, int NH, int HD);

void MOE_OP(attn_block_forward)(real *acc, real *mx, real *l, const real *q, int QS,
                                const real *kv, int KS, int k_off, int v_off,
                                const int32_t *pos_q, const int32_t *pos_k, int B, int Tq,
                                int Tk, int NH, int NKV, int HD);

void MOE_OP(attn_block_finish)(real *out, real *lse, const real *acc, const real *mx,
                               const real *l, int B, int Tq, int NH, int HD);

void MOE_OP(attn_block_backward_prep)(real *D, const real *out, const real *dout, int B, int Tq,
                                      int NH, int HD);

void MOE_OP(attn_block_backward)(real *dq, int dQS, real *dkv, int dKS, int dk_off, int dv_off,
                                 const real *dout, const real *lse, const real *D, const real *q,
                                 int QS, const real *kv, int KS, int k_off, int v_off,
                                 const int32_t *pos_q, const int32_t *pos_k, int B, int Tq,
                                 int Tk, int NH, int NKV, int HD);

#endif
