/*
** costmodel.c: the step-time, MFU and memory model of planner/costmodel.h
** (options, checks and the layout search: costmodel_search.c).
** Every assumption is stated there and in docs/perf-model.md; the comments
** here say which term implements which.
*/
#include "planner/costmodel.h"
#include "planner/costmodel_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/flops.h"
#include "runtime/base/topology.h"

// ----------------------------------------------------------------------------
// model parameters (FLOPs per token and active parameters: runtime/base/flops.h)

void moe_cost_param_counts(const moe_config *c, double *total, double *active)
{
    double C = c->hidden_size, HD = (double)c->hidden_size / c->num_attention_heads;
    int nkv = c->num_query_groups ? c->num_query_groups : c->num_attention_heads;
    double attn = C * (c->num_attention_heads + 2.0 * nkv) * HD + C * C + 2 * C, t = 0;
    for (int l = 0; l < c->num_layers; l++)
        t += attn + (c->moe_layer_is_moe[l] ? C * c->num_experts + 3.0 * C * c->moe_ffn_hidden_size * c->num_experts +
                                                  3.0 * C * c->moe_shared_expert_intermediate_size
                                            : 3.0 * C * c->ffn_hidden_size);
    *total = t + C * c->vocab_size * (c->untie_embeddings_and_output_weights ? 2 : 1) + C;
    *active = moe_active_params(c);
}

// ----------------------------------------------------------------------------
// the model on the layout

typedef struct {
    /* model */
    double b, T, C, NH, NKV, HD, QKV, V, E, K, F, Fs, Fd;
    int L, tied;
    const int *is_moe;
    /* layout */
    int W, TP, CP, PP, DP, EP, ETP, EDP, SP, v, m, distopt, prec;
    double ntok; /* tokens of a micro-batch on one attention rank (b T / CP) */
    double own;  /* tokens a rank routes (ntok / TP) */
    double rows; /* routed rows on one expert rank (ETP own K, times the imbalance) */
    double imbalance;
    double srow; /* rows of the hidden-size tensors on a rank: ntok / TP with SP */
    int flash, grouped;
    double rthreads; /* the threads this rank runs: max(1, cores / W) on a shared machine, else 1 */
    double peak_all; /* FLOP/s of all W ranks' devices (a shared machine's: its peak at all its cores) */
    double fill_speedup; /* shared machine, more ranks than cores: how much faster a stage runs while the others
                            wait (their cores go to it); 1 otherwise */
    double slice, cores; /* shared machine: the fraction of a core a rank's thread gets when all W run; its cores */
    double causal, ep_hidden, dp_hidden;
    group_link tp, cp, tpcp, dpcp, pp, ep, etp, edp;
    machine mc;
    const moe_cost_opts *o;
} ctx;

/* Per micro-batch, one direction, on one rank. */
typedef struct {
    double compute; /* GEMMs, element-wise passes and the kernel overhead of both */
    double ew;      /* of which element-wise passes (their bytes and kernel overheads) */
    double calls;   /* kernel calls: GEMM calls and element-wise passes */
    double exposed[MOE_COMM_N], hidden[MOE_COMM_N], bytes[MOE_COMM_N];
} mb_cost;

static void add_comm(mb_cost *c, moe_comm_dim d, double t, double hidden_frac, double bytes)
{
    c->hidden[d] += t * hidden_frac;
    c->exposed[d] += t * (1 - hidden_frac);
    c->bytes[d] += bytes;
}

/* Hides up to `window` seconds of t behind compute. */
static void add_overlapped(mb_cost *c, moe_comm_dim d, double t, double window, double bytes)
{
    double h = fmin(t, fmax(0, window));
    c->hidden[d] += h;
    c->exposed[d] += t - h;
    c->bytes[d] += bytes;
}

/* `calls` GEMM calls of M x K x N each: a kernel overhead and a roofline
** apiece. Returns their time. */
static double gemm_calls(const ctx *x, mb_cost *c, double calls, double M, double K, double N)
{
    double t = calls * (x->mc.kern + moe_cost_gemm_time(&x->mc, M, K, N));
    c->compute += t;
    c->calls += calls;
    return t;
}

/* The fp32 attention kernels' GEMMs: `calls` calls of M x K x N among `par`
** independent ones that run side by side, one single-threaded call per
** thread of the rank (the kernels parallelise over (sequence, head)), on
** tiles the kernel has just touched (cached rates). */
static double attention_gemms(const ctx *x, mb_cost *c, double calls, double par, double M, double K, double N)
{
    double t = calls * (x->mc.kern + moe_cost_gemm_time_cached(&x->mc, M, K, N)) / fmax(1, fmin(x->rthreads, par));
    c->compute += t;
    c->calls += calls;
    return t;
}

/* A GEMM in forward and its two backward GEMMs (input and weight gradient:
** the same FLOPs each). Returns the forward time. */
static double gemm_fb(const ctx *x, mb_cost *f, mb_cost *b, double M, double K, double N)
{
    gemm_calls(x, b, 2, M, K, N);
    return gemm_calls(x, f, 1, M, K, N);
}

/* `kernels` element-wise kernel calls moving `bytes` in all (read + written)
** at the element-wise rate; softmax passes also exponentiate `exps`
** elements at the softmax rate and take the longer of the two. */
static double softmax_pass(const ctx *x, mb_cost *c, double kernels, double bytes, double exps)
{
    double t = kernels * x->mc.kern + fmax(bytes / x->mc.ewbw, exps / x->mc.smrate);
    c->compute += t;
    c->ew += t;
    c->calls += kernels;
    return t;
}

static double ew_pass(const ctx *x, mb_cost *c, double kernels, double bytes)
{
    return softmax_pass(x, c, kernels, bytes, 0);
}

/* Zero-filling gradient buffers that the next kernels accumulate into: this
** runtime's backward (fp32) does; Megatron's (bf16) writes its gradients. */
static void zero_pass(const ctx *x, mb_cost *c, double kernels, double bytes)
{
    if (x->prec == MOE_PREC_FP32)
        ew_pass(x, c, kernels, bytes);
}

/* One TP block boundary pair (attention, or a TP-split MLP): all-gather and
** reduce-scatter with SP, one all-reduce without. */
static void tp_block(const ctx *x, mb_cost *c)
{
    if (x->TP <= 1)
        return;
    double S = x->ntok * x->C * x->mc.w;
    double t = x->SP ? 2 * moe_cost_ag_time(&x->mc, &x->tp, S) : moe_cost_ar_time(&x->mc, &x->tp, S);
    add_comm(c, MOE_COMM_TP, t, x->o->tp_hidden, 2.0 * (x->TP - 1.0) / x->TP * S);
}

static void tp_single(const ctx *x, mb_cost *c, int allreduce)
{
    if (x->TP <= 1)
        return;
    double S = x->ntok * x->C * x->mc.w;
    double t = allreduce ? moe_cost_ar_time(&x->mc, &x->tp, S) : moe_cost_ag_time(&x->mc, &x->tp, S);
    add_comm(c, MOE_COMM_TP, t, x->o->tp_hidden, (allreduce ? 2.0 : 1.0) * (x->TP - 1.0) / x->TP * S);
}

/* A small all-reduce of `bytes` over a group (latency bound), charged to dim d. */
static void small_allreduce(const ctx *x, mb_cost *c, moe_comm_dim d, const group_link *g, double bytes)
{
    if (g->n > 1)
        add_comm(c, d, moe_cost_ar_time(&x->mc, g, bytes), 0, 2.0 * (g->n - 1.0) / g->n * bytes);
}

#define ATT_BLOCK 64.0 /* rows / keys per block of this runtime's attention kernels (layers/attention*.c) */

/* The score elements the fp32 attention kernels' own work (everything but
** their GEMMs: scores scaled and masked, softmax, dS) runs over on this rank
** per direction: CP = 1 (attention.c) the causal rows, heads x Tl (Tl + 1) / 2;
** CP > 1 (attention_block.c) every tile a ring hop visits, in full. A rank
** holds chunks j and 2CP-1-j of 2CP (model_attn.c), so of the (2CP)^2 chunk
** pairs it sees its 2 diagonal ones and 2CP - 1 whole ones: in 64 x 64 tiles
** of nc = chunk / 64 per chunk side, nc (nc + 1) + (2CP - 1) nc^2; with Tl
** at most 64, one Tl x Tl tile per hop. *tiles, *tile: the visited tiles
** and their side (CP > 1). */
static double attention_elems(const ctx *x, double *tiles, double *tile)
{
    double heads = x->b * x->NH / x->TP, Tl = x->T / x->CP;
    if (x->CP == 1) {
        *tiles = *tile = 0;
        return heads * Tl * (Tl + 1) / 2;
    }
    if (Tl <= ATT_BLOCK) {
        *tile = Tl;
        *tiles = heads * x->CP;
    } else {
        double nc = Tl / 2 / ATT_BLOCK;
        *tile = ATT_BLOCK;
        *tiles = heads * (nc * (nc + 1) + (2 * x->CP - 1) * nc * nc);
    }
    return *tiles * *tile * *tile;
}

/* `kernels` calls of an attention kernel's own work over `elems` score
** elements at `rate` (the profile's attention_gelems or
** attention_block_gelems, measured on the whole kernel less its GEMMs:
** the blocked kernel's accumulator init and finish included). */
static double attention_pass(const ctx *x, mb_cost *c, double kernels, double elems, double rate)
{
    double t = kernels * x->mc.kern + elems / rate;
    c->compute += t;
    c->ew += t;
    c->calls += kernels;
    return t;
}

/* The attention scores and values of one layer (forward and backward) on
** this rank; returns the forward time, the window the CP ring hides behind.
** fp32 (this runtime): its kernels, GEMM call by GEMM call (the (sequence,
** head) pairs spread over the rank's threads, each GEMM single-threaded, on
** cached operands), and their own work per score element at the profile's
** measured rates. CP = 1 (attention.c): per (sequence, head) and block of 64
** query rows r0..r1, a scores GEMM (rows x HD x r1) and a values GEMM (rows
** x r1 x HD) forward, four of that size backward, around the fp32 T x T
** probabilities (one kernel forward, two backward). CP > 1
** (attention_block.c, one region per ring hop): per (sequence, head) and
** visited tile (attention_elems), 2 GEMMs forward and 5 backward. bf16
** (Megatron): one fused flash kernel per hop forward, two backward, by
** roofline over all its FLOPs and bytes. */
static double attention_core(const ctx *x, mb_cost *f, mb_cost *b)
{
    const machine *m = &x->mc;
    double heads = x->b * x->NH / x->TP, Tl = x->T / x->CP, HD = x->HD;
    if (x->prec == MOE_PREC_FP32 && !x->flash) {
        double t0 = f->compute, tiles, tile, elems = attention_elems(x, &tiles, &tile);
        for (double r0 = 0; r0 < Tl; r0 += ATT_BLOCK) {
            double rows = fmin(ATT_BLOCK, Tl - r0), r1 = fmin(r0 + ATT_BLOCK, Tl);
            attention_gemms(x, f, heads, heads, rows, HD, r1);
            attention_gemms(x, f, heads, heads, rows, r1, HD);
            attention_gemms(x, b, 2 * heads, heads, rows, HD, r1);
            attention_gemms(x, b, 2 * heads, heads, rows, r1, HD);
        }
        attention_pass(x, f, 1, elems, m->attrate);
        attention_pass(x, b, 2, elems, m->attrate);
        return f->compute - t0;
    }
    if (x->prec == MOE_PREC_FP32) {
        double tiles, tile, elems = attention_elems(x, &tiles, &tile);
        double t0 = f->compute;
        attention_gemms(x, f, 2 * tiles, heads, tile, HD, tile);
        attention_gemms(x, b, 5 * tiles, x->b * x->NKV / x->TP, tile, HD, tile); /* backward: per (sequence, kv head) */
        /* hop regions, accumulator init and finish; backward: prep and hop regions (P recomputed) */
        attention_pass(x, f, x->CP + 2, elems, m->blockrate);
        attention_pass(x, b, x->CP + 1, elems, m->blockrate);
        return f->compute - t0;
    }
    /* fused: scores and values, 4 ntok T C / TP FLOPs, CP ranks see all T keys */
    double flops = 4.0 * x->ntok * x->T * x->C / x->TP * x->causal;
    double kv_all = x->b * x->T * 2 * x->NKV * x->HD / x->TP;
    double bytes = (x->ntok * x->C / x->TP * 2 + kv_all) * m->w;
    if (!x->flash) /* the T x T probabilities (fp32) written, normalised, read */
        bytes += 3.0 * x->b * (x->NH / x->TP) * (x->T / x->CP) * x->T * 4;
    double core = fmax(flops / (m->peak * moe_cost_eff_at(m, flops)), bytes / m->membw);
    f->compute += x->CP * m->kern + core;
    f->calls += x->CP;
    b->compute += 2 * x->CP * m->kern + 2 * core;
    b->calls += 2 * x->CP;
    return core;
}

/* The contract is in costmodel.h. */
void moe_cost_attention_parts(int B, int T, int NH, int HD, int cp, double *elems, double *passes)
{
    ctx x;
    memset(&x, 0, sizeof x);
    x.b = B, x.T = T, x.NH = NH, x.HD = HD, x.TP = 1, x.CP = cp;
    double tiles, tile;
    *elems = attention_elems(&x, &tiles, &tile);
    *passes = cp == 1 ? 1 + 2 : (cp + 2) + (cp + 1); /* attention_core's attention_pass calls */
}

/* Attention of one layer, forward and backward, as model_attn.c runs it. */
static void attention(const ctx *x, mb_cost *f, mb_cost *b)
{
    const machine *m = &x->mc;
    double w = m->w, Nc = x->ntok, Nr = x->srow, C = x->C, QKVl = x->QKV / x->TP, Ya = C / x->TP;
    ew_pass(x, f, 1, 2 * Nr * C * w); /* RMSNorm */
    gemm_fb(x, f, b, Nc, C, QKVl);
    ew_pass(x, f, 1, 2 * Nc * QKVl * w); /* RoPE */
    double core = attention_core(x, f, b);
    gemm_fb(x, f, b, Nc, Ya, C);
    if (!x->SP) /* the partial output copied out before its all-reduce */
        ew_pass(x, f, 1, 2 * Nc * C * w);
    ew_pass(x, f, 1, 3 * Nr * C * w); /* residual add */
    /* backward: zeroed gradients of the attention output, qkv (twice) and the
    ** input, RoPE (accumulating), RMSNorm (input and weight passes) */
    zero_pass(x, b, 4, (Nc * Ya + 2 * Nc * QKVl + Nc * C) * w);
    ew_pass(x, b, 1, 3 * Nc * QKVl * w);
    ew_pass(x, b, 2, 5 * Nr * C * w);
    tp_block(x, f);
    tp_block(x, b);
    if (x->CP > 1) { /* ring: CP-1 hops of this rank's K and V; backward K/V and dK/dV */
        double kv = x->ntok * 2 * x->NKV * x->HD / x->TP * m->w;
        double t = (x->CP - 1) * moe_cost_p2p_time(m, &x->cp, kv);
        ew_pass(x, f, 1, 2 * kv);     /* K/V packed for the ring */
        ew_pass(x, b, 1, 3 * kv);     /* packed again; dK/dV added home */
        zero_pass(x, b, 1, kv);
        add_overlapped(f, MOE_COMM_CP, t, x->o->cp_hidden * core, (x->CP - 1) * kv);
        add_overlapped(b, MOE_COMM_CP, 2 * t, x->o->cp_hidden * 2 * core, 2 * (x->CP - 1) * kv);
    }
}

/* A SwiGLU MLP of `width` split over TP on all of this rank's tokens (a dense
** layer's, or the shared expert), model_ffn.c's mlp_forward / backward. */
static void swiglu_mlp(const ctx *x, double width, mb_cost *f, mb_cost *b)
{
    double w = x->mc.w, Nc = x->ntok, Wl = width / x->TP;
    gemm_fb(x, f, b, Nc, x->C, 2 * Wl);
    ew_pass(x, f, 1, 3 * Nc * Wl * w);
    gemm_fb(x, f, b, Nc, Wl, x->C);
    /* backward: zeroed d(act), d(h13) and d(input), SwiGLU backward */
    zero_pass(x, b, 3, (3 * Nc * Wl + Nc * x->C) * w);
    ew_pass(x, b, 1, 7 * Nc * Wl * w);
    tp_block(x, f);
    tp_block(x, b);
}

/* Routed experts, shared expert, router, and their communication. */
static void moe_mlp(const ctx *x, mb_cost *f, mb_cost *b)
{
    const machine *m = &x->mc;
    double w = m->w, C = x->C, E = x->E, K = x->K, Ng = x->own * x->ETP, R = x->rows, Fl = x->F / x->ETP;
    /* router GEMM; softmax and top-k, expert counts, aux and z losses (fp32
    ** scores); the route plan (16 B per routed pair); backward: zeroed
    ** d(logits), router, aux and z loss backward */
    gemm_fb(x, f, b, Ng, C, E);
    softmax_pass(x, f, 4, (3 * Ng * E + 2 * x->own * E) * 4, Ng * E);
    ew_pass(x, f, 1, Ng * K * 16);
    zero_pass(x, b, 1, Ng * E * 4);
    ew_pass(x, b, 3, (3 * Ng * E + 4 * x->own * E) * 4);
    small_allreduce(x, f, MOE_COMM_TP, &x->tpcp, E * 4); /* the micro-batch's expert counts */
    /* permute: one gather per destination rank; unpermute with the top-k
    ** weights; backward: their gradients (two passes), zeroed d(input) */
    ew_pass(x, f, x->EP, 2 * Ng * K * C * w);
    ew_pass(x, f, 1, (Ng * K + Ng) * C * w);
    ew_pass(x, b, 2, (3 * Ng * K + Ng) * C * w);
    zero_pass(x, b, 1, Ng * C * w);
    ew_pass(x, b, 1, (Ng * K + 2 * Ng) * C * w);
    /* experts: this runtime runs a GEMM pair per (source rank, local expert)
    ** segment of the received rows (EP x E/EP = E segments); grouped GEMM
    ** (Megatron) one call per GEMM for all local experts */
    double El = E / x->EP, nseg = x->grouped ? El : x->EP * El, ncall = x->grouped ? 1 : nseg, seg = R / nseg;
    double t0 = f->compute, pair = moe_cost_gemm_time(m, seg, C, 2 * Fl) + moe_cost_gemm_time(m, seg, Fl, C);
    f->compute += 2 * ncall * m->kern + nseg * pair;
    f->calls += 2 * ncall;
    ew_pass(x, f, ncall, 3 * R * Fl * w);
    double experts = f->compute - t0;
    b->compute += 4 * ncall * m->kern + 2 * nseg * pair;
    b->calls += 4 * ncall;
    zero_pass(x, b, ncall, 2 * R * Fl * w); /* d(h13) */
    ew_pass(x, b, ncall, 7 * R * Fl * w);   /* SwiGLU backward */
    if (x->Fs > 0) {
        swiglu_mlp(x, x->Fs, f, b);
        ew_pass(x, f, 1, 3 * x->srow * C * w); /* shared expert added to the routed output */
        ew_pass(x, b, 1, 3 * x->srow * C * w);
    }
    if (!x->SP) { /* replicated tokens: each TP rank routed its slice, outputs all-gathered */
        tp_single(x, f, 0);
        tp_single(x, b, 0);
    }
    if (x->ETP > 1) { /* own tokens all-gathered before the router, outputs reduce-scattered */
        double full = x->own * x->ETP * C * w;
        double t = 2 * moe_cost_ag_time(m, &x->etp, full);
        add_comm(f, MOE_COMM_ETP, t, 0, 2 * (x->ETP - 1.0) / x->ETP * full);
        add_comm(b, MOE_COMM_ETP, t, 0, 2 * (x->ETP - 1.0) / x->ETP * full);
    }
    if (x->EP > 1) { /* counts, then dispatch + combine, uniform routing */
        double held = x->own * x->ETP * K * C * w;
        double t = 2 * moe_cost_a2a_time(m, &x->ep, held), sent = 2 * held * (x->EP - 1.0) / x->EP;
        add_overlapped(f, MOE_COMM_EP, t + moe_cost_a2a_time(m, &x->ep, 0), x->ep_hidden * experts, sent);
        add_overlapped(b, MOE_COMM_EP, t, x->ep_hidden * 2 * experts, sent);
    }
}

/* The FFN block of one layer: RMSNorm, MoE or dense MLP, residual add. */
static void ffn(const ctx *x, int is_moe, mb_cost *f, mb_cost *b)
{
    double Nr = x->srow, C = x->C, w = x->mc.w;
    ew_pass(x, f, 1, 2 * Nr * C * w);
    if (is_moe && x->SP && x->Fs <= 0 && x->prec == MOE_PREC_FP32) /* this runtime gathers the sequence anyway */
        tp_single(x, f, 0);
    if (is_moe)
        moe_mlp(x, f, b);
    else {
        swiglu_mlp(x, x->Fd, f, b);
        if (!x->SP) /* the partial output copied out before its all-reduce */
            ew_pass(x, f, 1, 2 * x->ntok * C * w);
    }
    ew_pass(x, f, 1, 3 * Nr * C * w);
    ew_pass(x, b, 2, 5 * Nr * C * w);
}

/* The LM head of the last stage: final RMSNorm, GEMM (column-parallel over
** the vocabulary), cross-entropy over fp32 logits (vocabulary-parallel with
** TP: max, exp-sum and finish passes and two small all-reduces). */
static void head(const ctx *x, mb_cost *f, mb_cost *b)
{
    double Nc = x->ntok, Nr = x->srow, C = x->C, w = x->mc.w, Vl = x->V / x->TP;
    ew_pass(x, f, 1, 2 * Nr * C * w);
    gemm_fb(x, f, b, Nc, C, Vl);
    softmax_pass(x, f, x->TP > 1 ? 3 : 1, (x->TP > 1 ? 4 : 2) * Nc * Vl * 4, Nc * Vl);
    if (x->TP > 1) {
        small_allreduce(x, f, MOE_COMM_TP, &x->tp, Nc * 4);
        small_allreduce(x, f, MOE_COMM_TP, &x->tp, 2 * Nc * 4);
    }
    /* backward: zeroed d(logits), cross-entropy backward, zeroed d(input)
    ** and d(residual), RMSNorm backward */
    zero_pass(x, b, 1, Nc * Vl * 4);
    ew_pass(x, b, 1, 3 * Nc * Vl * 4);
    zero_pass(x, b, 2, (Nc + Nr) * C * w);
    ew_pass(x, b, 2, 5 * Nr * C * w);
    if (x->TP > 1) {
        if (x->SP)
            tp_single(x, f, 0);
        tp_single(x, b, !x->SP);
    }
}

/* Forward and backward of one micro-batch on stage s. */
static void stage_cost(const ctx *x, int s, mb_cost *f, mb_cost *b)
{
    memset(f, 0, sizeof *f);
    memset(b, 0, sizeof *b);
    int per = x->L / x->PP;
    for (int l = s * per; l < (s + 1) * per; l++) {
        attention(x, f, b);
        ffn(x, x->is_moe[l], f, b);
    }
    if (s == 0) { /* embedding lookup and its scatter-add backward */
        double e = 2 * x->ntok * x->C * x->mc.w;
        ew_pass(x, f, x->TP > 1 && !x->SP ? 2 : 1, x->TP > 1 && !x->SP ? 2 * e : e);
        ew_pass(x, b, 1, e);
        if (x->TP > 1) { /* vocabulary-parallel: all-reduce (reduce-scatter with SP) */
            tp_single(x, f, !x->SP);
            if (x->SP)
                tp_single(x, b, 0);
        }
    }
    if (s == x->PP - 1)
        head(x, f, b);
    if (x->PP > 1) { /* activations out, gradients back: v hops per micro-batch each way */
        double bytes = x->ntok * x->C * x->mc.w / (x->SP ? x->TP : 1);
        double t = x->v * moe_cost_p2p_time(&x->mc, &x->pp, bytes);
        ew_pass(x, f, x->v, 2 * bytes); /* the send buffer copies */
        ew_pass(x, b, x->v, 2 * bytes);
        add_comm(f, MOE_COMM_PP, t, 0, x->v * bytes);
        add_comm(b, MOE_COMM_PP, t, 0, x->v * bytes);
    }
}

static double mb_total(const mb_cost *c)
{
    double t = c->compute;
    for (int d = 0; d < MOE_COMM_N; d++)
        t += c->exposed[d];
    return t;
}

// ----------------------------------------------------------------------------
// parameters and memory

typedef struct {
    double dense, expert; /* parameters on one rank of the stage */
} stage_params;

static stage_params params_of_stage(const ctx *x, int s)
{
    stage_params p = {0, 0};
    int per = x->L / x->PP;
    for (int l = s * per; l < (s + 1) * per; l++) {
        p.dense += x->C * x->QKV / x->TP + x->C * x->C / x->TP + 2 * x->C; /* attention + two norms */
        if (x->is_moe[l]) {
            p.dense += x->C * x->E + 3 * x->C * x->Fs / x->TP;
            p.expert += x->E / x->EP * 3 * x->C * x->F / x->ETP;
        } else
            p.dense += 3 * x->C * x->Fd / x->TP;
    }
    if (s == 0)
        p.dense += x->V * x->C / x->TP;
    if (s == x->PP - 1) {
        p.dense += x->C; /* final norm */
        if (!x->tied || x->PP > 1) /* untied head, or the tied copy on the last stage */
            p.dense += x->V * x->C / x->TP;
    }
    return p;
}

/* Bytes saved for backward by one layer and micro-batch (see costmodel.h). */
static double act_layer(const ctx *x, int is_moe)
{
    double w = x->mc.w, C = x->C;
    double a = (2 * x->srow * C + x->ntok * x->QKV / x->TP + x->ntok * C / x->TP) * w;
    if (x->flash)
        a += x->ntok * x->NH / x->TP * 2 * 4; /* softmax max and sum, fp32 */
    else
        a += x->b * (x->NH / x->TP) * (x->T / x->CP) * x->T * 4;
    a += 2 * x->srow * C * w; /* MLP norm input and output */
    if (!is_moe)
        return a + x->ntok * 3 * x->Fd / x->TP * w;
    a += x->own * x->ETP * x->E * 4;                           /* router probabilities, fp32 */
    a += x->rows * (2 * C + 3 * x->F / x->ETP) * w;            /* rows in, h13, act, rows out */
    return a + x->ntok * 3 * x->Fs / x->TP * w;
}

int moe_cost_in_flight(int p, int s, int m, int v)
{
    if (p < 1 || s < 0 || s >= p || m < 1 || v < 1)
        return -1;
    if (v == 1)
        return p - s < m ? p - s : m;
    /* moe_pp_schedule's warm-up, then one more forward before the first backward */
    long w = 2L * (p - s - 1) + (long)(v - 1) * p, all = (long)m * v;
    if (w > all)
        w = all;
    return (int)(w < all ? w + 1 : w);
}

static int in_flight_chunks(const ctx *x, int s) { return moe_cost_in_flight(x->PP, s, x->m, x->v); }

typedef struct {
    double params, grads, opt, act, buffers;
} stage_mem;

static stage_mem memory_of_stage(const ctx *x, int s)
{
    stage_params p = params_of_stage(x, s);
    double n = p.dense + p.expert;
    stage_mem m;
    m.params = n * (x->prec == MOE_PREC_BF16 ? 2 : 4);
    m.grads = n * 4;
    double dshard = x->distopt ? x->DP * x->CP : 1, eshard = x->distopt ? x->EDP : 1;
    m.opt = (p.dense / dshard + p.expert / eshard) * (x->prec == MOE_PREC_BF16 ? 12 : 8);

    int per = x->L / x->PP;
    double layers = 0;
    for (int l = s * per; l < (s + 1) * per; l++)
        layers += act_layer(x, x->is_moe[l]);
    int chunks = in_flight_chunks(x, s);
    m.act = chunks * layers / x->v;
    double mbs = (double)chunks / x->v; /* micro-batches' worth of the stage's edges in flight */
    if (s == 0)
        m.act += mbs * x->srow * x->C * x->mc.w;
    if (s == x->PP - 1) /* the head's input and fp32 logits (softmax kept for the loss gradient) */
        m.act += (x->PP > 1 ? 1 : mbs) * (x->srow * x->C * x->mc.w + x->ntok * x->V / x->TP * 4);

    m.buffers = 0;
    int any_moe = 0;
    for (int l = s * per; l < (s + 1) * per; l++)
        any_moe |= x->is_moe[l];
    if (any_moe)
        m.buffers += 2 * x->rows * x->C * x->mc.w; /* dispatch send and receive rows */
    if (x->PP > 1)
        m.buffers += 2 * x->ntok * x->C * x->mc.w / (x->SP ? x->TP : 1);
    if (x->TP > 1 && x->SP)
        m.buffers += x->ntok * x->C * x->mc.w; /* the gathered sequence */
    return m;
}

static moe_status setup(ctx *x, const moe_config *cfg, const moe_layout *l, const moe_hwprofile *hw,
                        const moe_cost_opts *o)
{
    memset(x, 0, sizeof *x);
    x->o = o;
    x->b = cfg->micro_batch_size, x->T = cfg->seq_length, x->C = cfg->hidden_size;
    x->NH = cfg->num_attention_heads, x->NKV = cfg->num_query_groups, x->HD = x->C / x->NH;
    x->QKV = (x->NH + 2 * x->NKV) * x->HD, x->V = cfg->vocab_size;
    x->E = cfg->num_experts, x->K = cfg->moe_router_topk, x->F = cfg->moe_ffn_hidden_size;
    x->Fs = cfg->moe_shared_expert_intermediate_size, x->Fd = cfg->ffn_hidden_size;
    x->L = cfg->num_layers, x->is_moe = cfg->moe_layer_is_moe, x->tied = !cfg->untie_embeddings_and_output_weights;
    x->W = l->world, x->TP = l->tp, x->CP = l->cp, x->PP = l->pp, x->DP = l->dp;
    x->EP = l->ep, x->ETP = l->etp, x->EDP = l->edp;
    x->SP = cfg->sequence_parallel && l->tp > 1, x->v = o->vpp;
    x->m = cfg->global_batch_size / (cfg->micro_batch_size * l->dp);
    x->distopt = cfg->use_distributed_optimizer;
    x->prec = moe_cost_resolve_precision(hw, o);
    x->ntok = x->b * x->T / x->CP;
    x->own = x->ntok / x->TP;
    x->imbalance = o->expert_imbalance;
    if (o->ep_imbalance && x->EP < o->ep_imbalance_n && o->ep_imbalance[x->EP] > 0)
        x->imbalance = o->ep_imbalance[x->EP];
    x->rows = x->own * x->ETP * x->K * x->imbalance;
    x->srow = x->SP ? x->own : x->ntok;
    x->flash = o->flash_attention >= 0 ? o->flash_attention : !(x->prec == MOE_PREC_FP32 && x->CP == 1);
    x->causal = (o->causal_skip >= 0 ? o->causal_skip : x->flash) ? 0.5 : 1.0;
    x->grouped = o->grouped_gemm >= 0 ? o->grouped_gemm : x->prec == MOE_PREC_BF16;
    x->dp_hidden = o->dp_hidden >= 0 ? o->dp_hidden : x->prec == MOE_PREC_BF16;
    if (o->ep_hidden >= 0)
        x->ep_hidden = o->ep_hidden;
    else if (cfg->moe_overlap == 2)
        x->ep_hidden = 1.0 - 1.0 / x->EP;
    else if (cfg->moe_overlap == 1) {
        double d = fmin(4, x->E / x->EP);
        x->ep_hidden = 1.0 - 1.0 / d;
    } else
        x->ep_hidden = 0;

    double slice = moe_cost_rank_slice(hw, l->world);
    x->rthreads = moe_cost_rank_threads(hw, l->world);
    x->fill_speedup = moe_cost_rank_slice(hw, l->world / l->pp) / slice;
    x->slice = slice, x->cores = hw->cores;
    x->peak_all = hw->shared ? hw->gemm_tflops * 1e12 * hw->cores / hw->threads : hw->gemm_tflops * 1e12 * l->world;
    moe_cost_machine_init(&x->mc, hw, o, l->world, x->prec);

    int rpn = o->ranks_per_node > 0 ? o->ranks_per_node : hw->ranks_per_node;
    MOE_TRY(moe_cost_group_links(l, MOE_G_TP, rpn, &x->tp));
    MOE_TRY(moe_cost_group_links(l, MOE_G_CP, rpn, &x->cp));
    MOE_TRY(moe_cost_group_links(l, MOE_G_TP_CP, rpn, &x->tpcp));
    MOE_TRY(moe_cost_group_links(l, MOE_G_DP_CP, rpn, &x->dpcp));
    MOE_TRY(moe_cost_group_links(l, MOE_G_PP, rpn, &x->pp));
    MOE_TRY(moe_cost_group_links(l, MOE_G_EP, rpn, &x->ep));
    MOE_TRY(moe_cost_group_links(l, MOE_G_ETP, rpn, &x->etp));
    MOE_TRY(moe_cost_group_links(l, MOE_G_EDP, rpn, &x->edp));
    return MOE_OK;
}

// ----------------------------------------------------------------------------
// the step

/* Gradient sync, parameter all-gather and optimizer of stage s, after its
** last backward (whose compute is bwd_compute). */
typedef struct {
    double sync, sync_hidden, gather, gather_hidden, opt, bytes;
} tail_cost;

static tail_cost tail_of_stage(const ctx *x, int s, double fwd_compute, double bwd_compute)
{
    const machine *m = &x->mc;
    stage_params p = params_of_stage(x, s);
    tail_cost t = {0};
    double pb = x->prec == MOE_PREC_BF16 ? 2 : 4;
    const group_link *gd = &x->dpcp, *ge = &x->edp;
    double gd_bytes = p.dense * 4, ge_bytes = p.expert * 4; /* fp32 gradients */
    if (x->distopt) {
        t.sync = moe_cost_ag_time(m, gd, gd_bytes) + moe_cost_ag_time(m, ge, ge_bytes); /* reduce-scatter: same cost */
        t.gather = moe_cost_ag_time(m, gd, p.dense * pb) + moe_cost_ag_time(m, ge, p.expert * pb);
        t.bytes = (gd->n - 1.0) / gd->n * (gd_bytes + p.dense * pb) +
                  (ge->n - 1.0) / ge->n * (ge_bytes + p.expert * pb);
    } else {
        t.sync = moe_cost_ar_time(m, gd, gd_bytes) + moe_cost_ar_time(m, ge, ge_bytes);
        t.bytes = 2 * (gd->n - 1.0) / gd->n * gd_bytes + 2 * (ge->n - 1.0) / ge->n * ge_bytes;
    }
    t.sync_hidden = fmin(t.sync, x->dp_hidden * bwd_compute);
    t.gather_hidden = x->o->param_gather_overlap ? fmin(t.gather, fwd_compute) : 0;
    double dshard = x->distopt ? x->DP * x->CP : 1, eshard = x->distopt ? x->EDP : 1;
    double updated = p.dense / dshard + p.expert / eshard;
    /* fp32: the runtime's own update at its measured rate (it runs below the
    ** triad's bandwidth on a CPU); bf16: a fused GPU optimizer moves its
    ** bytes (fp32 master, m, v, gradient; bf16 copy) at memory bandwidth.
    ** Plus the step's zeroing of every local fp32 gradient (4 B each). */
    double update = x->prec == MOE_PREC_BF16 ? updated * 34 / m->membw : updated / m->optrate;
    t.opt = update + (p.dense + p.expert) * 4 / m->membw;
    return t;
}

static double tail_exposed(const tail_cost *t)
{
    return t->sync - t->sync_hidden + t->gather - t->gather_hidden + t->opt;
}

/* A token-bucket link passes a burst at once and refills at the link rate,
** also between steps (optimizer, next batch), so each step's first burst of
** inter-node bytes costs no link time: that time comes off the exposed
** communication of the inter-node dimensions, in proportion to their bytes
** (refills inside a step are not counted). */
static void credit_burst(const ctx *x, moe_cost_report *r)
{
    double bytes = 0;
    for (int d = 0; d < MOE_COMM_N; d++)
        bytes += r->comm[d].inter_node ? r->comm[d].bytes : 0;
    if (x->mc.inter_burst <= 0 || bytes <= 0)
        return;
    double saved = fmin(x->mc.inter_burst, bytes) / x->mc.inter_bw;
    for (int d = 0; d < MOE_COMM_N; d++) {
        if (!r->comm[d].inter_node)
            continue;
        double cut = fmin(r->comm[d].exposed_s, saved * r->comm[d].bytes / bytes);
        r->comm[d].exposed_s -= cut;
        r->step_s -= cut;
    }
}

/* 1F1B on a shared machine whose ranks outnumber its cores: each stage's
** per-micro-batch times at the rate of all W ranks sharing the cores (slice
** of a core each) are its times on whole cores / slice; simulated with the
** cores going to the stages that have work. Sets bubble_s to the pipeline
** less m (tf + tb) of the slowest stage (negative when sharing fewer cores
** than the steady state assumes makes it shorter). */
static moe_status shared_pipeline(const ctx *x, const mb_cost *sf, const mb_cost *sb, double per_mb,
                                  moe_cost_report *r)
{
    double *tf = malloc(2 * (size_t)x->PP * sizeof *tf), pipe;
    if (!tf)
        return moe_fail(MOE_ERR_NOMEM, "cost model: %d pipeline stages", x->PP);
    double *tb = tf + x->PP;
    for (int s = 0; s < x->PP; s++)
        tf[s] = mb_total(&sf[s]) * x->slice, tb[s] = mb_total(&sb[s]) * x->slice;
    moe_status st = moe_cost_pipeline_shared(x->PP, x->m, tf, tb, (double)x->W / x->PP * x->rthreads, x->cores, &pipe);
    free(tf);
    MOE_TRY(st);
    r->bubble_s = pipe - x->m * per_mb;
    return MOE_OK;
}

static void set_throughput(const ctx *x, const moe_config *cfg, moe_cost_report *r)
{
    double tokens = (double)cfg->global_batch_size * cfg->seq_length;
    r->tokens_per_s = tokens / r->step_s;
    r->mfu = r->flops_per_token * r->tokens_per_s / x->peak_all;
}

static moe_status fill_report(const ctx *x, const moe_config *cfg, double mem_cap, moe_cost_report *r)
{
    memset(r, 0, sizeof *r);
    r->world = x->W, r->tp = x->TP, r->cp = x->CP, r->pp = x->PP, r->dp = x->DP;
    r->ep = x->EP, r->etp = x->ETP, r->edp = x->EDP, r->vpp = x->v, r->sp = x->SP;
    r->micro_batches = x->m, r->precision = x->prec;
    r->gemm_efficiency = x->mc.eff, r->ep_hidden = x->ep_hidden, r->dp_hidden = x->dp_hidden;
    r->expert_imbalance = x->imbalance;
    r->flops_per_token = moe_flops_per_token(cfg);

    /* the slowest stage sets the pipeline's pace; the others fill and drain
    ** it: 1F1B takes m (tf + tb) of the slowest stage plus one forward and
    ** backward of each other stage (per virtual stage 1/v of it), which for
    ** equal stages is the (p-1)/v (tf + tb) bubble. On a shared machine
    ** with more ranks than cores a waiting stage leaves its cores to the
    ** others: 1F1B is simulated op by op with the cores shared among the
    ** stages that have work (shared_pipeline); with virtual stages the
    ** bubble alone runs at the speed of one stage's ranks on the cores. */
    mb_cost *sf = malloc(2 * (size_t)x->PP * sizeof *sf), fs = {0}, bs = {0}; /* each stage's, once */
    if (!sf)
        return moe_fail(MOE_ERR_NOMEM, "cost model: %d pipeline stages", x->PP);
    mb_cost *sb = sf + x->PP;
    double slow = -1, all = 0;
    for (int s = 0; s < x->PP; s++) {
        stage_cost(x, s, &sf[s], &sb[s]);
        double t = mb_total(&sf[s]) + mb_total(&sb[s]);
        all += t;
        if (t > slow)
            slow = t, fs = sf[s], bs = sb[s];
    }
    r->fwd_mb_s = mb_total(&fs), r->bwd_mb_s = mb_total(&bs);
    double per_mb = r->fwd_mb_s + r->bwd_mb_s;
    r->compute_s = x->m * (fs.compute + bs.compute);
    r->elementwise_s = x->m * (fs.ew + bs.ew);
    r->kernel_calls = x->m * (fs.calls + bs.calls);
    r->overhead_s = r->kernel_calls * x->mc.kern;
    r->bubble_s = (all - per_mb) / x->v / x->fill_speedup;
    moe_status st = x->fill_speedup > 1 && x->v == 1 ? shared_pipeline(x, sf, sb, per_mb, r) : MOE_OK;
    if (st != MOE_OK) {
        free(sf);
        return st;
    }
    r->bubble_fraction = (x->PP - 1.0) / (x->v * x->m + x->PP - 1.0);
    for (int d = 0; d < MOE_COMM_N; d++) {
        r->comm[d].exposed_s = x->m * (fs.exposed[d] + bs.exposed[d]);
        r->comm[d].hidden_s = x->m * (fs.hidden[d] + bs.hidden[d]);
        r->comm[d].bytes = x->m * (fs.bytes[d] + bs.bytes[d]);
    }
    r->comm[MOE_COMM_TP].inter_node = x->tp.cross, r->comm[MOE_COMM_CP].inter_node = x->cp.cross;
    r->comm[MOE_COMM_EP].inter_node = x->ep.cross, r->comm[MOE_COMM_ETP].inter_node = x->etp.cross;
    r->comm[MOE_COMM_PP].inter_node = x->pp.cross;
    r->comm[MOE_COMM_DP].inter_node = x->dpcp.cross || x->edp.cross;
    double pipe = x->m * per_mb + r->bubble_s;

    /* the stage whose gradient sync and optimizer end last ends the step */
    double tail = -1;
    tail_cost tc = {0};
    for (int s = 0; s < x->PP; s++) {
        tail_cost t = tail_of_stage(x, s, sf[s].compute, sb[s].compute);
        if (tail_exposed(&t) > tail)
            tail = tail_exposed(&t), tc = t;
    }
    free(sf);
    r->comm[MOE_COMM_DP].exposed_s = tc.sync - tc.sync_hidden + tc.gather - tc.gather_hidden;
    r->comm[MOE_COMM_DP].hidden_s = tc.sync_hidden + tc.gather_hidden;
    r->comm[MOE_COMM_DP].bytes = tc.bytes;
    r->optimizer_s = tc.opt;
    r->step_s = pipe + tail;
    credit_burst(x, r);
    set_throughput(x, cfg, r);

    /* memory: the stage that needs most */
    r->mem_total = -1;
    for (int s = 0; s < x->PP; s++) {
        stage_mem m = memory_of_stage(x, s);
        double tot = m.params + m.grads + m.opt + m.act + m.buffers;
        if (tot > r->mem_total) {
            r->mem_stage = s, r->mem_total = tot;
            r->mem_params = m.params, r->mem_grads = m.grads, r->mem_optimizer = m.opt;
            r->mem_activations = m.act, r->mem_buffers = m.buffers;
        }
    }
    r->mem_capacity = mem_cap;
    r->fits = r->mem_total <= mem_cap;
    if (!r->fits)
        snprintf(r->reason, sizeof r->reason,
                 "needs %.1f GiB per rank (stage %d: params %.1f, grads %.1f, optimizer %.1f, activations %.1f, "
                 "buffers %.1f) of %.1f GiB usable",
                 r->mem_total / 1073741824.0, r->mem_stage, r->mem_params / 1073741824.0,
                 r->mem_grads / 1073741824.0, r->mem_optimizer / 1073741824.0, r->mem_activations / 1073741824.0,
                 r->mem_buffers / 1073741824.0, mem_cap / 1073741824.0);
    return MOE_OK;
}

/* Ranks outnumbering a shared machine's cores: a message then waits for its
** receiver to get a core (core_lat), but that core is meanwhile running the
** other ranks' work, which the time-shared rates already charge: a rank is
** off its core (1 - slice) of its compute and optimizer time, and a wait
** for the core falls into that time until the waits outgrow it. The step
** is the one on the links' own latencies plus the waits beyond it; r holds
** the step with the core latencies on entry. */
static moe_status fill_core_waits(const ctx *x, const moe_config *cfg, double mem_cap, moe_cost_report *r)
{
    ctx own = *x;
    own.mc.core_lat = 0;
    double with_waits = r->step_s;
    MOE_TRY(fill_report(&own, cfg, mem_cap, r));
    double waits = fmax(0, with_waits - r->step_s), off_core = (1 - x->slice) * (r->compute_s + r->optimizer_s);
    r->core_wait_filled_s = fmin(waits, off_core);
    r->core_wait_s = waits - r->core_wait_filled_s;
    r->step_s += r->core_wait_s;
    set_throughput(x, cfg, r);
    return MOE_OK;
}

moe_status moe_costmodel_step(const moe_config *c, const moe_hwprofile *hw, const moe_cost_opts *o,
                              moe_cost_report *out)
{
    MOE_TRY(moe_cost_check_opts(o));
    moe_config *cfg = malloc(sizeof *cfg); /* a copy to validate (moe_config is ~10 KB) */
    if (!cfg)
        return moe_fail(MOE_ERR_NOMEM, "cost model: config copy");
    *cfg = *c;
    moe_layout l;
    ctx x;
    moe_status st;
    MOE_TRY_GOTO(moe_cost_check_layout(cfg, o, &l), st, done);
    MOE_TRY_GOTO(setup(&x, cfg, &l, hw, o), st, done);
    double cap = hw->mem_gib * 1073741824.0 * o->mem_usable / (hw->shared ? l.world : 1);
    MOE_TRY_GOTO(fill_report(&x, cfg, cap, out), st, done);
    if (x.mc.core_lat > 0)
        MOE_TRY_GOTO(fill_core_waits(&x, cfg, cap, out), st, done);
    out->link_efficiency = o->link_efficiency > 0 ? o->link_efficiency : hw->link_efficiency;
done:
    free(cfg);
    return st;
}
