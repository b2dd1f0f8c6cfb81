/*
** perf/gemm_stall.c, the check calibrate runs over its sgemm timings: a
** shape slower per call than one no smaller in any dimension is found (the
** measurement that once read 0.0004 of the peak), ordinary noise and larger
** shapes that are slower are not, and shapes that do not nest are never
** compared.
*/
#include <check.h>

#include "perf/gemm_stall.h"

static const int MKN[][3] = {{32, 64, 256}, {64, 64, 256}, {256, 64, 256}, {64, 16, 64}, {1024, 512, 1536}};
#define N ((int)(sizeof MKN / sizeof MKN[0]))

START_TEST(test_stall_found)
{
    /* call times at these rates: 10.5, 10.5, 21, 13 us and 10.7 ms (32x64x256 as slow as 64x64x256) */
    double ok[N] = {100, 200, 400, 10, 150};
    int than = -7;
    ck_assert_int_eq(moe_gemm_stalled(MKN, ok, N, 1.5, &than), -1);
    ck_assert_int_eq(than, -7);
    double stall[N] = {0.12, 200, 400, 10, 150}; /* 0.0004 of a 300 GFLOP/s peak */
    ck_assert_int_eq(moe_gemm_stalled(MKN, stall, N, 1.5, &than), 0);
    ck_assert_int_eq(than, 1);
    /* 1.4x slower than 64x64x256: within the factor; 1.6x: not */
    double near[N] = {200 / 2 / 1.4, 200, 400, 10, 150}, far[N] = {200 / 2 / 1.6, 200, 400, 10, 150};
    ck_assert_int_eq(moe_gemm_stalled(MKN, near, N, 1.5, &than), -1);
    ck_assert_int_eq(moe_gemm_stalled(MKN, far, N, 1.5, &than), 0);
}
END_TEST

START_TEST(test_only_nested_shapes_compared)
{
    /* 64x16x64 at 0.01 GFLOP/s (13 ms a call) nests in no other shape here
    ** but 64x64x256 and up; make those slow too: then nothing is smaller */
    double slow_small[N] = {100, 200, 400, 0.01, 150};
    int than = -1;
    ck_assert_int_eq(moe_gemm_stalled(MKN, slow_small, N, 1.5, &than), 3);
    ck_assert_int_eq(than, 1);
    static const int apart[][3] = {{512, 16, 16}, {16, 16, 512}};
    double r[2] = {1, 1000}; /* 1000x apart, neither no smaller than the other */
    ck_assert_int_eq(moe_gemm_stalled(apart, r, 2, 1.5, &than), -1);
    static const int same[][3] = {{64, 64, 256}, {64, 64, 256}};
    double twice[2] = {100, 160}; /* the same shape measured twice, 1.6x apart */
    ck_assert_int_eq(moe_gemm_stalled(same, twice, 2, 1.5, &than), 0);
    ck_assert_int_eq(than, 1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gemm_stall");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_stall_found);
    tcase_add_test(tc, test_only_nested_shapes_compared);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
