#include "gradcheck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

double gc_check(gc_loss_fn f, void *ctx, double *x, const double *analytic, size_t n,
                size_t max_checks, const char *name)
{
    size_t stride = n <= max_checks ? 1 : n / max_checks;
    double worst = 0.0;
    size_t worst_i = 0;
    double worst_a = 0, worst_fd = 0;
    for (size_t i = 0; i < n; i += stride) {
        double keep = x[i];
        x[i] = keep + GC_H;
        double fp = f(ctx);
        x[i] = keep - GC_H;
        double fm = f(ctx);
        x[i] = keep;
        double fd = (fp - fm) / (2 * GC_H);
        double denom = fmax(fmax(fabs(analytic[i]), fabs(fd)), 1e-3);
        double err = fabs(analytic[i] - fd) / denom;
        if (err > worst) {
            worst = err;
            worst_i = i;
            worst_a = analytic[i];
            worst_fd = fd;
        }
    }
    printf("gradcheck %-24s n=%-7zu worst rel err %.3e at %zu (analytic %.9g, fd %.9g)\n", name, n,
           worst, worst_i, worst_a, worst_fd);
    return worst;
}

void gc_fill_normal(double *x, size_t n, uint64_t seed, double scale)
{
    uint64_t s = seed * 0x9e3779b97f4a7c15ULL + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        double u1 = ((s >> 11) + 0.5) * 0x1.0p-53;
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        double u2 = (s >> 11) * 0x1.0p-53;
        x[i] = scale * sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2);
    }
}

double gc_dot(const double *a, const double *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

double *gc_alloc(size_t n)
{
    double *p = calloc(n ? n : 1, sizeof(double));
    if (!p) {
        fprintf(stderr, "gradcheck: out of memory (%zu doubles)\n", n);
        abort();
    }
    return p;
}
