#include "runtime/base/mem.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

moe_status moe_alloc(void **out, size_t bytes, const char *what)
{
    size_t rounded = (bytes + MOE_ALIGN - 1) / MOE_ALIGN * MOE_ALIGN;
    if (rounded < bytes)
        return moe_fail(MOE_ERR_NOMEM, "allocating %s: size %zu overflows", what, bytes);
    if (rounded == 0)
        rounded = MOE_ALIGN;
    void *p = aligned_alloc(MOE_ALIGN, rounded);
    if (!p)
        return moe_fail(MOE_ERR_NOMEM, "out of memory allocating %s (%zu bytes)", what, bytes);
    memset(p, 0, rounded);
    *out = p;
    return MOE_OK;
}

void moe_free(void *p) { free(p); }

moe_status moe_mul_size(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a)
        return moe_fail(MOE_ERR_USAGE, "size %zu x %zu overflows", a, b);
    *out = a * b;
    return MOE_OK;
}

void moe_arena_init_measure(moe_arena *a)
{
    memset(a, 0, sizeof *a);
    a->measuring = 1;
}

moe_status moe_arena_init(moe_arena *a, size_t bytes)
{
    memset(a, 0, sizeof *a);
    MOE_TRY(moe_alloc((void **)&a->base, bytes, "activation arena"));
    a->cap = bytes;
    return MOE_OK;
}

moe_status moe_arena_bytes(moe_arena *a, size_t bytes, void **out, const char *what)
{
    size_t rounded = (bytes + MOE_ALIGN - 1) / MOE_ALIGN * MOE_ALIGN;
    if (a->measuring) {
        a->used += rounded;
        if (a->used > a->peak)
            a->peak = a->used;
        *out = NULL;
        return MOE_OK;
    }
    if (rounded > a->cap - a->used)
        return moe_fail(MOE_ERR_INTERNAL, "activation arena too small for %s: %zu bytes used of %zu, %zu more asked",
                        what, a->used, a->cap, rounded);
    *out = a->base + a->used;
    memset(*out, 0, rounded);
    a->used += rounded;
    if (a->used > a->peak)
        a->peak = a->used;
    return MOE_OK;
}

moe_status moe_arena_floats(moe_arena *a, size_t count, float **out, const char *what)
{
    size_t bytes = 0;
    MOE_TRY(moe_mul_size(count, sizeof(float), &bytes));
    return moe_arena_bytes(a, bytes, (void **)out, what);
}

void moe_arena_reset(moe_arena *a) { a->used = 0; }

void moe_arena_free(moe_arena *a)
{
    free(a->base);
    memset(a, 0, sizeof *a);
}
