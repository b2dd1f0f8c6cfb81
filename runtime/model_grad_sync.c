/*
** model_grad_sync: data-parallel gradient sums, launched layer by layer while
** backward still runs. Non-expert tensors are summed over dp_cp, expert
** tensors over edp (their replicas: the ranks holding the same experts), and
** replicated tensors whose tp ranks saw different tokens (MOE_GRAD_TP_DP)
** over tp_dp_cp. Adjacent tensors of the same kind go as one all-reduce:
** the flat gradient buffer keeps a layer's tensors next to each other, so a
** layer costs a handful of messages. They are non-blocking, and
** overlap the rest of backward, only with overlap-grad-reduce and when the
** backward itself communicates (tp, cp, ep or etp > 1): Open MPI advances a
** non-blocking collective only inside MPI calls, and over TCP its
** non-blocking all-reduce moves bytes at about half the blocking one's rate
** (docs/performance.md). With nothing to advance them they would all run in
** the final wait at that rate, so they are blocking then, where they would
** have been launched. Gradients are summed, not averaged: the loss is
** already scaled by the global batch (see model.h).
** The copies of a replicated expert sum theirs once the step's backward is
** done (moe_model_sum_expert_copies).
*/
#include "runtime/model_internal.h"

static moe_comm *group_for(const moe_model *m, moe_grad_kind k)
{
    return k == MOE_GRAD_EXPERT ? m->par.edp : k == MOE_GRAD_TP_DP ? m->par.tp_dp_cp : m->par.dp_cp;
}

static int size_above_1(const moe_comm *c) { return c && moe_comm_size(c) > 1; }

static int overlap_sync(const moe_model *m)
{
    const moe_model_par *p = &m->par;
    return m->cfg.overlap_grad_reduce &&
           (size_above_1(p->tp) || size_above_1(p->cp) || size_above_1(p->ep) || size_above_1(p->etp));
}

moe_status moe_model_sync_tensors(moe_model *m, int first, int count)
{
    int i = first, end = first + count;
    while (i < end) {
        moe_grad_kind kind = m->table[i].grad;
        int j = i;
        /* run of same-kind tensors; the gaps between them are zero padding */
        while (j + 1 < end && m->table[j + 1].grad == kind)
            j++;
        moe_comm *c = group_for(m, kind);
        if (c) {
            if (m->nsync == MOE_MAX_SYNC_REQS)
                return moe_fail(MOE_ERR_INTERNAL, "too many gradient reductions in flight");
            size_t off = m->table[i].offset;
            size_t n = m->table[j].offset + m->table[j].numel - off;
            if (overlap_sync(m))
                MOE_TRY(moe_iallreduce(c, m->grads + off, n, MOE_DT_F32, MOE_OP_SUM, &m->sync_reqs[m->nsync++]));
            else
                MOE_TRY(moe_allreduce(c, m->grads + off, n, MOE_DT_F32, MOE_OP_SUM));
        }
        i = j + 1;
    }
    return MOE_OK;
}

void moe_model_set_grad_sync(moe_model *m, int on) { m->sync_on = on; }

moe_status moe_model_finish_grad_sync(moe_model *m)
{
    moe_status st = MOE_OK;
    for (int i = 0; i < m->nsync; i++) {
        moe_status s = moe_wait(&m->sync_reqs[i]);
        if (s != MOE_OK && st == MOE_OK)
            st = s;
    }
    m->nsync = 0;
    m->sync_on = 0;
    if (st != MOE_OK)
        moe_trace_frame(__FILE__, __LINE__);
    return st;
}

/* Expert by expert in id order on every rank, so the collectives of the
** groups that several experts share line up. */
moe_status moe_model_sum_expert_copies(moe_model *m)
{
    if (!m->par.ep)
        return MOE_OK;
    MOE_FOR_STAGE_LAYERS(m, l) {
        const moe_expert_map *map = m->moe_index[l] >= 0 ? &m->par.maps[m->moe_index[l]] : NULL;
        if (!map || !map->replicated)
            continue;
        for (int e = 0; e < map->E; e++) {
            int j = map->local_index[e];
            if (j < 0 || !map->copy_comm[j])
                continue;
            for (int i = m->layer_first[l]; i < m->layer_first[l] + m->layer_count[l]; i++) {
                const moe_param_info *p = &m->table[i];
                if (!p->is_expert)
                    continue;
                size_t per = p->numel / (size_t)p->shape[0];
                MOE_TRY(moe_allreduce(map->copy_comm[j], m->grads + p->offset + (size_t)j * per, per, MOE_DT_F32,
                                      MOE_OP_SUM));
            }
        }
    }
    return MOE_OK;
}

moe_status moe_model_reduce_load(moe_model *m, moe_comm *group)
{
    MOE_TRY(moe_allreduce(group, m->load_counts, (size_t)m->n_moe * m->E, MOE_DT_F64, MOE_OP_SUM));
    double d[2] = {m->load_dropped, m->load_pairs};
    MOE_TRY(moe_allreduce(group, d, 2, MOE_DT_F64, MOE_OP_SUM));
    m->load_dropped = d[0];
    m->load_pairs = d[1];
    return MOE_OK;
}

moe_status moe_model_reduce_tp_partials(moe_model *m)
{
    if (!m->par.tp)
        return MOE_OK;
    for (int i = 0; i < m->ntable; i++)
        if (m->table[i].grad == MOE_GRAD_TP_DP)
            MOE_TRY(moe_allreduce(m->par.tp, m->grads + m->table[i].offset, m->table[i].numel, MOE_DT_F32,
                                  MOE_OP_SUM));
    return MOE_OK;
}
