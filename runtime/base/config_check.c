/*
** config_check.c: moe_config_validate. The per-key ranges once more (a config
** may have been filled in by code, not text), then the relations between keys
** (model shapes, parallel sizes against nproc, batch sizes, the LR schedule),
** resolving the derived fields on the way. See config.h for the contract.
*/
#include "runtime/base/config.h"

#include <math.h>
#include <string.h>

#include "runtime/base/config_internal.h"

#define REQUIRE(cond, ...)                                  \
    do {                                                    \
        if (!(cond))                                        \
            return moe_fail(MOE_ERR_USAGE, __VA_ARGS__);    \
    } while (0)

/* The per-key checks again, for configs filled in by code rather than text. */
static moe_status check_fields(const moe_config *c)
{
    for (int i = 0; i < moe_cfg_nkeys; i++) {
        const moe_cfg_key *k = &moe_cfg_keys[i];
        char rng[96];
        const void *p = moe_cfg_cfield(c, k);
        switch (k->type) {
        case T_INT:
            moe_cfg_range_text(k, rng, sizeof rng);
            REQUIRE(moe_cfg_in_range(k, *(const int *)p), "%s: %d is out of range (%s)", k->name, *(const int *)p, rng);
            break;
        case T_DOUBLE:
            moe_cfg_range_text(k, rng, sizeof rng);
            REQUIRE(isfinite(*(const double *)p) && moe_cfg_in_range(k, *(const double *)p),
                    "%s: %g is out of range (%s)", k->name, *(const double *)p, rng);
            break;
        case T_BOOL:
            REQUIRE(*(const int *)p == 0 || *(const int *)p == 1, "%s: %d is not a boolean (0 or 1)", k->name,
                    *(const int *)p);
            break;
        case T_ENUM: {
            int n = 0;
            while (k->choices[n])
                n++;
            REQUIRE(*(const int *)p >= 0 && *(const int *)p < n, "%s: %d is not a valid choice", k->name,
                    *(const int *)p);
            break;
        }
        case T_STRING:
        case T_LAYER_FREQ:
            REQUIRE(memchr(p, '\0', k->size) != NULL, "%s: value is not NUL-terminated", k->name);
            break;
        case T_U64:
            break;
        }
    }
    return MOE_OK;
}

static moe_status resolve_layer_freq(moe_config *c)
{
    long every;
    int pattern[MOE_MAX_LAYERS], len;
    const char *err = NULL;
    if (!moe_cfg_lf_parse(c->moe_layer_freq, &every, pattern, &len, &err))
        return moe_fail(MOE_ERR_USAGE, "moe-layer-freq: \"%s\" is not a layer pattern: %s", c->moe_layer_freq, err);
    if (every == 0)
        REQUIRE(len == c->num_layers, "moe-layer-freq lists %d layers but num-layers is %d (%s)", len,
                c->num_layers, c->moe_layer_freq);
    memset(c->moe_layer_is_moe, 0, sizeof c->moe_layer_is_moe);
    for (int l = 0; l < c->num_layers; l++)
        c->moe_layer_is_moe[l] = every ? (l % every == 0) : pattern[l];
    return MOE_OK;
}

static moe_status check_model(moe_config *c)
{
    int H = c->hidden_size, NH = c->num_attention_heads;
    REQUIRE(H % NH == 0, "num-attention-heads (%d) must divide hidden-size (%d)", NH, H);
    if (c->num_query_groups == 0)
        c->num_query_groups = NH;
    REQUIRE(NH % c->num_query_groups == 0, "num-query-groups (%d) must divide num-attention-heads (%d)",
            c->num_query_groups, NH);
    REQUIRE((H / NH) % 2 == 0, "hidden-size / num-attention-heads (%d / %d = %d) must be even for rotary embeddings",
            H, NH, H / NH);
    REQUIRE(c->moe_router_topk <= c->num_experts, "moe-router-topk (%d) must be <= num-experts (%d)",
            c->moe_router_topk, c->num_experts);
    REQUIRE(!c->moe_pad_expert_input_to_capacity || c->moe_expert_capacity_factor > 0,
            "moe-pad-expert-input-to-capacity needs moe-expert-capacity-factor > 0 (it is %g, dropless)",
            c->moe_expert_capacity_factor);
    MOE_TRY(resolve_layer_freq(c));
    return MOE_OK;
}

static moe_status check_parallel(const moe_config *c)
{
    long long tp = c->tensor_model_parallel_size, pp = c->pipeline_model_parallel_size;
    long long cp = c->context_parallel_size, ep = c->expert_model_parallel_size;
    long long etp = c->expert_tensor_parallel_size, n = c->nproc;

    long long mp = tp * cp * pp;
    REQUIRE(n % mp == 0,
            "nproc (%lld) must be a multiple of tensor-model-parallel-size x context-parallel-size x "
            "pipeline-model-parallel-size (%lld x %lld x %lld = %lld)",
            n, tp, cp, pp, mp);
    long long emp = etp * ep * pp;
    REQUIRE(n % emp == 0,
            "nproc (%lld) must be a multiple of expert-tensor-parallel-size x expert-model-parallel-size x "
            "pipeline-model-parallel-size (%lld x %lld x %lld = %lld)",
            n, etp, ep, pp, emp);
    REQUIRE(c->num_experts % ep == 0, "expert-model-parallel-size (%lld) must divide num-experts (%d)", ep,
            c->num_experts);
    REQUIRE(c->num_attention_heads % tp == 0,
            "tensor-model-parallel-size (%lld) must divide num-attention-heads (%d)", tp, c->num_attention_heads);
    REQUIRE(c->num_query_groups % tp == 0, "tensor-model-parallel-size (%lld) must divide num-query-groups (%d)",
            tp, c->num_query_groups);
    REQUIRE(c->ffn_hidden_size % tp == 0, "tensor-model-parallel-size (%lld) must divide ffn-hidden-size (%d)", tp,
            c->ffn_hidden_size);
    REQUIRE(c->moe_shared_expert_intermediate_size % tp == 0,
            "tensor-model-parallel-size (%lld) must divide moe-shared-expert-intermediate-size (%d)", tp,
            c->moe_shared_expert_intermediate_size);
    REQUIRE(c->moe_ffn_hidden_size % etp == 0,
            "expert-tensor-parallel-size (%lld) must divide moe-ffn-hidden-size (%d)", etp, c->moe_ffn_hidden_size);
    long long first = c->decoder_first_pipeline_num_layers, last = c->decoder_last_pipeline_num_layers;
    if (first || last) {
        long long mid = pp - (first > 0) - (last > 0), rest = c->num_layers - first - last;
        REQUIRE(pp > 1, "decoder-first/last-pipeline-num-layers (%lld, %lld) need pipeline-model-parallel-size > 1",
                first, last);
        REQUIRE(rest >= mid && (mid == 0 ? rest == 0 : rest % mid == 0),
                "num-layers (%d) minus decoder-first/last-pipeline-num-layers (%lld, %lld) must split evenly over "
                "the other %lld stages, at least one layer each", c->num_layers, first, last, mid);
        REQUIRE(c->num_layers_per_virtual_pipeline_stage == 0,
                "decoder-first/last-pipeline-num-layers and num-layers-per-virtual-pipeline-stage cannot be combined");
    } else {
        REQUIRE(c->num_layers % pp == 0, "pipeline-model-parallel-size (%lld) must divide num-layers (%d)", pp,
                c->num_layers);
    }
    long long vl = c->num_layers_per_virtual_pipeline_stage;
    if (vl > 0) {
        REQUIRE(pp > 1, "num-layers-per-virtual-pipeline-stage (%lld) needs pipeline-model-parallel-size > 1", vl);
        REQUIRE(c->num_layers % (pp * vl) == 0 && c->num_layers / (pp * vl) <= 16,
                "num-layers (%d) must be divisible by pipeline-model-parallel-size x "
                "num-layers-per-virtual-pipeline-stage (%lld x %lld), with at most 16 virtual stages per rank",
                c->num_layers, pp, vl);
    }
    REQUIRE(cp == 1 || c->seq_length % (2 * cp) == 0,
            "seq-length (%d) must be a multiple of 2 x context-parallel-size (%lld) for load-balanced "
            "context parallelism",
            c->seq_length, 2 * cp);
    REQUIRE(!c->sequence_parallel || c->seq_length % (tp * cp) == 0,
            "with sequence-parallel, seq-length (%d) must be a multiple of tensor-model-parallel-size x "
            "context-parallel-size (%lld)",
            c->seq_length, tp * cp);

    long long dp = n / mp, per_step = (long long)c->micro_batch_size * dp;
    REQUIRE(c->global_batch_size % per_step == 0,
            "global-batch-size (%d) must be a multiple of micro-batch-size x data-parallel size "
            "(%d x %lld = %lld; data-parallel size = nproc / (tp x cp x pp))",
            c->global_batch_size, c->micro_batch_size, dp, per_step);
    return MOE_OK;
}

static moe_status check_training(moe_config *c)
{
    REQUIRE(c->min_lr <= c->lr, "min-lr (%g) must be <= lr (%g)", c->min_lr, c->lr);
    if (c->lr_decay_iters == 0)
        c->lr_decay_iters = c->train_iters;
    REQUIRE(c->eval_interval == 0 || c->eval_iters >= 1,
            "eval-iters (%d) must be >= 1 when eval-interval (%d) is set", c->eval_iters, c->eval_interval);
    return MOE_OK;
}

moe_status moe_config_validate(moe_config *c)
{
    MOE_TRY(check_fields(c));
    MOE_TRY(check_model(c));
    MOE_TRY(check_parallel(c));
    MOE_TRY(check_training(c));
    return MOE_OK;
}


moe_status moe_config_check_build(const moe_config *c)
{
    if (c->recompute_granularity != 0)
        return moe_fail(MOE_ERR_USAGE, "recompute-granularity other than none is not supported by this build");
    return MOE_OK;
}

void moe_pipeline_stage_layers(const moe_config *c, int s, int P, int *first, int *count)
{
    int f = c->decoder_first_pipeline_num_layers, l = c->decoder_last_pipeline_num_layers;
    if (P <= 1) {
        *first = 0;
        *count = c->num_layers;
        return;
    }
    if (!f && !l) {
        *count = c->num_layers / P;
        *first = s * *count;
        return;
    }
    int mid = P - (f > 0) - (l > 0), per = mid ? (c->num_layers - f - l) / mid : 0;
    int at = 0;
    for (int k = 0; k < P; k++) {
        int n = k == 0 && f ? f : k == P - 1 && l ? l : per;
        if (k == s) {
            *first = at;
            *count = n;
            return;
        }
        at += n;
    }
}
