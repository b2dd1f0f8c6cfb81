/*
** tokfile: token shard files, the one on-disk form of training data.
**
** A .tok file is a 64-byte little-endian header followed by the tokens:
**
**   offset size  field
**        0    8  magic "MOETOK\0\1"
**        8    4  u32 version (1)
**       12    4  u32 vocab_size (every token is < vocab_size)
**       16    8  u64 ntokens
**       24    4  u32 bytes_per_token (1, 2 or 4; the writer uses 2 when
**                vocab_size <= 65536, else 4)
**       28    4  u32 reserved (0)
**       32    8  u64 XXH64 (seed 0) of the payload bytes exactly as stored
**       40   24  zero
**       64       ntokens little-endian unsigned tokens, bytes_per_token each
**
** moe_tokfile_read also reads llm.c's .bin shards (written by its dev/data
** scripts): a header of 256 little-endian int32 (header[0] = 20240520,
** header[1] = 1, header[2] = ntokens), then ntokens uint16 GPT-2 tokens (vocab
** 50257), file size exactly 1024 + 2 * ntokens. The format is picked from the
** magic, not the file name.
**
** Errors: anything wrong with a file's contents (bad magic or version, a size
** that disagrees with the header, a checksum mismatch, a token >= vocab_size)
** is MOE_ERR_INPUT with a message that starts with the path and names the
** problem; failing system calls are MOE_ERR_IO; no allocation is left behind
** on failure. No MPI, no global state: safe to call from any thread.
*/
#ifndef MOE_TOKFILE_H
#define MOE_TOKFILE_H

#include <stdint.h>

#include "runtime/base/status.h"

#define MOE_TOKFILE_HEADER_BYTES 64
#define MOE_TOKFILE_VERSION 1
#define MOE_LLMC_MAGIC 20240520
#define MOE_LLMC_HEADER_BYTES 1024
#define MOE_LLMC_GPT2_VOCAB 50257

/* Writes tokens[0..n) to `path` atomically: the data goes to "<path>.tmp",
** is flushed and fsync'ed, and is renamed over `path` (then the directory is
** fsync'ed), so a crash leaves either the old file or the new one, never half
** of one. Every token must be < vocab_size (MOE_ERR_INPUT naming the first
** that is not; nothing is written). n may be 0 (tokens may then be NULL). */
moe_status moe_tokfile_write(const char *path, const uint32_t *tokens, uint64_t n,
                             uint32_t vocab_size);

/* A file's contents in memory. `tokens` (ntokens entries, each < vocab_size)
** is owned by the struct and released by moe_tokfile_free. */
typedef struct {
    uint32_t vocab_size;
    uint64_t ntokens;
    uint32_t *tokens;
} moe_tokfile;

/* Reads and fully validates a .tok or llm.c .bin file into *out (which is
** written only on success). */
moe_status moe_tokfile_read(const char *path, moe_tokfile *out);

/* Frees out->tokens and zeroes the struct; safe on a zeroed struct and twice. */
void moe_tokfile_free(moe_tokfile *f);

#endif
