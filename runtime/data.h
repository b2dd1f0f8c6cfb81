/*
** data: the training data loader. Stateless indexing: a sequence's tokens are
** a pure function of (directory contents, split, seq_len, seed, shuffle, its
** sequence number), so any parallel layout, any call order and any resume
** point see exactly the same sequences.
**
** Shards. moe_data_open loads every shard of `split` in `dir` into memory:
** regular files named "<split>_<digits>.tok", or llm.c's "<split>_<digits>.bin"
** (also "<anything>_<split>_<digits>.bin", e.g. fineweb_train_000001.bin),
** sorted by name prefix and then by number (train_999 before train_1000; for
** zero-padded numbers this is name order), and reads them as one token stream
** in that order (tokfile.h validates each). A split's shards are all .tok or all .bin, never a mix, and
** must agree on vocab_size.
**
** Windows. With T = seq_len and N tokens, the stream holds W = (N-1)/T windows;
** window w is tokens [w*T, w*T + T] (T+1 tokens: the inputs are the first T,
** the targets the last T). Neighbouring windows share one token, so tokens
** 1..W*T are each a target exactly once per epoch; the last (N-1) % T tokens
** are never read.
**
** Order. Sequence number s = 0, 1, 2, ... counts over the whole run (it is
** what the trainer stores in a checkpoint to resume). s maps to epoch e = s / W
** and position i = s % W, and reads window perm_e(i), where perm_e is a
** Fisher-Yates shuffle of 0..W-1 driven by moe_rng (rng.h) seeded with
**     seed ^ ((e + 1) * 0x9E3779B97F4A7C15)
** (for i = W-1 down to 1: swap(perm[i], perm[moe_rng_below(rng, i + 1)])),
** or the identity when shuffle == 0 (validation). Each epoch therefore visits
** every window exactly once, and epochs differ from each other.
**
** Memory and threads. The whole split stays in memory (4 bytes per token,
** plus 8 bytes per window for the current epoch's permutation). A moe_data
** caches one epoch's permutation, so one handle must not be used by two
** threads at once; open one per thread instead.
*/
#ifndef MOE_DATA_H
#define MOE_DATA_H

#include <stdint.h>

#include "runtime/base/status.h"

typedef struct moe_data moe_data;

/* Opens `split` ("train", "val", ...) of the prepared directory `dir`.
** seq_len > 0. Errors (MOE_ERR_INPUT unless said): no shards of the split
** ("no train_*.tok or train_*.bin shards in DIR"), a missing directory, a
** corrupt shard, mixed .tok/.bin shards, shards whose vocab sizes differ, fewer
** than seq_len+1 tokens (the message says how many are needed); a bad argument
** is MOE_ERR_USAGE. *out is set only on success; close it with moe_data_close. */
moe_status moe_data_open(moe_data **out, const char *dir, const char *split, int seq_len,
                         uint64_t seed, int shuffle);

/* Fills inputs and targets, each (count, seq_len) row-major, with sequences
** first_seq .. first_seq+count-1: row r is window perm_e(i) of sequence
** first_seq + r, inputs[r][t] = token[w*T + t], targets[r][t] = token[w*T + t + 1].
** The result depends only on the sequence numbers, never on earlier calls.
** count >= 0 (0 does nothing). */
moe_status moe_data_get(moe_data *d, uint64_t first_seq, int count, int32_t *inputs,
                        int32_t *targets);

uint64_t moe_data_num_windows(const moe_data *d); /* W: sequences per epoch */
int moe_data_vocab(const moe_data *d);            /* every token is < this */
uint64_t moe_data_num_tokens(const moe_data *d);  /* N: tokens in the split */
void moe_data_close(moe_data *d);                 /* NULL is fine */

#endif
