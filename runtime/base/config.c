/*
** config.c: the key table, the setter every source goes through, defaults,
** command-line parsing and --help. YAML is config_yaml.c, the relations
** between keys config_check.c; config_internal.h is what they share.
*/
#include "runtime/base/config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "runtime/base/config_internal.h"

/*
** The key table. Every key a user can write is one row: its name (Megatron's
** flag without the dashes), its type, where it lives in moe_config, its range
** and its default, written as the text a user would type. moe_config_defaults
** runs the defaults through the same setter as YAML and flags, so a default
** can never be something the user could not write.
*/

#define OFF(f) offsetof(moe_config, f)
#define FSIZE(f) sizeof(((moe_config *)0)->f)
#define INT(n, f, lo, hi, d, h) {n, T_INT, OFF(f), 0, lo, hi, 0, NULL, d, h}
#define DBL(n, f, lo, hi, x, d, h) {n, T_DOUBLE, OFF(f), 0, lo, hi, x, NULL, d, h}
#define BOOL(n, f, d, h) {n, T_BOOL, OFF(f), 0, 0, 1, 0, NULL, d, h}
#define STR(n, f, d, h) {n, T_STRING, OFF(f), FSIZE(f), 0, 0, 0, NULL, d, h}
#define ENUM(n, f, ch, d, h) {n, T_ENUM, OFF(f), 0, 0, 0, 0, ch, d, h}

#define BIG (1 << 24)  /* widths, lengths: far beyond anything that fits in memory */
#define PAR (1 << 16)  /* parallel sizes and rank counts */

static const char *const score_fns[] = {"softmax", "sigmoid", NULL};
static const char *const drop_policies[] = {"probs", "position", NULL};
static const char *const recompute_modes[] = {"none", "selective", "full", NULL};
static const char *const overlap_modes[] = {"none", "coarse", "fine", NULL};

const moe_cfg_key moe_cfg_keys[] = {
    /* model */
    INT("num-layers", num_layers, 1, MOE_MAX_LAYERS, "2", "transformer layers"),
    INT("hidden-size", hidden_size, 1, BIG, "64", "model width"),
    INT("ffn-hidden-size", ffn_hidden_size, 1, BIG, "256", "SwiGLU width of dense (non-MoE) layers"),
    INT("num-attention-heads", num_attention_heads, 1, PAR, "4", "query heads"),
    INT("num-query-groups", num_query_groups, 0, PAR, "2",
        "key/value heads (grouped-query attention); 0 = num-attention-heads"),
    INT("seq-length", seq_length, 1, BIG, "64", "tokens per sequence"),
    INT("vocab-size", vocab_size, 0, BIG, "0", "vocabulary size; 0 = take it from the data"),
    INT("num-experts", num_experts, 1, PAR, "4", "routed experts per MoE layer"),
    INT("moe-router-topk", moe_router_topk, 1, PAR, "2", "experts each token is sent to"),
    INT("moe-ffn-hidden-size", moe_ffn_hidden_size, 1, BIG, "128", "SwiGLU width of each routed expert"),
    INT("moe-shared-expert-intermediate-size", moe_shared_expert_intermediate_size, 0, BIG, "0",
        "SwiGLU width of the shared expert; 0 = no shared expert"),
    {"moe-layer-freq", T_LAYER_FREQ, OFF(moe_layer_freq), FSIZE(moe_layer_freq), 0, 0, 0, NULL, "1",
     "which layers are MoE: N = layers 0, N, 2N, ...; or a 0/1 list, one entry per layer, "
     "like [0,1,1,1] or ([0]+[1]*3)"},
    ENUM("moe-router-score-function", moe_router_score_function, score_fns, "softmax",
         "router scores: softmax over experts, or per-expert sigmoid"),
    BOOL("moe-router-norm-topk", moe_router_norm_topk, "true",
         "renormalise the chosen experts' weights to sum to 1"),
    DBL("moe-aux-loss-coeff", moe_aux_loss_coeff, 0, INFINITY, 0, "0.01", "load-balancing loss weight"),
    DBL("moe-z-loss-coeff", moe_z_loss_coeff, 0, INFINITY, 0, "0.001", "router z-loss weight"),
    BOOL("moe-router-enable-expert-bias", moe_router_enable_expert_bias, "false",
         "aux-loss-free balancing: a per-expert bias added to scores for selection only"),
    DBL("moe-router-bias-update-rate", moe_router_bias_update_rate, 0, INFINITY, 0, "0.001",
        "step size of the expert-bias update"),
    DBL("moe-expert-capacity-factor", moe_expert_capacity_factor, 0, INFINITY, 0, "0",
        "expert capacity = factor * tokens * topk / experts; 0 = dropless"),
    ENUM("moe-token-drop-policy", moe_token_drop_policy, drop_policies, "probs",
         "which tokens an over-full expert drops: lowest probs, or latest position"),
    BOOL("moe-pad-expert-input-to-capacity", moe_pad_expert_input_to_capacity, "false",
         "pad every expert's input to its full capacity"),
    BOOL("untie-embeddings-and-output-weights", untie_embeddings_and_output_weights, "false",
         "separate output (LM head) matrix instead of the embedding's transpose"),
    DBL("rotary-base", rotary_base, 0, INFINITY, MIN_EXCL, "10000", "RoPE base frequency"),
    DBL("norm-epsilon", norm_epsilon, 0, 1, MIN_EXCL, "1e-05", "RMSNorm epsilon"),
    DBL("init-method-std", init_method_std, 0, INFINITY, MIN_EXCL, "0.02", "std of the normal weight init"),

    /* training */
    INT("micro-batch-size", micro_batch_size, 1, BIG, "8", "sequences per forward/backward pass per rank"),
    INT("global-batch-size", global_batch_size, 1, INT_MAX, "8", "sequences per optimizer step, all ranks"),
    DBL("lr", lr, 0, INFINITY, 0, "0.003", "peak learning rate"),
    DBL("min-lr", min_lr, 0, INFINITY, 0, "0.0003", "learning rate at the end of cosine decay"),
    INT("lr-warmup-iters", lr_warmup_iters, 0, INT_MAX, "20", "linear warmup steps"),
    INT("lr-decay-iters", lr_decay_iters, 0, INT_MAX, "0", "cosine decay ends here; 0 = train-iters"),
    DBL("weight-decay", weight_decay, 0, INFINITY, 0, "0.1", "AdamW decoupled weight decay (matrices only)"),
    DBL("adam-beta1", adam_beta1, 0, 1, MAX_EXCL, "0.9", "AdamW beta1"),
    DBL("adam-beta2", adam_beta2, 0, 1, MAX_EXCL, "0.95", "AdamW beta2"),
    DBL("adam-eps", adam_eps, 0, INFINITY, MIN_EXCL, "1e-08", "AdamW epsilon"),
    DBL("clip-grad", clip_grad, 0, INFINITY, 0, "1", "global gradient-norm clip; 0 = no clipping"),
    INT("train-iters", train_iters, 1, INT_MAX, "300", "optimizer steps"),
    INT("eval-interval", eval_interval, 0, INT_MAX, "50", "evaluate every N steps; 0 = never"),
    INT("eval-iters", eval_iters, 0, INT_MAX, "8", "validation batches per evaluation"),
    INT("save-interval", save_interval, 0, INT_MAX, "100", "checkpoint every N steps; 0 = only at the end"),
    INT("keep-checkpoints", keep_checkpoints, 0, INT_MAX, "3", "keep the newest K checkpoints; 0 = all"),
    INT("log-interval", log_interval, 1, INT_MAX, "1", "print a progress line every N steps"),
    {"seed", T_U64, OFF(seed), 0, 0, 0, 0, NULL, "1234", "random seed (init, data order)"},
    STR("data-path", data_path, "data/kjv", "directory written by `moe data prepare`"),
    STR("save", save, "", "checkpoint directory; \"\" = RUN_DIR/checkpoints"),
    STR("load", load, "", "checkpoint directory to resume from; \"\" = start fresh"),
    ENUM("recompute-granularity", recompute_granularity, recompute_modes, "none",
         "activation recomputation in backward"),

    /* parallelism */
    INT("tensor-model-parallel-size", tensor_model_parallel_size, 1, PAR, "1", "tensor parallel (TP) size"),
    INT("pipeline-model-parallel-size", pipeline_model_parallel_size, 1, PAR, "1", "pipeline stages (PP)"),
    INT("decoder-first-pipeline-num-layers", decoder_first_pipeline_num_layers, 0, BIG, "0",
        "layers of the first pipeline stage (0 = an even split)"),
    INT("decoder-last-pipeline-num-layers", decoder_last_pipeline_num_layers, 0, BIG, "0",
        "layers of the last pipeline stage (0 = an even split)"),
    INT("num-layers-per-virtual-pipeline-stage", num_layers_per_virtual_pipeline_stage, 0, BIG, "0",
        "layers per virtual pipeline stage: the interleaved 1F1B schedule (0 = one stage per rank)"),
    INT("context-parallel-size", context_parallel_size, 1, PAR, "1", "context parallel (CP) size"),
    INT("expert-model-parallel-size", expert_model_parallel_size, 1, PAR, "1", "expert parallel (EP) size"),
    INT("expert-tensor-parallel-size", expert_tensor_parallel_size, 1, PAR, "1",
        "tensor parallel size inside each expert (ETP)"),
    BOOL("sequence-parallel", sequence_parallel, "false", "shard activations outside TP regions along the sequence"),
    BOOL("use-distributed-optimizer", use_distributed_optimizer, "false",
         "shard optimizer state across data-parallel ranks"),
    BOOL("overlap-grad-reduce", overlap_grad_reduce, "true",
         "sum gradients during backward with non-blocking all-reduces where tp, cp, ep or etp > 1 (their "
         "traffic advances them); else, or with --no-overlap-grad-reduce, blocking ones"),
    ENUM("moe-overlap", moe_overlap, overlap_modes, "none",
         "overlap expert all-to-all with compute: none, coarse (expert chunks), fine (per source, on arrival)"),
    STR("trace-routing", trace_routing, "", "record routing (tokens per expert per rank, layer transitions) here"),
    INT("trace-window", trace_window, 1, INT_MAX, "100", "training steps summed into one routing-trace window"),
    STR("expert-placement", expert_placement, "",
        "placement plan (moe plan placement): each MoE layer's expert copies -> ranks and token shares; \"\" = contiguous"),

    /* run */
    STR("run-dir", run_dir, "runs/latest", "where config.yaml, metrics.jsonl, checkpoints and logs go"),
    INT("nproc", nproc, 1, PAR, "1", "ranks (processes) in the job"),
    INT("num-threads", num_threads, 0, 4096, "0",
        "compute threads per rank; 0 = MOE_NUM_THREADS / OMP_NUM_THREADS / cores"),
    INT("max-restarts", max_restarts, 0, 1000, "0",
        "restarts from the newest checkpoint after a worker fails (back-off 1 s, 2 s, 4 s, ...)"),
    INT("heartbeat-timeout", heartbeat_timeout, 1, 86400, "10",
        "seconds a worker may send nothing before the attempt fails"),
};

#define NKEYS ((int)(sizeof moe_cfg_keys / sizeof moe_cfg_keys[0]))

const int moe_cfg_nkeys = NKEYS;

/* Help headings, each printed before the key that opens its group. */
static const struct { const char *first, *title; } sections[] = {
    {"num-layers", "Model"},
    {"micro-batch-size", "Training"},
    {"tensor-model-parallel-size", "Parallelism"},
    {"run-dir", "Run"},
};

const moe_cfg_key *moe_cfg_find_key(const char *name)
{
    for (int i = 0; i < NKEYS; i++)
        if (strcmp(moe_cfg_keys[i].name, name) == 0)
            return &moe_cfg_keys[i];
    return NULL;
}

/* ---- messages ---------------------------------------------------------- */

/* "<origin>: <dash><name>: <what>". dash is "--" for flags, "" for YAML keys. */
static moe_status key_error(const char *origin, const char *dash, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static moe_status key_error(const char *origin, const char *dash, const char *name, const char *fmt, ...)
{
    char what[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (origin && *origin)
        return moe_fail(MOE_ERR_USAGE, "%s: %s%s: %s", origin, dash, name, what);
    return moe_fail(MOE_ERR_USAGE, "%s%s: %s", dash, name, what);
}

/* Values echoed in messages are cut short: a stray file pasted into a flag
** should not flood the terminal. */
static const char *shown(const char *v, char *buf, size_t cap)
{
    size_t n = strlen(v);
    if (n < 80)
        return v;
    snprintf(buf, cap, "%.60s...", v);
    return buf;
}

void moe_cfg_range_text(const moe_cfg_key *k, char *buf, size_t cap)
{
    int lo = isfinite(k->min), hi = isfinite(k->max);
    const char *ge = (k->excl & MIN_EXCL) ? ">" : ">=";
    const char *le = (k->excl & MAX_EXCL) ? "<" : "<=";
    if (k->type == T_INT && lo && hi && k->max < INT_MAX)
        snprintf(buf, cap, "must be between %.0f and %.0f", k->min, k->max);
    else if (k->type == T_INT)
        snprintf(buf, cap, "must be >= %.0f", k->min);
    else if (lo && hi)
        snprintf(buf, cap, "must be %s %g and %s %g", ge, k->min, le, k->max);
    else if (lo)
        snprintf(buf, cap, "must be %s %g", ge, k->min);
    else
        snprintf(buf, cap, "must be %s %g", le, k->max);
}

int moe_cfg_in_range(const moe_cfg_key *k, double v)
{
    if ((k->excl & MIN_EXCL) ? !(v > k->min) : !(v >= k->min))
        return 0;
    if ((k->excl & MAX_EXCL) ? !(v < k->max) : !(v <= k->max))
        return 0;
    return 1;
}

static int edit_distance(const char *a, const char *b)
{
    enum { CAP = 64 };
    size_t n = strlen(a), m = strlen(b);
    if (n >= CAP || m >= CAP)
        return INT_MAX;
    int prev[CAP + 1], cur[CAP + 1];
    for (size_t j = 0; j <= m; j++)
        prev[j] = (int)j;
    for (size_t i = 1; i <= n; i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= m; j++) {
            int best = prev[j - 1] + (a[i - 1] != b[j - 1]);
            if (prev[j] + 1 < best)
                best = prev[j] + 1;
            if (cur[j - 1] + 1 < best)
                best = cur[j - 1] + 1;
            cur[j] = best;
        }
        memcpy(prev, cur, (m + 1) * sizeof prev[0]);
    }
    return prev[m];
}

/* The key a misspelt name most likely meant, or NULL. Underscores for dashes
** (Python habits) and a stray "--" in YAML are recognised exactly; anything
** else is matched by edit distance, close enough to be a typo. */
static const char *suggest_key(const char *name)
{
    char fixed[128];
    snprintf(fixed, sizeof fixed, "%s", name);
    for (char *p = fixed; *p; p++)
        if (*p == '_')
            *p = '-';
    const char *bare = fixed;
    while (*bare == '-')
        bare++;
    if (moe_cfg_find_key(bare))
        return moe_cfg_find_key(bare)->name;

    const char *best = NULL;
    int best_d = INT_MAX;
    for (int i = 0; i < NKEYS; i++) {
        int d = edit_distance(bare, moe_cfg_keys[i].name);
        if (d < best_d) {
            best_d = d;
            best = moe_cfg_keys[i].name;
        }
    }
    int limit = (int)strlen(bare) / 3;
    if (limit < 1)
        limit = 1;
    return best_d <= limit ? best : NULL;
}

moe_status moe_cfg_unknown_key(const char *name, const char *origin, const char *dash)
{
    const char *what = *dash ? "flag" : "key";
    /* --no-<name>: the suggestion is for <name>, and only a boolean has a no- form */
    int neg = *dash && strncmp(name, "no-", 3) == 0;
    const char *s = suggest_key(neg ? name + 3 : name);
    if (neg && s && moe_cfg_find_key(s)->type != T_BOOL)
        s = NULL;
    char buf[96];
    name = shown(name, buf, sizeof buf);
    if (s)
        return moe_fail(MOE_ERR_USAGE, "%s: unknown %s \"%s%s\" (did you mean \"%s%s%s\"?)", origin, what, dash,
                        name, dash, neg ? "no-" : "", s);
    return moe_fail(MOE_ERR_USAGE, "%s: unknown %s \"%s%s\" (`moe train --help` lists them)", origin, what, dash,
                    name);
}

/* ---- moe-layer-freq ---------------------------------------------------- */

/*
** Megatron's forms: an integer N (layer l is MoE iff l % N == 0), or a 0/1
** list with one entry per layer. Lists may be written as Megatron's pattern
** expressions too: ([0]+[1]*3)*2 is [0,1,1,1,0,1,1,1]. Grammar:
**   expr := term ('+' term)*     term := ('[' 0|1 {',' 0|1} ']' | '(' expr ')') ['*' count]
*/
typedef struct {
    const char *p;
    const char *err; /* the first problem, static text */
    int depth;
} lf_parser;

static int lf_fail(lf_parser *P, const char *err)
{
    if (!P->err)
        P->err = err;
    return 0;
}

static int lf_expr(lf_parser *P, int *out, int *n);

static int lf_list(lf_parser *P, int *out, int *n)
{
    P->p++; /* '[' */
    if (*P->p == ']') {
        P->p++;
        return 1;
    }
    for (;;) {
        if ((*P->p != '0' && *P->p != '1') || isdigit((unsigned char)P->p[1]))
            return lf_fail(P, "list entries must be 0 or 1");
        if (*n >= MOE_MAX_LAYERS)
            return lf_fail(P, "the pattern is longer than the 256 layers moe.c supports");
        out[(*n)++] = *P->p++ - '0';
        if (*P->p == ']') {
            P->p++;
            return 1;
        }
        if (*P->p != ',')
            return lf_fail(P, "expected ',' or ']' in a list");
        P->p++;
    }
}

static int lf_term(lf_parser *P, int *out, int *n)
{
    int part[MOE_MAX_LAYERS], m = 0;
    if (*P->p == '[') {
        if (!lf_list(P, part, &m))
            return 0;
    } else if (*P->p == '(') {
        if (++P->depth > 16)
            return lf_fail(P, "parentheses nested too deeply");
        P->p++;
        if (!lf_expr(P, part, &m))
            return 0;
        if (*P->p != ')')
            return lf_fail(P, "missing ')'");
        P->p++;
        P->depth--;
    } else {
        return lf_fail(P, "expected '[' or '('");
    }
    long reps = 1;
    if (*P->p == '*') {
        P->p++;
        if (!isdigit((unsigned char)*P->p))
            return lf_fail(P, "expected a count after '*'");
        for (reps = 0; isdigit((unsigned char)*P->p); P->p++)
            if (reps <= MOE_MAX_LAYERS) /* saturate: anything larger is too long anyway */
                reps = reps * 10 + (*P->p - '0');
    }
    if (m > 0 && reps > (MOE_MAX_LAYERS - *n) / m)
        return lf_fail(P, "the pattern is longer than the 256 layers moe.c supports");
    for (long r = 0; r < reps; r++) {
        memcpy(out + *n, part, (size_t)m * sizeof part[0]);
        *n += m;
    }
    return 1;
}

static int lf_expr(lf_parser *P, int *out, int *n)
{
    for (;;) {
        if (!lf_term(P, out, n))
            return 0;
        if (*P->p != '+')
            return 1;
        P->p++;
    }
}

/* The integer form, or a list or pattern expression (contract in config_internal.h). */
int moe_cfg_lf_parse(const char *s, long *every, int *pattern, int *len, const char **err)
{
    *every = 0;
    *len = 0;
    if (isdigit((unsigned char)s[0])) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (*end != '\0') {
            *err = "expected an integer N or a list like [0,1,1,1]";
            return 0;
        }
        if (errno == ERANGE || v < 1 || v > INT_MAX) {
            *err = "the integer form must be between 1 and 2147483647";
            return 0;
        }
        *every = v;
        return 1;
    }
    lf_parser P = {s, NULL, 0};
    if (lf_expr(&P, pattern, len) && *P.p != '\0')
        lf_fail(&P, "unexpected text after the pattern");
    if (P.err) {
        *err = P.err;
        return 0;
    }
    return 1;
}

static moe_status set_layer_freq(moe_config *c, const moe_cfg_key *k, const char *value, const char *origin,
                                 const char *dash)
{
    char canon[sizeof c->moe_layer_freq];
    size_t n = 0;
    char buf[96];
    for (const char *p = value; *p; p++) {
        if (isspace((unsigned char)*p))
            continue; /* "[0, 1, 1]" and "[0,1,1]" mean the same */
        if (n + 1 >= sizeof canon)
            return key_error(origin, dash, k->name,
                             "value is too long (at most %zu characters without spaces; "
                             "write a long pattern like ([0]+[1]*15))",
                             sizeof canon - 1);
        canon[n++] = *p;
    }
    canon[n] = '\0';
    if (n == 0)
        return key_error(origin, dash, k->name, "missing value");
    long every;
    int pattern[MOE_MAX_LAYERS], len;
    const char *err = NULL;
    if (!moe_cfg_lf_parse(canon, &every, pattern, &len, &err))
        return key_error(origin, dash, k->name, "\"%s\" is not a layer pattern: %s", shown(value, buf, sizeof buf),
                         err);
    memset(c->moe_layer_freq, 0, sizeof c->moe_layer_freq);
    memcpy(c->moe_layer_freq, canon, n + 1);
    return MOE_OK;
}

/* ---- the setter -------------------------------------------------------- */

static int parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"true", "1", "yes"}, *const no[] = {"false", "0", "no"};
    for (int i = 0; i < 3; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return 1;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return 1;
        }
    }
    return 0;
}

/* Strict integer: optional sign, decimal digits, nothing else. Returns 0 if
** it is not an integer, -1 if it is one that overflows long long. */
static int parse_ll(const char *s, long long *out)
{
    const char *d = (*s == '-' || *s == '+') ? s + 1 : s;
    if (!isdigit((unsigned char)*d))
        return 0;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end != '\0')
        return 0;
    if (errno == ERANGE)
        return -1;
    *out = v;
    return 1;
}

static moe_status set_number(moe_config *c, const moe_cfg_key *k, const char *value, const char *origin,
                             const char *dash)
{
    char buf[96], rng[96];
    const char *v = shown(value, buf, sizeof buf);
    moe_cfg_range_text(k, rng, sizeof rng);

    if (k->type == T_U64) {
        if (!isdigit((unsigned char)value[0]))
            return key_error(origin, dash, k->name, "\"%s\" is not a non-negative integer", v);
        char *end;
        errno = 0;
        unsigned long long x = strtoull(value, &end, 10);
        if (*end != '\0')
            return key_error(origin, dash, k->name, "\"%s\" is not a non-negative integer", v);
        if (errno == ERANGE) /* unsigned long long is 64 bits on every target we build for */
            return key_error(origin, dash, k->name, "%s is out of range (must be < 2^64)", v);
        *(uint64_t *)moe_cfg_field(c, k) = (uint64_t)x;
        return MOE_OK;
    }

    if (k->type == T_INT) {
        long long x = 0;
        int r = parse_ll(value, &x);
        if (r == 0)
            return key_error(origin, dash, k->name, "\"%s\" is not an integer", v);
        if (r < 0 || !moe_cfg_in_range(k, (double)x))
            return key_error(origin, dash, k->name, "%s is out of range (%s)", v, rng);
        *(int *)moe_cfg_field(c, k) = (int)x;
        return MOE_OK;
    }

    /* T_DOUBLE: strtod would skip leading spaces and accept "nan" and "inf". */
    if (value[0] == '\0' || isspace((unsigned char)value[0]))
        return key_error(origin, dash, k->name, "\"%s\" is not a number", v);
    char *end;
    errno = 0;
    double x = strtod(value, &end);
    if (*end != '\0')
        return key_error(origin, dash, k->name, "\"%s\" is not a number", v);
    if (isnan(x) || (isinf(x) && errno != ERANGE))
        return key_error(origin, dash, k->name, "\"%s\" is not a finite number", v);
    if (isinf(x) || !moe_cfg_in_range(k, x))
        return key_error(origin, dash, k->name, "%s is out of range (%s)", v, rng);
    *(double *)moe_cfg_field(c, k) = x; /* an underflow to a subnormal or 0 is in range: keep it */
    return MOE_OK;
}

moe_status moe_cfg_set_key(moe_config *c, const moe_cfg_key *k, const char *value, const char *origin,
                           const char *dash)
{
    char buf[96];
    const char *v = shown(value, buf, sizeof buf);
    if (value[0] == '\0' && k->type != T_STRING)
        return key_error(origin, dash, k->name, "missing value");

    switch (k->type) {
    case T_INT:
    case T_U64:
    case T_DOUBLE:
        return set_number(c, k, value, origin, dash);
    case T_BOOL:
        if (!parse_bool(value, (int *)moe_cfg_field(c, k)))
            return key_error(origin, dash, k->name, "\"%s\" is not a boolean (true/false, yes/no, 1/0)", v);
        return MOE_OK;
    case T_ENUM: {
        char list[128] = "";
        for (int i = 0; k->choices[i]; i++) {
            if (strcmp(value, k->choices[i]) == 0) {
                *(int *)moe_cfg_field(c, k) = i;
                return MOE_OK;
            }
            size_t n = strlen(list);
            snprintf(list + n, sizeof list - n, "%s%s", i ? ", " : "", k->choices[i]);
        }
        return key_error(origin, dash, k->name, "\"%s\" is not one of: %s", v, list);
    }
    case T_STRING: {
        size_t n = strlen(value);
        if (n >= k->size)
            return key_error(origin, dash, k->name, "value is too long (%zu bytes; at most %zu)", n, k->size - 1);
        memset(moe_cfg_field(c, k), 0, k->size); /* no stale tail: configs compare bytewise */
        memcpy(moe_cfg_field(c, k), value, n);
        return MOE_OK;
    }
    case T_LAYER_FREQ:
        return set_layer_freq(c, k, value, origin, dash);
    }
    return moe_fail(MOE_ERR_INTERNAL, "config key %s has no type", k->name);
}

/* Messages name the key as it was written: "--lr" on the command line. */
static const char *dash_for(const char *origin)
{
    return origin && strncmp(origin, "command line", 12) == 0 ? "--" : "";
}

moe_status moe_config_set(moe_config *c, const char *key_name, const char *value, const char *origin)
{
    if (!origin)
        origin = "config";
    const char *dash = dash_for(origin);
    const moe_cfg_key *k = moe_cfg_find_key(key_name);
    if (!k)
        return moe_cfg_unknown_key(key_name, origin, dash);
    MOE_TRY(moe_cfg_set_key(c, k, value ? value : "", origin, dash));
    return MOE_OK;
}

void moe_config_defaults(moe_config *c)
{
    memset(c, 0, sizeof *c);
    /* The table's defaults are tested to parse; a failure here is a bug in
    ** the table and is left recorded for moe_errmsg(). */
    for (int i = 0; i < NKEYS; i++)
        (void)moe_cfg_set_key(c, &moe_cfg_keys[i], moe_cfg_keys[i].def, "built-in default", "");
}

/* ---- command line ------------------------------------------------------ */

static int takes_value(const char *name, size_t len)
{
    for (int i = 0; i < NKEYS; i++)
        if (strlen(moe_cfg_keys[i].name) == len && strncmp(moe_cfg_keys[i].name, name, len) == 0)
            return moe_cfg_keys[i].type != T_BOOL;
    return 1; /* unknown: assume it has a value, the second pass complains */
}

/* First pass: the one --config FILE, wherever it stands. Skips the values of
** other flags, so `--data-path --config` is not mistaken for it. */
static moe_status find_config_flag(int argc, char **argv, int first, const char **out)
{
    *out = NULL;
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0)
            continue;
        const char *name = a + 2, *eq = strchr(name, '=');
        const char *file = NULL;
        if (strcmp(name, "config") == 0) {
            if (i + 1 >= argc)
                return moe_fail(MOE_ERR_USAGE, "command line: --config needs a file name");
            file = argv[++i];
        } else if (strncmp(name, "config=", 7) == 0) {
            file = name + 7;
        } else if (!eq && strncmp(name, "no-", 3) != 0 && takes_value(name, strlen(name))) {
            i++;
            continue;
        } else {
            continue;
        }
        if (*out)
            return moe_fail(MOE_ERR_USAGE, "command line: --config given twice (%s and %s)", *out, file);
        if (!*file)
            return moe_fail(MOE_ERR_USAGE, "command line: --config needs a file name");
        *out = file;
    }
    return MOE_OK;
}

/* `--no-<name>`: false for a boolean key. */
static moe_status set_negated(moe_config *c, const char *name, const char *eq)
{
    const moe_cfg_key *k = moe_cfg_find_key(name + 3);
    if (!k || k->type != T_BOOL) {
        if (k)
            return moe_fail(MOE_ERR_USAGE, "command line: --%s: only boolean flags have a --no- form", name);
        return moe_cfg_unknown_key(name, "command line", "--");
    }
    if (eq)
        return moe_fail(MOE_ERR_USAGE, "command line: --%s takes no value", name);
    return moe_cfg_set_key(c, k, "false", "command line", "--");
}

moe_status moe_config_parse_args(moe_config *c, int argc, char **argv, int first)
{
    const char *cfg;
    MOE_TRY(find_config_flag(argc, argv, first, &cfg));
    if (cfg)
        MOE_TRY(moe_config_load_yaml(c, cfg));

    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0' || a[2] == '-') {
            char buf[96];
            return moe_fail(MOE_ERR_USAGE, "command line: unexpected argument \"%s\" (flags are --name value)",
                            shown(a, buf, sizeof buf));
        }
        char name[128];
        const char *eq = strchr(a + 2, '=');
        size_t len = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
        if (len >= sizeof name) {
            char buf[96];
            return moe_cfg_unknown_key(shown(a + 2, buf, sizeof buf), "command line", "--");
        }
        memcpy(name, a + 2, len);
        name[len] = '\0';

        if (strcmp(name, "config") == 0) { /* loaded above */
            if (!eq)
                i++;
            continue;
        }
        const moe_cfg_key *k = moe_cfg_find_key(name);
        if (!k && strncmp(name, "no-", 3) == 0) {
            MOE_TRY(set_negated(c, name, eq));
            continue;
        }
        if (!k)
            return moe_cfg_unknown_key(name, "command line", "--");

        const char *value;
        if (eq)
            value = eq + 1;
        else if (k->type == T_BOOL)
            value = "true";
        else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0)
            value = argv[++i];
        else
            return moe_fail(MOE_ERR_USAGE, "command line: --%s needs a value", name);
        MOE_TRY(moe_cfg_set_key(c, k, value, "command line", "--"));
    }
    return MOE_OK;
}

/* ---- help -------------------------------------------------------------- */

static void flag_text(const moe_cfg_key *k, char *buf, size_t cap)
{
    switch (k->type) {
    case T_INT:
    case T_U64: snprintf(buf, cap, "--%s N", k->name); break;
    case T_DOUBLE: snprintf(buf, cap, "--%s X", k->name); break;
    case T_BOOL: snprintf(buf, cap, "--[no-]%s", k->name); break;
    case T_STRING: snprintf(buf, cap, "--%s PATH", k->name); break;
    case T_LAYER_FREQ: snprintf(buf, cap, "--%s N|LIST", k->name); break;
    case T_ENUM: {
        int n = snprintf(buf, cap, "--%s {", k->name);
        for (int i = 0; k->choices[i] && n > 0 && (size_t)n < cap; i++)
            n += snprintf(buf + n, cap - (size_t)n, "%s%s", i ? "," : "", k->choices[i]);
        if (n > 0 && (size_t)n < cap)
            snprintf(buf + n, cap - (size_t)n, "}");
        break;
    }
    }
}

void moe_config_print_help(FILE *f)
{
    fprintf(f, "Configuration (a YAML file holds the same keys without the dashes; flags override it):\n");
    fprintf(f, "  %-44s %s\n", "--config FILE.yaml", "load these keys first, wherever the flag stands");
    for (int i = 0; i < NKEYS; i++) {
        const moe_cfg_key *k = &moe_cfg_keys[i];
        for (size_t s = 0; s < sizeof sections / sizeof sections[0]; s++)
            if (strcmp(sections[s].first, k->name) == 0)
                fprintf(f, "\n%s:\n", sections[s].title);
        char flag[160];
        flag_text(k, flag, sizeof flag);
        const char *q = (k->type == T_STRING) ? "\"" : "";
        if (strlen(flag) > 44)
            fprintf(f, "  %s\n  %-44s %s (default %s%s%s)\n", flag, "", k->help, q, k->def, q);
        else
            fprintf(f, "  %-44s %s (default %s%s%s)\n", flag, k->help, q, k->def, q);
    }
}
