/*
** mem: checked, aligned allocation.
**
** Every buffer moe.c computes on is 64-byte aligned (one cache line, one
** AVX-512 vector), so BLAS and vectorised loops never see a split load.
** Allocation failure is a status, never a crash: moe_alloc names what it was
** allocating so the message says which buffer did not fit.
*/
#ifndef MOE_MEM_H
#define MOE_MEM_H

#include <stddef.h>

#include "runtime/base/status.h"

#define MOE_ALIGN 64

/* *out = zeroed, aligned buffer of `bytes` (bytes may be 0: *out is then a valid
** non-NULL pointer that must still be freed). `what` names it in the error. */
moe_status moe_alloc(void **out, size_t bytes, const char *what);
void moe_free(void *p);

/* Multiplies counts with overflow detection (sizes come from user configs). */
moe_status moe_mul_size(size_t a, size_t b, size_t *out);

/*
** arena: a bump allocator for per-step activations, reset each step. One
** malloc up front; moe_arena_alloc never fails once sized by a dry run
** (moe_arena_measure mode counts bytes without handing out memory).
*/
typedef struct {
    char *base;
    size_t cap;
    size_t used;
    size_t peak;
    int measuring; /* counting only: alloc returns NULL and bumps `used` */
} moe_arena;

void moe_arena_init_measure(moe_arena *a);
moe_status moe_arena_init(moe_arena *a, size_t bytes);
/* Aligned chunk of `count` floats (zeroed). NULL while measuring. */
moe_status moe_arena_floats(moe_arena *a, size_t count, float **out, const char *what);
moe_status moe_arena_bytes(moe_arena *a, size_t bytes, void **out, const char *what);
void moe_arena_reset(moe_arena *a);
void moe_arena_free(moe_arena *a);

#endif
