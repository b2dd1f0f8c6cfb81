/*
** costmodel: an analytic model of one training step of a moe.c model on a
** parallel layout (TP with sequence parallelism, CP, PP, EP, ETP, DP, folded)
** and a machine (planner/hwprofile.h): time, throughput, MFU and memory per
** rank. No MPI and nothing measured here; the assumptions are listed below
** and, with the reasons, in docs/perf-model.md.
**
** Compute. Per layer and micro-batch, each GEMM (qkv, attention scores and
** values, out projection, dense / shared-expert SwiGLU, router, the top-k
** routed experts, LM head) on a rank's share of the work (TP splits the
** heads and FFN columns, CP the query tokens, each TP rank routes 1/TP of the
** tokens, EP x ETP share the routed rows) costs, call by call,
**     kernel_overhead + max(flops / (peak * gemm_efficiency), bytes / memory bandwidth)
** (roofline; bytes = the GEMM's inputs, weights and output once). Backward
** makes two calls of each forward GEMM's size. The calls are counted as this
** runtime makes them: the routed experts one GEMM pair per (source rank,
** local expert) segment, E per rank (grouped_gemm, the default for bf16 /
** Megatron: one call for all local experts); fp32 attention one scores and
** one values GEMM per (sequence, head, 64-row block), four backward (CP > 1:
** 2 and 5 per tile a ring hop visits, load-balanced chunks; all on cached
** operands, the (sequence, head) pairs side by side on the rank's threads); bf16 attention one fused
** flash kernel per hop forward, two backward, by roofline over all of it.
** Element-wise passes (RMSNorm, RoPE, SwiGLU, router softmax / losses,
** route plan, permute per destination rank, unpermute, residual adds,
** cross-entropy over fp32 logits, zeroed gradient buffers, copies) are
** counted per layer from model_attn.c / model_ffn.c / model_step.c, each
** costing kernel_overhead + its bytes / elementwise_gbs; softmax passes
** (router, cross-entropy) the longer of that and their exponentials /
** softmax_gelems. The fp32 attention kernels' own work (beyond their GEMMs)
** costs its score elements / attention_gelems (CP = 1: the causal rows) or
** attention_block_gelems (CP > 1: the visited tiles), per direction. fp32's zero-filled gradient
** buffers are left out for bf16 (Megatron writes its gradients). On a
** shared machine a rank gets the profile's rates (measured with `threads`
** threads) x its own threads max(1, cores / W) / threads, x cores / (W x its
** threads) when the W ranks outnumber the cores (time-shared; the kernel
** overhead grows by the same factor, and every message waits at least
** oversubscribed_latency_us for its receiver to get a core: core_wait_s,
** the step with those waits less what of them falls into the time the
** rank's core runs the other ranks, (1 - slice) of its compute and
** optimizer). A profile
** with a gemm_efficiency_table (hwprofile.h) replaces the factor by
** the table's value at each GEMM's FLOPs (attention scores: their FLOPs),
** unless opts.gemm_efficiency overrides it; the report's gemm_efficiency is
** then the profile's single factor.
** The model FLOPs behind MFU are moe_flops_per_token's (runtime/flops.c:
** 3 x forward, full T x T attention); moe_flops_per_token (runtime/base/flops.h) computes the
** same here (planner may not link runtime/). With causal_skip the time
** counts the attention scores at half (block kernels skip masked tiles), the
** MFU FLOPs do not.
**
** Communication, alpha-beta per collective: latency per step + bytes /
** (link bandwidth * link_efficiency). A group whose ranks all sit on one node
** (ranks r / ranks_per_node, rank order from runtime/base/topology.h) uses
** the intra-node link, else the inter-node one; an all-to-all sends to its
** node-local peers and to the others at once, each on its link. Rings:
** all-gather / reduce-scatter send (n-1)/n of the full tensor, all-reduce
** 2(n-1)/n. Per layer and micro-batch:
**   TP   with SP an all-gather before and a reduce-scatter after attention and
**        after each dense / shared-expert MLP (an all-reduce each without SP;
**        the same bytes), routed experts without SP an all-gather of their
**        outputs; the same again in backward; fp32 with SP also all-gathers
**        the MoE block's input (this runtime does); the expert counts' small
**        all-reduce over tp x cp; the vocabulary-parallel loss's two. Exposed,
**        less tp_hidden.
**   CP   the ring's K/V blocks, (CP-1) x this rank's K and V forward, twice
**        that backward (K/V and dK/dV), hidden behind the attention scores
**        (exposed = max(0, comm - attention compute)).
**   EP   dispatch and combine all-to-alls forward and backward, each of
**        ETP x own tokens x top-k x hidden x dtype x (1 - 1/EP) bytes (uniform
**        routing) in EP - 1 messages of one link latency each, plus the
**        forward's exchange of expert counts (EP - 1 messages); hidden:
**        ep_hidden x min(comm, expert compute).
**   ETP  all-gather of the own tokens before the router and reduce-scatter of
**        the partial expert outputs, mirrored in backward.
**   PP   one activation forward and one gradient backward per micro-batch
**        and virtual stage boundary, on the critical path.
**   DP   non-expert gradients over dp x cp, expert gradients over EDP, fp32:
**        all-reduce, or with the distributed optimizer reduce-scatter plus an
**        all-gather of the parameters; the gradient sync hides behind up to
**        dp_hidden of the last micro-batch's backward (bf16 1, fp32 0); the parameter
**        all-gather is exposed unless param_gather_overlap.
** Pipeline: 1F1B with the slowest stage's per-micro-batch forward tf and
** backward tb (compute plus exposed comm): m (tf + tb) plus a bubble of one
** forward and backward of every other stage, / v: for equal stages
** (p-1)/v (tf + tb) (Narayanan et al. 2021; the same figure as
** parallel/pp_schedule's moe_pp_bubble_formula). On a shared machine with
** more ranks than cores the bubble runs one stage's ranks at a time, on the
** cores the idle ones leave.
** Optimizer: AdamW is memory bound; bytes per parameter of this rank's
** optimizer shard over the memory bandwidth (fp32: p, g, m, v read, p, m, v
** written, g read again for the norm: 32 B; mixed: fp32 master, grad, m, v
** read, master, m, v, bf16 copy written, grad norm: 34 B), plus zeroing
** every local fp32 gradient for the next step (4 B).
** Memory per rank (the stage needing most): parameters by shard (TP, EP x
** ETP, the stage's layers, embedding on the first stage, LM head on the last
** unless tied on one stage), gradients, AdamW state (sharded over dp x cp and
** EDP with the distributed optimizer), activations saved for backward per
** micro-batch times the micro-batches in flight (1F1B: min(p - s, m); with v
** virtual stages the warm-up of moe_pp_schedule plus one, per chunk), and the
** all-to-all and pipeline buffers. Precision fp32 (this runtime): 4 B
** parameters, 4 B gradients, 8 B m and v. Mixed bf16 (Megatron): 2 B
** parameters, 4 B fp32 main gradients, 12 B master, m, v.
**
** Memory: moe_costmodel_search returns a malloc'd table the caller frees with
** free(); nothing else allocates past its return.
*/
#ifndef MOE_COSTMODEL_H
#define MOE_COSTMODEL_H

#include "planner/hwprofile.h"
#include "runtime/base/config.h"
#include "runtime/base/status.h"

typedef enum { MOE_PREC_AUTO = -1, MOE_PREC_FP32 = 0, MOE_PREC_BF16 = 1 } moe_cost_precision;

/* Knobs of the model. moe_cost_opts_default fills the defaults each comment
** names; a negative value (or 0 where said) means "derive it". */
typedef struct {
    int precision;            /* MOE_PREC_AUTO: the profile's dtype (fp32: this runtime; bf16: mixed) */
    double gemm_efficiency;   /* <= 0: the profile's */
    double link_efficiency;   /* <= 0: the profile's */
    int ranks_per_node;       /* 0: the profile's */
    int flash_attention;      /* -1: on unless fp32 and CP = 1 (this runtime's CP 1 kernel keeps T x T scores) */
    int causal_skip;          /* -1: = flash_attention (masked half of the scores skipped) */
    int vpp;                  /* virtual pipeline stages per rank; 1 (all this runtime runs) */
    double ep_hidden;         /* < 0: from moe-overlap: none 0, coarse 1 - 1/min(4, E/EP), fine 1 - 1/EP */
    double dp_hidden;         /* < 0: bf16 1 (NCCL on its own stream: the gradient sync may hide behind the
                                 whole last backward), fp32 0 (this runtime: MPI's non-blocking all-reduces
                                 advance only inside MPI calls, and backward makes none for them) */
    double tp_hidden;         /* 0: TP collectives exposed */
    double cp_hidden;         /* 1: the ring hides behind the attention scores up to their time */
    int param_gather_overlap; /* 0: the distributed optimizer's parameter all-gather is exposed */
    double expert_imbalance;  /* 1: max/mean tokens per expert rank (uniform routing) */
    const double *ep_imbalance; /* NULL, or [ep_imbalance_n]: expert_imbalance for the layouts with EP = index
                                   (a routing trace's, moe_plan_trace_imbalance); 0 there: expert_imbalance */
    int ep_imbalance_n;
    double mem_usable;        /* 0.9: fraction of device memory a run may use */
    int grouped_gemm;         /* -1: on for bf16 (Megatron --moe-grouped-gemm), off for fp32 (this runtime) */
} moe_cost_opts;

void moe_cost_opts_default(moe_cost_opts *o);

/* Communication of one dimension over a step on the slowest stage. */
typedef enum { MOE_COMM_TP, MOE_COMM_CP, MOE_COMM_EP, MOE_COMM_ETP, MOE_COMM_PP, MOE_COMM_DP, MOE_COMM_N } moe_comm_dim;

typedef struct {
    double exposed_s;  /* on the critical path */
    double hidden_s;   /* overlapped with compute */
    double bytes;      /* sent by one rank per step */
    int inter_node;    /* 1: some group of this dimension spans nodes */
} moe_cost_comm;

typedef struct {
    /* the layout and its derived sizes */
    int world, tp, cp, pp, dp, ep, etp, edp, vpp, sp, micro_batches, precision;
    double gemm_efficiency, link_efficiency, ep_hidden, dp_hidden;
    double expert_imbalance; /* max/mean routed rows per expert rank this layout assumed */
    /* time */
    double flops_per_token;  /* model FLOPs per token (moe_flops_per_token's count) */
    double fwd_mb_s;         /* one micro-batch forward on the slowest stage, compute + exposed comm */
    double bwd_mb_s;         /* the same, backward */
    double compute_s;        /* m x (forward + backward compute) on the slowest stage: GEMMs, element-wise
                                passes and the kernel overhead of both */
    double elementwise_s;    /* of which element-wise passes and the attention kernels' own work (with
                                their kernel overheads) */
    double kernel_calls;     /* kernel calls (GEMM calls + element-wise passes) in compute_s */
    double overhead_s;       /* of compute_s: kernel_calls x the profile's kernel_overhead_us */
    moe_cost_comm comm[MOE_COMM_N];
    double bubble_s;         /* pipeline time beyond m x the slowest stage's tf + tb (< 0: see docs, oversubscribed) */
    double bubble_fraction;  /* (p-1) / (v m + p - 1): the schedule's idle fraction for equal stages */
    double optimizer_s;
    double core_wait_s;        /* ranks outnumbering a shared machine's cores: the messages' waits for a core
                                  (oversubscribed_latency_us each) beyond what the other ranks' work fills; in
                                  step_s, not in comm[] (whose latencies are the links' own) */
    double core_wait_filled_s; /* of those waits, what falls into the (1 - slice) of this rank's compute and
                                  optimizer time that its core runs the others */
    double step_s;
    double tokens_per_s;
    double mfu;              /* flops_per_token x tokens_per_s / (world x peak per rank) */
    /* memory per rank, bytes, of the stage that needs most */
    int mem_stage;
    double mem_params, mem_grads, mem_optimizer, mem_activations, mem_buffers, mem_total;
    double mem_capacity;     /* usable: mem_gib x mem_usable (shared machines: / world) */
    int fits;
    char reason[256];        /* why it does not fit ("" if it does) */
} moe_cost_report;

/* Parameters of the whole model (every expert, the embedding and an untied
** head) and those one token uses (moe_active_params' count: top-k experts,
** the embedding once). */
void moe_cost_param_counts(const moe_config *c, double *total, double *active);

/* The fp32 attention kernels' own work (beyond their GEMMs) as the model
** counts it for one layer and micro-batch on one rank: B sequences of T
** tokens, NH heads of HD, context parallelism cp (1: attention.c; > 1:
** attention_block.c on one of cp ranks, every ring hop). *elems: the score
** elements per direction; *passes: its kernel calls, forward and backward,
** each of which the model charges kernel_overhead_us. moe bench calibrate
** solves a kernel's time less its GEMMs' for attention_gelems /
** attention_block_gelems with them. */
void moe_cost_attention_parts(int B, int T, int NH, int HD, int cp, double *elems, double *passes);

/* A 1F1B pipeline of p stages and m micro-batches on a shared machine:
** stage s takes tf[s] forward and tb[s] backward per micro-batch on whole
** cores, its ranks using rank_threads threads in all (ranks per stage x
** threads each); while A stages have an op under way each runs at
** min(1, cores / (A x rank_threads)) of that speed (processor sharing), so
** a waiting stage's cores go to the others. Simulated op by op; *out: the
** seconds until the last backward ends. MOE_ERR_USAGE for a non-positive
** size, MOE_ERR_NOMEM. (planner/costmodel_pipe.c) */
moe_status moe_cost_pipeline_shared(int p, int m, const double *tf, const double *tb, double rank_threads,
                                    double cores, double *out);

/* Forward activations (micro-batch x model chunk) stage s of p holds at once
** under 1F1B with m micro-batches and v virtual stages: parallel/
** pp_schedule's moe_pp_max_in_flight (min(p - s, m) for v = 1), which
** planner cannot link. -1 for bad arguments. */
int moe_cost_in_flight(int p, int s, int m, int v);

/* Predicts one step of the config's model on its own layout (nproc ranks,
** tensor/context/pipeline/expert/expert-tensor sizes, sequence-parallel,
** distributed optimizer, moe-overlap, micro- and global batch) on hw.
** vocab-size 0 is taken as 256 (the byte tokenizer). MOE_ERR_USAGE, naming
** the problem, for a config or layout the runtime would refuse (the checks of
** moe_config_validate, moe_layout_init and moe_layout_check_model, and the
** model's tokens-per-micro-batch divisibility) or bad options. A layout that
** does not fit memory is not an error: out->fits = 0 and out->reason say so. */
moe_status moe_costmodel_step(const moe_config *c, const moe_hwprofile *hw, const moe_cost_opts *o,
                              moe_cost_report *out);

/* Restricts moe_costmodel_search; 0 = any size. sp: -1 on whenever TP > 1
** (Megatron requires it for MoE with TP), 0 off, 1 on. */
typedef struct {
    int tp, cp, pp, ep, etp;
    int sp;
} moe_cost_filter;

typedef struct {
    int tp, cp, pp, ep, etp, sp;
    int valid;          /* the runtime would run it (all the checks of moe_costmodel_step) */
    char why[256];      /* the refusal when not valid */
    moe_cost_report r;  /* when valid */
} moe_cost_layout;

/* Every (tp, cp, pp, ep, etp) of `world` ranks the filter allows, the rest of
** the config as given. *out (malloc'd, *n entries) lists, in this order: the
** valid layouts that fit, by predicted tokens/s (highest first); the valid
** ones that do not fit, by memory (least first); the invalid ones. Ties keep
** (tp, cp, pp, ep, etp) ascending. */
moe_status moe_costmodel_search(const moe_config *base, int world, const moe_hwprofile *hw, const moe_cost_opts *o,
                                const moe_cost_filter *f, moe_cost_layout **out, int *n);

/* One MoE layer's forward as Comet / flux time it (notes/comet.md section 4):
** layer0 = token dispatch + first expert GEMM, layer1 = second expert GEMM +
** combine, over tp x ep ranks (expert FFN columns split tp ways, experts ep
** ways). `tokens` is the layer's tokens over all ranks. allgather = 1: layer0
** all-gathers the token shards (flux's released code) instead of an
** all-to-all. Sequential = comm + GEMM; overlapped = the ideal pipelined
** max(C, P) + min(C, P) / chunks (notes/comet.md section 3), with chunks = the
** source ranks for layer0 and `splits` column chunks for layer1. */
typedef struct {
    double tokens;
    int hidden, ffn, experts, topk, tp, ep, gated, allgather, splits;
} moe_cost_layer_shape;

typedef struct {
    double gemm0_s, gemm1_s, comm0_s, comm1_s;
    double layer0_seq_s, layer1_seq_s, layer0_ov_s, layer1_ov_s;
} moe_cost_layer_report;

moe_status moe_costmodel_moe_layer_fwd(const moe_cost_layer_shape *s, const moe_hwprofile *hw,
                                       const moe_cost_opts *o, moe_cost_layer_report *out);

#endif
