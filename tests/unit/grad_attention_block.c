/*
** Block attention (attention_block.h) in double precision.
**
** Context-parallel layout: CP ranks, 2*CP chunks of T/(2*CP) rows, rank r
** holding chunks r and 2*CP-1-r (the load-balanced causal split). Each rank's
** queries merge every rank's K/V block (its own straight from its packed qkv,
** the peers' as 2*NKV-slot blocks) in ring order and in the reverse order;
** the finished rows must equal moe_d_attention_forward's rows, lse a naive
** log-sum-exp, and the gradients summed over blocks (dK/dV of a peer's block
** "sent back" to it) moe_d_attention_backward's dqkv. Then central finite
** differences through init/forward/finish/prep/backward on unsorted
** positions, and the masking rules: rows without a visible key stay bitwise
** untouched, and results do not depend on the thread count.
*/
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "layers/attention.h"
#include "layers/attention_block.h"

#define CP_MAX 4

/* ---- a naive reference over one (B, Tk, KS, HD) key block ---- */

// out (B, Tq, NH, HD), lse (B, NH, Tq); a row with no visible key: out 0, lse -inf
static void naive_attention(double *out, double *lse, const double *q, int QS, const double *kv,
                            int KS, int k_off, int v_off, const int32_t *pq, const int32_t *pk,
                            int B, int Tq, int Tk, int NH, int NKV, int HD)
{
    double *s = gc_alloc((size_t)Tk);
    int G = NH / NKV;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < Tq; i++) {
                const double *qi = q + ((size_t)b * Tq + i) * QS * HD + (size_t)h * HD;
                double mx = -INFINITY, z = 0;
                for (int j = 0; j < Tk; j++) {
                    const double *kj = kv + ((size_t)b * Tk + j) * KS * HD + (size_t)(k_off + h / G) * HD;
                    s[j] = 0;
                    for (int d = 0; d < HD; d++)
                        s[j] += qi[d] * kj[d];
                    s[j] /= sqrt(HD);
                    if (pk[j] <= pq[i])
                        mx = fmax(mx, s[j]);
                }
                for (int j = 0; j < Tk; j++)
                    z += (s[j] = pk[j] <= pq[i] ? exp(s[j] - mx) : 0.0);
                double *o = out + (((size_t)b * Tq + i) * NH + h) * HD;
                for (int d = 0; d < HD; d++) {
                    o[d] = 0;
                    for (int j = 0; j < Tk; j++)
                        if (s[j] != 0)
                            o[d] += s[j] / z *
                                    kv[((size_t)b * Tk + j) * KS * HD + (size_t)(v_off + h / G) * HD + d];
                }
                lse[((size_t)b * NH + h) * Tq + i] = z > 0 ? mx + log(z) : -INFINITY;
            }
    free(s);
}

/* ---- the context-parallel layout ---- */

typedef struct {
    int Tl;
    int32_t pos[512];
    double *qkv;        // (B, Tl, C): the global qkv rows at pos
    double *kvx;        // (B, Tl, 2*NKV, HD): K then V heads, what goes round the ring
    double *acc, *mx, *l, *out, *lse, *dout, *D;
    double *dqkv, *dkvx;            // gradients of qkv and of kvx, prefilled with a base
    double *base_dqkv, *base_dkvx;  // that base
} shard;

typedef struct {
    int B, T, NH, NKV, HD, CP, C;
    double *qkv, *r;            // (B, T, C); dout (B, T, NH, HD)
    double *out_ref, *dqkv_ref; // moe_d_attention_forward / backward on the whole sequence
    shard sh[CP_MAX];
} cp_case;

static cp_case cp_make(int B, int T, int NH, int NKV, int HD, int CP, uint64_t seed)
{
    cp_case c = {.B = B, .T = T, .NH = NH, .NKV = NKV, .HD = HD, .CP = CP, .C = NH + 2 * NKV};
    ck_assert(CP <= CP_MAX && T % (2 * CP) == 0 && T / CP <= 512);
    size_t nq = (size_t)B * T * c.C * HD, no = (size_t)B * T * NH * HD;
    c.qkv = gc_alloc(nq);
    gc_fill_normal(c.qkv, nq, seed, 1.0);
    c.r = gc_alloc(no);
    gc_fill_normal(c.r, no, seed + 1, 0.1);
    c.out_ref = gc_alloc(no);
    c.dqkv_ref = gc_alloc(nq);
    double *att = gc_alloc((size_t)B * NH * T * T), *scratch = gc_alloc((size_t)B * NH * T * T);
    moe_d_attention_forward(c.out_ref, att, c.qkv, B, T, NH, NKV, HD);
    moe_d_attention_backward(c.dqkv_ref, scratch, c.r, att, c.qkv, B, T, NH, NKV, HD);
    free(att);
    free(scratch);

    int chunk = T / (2 * CP), Tl = T / CP, C = c.C;
    for (int r = 0; r < CP; r++) {
        shard *s = &c.sh[r];
        s->Tl = Tl;
        for (int i = 0; i < chunk; i++) {
            s->pos[i] = r * chunk + i;
            s->pos[chunk + i] = (2 * CP - 1 - r) * chunk + i;
        }
        size_t nl = (size_t)B * Tl * C * HD, nx = (size_t)B * Tl * 2 * NKV * HD;
        size_t nst = (size_t)B * NH * Tl, nol = (size_t)B * Tl * NH * HD;
        s->qkv = gc_alloc(nl);
        s->kvx = gc_alloc(nx);
        s->dout = gc_alloc(nol);
        for (int b = 0; b < B; b++)
            for (int i = 0; i < Tl; i++) {
                size_t g = (size_t)b * T + s->pos[i], lr = (size_t)b * Tl + i;
                memcpy(s->qkv + lr * C * HD, c.qkv + g * C * HD, (size_t)C * HD * sizeof(double));
                memcpy(s->kvx + lr * 2 * NKV * HD, c.qkv + g * C * HD + (size_t)NH * HD,
                       (size_t)2 * NKV * HD * sizeof(double));
                memcpy(s->dout + lr * NH * HD, c.r + g * NH * HD, (size_t)NH * HD * sizeof(double));
            }
        s->acc = gc_alloc(nol);
        s->out = gc_alloc(nol);
        s->mx = gc_alloc(nst);
        s->l = gc_alloc(nst);
        s->lse = gc_alloc(nst);
        s->D = gc_alloc(nst);
        s->dqkv = gc_alloc(nl);
        s->base_dqkv = gc_alloc(nl);
        gc_fill_normal(s->base_dqkv, nl, seed + 10 + r, 1.0);
        s->dkvx = gc_alloc(nx);
        s->base_dkvx = gc_alloc(nx);
        gc_fill_normal(s->base_dkvx, nx, seed + 20 + r, 1.0);
    }
    return c;
}

static void cp_drop(cp_case *c)
{
    for (int r = 0; r < c->CP; r++) {
        shard *s = &c->sh[r];
        free(s->qkv); free(s->kvx); free(s->dout); free(s->acc); free(s->out); free(s->mx);
        free(s->l); free(s->lse); free(s->D); free(s->dqkv); free(s->base_dqkv);
        free(s->dkvx); free(s->base_dkvx);
    }
    free(c->qkv); free(c->r); free(c->out_ref); free(c->dqkv_ref);
}

// the s-th block rank r merges: ring order (own, r-1, r-2, ...) or its reverse (own last)
static int block_of(const cp_case *c, int r, int s, int reverse)
{
    return reverse ? (r + 1 + s) % c->CP : (r - s + c->CP) % c->CP;
}

// rank r's view of rank p's K/V: its own packed qkv, or the peer's 2*NKV-slot block
static const double *kv_view(const cp_case *c, int r, int p, int *KS, int *k_off, int *v_off)
{
    if (p == r) {
        *KS = c->C, *k_off = c->NH, *v_off = c->NH + c->NKV;
        return c->sh[r].qkv;
    }
    *KS = 2 * c->NKV, *k_off = 0, *v_off = c->NKV;
    return c->sh[p].kvx;
}

static void cp_forward(cp_case *c, int reverse)
{
    for (int r = 0; r < c->CP; r++) {
        shard *s = &c->sh[r];
        moe_d_attn_block_init(s->acc, s->mx, s->l, c->B, s->Tl, c->NH, c->HD);
        for (int k = 0; k < c->CP; k++) {
            int p = block_of(c, r, k, reverse), KS, ko, vo;
            const double *kv = kv_view(c, r, p, &KS, &ko, &vo);
            moe_d_attn_block_forward(s->acc, s->mx, s->l, s->qkv, c->C, kv, KS, ko, vo, s->pos,
                                     c->sh[p].pos, c->B, s->Tl, c->sh[p].Tl, c->NH, c->NKV, c->HD);
        }
        moe_d_attn_block_finish(s->out, s->lse, s->acc, s->mx, s->l, c->B, s->Tl, c->NH, c->HD);
    }
}

// after cp_forward: every rank's backward over every block into the prefilled gradients
static void cp_backward(cp_case *c, int reverse)
{
    for (int r = 0; r < c->CP; r++) {
        shard *s = &c->sh[r];
        size_t nl = (size_t)c->B * s->Tl * c->C * c->HD, nx = (size_t)c->B * s->Tl * 2 * c->NKV * c->HD;
        memcpy(s->dqkv, s->base_dqkv, nl * sizeof(double));
        memcpy(s->dkvx, s->base_dkvx, nx * sizeof(double));
    }
    for (int r = 0; r < c->CP; r++) {
        shard *s = &c->sh[r];
        moe_d_attn_block_backward_prep(s->D, s->out, s->dout, c->B, s->Tl, c->NH, c->HD);
        for (int k = 0; k < c->CP; k++) {
            int p = block_of(c, r, k, reverse), KS, ko, vo;
            const double *kv = kv_view(c, r, p, &KS, &ko, &vo);
            double *dkv = p == r ? s->dqkv : c->sh[p].dkvx;
            int dKS = p == r ? c->C : 2 * c->NKV, dko = p == r ? c->NH : 0;
            int dvo = p == r ? c->NH + c->NKV : c->NKV;
            moe_d_attn_block_backward(s->dqkv, c->C, dkv, dKS, dko, dvo, s->dout, s->lse, s->D,
                                      s->qkv, c->C, kv, KS, ko, vo, s->pos, c->sh[p].pos, c->B,
                                      s->Tl, c->sh[p].Tl, c->NH, c->NKV, c->HD);
        }
    }
}

static void check_cp_forward(cp_case *c, const char *what)
{
    int B = c->B, NH = c->NH, HD = c->HD, T = c->T;
    double worst = 0;
    // lse against a naive log-sum-exp over the whole sequence
    int32_t *all = malloc((size_t)T * sizeof(int32_t));
    double *nout = gc_alloc((size_t)B * T * NH * HD), *nlse = gc_alloc((size_t)B * NH * T);
    ck_assert(all != NULL);
    for (int t = 0; t < T; t++)
        all[t] = t;
    naive_attention(nout, nlse, c->qkv, c->C, c->qkv, c->C, NH, NH + c->NKV, all, all, B, T, T,
                    NH, c->NKV, HD);
    for (int r = 0; r < c->CP; r++) {
        shard *s = &c->sh[r];
        for (int b = 0; b < B; b++)
            for (int i = 0; i < s->Tl; i++) {
                int t = s->pos[i];
                for (int h = 0; h < NH; h++) {
                    double lse = s->lse[((size_t)b * NH + h) * s->Tl + i];
                    double want = nlse[((size_t)b * NH + h) * T + t];
                    ck_assert_msg(fabs(lse - want) < 1e-12, "%s: lse r%d b%d h%d t%d: %.17g vs %.17g",
                                  what, r, b, h, t, lse, want);
                    for (int d = 0; d < HD; d++) {
                        double got = s->out[(((size_t)b * s->Tl + i) * NH + h) * HD + d];
                        double ref = c->out_ref[(((size_t)b * T + t) * NH + h) * HD + d];
                        double nv = nout[(((size_t)b * T + t) * NH + h) * HD + d];
                        worst = fmax(worst, fmax(fabs(got - ref), fabs(got - nv)));
                        ck_assert_msg(fabs(got - ref) < 1e-12 && fabs(got - nv) < 1e-12,
                                      "%s: out r%d b%d h%d t%d d%d: %.17g vs %.17g", what, r, b, h,
                                      t, d, got, ref);
                    }
                }
            }
    }
    printf("%-36s out max abs err %.3e\n", what, worst);
    free(all); free(nout); free(nlse);
}

static void check_cp_backward(cp_case *c, const char *what)
{
    int B = c->B, NH = c->NH, NKV = c->NKV, HD = c->HD, T = c->T, C = c->C;
    double *got = gc_alloc((size_t)B * T * C * HD);
    double worst = 0;
    for (int r = 0; r < c->CP; r++) {
        shard *s = &c->sh[r];
        for (int b = 0; b < B; b++)
            for (int i = 0; i < s->Tl; i++) {
                size_t lr = (size_t)b * s->Tl + i, g = (size_t)b * T + s->pos[i];
                for (int e = 0; e < C * HD; e++)
                    got[g * C * HD + e] = s->dqkv[lr * C * HD + e] - s->base_dqkv[lr * C * HD + e];
                for (int e = 0; e < 2 * NKV * HD; e++) // the K/V gradient peers sent back
                    got[g * C * HD + (size_t)NH * HD + e] +=
                        s->dkvx[lr * 2 * NKV * HD + e] - s->base_dkvx[lr * 2 * NKV * HD + e];
            }
    }
    for (size_t e = 0; e < (size_t)B * T * C * HD; e++) {
        double err = fabs(got[e] - c->dqkv_ref[e]);
        worst = err > worst ? err : worst;
        ck_assert_msg(err < 1e-10, "%s: dqkv[%zu] (row %zu slot %zu) %.17g vs %.17g", what, e,
                      e / ((size_t)C * HD), e % ((size_t)C * HD) / HD, got[e], c->dqkv_ref[e]);
    }
    printf("%-36s dqkv max abs err %.3e\n", what, worst);
    free(got);
}

static void run_cp(int B, int T, int NH, int NKV, int HD, int CP, uint64_t seed)
{
    cp_case c = cp_make(B, T, NH, NKV, HD, CP, seed);
    char what[96];
    for (int reverse = 0; reverse < 2; reverse++) {
        snprintf(what, sizeof what, "T=%d CP=%d NH=%d NKV=%d %s", T, CP, NH, NKV,
                 reverse ? "reverse" : "ring");
        cp_forward(&c, reverse);
        check_cp_forward(&c, what);
        cp_backward(&c, reverse);
        check_cp_backward(&c, what);
    }
    cp_drop(&c);
}

// one block holding the whole sequence, q and kv the same packed qkv
START_TEST(test_whole_sequence)
{
    int B = 2, T = 12, NH = 4, NKV = 2, HD = 8, C = NH + 2 * NKV;
    cp_case c = cp_make(B, T, NH, NKV, HD, 1, 3);
    shard *s = &c.sh[0];
    for (int t = 0; t < T; t++)
        ck_assert_int_eq(s->pos[t], t);
    moe_d_attn_block_init(s->acc, s->mx, s->l, B, T, NH, HD);
    moe_d_attn_block_forward(s->acc, s->mx, s->l, c.qkv, C, c.qkv, C, NH, NH + NKV, s->pos, s->pos,
                             B, T, T, NH, NKV, HD);
    moe_d_attn_block_finish(s->out, s->lse, s->acc, s->mx, s->l, B, T, NH, HD);
    for (size_t e = 0; e < (size_t)B * T * NH * HD; e++)
        ck_assert_msg(fabs(s->out[e] - c.out_ref[e]) < 1e-12, "out[%zu] %.17g vs %.17g", e,
                      s->out[e], c.out_ref[e]);
    check_cp_forward(&c, "whole sequence");
    cp_backward(&c, 0);
    check_cp_backward(&c, "whole sequence");
    cp_drop(&c);
}
END_TEST

// the brief's layout: CP=2, 4 chunks of 3, rank 0 chunks {0, 3}, rank 1 chunks {1, 2}
START_TEST(test_cp2_t12) { run_cp(2, 12, 4, 2, 8, 2, 5); }
END_TEST
// tiles: 100 local rows = 2 query tiles and 2 key tiles per block, cut by the causal edge
START_TEST(test_cp2_t200) { run_cp(1, 200, 2, 1, 4, 2, 6); }
END_TEST
// four ranks, plain MHA; a rank's dK/dV comes back from three peers
START_TEST(test_cp4_mha) { run_cp(2, 96, 3, 3, 4, 4, 7); }
END_TEST

/* ---- finite differences through the whole block pipeline ---- */

typedef struct {
    int B, NH, NKV, HD, QS, Tq, Tk1, Tk2;
    double *q;   // (B, Tq, QS, HD), QS = NH + 1: one slot no head reads
    double *kv1; // (B, Tk1, 2*NKV, HD), a received block
    double *kv2; // (B, Tk2, NH + 2*NKV, HD), a packed qkv block
    double *r, *acc, *mx, *l, *out, *lse;
    const int32_t *pq, *pk1, *pk2;
} fd_ctx;

static void fd_forward(fd_ctx *c)
{
    int B = c->B, NH = c->NH, NKV = c->NKV, HD = c->HD;
    moe_d_attn_block_init(c->acc, c->mx, c->l, B, c->Tq, NH, HD);
    moe_d_attn_block_forward(c->acc, c->mx, c->l, c->q, c->QS, c->kv1, 2 * NKV, 0, NKV, c->pq,
                             c->pk1, B, c->Tq, c->Tk1, NH, NKV, HD);
    moe_d_attn_block_forward(c->acc, c->mx, c->l, c->q, c->QS, c->kv2, NH + 2 * NKV, NH, NH + NKV,
                             c->pq, c->pk2, B, c->Tq, c->Tk2, NH, NKV, HD);
    moe_d_attn_block_finish(c->out, c->lse, c->acc, c->mx, c->l, B, c->Tq, NH, HD);
}

static double fd_loss(void *p)
{
    fd_ctx *c = p;
    fd_forward(c);
    return gc_dot(c->out, c->r, (size_t)c->B * c->Tq * c->NH * c->HD);
}

static void check_fd(int B, int NH, int NKV, int HD, int Tq, int Tk1, int Tk2, const int32_t *pq,
                     const int32_t *pk1, const int32_t *pk2, uint64_t seed, const char *name)
{
    fd_ctx c = {.B = B, .NH = NH, .NKV = NKV, .HD = HD, .QS = NH + 1, .Tq = Tq, .Tk1 = Tk1,
                .Tk2 = Tk2, .pq = pq, .pk1 = pk1, .pk2 = pk2};
    size_t nq = (size_t)B * Tq * c.QS * HD, n1 = (size_t)B * Tk1 * 2 * NKV * HD;
    size_t n2 = (size_t)B * Tk2 * (NH + 2 * NKV) * HD, no = (size_t)B * Tq * NH * HD;
    size_t nst = (size_t)B * NH * Tq;
    c.q = gc_alloc(nq); gc_fill_normal(c.q, nq, seed, 1.0);
    c.kv1 = gc_alloc(n1); gc_fill_normal(c.kv1, n1, seed + 1, 1.0);
    c.kv2 = gc_alloc(n2); gc_fill_normal(c.kv2, n2, seed + 2, 1.0);
    c.r = gc_alloc(no); gc_fill_normal(c.r, no, seed + 3, 0.1);
    c.acc = gc_alloc(no); c.out = gc_alloc(no);
    c.mx = gc_alloc(nst); c.l = gc_alloc(nst); c.lse = gc_alloc(nst);

    double *D = gc_alloc(nst), *dq = gc_alloc(nq), *d1 = gc_alloc(n1), *d2 = gc_alloc(n2);
    fd_forward(&c);
    moe_d_attn_block_backward_prep(D, c.out, c.r, B, Tq, NH, HD);
    moe_d_attn_block_backward(dq, c.QS, d1, 2 * NKV, 0, NKV, c.r, c.lse, D, c.q, c.QS, c.kv1,
                              2 * NKV, 0, NKV, pq, pk1, B, Tq, Tk1, NH, NKV, HD);
    moe_d_attn_block_backward(dq, c.QS, d2, NH + 2 * NKV, NH, NH + NKV, c.r, c.lse, D, c.q, c.QS,
                              c.kv2, NH + 2 * NKV, NH, NH + NKV, pq, pk2, B, Tq, Tk2, NH, NKV, HD);
    for (size_t e = 0; e < n2; e++) // kv2's query slots belong to nobody here
        if (e % ((size_t)(NH + 2 * NKV) * HD) < (size_t)NH * HD)
            ck_assert(d2[e] == 0.0);

    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    char nm[64];
    snprintf(nm, sizeof nm, "%s dq", name);
    double eq = gc_check(fd_loss, &c, c.q, dq, nq, 3000, nm);
    snprintf(nm, sizeof nm, "%s dkv1", name);
    double e1 = gc_check(fd_loss, &c, c.kv1, d1, n1, 3000, nm);
    snprintf(nm, sizeof nm, "%s dkv2", name);
    double e2 = gc_check(fd_loss, &c, c.kv2, d2, n2, 3000, nm);
    omp_set_num_threads(threads);
    ck_assert_msg(eq < GC_TOL && e1 < GC_TOL && e2 < GC_TOL, "%s: rel err q %g kv1 %g kv2 %g",
                  name, eq, e1, e2);

    free(c.q); free(c.kv1); free(c.kv2); free(c.r); free(c.acc); free(c.out); free(c.mx);
    free(c.l); free(c.lse); free(D); free(dq); free(d1); free(d2);
}

// unsorted positions, ties with query positions, a query (-1) that sees nothing
START_TEST(test_fd_small)
{
    static const int32_t pq[7] = {3, -1, 7, 5, 10, 2, 8};
    static const int32_t pk1[5] = {4, 1, 6, 9, 2};
    static const int32_t pk2[6] = {0, 5, 3, 8, 7, 11};
    check_fd(2, 4, 2, 4, 7, 5, 6, pq, pk1, pk2, 31, "block gqa 4/2");
}
END_TEST

// two query tiles and two key tiles; block 2 is seen only by the last two rows, so the
// first query tile skips it whole
START_TEST(test_fd_tiles)
{
    int32_t pq[70], pk1[70], pk2[9];
    for (int i = 0; i < 70; i++)
        pq[i] = 2 * i + 5;
    for (int j = 0; j < 70; j++)
        pk1[j] = j;
    for (int j = 0; j < 9; j++)
        pk2[j] = 140 + j;
    check_fd(1, 2, 1, 3, 70, 70, 9, pq, pk1, pk2, 41, "block mqa tiles");
}
END_TEST

/* ---- masking: rows without a visible key ---- */

typedef struct {
    double *acc, *mx, *l;
} state;

static state state_copy(const state *s, size_t nacc, size_t nst)
{
    state c = {gc_alloc(nacc), gc_alloc(nst), gc_alloc(nst)};
    memcpy(c.acc, s->acc, nacc * sizeof(double));
    memcpy(c.mx, s->mx, nst * sizeof(double));
    memcpy(c.l, s->l, nst * sizeof(double));
    return c;
}

static void state_free(state *s) { free(s->acc); free(s->mx); free(s->l); }

static int sees(int32_t p, const int32_t *pk, int n)
{
    for (int j = 0; j < n; j++)
        if (pk[j] <= p)
            return 1;
    return 0;
}

// rows that see none of pk are bitwise as in `before`; the others moved (l grew)
static void check_rows(const state *now, const state *before, const int32_t *pq, const int32_t *pk,
                       int nk, int B, int Tq, int NH, int HD, const char *what)
{
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < Tq; i++) {
                size_t st = ((size_t)b * NH + h) * Tq + i;
                const double *a = now->acc + (((size_t)b * Tq + i) * NH + h) * HD;
                const double *a0 = before->acc + (((size_t)b * Tq + i) * NH + h) * HD;
                if (!sees(pq[i], pk, nk)) {
                    ck_assert_msg(memcmp(a, a0, (size_t)HD * sizeof(double)) == 0 &&
                                      memcmp(&now->mx[st], &before->mx[st], sizeof(double)) == 0 &&
                                      memcmp(&now->l[st], &before->l[st], sizeof(double)) == 0,
                                  "%s: row pos %d touched", what, pq[i]);
                } else {
                    ck_assert_msg(now->l[st] > before->l[st] || now->mx[st] > before->mx[st],
                                  "%s: row pos %d not merged", what, pq[i]);
                }
            }
}

START_TEST(test_masked_rows)
{
    enum { B = 2, NH = 4, NKV = 2, HD = 8, TQ = 6, KS = 2 * NKV, NB = 5 };
    static const int32_t pq[TQ] = {1, 9, 4, 0, 12, 6};
    // A: rows 1, 4, 0 see nothing (pos 13 is seen by no row); B: rows 1, 0 see nothing;
    // C: only row 1 sees it (two keys: with one, dq would be exactly 0); E: after every
    // query; F: keys tied with the last query only (a tile's first key == its last query).
    // Row 0 never sees a key.
    static const int32_t pkA[5] = {5, 6, 13, 7, 8}, pkB[3] = {2, 3, 4}, pkC[2] = {1, 1},
                         pkE[2] = {20, 21}, pkF[2] = {12, 12};
    static const int32_t *pks[NB] = {pkA, pkB, pkC, pkE, pkF};
    static const int nks[NB] = {5, 3, 2, 2, 2};
    size_t nq = (size_t)B * TQ * NH * HD, nst = (size_t)B * NH * TQ;
    double *q = gc_alloc(nq), *kv[NB];
    gc_fill_normal(q, nq, 51, 1.0);
    for (int k = 0; k < NB; k++) {
        kv[k] = gc_alloc((size_t)B * nks[k] * KS * HD);
        gc_fill_normal(kv[k], (size_t)B * nks[k] * KS * HD, 52 + k, 1.0);
    }
    state s = {gc_alloc(nq), gc_alloc(nst), gc_alloc(nst)};
    moe_d_attn_block_init(s.acc, s.mx, s.l, B, TQ, NH, HD);
    for (size_t e = 0; e < nst; e++)
        ck_assert(s.mx[e] == -INFINITY && s.l[e] == 0.0);
    for (int k = 0; k < NB; k++) {
        state before = state_copy(&s, nq, nst);
        moe_d_attn_block_forward(s.acc, s.mx, s.l, q, NH, kv[k], KS, 0, NKV, pq, pks[k], B, TQ,
                                 nks[k], NH, NKV, HD);
        char what[32];
        snprintf(what, sizeof what, "forward block %d", k);
        check_rows(&s, &before, pq, pks[k], nks[k], B, TQ, NH, HD, what);
        state_free(&before);
        if (k == 1) // row pos 1 has its only key in the later block C: nothing yet
            for (int b = 0; b < B; b++)
                for (int h = 0; h < NH; h++)
                    ck_assert(s.l[((size_t)b * NH + h) * TQ + 0] == 0.0);
    }
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < TQ; i++)
                ck_assert_msg((s.l[((size_t)b * NH + h) * TQ + i] == 0.0) == (pq[i] == 0),
                              "l == 0 must mean no block had a key for pos %d", pq[i]);

    // finish against the naive reference over the concatenated blocks
    double *out = gc_alloc(nq), *lse = gc_alloc(nst), *nout = gc_alloc(nq), *nlse = gc_alloc(nst);
    moe_d_attn_block_finish(out, lse, s.acc, s.mx, s.l, B, TQ, NH, HD);
    int nall = 14;
    int32_t pall[14];
    double *kvall = gc_alloc((size_t)B * nall * KS * HD);
    for (int b = 0, j = 0; b < B; b++, j = 0)
        for (int k = 0; k < NB; k++)
            for (int t = 0; t < nks[k]; t++, j++) {
                pall[j] = pks[k][t];
                memcpy(kvall + ((size_t)b * nall + j) * KS * HD,
                       kv[k] + ((size_t)b * nks[k] + t) * KS * HD, (size_t)KS * HD * sizeof(double));
            }
    naive_attention(nout, nlse, q, NH, kvall, KS, 0, NKV, pq, pall, B, TQ, nall, NH, NKV, HD);
    for (size_t e = 0; e < nq; e++)
        ck_assert_msg(fabs(out[e] - nout[e]) < 1e-12, "out[%zu]", e);
    for (size_t e = 0; e < nst; e++)
        ck_assert_msg(lse[e] == nlse[e] || fabs(lse[e] - nlse[e]) < 1e-12, "lse[%zu]", e);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            ck_assert(lse[((size_t)b * NH + h) * TQ + 3] == -INFINITY);
            for (int d = 0; d < HD; d++)
                ck_assert(out[(((size_t)b * TQ + 3) * NH + h) * HD + d] == 0.0);
        }

    // backward: rows and keys outside a block's visibility keep their gradient bitwise
    double *dout = gc_alloc(nq), *D = gc_alloc(nst), *dq = gc_alloc(nq), *dq0 = gc_alloc(nq);
    gc_fill_normal(dout, nq, 60, 1.0);
    gc_fill_normal(dq, nq, 61, 1.0);
    moe_d_attn_block_backward_prep(D, out, dout, B, TQ, NH, HD);
    for (int k = 0; k < NB; k++) {
        size_t nk = (size_t)B * nks[k] * KS * HD;
        double *dkv = gc_alloc(nk), *dkv0 = gc_alloc(nk);
        gc_fill_normal(dkv, nk, 70 + k, 1.0);
        memcpy(dkv0, dkv, nk * sizeof(double));
        memcpy(dq0, dq, nq * sizeof(double));
        moe_d_attn_block_backward(dq, NH, dkv, KS, 0, NKV, dout, lse, D, q, NH, kv[k], KS, 0, NKV,
                                  pq, pks[k], B, TQ, nks[k], NH, NKV, HD);
        for (int b = 0; b < B; b++)
            for (int i = 0; i < TQ; i++) {
                size_t at = ((size_t)b * TQ + i) * NH * HD;
                int same = memcmp(dq + at, dq0 + at, (size_t)NH * HD * sizeof(double)) == 0;
                ck_assert_msg(same == !sees(pq[i], pks[k], nks[k]),
                              "block %d: dq row pos %d %s", k, pq[i], same ? "untouched" : "touched");
            }
        for (int b = 0; b < B; b++)
            for (int j = 0; j < nks[k]; j++) {
                int seen = 0;
                for (int i = 0; i < TQ; i++)
                    seen |= pks[k][j] <= pq[i];
                size_t at = ((size_t)b * nks[k] + j) * KS * HD;
                int same = memcmp(dkv + at, dkv0 + at, (size_t)KS * HD * sizeof(double)) == 0;
                ck_assert_msg(same == !seen, "block %d: dkv row pos %d", k, pks[k][j]);
            }
        free(dkv);
        free(dkv0);
    }
    // rows with lse == -inf contribute nothing even where the block has keys they could see
    {
        size_t nk = (size_t)B * nks[0] * KS * HD;
        double *dkv = gc_alloc(nk), *ninf = gc_alloc(nst);
        for (size_t e = 0; e < nst; e++)
            ninf[e] = -INFINITY;
        memcpy(dq0, dq, nq * sizeof(double));
        moe_d_attn_block_backward(dq, NH, dkv, KS, 0, NKV, dout, ninf, D, q, NH, kv[0], KS, 0,
                                  NKV, pq, pks[0], B, TQ, nks[0], NH, NKV, HD);
        ck_assert(memcmp(dq, dq0, nq * sizeof(double)) == 0);
        for (size_t e = 0; e < nk; e++)
            ck_assert(dkv[e] == 0.0);
        free(dkv);
        free(ninf);
    }

    for (int k = 0; k < NB; k++)
        free(kv[k]);
    state_free(&s);
    free(q); free(out); free(lse); free(nout); free(nlse); free(kvall); free(dout); free(D);
    free(dq); free(dq0);
}
END_TEST

START_TEST(test_thread_independent)
{
    cp_case c = cp_make(2, 200, 4, 2, 8, 2, 81);
    size_t nl = (size_t)c.B * c.sh[0].Tl * c.C * c.HD, nol = (size_t)c.B * c.sh[0].Tl * c.NH * c.HD;
    double *o1 = gc_alloc(nol), *d1 = gc_alloc(nl);
    omp_set_num_threads(1);
    cp_forward(&c, 0);
    cp_backward(&c, 0);
    memcpy(o1, c.sh[1].out, nol * sizeof(double));
    memcpy(d1, c.sh[1].dqkv, nl * sizeof(double));
    omp_set_num_threads(3);
    cp_forward(&c, 0);
    cp_backward(&c, 0);
    ck_assert(memcmp(o1, c.sh[1].out, nol * sizeof(double)) == 0);
    ck_assert(memcmp(d1, c.sh[1].dqkv, nl * sizeof(double)) == 0);
    free(o1);
    free(d1);
    cp_drop(&c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("grad_attention_block");
    TCase *tc = tcase_create("attention_block");
    tcase_add_test(tc, test_whole_sequence);
    tcase_add_test(tc, test_cp2_t12);
    tcase_add_test(tc, test_cp2_t200);
    tcase_add_test(tc, test_cp4_mha);
    tcase_add_test(tc, test_fd_small);
    tcase_add_test(tc, test_fd_tiles);
    tcase_add_test(tc, test_masked_rows);
    tcase_add_test(tc, test_thread_independent);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
