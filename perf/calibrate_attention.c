/*
** calibrate_attention.c: the attention rates of `moe bench calibrate`
** (contract in calibrate_attention.h).
*/
#include "perf/calibrate_attention.h"

#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "layers/attention.h"
#include "layers/attention_block.h"
#include "layers/gemm.h"
#include "perf/bench.h"
#include "planner/costmodel.h"
#include "runtime/base/mem.h"
#include "runtime/base/timer.h"

#define NRUN 101

typedef struct {
    int B, T, NH, NKV, HD;
} att_shape;

/* configs/tiny.yaml at micro-batch 2, configs/small.yaml at 4 */
static const att_shape SHAPES[2] = {{2, 64, 4, 2, 16}, {4, 256, 8, 8, 64}};

typedef struct {
    float *qkv, *out, *att, *scratch, *dqkv, *dout;         /* CP = 1 */
    float *acc, *mx, *l, *lse, *D, *kv, *dkv;               /* CP = 2 */
    int32_t *pos_q, *pos_k;
} att_bufs;

static void bufs_free(att_bufs *a)
{
    float *f[] = {a->qkv, a->out, a->att, a->scratch, a->dqkv, a->dout, a->acc,
                  a->mx,  a->l,   a->lse, a->D,       a->kv,   a->dkv};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++)
        moe_free(f[i]);
    moe_free(a->pos_q);
    moe_free(a->pos_k);
}

static moe_status fill(float **p, size_t n)
{
    MOE_TRY(moe_alloc((void **)p, n * sizeof **p, "calibrate attention buffers"));
    for (size_t i = 0; i < n; i++)
        (*p)[i] = (float)((i * 7) % 13) * 0.01f - 0.06f;
    return MOE_OK;
}

static moe_status bufs_alloc(const att_shape *s, att_bufs *a)
{
    memset(a, 0, sizeof *a);
    size_t B = (size_t)s->B, T = (size_t)s->T, NH = (size_t)s->NH, HD = (size_t)s->HD;
    size_t qkv = B * T * (NH + 2 * (size_t)s->NKV) * HD, y = B * T * NH * HD, tt = B * NH * T * T;
    float **f[] = {&a->qkv, &a->out, &a->att, &a->scratch, &a->dqkv, &a->dout,
                   &a->acc, &a->mx, &a->l, &a->lse, &a->D, &a->kv, &a->dkv};
    size_t n[] = {qkv, y, tt, tt, qkv, y, y, B * NH * T, B * NH * T, B * NH * T, B * NH * T, qkv, qkv};
    for (size_t i = 0; i < sizeof n / sizeof *n; i++)
        MOE_TRY(fill(f[i], n[i]));
    MOE_TRY(moe_alloc((void **)&a->pos_q, T * sizeof(int32_t), "calibrate attention positions"));
    MOE_TRY(moe_alloc((void **)&a->pos_k, T * sizeof(int32_t), "calibrate attention positions"));
    /* CP = 2, rank 0 (model_attn.c's positions_of): chunks 0 and 3 of four;
    ** the peer's block holds chunks 1 and 2 */
    int Tl = s->T / 2, ch = s->T / 4;
    for (int i = 0; i < Tl; i++) {
        a->pos_q[i] = i < ch ? i : 3 * ch + (i - ch);
        a->pos_k[i] = i < ch ? ch + i : 2 * ch + (i - ch);
    }
    return MOE_OK;
}

/* One layer's attention core forward and backward, CP = 1 or what one rank
** of CP = 2 runs. */
static void run_once(const att_shape *s, att_bufs *a, int cp)
{
    int B = s->B, T = s->T, NH = s->NH, NKV = s->NKV, HD = s->HD, QS = NH + 2 * NKV;
    if (cp == 1) {
        moe_attention_forward(a->out, a->att, a->qkv, B, T, NH, NKV, HD);
        moe_attention_backward(a->dqkv, a->scratch, a->dout, a->att, a->qkv, B, T, NH, NKV, HD);
        return;
    }
    int Tl = T / 2;
    moe_attn_block_init(a->acc, a->mx, a->l, B, Tl, NH, HD);
    moe_attn_block_forward(a->acc, a->mx, a->l, a->qkv, QS, a->qkv, QS, NH, NH + NKV, a->pos_q, a->pos_q, B, Tl, Tl,
                           NH, NKV, HD);
    moe_attn_block_forward(a->acc, a->mx, a->l, a->qkv, QS, a->kv, 2 * NKV, 0, NKV, a->pos_q, a->pos_k, B, Tl, Tl,
                           NH, NKV, HD);
    moe_attn_block_finish(a->out, a->lse, a->acc, a->mx, a->l, B, Tl, NH, HD);
    moe_attn_block_backward_prep(a->D, a->out, a->dout, B, Tl, NH, HD);
    moe_attn_block_backward(a->dqkv, QS, a->dkv, 2 * NKV, 0, NKV, a->dout, a->lse, a->D, a->qkv, QS, a->qkv, QS,
                            NH, NH + NKV, a->pos_q, a->pos_q, B, Tl, Tl, NH, NKV, HD);
    moe_attn_block_backward(a->dqkv, QS, a->dkv, 2 * NKV, 0, NKV, a->dout, a->lse, a->D, a->qkv, QS, a->kv,
                            2 * NKV, 0, NKV, a->pos_q, a->pos_k, B, Tl, Tl, NH, NKV, HD);
}

/* Every thread of the OpenMP team times its GEMM calls into acc[thread] (acc
** NULL: none does). */
static void gemm_timers(double *acc)
{
#pragma omp parallel
    moe_gemm_timer(acc ? &acc[omp_get_thread_num()] : NULL);
}

/* Medians over NRUN runs after one warm-up: seconds of run_once (*wall) and
** of it outside its GEMMs (*own: the run less the GEMM seconds of all
** threads over the threads, the kernels running their (sequence, head)
** pairs side by side). */
static void median_run(const att_shape *s, att_bufs *a, int cp, double *wall, double *own)
{
    double t[NRUN], o[NRUN];
    int nt = omp_get_max_threads();
    double acc[nt];
    run_once(s, a, cp);
    gemm_timers(acc);
    for (int r = 0; r < NRUN; r++) {
        memset(acc, 0, sizeof acc);
        double t0 = moe_now();
        run_once(s, a, cp);
        t[r] = moe_now() - t0;
        double g = 0;
        for (int i = 0; i < nt; i++)
            g += acc[i];
        o[r] = t[r] - g / nt;
    }
    gemm_timers(NULL);
    qsort(t, NRUN, sizeof *t, moe_bench_cmp_double);
    qsort(o, NRUN, sizeof *o, moe_bench_cmp_double);
    *wall = t[NRUN / 2], *own = o[NRUN / 2];
}

moe_status moe_calibrate_attention(double kern_s, moe_attention_rates *out)
{
    memset(out, 0, sizeof *out);
    double elems[2] = {0, 0}, secs[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        const att_shape *s = &SHAPES[i];
        att_bufs a;
        moe_status st = bufs_alloc(s, &a);
        for (int c = 0; c < 2 && st == MOE_OK; c++) {
            double wall, own, e, passes;
            median_run(s, &a, c + 1, &wall, &own);
            moe_cost_attention_parts(s->B, s->T, s->NH, s->HD, c + 1, &e, &passes);
            own -= passes * kern_s; /* the model charges each call's overhead apart */
            out->us[c][i] = wall * 1e6, out->own_us[c][i] = own * 1e6;
            if (own <= 0)
                st = moe_fail(MOE_ERR_SYSTEM,
                              "calibrate attention: the %s kernel (B %d, T %d) spent %.1f of its %.1f us outside its "
                              "GEMMs and call overheads: no rate to solve for",
                              c ? "blocked" : "CP = 1", s->B, s->T, own * 1e6, wall * 1e6);
            else {
                (c ? (i ? &out->small_block : &out->tiny_block) : (i ? &out->small_gelems : &out->tiny_gelems))[0] =
                    2 * e / own / 1e9;
                elems[c] += 2 * e, secs[c] += own;
            }
        }
        bufs_free(&a);
        MOE_TRY(st);
    }
    out->gelems = elems[0] / secs[0] / 1e9, out->block_gelems = elems[1] / secs[1] / 1e9;
    return MOE_OK;
}
