/*
** costmodel_layer: one MoE layer's forward, Comet / flux style, for `moe
** bench layer` and the reproduction of Comet's settings (contract in
** costmodel.h, moe_costmodel_moe_layer_fwd).
*/
#include "planner/costmodel.h"
#include "planner/costmodel_internal.h"

#include <math.h>
#include <string.h>

moe_status moe_costmodel_moe_layer_fwd(const moe_cost_layer_shape *s, const moe_hwprofile *hw,
                                       const moe_cost_opts *o, moe_cost_layer_report *out)
{
    MOE_TRY(moe_cost_check_opts(o));
    if (s->tokens <= 0 || s->hidden < 1 || s->ffn < 1 || s->experts < 1 || s->topk < 1 || s->tp < 1 || s->ep < 1 ||
        s->splits < 1 || s->experts % s->ep || s->ffn % s->tp || s->topk > s->experts)
        return moe_fail(MOE_ERR_USAGE,
                        "MoE layer shape: tokens %g, hidden %d, ffn %d, experts %d, top-k %d, tp %d, ep %d, splits %d "
                        "(need positive sizes, ep | experts, tp | ffn, top-k <= experts)",
                        s->tokens, s->hidden, s->ffn, s->experts, s->topk, s->tp, s->ep, s->splits);
    if (!s->allgather && s->tp > 1)
        return moe_fail(MOE_ERR_USAGE, "MoE layer shape: the all-to-all form is modelled for tp 1 only (got %d)",
                        s->tp);
    int W = s->tp * s->ep;
    int prec = o->precision == MOE_PREC_AUTO ? (strcmp(hw->dtype, "bf16") == 0 ? MOE_PREC_BF16 : MOE_PREC_FP32)
                                             : o->precision;
    double le = o->link_efficiency > 0 ? o->link_efficiency : hw->link_efficiency;
    machine m = {
        .peak = hw->gemm_tflops * 1e12 * moe_cost_rank_share(hw, W),
        .eff = o->gemm_efficiency > 0 ? o->gemm_efficiency : hw->gemm_efficiency,
        .table = o->gemm_efficiency > 0 || hw->eff.points < 2 ? NULL : hw,
        .membw = hw->mem_bw_gbs * 1e9 * moe_cost_rank_share(hw, W),
        .ewbw = hw->elementwise_gbs * 1e9 * moe_cost_rank_share(hw, W),
        .smrate = hw->softmax_gelems * 1e9 * moe_cost_rank_share(hw, W),
        .kern = hw->kernel_overhead_us * 1e-6 / moe_cost_rank_slice(hw, W),
        .intra_bw = hw->intra_gbs * 1e9 * le,
        .inter_bw = hw->inter_gbs * 1e9 * le,
        .intra_lat = hw->intra_lat_us * 1e-6,
        .inter_lat = hw->inter_lat_us * 1e-6,
        .w = prec == MOE_PREC_BF16 ? 2 : 4,
    };
    if (hw->shared && W > hw->cores) { /* a message waits for its receiver to get a core */
        m.intra_lat = fmax(m.intra_lat, hw->oversub_lat_us * 1e-6);
        m.inter_lat = fmax(m.inter_lat, hw->oversub_lat_us * 1e-6);
    }
    int rpn = o->ranks_per_node > 0 ? o->ranks_per_node : hw->ranks_per_node;
    group_link g = {.n = W, .cross = W > rpn, .local = W < rpn ? W : rpn};
    double El = (double)s->experts / s->ep, rows = s->tokens * s->topk / s->ep / El; /* per local expert */
    double Fl = (double)s->ffn / s->tp, H = s->hidden;
    out->gemm0_s = m.kern + El * moe_cost_gemm_time(&m, rows, H, (s->gated ? 2 : 1) * Fl); /* one grouped GEMM */
    out->gemm1_s = m.kern + El * moe_cost_gemm_time(&m, rows, Fl, H);
    if (s->allgather) {
        out->comm0_s = moe_cost_ag_time(&m, &g, s->tokens * H * m.w);       /* every rank gets every token */
        out->comm1_s = moe_cost_ag_time(&m, &g, s->tokens / s->ep * H * m.w); /* partial sums reduce-scattered home */
    } else {
        double held = s->tokens / W * s->topk * H * m.w;
        out->comm0_s = moe_cost_a2a_time(&m, &g, held);
        out->comm1_s = moe_cost_a2a_time(&m, &g, held);
    }
    double lat = moe_cost_link_lat(&m, &g);
    out->layer0_seq_s = out->comm0_s + out->gemm0_s;
    out->layer1_seq_s = out->comm1_s + out->gemm1_s;
    out->layer0_ov_s = fmax(out->comm0_s, out->gemm0_s) + fmin(out->comm0_s, out->gemm0_s) / W + W * lat;
    out->layer1_ov_s =
        fmax(out->comm1_s, out->gemm1_s) + fmin(out->comm1_s, out->gemm1_s) / s->splits + s->splits * lat;
    return MOE_OK;
}
