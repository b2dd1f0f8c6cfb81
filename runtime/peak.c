#include "runtime/peak.h"

#include <dirent.h>
#include <errno.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "layers/gemm.h"
#include "runtime/base/cpu.h"
#include "runtime/base/fs.h"
#include "runtime/base/log.h"
#include "runtime/base/mem.h"
#include "runtime/base/timer.h"

moe_status moe_peak_measure(moe_peak *out, int size, int reps)
{
    size_t n = (size_t)size * size;
    float *a = NULL, *b = NULL, *c = NULL;
    moe_status st = MOE_OK;
    MOE_TRY_GOTO(moe_alloc((void **)&a, n * sizeof(float), "peak A"), st, done);
    MOE_TRY_GOTO(moe_alloc((void **)&b, n * sizeof(float), "peak B"), st, done);
    MOE_TRY_GOTO(moe_alloc((void **)&c, n * sizeof(float), "peak C"), st, done);
    for (size_t i = 0; i < n; i++) {
        a[i] = (float)((i * 7) % 13) * 0.01f;
        b[i] = (float)((i * 5) % 11) * 0.01f;
    }
    moe_gemm(0, 1, size, size, size, 1.0f, a, size, b, size, 0.0f, c, size); /* warm-up */
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = moe_now();
        moe_gemm(0, 1, size, size, size, 1.0f, a, size, b, size, 0.0f, c, size);
        double dt = moe_now() - t0;
        best = dt < best ? dt : best;
    }
    memset(out, 0, sizeof *out);
    out->gflops = 2.0 * size * (double)size * size / best / 1e9;
    out->threads = omp_get_max_threads();
    out->size = size;
    snprintf(out->coretype, sizeof out->coretype, "%s", moe_cpu_blas_coretype()[0] ? moe_cpu_blas_coretype() : "auto");
done:
    moe_free(a);
    moe_free(b);
    moe_free(c);
    return st;
}

moe_status moe_peak_cache_path(char *buf, size_t cap)
{
    char dir[768];
    const char *env = getenv("MOE_CACHE_DIR"), *home = getenv("HOME");
    if (env && *env)
        snprintf(dir, sizeof dir, "%s", env);
    else
        snprintf(dir, sizeof dir, "%s/.cache/moe", home && *home ? home : "/tmp");
    char host[128] = "host";
    gethostname(host, sizeof host - 1);
    const char *core = moe_cpu_blas_coretype();
    snprintf(buf, cap, "%s/peak-%s-t%d-%s.json", dir, host, omp_get_max_threads(), core[0] ? core : "auto");
    return MOE_OK;
}

static int read_cache(const char *path, moe_peak *out)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int ok = fscanf(f, "{\"gflops\": %lf, \"threads\": %d, \"size\": %d", &out->gflops, &out->threads,
                    &out->size) == 3;
    fclose(f);
    snprintf(out->coretype, sizeof out->coretype, "%s", moe_cpu_blas_coretype());
    return ok && out->gflops > 0;
}

moe_status moe_peak_store(moe_peak *p)
{
    char path[1024], tmp[1100];
    MOE_TRY(moe_peak_cache_path(path, sizeof path));
    moe_peak old;
    if (read_cache(path, &old) && old.gflops >= p->gflops) {
        *p = old;
        return MOE_OK;
    }
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = '\0';
    MOE_TRY(moe_mkdir_p(dir));
    snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f)
        return moe_fail(MOE_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    fprintf(f, "{\"gflops\": %.3f, \"threads\": %d, \"size\": %d, \"coretype\": \"%s\"}\n", p->gflops,
            p->threads, p->size, p->coretype);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return moe_fail(MOE_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    }
    return MOE_OK;
}

/* The best per-thread rate any cached measurement of this host and BLAS core
** type shows (peak-<host>-t<T>-<core>.json for every T): one measurement taken
** on a busy moment must not stand as the peak, or MFU would read high. */
static double best_cached_rate(const char *own_path)
{
    char dir[1024], pattern[1024];
    snprintf(dir, sizeof dir, "%s", own_path);
    char *slash = strrchr(dir, '/'), *t = NULL;
    if (!slash)
        return 0;
    *slash = '\0';
    snprintf(pattern, sizeof pattern, "%s", slash + 1);
    if (!(t = strstr(pattern, "-t")))
        return 0;
    const char *core = strchr(t + 2, '-'); /* "-<core>.json" */
    if (!core)
        return 0;
    char prefix[512], suffix[128];
    snprintf(prefix, sizeof prefix, "%.*s-t", (int)(t - pattern), pattern);
    snprintf(suffix, sizeof suffix, "%s", core);
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    double best = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name), ls = strlen(suffix);
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0 || n < ls || strcmp(e->d_name + n - ls, suffix) != 0)
            continue;
        char path[1400];
        moe_peak p;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (read_cache(path, &p) && p.threads > 0 && p.gflops / p.threads > best)
            best = p.gflops / p.threads;
    }
    closedir(d);
    return best;
}

moe_status moe_peak_get(moe_peak *out)
{
    char path[1024];
    MOE_TRY(moe_peak_cache_path(path, sizeof path));
    if (!read_cache(path, out)) {
        MOE_TRY(moe_peak_measure(out, 4096, 3));
        if (moe_peak_store(out) != MOE_OK) {
            moe_warn("%s", moe_errmsg()); /* an unwritable cache costs a re-measure next time */
            moe_error_clear();
        }
    }
    double rate = best_cached_rate(path);
    if (rate * out->threads > out->gflops)
        out->gflops = rate * out->threads;
    return MOE_OK;
}
