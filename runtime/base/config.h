/*
** config: one run's resolved configuration (model, training, parallelism, run).
**
** Sources, in order, later wins: built-in defaults, a YAML file (keys as in
** INTERFACE.md without the leading dashes: `num-layers: 4`), command-line flags
** (`--num-layers 4`, `--num-layers=4`; a boolean flag alone means true, and
** `--no-<flag>` false). Every key is in one table (config.c) that gives its
** type, where it lives in the struct, and its allowed range; YAML and flags go
** through the same setter, so both refuse the same things with the same words.
**
** Errors are MOE_ERR_USAGE and name the key, the bad value and its origin
** (file:line or "command line"): an unknown key, a malformed number, a value
** out of range, malformed YAML, a missing file. moe_config_validate checks
** the relations between keys (heads divide hidden size, top-k <= experts,
** global batch divides into micro-batches, ...) before anything is allocated.
*/
#ifndef MOE_CONFIG_H
#define MOE_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "runtime/base/status.h"

#define MOE_MAX_LAYERS 256
#define MOE_PATH_MAX 1024

typedef struct {
    /* model */
    int num_layers;
    int hidden_size;
    int ffn_hidden_size;     /* dense FFN layers' SwiGLU width */
    int num_attention_heads;
    int num_query_groups;    /* key/value heads (GQA); 0 = num_attention_heads */
    int seq_length;
    int vocab_size;          /* 0 = take it from the data (256 for bytes) */
    int num_experts;
    int moe_router_topk;
    int moe_ffn_hidden_size; /* each expert's SwiGLU width */
    int moe_shared_expert_intermediate_size; /* 0 = no shared expert */
    char moe_layer_freq[512]; /* "1" every layer MoE; "2" every 2nd; "[0,1,1,1]" a pattern */
    int moe_layer_is_moe[MOE_MAX_LAYERS]; /* resolved from moe_layer_freq by validate */
    int moe_router_score_function; /* moe_score_fn: 0 softmax, 1 sigmoid */
    int moe_router_norm_topk;      /* renormalise chosen weights to sum 1 */
    double moe_aux_loss_coeff;
    double moe_z_loss_coeff;
    int moe_router_enable_expert_bias;
    double moe_router_bias_update_rate;
    double moe_expert_capacity_factor; /* <= 0: dropless */
    int moe_token_drop_policy;         /* moe_drop_policy: 0 probs, 1 position */
    int moe_pad_expert_input_to_capacity;
    int untie_embeddings_and_output_weights;
    double rotary_base;
    double norm_epsilon;
    double init_method_std;

    /* training */
    int micro_batch_size;
    int global_batch_size;   /* sequences per optimizer step, all ranks */
    double lr;
    double min_lr;
    int lr_warmup_iters;
    int lr_decay_iters;      /* 0 = train_iters */
    double weight_decay;
    double adam_beta1;
    double adam_beta2;
    double adam_eps;
    double clip_grad;        /* 0 = no clipping */
    int train_iters;
    int eval_interval;       /* 0 = no evaluation */
    int eval_iters;
    int save_interval;       /* 0 = save only at the end */
    int keep_checkpoints;    /* keep the newest K; 0 = keep all */
    int log_interval;
    uint64_t seed;
    char data_path[MOE_PATH_MAX]; /* directory made by `moe data prepare` */
    char save[MOE_PATH_MAX];      /* checkpoint directory; "" = RUN_DIR/checkpoints */
    char load[MOE_PATH_MAX];      /* checkpoint directory to resume from; "" = fresh */
    int recompute_granularity;    /* 0 none, 1 selective, 2 full */

    /* parallelism (validated now, used by the multi-rank runtime) */
    int tensor_model_parallel_size;
    int pipeline_model_parallel_size;
    int num_layers_per_virtual_pipeline_stage; /* 0: one model chunk per stage */
    int decoder_first_pipeline_num_layers;     /* 0: even split (see moe_pipeline_stage_layers) */
    int decoder_last_pipeline_num_layers;
    int context_parallel_size;
    int expert_model_parallel_size;
    int expert_tensor_parallel_size;
    int sequence_parallel;
    int use_distributed_optimizer;
    int overlap_grad_reduce;      /* 1: non-blocking DP all-reduces where backward communicates; 0: blocking */
    int moe_overlap;              /* 0 none, 1 coarse, 2 fine */
    char trace_routing[MOE_PATH_MAX]; /* RoutingTrace file to record; "" = off */
    int trace_window;             /* training steps per trace window */
    char expert_placement[MOE_PATH_MAX]; /* PlacementPlan to train with; "" = contiguous */

    /* run */
    char run_dir[MOE_PATH_MAX];
    int nproc;
    int num_threads;              /* 0 = OMP_NUM_THREADS / MOE_NUM_THREADS / cores */
    int max_restarts;             /* launcher: restarts from the newest checkpoint after a failure */
    int heartbeat_timeout;        /* launcher: seconds a worker may stay silent */
} moe_config;

void moe_config_defaults(moe_config *c);

/* Sets one key from text. origin names where it came from, for messages. */
moe_status moe_config_set(moe_config *c, const char *key, const char *value, const char *origin);

/* Reads a YAML mapping of key: scalar (a list value is allowed for moe-layer-freq). */
moe_status moe_config_load_yaml(moe_config *c, const char *path);

/*
** Parses argv[first..argc): `--config FILE` is loaded first wherever it stands,
** then every other flag in order. Non-flag words are an error.
*/
moe_status moe_config_parse_args(moe_config *c, int argc, char **argv, int first);

/* Checks relations between keys and resolves derived fields. Idempotent. */
moe_status moe_config_validate(moe_config *c);

/* Refuses valid settings this build does not run yet (recompute-granularity
** other than none), naming them: the launcher
** calls it before starting workers, the workers and the model again. */
moe_status moe_config_check_build(const moe_config *c);

/* Layers [*first, *first + *count) of pipeline stage s (of P, one model
** chunk per stage): the first / last stage get decoder-first/last-
** pipeline-num-layers when set, the other stages share the rest evenly.
** Valid after moe_config_validate. */
void moe_pipeline_stage_layers(const moe_config *c, int s, int P, int *first, int *count);

/* Writes every key (resolved values) as YAML that moe_config_load_yaml reads back. */
moe_status moe_config_write_yaml(const moe_config *c, FILE *f);
moe_status moe_config_save(const moe_config *c, const char *path);

/* Prints the key table (name, type, default, help) for --help. */
void moe_config_print_help(FILE *f);

#endif
