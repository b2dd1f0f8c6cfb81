#include "runtime/base/cpu.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/base/log.h"

int moe_cpu_has_avx512(void)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

const char *moe_cpu_blas_coretype(void)
{
    const char *c = getenv("OPENBLAS_CORETYPE");
    return c ? c : "";
}

void moe_cpu_pick_blas_kernels(char **argv)
{
    const char *mode = getenv("MOE_BLAS_AUTO");
    if ((mode && strcmp(mode, "0") == 0) || getenv("OPENBLAS_CORETYPE") || !moe_cpu_has_avx512())
        return;
    if (setenv("OPENBLAS_CORETYPE", "SkylakeX", 1) != 0)
        return;
    execv("/proc/self/exe", argv);
    moe_warn("could not re-execute with OPENBLAS_CORETYPE=SkylakeX; BLAS runs its generic kernels");
    unsetenv("OPENBLAS_CORETYPE");
}

int moe_cpu_set_threads(int configured)
{
    const char *env = getenv("MOE_NUM_THREADS");
    int n = configured > 0 ? configured : env ? atoi(env) : 0;
    if (n > 0)
        omp_set_num_threads(n);
    return omp_get_max_threads();
}
