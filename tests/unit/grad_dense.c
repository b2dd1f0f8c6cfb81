/*
** Finite-difference checks (double precision) of the dense layer ops, plus
** forward references, the += contract of every backward, and AdamW against a
** plain reference formula.
*/
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "layers/adamw.h"
#include "layers/crossentropy.h"
#include "layers/embedding.h"
#include "layers/linear.h"
#include "layers/rmsnorm.h"
#include "layers/rope.h"
#include "layers/swiglu.h"

#define MAXCHK 2000

static double *rnd(size_t n, uint64_t seed, double scale)
{
    double *x = gc_alloc(n);
    gc_fill_normal(x, n, seed, scale);
    return x;
}

// backward ran into a zeroed buffer (g) and into one prefilled with base (acc)
static void assert_accumulated(const double *acc, const double *base, const double *g, size_t n,
                               const char *what)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabs(acc[i] - (base[i] + g[i])) <= 1e-12 * (1 + fabs(base[i] + g[i])),
                      "%s: backward overwrote instead of accumulating at %zu", what, i);
}

static void assert_close(const double *a, const double *b, size_t n, double tol, const char *what)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabs(a[i] - b[i]) <= tol * (1 + fabs(b[i])), "%s: %zu: %.17g vs %.17g", what,
                      i, a[i], b[i]);
}

/* ---------------------------------------------------------------- linear */

typedef struct {
    double *inp, *w, *out, *r;
    int N, C, OC;
} lin_ctx;

static double lin_loss(void *p)
{
    lin_ctx *c = p;
    moe_d_linear_forward(c->out, c->inp, c->w, c->N, c->C, c->OC);
    return gc_dot(c->out, c->r, (size_t)c->N * c->OC);
}

START_TEST(test_linear)
{
    lin_ctx c = {.N = 5, .C = 7, .OC = 6};
    size_t ni = (size_t)c.N * c.C, nw = (size_t)c.OC * c.C, no = (size_t)c.N * c.OC;
    c.inp = rnd(ni, 1, 1);
    c.w = rnd(nw, 2, 0.5);
    c.out = gc_alloc(no);
    c.r = rnd(no, 3, 1);

    lin_loss(&c); // forward against the naive sum
    for (int n = 0; n < c.N; n++)
        for (int o = 0; o < c.OC; o++) {
            double s = 0;
            for (int k = 0; k < c.C; k++)
                s += c.inp[n * c.C + k] * c.w[o * c.C + k];
            ck_assert(fabs(s - c.out[n * c.OC + o]) < 1e-12);
        }

    double *dinp = gc_alloc(ni), *dw = gc_alloc(nw);
    moe_d_linear_backward(dinp, dw, c.r, c.inp, c.w, c.N, c.C, c.OC);
    ck_assert(gc_check(lin_loss, &c, c.inp, dinp, ni, MAXCHK, "linear dinp") < GC_TOL);
    ck_assert(gc_check(lin_loss, &c, c.w, dw, nw, MAXCHK, "linear dw") < GC_TOL);

    double *bi = rnd(ni, 4, 1), *bw = rnd(nw, 5, 1);
    double *ai = gc_alloc(ni), *aw = gc_alloc(nw);
    memcpy(ai, bi, ni * sizeof(double));
    memcpy(aw, bw, nw * sizeof(double));
    moe_d_linear_backward(ai, aw, c.r, c.inp, c.w, c.N, c.C, c.OC);
    assert_accumulated(ai, bi, dinp, ni, "linear dinp");
    assert_accumulated(aw, bw, dw, nw, "linear dw");

    // NULL skips a gradient and leaves the other one as before
    memcpy(aw, bw, nw * sizeof(double));
    moe_d_linear_backward(NULL, aw, c.r, c.inp, c.w, c.N, c.C, c.OC);
    assert_accumulated(aw, bw, dw, nw, "linear dw (dinp NULL)");
    memcpy(ai, bi, ni * sizeof(double));
    moe_d_linear_backward(ai, NULL, c.r, c.inp, c.w, c.N, c.C, c.OC);
    assert_accumulated(ai, bi, dinp, ni, "linear dinp (dw NULL)");

    free(c.inp); free(c.w); free(c.out); free(c.r); free(dinp); free(dw);
    free(bi); free(bw); free(ai); free(aw);
}
END_TEST

/* ------------------------------------------------------------- embedding */

typedef struct {
    double *wte, *out, *r;
    const int32_t *tok;
    int N, C;
} emb_ctx;

static double emb_loss(void *p)
{
    emb_ctx *c = p;
    moe_d_embedding_forward(c->out, c->tok, c->wte, c->N, c->C);
    return gc_dot(c->out, c->r, (size_t)c->N * c->C);
}

START_TEST(test_embedding)
{
    static const int32_t tok[10] = {1, 3, 1, 0, 5, 3, 3, 2, 1, 4}; // 1 and 3 repeat
    int V = 7, N = 10, C = 70; // C > one column slab; row 6 is never used
    emb_ctx c = {.tok = tok, .N = N, .C = C};
    size_t nw = (size_t)V * C, no = (size_t)N * C;
    c.wte = rnd(nw, 11, 1);
    c.out = gc_alloc(no);
    c.r = rnd(no, 12, 1);

    emb_loss(&c);
    for (int n = 0; n < N; n++)
        ck_assert(memcmp(c.out + n * C, c.wte + tok[n] * C, C * sizeof(double)) == 0);

    double *dwte = gc_alloc(nw);
    moe_d_embedding_backward(dwte, c.r, tok, N, C);
    ck_assert(gc_check(emb_loss, &c, c.wte, dwte, nw, MAXCHK, "embedding dwte") < GC_TOL);
    for (int k = 0; k < C; k++)
        ck_assert(dwte[6 * C + k] == 0.0);

    double *base = rnd(nw, 13, 1), *acc = gc_alloc(nw);
    memcpy(acc, base, nw * sizeof(double));
    moe_d_embedding_backward(acc, c.r, tok, N, C);
    assert_accumulated(acc, base, dwte, nw, "embedding dwte");

    free(c.wte); free(c.out); free(c.r); free(dwte); free(base); free(acc);
}
END_TEST

/* --------------------------------------------------------------- rmsnorm */

typedef struct {
    double *inp, *w, *out, *rstd, *r;
    int N, C;
} rms_ctx;

static double rms_loss(void *p)
{
    rms_ctx *c = p;
    moe_d_rmsnorm_forward(c->out, c->rstd, c->inp, c->w, c->N, c->C, 1e-5);
    return gc_dot(c->out, c->r, (size_t)c->N * c->C);
}

START_TEST(test_rmsnorm)
{
    rms_ctx c = {.N = 4, .C = 67};
    size_t ni = (size_t)c.N * c.C;
    c.inp = rnd(ni, 21, 1);
    c.w = rnd(c.C, 22, 0.3);
    for (int i = 0; i < c.C; i++)
        c.w[i] += 1;
    c.out = gc_alloc(ni);
    c.rstd = gc_alloc(c.N);
    c.r = rnd(ni, 23, 1);

    rms_loss(&c);
    for (int n = 0; n < c.N; n++) {
        double ss = 0;
        for (int k = 0; k < c.C; k++)
            ss += c.inp[n * c.C + k] * c.inp[n * c.C + k];
        double rs = 1 / sqrt(ss / c.C + 1e-5);
        ck_assert(fabs(rs - c.rstd[n]) < 1e-12 * rs);
        for (int k = 0; k < c.C; k++)
            ck_assert(fabs(c.out[n * c.C + k] - c.inp[n * c.C + k] * rs * c.w[k]) < 1e-12);
    }

    double *dinp = gc_alloc(ni), *dw = gc_alloc(c.C);
    moe_d_rmsnorm_forward(c.out, c.rstd, c.inp, c.w, c.N, c.C, 1e-5);
    moe_d_rmsnorm_backward(dinp, dw, c.r, c.inp, c.w, c.rstd, c.N, c.C);
    ck_assert(gc_check(rms_loss, &c, c.inp, dinp, ni, MAXCHK, "rmsnorm dinp") < GC_TOL);
    ck_assert(gc_check(rms_loss, &c, c.w, dw, c.C, MAXCHK, "rmsnorm dw") < GC_TOL);

    double *bi = rnd(ni, 24, 1), *bw = rnd(c.C, 25, 1), *ai = gc_alloc(ni), *aw = gc_alloc(c.C);
    memcpy(ai, bi, ni * sizeof(double));
    memcpy(aw, bw, c.C * sizeof(double));
    rms_loss(&c); // restores rstd for the unperturbed input
    moe_d_rmsnorm_backward(ai, aw, c.r, c.inp, c.w, c.rstd, c.N, c.C);
    assert_accumulated(ai, bi, dinp, ni, "rmsnorm dinp");
    assert_accumulated(aw, bw, dw, c.C, "rmsnorm dw");

    free(c.inp); free(c.w); free(c.out); free(c.rstd); free(c.r);
    free(dinp); free(dw); free(bi); free(bw); free(ai); free(aw);
}
END_TEST

/* ------------------------------------------------------------------ rope */

typedef struct {
    double *qkv, *out, *cs, *sn, *r;
    int B, T, NH, NKV, HD;
} rope_ctx;

static size_t rope_n(const rope_ctx *c)
{
    return (size_t)c->B * c->T * (c->NH + 2 * c->NKV) * c->HD;
}

static double rope_loss(void *p)
{
    rope_ctx *c = p;
    moe_d_rope_forward(c->out, c->qkv, c->cs, c->sn, c->B, c->T, c->NH, c->NKV, c->HD);
    return gc_dot(c->out, c->r, rope_n(c));
}

START_TEST(test_rope)
{
    rope_ctx c = {.B = 2, .T = 5, .NH = 4, .NKV = 2, .HD = 8};
    double theta = 100.0;
    size_t n = rope_n(&c);
    int half = c.HD / 2, H3 = c.NH + 2 * c.NKV;
    c.qkv = rnd(n, 31, 1);
    c.out = gc_alloc(n);
    c.r = rnd(n, 32, 1);
    c.cs = gc_alloc((size_t)c.T * half);
    c.sn = gc_alloc((size_t)c.T * half);
    moe_d_rope_table(c.cs, c.sn, c.T, c.HD, theta);

    rope_loss(&c); // the header's formula, written out
    for (int b = 0; b < c.B; b++)
        for (int t = 0; t < c.T; t++)
            for (int h = 0; h < H3; h++) {
                const double *x = c.qkv + (((size_t)b * c.T + t) * H3 + h) * c.HD;
                const double *o = c.out + (((size_t)b * c.T + t) * H3 + h) * c.HD;
                for (int i = 0; i < half; i++) {
                    double a = t * pow(theta, -2.0 * i / c.HD), co = cos(a), si = sin(a);
                    double e0 = x[i], e1 = x[i + half];
                    if (h < c.NH + c.NKV) {
                        e0 = x[i] * co - x[i + half] * si;
                        e1 = x[i + half] * co + x[i] * si;
                    }
                    ck_assert(fabs(o[i] - e0) < 1e-12 && fabs(o[i + half] - e1) < 1e-12);
                }
            }

    double *inplace = gc_alloc(n); // out may alias qkv
    memcpy(inplace, c.qkv, n * sizeof(double));
    moe_d_rope_forward(inplace, inplace, c.cs, c.sn, c.B, c.T, c.NH, c.NKV, c.HD);
    ck_assert(memcmp(inplace, c.out, n * sizeof(double)) == 0);

    double *d = gc_alloc(n);
    moe_d_rope_backward(d, c.r, c.cs, c.sn, c.B, c.T, c.NH, c.NKV, c.HD);
    ck_assert(gc_check(rope_loss, &c, c.qkv, d, n, MAXCHK, "rope dqkv") < GC_TOL);

    double *base = rnd(n, 33, 1), *acc = gc_alloc(n);
    memcpy(acc, base, n * sizeof(double));
    moe_d_rope_backward(acc, c.r, c.cs, c.sn, c.B, c.T, c.NH, c.NKV, c.HD);
    assert_accumulated(acc, base, d, n, "rope dqkv");

    free(c.qkv); free(c.out); free(c.r); free(c.cs); free(c.sn);
    free(inplace); free(d); free(base); free(acc);
}
END_TEST

/* ---------------------------------------------------------------- swiglu */

typedef struct {
    double *inp, *out, *r;
    int N, F;
} swi_ctx;

static double swi_loss(void *p)
{
    swi_ctx *c = p;
    moe_d_swiglu_forward(c->out, c->inp, c->N, c->F);
    return gc_dot(c->out, c->r, (size_t)c->N * c->F);
}

START_TEST(test_swiglu)
{
    swi_ctx c = {.N = 3, .F = 11};
    size_t ni = (size_t)c.N * 2 * c.F, no = (size_t)c.N * c.F;
    c.inp = rnd(ni, 41, 2);
    c.out = gc_alloc(no);
    c.r = rnd(no, 42, 1);

    swi_loss(&c);
    for (int n = 0; n < c.N; n++)
        for (int j = 0; j < c.F; j++) {
            double g = c.inp[n * 2 * c.F + j], u = c.inp[n * 2 * c.F + c.F + j];
            ck_assert(fabs(c.out[n * c.F + j] - g / (1 + exp(-g)) * u) < 1e-12);
        }

    double *d = gc_alloc(ni);
    moe_d_swiglu_backward(d, c.r, c.inp, c.N, c.F);
    ck_assert(gc_check(swi_loss, &c, c.inp, d, ni, MAXCHK, "swiglu dinp") < GC_TOL);

    double *base = rnd(ni, 43, 1), *acc = gc_alloc(ni);
    memcpy(acc, base, ni * sizeof(double));
    moe_d_swiglu_backward(acc, c.r, c.inp, c.N, c.F);
    assert_accumulated(acc, base, d, ni, "swiglu dinp");

    free(c.inp); free(c.out); free(c.r); free(d); free(base); free(acc);
}
END_TEST

/* ---------------------------------------------------------- crossentropy */

typedef struct {
    double *logits, *probs, *losses, scale;
    const int32_t *tgt;
    int N, V;
} ce_ctx;

static double ce_loss(void *p)
{
    ce_ctx *c = p;
    return c->scale * moe_d_crossentropy_forward(c->losses, c->probs, c->logits, c->tgt, c->N, c->V);
}

START_TEST(test_crossentropy)
{
    static const int32_t tgt[5] = {2, 0, 6, 2, 3};
    ce_ctx c = {.tgt = tgt, .N = 5, .V = 7, .scale = 1.0 / 37};
    size_t n = (size_t)c.N * c.V;
    c.logits = rnd(n, 51, 3);
    c.logits[1] += 40; // a confident row: max subtraction must keep it finite
    c.probs = gc_alloc(n);
    c.losses = gc_alloc(c.N);

    double total = moe_d_crossentropy_forward(c.losses, c.probs, c.logits, tgt, c.N, c.V);
    double ref_total = 0;
    for (int r = 0; r < c.N; r++) {
        const double *l = c.logits + r * c.V;
        double mx = l[0], z = 0;
        for (int j = 1; j < c.V; j++)
            mx = fmax(mx, l[j]);
        for (int j = 0; j < c.V; j++)
            z += exp(l[j] - mx);
        for (int j = 0; j < c.V; j++)
            ck_assert(fabs(c.probs[r * c.V + j] - exp(l[j] - mx) / z) < 1e-14);
        double lr = -(l[tgt[r]] - mx - log(z));
        ck_assert(fabs(c.losses[r] - lr) < 1e-12);
        ref_total += lr;
    }
    ck_assert(fabs(total - ref_total) < 1e-12);

    double *d = gc_alloc(n);
    moe_d_crossentropy_backward(d, c.probs, tgt, c.N, c.V, c.scale);
    ck_assert(gc_check(ce_loss, &c, c.logits, d, n, MAXCHK, "crossentropy dlogits") < GC_TOL);

    ce_loss(&c); // probs for the unperturbed logits
    double *base = rnd(n, 52, 1), *acc = gc_alloc(n);
    memcpy(acc, base, n * sizeof(double));
    moe_d_crossentropy_backward(acc, c.probs, tgt, c.N, c.V, c.scale);
    assert_accumulated(acc, base, d, n, "crossentropy dlogits");

    free(c.logits); free(c.probs); free(c.losses); free(d); free(base); free(acc);
}
END_TEST

/* ----------------------------------------------------------------- adamw */

START_TEST(test_adamw)
{
    size_t n = 40000 + 7; // above the parallel threshold, not a multiple of anything
    double lr = 3e-3, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
    double *p = rnd(n, 61, 1), *m = gc_alloc(n), *v = gc_alloc(n);
    double *rp = gc_alloc(n), *rm = gc_alloc(n), *rv = gc_alloc(n);
    memcpy(rp, p, n * sizeof(double));
    for (long step = 1; step <= 3; step++) {
        double *g = rnd(n, 62 + step, 0.1);
        moe_d_adamw_update(p, g, m, v, n, lr, b1, b2, eps, wd, step, 0.5);
        for (size_t i = 0; i < n; i++) {
            double gs = 0.5 * g[i]; // grad_scale folds clipping into the update
            rm[i] = b1 * rm[i] + (1 - b1) * gs;
            rv[i] = b2 * rv[i] + (1 - b2) * gs * gs;
            double mhat = rm[i] / (1 - pow(b1, step)), vhat = rv[i] / (1 - pow(b2, step));
            rp[i] -= lr * (mhat / (sqrt(vhat) + eps) + wd * rp[i]);
        }
        free(g);
    }
    assert_close(m, rm, n, 1e-14, "adamw m");
    assert_close(v, rv, n, 1e-14, "adamw v");
    assert_close(p, rp, n, 1e-13, "adamw param");

    // weight_decay 0 leaves a zero-gradient param where it is
    double p0 = 1.5, g0 = 0, m0 = 0, v0 = 0;
    moe_d_adamw_update(&p0, &g0, &m0, &v0, 1, lr, b1, b2, eps, 0, 1, 1.0);
    ck_assert(p0 == 1.5);
    free(p); free(m); free(v); free(rp); free(rm); free(rv);
}
END_TEST

START_TEST(test_sum_squares_scale)
{
    size_t sizes[] = {0, 1, 1000, 16384 * 3 + 5, 5000011}; // the last has chunks > the minimum
    for (int k = 0; k < 5; k++) {
        size_t n = sizes[k];
        double *x = rnd(n, 71 + k, 1);
        double ref = 0;
        for (size_t i = 0; i < n; i++)
            ref += x[i] * x[i];
        omp_set_num_threads(1);
        double s1 = moe_d_sum_squares(x, n);
        omp_set_num_threads(2);
        double s2 = moe_d_sum_squares(x, n);
        ck_assert_msg(fabs(s2 - ref) <= 1e-12 * ref, "sum_squares n=%zu: %.17g vs %.17g", n, s2,
                      ref);
        ck_assert_msg(s1 == s2, "sum_squares depends on the thread count (n=%zu)", n);
        if (n) {
            double keep = x[n / 2];
            moe_d_scale(x, n, -0.5);
            ck_assert(x[n / 2] == -0.5 * keep);
        }
        free(x);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("grad_dense");
    TCase *tc = tcase_create("dense");
    tcase_add_test(tc, test_linear);
    tcase_add_test(tc, test_embedding);
    tcase_add_test(tc, test_rmsnorm);
    tcase_add_test(tc, test_rope);
    tcase_add_test(tc, test_swiglu);
    tcase_add_test(tc, test_crossentropy);
    tcase_add_test(tc, test_adamw);
    tcase_add_test(tc, test_sum_squares_scale);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
