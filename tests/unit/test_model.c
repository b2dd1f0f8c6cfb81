/*
** The assembled model: parameter table, deterministic init and forward, the
** loss at initialisation, micro-batch accumulation equal to one large batch,
** experts that receive no tokens, capacity drops, and AdamW/LR schedule glue.
** Whole-model gradients are checked against PyTorch in test_oracle.
*/
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/model.h"
#include "runtime/optimizer.h"

static moe_config small_config(void)
{
    moe_config c;
    moe_config_defaults(&c);
    c.num_layers = 2;
    c.hidden_size = 32;
    c.num_attention_heads = 4;
    c.num_query_groups = 2;
    c.ffn_hidden_size = 48;
    c.seq_length = 16;
    c.vocab_size = 50;
    c.num_experts = 4;
    c.moe_router_topk = 2;
    c.moe_ffn_hidden_size = 24;
    c.micro_batch_size = 4;
    c.global_batch_size = 4;
    ck_assert_int_eq(moe_config_validate(&c), MOE_OK);
    return c;
}

static void random_tokens(int32_t *t, int n, int V, unsigned seed)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        t[i] = (int32_t)((seed >> 10) % (unsigned)V);
    }
}

static moe_model *build(const moe_config *c, int maxB)
{
    moe_model *m = NULL;
    moe_status st = moe_model_create(&m, c, maxB);
    ck_assert_msg(st == MOE_OK, "create: %s", moe_errmsg());
    ck_assert(moe_model_init(m, 42) == MOE_OK);
    return m;
}

START_TEST(table_is_complete_and_aligned)
{
    moe_config c = small_config();
    c.moe_shared_expert_intermediate_size = 16;
    snprintf(c.moe_layer_freq, sizeof c.moe_layer_freq, "[0,1]");
    c.untie_embeddings_and_output_weights = 1;
    ck_assert_int_eq(moe_config_validate(&c), MOE_OK);
    moe_model *m = build(&c, 1);
    int n;
    const moe_param_info *t = moe_model_params(m, &n);
    /* embedding, 2 x (4 attn/norm + dense 2 | moe 5), final norm, lm head */
    ck_assert_int_eq(n, 1 + (4 + 2) + (4 + 5) + 1 + 1);
    ck_assert_str_eq(t[0].name, "embedding.weight");
    ck_assert_str_eq(t[5].name, "layers.0.mlp.w13");
    ck_assert_str_eq(t[12].name, "layers.1.moe.experts.w13");
    ck_assert(t[12].is_expert && t[12].decay);
    ck_assert_int_eq(t[12].shape[0], 4);
    ck_assert_int_eq(t[12].shape[1], 48);
    ck_assert(!t[1].decay); /* norms are not decayed */
    ck_assert_str_eq(t[n - 1].name, "lm_head.weight");
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(t[i].offset % 16, 0);
        if (i + 1 < n)
            ck_assert(t[i].offset + t[i].numel <= t[i + 1].offset);
    }
    moe_model_free(m);
}
END_TEST

START_TEST(forward_is_deterministic_and_loss_starts_near_uniform)
{
    moe_config c = small_config();
    moe_model *a = build(&c, 4), *b = build(&c, 4);
    ck_assert(memcmp(moe_model_param_data(a), moe_model_param_data(b), moe_model_num_params(a) * 4) == 0);
    int32_t in[64], tg[64];
    random_tokens(in, 64, 50, 1);
    random_tokens(tg, 64, 50, 2);
    moe_fwd_stats sa, sb;
    ck_assert_int_eq(moe_model_forward(a, in, tg, 4, &sa), MOE_OK);
    ck_assert_int_eq(moe_model_forward(b, in, tg, 4, &sb), MOE_OK);
    ck_assert(sa.lm_loss_sum == sb.lm_loss_sum);
    double mean = sa.lm_loss_sum / sa.tokens;
    ck_assert_msg(fabs(mean - log(50.0)) < 0.1, "initial loss %g vs ln 50 = %g", mean, log(50.0));
    ck_assert(sa.aux_loss > 0 && sa.z_loss > 0);
    moe_model_free(a);
    moe_model_free(b);
}
END_TEST

/* Two micro-batches of 2 accumulate the same gradient as one batch of 4. */
START_TEST(micro_batches_accumulate_like_one_batch)
{
    moe_config c = small_config();
    c.moe_aux_loss_coeff = 0; /* aux is per micro-batch by definition; compare LM only */
    c.moe_z_loss_coeff = 0;
    moe_model *one = build(&c, 4), *two = build(&c, 2);
    int32_t in[64], tg[64];
    random_tokens(in, 64, 50, 3);
    random_tokens(tg, 64, 50, 4);
    moe_fwd_stats st;
    moe_model_zero_grad(one);
    ck_assert_int_eq(moe_model_forward(one, in, tg, 4, &st), MOE_OK);
    ck_assert_int_eq(moe_model_backward(one, 1.0f / 64, 1.0f), MOE_OK);
    moe_model_zero_grad(two);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(moe_model_forward(two, in + 32 * i, tg + 32 * i, 2, &st), MOE_OK);
        ck_assert_int_eq(moe_model_backward(two, 1.0f / 64, 0.5f), MOE_OK);
    }
    const float *g1 = moe_model_grad_data(one), *g2 = moe_model_grad_data(two);
    double num = 0, den = 0;
    for (size_t i = 0; i < moe_model_num_params(one); i++) {
        num += (double)(g1[i] - g2[i]) * (g1[i] - g2[i]);
        den += (double)g1[i] * g1[i];
    }
    ck_assert_msg(sqrt(num / den) < 1e-5, "relative gradient difference %g", sqrt(num / den));
    moe_model_free(one);
    moe_model_free(two);
}
END_TEST

/* An expert the router never picks gets zero rows; everything still works. */
START_TEST(expert_with_no_tokens)
{
    moe_config c = small_config();
    c.moe_router_enable_expert_bias = 1;
    ck_assert_int_eq(moe_config_validate(&c), MOE_OK);
    moe_model *m = build(&c, 4);
    size_t n;
    float *bias = moe_model_state_data(m, &n);
    ck_assert_int_eq(n, 2 * 4);
    bias[0] = bias[4] = -1e4f; /* expert 0 is never selected in either layer */
    int32_t in[64], tg[64];
    random_tokens(in, 64, 50, 5);
    random_tokens(tg, 64, 50, 6);
    moe_fwd_stats st;
    moe_model_zero_grad(m);
    ck_assert_int_eq(moe_model_forward(m, in, tg, 4, &st), MOE_OK);
    ck_assert_int_eq(moe_model_backward(m, 1.0f / 64, 1.0f), MOE_OK);
    int nt;
    const moe_param_info *t = moe_model_params(m, &nt);
    const float *g = moe_model_grad_data(m);
    for (int i = 0; i < nt; i++) {
        if (strcmp(t[i].name, "layers.0.moe.experts.w2") != 0)
            continue;
        size_t per = t[i].numel / 4;
        double e0 = 0, e1 = 0;
        for (size_t j = 0; j < per; j++) {
            e0 += fabs(g[t[i].offset + j]);
            e1 += fabs(g[t[i].offset + per + j]);
        }
        ck_assert(e0 == 0.0 && e1 > 0.0);
    }
    double imb, dropped;
    moe_model_take_load(m, &imb, &dropped);
    ck_assert(imb >= 4.0 / 3.0 - 1e-9); /* 3 of 4 experts carry everything */
    ck_assert(dropped == 0.0);
    moe_model_free(m);
}
END_TEST

START_TEST(capacity_drops_are_counted)
{
    moe_config c = small_config();
    c.moe_expert_capacity_factor = 0.5;
    ck_assert_int_eq(moe_config_validate(&c), MOE_OK);
    moe_model *m = build(&c, 4);
    int32_t in[64], tg[64];
    random_tokens(in, 64, 50, 7);
    random_tokens(tg, 64, 50, 8);
    moe_fwd_stats st;
    ck_assert_int_eq(moe_model_forward(m, in, tg, 4, &st), MOE_OK);
    ck_assert_int_eq(moe_model_backward(m, 1.0f / 64, 1.0f), MOE_OK);
    double imb, dropped;
    moe_model_take_load(m, &imb, &dropped);
    ck_assert_msg(dropped >= 0.5 - 1e-9, "capacity 0.5 keeps at most half: dropped %g", dropped);
    moe_model_free(m);
}
END_TEST

START_TEST(lr_schedule_warms_up_then_decays)
{
    moe_config c = small_config();
    c.lr = 1.0;
    c.min_lr = 0.1;
    c.lr_warmup_iters = 10;
    c.train_iters = 110;
    c.lr_decay_iters = 0;
    ck_assert_int_eq(moe_config_validate(&c), MOE_OK);
    ck_assert(fabs(moe_lr_at(&c, 0) - 0.1) < 1e-12);
    ck_assert(fabs(moe_lr_at(&c, 9) - 1.0) < 1e-12);
    ck_assert(fabs(moe_lr_at(&c, 60) - 0.55) < 1e-12); /* half-way down the cosine */
    ck_assert(fabs(moe_lr_at(&c, 110) - 0.1) < 1e-12);
    ck_assert(fabs(moe_lr_at(&c, 500) - 0.1) < 1e-12);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, table_is_complete_and_aligned);
    tcase_add_test(tc, forward_is_deterministic_and_loss_starts_near_uniform);
    tcase_add_test(tc, micro_batches_accumulate_like_one_batch);
    tcase_add_test(tc, expert_with_no_tokens);
    tcase_add_test(tc, capacity_drops_are_counted);
    tcase_add_test(tc, lr_schedule_warms_up_then_decays);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
