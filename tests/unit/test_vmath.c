/*
** The fp32 exponential of the hot loops (layers/vmath.h) against double
** exp: relative error within 2 ulp over the range softmax and silu use, the
** clamps at both ends, and NaN passing through. The gradient tests run the
** double build, so this is where the float path's own math is checked.
*/
#include <check.h>
#include <math.h>

#include "layers/vmath.h"

START_TEST(vexp_is_accurate)
{
    double worst = 0;
    float worst_x = 0;
    for (float x = -87.0f; x <= 88.0f; x += 0.0037f) {
        double want = exp((double)x);
        double err = fabs((double)moe_vexp(x) - want) / want;
        if (err > worst) {
            worst = err;
            worst_x = x;
        }
    }
    ck_assert_msg(worst < 2 * 0x1.0p-23, "worst relative error %g at x = %g", worst, worst_x);
    ck_assert(moe_vexp(0.0f) == 1.0f);
}
END_TEST

START_TEST(vexp_clamps_and_passes_nan)
{
    ck_assert(isfinite(moe_vexp(1000.0f)) && moe_vexp(1000.0f) > 1e38f);
    ck_assert(moe_vexp(-1000.0f) >= 0.0f && moe_vexp(-1000.0f) < 1e-37f);
    ck_assert(isnan(moe_vexp(NAN)));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("vmath");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, vexp_is_accurate);
    tcase_add_test(tc, vexp_clamps_and_passes_nan);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
