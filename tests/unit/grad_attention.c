/*
** Causal GQA attention in double precision: forward against a naive
** reference, dqkv against central finite differences (GQA and plain MHA,
** short T and T spanning several row blocks), the += contract, causality in
** both directions, and thread-count independence.
*/
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "layers/attention.h"

typedef struct {
    double *qkv, *out, *att, *r;
    int B, T, NH, NKV, HD;
} att_ctx;

static size_t n_qkv(const att_ctx *c) { return (size_t)c->B * c->T * (c->NH + 2 * c->NKV) * c->HD; }
static size_t n_out(const att_ctx *c) { return (size_t)c->B * c->T * c->NH * c->HD; }
static size_t n_att(const att_ctx *c) { return (size_t)c->B * c->NH * c->T * c->T; }

static att_ctx make(int B, int T, int NH, int NKV, int HD, uint64_t seed)
{
    att_ctx c = {.B = B, .T = T, .NH = NH, .NKV = NKV, .HD = HD};
    c.qkv = gc_alloc(n_qkv(&c));
    gc_fill_normal(c.qkv, n_qkv(&c), seed, 1.0);
    c.out = gc_alloc(n_out(&c));
    c.att = gc_alloc(n_att(&c));
    c.r = gc_alloc(n_out(&c));
    gc_fill_normal(c.r, n_out(&c), seed + 1, 0.1); // small loss, small FD round-off
    return c;
}

static void drop(att_ctx *c)
{
    free(c->qkv); free(c->out); free(c->att); free(c->r);
}

static double att_loss(void *p)
{
    att_ctx *c = p;
    moe_d_attention_forward(c->out, c->att, c->qkv, c->B, c->T, c->NH, c->NKV, c->HD);
    return gc_dot(c->out, c->r, n_out(c));
}

// dqkv for dout = c->r, into a zeroed buffer the caller frees
static double *backward(att_ctx *c)
{
    double *d = gc_alloc(n_qkv(c)), *scratch = gc_alloc(n_att(c));
    att_loss(c);
    moe_d_attention_backward(d, scratch, c->r, c->att, c->qkv, c->B, c->T, c->NH, c->NKV, c->HD);
    free(scratch);
    return d;
}

static void check_forward(att_ctx *c)
{
    int C3 = (c->NH + 2 * c->NKV) * c->HD, G = c->NH / c->NKV, T = c->T, HD = c->HD;
    double *s = gc_alloc(T);
    att_loss(c);
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->NH; h++)
            for (int t = 0; t < T; t++) {
                const double *q = c->qkv + ((size_t)b * T + t) * C3 + h * HD;
                double mx = -INFINITY, z = 0;
                for (int j = 0; j <= t; j++) {
                    const double *k = c->qkv + ((size_t)b * T + j) * C3 + (c->NH + h / G) * HD;
                    s[j] = 0;
                    for (int i = 0; i < HD; i++)
                        s[j] += q[i] * k[i];
                    s[j] /= sqrt(HD);
                    mx = fmax(mx, s[j]);
                }
                for (int j = 0; j <= t; j++)
                    z += (s[j] = exp(s[j] - mx));
                const double *arow = c->att + (((size_t)b * c->NH + h) * T + t) * T;
                for (int j = 0; j < T; j++)
                    ck_assert_msg(fabs(arow[j] - (j <= t ? s[j] / z : 0.0)) < 1e-13,
                                  "att b%d h%d t%d j%d", b, h, t, j);
                for (int i = 0; i < HD; i++) {
                    double o = 0;
                    for (int j = 0; j <= t; j++)
                        o += s[j] / z *
                             c->qkv[((size_t)b * T + j) * C3 + (c->NH + c->NKV + h / G) * HD + i];
                    double got = c->out[(((size_t)b * T + t) * c->NH + h) * HD + i];
                    ck_assert_msg(fabs(got - o) < 1e-12, "out b%d h%d t%d i%d", b, h, t, i);
                }
            }
    free(s);
}

static void check_grad(int B, int T, int NH, int NKV, int HD, size_t max_checks, const char *name)
{
    att_ctx c = make(B, T, NH, NKV, HD, 100 + T + NH * 7 + NKV);
    check_forward(&c);
    double *d = backward(&c);
    // The thousands of tiny forwards behind the differences run on one thread:
    // on a busy 2-core box each parallel region's barrier can cost a time
    // slice. The analytic side above ran threaded; the results agree bitwise
    // anyway (test_thread_independent).
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    double err = gc_check(att_loss, &c, c.qkv, d, n_qkv(&c), max_checks, name);
    omp_set_num_threads(threads);
    ck_assert_msg(err < GC_TOL, "%s: rel err %g", name, err);
    free(d);
    drop(&c);
}

START_TEST(test_grad_gqa) { check_grad(2, 5, 4, 2, 4, 4000, "attention gqa 4/2"); }
END_TEST
START_TEST(test_grad_mha) { check_grad(2, 6, 3, 3, 8, 4000, "attention mha 3/3"); }
END_TEST
START_TEST(test_grad_mqa_blocks) { check_grad(1, 70, 2, 1, 4, 1500, "attention mqa T=70"); }
END_TEST
START_TEST(test_grad_gqa_blocks) { check_grad(1, 130, 4, 2, 2, 1500, "attention gqa T=130"); }
END_TEST

START_TEST(test_accumulates)
{
    att_ctx c = make(2, 7, 4, 2, 4, 7);
    size_t n = n_qkv(&c);
    double *d = backward(&c);
    double *acc = gc_alloc(n), *base = gc_alloc(n), *scratch = gc_alloc(n_att(&c));
    gc_fill_normal(base, n, 9, 1.0);
    memcpy(acc, base, n * sizeof(double));
    moe_d_attention_backward(acc, scratch, c.r, c.att, c.qkv, c.B, c.T, c.NH, c.NKV, c.HD);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabs(acc[i] - (base[i] + d[i])) < 1e-12, "dqkv[%zu] not accumulated", i);
    free(d); free(acc); free(base); free(scratch);
    drop(&c);
}
END_TEST

START_TEST(test_causal)
{
    att_ctx c = make(2, 75, 4, 2, 4, 11);
    int C3 = (c.NH + 2 * c.NKV) * c.HD, CO = c.NH * c.HD, t0 = 66;
    size_t no = n_out(&c);
    att_loss(&c);
    double *before = gc_alloc(no);
    memcpy(before, c.out, no * sizeof(double));
    for (int b = 0; b < c.B; b++) // disturb q, k and v of every row after t0
        for (int t = t0 + 1; t < c.T; t++)
            for (int i = 0; i < C3; i++)
                c.qkv[((size_t)b * c.T + t) * C3 + i] += 0.7 + 0.01 * i;
    att_loss(&c);
    for (int b = 0; b < c.B; b++)
        for (int t = 0; t < c.T; t++)
            for (int i = 0; i < CO; i++) {
                size_t at = ((size_t)b * c.T + t) * CO + i;
                if (t <= t0)
                    ck_assert_msg(c.out[at] == before[at], "out row %d saw the future", t);
                else
                    ck_assert(c.out[at] != before[at]);
            }

    // a loss on rows <= t0 has no gradient on later rows
    for (int b = 0; b < c.B; b++)
        for (int t = t0 + 1; t < c.T; t++)
            memset(c.r + ((size_t)b * c.T + t) * CO, 0, CO * sizeof(double));
    double *d = backward(&c);
    for (int b = 0; b < c.B; b++)
        for (int t = t0 + 1; t < c.T; t++)
            for (int i = 0; i < C3; i++)
                ck_assert(d[((size_t)b * c.T + t) * C3 + i] == 0.0);
    free(before); free(d);
    drop(&c);
}
END_TEST

START_TEST(test_thread_independent)
{
    att_ctx c = make(2, 90, 4, 2, 8, 13);
    size_t no = n_out(&c), nq = n_qkv(&c);
    omp_set_num_threads(1);
    double *d1 = backward(&c);
    double *o1 = gc_alloc(no);
    memcpy(o1, c.out, no * sizeof(double));
    omp_set_num_threads(2);
    double *d2 = backward(&c);
    ck_assert(memcmp(o1, c.out, no * sizeof(double)) == 0);
    ck_assert(memcmp(d1, d2, nq * sizeof(double)) == 0);
    free(d1); free(d2); free(o1);
    drop(&c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("grad_attention");
    TCase *tc = tcase_create("attention");
    tcase_add_test(tc, test_grad_gqa);
    tcase_add_test(tc, test_grad_mha);
    tcase_add_test(tc, test_grad_mqa_blocks);
    tcase_add_test(tc, test_grad_gqa_blocks);
    tcase_add_test(tc, test_accumulates);
    tcase_add_test(tc, test_causal);
    tcase_add_test(tc, test_thread_independent);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
