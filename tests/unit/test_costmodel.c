/* The cost model and `moe plan parallel`: FLOPs against runtime/flops.c,
** memory of a known layout by hand, a layout that cannot fit is refused, the
** ranking follows predicted throughput, pipeline figures against
** parallel/pp_schedule, link choice from the rank mapping, communication
** volumes, hardware profile refusals (the command line: test_plan_parallel_cli.c). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/pp_schedule.h"
#include "planner/costmodel.h"
#include "planner/hwprofile.h"
#include "runtime/base/config.h"
#include "runtime/base/status.h"
#include "runtime/model.h"
#include "testutil.h"

#define HW_DIR MOE_SRC_DIR "/configs/hw"

static moe_hwprofile load_hw(const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", HW_DIR, name);
    moe_hwprofile hw;
    moe_status st = moe_hwprofile_load(path, &hw);
    ck_assert_msg(st == MOE_OK, "%s: %s", path, moe_errmsg());
    return hw;
}

/* configs/tiny.yaml's model (4 layers here), vocabulary 256, fp32, one rank. */
static moe_config tiny(void)
{
    moe_config c;
    moe_config_defaults(&c);
    c.num_layers = 2, c.hidden_size = 64, c.ffn_hidden_size = 256, c.num_attention_heads = 4;
    c.num_query_groups = 2, c.seq_length = 64, c.vocab_size = 256, c.num_experts = 4;
    c.moe_router_topk = 2, c.moe_ffn_hidden_size = 128;
    c.micro_batch_size = 8, c.global_batch_size = 32;
    ck_assert_int_eq(moe_config_validate(&c), MOE_OK);
    return c;
}

static moe_config mixtral_8x22b(void)
{
    moe_config c;
    moe_config_defaults(&c);
    c.num_layers = 56, c.hidden_size = 6144, c.ffn_hidden_size = 16384, c.num_attention_heads = 48;
    c.num_query_groups = 8, c.seq_length = 4096, c.vocab_size = 32000, c.num_experts = 8;
    c.moe_router_topk = 2, c.moe_ffn_hidden_size = 16384, c.untie_embeddings_and_output_weights = 1;
    c.micro_batch_size = 1, c.global_batch_size = 256, c.use_distributed_optimizer = 1;
    ck_assert_int_eq(moe_config_validate(&c), MOE_OK);
    return c;
}

static void set_layout(moe_config *c, int world, int tp, int cp, int pp, int ep, int etp)
{
    c->nproc = world, c->tensor_model_parallel_size = tp, c->context_parallel_size = cp;
    c->pipeline_model_parallel_size = pp, c->expert_model_parallel_size = ep, c->expert_tensor_parallel_size = etp;
    c->sequence_parallel = tp > 1;
}

static moe_cost_report step(const moe_config *c, const moe_hwprofile *hw, const moe_cost_opts *o)
{
    moe_cost_report r;
    moe_status st = moe_costmodel_step(c, hw, o, &r);
    ck_assert_msg(st == MOE_OK, "step: %s", moe_errmsg());
    return r;
}

static int close_rel(double a, double b, double tol) { return fabs(a - b) <= tol * fmax(fabs(a), fabs(b)); }

// ----------------------------------------------------------------------------

START_TEST(test_flops_match_runtime)
{
    moe_config cs[6];
    cs[0] = tiny();
    cs[1] = tiny();
    cs[1].num_layers = 4;
    snprintf(cs[1].moe_layer_freq, sizeof cs[1].moe_layer_freq, "[0,1,1,0]"); /* dense layers too */
    cs[1].moe_shared_expert_intermediate_size = 192;
    ck_assert_int_eq(moe_config_validate(&cs[1]), MOE_OK);
    cs[2] = mixtral_8x22b();
    moe_config_defaults(&cs[3]); /* Qwen2-57B-A14B */
    cs[3].num_layers = 28, cs[3].hidden_size = 3584, cs[3].ffn_hidden_size = 18944, cs[3].num_attention_heads = 28;
    cs[3].num_query_groups = 4, cs[3].seq_length = 4096, cs[3].vocab_size = 151936, cs[3].num_experts = 64;
    cs[3].moe_router_topk = 8, cs[3].moe_ffn_hidden_size = 2560, cs[3].moe_shared_expert_intermediate_size = 20480;
    ck_assert_int_eq(moe_config_validate(&cs[3]), MOE_OK);
    moe_config_defaults(&cs[4]); /* configs/small.yaml */
    cs[4].num_layers = 8, cs[4].hidden_size = 512, cs[4].ffn_hidden_size = 2048, cs[4].num_attention_heads = 8;
    cs[4].num_query_groups = 8, cs[4].seq_length = 256, cs[4].vocab_size = 256, cs[4].num_experts = 8;
    cs[4].moe_router_topk = 2, cs[4].moe_ffn_hidden_size = 1024, cs[4].micro_batch_size = 4;
    cs[4].global_batch_size = 4;
    ck_assert_int_eq(moe_config_validate(&cs[4]), MOE_OK);
    cs[5] = cs[1];
    snprintf(cs[5].moe_layer_freq, sizeof cs[5].moe_layer_freq, "2"); /* every 2nd layer */
    cs[5].num_query_groups = 4;                                        /* multi-head, no GQA */
    ck_assert_int_eq(moe_config_validate(&cs[5]), MOE_OK);
    for (int i = 0; i < 6; i++) {
        double total, active;
        moe_cost_param_counts(&cs[i], &total, &active);
        ck_assert_msg(close_rel(active, moe_active_params(&cs[i]), 1e-12), "config %d active %.17g vs %.17g", i,
                      active, moe_active_params(&cs[i]));
        ck_assert(total >= active);
    }
    /* the small config's 215 MFLOP/token (docs/performance.md) */
    ck_assert(fabs(moe_flops_per_token(&cs[4]) / 1e6 - 215) < 1);
    /* Mixtral 8x22B: 141 B parameters, 39 B active (Mistral's figures) */
    double total, active;
    moe_cost_param_counts(&cs[2], &total, &active);
    ck_assert_msg(fabs(total / 1e9 - 141) < 1.5 && fabs(active / 1e9 - 39) < 1.0, "Mixtral %g B / %g B", total / 1e9,
                  active / 1e9);
}
END_TEST

/* Two layers, hidden 64, 4 heads / 2 KV groups (head 16, QKV 128), 4 experts
** top-2 of width 128, vocabulary 256, tied; 4 ranks: PP2 x EP2 (DP 2, EDP 1),
** fp32, micro-batch 8 of 64 tokens, 2 micro-batches per DP rank. */
START_TEST(test_memory_by_hand)
{
    moe_hwprofile hw = load_hw("this-machine.yaml");
    moe_cost_opts o;
    moe_cost_opts_default(&o);
    moe_config c = tiny();
    set_layout(&c, 4, 1, 1, 2, 2, 1);
    moe_cost_report r = step(&c, &hw, &o);
    ck_assert_int_eq(r.dp, 2);
    ck_assert_int_eq(r.edp, 1);
    ck_assert_int_eq(r.micro_batches, 2);

    /* stage 0: layer 0 and the embedding */
    double attn = 64.0 * 128 + 64 * 64 + 2 * 64; /* qkv, out, two norms: 12416 */
    double dense = attn + 64 * 4 + 256 * 64;    /* + router + embedding: 29056 */
    double expert = 2 * 3 * 64.0 * 128;         /* two local experts: 49152 */
    double n = dense + expert;
    ck_assert_int_eq(r.mem_stage, 0);
    ck_assert(close_rel(r.mem_params, 4 * n, 1e-12));
    ck_assert(close_rel(r.mem_grads, 4 * n, 1e-12));
    ck_assert(close_rel(r.mem_optimizer, 8 * n, 1e-12));
    /* one layer's saved tensors, 512 tokens: x, norm out (C each), qkv (128),
    ** attention out (C); the fp32 T x T probabilities (CP 1); MLP norm in
    ** and out; router probabilities (E, fp32); 1024 routed rows of in, out
    ** (C each), h13 (2F) and act (F) */
    double layer = (2 * 512 * 64 + 512 * 128 + 512 * 64) * 4.0 + 8.0 * 4 * 64 * 64 * 4 + 2 * 512 * 64 * 4.0 +
                   512 * 4 * 4.0 + 1024 * (2 * 64 + 3 * 128) * 4.0;
    ck_assert_msg(fabs(layer - 3547136) < 1, "%g", layer);
    double act = 2 * layer + 2 * 512 * 64 * 4.0; /* two micro-batches in flight + the embedding outputs */
    ck_assert_msg(close_rel(r.mem_activations, act, 1e-12), "activations %.17g, by hand %.17g", r.mem_activations,
                  act);
    double buffers = 2 * 1024 * 64 * 4.0 + 2 * 512 * 64 * 4.0; /* dispatch send/receive, stage send/receive */
    ck_assert(close_rel(r.mem_buffers, buffers, 1e-12));
    ck_assert(close_rel(r.mem_total, 16 * n + act + buffers, 1e-12));
    ck_assert(fabs(r.mem_total - 9394176) < 1);
    /* the machine's 23.5 GiB shared by 4 ranks, 90% usable */
    ck_assert(close_rel(r.mem_capacity, 23.5 * 1073741824.0 * 0.9 / 4, 1e-12));
    ck_assert(r.fits);

    /* the distributed optimizer shards m and v: non-expert over dp x cp = 4,
    ** experts over EDP = 2 (DP4 x EP2, one stage, bf16 mixed: 12 B) */
    set_layout(&c, 4, 1, 1, 1, 2, 1);
    c.use_distributed_optimizer = 1;
    c.global_batch_size = 32;
    o.precision = MOE_PREC_BF16;
    r = step(&c, &hw, &o);
    double d1 = 2 * attn + 2 * 64 * 4 + 256 * 64 + 64, e1 = 2 * expert; /* 2 layers, embedding, final norm */
    ck_assert(close_rel(r.mem_params, 2 * (d1 + e1), 1e-12));
    ck_assert(close_rel(r.mem_grads, 4 * (d1 + e1), 1e-12));
    ck_assert(close_rel(r.mem_optimizer, 12 * (d1 / 4 + e1 / 2), 1e-12));
}
END_TEST

START_TEST(test_does_not_fit_refused)
{
    moe_hwprofile hw = load_hw("h100-sxm.yaml");
    moe_cost_opts o;
    moe_cost_opts_default(&o);
    moe_config c = mixtral_8x22b();
    /* 141 B parameters on 8 GPUs: 16 B per parameter is 280 GiB a GPU */
    set_layout(&c, 8, 8, 1, 1, 8, 1);
    moe_cost_report r = step(&c, &hw, &o);
    ck_assert(!r.fits);
    ck_assert(r.mem_total > r.mem_capacity);
    ck_assert_msg(strstr(r.reason, "GiB") && strstr(r.reason, "usable"), "%s", r.reason);

    moe_cost_filter f = {.sp = -1};
    moe_cost_layout *t;
    int n;
    ck_assert_int_eq(moe_costmodel_search(&c, 8, &hw, &o, &f, &t, &n), MOE_OK);
    int valid = 0;
    for (int i = 0; i < n; i++) {
        ck_assert_msg(!(t[i].valid && t[i].r.fits), "tp %d pp %d ep %d fits?", t[i].tp, t[i].pp, t[i].ep);
        valid += t[i].valid;
        if (t[i].valid)
            ck_assert(t[i].r.reason[0]);
        else
            ck_assert(t[i].why[0]);
    }
    ck_assert(valid > 0);
    free(t);

    /* the published layout on 128 GPUs fits */
    set_layout(&c, 128, 2, 1, 8, 8, 1);
    r = step(&c, &hw, &o);
    ck_assert_msg(r.fits, "%s", r.reason);
}
END_TEST

START_TEST(test_ranking_by_throughput)
{
    moe_hwprofile hw = load_hw("h100-sxm.yaml");
    moe_cost_opts o;
    moe_cost_opts_default(&o);
    moe_config c = tiny();
    c.num_layers = 4, c.num_experts = 8, c.hidden_size = 256, c.num_attention_heads = 8, c.num_query_groups = 4;
    c.moe_ffn_hidden_size = 512, c.seq_length = 256, c.micro_batch_size = 2, c.global_batch_size = 64;
    ck_assert_int_eq(moe_config_validate(&c), MOE_OK);
    moe_cost_filter f = {.sp = -1};
    moe_cost_layout *t;
    int n;
    ck_assert_int_eq(moe_costmodel_search(&c, 16, &hw, &o, &f, &t, &n), MOE_OK);
    int fit = 0, phase = 0;
    for (int i = 0; i < n; i++) {
        int cat = !t[i].valid ? 2 : t[i].r.fits ? 0 : 1;
        ck_assert_msg(cat >= phase, "entry %d out of order", i);
        phase = cat;
        if (cat == 0) {
            fit++;
            if (i > 0)
                ck_assert(t[i - 1].r.tokens_per_s >= t[i].r.tokens_per_s);
            /* the table holds what moe_costmodel_step predicts for that layout */
            moe_config one = c;
            set_layout(&one, 16, t[i].tp, t[i].cp, t[i].pp, t[i].ep, t[i].etp);
            moe_cost_report r = step(&one, &hw, &o);
            ck_assert(close_rel(r.tokens_per_s, t[i].r.tokens_per_s, 1e-12));
            ck_assert(close_rel(r.step_s * r.tokens_per_s, 64.0 * 256, 1e-9));
        }
    }
    ck_assert_msg(fit > 10, "%d layouts fit", fit);
    /* EP must divide the 8 experts: EP 16 is refused with the runtime's words */
    int seen = 0;
    for (int i = 0; i < n; i++)
        if (t[i].ep == 16) {
            ck_assert(!t[i].valid);
            ck_assert_msg(strstr(t[i].why, "expert"), "%s", t[i].why);
            seen = 1;
        }
    ck_assert(seen);
    free(t);

    /* a filter restricts the search */
    moe_cost_filter g = {.tp = 2, .pp = 2, .sp = -1};
    ck_assert_int_eq(moe_costmodel_search(&c, 16, &hw, &o, &g, &t, &n), MOE_OK);
    for (int i = 0; i < n; i++)
        ck_assert(t[i].tp == 2 && t[i].pp == 2);
    free(t);
}
END_TEST

START_TEST(test_pipeline_against_pp_schedule)
{
    for (int p = 1; p <= 8; p++)
        for (int m = 1; m <= 16; m++)
            for (int v = 1; v <= 3; v++) {
                if (v > 1 && m % p)
                    continue;
                for (int s = 0; s < p; s++)
                    ck_assert_int_eq(moe_cost_in_flight(p, s, m, v), moe_pp_max_in_flight(p, s, m, v));
            }
    moe_hwprofile hw = load_hw("this-machine.yaml");
    hw.cores = 4; /* a rank per core: no time-sharing */
    moe_cost_opts o;
    moe_cost_opts_default(&o);
    moe_config c = tiny();
    c.num_layers = 4;
    ck_assert_int_eq(moe_config_validate(&c), MOE_OK);
    set_layout(&c, 4, 1, 1, 4, 1, 1); /* 4 stages, 4 micro-batches */
    moe_cost_report r = step(&c, &hw, &o);
    ck_assert_int_eq(r.micro_batches, 4);
    ck_assert(close_rel(r.bubble_fraction, moe_pp_bubble_formula(4, 4, 1), 1e-12));
    /* the bubble is one pass of each other stage: less than 3 of the slowest
    ** (the last stage carries the head), more than 2 (the middle two equal
    ** the first but for the embedding) */
    double per = r.fwd_mb_s + r.bwd_mb_s;
    ck_assert_msg(r.bubble_s < 3 * per && r.bubble_s > 2 * per, "bubble %g per %g", r.bubble_s, per);
    ck_assert(close_rel(r.step_s, 4 * per + r.bubble_s + r.comm[MOE_COMM_DP].exposed_s + r.optimizer_s, 1e-12));
    /* 4 ranks on 2 cores: a stage waiting leaves its core to the others,
    ** which run on a whole core instead of half of one: 1F1B simulated
    ** with the cores shared among the stages that have work takes less
    ** than the steady state at half a core plus a bubble at a whole one,
    ** and at least all four ranks' work spread over the 2 cores */
    hw.cores = 2;
    moe_cost_report h = step(&c, &hw, &o);
    per = h.fwd_mb_s + h.bwd_mb_s;
    ck_assert_msg(h.bubble_s < 1.5 * per && h.bubble_s > -0.5 * per, "bubble %g per %g", h.bubble_s, per);
    /* the simulation by hand: 2 stages of 2 one-thread ranks on 2 cores, 2
    ** micro-batches, forward 1 and backward 2 on whole cores: F1 alone
    ** (1), F2 and F1 sharing (2), B1 alone (2), B1 and F2 sharing (2), the
    ** rest of B1 and B2 sharing (2), the rest of B2 alone (1), B2 alone
    ** (2): 12, all four ranks' 6 each over 2 cores; 4 stages of one rank,
    ** 4 micro-batches: 27 */
    double tf[4] = {1, 1, 1, 1}, tb[4] = {2, 2, 2, 2}, t;
    ck_assert_int_eq(moe_cost_pipeline_shared(2, 2, tf, tb, 2, 2, &t), MOE_OK);
    ck_assert_msg(fabs(t - 12) < 1e-9, "%.17g", t);
    ck_assert_int_eq(moe_cost_pipeline_shared(4, 4, tf, tb, 1, 2, &t), MOE_OK);
    ck_assert_msg(fabs(t - 27) < 1e-9, "%.17g", t);
    /* on whole cores (as many as the ranks) it is 1F1B's (m + p - 1) (tf + tb) */
    ck_assert_int_eq(moe_cost_pipeline_shared(4, 4, tf, tb, 1, 4, &t), MOE_OK);
    ck_assert_msg(fabs(t - 21) < 1e-9, "%.17g", t);
    ck_assert_int_eq(moe_cost_pipeline_shared(0, 4, tf, tb, 1, 4, &t), MOE_ERR_USAGE);
    moe_error_clear();
    hw.cores = 4;
    c.num_layers = 8;
    ck_assert_int_eq(moe_config_validate(&c), MOE_OK);
    o.vpp = 2;
    r = step(&c, &hw, &o);
    ck_assert(close_rel(r.bubble_fraction, moe_pp_bubble_formula(4, 4, 2), 1e-12));
    o.vpp = 3; /* 8 layers do not split into 4 x 3 chunks */
    moe_cost_report bad;
    ck_assert_int_eq(moe_costmodel_step(&c, &hw, &o, &bad), MOE_ERR_USAGE);
    moe_error_clear();
}
END_TEST

START_TEST(test_links_and_volumes)
{
    moe_hwprofile hw = load_hw("h100-sxm.yaml");
    moe_cost_opts o;
    moe_cost_opts_default(&o);
    moe_config c = mixtral_8x22b();
    c.num_layers = 8, c.global_batch_size = 64;
    ck_assert_int_eq(moe_config_validate(&c), MOE_OK);
    /* 16 GPUs, TP2 PP1 EP8 ETP1: TP and EP groups are 2 and 8 consecutive ranks */
    set_layout(&c, 16, 2, 1, 1, 8, 1);
    moe_cost_report r = step(&c, &hw, &o);
    ck_assert_int_eq(r.comm[MOE_COMM_TP].inter_node, 0);
    ck_assert_int_eq(r.comm[MOE_COMM_EP].inter_node, 0);
    ck_assert_int_eq(r.comm[MOE_COMM_DP].inter_node, 1); /* dp-cp stride 2 spans both nodes */
    /* EP bytes: 4 all-to-alls per MoE layer and micro-batch, each of own
    ** tokens x top-k x hidden x 2 B x (1 - 1/EP); own = 4096 / TP */
    double per = 2048.0 * 2 * 6144 * 2 * 7 / 8;
    ck_assert_msg(close_rel(r.comm[MOE_COMM_EP].bytes, 4 * per * 8 * r.micro_batches, 1e-12), "%.17g",
                  r.comm[MOE_COMM_EP].bytes);
    /* the same layout with 4 GPUs per node: EP crosses nodes, and costs more */
    o.ranks_per_node = 4;
    moe_cost_report r4 = step(&c, &hw, &o);
    ck_assert_int_eq(r4.comm[MOE_COMM_EP].inter_node, 1);
    ck_assert(r4.comm[MOE_COMM_EP].exposed_s > 2 * r.comm[MOE_COMM_EP].exposed_s);
    /* fine overlap hides EP behind the experts: 1 - 1/EP of min(comm, compute) */
    o.ranks_per_node = 0;
    c.moe_overlap = 2;
    moe_cost_report rf = step(&c, &hw, &o);
    ck_assert(close_rel(rf.ep_hidden, 1 - 1.0 / 8, 1e-12));
    ck_assert(rf.comm[MOE_COMM_EP].hidden_s > 0);
    ck_assert(close_rel(rf.comm[MOE_COMM_EP].hidden_s + rf.comm[MOE_COMM_EP].exposed_s,
                        r.comm[MOE_COMM_EP].exposed_s, 1e-9));
    ck_assert(rf.step_s < r.step_s);
    /* a routing trace's imbalance for EP 8 (the table) is the expert_imbalance of EP 8 layouts only */
    moe_cost_report base = step(&c, &hw, &o);
    double table[9] = {0};
    table[8] = 1.5;
    o.ep_imbalance = table, o.ep_imbalance_n = 9;
    moe_cost_report rt = step(&c, &hw, &o);
    o.ep_imbalance = NULL, o.expert_imbalance = 1.5;
    moe_cost_report ri = step(&c, &hw, &o);
    ck_assert(rt.expert_imbalance == 1.5 && rt.step_s == ri.step_s && rt.step_s > base.step_s);
    o.expert_imbalance = 1, o.ep_imbalance = table;
    set_layout(&c, 16, 2, 1, 1, 4, 1); /* EP 4: not in the table */
    ck_assert(step(&c, &hw, &o).expert_imbalance == 1);
    table[4] = 0.5;
    moe_cost_report bad;
    ck_assert_int_eq(moe_costmodel_step(&c, &hw, &o, &bad), MOE_ERR_USAGE);
    o.ep_imbalance = NULL;
    set_layout(&c, 16, 2, 1, 1, 8, 1);
    /* DP all-reduce without the distributed optimizer: 2 (n-1)/n of the fp32
    ** non-expert gradients over dp x cp = 8, plus the experts over EDP = 2 */
    c.moe_overlap = 0;
    c.use_distributed_optimizer = 0;
    r = step(&c, &hw, &o);
    double attn = 6144.0 * (48 + 16) * 128 / 2 + 6144.0 * 6144 / 2 + 2 * 6144;
    double dense = 8 * (attn + 6144 * 8) + 2 * 32000.0 * 6144 / 2 + 6144, expert = 8 * 3.0 * 6144 * 16384;
    double bytes = 2 * 7.0 / 8 * dense * 4 + 2 * 1.0 / 2 * expert * 4;
    ck_assert_msg(close_rel(r.comm[MOE_COMM_DP].bytes, bytes, 1e-12), "%.17g vs %.17g", r.comm[MOE_COMM_DP].bytes,
                  bytes);
}
END_TEST

/* A token-bucket link (the emulated cluster) lets the step's first burst of
** inter-node bytes through free: exactly min(burst, bytes) / rate less. */
START_TEST(test_burst_credit)
{
    moe_hwprofile hw = load_hw("this-machine.yaml");
    moe_cost_opts o;
    moe_cost_opts_default(&o);
    o.ranks_per_node = 1; /* one rank per emulated host */
    moe_config c = tiny();
    set_layout(&c, 4, 1, 1, 1, 1, 1);
    hw.inter_burst_kb = 0;
    moe_cost_report a = step(&c, &hw, &o);
    ck_assert(a.comm[MOE_COMM_DP].inter_node && a.comm[MOE_COMM_DP].bytes > 200e3);
    hw.inter_burst_kb = 200;
    moe_cost_report b = step(&c, &hw, &o);
    double saved = 200e3 / (hw.inter_gbs * 1e9 * hw.link_efficiency);
    ck_assert_msg(close_rel(a.step_s - b.step_s, saved, 1e-9), "%g vs %g", a.step_s - b.step_s, saved);
    ck_assert(close_rel(a.comm[MOE_COMM_DP].exposed_s - b.comm[MOE_COMM_DP].exposed_s, saved, 1e-9));
    /* a burst above the step's bytes: never more than the bytes' own link time */
    hw.inter_burst_kb = 1e6;
    moe_cost_report big = step(&c, &hw, &o);
    ck_assert(big.step_s >= a.step_s - a.comm[MOE_COMM_DP].exposed_s - 1e-12);
    /* one node: no inter-node bytes, nothing credited */
    o.ranks_per_node = 0;
    double with_burst = step(&c, &hw, &o).step_s;
    hw.inter_burst_kb = 0;
    ck_assert(step(&c, &hw, &o).step_s == with_burst);
}
END_TEST

START_TEST(test_moe_layer_fwd)
{
    moe_hwprofile hw = load_hw("h800.yaml");
    moe_cost_opts o;
    moe_cost_opts_default(&o);
    moe_cost_layer_shape s = {.tokens = 8192, .hidden = 8192, .ffn = 8192, .experts = 32, .topk = 4,
                              .tp = 8, .ep = 1, .gated = 0, .allgather = 1, .splits = 8};
    moe_cost_layer_report r;
    ck_assert_int_eq(moe_costmodel_moe_layer_fwd(&s, &hw, &o, &r), MOE_OK);
    /* GEMM0: one grouped GEMM call, 2 x 32768 rows x 8192 x 1024 FLOPs at 989 TFLOP/s x 0.6 */
    ck_assert(close_rel(r.gemm0_s, hw.kernel_overhead_us * 1e-6 + 2.0 * 32768 * 8192 * 1024 / (989e12 * 0.6), 1e-9));
    /* all-gather: 7/8 of 8192 x 8192 x 2 B at 200 GB/s x 0.8, 7 steps of 5 us */
    ck_assert(close_rel(r.comm0_s, 7 * 5e-6 + 7.0 / 8 * 8192 * 8192 * 2 / 160e9, 1e-9));
    ck_assert(r.layer0_ov_s < r.layer0_seq_s && r.layer0_ov_s >= fmax(r.gemm0_s, r.comm0_s));
    s.tp = 3;
    ck_assert_int_eq(moe_costmodel_moe_layer_fwd(&s, &hw, &o, &r), MOE_ERR_USAGE);
    moe_error_clear();
}
END_TEST

/* The per-kernel terms on tiny (2 MoE layers, T 64, 4 heads, 4 experts
** top-2) at micro-batch 2, global 8: 4 micro-batches on one rank. Kernel
** calls counted by hand, each costing exactly kernel_overhead_us; more
** experts or no grouped GEMM, more calls by exactly their segments' kernels;
** element-wise bytes at elementwise_gbs; EP - 1 messages per all-to-all. */
START_TEST(test_kernel_terms)
{
    moe_hwprofile hw = load_hw("this-machine.yaml");
    moe_cost_opts o;
    moe_cost_opts_default(&o);
    moe_config c = tiny();
    c.micro_batch_size = 2, c.global_batch_size = 8;
    ck_assert_int_eq(moe_config_validate(&c), MOE_OK);
    hw.kernel_overhead_us = 0;
    moe_cost_report r0 = step(&c, &hw, &o);
    hw.kernel_overhead_us = 10;
    moe_cost_report r1 = step(&c, &hw, &o);
    /* per micro-batch and layer: attention 23 forward (norm, qkv, RoPE, 2
    ** heads x 4 (scores + values GEMMs), softmax, out, copy of the partial
    ** output, residual add) + 45 backward (2 x 2 projection GEMMs, 8 x 4
    ** head GEMMs, 2 softmax passes, 4 zeroed buffers, RoPE, 2 norm passes);
    ** MoE 22 forward (norm, router GEMM, 4 router passes, route plan, permute,
    ** unpermute, 4 expert segments x (2 GEMMs + SwiGLU), residual add) + 36
    ** backward (2 router GEMMs, zeroed d(logits), 3 router passes, 2
    ** unpermute passes, zeroed d(input), permute, 4 x (4 GEMMs, zeroed
    ** d(h13), SwiGLU), 2 norm passes); the embedding 1 + 1; the head 3
    ** forward (norm, GEMM, cross-entropy) + 8 backward (2 GEMMs, zeroed
    ** d(logits), cross-entropy, 2 zeroed buffers, 2 norm passes) */
    double per_mb = 2 * (23 + 45 + 22 + 36) + 2 + 11;
    ck_assert_msg(r1.kernel_calls == 4 * per_mb, "%g calls, expected %g", r1.kernel_calls, 4 * per_mb);
    ck_assert(r0.kernel_calls == r1.kernel_calls && r0.overhead_s == 0);
    ck_assert(close_rel(r1.overhead_s, r1.kernel_calls * 10e-6, 1e-12));
    /* in the step, the attention's 48 GEMM calls per layer and micro-batch
    ** run on the rank's 2 threads side by side, one (sequence, head) each */
    double par = r1.kernel_calls - 4 * 2 * 48 / 2.0;
    ck_assert_msg(close_rel(r1.step_s - r0.step_s, par * 10e-6, 1e-9), "%.17g vs %.17g", r1.step_s - r0.step_s,
                  par * 10e-6);
    /* 8 experts: 4 more segments per layer, 2 GEMMs + SwiGLU forward and 4
    ** GEMMs, zeroed d(h13), SwiGLU backward each */
    moe_config c8 = c;
    c8.num_experts = 8;
    ck_assert_int_eq(moe_config_validate(&c8), MOE_OK);
    moe_cost_report e1 = step(&c8, &hw, &o);
    hw.kernel_overhead_us = 0;
    moe_cost_report e0 = step(&c8, &hw, &o);
    double more = 4.0 * 2 * 4 * (3 + 6);
    ck_assert_msg(e1.kernel_calls - r1.kernel_calls == more, "%g more calls", e1.kernel_calls - r1.kernel_calls);
    ck_assert(close_rel((e1.step_s - e0.step_s) - (r1.step_s - r0.step_s), more * 10e-6, 1e-9));
    /* grouped GEMM: one call per expert GEMM instead of one per segment: 27
    ** fewer calls per layer (4 x 3 - 3 forward, 4 x 6 - 6 backward) */
    o.grouped_gemm = 1;
    moe_cost_report g = step(&c, &hw, &o);
    ck_assert_msg(r1.kernel_calls - g.kernel_calls == 4.0 * 2 * 27, "%g", r1.kernel_calls - g.kernel_calls);
    o.grouped_gemm = 2;
    ck_assert_int_eq(moe_costmodel_step(&c, &hw, &o, &g), MOE_ERR_USAGE);
    ck_assert_ptr_nonnull(strstr(moe_errmsg(), "grouped-gemm"));
    moe_error_clear();
    o.grouped_gemm = -1;
    /* twice the element-wise rate (softmax passes bound by their bytes
    ** too): half the element-wise time, off the step; the attention
    ** kernel's own work (2 x 4 micro-batches x 2 layers x 8 x 64 x 65 / 2
    ** causal elements at attention_gelems) is not element-wise bytes */
    hw.softmax_gelems = 1e6;
    double att = 2 * 4 * 2 * (8 * 64 * 65 / 2) / (hw.attention_gelems * 1e9);
    moe_cost_report w1 = step(&c, &hw, &o);
    hw.elementwise_gbs *= 2;
    moe_cost_report w2 = step(&c, &hw, &o);
    ck_assert(w1.elementwise_s - att > 0.1 * w1.step_s);
    ck_assert(close_rel(w2.elementwise_s - att, (w1.elementwise_s - att) / 2, 1e-9));
    ck_assert(close_rel(w1.step_s - w2.step_s, (w1.elementwise_s - att) / 2, 1e-9));
    /* softmax passes bound by their exponentials: per micro-batch the
    ** router (128 tokens x 4 experts per layer) and the cross-entropy (128 x
    ** 256); at 1e-3 G/s against 2e-3 G/s they take exactly twice as long */
    hw.elementwise_gbs = 1e6;
    hw.softmax_gelems = 1e-3;
    moe_cost_report s1 = step(&c, &hw, &o);
    hw.softmax_gelems = 2e-3;
    moe_cost_report s2 = step(&c, &hw, &o);
    double exps = 4 * (2 * 128 * 4 + 128 * 256);
    ck_assert_msg(close_rel(s1.elementwise_s - s2.elementwise_s, exps / 2e6, 1e-6), "%.17g vs %.17g",
                  s1.elementwise_s - s2.elementwise_s, exps / 2e6);
    /* the attention kernel's own work: the causal rows once forward and
    ** once backward, per micro-batch and layer; the blocked kernel (CP 2,
    ** 4 micro-batches of 32 tokens per rank) every visited 32 x 32 tile, 2
    ** ring hops x 8 (sequence, head) pairs, each way, on one of the
    ** profile's 2 threads (half its rate) */
    hw.attention_gelems = 1e-3;
    moe_cost_report a1 = step(&c, &hw, &o);
    hw.attention_gelems = 2e-3;
    moe_cost_report a2 = step(&c, &hw, &o);
    double elems = 4 * 2 * 2 * (8 * 64 * 65 / 2);
    ck_assert_msg(close_rel(a1.step_s - a2.step_s, elems / 2e6, 1e-9), "%.17g vs %.17g", a1.step_s - a2.step_s,
                  elems / 2e6);
    moe_config cp = c;
    set_layout(&cp, 2, 1, 2, 1, 1, 1);
    hw.attention_block_gelems = 1e-3;
    moe_cost_report b1 = step(&cp, &hw, &o);
    hw.attention_block_gelems = 2e-3;
    moe_cost_report b2 = step(&cp, &hw, &o);
    double tiles = 4 * 2 * 2 * (2 * 8 * 32 * 32);
    ck_assert_msg(close_rel(b1.step_s - b2.step_s, tiles / 1e6, 1e-9), "%.17g vs %.17g", b1.step_s - b2.step_s,
                  tiles / 1e6);
    hw.attention_gelems = hw.attention_block_gelems = 1e6;
    /* EP4 on 4 local ranks: each all-to-all sends 3 messages, each costing
    ** the intra-node latency; 5 exchanges per MoE layer and micro-batch
    ** (counts, dispatch and combine forward; dispatch and combine backward),
    ** 1 micro-batch per rank */
    hw = load_hw("this-machine.yaml");
    set_layout(&c, 4, 1, 1, 1, 4, 1);
    hw.oversub_lat_us = 0;
    hw.intra_lat_us = 0;
    moe_cost_report a = step(&c, &hw, &o);
    hw.intra_lat_us = 7;
    moe_cost_report b = step(&c, &hw, &o);
    ck_assert_int_eq(a.micro_batches, 1);
    double lat = 1 * 2 * 5 * 3 * 7e-6;
    ck_assert_msg(close_rel(b.comm[MOE_COMM_EP].exposed_s - a.comm[MOE_COMM_EP].exposed_s, lat, 1e-9), "%.17g vs %g",
                  b.comm[MOE_COMM_EP].exposed_s - a.comm[MOE_COMM_EP].exposed_s, lat);
    /* 4 ranks on 2 cores: every message waits at least the oversubscribed
    ** latency for a core, which runs the other ranks meanwhile: waits up to
    ** half (1 - slice) of the rank's compute and optimizer cost nothing,
    ** beyond that they add one for one; comm[] keeps the links' own
    ** latencies. On 2 ranks (one per core) none of it applies. */
    hw.oversub_lat_us = 20;
    moe_cost_report ov = step(&c, &hw, &o);
    ck_assert(ov.comm[MOE_COMM_EP].exposed_s == b.comm[MOE_COMM_EP].exposed_s && ov.step_s == b.step_s);
    ck_assert(ov.core_wait_s == 0 && ov.core_wait_filled_s >= 13e-6 * 30); /* 20 - 7 us over 30 EP messages */
    double cw[3];
    for (int k = 1; k <= 3; k++) { /* 0.1 s a message: far beyond the compute */
        hw.oversub_lat_us = 1e5 * k;
        moe_cost_report w = step(&c, &hw, &o);
        ck_assert(close_rel(w.core_wait_filled_s, 0.5 * (w.compute_s + w.optimizer_s), 1e-12));
        ck_assert(close_rel(w.step_s, b.step_s + w.core_wait_s, 1e-12));
        cw[k - 1] = w.core_wait_s;
    }
    double msgs = (cw[1] - cw[0]) / 0.1; /* messages on the step's path, each waiting the whole latency */
    ck_assert_msg(msgs >= 30 && fabs(msgs - round(msgs)) < 1e-6 && close_rel(cw[2] - cw[1], cw[1] - cw[0], 1e-9),
                  "%.9g messages", msgs);
    set_layout(&c, 2, 1, 1, 1, 2, 1);
    moe_cost_report two = step(&c, &hw, &o);
    hw.oversub_lat_us = 0;
    moe_cost_report two0 = step(&c, &hw, &o);
    ck_assert(two.step_s == two0.step_s && two.core_wait_s == 0 && two.core_wait_filled_s == 0);
    set_layout(&c, 4, 1, 1, 1, 4, 1);
    /* a shared machine of 2 cores: 4 ranks time-share them, so each kernel
    ** call's overhead doubles; 2 ranks run one thread each, so a profile
    ** measured with 1 thread gives each rank its rates whole, one measured
    ** with 2 threads half of them (everything but the overhead twice as long) */
    ck_assert(hw.shared && hw.cores == 2);
    ck_assert(close_rel(b.overhead_s, b.kernel_calls * 2 * hw.kernel_overhead_us * 1e-6, 1e-12));
    set_layout(&c, 2, 1, 1, 1, 1, 1);
    hw.threads = 1;
    moe_cost_report t1 = step(&c, &hw, &o);
    hw.threads = 2;
    moe_cost_report t2 = step(&c, &hw, &o);
    ck_assert(close_rel(t1.overhead_s, t1.kernel_calls * hw.kernel_overhead_us * 1e-6, 1e-12));
    ck_assert(close_rel(t2.compute_s - t2.overhead_s, 2 * (t1.compute_s - t1.overhead_s), 1e-12));
    ck_assert(close_rel(t2.mfu, t2.flops_per_token * t2.tokens_per_s / (hw.gemm_tflops * 1e12), 1e-12));
}
END_TEST

// ----------------------------------------------------------------------------
// hardware profiles

static const char *GOOD =
    "name: test\n"
    "dtype: {value: bf16, source: \"a\"}\n"
    "gemm_tflops: {value: 100, source: \"b\"}\n"
    "gemm_efficiency: {value: 0.5, source: \"c\"}\n"
    "mem_bw_gbs: {value: 1000, source: \"d\"}\n"
    "mem_gib: {value: 40, source: \"e\"}\n"
    "ranks_per_node: {value: 4, source: \"f\"}\n"
    "shared: {value: 0, source: \"g\"}\n"
    "intra_node_gbs: {value: 100, source: \"h\"}\n"
    "intra_node_latency_us: {value: 2, source: \"i\"}\n"
    "inter_node_gbs:\n"
    "  value: 10\n"
    "  source: \"j\"\n"
    "inter_node_latency_us: {value: 8, source: \"k\"}\n"
    "link_efficiency: {value: 0.9, source: \"l\"}\n"
    "kernel_overhead_us: {value: 3, source: \"m\"}\n"
    "elementwise_gbs: {value: 800, source: \"n\"}\n"
    "softmax_gelems: {value: 1000, source: \"o\"}\n"
    "attention_gelems: {value: 900, source: \"o2\"}\n"
    "attention_block_gelems: {value: 800, source: \"o3\"}\n"
    "optimizer_gparams: {value: 0.5, source: \"o4\"}\n"
    "cores: {value: 1, source: \"p\"}\n"
    "threads: {value: 1, source: \"q\"}\n"
    "oversubscribed_latency_us: {value: 30, source: \"r\"}\n"
    "inter_node_burst_kb: {value: 0, source: \"s\"}\n";

/* GOOD with the line starting with `key` replaced by `with` ("" drops it),
** loaded into *out when out is not NULL. */
static moe_status load_variant_into(const char *key, const char *with, char *msg, size_t cap, moe_hwprofile *out)
{
    char dir[512], path[600], text[4096] = "";
    tu_tmpdir(dir, sizeof dir, "hwprofile");
    snprintf(path, sizeof path, "%s/p.yaml", dir);
    const char *p = GOOD;
    while (*p) {
        const char *e = strchr(p, '\n');
        size_t len = (size_t)(e - p) + 1;
        int multi = strncmp(p, "inter_node_gbs:", 15) == 0; /* spans three lines */
        if (key && strncmp(p, key, strlen(key)) == 0 && p[strlen(key)] == ':') {
            strcat(text, with);
            for (int k = 0; k < (multi ? 3 : 1); k++)
                p = strchr(p, '\n') + 1;
            continue;
        }
        strncat(text, p, len);
        p += len;
    }
    tu_write(path, text);
    moe_error_clear();
    moe_hwprofile hw;
    moe_status st = moe_hwprofile_load(path, &hw);
    snprintf(msg, cap, "%s", moe_errmsg());
    moe_error_clear();
    if (out && st == MOE_OK)
        *out = hw;
    return st;
}

static moe_status load_variant(const char *key, const char *with, char *msg, size_t cap)
{
    return load_variant_into(key, with, msg, cap, NULL);
}

/* this-machine.yaml plus `extra`, loaded. */
static moe_status load_with_table(const char *extra, moe_hwprofile *hw)
{
    char dir[512], path[600];
    tu_tmpdir(dir, sizeof dir, "hw_table");
    snprintf(path, sizeof path, "%s/hw.yaml", dir);
    tu_write_after(path, HW_DIR "/this-machine.yaml", extra);
    return moe_hwprofile_load(path, hw);
}

START_TEST(test_gemm_efficiency_table)
{
    moe_hwprofile hw;
    const char *table = "gemm_efficiency_table:\n  source: \"test\"\n  points: [[1e6, 0.1], [1e8, 0.5], [1e10, 0.6]]\n";
    ck_assert_int_eq(load_with_table(table, &hw), MOE_OK);
    ck_assert_int_eq(hw.eff.points, 3);
    /* log-scale interpolation, clamped at the ends */
    ck_assert(close_rel(moe_hwprofile_gemm_efficiency(&hw, 1e7), 0.3, 1e-12));
    ck_assert(close_rel(moe_hwprofile_gemm_efficiency(&hw, 1e9), 0.55, 1e-12));
    ck_assert(close_rel(moe_hwprofile_gemm_efficiency(&hw, 1e3), 0.1, 1e-12));
    ck_assert(close_rel(moe_hwprofile_gemm_efficiency(&hw, 1e12), 0.6, 1e-12));
    /* the model uses it: small GEMMs at 0.1-0.3 instead of 0.6 make tiny slower;
    ** --gemm-efficiency overrides the table; no table = the single factor */
    moe_hwprofile plain = load_hw("this-machine.yaml");
    ck_assert(close_rel(moe_hwprofile_gemm_efficiency(&plain, 1e7), plain.gemm_efficiency, 0));
    moe_config c = tiny();
    moe_cost_opts o;
    moe_cost_opts_default(&o);
    moe_cost_report a = step(&c, &plain, &o), b = step(&c, &hw, &o);
    ck_assert(b.compute_s > 1.5 * a.compute_s);
    o.gemm_efficiency = plain.gemm_efficiency;
    moe_cost_report d = step(&c, &hw, &o);
    ck_assert(close_rel(d.compute_s, a.compute_s, 1e-12));
    /* the cached table: its own values where given, else the table's; in
    ** the model only the fp32 attention kernels' GEMMs take it, so a cached
    ** table at full efficiency shortens tiny's step by less than its
    ** attention (the rest unchanged), CP 2's too */
    ck_assert(close_rel(moe_hwprofile_gemm_efficiency_cached(&hw, 1e7), 0.3, 1e-12));
    const char *both = "gemm_efficiency_table:\n  source: \"test\"\n  points: [[1e6, 0.1], [1e8, 0.5], [1e10, 0.6]]\n"
                       "gemm_efficiency_table_cached:\n  source: \"test\"\n  points: [[1e6, 1], [1e10, 1]]\n";
    moe_hwprofile hc;
    o.gemm_efficiency = -1;
    ck_assert_int_eq(load_with_table(both, &hc), MOE_OK);
    ck_assert(hc.eff_cached.points == 2 && moe_hwprofile_gemm_efficiency_cached(&hc, 1e7) == 1);
    ck_assert(close_rel(moe_hwprofile_gemm_efficiency(&hc, 1e7), 0.3, 1e-12));
    for (int cp = 1; cp <= 2; cp++) {
        moe_config cc = tiny();
        set_layout(&cc, cp, 1, cp, 1, 1, 1);
        moe_cost_report u = step(&cc, &hw, &o), v = step(&cc, &hc, &o);
        ck_assert_msg(v.compute_s < u.compute_s && v.compute_s > 0.5 * u.compute_s, "cp %d: %g vs %g", cp, v.compute_s,
                      u.compute_s);
    }
    /* refusals: unsorted, out of range, one point, no source, bad shape; a
    ** cached table without the table, or unsorted */
    const char *bad[] = {
        "gemm_efficiency_table:\n  source: \"t\"\n  points: [[1e8, 0.5], [1e6, 0.1]]\n",
        "gemm_efficiency_table:\n  source: \"t\"\n  points: [[1e6, 0.1], [1e8, 1.5]]\n",
        "gemm_efficiency_table:\n  source: \"t\"\n  points: [[1e6, 0.1]]\n",
        "gemm_efficiency_table:\n  points: [[1e6, 0.1], [1e8, 0.5]]\n",
        "gemm_efficiency_table:\n  source: \"t\"\n  points: [[1e6, 0.1, 3], [1e8, 0.5]]\n",
        "gemm_efficiency_table:\n  source: \"t\"\n  points: [1e6, 0.1]\n",
        "gemm_efficiency_table_cached:\n  source: \"t\"\n  points: [[1e6, 0.1], [1e8, 0.5]]\n",
        "gemm_efficiency_table:\n  source: \"t\"\n  points: [[1e6, 0.1], [1e8, 0.5]]\n"
        "gemm_efficiency_table_cached:\n  source: \"t\"\n  points: [[1e6, 0.1], [1e5, 0.5]]\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(load_with_table(bad[i], &hw), MOE_ERR_USAGE);
        ck_assert_ptr_nonnull(strstr(moe_errmsg(), "gemm_efficiency_table"));
        moe_error_clear();
    }
}
END_TEST

START_TEST(test_optimizer_rate)
{
    /* One rank of a profile measured with one thread on one core (its whole
    ** rates). fp32: the parameters at optimizer_gparams (1e6/s: seconds a
    ** million), plus each gradient's 4 B zeroed at mem_bw_gbs; bf16: 34 B a
    ** parameter at mem_bw_gbs, optimizer_gparams unused. */
    moe_config c = tiny();
    moe_hwprofile hw = load_hw("this-machine.yaml");
    hw.cores = hw.threads = 1;
    moe_cost_opts o;
    moe_cost_opts_default(&o);
    hw.optimizer_gparams = 1e-3;
    moe_cost_report r1 = step(&c, &hw, &o);
    hw.optimizer_gparams = 2e-3;
    moe_cost_report r2 = step(&c, &hw, &o);
    double params = r1.mem_params / 4, zero = params * 4 / (hw.mem_bw_gbs * 1e9);
    ck_assert_msg(close_rel(r1.optimizer_s, params / 1e6 + zero, 1e-9), "%.17g", r1.optimizer_s);
    ck_assert(close_rel(r1.optimizer_s - r2.optimizer_s, params / 2e6, 1e-9));
    ck_assert(close_rel(r1.step_s - r2.step_s, params / 2e6, 1e-9));
    o.precision = MOE_PREC_BF16;
    moe_cost_report b2 = step(&c, &hw, &o);
    hw.optimizer_gparams = 1e-3;
    moe_cost_report b1 = step(&c, &hw, &o);
    ck_assert(b1.optimizer_s == b2.optimizer_s);
    ck_assert(close_rel(b1.optimizer_s, params * (34 + 4) / (hw.mem_bw_gbs * 1e9), 1e-9));
}
END_TEST

/* What calibrate divides the attention kernels' own time by: tiny's
** micro-batch (2 sequences of 64, 4 heads of 16). CP 1: 8 x 64 x 65 / 2
** causal elements, 3 calls (1 forward, 2 backward); CP 2: 16 tiles of 32 x
** 32, 7 calls (init, 2 hops, finish; prep, 2 hops); small (4 x 256, 8 heads
** of 64) on CP 2: 64 x 64 tiles, chunks of 64, 2 diagonal and 3 whole chunk
** pairs per (sequence, head); on CP 4 (chunks of 32, Tl 64) one tile a hop. */
START_TEST(test_attention_parts)
{
    double e, p;
    moe_cost_attention_parts(2, 64, 4, 16, 1, &e, &p);
    ck_assert(e == 8 * 64 * 65 / 2 && p == 3);
    moe_cost_attention_parts(2, 64, 4, 16, 2, &e, &p);
    ck_assert(e == 16 * 32 * 32 && p == 7);
    moe_cost_attention_parts(4, 256, 8, 64, 2, &e, &p);
    ck_assert_msg(e == 32 * (2 * 1 + 3 * 1) * 64 * 64, "%g", e);
    moe_cost_attention_parts(4, 256, 8, 64, 4, &e, &p);
    ck_assert(e == 32 * 4 * 64 * 64 && p == 6 + 5);
}
END_TEST

START_TEST(test_profile_refusals)
{
    char msg[1024];
    ck_assert_msg(load_variant(NULL, "", msg, sizeof msg) == MOE_OK, "%s", msg);
    struct {
        const char *key, *with, *expect;
    } cases[] = {
        {"mem_bw_gbs", "", "missing key 'mem_bw_gbs'"},
        {"name", "", "missing key 'name'"},
        {"gemm_tflops", "gemm_tflops: 100\n", "no source"},
        {"gemm_tflops", "gemm_tflops: {value: 100}\n", "no source"},
        {"gemm_tflops", "gemm_tflops: {value: 100, source: \"\"}\n", "no source"},
        {"gemm_tflops", "gemm_tflops: {value: fast, source: \"x\"}\n", "not a number"},
        {"gemm_tflops", "gemm_tflops: {value: 100, source: \"x\", unit: tflops}\n", "unknown key 'unit'"},
        {"gemm_efficiency", "gemm_efficiency: {value: 1.5, source: \"x\"}\n", "out of range"},
        {"ranks_per_node", "ranks_per_node: {value: 2.5, source: \"x\"}\n", "not an integer"},
        {"dtype", "dtype: {value: fp8, source: \"x\"}\n", "not bf16 or fp32"},
        {"shared", "shared: {value: 0, source: \"g\"}\nshared: {value: 0, source: \"g\"}\n", "given twice"},
        {"shared", "shared: {value: 0, source: \"g\"}\nflops: {value: 1, source: \"g\"}\n", "unknown key 'flops'"},
        {"inter_node_gbs", "inter_node_gbs: [10, 20]\n", "mapping with value and source"},
        {"link_efficiency", "link_efficiency: {value: 0.9, source: \"l\"\n", "malformed YAML"},
        {"kernel_overhead_us", "", "missing key 'kernel_overhead_us'"},
        {"elementwise_gbs", "", "missing key 'elementwise_gbs'"},
        {"kernel_overhead_us", "kernel_overhead_us: 3\n", "kernel_overhead_us = 3 has no source"},
        {"kernel_overhead_us", "kernel_overhead_us: {value: -1, source: \"x\"}\n", "kernel_overhead_us: -1 is out of range"},
        {"kernel_overhead_us", "kernel_overhead_us: {value: 2e4, source: \"x\"}\n", "out of range [0, 10000]"},
        {"elementwise_gbs", "elementwise_gbs: {value: 0, source: \"x\"}\n", "elementwise_gbs: 0 is out of range"},
        {"elementwise_gbs", "elementwise_gbs: {value: fast, source: \"x\"}\n", "elementwise_gbs: 'fast' is not a number"},
        {"attention_gelems", "", "missing key 'attention_gelems'"},
        {"attention_block_gelems", "attention_block_gelems: {value: 0, source: \"x\"}\n", "out of range"},
        {"optimizer_gparams", "", "missing key 'optimizer_gparams'"},
        {"optimizer_gparams", "optimizer_gparams: {value: 0, source: \"x\"}\n", "out of range"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        moe_status st = load_variant(cases[i].key, cases[i].with, msg, sizeof msg);
        ck_assert_msg(st == MOE_ERR_USAGE, "case %zu accepted", i);
        ck_assert_msg(strstr(msg, cases[i].expect), "case %zu: '%s' lacks '%s'", i, msg, cases[i].expect);
    }
    moe_hwprofile g;
    ck_assert_int_eq(load_variant_into(NULL, "", msg, sizeof msg, &g), MOE_OK);
    ck_assert(g.kernel_overhead_us == 3 && g.elementwise_gbs == 800);
    ck_assert(g.attention_gelems == 900 && g.attention_block_gelems == 800 && g.optimizer_gparams == 0.5);
    ck_assert_str_eq(g.source[MOE_HW_OPTIMIZER_GPARAMS], "o4");
    ck_assert_str_eq(g.source[MOE_HW_ATTENTION_BLOCK_GELEMS], "o3");
    ck_assert_str_eq(g.source[MOE_HW_KERNEL_OVERHEAD_US], "m");
    ck_assert_int_eq(load_variant_into("kernel_overhead_us", "kernel_overhead_us: {value: 0, source: \"x\"}\n", msg,
                                       sizeof msg, &g), MOE_OK);
    ck_assert(g.kernel_overhead_us == 0);
    /* the shipped profiles load, and every field given has a source (the GPUs have no core_cache_kb) */
    const char *names[] = {"this-machine.yaml", "h100-sxm.yaml", "a100-sxm.yaml", "h800.yaml",
                           "this-machine-calibrated.yaml", "this-machine-calibrated-1t.yaml"};
    for (int i = 0; i < 6; i++) {
        moe_hwprofile hw = load_hw(names[i]);
        for (int k = 0; k < MOE_HW_NFIELDS; k++)
            ck_assert_msg(strlen(hw.source[k]) > 10 || (k == MOE_HW_CORE_CACHE_KB && hw.core_cache_kb == 0), "%s: %s", names[i], moe_hw_field_key((moe_hw_field)k));
    }
    moe_hwprofile h = load_hw("h100-sxm.yaml");
    ck_assert(h.gemm_tflops == 989 && h.mem_bw_gbs == 3350 && h.intra_gbs == 450 && h.inter_gbs == 50);
    ck_assert(h.kernel_overhead_us == 5 && h.elementwise_gbs == 3350);
    ck_assert_int_eq(moe_hwprofile_dtype_bytes(&h), 2);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("costmodel");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_flops_match_runtime);
    tcase_add_test(tc, test_memory_by_hand);
    tcase_add_test(tc, test_does_not_fit_refused);
    tcase_add_test(tc, test_ranking_by_throughput);
    tcase_add_test(tc, test_pipeline_against_pp_schedule);
    tcase_add_test(tc, test_links_and_volumes);
    tcase_add_test(tc, test_burst_credit);
    tcase_add_test(tc, test_moe_layer_fwd);
    tcase_add_test(tc, test_kernel_terms);
    tcase_add_test(tc, test_attention_parts);
    tcase_add_test(tc, test_optimizer_rate);
    tcase_add_test(tc, test_profile_refusals);
    tcase_add_test(tc, test_gemm_efficiency_table);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
