/*
** rng: a small, fast, reproducible random source (xoshiro256**, seeded by
** splitmix64). Its whole state is four words, so checkpoints save it exactly
** and a resumed run draws the same numbers as an uninterrupted one.
*/
#ifndef MOE_RNG_H
#define MOE_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} moe_rng;

void moe_rng_seed(moe_rng *r, uint64_t seed);
uint64_t moe_rng_u64(moe_rng *r);
/* Uniform in [0, n), unbiased. n > 0. */
uint64_t moe_rng_below(moe_rng *r, uint64_t n);
/* Uniform in [0, 1). */
double moe_rng_uniform(moe_rng *r);
/* Standard normal (Box-Muller, no cached second value: state stays 4 words). */
double moe_rng_normal(moe_rng *r);

#endif
