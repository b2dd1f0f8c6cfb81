/*
** cpu: processor facts and the BLAS kernel choice.
**
** Debian's OpenBLAS 0.3.21 does not recognise recent AVX-512 Xeons and falls
** back to generic kernels (on this project's machines: Prescott, SSE3, about
** a fifth of the sgemm speed; OPENBLAS_VERBOSE=2 shows the choice). OpenBLAS
** picks its kernels in a library constructor, before main() runs, from
** OPENBLAS_CORETYPE; so a program that wants the fast path sets it and
** re-executes itself once. moe_cpu_pick_blas_kernels does that when the CPU
** has AVX-512 (F, BW, DQ, VL) and the user has not chosen a core type; it
** returns only if no re-exec was needed or it failed (then the slow path runs,
** with a warning). MOE_BLAS_AUTO=0 turns it off.
*/
#ifndef MOE_CPU_H
#define MOE_CPU_H

/* Call first thing in main with main's argv. */
void moe_cpu_pick_blas_kernels(char **argv);

/* The OpenBLAS core type in force ("SkylakeX", or "" for the library's own choice). */
const char *moe_cpu_blas_coretype(void);

int moe_cpu_has_avx512(void);

/* Sets the compute threads of this process (OpenMP, which OpenBLAS shares):
** `configured` when > 0 (the num-threads key), else MOE_NUM_THREADS, else
** OpenMP's own default (OMP_NUM_THREADS or the cores). Returns the count. */
int moe_cpu_set_threads(int configured);

#endif
