/*
** costmodel_layer: one MoE layer's forward, Comet / flux style, for `moe
** bench layer` and the reproduction of Comet's settings (contract in
** costmodel.h, moe_costmodel_moe_layer_fwd).
*/
#include "planner/costmodel.h"
#include "planner/costmodel_internal.h"

#include <math.h>

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
    machine m;
    moe_cost_machine_init(&m, hw, o, W, moe_cost_resolve_precision(hw, o));
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
