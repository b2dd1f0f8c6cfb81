/*
** test_oracle: the whole C model against the PyTorch reference.
**
** Each case builds a small model, runs one forward and backward on a random
** batch, writes weights, batch, losses and gradients to a dump
** (tests/oracle/README.md gives the format), and runs tests/oracle/check.py on
** it, which recomputes everything in float64 with torch and compares the
** objective, the three loss sums and every gradient tensor (relative 1e-5).
** Without torch the test exits 77, which ctest reports as skipped.
** MOE_ORACLE_KEEP=1 keeps the dumps of passing cases too (failing ones are
** always kept); the path is printed with each case's output.
*/
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/base/config.h"
#include "runtime/base/rng.h"
#include "runtime/model.h"
#include "testutil.h"

#define PYTHON "/usr/bin/python3"
#define CHECK_PY MOE_SRC_DIR "/tests/oracle/check.py"

typedef struct {
    const char *key, *value;
} kv;

/* JSON has no nan/inf; Python's json module reads these spellings. */
static void json_num(FILE *f, double v)
{
    if (isnan(v))
        fputs("NaN", f);
    else if (isinf(v))
        fputs(v > 0 ? "Infinity" : "-Infinity", f);
    else
        fprintf(f, "%.17g", v);
}

static void json_key_num(FILE *f, const char *key, double v)
{
    fprintf(f, "\"%s\":", key);
    json_num(f, v);
    fputc(',', f);
}

/* Everything check.py needs to rebuild the model, as one JSON object. */
static char *dump_header(const moe_model *m, int B, float lm_scale, float aux_scale,
                         const moe_fwd_stats *st, const float *bias, size_t nbias)
{
    const moe_config *c = moe_model_config(m);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    fputc('{', f);
    json_key_num(f, "num_layers", c->num_layers);
    json_key_num(f, "hidden_size", c->hidden_size);
    json_key_num(f, "ffn_hidden_size", c->ffn_hidden_size);
    json_key_num(f, "num_attention_heads", c->num_attention_heads);
    json_key_num(f, "num_query_groups", c->num_query_groups);
    json_key_num(f, "seq_length", c->seq_length);
    json_key_num(f, "vocab_size", c->vocab_size);
    json_key_num(f, "num_experts", c->num_experts);
    json_key_num(f, "moe_router_topk", c->moe_router_topk);
    json_key_num(f, "moe_ffn_hidden_size", c->moe_ffn_hidden_size);
    json_key_num(f, "moe_shared_expert_intermediate_size",
                 c->moe_shared_expert_intermediate_size);
    fputs("\"moe_layer_is_moe\":[", f);
    for (int l = 0; l < c->num_layers; l++)
        fprintf(f, "%s%d", l ? "," : "", c->moe_layer_is_moe[l]);
    fputs("],", f);
    fprintf(f, "\"score_function\":\"%s\",",
            c->moe_router_score_function == 1 ? "sigmoid" : "softmax");
    json_key_num(f, "norm_topk", c->moe_router_norm_topk);
    json_key_num(f, "aux_loss_coeff", c->moe_aux_loss_coeff);
    json_key_num(f, "z_loss_coeff", c->moe_z_loss_coeff);
    json_key_num(f, "untie", c->untie_embeddings_and_output_weights);
    json_key_num(f, "enable_expert_bias", c->moe_router_enable_expert_bias);
    json_key_num(f, "rotary_base", c->rotary_base);
    json_key_num(f, "norm_epsilon", c->norm_epsilon);
    json_key_num(f, "capacity_factor", c->moe_expert_capacity_factor);
    json_key_num(f, "B", B);
    json_key_num(f, "T", c->seq_length);
    json_key_num(f, "lm_scale", lm_scale);
    json_key_num(f, "aux_scale", aux_scale);
    json_key_num(f, "num_params", (double)moe_model_num_params(m));

    int n = 0;
    const moe_param_info *t = moe_model_params(m, &n);
    fputs("\"tensors\":[", f);
    for (int i = 0; i < n; i++) {
        fprintf(f, "%s{\"name\":\"%s\",\"shape\":[", i ? "," : "", t[i].name);
        for (int d = 0; d < t[i].ndim; d++)
            fprintf(f, "%s%lld", d ? "," : "", (long long)t[i].shape[d]);
        fprintf(f, "],\"offset\":%zu}", t[i].offset);
    }
    fputs("],", f);

    /* expert bias, one list per MoE layer (empty when the model keeps none) */
    int E = c->num_experts;
    fputs("\"expert_bias\":[", f);
    for (size_t r = 0; E > 0 && r * (size_t)E < nbias; r++) {
        fprintf(f, "%s[", r ? "," : "");
        for (int e = 0; e < E; e++) {
            if (e)
                fputc(',', f);
            json_num(f, bias[r * (size_t)E + (size_t)e]);
        }
        fputc(']', f);
    }
    fputs("],", f);

    double obj = (double)lm_scale * st->lm_loss_sum +
                 (double)aux_scale * (c->moe_aux_loss_coeff * st->aux_loss +
                                      c->moe_z_loss_coeff * st->z_loss);
    json_key_num(f, "c_objective", obj);
    json_key_num(f, "c_lm_loss_sum", st->lm_loss_sum);
    json_key_num(f, "c_aux_sum", st->aux_loss);
    fputs("\"c_z_sum\":", f);
    json_num(f, st->z_loss);
    fputc('}', f);
    ck_assert_int_eq(fclose(f), 0);
    return buf;
}

static void write_all(FILE *f, const void *p, size_t size, size_t n, const char *path)
{
    ck_assert_msg(fwrite(p, size, n, f) == n, "short write to %s", path);
}

static void write_dump(const char *path, const char *json, moe_model *m, const int32_t *inputs,
                       const int32_t *targets, int N)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot create %s", path);
    size_t L = strlen(json);
    uint8_t len_le[4] = {(uint8_t)L, (uint8_t)(L >> 8), (uint8_t)(L >> 16), (uint8_t)(L >> 24)};
    size_t np = moe_model_num_params(m);
    write_all(f, "MOEORCL1", 1, 8, path);
    write_all(f, len_le, 1, 4, path);
    write_all(f, json, 1, L, path);
    /* x86/arm64 are little-endian, which the format asks for */
    write_all(f, moe_model_param_data(m), sizeof(float), np, path);
    write_all(f, inputs, sizeof(int32_t), (size_t)N, path);
    write_all(f, targets, sizeof(int32_t), (size_t)N, path);
    write_all(f, moe_model_grad_data(m), sizeof(float), np, path);
    ck_assert_msg(fclose(f) == 0, "cannot close %s", path);
}

static void build_config(moe_config *cfg, const kv *keys)
{
    moe_config_defaults(cfg);
    for (const kv *k = keys; k->key; k++) {
        moe_status st = moe_config_set(cfg, k->key, k->value, "test_oracle");
        ck_assert_msg(st == MOE_OK, "config %s=%s: %s", k->key, k->value, moe_errmsg());
    }
    moe_status st = moe_config_validate(cfg);
    ck_assert_msg(st == MOE_OK, "validate: %s", moe_errmsg());
}

/* Makes router row b a copy of row a in every MoE layer, so every token that
** ranks a at the top-k boundary has an exact tie there: the lower index must
** win in C as in the reference (router.h). */
static void tie_router_rows(moe_model *m, int a, int b)
{
    int n = 0, tied = 0;
    const moe_param_info *t = moe_model_params(m, &n);
    float *p = moe_model_param_data(m);
    for (int i = 0; i < n; i++) {
        const char *suffix = strstr(t[i].name, ".moe.router.weight");
        if (!suffix || suffix[strlen(".moe.router.weight")] != '\0')
            continue;
        size_t C = (size_t)t[i].shape[1];
        memcpy(p + t[i].offset + (size_t)b * C, p + t[i].offset + (size_t)a * C,
               C * sizeof(float));
        tied++;
    }
    ck_assert_int_gt(tied, 0);
}

/*
** One comparison: model from `keys`, B sequences, seed; with bias_amp > 0 the
** expert bias gets a nonzero per-layer pattern of that amplitude; with
** tie_b > 0 router row tie_b copies row tie_b - 1.
*/
static void run_case(const char *tag, const kv *keys, int max_batch, int B, uint64_t seed,
                     float bias_amp, int tie_b)
{
    moe_config cfg;
    build_config(&cfg, keys);
    moe_model *m = NULL;
    ck_assert_msg(moe_model_create(&m, &cfg, max_batch) == MOE_OK, "create: %s", moe_errmsg());
    ck_assert(moe_model_init(m, seed) == MOE_OK);
    if (tie_b > 0)
        tie_router_rows(m, tie_b - 1, tie_b);

    size_t nbias = 0;
    float *bias = moe_model_state_data(m, &nbias);
    if (bias_amp > 0) {
        ck_assert_msg(nbias > 0, "%s: model keeps no expert bias", tag);
        for (size_t i = 0; i < nbias; i++)
            bias[i] = bias_amp * (float)((int)((i * 7 + 3) % 5) - 2) / 2.0f;
    }

    const int T = cfg.seq_length, N = B * T;
    int32_t *inputs = malloc((size_t)N * sizeof *inputs);
    int32_t *targets = malloc((size_t)N * sizeof *targets);
    ck_assert(inputs && targets);
    moe_rng rng;
    moe_rng_seed(&rng, seed ^ 0x9e3779b97f4a7c15ull);
    for (int i = 0; i < N; i++) {
        inputs[i] = (int32_t)moe_rng_below(&rng, (uint64_t)cfg.vocab_size);
        targets[i] = (int32_t)moe_rng_below(&rng, (uint64_t)cfg.vocab_size);
    }

    const float lm_scale = 1.0f / (float)N, aux_scale = 1.0f;
    moe_fwd_stats st;
    memset(&st, 0, sizeof st);
    moe_model_zero_grad(m);
    ck_assert_msg(moe_model_forward(m, inputs, targets, B, &st) == MOE_OK, "forward: %s",
                  moe_errmsg());
    ck_assert_msg(moe_model_backward(m, lm_scale, aux_scale) == MOE_OK, "backward: %s",
                  moe_errmsg());

    char dir[1024], path[1200], cmd[4096];
    tu_tmpdir(dir, sizeof dir, "oracle");
    snprintf(path, sizeof path, "%s/%s.bin", dir, tag);
    char *json = dump_header(m, B, lm_scale, aux_scale, &st, bias, nbias);
    write_dump(path, json, m, inputs, targets, N);
    free(json);

    static char out[1 << 16];
    snprintf(cmd, sizeof cmd, PYTHON " '" CHECK_PY "' '%s'", path);
    int rc = tu_run(cmd, out, sizeof out);
    printf("---- oracle case %s (%s) ----\n%s", tag, path, out);
    fflush(stdout);
    ck_assert_msg(rc == 0, "case %s: check.py exited %d (dump kept at %s)", tag, rc, path);
    const char *keep = getenv("MOE_ORACLE_KEEP");
    if (!keep || !*keep || !strcmp(keep, "0")) {
        unlink(path);
        rmdir(dir);
    }

    free(inputs);
    free(targets);
    moe_model_free(m);
}

/* Softmax, norm_topk, GQA, shared expert, dense first layer, untied, aux + z. */
START_TEST(test_softmax_gqa_shared)
{
    static const kv keys[] = {
        {"num-layers", "3"}, {"hidden-size", "32"}, {"ffn-hidden-size", "48"},
        {"num-attention-heads", "4"}, {"num-query-groups", "2"}, {"seq-length", "8"},
        {"vocab-size", "37"}, {"num-experts", "4"}, {"moe-router-topk", "2"},
        {"moe-ffn-hidden-size", "16"}, {"moe-shared-expert-intermediate-size", "24"},
        {"moe-layer-freq", "[0,1,1]"}, {"moe-router-score-function", "softmax"},
        {"moe-router-norm-topk", "true"}, {"moe-aux-loss-coeff", "0.3"},
        {"moe-z-loss-coeff", "0.05"}, {"untie-embeddings-and-output-weights", "true"},
        {"init-method-std", "0.1"}, {"micro-batch-size", "2"}, {"global-batch-size", "2"},
        {NULL, NULL}};
    run_case("softmax_gqa_shared", keys, 2, 2, 1234, 0.0f, 0);
}
END_TEST

/* Sigmoid scores steered by a nonzero expert bias, norm_topk, top-3, tied. */
START_TEST(test_sigmoid_bias_tied)
{
    static const kv keys[] = {
        {"num-layers", "2"}, {"hidden-size", "32"}, {"ffn-hidden-size", "48"},
        {"num-attention-heads", "2"}, {"num-query-groups", "2"}, {"seq-length", "8"},
        {"vocab-size", "37"}, {"num-experts", "6"}, {"moe-router-topk", "3"},
        {"moe-ffn-hidden-size", "16"}, {"moe-shared-expert-intermediate-size", "0"},
        {"moe-layer-freq", "1"}, {"moe-router-score-function", "sigmoid"},
        {"moe-router-norm-topk", "true"}, {"moe-router-enable-expert-bias", "true"},
        {"moe-aux-loss-coeff", "0.2"}, {"moe-z-loss-coeff", "0.02"},
        {"untie-embeddings-and-output-weights", "false"}, {"init-method-std", "0.1"},
        {"micro-batch-size", "2"}, {"global-batch-size", "2"}, {NULL, NULL}};
    run_case("sigmoid_bias_tied", keys, 2, 2, 99, 0.1f, 0);
}
END_TEST

/* Top-1 softmax without renormalisation, one kv head (MQA), a dense last
** layer, a batch smaller than the model was built for, and experts 1 and 2
** given the same router row: exact ties, which expert 1 must win. */
START_TEST(test_top1_mqa_partial_batch)
{
    static const kv keys[] = {
        {"num-layers", "2"}, {"hidden-size", "32"}, {"ffn-hidden-size", "40"},
        {"num-attention-heads", "4"}, {"num-query-groups", "1"}, {"seq-length", "8"},
        {"vocab-size", "37"}, {"num-experts", "4"}, {"moe-router-topk", "1"},
        {"moe-ffn-hidden-size", "16"}, {"moe-shared-expert-intermediate-size", "8"},
        {"moe-layer-freq", "[1,0]"}, {"moe-router-score-function", "softmax"},
        {"moe-router-norm-topk", "false"}, {"moe-aux-loss-coeff", "0.1"},
        {"moe-z-loss-coeff", "0.01"}, {"untie-embeddings-and-output-weights", "true"},
        {"init-method-std", "0.1"}, {"micro-batch-size", "4"}, {"global-batch-size", "4"},
        {NULL, NULL}};
    run_case("top1_mqa_partial_batch", keys, 4, 3, 7, 0.0f, 2);
}
END_TEST

static Suite *oracle_suite(void)
{
    Suite *s = suite_create("oracle");
    TCase *tc = tcase_create("model_vs_torch");
    /* each case starts a Python with torch: seconds, beyond Check's default 4 */
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_softmax_gqa_shared);
    tcase_add_test(tc, test_sigmoid_bias_tied);
    tcase_add_test(tc, test_top1_mqa_partial_batch);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    char out[4096];
    if (tu_run(PYTHON " -c 'import torch'", out, sizeof out) != 0) {
        printf("SKIP: torch not available to " PYTHON "\n%s", out);
        return 77;
    }
    SRunner *sr = srunner_create(oracle_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
