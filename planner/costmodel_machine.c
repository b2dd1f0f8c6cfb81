/*
** costmodel_machine: the cost model's machine, a rank's share of the
** profile: the GEMM roofline and the communication primitives (ring
** collectives, all-to-all, point to point) over a layout's groups.
*/
#include "planner/costmodel_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The contracts are in costmodel_internal.h. */
double moe_cost_eff_at(const machine *m, double flops)
{
    return m->table ? moe_hwprofile_gemm_efficiency(m->table, flops) : m->eff;
}

static double gemm_roofline(const machine *m, double M, double K, double N, double eff)
{
    if (M <= 0 || K <= 0 || N <= 0)
        return 0;
    double flops = 2.0 * M * K * N, bytes = (M * K + K * N + M * N) * m->w;
    return fmax(flops / (m->peak * eff), bytes / m->membw);
}

double moe_cost_gemm_time(const machine *m, double M, double K, double N)
{
    if ((M * K + K * N + M * N) * m->w <= m->own_cache)
        return moe_cost_gemm_time_cached(m, M, K, N);
    return gemm_roofline(m, M, K, N, moe_cost_eff_at(m, 2.0 * M * K * N));
}

double moe_cost_gemm_time_cached(const machine *m, double M, double K, double N)
{
    double flops = 2.0 * M * K * N;
    return gemm_roofline(m, M, K, N, m->table ? moe_hwprofile_gemm_efficiency_cached(m->table, flops) : m->eff);
}

int moe_cost_rank_threads(const moe_hwprofile *hw, int W)
{
    return hw->shared && hw->cores / W > 1 ? hw->cores / W : 1;
}

double moe_cost_rank_slice(const moe_hwprofile *hw, int W)
{
    if (!hw->shared)
        return 1;
    return fmin(1.0, (double)hw->cores / ((double)W * moe_cost_rank_threads(hw, W)));
}

double moe_cost_rank_share(const moe_hwprofile *hw, int W)
{
    if (!hw->shared)
        return 1;
    return (double)moe_cost_rank_threads(hw, W) / hw->threads * moe_cost_rank_slice(hw, W);
}

int moe_cost_resolve_precision(const moe_hwprofile *hw, const moe_cost_opts *o)
{
    if (o->precision != MOE_PREC_AUTO)
        return o->precision;
    return strcmp(hw->dtype, "bf16") == 0 ? MOE_PREC_BF16 : MOE_PREC_FP32;
}

void moe_cost_machine_init(machine *m, const moe_hwprofile *hw, const moe_cost_opts *o, int W, int prec)
{
    double share = moe_cost_rank_share(hw, W), le = o->link_efficiency > 0 ? o->link_efficiency : hw->link_efficiency;
    memset(m, 0, sizeof *m);
    m->peak = hw->gemm_tflops * 1e12 * share;
    m->eff = o->gemm_efficiency > 0 ? o->gemm_efficiency : hw->gemm_efficiency;
    m->table = o->gemm_efficiency > 0 || hw->eff.points < 2 ? NULL : hw;
    m->membw = hw->mem_bw_gbs * 1e9 * share;
    m->ewbw = hw->elementwise_gbs * 1e9 * share;
    m->smrate = hw->softmax_gelems * 1e9 * share;
    m->attrate = hw->attention_gelems * 1e9 * share;
    m->blockrate = hw->attention_block_gelems * 1e9 * share;
    m->optrate = hw->optimizer_gparams * 1e9 * share;
    m->kern = hw->kernel_overhead_us * 1e-6 / moe_cost_rank_slice(hw, W);
    m->intra_bw = hw->intra_gbs * 1e9 * le, m->inter_bw = hw->inter_gbs * 1e9 * le;
    m->intra_lat = hw->intra_lat_us * 1e-6, m->inter_lat = hw->inter_lat_us * 1e-6;
    m->inter_burst = hw->inter_burst_kb * 1e3;
    m->core_lat = hw->shared && W > hw->cores ? hw->oversub_lat_us * 1e-6 : 0;
    m->w = prec == MOE_PREC_BF16 ? 2 : 4;
    /* one thread keeps a kernel's outputs in its core's own cache for the
    ** next; several split each kernel's rows their own ways, and ranks
    ** outnumbering the cores take turns on a core at every wait (hwprofile.h) */
    m->own_cache = moe_cost_rank_threads(hw, W) == 1 && moe_cost_rank_slice(hw, W) == 1 ? hw->core_cache_kb * 1024 : 0;
}

double moe_cost_link_bw(const machine *m, const group_link *g) { return g->cross ? m->inter_bw : m->intra_bw; }
/* A message's latency: its link's, or at least the wait for its receiver's core. */
static double latency(const machine *m, int cross) { return fmax(cross ? m->inter_lat : m->intra_lat, m->core_lat); }

double moe_cost_link_lat(const machine *m, const group_link *g) { return latency(m, g->cross); }

double moe_cost_ring_time(const machine *m, const group_link *g, double steps, double bytes)
{
    if (g->n <= 1)
        return 0;
    return steps * moe_cost_link_lat(m, g) + bytes / moe_cost_link_bw(m, g);
}

double moe_cost_ag_time(const machine *m, const group_link *g, double full)
{
    return moe_cost_ring_time(m, g, g->n - 1, (g->n - 1.0) / g->n * full);
}

double moe_cost_ar_time(const machine *m, const group_link *g, double full)
{
    return moe_cost_ring_time(m, g, 2.0 * (g->n - 1), 2.0 * (g->n - 1.0) / g->n * full);
}

double moe_cost_a2a_time(const machine *m, const group_link *g, double held)
{
    if (g->n <= 1)
        return 0;
    double nl = g->local - 1.0, nr = (double)(g->n - g->local);
    return fmax(nl * latency(m, 0) + nl / g->n * held / m->intra_bw,
                nr * latency(m, 1) + nr / g->n * held / m->inter_bw);
}

double moe_cost_p2p_time(const machine *m, const group_link *g, double bytes)
{
    return g->n <= 1 ? 0 : moe_cost_link_lat(m, g) + bytes / moe_cost_link_bw(m, g);
}

moe_status moe_cost_group_links(const moe_layout *l, moe_group_kind k, int rpn, group_link *out)
{
    int ng, gs, *ranks;
    MOE_TRY(moe_layout_groups(l, k, &ng, &gs, &ranks));
    *out = (group_link){.n = gs, .cross = 0, .local = gs};
    for (int i = 0; i < ng; i++) {
        const int *g = ranks + (size_t)i * gs;
        for (int a = 0; a < gs; a++) {
            int same = 0;
            for (int b = 0; b < gs; b++)
                same += g[b] / rpn == g[a] / rpn;
            if (same < gs)
                out->cross = 1;
            if (same < out->local)
                out->local = same;
        }
    }
    free(ranks);
    return MOE_OK;
}
