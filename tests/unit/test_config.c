/*
** test_config: defaults, YAML + flags, round trips, and that every kind of
** bad input is refused as MOE_ERR_USAGE with a message naming the key.
*/
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/config.h"
#include "testutil.h"

static char tmpdir[512];

static const char *tmpfile_with(const char *name, const char *text)
{
    static char path[4][1024];
    static int i;
    i = (i + 1) % 4;
    snprintf(path[i], sizeof path[i], "%s/%s", tmpdir, name);
    tu_write(path[i], text);
    return path[i];
}

/* Every field, so a round trip that loses one fails. */
#define INT_FIELDS(X)                                                                                      \
    X(num_layers) X(hidden_size) X(ffn_hidden_size) X(num_attention_heads) X(num_query_groups)            \
    X(seq_length) X(vocab_size) X(num_experts) X(moe_router_topk) X(moe_ffn_hidden_size)                  \
    X(moe_shared_expert_intermediate_size) X(moe_router_score_function) X(moe_router_norm_topk)           \
    X(moe_router_enable_expert_bias) X(moe_token_drop_policy) X(moe_pad_expert_input_to_capacity)         \
    X(untie_embeddings_and_output_weights) X(micro_batch_size) X(global_batch_size) X(lr_warmup_iters)     \
    X(lr_decay_iters) X(train_iters) X(eval_interval) X(eval_iters) X(save_interval) X(keep_checkpoints)   \
    X(log_interval) X(recompute_granularity) X(tensor_model_parallel_size)                                \
    X(pipeline_model_parallel_size) X(context_parallel_size) X(expert_model_parallel_size)                \
    X(expert_tensor_parallel_size) X(sequence_parallel) X(use_distributed_optimizer) X(moe_overlap)       \
    X(nproc) X(num_threads)
#define DBL_FIELDS(X)                                                                                      \
    X(moe_aux_loss_coeff) X(moe_z_loss_coeff) X(moe_router_bias_update_rate) X(moe_expert_capacity_factor) \
    X(rotary_base) X(norm_epsilon) X(init_method_std) X(lr) X(min_lr) X(weight_decay) X(adam_beta1)        \
    X(adam_beta2) X(adam_eps) X(clip_grad)
#define STR_FIELDS(X) X(moe_layer_freq) X(data_path) X(save) X(load) X(run_dir) X(expert_placement)

static void assert_same(const moe_config *a, const moe_config *b)
{
#define CMP_INT(f) ck_assert_msg(a->f == b->f, #f ": %d != %d", a->f, b->f);
#define CMP_DBL(f) ck_assert_msg(memcmp(&a->f, &b->f, sizeof a->f) == 0, #f ": %.17g != %.17g", a->f, b->f);
#define CMP_STR(f) ck_assert_str_eq(a->f, b->f);
    INT_FIELDS(CMP_INT)
    DBL_FIELDS(CMP_DBL)
    STR_FIELDS(CMP_STR)
    ck_assert(a->seed == b->seed);
    ck_assert(memcmp(a->moe_layer_is_moe, b->moe_layer_is_moe, sizeof a->moe_layer_is_moe) == 0);
}

/* Asserts st is a usage error whose message contains every given piece. */
static void expect_usage(moe_status st, const char *piece1, const char *piece2)
{
    ck_assert_msg(st == MOE_ERR_USAGE, "expected a usage error, got %s (%s)", moe_status_name(st), moe_errmsg());
    ck_assert_msg(strstr(moe_errmsg(), piece1), "message \"%s\" lacks \"%s\"", moe_errmsg(), piece1);
    if (piece2)
        ck_assert_msg(strstr(moe_errmsg(), piece2), "message \"%s\" lacks \"%s\"", moe_errmsg(), piece2);
    moe_error_clear();
}

static moe_status set(moe_config *c, const char *k, const char *v) { return moe_config_set(c, k, v, "test"); }

static moe_status args(moe_config *c, int argc, const char **argv)
{
    return moe_config_parse_args(c, argc, (char **)argv, 0);
}

static moe_status validate_with(const char *k, const char *v)
{
    moe_config c;
    moe_config_defaults(&c);
    ck_assert_int_eq(set(&c, k, v), MOE_OK);
    return moe_config_validate(&c);
}

static void setup(void)
{
    moe_error_clear();
    tu_tmpdir(tmpdir, sizeof tmpdir, "config");
}

START_TEST(test_defaults)
{
    moe_config c;
    moe_config_defaults(&c);
    ck_assert_str_eq(moe_errmsg(), "");
    ck_assert_int_eq(c.num_layers, 2);
    ck_assert_int_eq(c.hidden_size, 64);
    ck_assert_int_eq(c.moe_router_topk, 2);
    ck_assert(c.lr == 3e-3 && c.min_lr == 3e-4 && c.norm_epsilon == 1e-5 && c.adam_eps == 1e-8);
    ck_assert(c.seed == 1234);
    ck_assert_int_eq(c.moe_router_norm_topk, 1);
    ck_assert_str_eq(c.data_path, "data/kjv");
    ck_assert_str_eq(c.run_dir, "runs/latest");
    ck_assert_str_eq(c.moe_layer_freq, "1");
    ck_assert_int_eq(moe_config_validate(&c), MOE_OK);
    ck_assert_int_eq(c.num_query_groups, 2);
    ck_assert_int_eq(c.lr_decay_iters, 300); /* 0 resolves to train-iters */
    ck_assert(c.moe_layer_is_moe[0] && c.moe_layer_is_moe[1] && !c.moe_layer_is_moe[2]);

    moe_config again = c; /* idempotent */
    ck_assert_int_eq(moe_config_validate(&again), MOE_OK);
    ck_assert(memcmp(&again, &c, sizeof c) == 0);
}
END_TEST

/* Every key set away from its default, written, read back. */
START_TEST(test_round_trip)
{
    static const char *kv[][2] = {
        {"num-layers", "4"}, {"hidden-size", "96"}, {"ffn-hidden-size", "200"}, {"num-attention-heads", "6"},
        {"num-query-groups", "3"}, {"seq-length", "48"}, {"vocab-size", "300"}, {"num-experts", "6"},
        {"moe-router-topk", "3"}, {"moe-ffn-hidden-size", "40"}, {"moe-shared-expert-intermediate-size", "32"},
        {"moe-layer-freq", "[0, 1,1, 1]"}, {"moe-router-score-function", "sigmoid"},
        {"moe-router-norm-topk", "no"}, {"moe-aux-loss-coeff", "0.1"}, {"moe-z-loss-coeff", "1e-4"},
        {"moe-router-enable-expert-bias", "yes"}, {"moe-router-bias-update-rate", "0.3"},
        {"moe-expert-capacity-factor", "1.25"}, {"moe-token-drop-policy", "position"},
        {"moe-pad-expert-input-to-capacity", "TRUE"}, {"untie-embeddings-and-output-weights", "1"},
        {"rotary-base", "500000"}, {"norm-epsilon", "1e-6"}, {"init-method-std", "0.0123456789012345678"},
        {"micro-batch-size", "3"}, {"global-batch-size", "12"}, {"lr", "0.1"}, {"min-lr", "1e-300"},
        {"lr-warmup-iters", "7"}, {"lr-decay-iters", "90"}, {"weight-decay", "0"}, {"adam-beta1", "0.8"},
        {"adam-beta2", "0.999"}, {"adam-eps", "1e-10"}, {"clip-grad", "0.5"}, {"train-iters", "100"},
        {"eval-interval", "0"}, {"eval-iters", "0"}, {"save-interval", "0"}, {"keep-checkpoints", "0"},
        {"log-interval", "10"}, {"seed", "18446744073709551615"},
        {"data-path", "dir with \"quotes\", \\backslash\\: # not a comment\tand a tab"},
        {"save", "/tmp/ckpt\xc3\xa9"}, {"load", "'single'"}, {"recompute-granularity", "selective"},
        {"tensor-model-parallel-size", "1"}, {"pipeline-model-parallel-size", "2"},
        {"context-parallel-size", "1"}, {"expert-model-parallel-size", "2"},
        {"expert-tensor-parallel-size", "1"}, {"sequence-parallel", "true"},
        {"use-distributed-optimizer", "true"}, {"moe-overlap", "fine"}, {"trace-routing", "t.pb"},
        {"trace-window", "25"}, {"expert-placement", "plans/p 1.pb"}, {"run-dir", "runs/x: y"},
        {"nproc", "4"}, {"num-threads", "3"},
    };
    moe_config a, b;
    moe_config_defaults(&a);
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        ck_assert_msg(set(&a, kv[i][0], kv[i][1]) == MOE_OK, "%s: %s", kv[i][0], moe_errmsg());
    ck_assert_msg(moe_config_validate(&a) == MOE_OK, "%s", moe_errmsg());
    ck_assert_str_eq(a.moe_layer_freq, "[0,1,1,1]");
    ck_assert(a.seed == UINT64_MAX && a.min_lr == 1e-300);

    char path[1024];
    snprintf(path, sizeof path, "%s/config.yaml", tmpdir);
    ck_assert_int_eq(moe_config_save(&a, path), MOE_OK);
    moe_config_defaults(&b);
    ck_assert_msg(moe_config_load_yaml(&b, path) == MOE_OK, "%s", moe_errmsg());
    ck_assert_int_eq(moe_config_validate(&b), MOE_OK);
    assert_same(&a, &b);

    /* Written text is stable: writing b gives the same bytes as writing a. */
    char *t1 = NULL, *t2 = NULL;
    size_t n1, n2;
    FILE *f1 = open_memstream(&t1, &n1), *f2 = open_memstream(&t2, &n2);
    ck_assert_int_eq(moe_config_write_yaml(&a, f1), MOE_OK);
    ck_assert_int_eq(moe_config_write_yaml(&b, f2), MOE_OK);
    fclose(f1);
    fclose(f2);
    ck_assert_str_eq(t1, t2);
    ck_assert(strstr(t1, "num-layers: 4\n") && strstr(t1, "lr: 0.1\n"));
    free(t1);
    free(t2);
}
END_TEST

START_TEST(test_defaults_round_trip)
{
    moe_config a, b;
    moe_config_defaults(&a);
    ck_assert_int_eq(moe_config_validate(&a), MOE_OK);
    char path[1024];
    snprintf(path, sizeof path, "%s/d.yaml", tmpdir);
    ck_assert_int_eq(moe_config_save(&a, path), MOE_OK);
    moe_config_defaults(&b);
    ck_assert_int_eq(set(&b, "lr", "1"), MOE_OK);
    ck_assert_int_eq(moe_config_load_yaml(&b, path), MOE_OK);
    ck_assert_int_eq(moe_config_validate(&b), MOE_OK);
    assert_same(&a, &b);
}
END_TEST

START_TEST(test_shipped_configs)
{
    moe_config d, t, s;
    moe_config_defaults(&d);
    moe_config_defaults(&t);
    ck_assert_int_eq(set(&t, "num-layers", "7"), MOE_OK); /* the file must set it back */
    ck_assert_msg(moe_config_load_yaml(&t, MOE_SRC_DIR "/configs/tiny.yaml") == MOE_OK, "%s", moe_errmsg());
    ck_assert_int_eq(moe_config_validate(&d), MOE_OK);
    ck_assert_int_eq(moe_config_validate(&t), MOE_OK);
    assert_same(&d, &t);

    moe_config_defaults(&s);
    ck_assert_msg(moe_config_load_yaml(&s, MOE_SRC_DIR "/configs/small.yaml") == MOE_OK, "%s", moe_errmsg());
    ck_assert_msg(moe_config_validate(&s) == MOE_OK, "%s", moe_errmsg());
    ck_assert_int_eq(s.num_layers, 8);
    ck_assert_int_eq(s.hidden_size, 512);
    ck_assert_int_eq(s.num_attention_heads, 8);
    ck_assert_int_eq(s.num_query_groups, 8);
    ck_assert_int_eq(s.num_experts, 8);
    ck_assert_int_eq(s.moe_router_topk, 2);
    ck_assert_int_eq(s.moe_ffn_hidden_size, 1024);
    ck_assert_int_eq(s.ffn_hidden_size, 2048);
    ck_assert_int_eq(s.seq_length, 256);
    ck_assert_int_eq(s.micro_batch_size, 4);
    ck_assert_int_eq(s.global_batch_size, 4);
    ck_assert_int_eq(s.vocab_size, 0);
}
END_TEST

START_TEST(test_flags_override_file)
{
    const char *f = tmpfile_with("o.yaml", "# a comment\nnum-layers: 4\nlr: 0.01\nsequence-parallel: true\n");
    moe_config c;
    moe_config_defaults(&c);
    /* --config stands last but is loaded first */
    const char *argv[] = {"--num-layers", "6", "--lr=0.02", "--no-sequence-parallel", "--config", f};
    ck_assert_msg(args(&c, 6, argv) == MOE_OK, "%s", moe_errmsg());
    ck_assert_int_eq(c.num_layers, 6);
    ck_assert(c.lr == 0.02);
    ck_assert_int_eq(c.sequence_parallel, 0);

    moe_config_defaults(&c);
    char eqform[1100];
    snprintf(eqform, sizeof eqform, "--config=%s", f);
    const char *argv2[] = {eqform, "--use-distributed-optimizer", "--moe-router-norm-topk=false", "--lr", "-0"};
    ck_assert_msg(args(&c, 5, argv2) == MOE_OK, "%s", moe_errmsg());
    ck_assert_int_eq(c.num_layers, 4);
    ck_assert_int_eq(c.sequence_parallel, 1);
    ck_assert_int_eq(c.use_distributed_optimizer, 1);
    ck_assert_int_eq(c.moe_router_norm_topk, 0);
    ck_assert(c.lr == 0.0);
}
END_TEST

START_TEST(test_bool_flags)
{
    moe_config c;
    moe_config_defaults(&c);
    const char *a1[] = {"--sequence-parallel", "--no-moe-router-norm-topk"};
    ck_assert_int_eq(args(&c, 2, a1), MOE_OK);
    ck_assert_int_eq(c.sequence_parallel, 1);
    ck_assert_int_eq(c.moe_router_norm_topk, 0);
    const char *a2[] = {"--sequence-parallel=no", "--moe-router-norm-topk=1"};
    ck_assert_int_eq(args(&c, 2, a2), MOE_OK);
    ck_assert_int_eq(c.sequence_parallel, 0);
    ck_assert_int_eq(c.moe_router_norm_topk, 1);

    const char *a3[] = {"--no-lr"};
    expect_usage(args(&c, 1, a3), "--no-lr", "boolean");
    const char *a4[] = {"--no-sequence-parallel=true"};
    expect_usage(args(&c, 1, a4), "--no-sequence-parallel", "no value");
    const char *a5[] = {"--sequence-parallel=maybe"};
    expect_usage(args(&c, 1, a5), "--sequence-parallel", "\"maybe\" is not a boolean");
    const char *a6[] = {"--no-sequence-paralel"};
    expect_usage(args(&c, 1, a6), "unknown flag \"--no-sequence-paralel\"", "did you mean \"--no-sequence-parallel\"");
}
END_TEST

START_TEST(test_command_line_errors)
{
    moe_config c;
    moe_config_defaults(&c);
    const char *a1[] = {"--lr", "-1"};
    ck_assert_int_eq(args(&c, 2, a1), MOE_ERR_USAGE);
    ck_assert_str_eq(moe_errmsg(), "command line: --lr: -1 is out of range (must be >= 0)");
    moe_error_clear();

    const char *a2[] = {"--lr"};
    expect_usage(args(&c, 1, a2), "--lr", "needs a value");
    const char *a3[] = {"--data-path", "--seed", "3"};
    expect_usage(args(&c, 3, a3), "--data-path", "needs a value");
    const char *a4[] = {"--num_layers", "3"};
    expect_usage(args(&c, 2, a4), "unknown flag \"--num_layers\"", "did you mean \"--num-layers\"?");
    const char *a5[] = {"--num-layer", "3"};
    expect_usage(args(&c, 2, a5), "\"--num-layer\"", "did you mean \"--num-layers\"?");
    const char *a6[] = {"--frobnicate", "3"};
    expect_usage(args(&c, 2, a6), "--frobnicate", NULL);
    const char *a7[] = {"num-layers", "3"};
    expect_usage(args(&c, 2, a7), "unexpected argument \"num-layers\"", NULL);
    const char *a8[] = {"--config"};
    expect_usage(args(&c, 1, a8), "--config", "file");
    const char *a9[] = {"--config", "a.yaml", "--config=b.yaml"};
    expect_usage(args(&c, 3, a9), "--config", "twice");
    const char *a10[] = {"--num-layers", "3x"};
    expect_usage(args(&c, 2, a10), "--num-layers: \"3x\" is not an integer", NULL);
    const char *a11[] = {"--moe-router-score-function", "relu"};
    expect_usage(args(&c, 2, a11), "--moe-router-score-function", "softmax, sigmoid");
}
END_TEST

START_TEST(test_bad_numbers)
{
    moe_config c;
    moe_config_defaults(&c);
    expect_usage(set(&c, "num-layers", "abc"), "num-layers: \"abc\" is not an integer", NULL);
    expect_usage(set(&c, "num-layers", "1e3"), "num-layers", "not an integer");
    expect_usage(set(&c, "num-layers", " 3"), "num-layers", "not an integer");
    expect_usage(set(&c, "num-layers", "4.0"), "num-layers", "not an integer");
    expect_usage(set(&c, "num-layers", ""), "num-layers", "missing value");
    expect_usage(set(&c, "num-layers", "0"), "num-layers: 0 is out of range", "between 1 and 256");
    expect_usage(set(&c, "num-layers", "257"), "num-layers", "out of range");
    expect_usage(set(&c, "hidden-size", "99999999999999999999"), "hidden-size", "out of range");
    expect_usage(set(&c, "hidden-size", "4294967360"), "hidden-size", "out of range");
    expect_usage(set(&c, "seed", "-1"), "seed", "not a non-negative integer");
    expect_usage(set(&c, "seed", "18446744073709551616"), "seed", "out of range");
    expect_usage(set(&c, "lr", "nan"), "lr", "not a finite number");
    expect_usage(set(&c, "lr", "inf"), "lr", "not a finite number");
    expect_usage(set(&c, "lr", "1e999"), "lr", "out of range");
    expect_usage(set(&c, "lr", "0.1x"), "lr: \"0.1x\" is not a number", NULL);
    expect_usage(set(&c, "adam-beta2", "1"), "adam-beta2", "< 1");
    expect_usage(set(&c, "norm-epsilon", "0"), "norm-epsilon", "> 0");
    expect_usage(set(&c, "moe-expert-capacity-factor", "-0.5"), "moe-expert-capacity-factor", ">= 0");
    char longpath[MOE_PATH_MAX + 10];
    memset(longpath, 'a', sizeof longpath - 1);
    longpath[sizeof longpath - 1] = '\0';
    expect_usage(set(&c, "data-path", longpath), "data-path", "too long");
    expect_usage(set(&c, "num_layers", "2"), "unknown key \"num_layers\"", "did you mean \"num-layers\"?");
    /* a refused value leaves the field as it was */
    ck_assert_int_eq(c.num_layers, 2);
    ck_assert(c.lr == 3e-3);
}
END_TEST

START_TEST(test_yaml_errors)
{
    moe_config c;
    moe_config_defaults(&c);
    char msg[1600];

    const char *f = tmpfile_with("bad.yaml", "num-layers: 2\nnum-layers: abc\n");
    expect_usage(moe_config_load_yaml(&c, f), "duplicate key \"num-layers\"", "first set on line 1");

    f = tmpfile_with("bad.yaml", "lr: 0.1\n\nnum-layers: abc\n");
    ck_assert_int_eq(moe_config_load_yaml(&c, f), MOE_ERR_USAGE);
    snprintf(msg, sizeof msg, "%s:3: num-layers: \"abc\" is not an integer", f);
    ck_assert_str_eq(moe_errmsg(), msg);
    moe_error_clear();

    f = tmpfile_with("bad.yaml", "hidden-size: 64\nnum_layers: 4\n");
    ck_assert_int_eq(moe_config_load_yaml(&c, f), MOE_ERR_USAGE);
    snprintf(msg, sizeof msg, "%s:2: unknown key \"num_layers\" (did you mean \"num-layers\"?)", f);
    ck_assert_str_eq(moe_errmsg(), msg);
    moe_error_clear();

    f = tmpfile_with("bad.yaml", "lr: 0.1\nnum-layers: \"4\n");
    snprintf(msg, sizeof msg, "%s:", f);
    expect_usage(moe_config_load_yaml(&c, f), msg, "malformed YAML");
    f = tmpfile_with("bad.yaml", "moe-layer-freq: [1, 0\nlr: 3\n");
    expect_usage(moe_config_load_yaml(&c, f), msg, "malformed YAML");
    f = tmpfile_with("bad.yaml", "num-layers: 2\n\tlr: 3\n");
    expect_usage(moe_config_load_yaml(&c, f), "malformed YAML", ":2:");
    f = tmpfile_with("bad.yaml", "- num-layers\n- 2\n");
    expect_usage(moe_config_load_yaml(&c, f), "top level must be a mapping", NULL);
    f = tmpfile_with("bad.yaml", "num-layers:\n  a: 1\n");
    expect_usage(moe_config_load_yaml(&c, f), "num-layers", "not a mapping");
    f = tmpfile_with("bad.yaml", "num-layers: [2]\n");
    expect_usage(moe_config_load_yaml(&c, f), "num-layers", "only for moe-layer-freq");
    f = tmpfile_with("bad.yaml", "num-layers:\n");
    expect_usage(moe_config_load_yaml(&c, f), "num-layers", "missing value");
    f = tmpfile_with("bad.yaml", "num-layers: 2\n---\nlr: 1\n");
    expect_usage(moe_config_load_yaml(&c, f), "one YAML document", NULL);
    f = tmpfile_with("bad.yaml", "moe-router-score-function: relu\n");
    expect_usage(moe_config_load_yaml(&c, f), "moe-router-score-function", "\"relu\" is not one of: softmax, sigmoid");

    snprintf(msg, sizeof msg, "%s/missing.yaml", tmpdir);
    expect_usage(moe_config_load_yaml(&c, msg), msg, "No such file");
    expect_usage(moe_config_load_yaml(&c, tmpdir), tmpdir, "directory");

    /* empty, comment-only, and bare-document files set nothing */
    moe_config d;
    moe_config_defaults(&d);
    moe_config_defaults(&c);
    ck_assert_int_eq(moe_config_load_yaml(&c, tmpfile_with("e.yaml", "")), MOE_OK);
    ck_assert_int_eq(moe_config_load_yaml(&c, tmpfile_with("e.yaml", "# nothing\n\n")), MOE_OK);
    ck_assert_int_eq(moe_config_load_yaml(&c, tmpfile_with("e.yaml", "---\n")), MOE_OK);
    ck_assert(memcmp(&c, &d, sizeof c) == 0);

    /* YAML's own spellings: quoted scalars, null for an empty string */
    f = tmpfile_with("ok.yaml", "num-layers: \"4\"\nsave: ~\nload: 'ck pt'\nsequence-parallel: True\n");
    ck_assert_msg(moe_config_load_yaml(&c, f) == MOE_OK, "%s", moe_errmsg());
    ck_assert_int_eq(c.num_layers, 4);
    ck_assert_str_eq(c.save, "");
    ck_assert_str_eq(c.load, "ck pt");
    ck_assert_int_eq(c.sequence_parallel, 1);
}
END_TEST

START_TEST(test_relations)
{
    expect_usage(validate_with("num-attention-heads", "6"), "num-attention-heads (6) must divide hidden-size (64)",
                 NULL);
    expect_usage(validate_with("num-query-groups", "3"), "num-query-groups (3)", "num-attention-heads (4)");
    expect_usage(validate_with("num-attention-heads", "64"), "hidden-size / num-attention-heads", "even");
    expect_usage(validate_with("moe-router-topk", "5"), "moe-router-topk (5) must be <= num-experts (4)", NULL);
    expect_usage(validate_with("min-lr", "0.1"), "min-lr", "lr");
    expect_usage(validate_with("eval-iters", "0"), "eval-iters", "eval-interval");
    expect_usage(validate_with("global-batch-size", "12"), "global-batch-size (12)", "micro-batch-size");
    expect_usage(validate_with("moe-pad-expert-input-to-capacity", "true"), "moe-pad-expert-input-to-capacity",
                 "moe-expert-capacity-factor");

    moe_config c;
    moe_config_defaults(&c);
    c.num_layers = 0; /* set by code, not text: validate still range-checks */
    expect_usage(moe_config_validate(&c), "num-layers: 0 is out of range", NULL);
}
END_TEST

START_TEST(test_parallel_sizes)
{
    moe_config c;
    moe_config_defaults(&c);
    const char *a1[] = {"--nproc", "4", "--tensor-model-parallel-size", "3"};
    ck_assert_int_eq(args(&c, 4, a1), MOE_OK);
    expect_usage(moe_config_validate(&c), "nproc (4)", "tensor-model-parallel-size");

    moe_config_defaults(&c);
    const char *a2[] = {"--nproc", "3", "--expert-model-parallel-size", "3"};
    ck_assert_int_eq(args(&c, 4, a2), MOE_OK);
    expect_usage(moe_config_validate(&c), "expert-model-parallel-size (3) must divide num-experts (4)", NULL);

    moe_config_defaults(&c);
    const char *a3[] = {"--nproc", "2", "--tensor-model-parallel-size", "2", "--num-query-groups", "1"};
    ck_assert_int_eq(args(&c, 6, a3), MOE_OK);
    expect_usage(moe_config_validate(&c), "tensor-model-parallel-size (2) must divide num-query-groups (1)", NULL);

    moe_config_defaults(&c);
    const char *a4[] = {"--nproc", "3", "--pipeline-model-parallel-size", "3", "--num-layers", "2"};
    ck_assert_int_eq(args(&c, 6, a4), MOE_OK);
    expect_usage(moe_config_validate(&c), "pipeline-model-parallel-size (3) must divide num-layers (2)", NULL);

    moe_config_defaults(&c);
    const char *a5[] = {"--nproc", "4", "--context-parallel-size", "4", "--seq-length", "36"};
    ck_assert_int_eq(args(&c, 6, a5), MOE_OK);
    expect_usage(moe_config_validate(&c), "seq-length (36)", "context-parallel-size");

    moe_config_defaults(&c);
    const char *a6[] = {"--nproc", "2", "--global-batch-size", "8", "--micro-batch-size", "8"};
    ck_assert_int_eq(args(&c, 6, a6), MOE_OK);
    expect_usage(moe_config_validate(&c), "global-batch-size (8)", "data-parallel");

    moe_config_defaults(&c);
    const char *a7[] = {"--nproc", "4", "--expert-tensor-parallel-size", "3"};
    ck_assert_int_eq(args(&c, 4, a7), MOE_OK);
    expect_usage(moe_config_validate(&c), "expert-tensor-parallel-size", "nproc (4)");

    /* a layout that divides: 8 ranks, TP 2, PP 2 -> DP 2; EP 4 */
    moe_config_defaults(&c);
    const char *ok[] = {"--nproc", "8", "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                        "--expert-model-parallel-size", "4", "--global-batch-size", "16", "--sequence-parallel"};
    ck_assert_int_eq(args(&c, 11, ok), MOE_OK);
    ck_assert_msg(moe_config_validate(&c) == MOE_OK, "%s", moe_errmsg());
}
END_TEST

START_TEST(test_layer_freq)
{
    moe_config c;
    moe_config_defaults(&c);
    ck_assert_int_eq(set(&c, "num-layers", "5"), MOE_OK);
    ck_assert_int_eq(set(&c, "moe-layer-freq", "2"), MOE_OK);
    ck_assert_int_eq(moe_config_validate(&c), MOE_OK);
    int want2[] = {1, 0, 1, 0, 1};
    ck_assert(memcmp(c.moe_layer_is_moe, want2, sizeof want2) == 0 && !c.moe_layer_is_moe[5]);

    ck_assert_int_eq(set(&c, "moe-layer-freq", "([0]+[1]*1)*2 + [1]"), MOE_OK);
    ck_assert_int_eq(moe_config_validate(&c), MOE_OK);
    int wantp[] = {0, 1, 0, 1, 1};
    ck_assert(memcmp(c.moe_layer_is_moe, wantp, sizeof wantp) == 0);

    /* a YAML sequence, block or flow */
    const char *f = tmpfile_with("lf.yaml", "num-layers: 4\nmoe-layer-freq:\n  - 0\n  - 1\n  - 1\n  - 0\n");
    moe_config_defaults(&c);
    ck_assert_msg(moe_config_load_yaml(&c, f) == MOE_OK, "%s", moe_errmsg());
    ck_assert_str_eq(c.moe_layer_freq, "[0,1,1,0]");
    ck_assert_int_eq(moe_config_validate(&c), MOE_OK);
    int wantl[] = {0, 1, 1, 0};
    ck_assert(memcmp(c.moe_layer_is_moe, wantl, sizeof wantl) == 0);

    f = tmpfile_with("lf.yaml", "num-layers: 3\nmoe-layer-freq: [0, 1]\n");
    moe_config_defaults(&c);
    ck_assert_int_eq(moe_config_load_yaml(&c, f), MOE_OK);
    expect_usage(moe_config_validate(&c), "moe-layer-freq lists 2 layers but num-layers is 3", NULL);

    f = tmpfile_with("lf.yaml", "moe-layer-freq: [0, [1]]\n");
    expect_usage(moe_config_load_yaml(&c, f), "moe-layer-freq", NULL);

    moe_config_defaults(&c);
    expect_usage(set(&c, "moe-layer-freq", "[0,2]"), "moe-layer-freq", "0 or 1");
    expect_usage(set(&c, "moe-layer-freq", "0"), "moe-layer-freq", "between 1 and");
    expect_usage(set(&c, "moe-layer-freq", "2x"), "moe-layer-freq", NULL);
    expect_usage(set(&c, "moe-layer-freq", "[0,1"), "moe-layer-freq", NULL);
    expect_usage(set(&c, "moe-layer-freq", "[1]*300"), "moe-layer-freq", "longer");
    expect_usage(set(&c, "moe-layer-freq", "([1]*9)*99999999999999999999"), "moe-layer-freq", "longer");
    expect_usage(set(&c, "moe-layer-freq", "((((((((((((((((([1])))))))))))))))))"), "moe-layer-freq", "nested");
    /* 256 layers fit as a pattern even though the written list would not */
    ck_assert_int_eq(set(&c, "num-layers", "256"), MOE_OK);
    ck_assert_int_eq(set(&c, "moe-layer-freq", "[0]+[1]*255"), MOE_OK);
    ck_assert_int_eq(moe_config_validate(&c), MOE_OK);
    ck_assert(!c.moe_layer_is_moe[0] && c.moe_layer_is_moe[1] && c.moe_layer_is_moe[255]);
}
END_TEST

START_TEST(test_help)
{
    char *text = NULL;
    size_t n;
    FILE *f = open_memstream(&text, &n);
    moe_config_print_help(f);
    fclose(f);
    ck_assert(strstr(text, "--num-layers N"));
    ck_assert(strstr(text, "--[no-]sequence-parallel"));
    ck_assert(strstr(text, "--moe-overlap {none,coarse,fine}"));
    ck_assert(strstr(text, "--config FILE.yaml"));
    ck_assert(strstr(text, "(default 0.003)"));
    free(text);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_defaults_round_trip);
    tcase_add_test(tc, test_shipped_configs);
    tcase_add_test(tc, test_flags_override_file);
    tcase_add_test(tc, test_bool_flags);
    tcase_add_test(tc, test_command_line_errors);
    tcase_add_test(tc, test_bad_numbers);
    tcase_add_test(tc, test_yaml_errors);
    tcase_add_test(tc, test_relations);
    tcase_add_test(tc, test_parallel_sizes);
    tcase_add_test(tc, test_layer_freq);
    tcase_add_test(tc, test_help);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
