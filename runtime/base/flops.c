#include "runtime/base/flops.h"

/* Forward FLOPs of one token through one layer's FFN part. */
static double ffn_flops(const moe_config *c, int is_moe)
{
    double C = c->hidden_size;
    if (!is_moe)
        return 6.0 * C * c->ffn_hidden_size; /* w13: 2*C*2F, w2: 2*F*C */
    double f = 2.0 * C * c->num_experts;     /* router */
    f += c->moe_router_topk * 6.0 * C * c->moe_ffn_hidden_size;
    f += 6.0 * C * c->moe_shared_expert_intermediate_size;
    return f;
}

double moe_flops_per_token(const moe_config *c)
{
    double C = c->hidden_size, T = c->seq_length, V = c->vocab_size;
    double HD = (double)c->hidden_size / c->num_attention_heads;
    int nkv = c->num_query_groups ? c->num_query_groups : c->num_attention_heads;
    double fwd = 0.0;
    for (int l = 0; l < c->num_layers; l++) {
        fwd += 2.0 * C * (c->num_attention_heads + 2.0 * nkv) * HD; /* qkv */
        fwd += 2.0 * C * C;                                            /* out projection */
        fwd += 4.0 * T * C;                                            /* QK^T and AV */
        fwd += ffn_flops(c, c->moe_layer_is_moe[l]);
    }
    fwd += 2.0 * C * V; /* LM head */
    return 3.0 * fwd;
}

double moe_active_params(const moe_config *c)
{
    double C = c->hidden_size;
    double HD = (double)c->hidden_size / c->num_attention_heads;
    int nkv = c->num_query_groups ? c->num_query_groups : c->num_attention_heads;
    double p = 0.0;
    for (int l = 0; l < c->num_layers; l++) {
        p += C * (c->num_attention_heads + 2.0 * nkv) * HD + C * C + 2 * C;
        p += ffn_flops(c, c->moe_layer_is_moe[l]) / 2.0;
    }
    return p + C * c->vocab_size + C;
}
