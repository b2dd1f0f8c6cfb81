/*
** model_attn: the attention block of one layer, forward and backward,
**   x_mid = x_in + out(attention(rope(qkv(norm(x_in)))))
** with tensor parallelism (this rank's heads: qkv column-parallel, out
** row-parallel; sequence parallelism gathers the normed input and
** reduce-scatters the output) and context parallelism (ring attention: K/V
** blocks travel around the cp ring while the local block computes, merged by
** the online-softmax rescale; backward sends dK/dV around behind them).
*/
#include <string.h>

#include "layers/attention.h"
#include "layers/attention_block.h"
#include "layers/linear.h"
#include "layers/rmsnorm.h"
#include "layers/rope.h"
#include "runtime/model_internal.h"

static void zero(float *p, size_t n) { memset(p, 0, n * sizeof *p); }

/* ---- collectives over a model-parallel group ------------------------------ */

moe_status moe_mp_allgather(moe_comm *g, const float *in, float *out, size_t rows, size_t C)
{
    if (!g) {
        if (out != in)
            memcpy(out, in, rows * C * sizeof *out);
        return MOE_OK;
    }
    return moe_allgather(g, in, out, rows * C, MOE_DT_F32);
}

moe_status moe_mp_reduce_scatter(moe_comm *g, const float *in, float *out, size_t rows, size_t C)
{
    if (!g) {
        if (out != in)
            memcpy(out, in, rows * C * sizeof *out);
        return MOE_OK;
    }
    return moe_reduce_scatter(g, in, out, rows * C, MOE_DT_F32, MOE_OP_SUM);
}

moe_status moe_mp_allreduce(moe_comm *g, float *buf, size_t rows, size_t C)
{
    return g ? moe_allreduce(g, buf, rows * C, MOE_DT_F32, MOE_OP_SUM) : MOE_OK;
}

moe_status moe_tp_out(moe_model *m, const float *partial, float *out)
{
    if (m->sp)
        return moe_mp_reduce_scatter(m->par.tp, partial, out, (size_t)m->Nres, (size_t)m->C);
    if (out != partial)
        memcpy(out, partial, (size_t)m->Ncp * m->C * sizeof *out);
    return moe_mp_allreduce(m->par.tp, out, (size_t)m->Ncp, (size_t)m->C);
}

moe_status moe_tp_in(moe_model *m, const float *in, float *out)
{
    if (m->sp)
        return moe_mp_allgather(m->par.tp, in, out, (size_t)m->Nres, (size_t)m->C);
    if (out != in)
        memcpy(out, in, (size_t)m->Ncp * m->C * sizeof *out);
    return MOE_OK;
}

/* ---- ring attention (CP > 1) ---------------------------------------------- */

enum { TAG_KV = 101, TAG_DKV = 102 };

/* Positions of the tokens cp rank j holds: chunks j and 2CP-1-j. */
static void positions_of(const moe_model *m, int j, int32_t *pos)
{
    int chunk = m->T / (2 * m->CPn);
    for (int i = 0; i < m->Tl; i++)
        pos[i] = i < chunk ? j * chunk + i : (2 * m->CPn - 1 - j) * chunk + (i - chunk);
}

/* kv (B, Tl, 2 NKVl, HD) = the K and V heads of qkv (B, Tl, QS, HD). */
static void pack_kv(const moe_model *m, const float *qkv, float *kv)
{
    size_t rows = (size_t)m->B * m->Tl, hd = (size_t)m->HD, nk = (size_t)m->NKVl, QS = (size_t)(m->NHl + 2 * m->NKVl);
    for (size_t r = 0; r < rows; r++)
        memcpy(kv + r * 2 * nk * hd, qkv + (r * QS + (size_t)m->NHl) * hd, 2 * nk * hd * sizeof *kv);
}

/* Starts the exchange of buf (count floats) around the ring: send to the
** next rank, receive the previous rank's into next_buf. */
static moe_status ring_start(moe_model *m, const float *buf, float *next_buf, size_t count, int tag,
                             moe_request **rq)
{
    int next = (m->cp_rank + 1) % m->CPn, prev = (m->cp_rank + m->CPn - 1) % m->CPn;
    MOE_TRY(moe_irecv(m->par.cp, next_buf, count, MOE_DT_F32, prev, tag, &rq[0]));
    MOE_TRY(moe_isend(m->par.cp, buf, count, MOE_DT_F32, next, tag, &rq[1]));
    return MOE_OK;
}

static moe_status ring_wait(moe_request **rq)
{
    moe_status a = moe_wait(&rq[0]), b = moe_wait(&rq[1]);
    return a != MOE_OK ? a : b;
}

static moe_status ring_forward(moe_model *m, moe_layer_acts *s)
{
    int B = m->B, Tl = m->Tl, NH = m->NHl, NKV = m->NKVl, HD = m->HD, QS = NH + 2 * NKV;
    size_t kvn = (size_t)B * Tl * 2 * NKV * HD;
    int32_t pos_k[Tl];
    moe_attn_block_init(m->ring_acc, m->ring_mx, m->ring_l, B, Tl, NH, HD);
    pack_kv(m, s->qkv, m->kv[0]);
    for (int i = 0; i < m->CPn; i++) {
        float *cur = m->kv[i & 1], *nxt = m->kv[(i + 1) & 1];
        moe_request *rq[2];
        if (i + 1 < m->CPn)
            MOE_TRY(ring_start(m, cur, nxt, kvn, TAG_KV, rq));
        positions_of(m, (m->cp_rank - i + m->CPn) % m->CPn, pos_k);
        moe_attn_block_forward(m->ring_acc, m->ring_mx, m->ring_l, s->qkv, QS, cur, 2 * NKV, 0, NKV, m->pos, pos_k,
                               B, Tl, Tl, NH, NKV, HD);
        if (i + 1 < m->CPn)
            MOE_TRY(ring_wait(rq));
    }
    moe_attn_block_finish(s->attn_y, s->lse, m->ring_acc, m->ring_mx, m->ring_l, B, Tl, NH, HD);
    return MOE_OK;
}

/* dqkv_r (zeroed) gets d(qkv after RoPE) from dattn_y. The K/V blocks go
** around again; each carries the dK/dV accumulated so far, and after the
** last hop every block's gradient is back home. */
static moe_status ring_backward(moe_model *m, moe_layer_acts *s)
{
    int B = m->B, Tl = m->Tl, NH = m->NHl, NKV = m->NKVl, HD = m->HD, QS = NH + 2 * NKV;
    size_t kvn = (size_t)B * Tl * 2 * NKV * HD;
    int32_t pos_k[Tl];
    moe_attn_block_backward_prep(m->ring_D, s->attn_y, m->dattn_y, B, Tl, NH, HD);
    pack_kv(m, s->qkv, m->kv[0]);
    zero(m->dkv[0], kvn);
    for (int i = 0; i < m->CPn; i++) {
        float *cur = m->kv[i & 1], *nxt = m->kv[(i + 1) & 1];
        float *dcur = m->dkv[i & 1], *dnxt = m->dkv[(i + 1) & 1];
        moe_request *rq[2], *drq[2];
        if (i + 1 < m->CPn)
            MOE_TRY(ring_start(m, cur, nxt, kvn, TAG_KV, rq));
        positions_of(m, (m->cp_rank - i + m->CPn) % m->CPn, pos_k);
        moe_attn_block_backward(m->dqkv_r, QS, dcur, 2 * NKV, 0, NKV, m->dattn_y, s->lse, m->ring_D, s->qkv, QS,
                                cur, 2 * NKV, 0, NKV, m->pos, pos_k, B, Tl, Tl, NH, NKV, HD);
        MOE_TRY(ring_start(m, dcur, dnxt, kvn, TAG_DKV, drq));
        if (i + 1 < m->CPn)
            MOE_TRY(ring_wait(rq));
        MOE_TRY(ring_wait(drq));
    }
    /* this rank's own block's dK/dV arrived with the last hop */
    const float *dkv = m->dkv[m->CPn & 1];
    size_t rows = (size_t)B * Tl, hd = (size_t)HD;
    for (size_t r = 0; r < rows; r++) {
        float *d = m->dqkv_r + (r * QS + (size_t)NH) * hd;
        const float *g = dkv + r * 2 * NKV * hd;
        for (size_t j = 0; j < 2 * (size_t)NKV * hd; j++)
            d[j] += g[j];
    }
    return MOE_OK;
}

/* ---- the block ------------------------------------------------------------ */

moe_status moe_attn_forward(moe_model *m, int l)
{
    moe_layer_acts *s = &m->acts[l];
    const moe_layer_ptrs *p = &m->lp[l];
    int Ncp = m->Ncp, C = m->C, Ya = m->NHl * m->HD;
    float *h1_loc = m->sp ? m->gbuf : s->h1;
    moe_rmsnorm_forward(h1_loc, s->rstd1, s->x_in, p->attn_norm, m->Nres, C, (float)m->cfg.norm_epsilon);
    if (m->sp)
        MOE_TRY(moe_mp_allgather(m->par.tp, h1_loc, s->h1, (size_t)m->Nres, (size_t)C));
    moe_linear_forward(m->dqkv, s->h1, p->qkv, Ncp, C, m->QKVl); /* dqkv: pre-RoPE scratch */
    moe_rope_forward(s->qkv, m->dqkv, m->rope_cos, m->rope_sin, m->B, m->Tl, m->NHl, m->NKVl, m->HD);
    if (m->CPn > 1)
        MOE_TRY(ring_forward(m, s));
    else
        moe_attention_forward(s->attn_y, s->att, s->qkv, m->B, m->Tl, m->NHl, m->NKVl, m->HD);
    moe_linear_forward(m->tmp_nc, s->attn_y, p->attn_out, Ncp, Ya, C);
    MOE_TRY(moe_tp_out(m, m->tmp_nc, m->ffn_out));
    size_t n = (size_t)m->Nres * C;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        s->x_mid[i] = s->x_in[i] + m->ffn_out[i];
    return MOE_OK;
}

moe_status moe_attn_backward(moe_model *m, int l)
{
    moe_layer_acts *s = &m->acts[l];
    const moe_layer_ptrs *p = &m->lp[l];
    moe_layer_ptrs *g = &m->lg[l];
    int Ncp = m->Ncp, C = m->C, Ya = m->NHl * m->HD;
    const float *dy = m->dres;
    if (m->sp) {
        MOE_TRY(moe_mp_allgather(m->par.tp, m->dres, m->gbuf, (size_t)m->Nres, (size_t)C));
        dy = m->gbuf;
    }
    zero(m->dattn_y, (size_t)Ncp * Ya);
    moe_linear_backward(m->dattn_y, g->attn_out, dy, s->attn_y, p->attn_out, Ncp, Ya, C);
    zero(m->dqkv_r, (size_t)Ncp * m->QKVl);
    if (m->CPn > 1)
        MOE_TRY(ring_backward(m, s));
    else
        moe_attention_backward(m->dqkv_r, m->att_scratch, m->dattn_y, s->att, s->qkv, m->B, m->Tl, m->NHl,
                               m->NKVl, m->HD);
    zero(m->dqkv, (size_t)Ncp * m->QKVl);
    moe_rope_backward(m->dqkv, m->dqkv_r, m->rope_cos, m->rope_sin, m->B, m->Tl, m->NHl, m->NKVl, m->HD);
    zero(m->dh, (size_t)Ncp * C);
    moe_linear_backward(m->dh, g->qkv, m->dqkv, s->h1, p->qkv, Ncp, C, m->QKVl);
    /* the column-parallel input's gradient is partial over tp */
    float *dh_loc = m->sp ? m->tmp_nc : m->dh;
    MOE_TRY(moe_tp_out(m, m->dh, dh_loc));
    moe_rmsnorm_backward(m->dres, g->attn_norm, dh_loc, s->x_in, p->attn_norm, s->rstd1, m->Nres, C);
    return MOE_OK;
}
