/*
** gradcheck: central finite differences in double precision against an
** analytic gradient. Ops under test are the moe_d_ (double) builds.
**
** The usual pattern: loss = sum(out * r) for a fixed random r, so the analytic
** gradient of the op's inputs comes from its backward with dout = r.
*/
#ifndef MOE_GRADCHECK_H
#define MOE_GRADCHECK_H

#include <stddef.h>
#include <stdint.h>

typedef double (*gc_loss_fn)(void *ctx);

/* Max over checked i of |analytic[i] - fd[i]| / max(|analytic[i]|, |fd[i]|, 1e-3),
** where fd[i] = (f(x+h e_i) - f(x-h e_i)) / 2h. Checks every entry when n <=
** max_checks, else max_checks entries spread evenly. Prints the worst entry. */
double gc_check(gc_loss_fn f, void *ctx, double *x, const double *analytic, size_t n,
                size_t max_checks, const char *name);

void gc_fill_normal(double *x, size_t n, uint64_t seed, double scale);
double gc_dot(const double *a, const double *b, size_t n);
double *gc_alloc(size_t n); /* zeroed; aborts the test on failure */

#define GC_TOL 1e-6
#define GC_H 1e-5

#endif
