#include "runtime/base/tokfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "runtime/base/mem.h"

static const unsigned char TOK_MAGIC[8] = {'M', 'O', 'E', 'T', 'O', 'K', 0, 1};

/* Tokens move through a bounded staging buffer so neither reading nor writing
** needs a second copy of a whole shard. */
#define CHUNK_TOKENS ((size_t)1 << 14)

// ----------------------------------------------------------------------------
// little-endian encoding (explicit, so files are the same on any host)

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const unsigned char *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

static void encode_tokens(unsigned char *dst, const uint32_t *src, size_t n, uint32_t bpt)
{
    for (size_t i = 0; i < n; i++)
        for (uint32_t b = 0; b < bpt; b++)
            dst[i * bpt + b] = (unsigned char)(src[i] >> (8 * b));
}

static void decode_tokens(uint32_t *dst, const unsigned char *src, size_t n, uint32_t bpt)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t v = 0;
        for (uint32_t b = 0; b < bpt; b++)
            v |= (uint32_t)src[i * bpt + b] << (8 * b);
        dst[i] = v;
    }
}

// ----------------------------------------------------------------------------
// writing

static uint32_t bytes_per_token_for(uint32_t vocab_size)
{
    return vocab_size <= 65536u ? 2u : 4u;
}

/* fsync the directory holding `path`, so the rename itself is durable. */
static moe_status fsync_parent_dir(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash) {
        snprintf(dir, sizeof dir, ".");
    } else if (slash == path) {
        snprintf(dir, sizeof dir, "/");
    } else {
        size_t len = (size_t)(slash - path);
        if (len >= sizeof dir)
            return moe_fail(MOE_ERR_IO, "%s: path too long", path);
        memcpy(dir, path, len);
        dir[len] = '\0';
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return moe_fail(MOE_ERR_IO, "%s: cannot open directory to sync it: %s", dir, strerror(errno));
    /* Some filesystems cannot fsync a directory (EINVAL); the data itself is
    ** already synced then, which is the part that matters. */
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    if (rc != 0 && err != EINVAL)
        return moe_fail(MOE_ERR_IO, "%s: fsync of directory failed: %s", dir, strerror(err));
    return MOE_OK;
}

/* Streams a zeroed header and the payload into f, then rewrites the header. */
static moe_status write_contents(FILE *f, const char *tmp, const uint32_t *tokens, uint64_t n,
                                 uint32_t vocab_size)
{
    uint32_t bpt = bytes_per_token_for(vocab_size);
    unsigned char header[MOE_TOKFILE_HEADER_BYTES] = {0};
    if (fwrite(header, 1, sizeof header, f) != sizeof header)
        return moe_fail(MOE_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));

    XXH64_state_t *xs = XXH64_createState();
    if (!xs)
        return moe_fail(MOE_ERR_NOMEM, "%s: cannot allocate checksum state", tmp);
    XXH64_reset(xs, 0);
    unsigned char buf[CHUNK_TOKENS * 4];
    for (uint64_t at = 0; at < n; at += CHUNK_TOKENS) {
        size_t k = (size_t)(n - at < CHUNK_TOKENS ? n - at : CHUNK_TOKENS);
        encode_tokens(buf, tokens + at, k, bpt);
        XXH64_update(xs, buf, k * bpt);
        if (fwrite(buf, bpt, k, f) != k) {
            XXH64_freeState(xs);
            return moe_fail(MOE_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
        }
    }
    uint64_t sum = XXH64_digest(xs);
    XXH64_freeState(xs);

    memcpy(header, TOK_MAGIC, 8);
    put_u32(header + 8, MOE_TOKFILE_VERSION);
    put_u32(header + 12, vocab_size);
    put_u64(header + 16, n);
    put_u32(header + 24, bpt);
    put_u32(header + 28, 0);
    put_u64(header + 32, sum);
    if (fseek(f, 0, SEEK_SET) != 0 || fwrite(header, 1, sizeof header, f) != sizeof header)
        return moe_fail(MOE_ERR_IO, "%s: writing header failed: %s", tmp, strerror(errno));
    if (fflush(f) != 0 || fsync(fileno(f)) != 0)
        return moe_fail(MOE_ERR_IO, "%s: flush/fsync failed: %s", tmp, strerror(errno));
    return MOE_OK;
}

moe_status moe_tokfile_write(const char *path, const uint32_t *tokens, uint64_t n,
                             uint32_t vocab_size)
{
    if (!path || !*path)
        return moe_fail(MOE_ERR_USAGE, "moe_tokfile_write: empty path");
    if (vocab_size == 0)
        return moe_fail(MOE_ERR_INPUT, "%s: vocab_size must be > 0", path);
    if (n > 0 && !tokens)
        return moe_fail(MOE_ERR_USAGE, "%s: %llu tokens but no token buffer", path,
                        (unsigned long long)n);
    for (uint64_t i = 0; i < n; i++)
        if (tokens[i] >= vocab_size)
            return moe_fail(MOE_ERR_INPUT, "%s: token %u at index %llu is >= vocab_size %u", path,
                            tokens[i], (unsigned long long)i, vocab_size);

    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp)
        return moe_fail(MOE_ERR_USAGE, "%s: path too long", path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return moe_fail(MOE_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    moe_status st = write_contents(f, tmp, tokens, n, vocab_size);
    if (fclose(f) != 0 && st == MOE_OK)
        st = moe_fail(MOE_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (st == MOE_OK && rename(tmp, path) != 0)
        st = moe_fail(MOE_ERR_IO, "%s: cannot rename %s over it: %s", path, tmp, strerror(errno));
    if (st != MOE_OK) {
        unlink(tmp);
        moe_trace_frame(__FILE__, __LINE__);
        return st;
    }
    MOE_TRY(fsync_parent_dir(path));
    return MOE_OK;
}

// ----------------------------------------------------------------------------
// reading

typedef struct {
    const char *path;
    FILE *f;
    long long size;       /* file size in bytes */
    uint64_t header_bytes;
    uint64_t ntokens;
    uint32_t bpt;
    uint32_t vocab_size;
    int has_checksum;
    uint64_t checksum;
} reader;

static moe_status check_size(const reader *r, const char *what)
{
    if (r->ntokens > (UINT64_MAX - r->header_bytes) / r->bpt)
        return moe_fail(MOE_ERR_INPUT, "%s: corrupt %s header: %llu tokens is impossibly many",
                        r->path, what, (unsigned long long)r->ntokens);
    uint64_t want = r->header_bytes + r->ntokens * r->bpt;
    if ((uint64_t)r->size < want)
        return moe_fail(MOE_ERR_INPUT,
                        "%s: truncated: header says %llu tokens (%llu bytes), file has %lld bytes",
                        r->path, (unsigned long long)r->ntokens, (unsigned long long)want, r->size);
    if ((uint64_t)r->size > want)
        return moe_fail(MOE_ERR_INPUT,
                        "%s: size mismatch: header says %llu tokens (%llu bytes), file has %lld "
                        "bytes (%llu trailing)",
                        r->path, (unsigned long long)r->ntokens, (unsigned long long)want, r->size,
                        (unsigned long long)((uint64_t)r->size - want));
    return MOE_OK;
}

static moe_status parse_tok_header(reader *r, const unsigned char *h)
{
    if (r->size < MOE_TOKFILE_HEADER_BYTES)
        return moe_fail(MOE_ERR_INPUT, "%s: truncated: header needs %d bytes, file has %lld bytes",
                        r->path, MOE_TOKFILE_HEADER_BYTES, r->size);
    uint32_t version = get_u32(h + 8);
    if (version != MOE_TOKFILE_VERSION)
        return moe_fail(MOE_ERR_INPUT, "%s: unsupported token file version %u (this build reads %d)",
                        r->path, version, MOE_TOKFILE_VERSION);
    r->vocab_size = get_u32(h + 12);
    r->ntokens = get_u64(h + 16);
    r->bpt = get_u32(h + 24);
    r->checksum = get_u64(h + 32);
    r->has_checksum = 1;
    r->header_bytes = MOE_TOKFILE_HEADER_BYTES;
    if (r->vocab_size == 0)
        return moe_fail(MOE_ERR_INPUT, "%s: corrupt header: vocab_size is 0", r->path);
    if (r->bpt != 1 && r->bpt != 2 && r->bpt != 4)
        return moe_fail(MOE_ERR_INPUT, "%s: corrupt header: bytes_per_token is %u (must be 1, 2 or 4)",
                        r->path, r->bpt);
    for (int i = 28; i < MOE_TOKFILE_HEADER_BYTES; i++)
        if (i >= 40 || i < 32) /* bytes 32..39 are the checksum */
            if (h[i] != 0)
                return moe_fail(MOE_ERR_INPUT, "%s: corrupt header: reserved byte %d is not zero",
                                r->path, i);
    return check_size(r, "token file");
}

static moe_status parse_llmc_header(reader *r, const unsigned char *h)
{
    if (r->size < MOE_LLMC_HEADER_BYTES)
        return moe_fail(MOE_ERR_INPUT,
                        "%s: truncated: llm.c header needs %d bytes, file has %lld bytes", r->path,
                        MOE_LLMC_HEADER_BYTES, r->size);
    int32_t version = (int32_t)get_u32(h + 4);
    int32_t ntok = (int32_t)get_u32(h + 8);
    if (version != 1)
        return moe_fail(MOE_ERR_INPUT,
                        "%s: unsupported llm.c token file version %d (only version 1: uint16 GPT-2 "
                        "tokens)",
                        r->path, (int)version);
    if (ntok < 0)
        return moe_fail(MOE_ERR_INPUT, "%s: corrupt llm.c header: token count %d is negative",
                        r->path, (int)ntok);
    r->ntokens = (uint64_t)ntok;
    r->bpt = 2;
    r->vocab_size = MOE_LLMC_GPT2_VOCAB;
    r->has_checksum = 0;
    r->header_bytes = MOE_LLMC_HEADER_BYTES;
    return check_size(r, "llm.c");
}

/* Reads the payload into tokens (ntokens entries), checksumming as it goes.
** Checksum failures are reported before out-of-vocab tokens: a corrupt byte
** usually shows up as both, and "checksum" is the truer diagnosis. */
static moe_status read_payload(reader *r, uint32_t *tokens)
{
    if (fseek(r->f, (long)r->header_bytes, SEEK_SET) != 0)
        return moe_fail(MOE_ERR_IO, "%s: seek failed: %s", r->path, strerror(errno));
    XXH64_state_t *xs = XXH64_createState();
    if (!xs)
        return moe_fail(MOE_ERR_NOMEM, "%s: cannot allocate checksum state", r->path);
    XXH64_reset(xs, 0);
    unsigned char buf[CHUNK_TOKENS * 4];
    for (uint64_t at = 0; at < r->ntokens; at += CHUNK_TOKENS) {
        size_t k = (size_t)(r->ntokens - at < CHUNK_TOKENS ? r->ntokens - at : CHUNK_TOKENS);
        if (fread(buf, r->bpt, k, r->f) != k) {
            XXH64_freeState(xs);
            return moe_fail(MOE_ERR_IO, "%s: read failed at token %llu (file changed while reading?)",
                            r->path, (unsigned long long)at);
        }
        XXH64_update(xs, buf, k * r->bpt);
        decode_tokens(tokens + at, buf, k, r->bpt);
    }
    uint64_t sum = XXH64_digest(xs);
    XXH64_freeState(xs);
    if (r->has_checksum && sum != r->checksum)
        return moe_fail(MOE_ERR_INPUT,
                        "%s: checksum mismatch: header says xxh64 %016llx, payload has %016llx "
                        "(file is corrupt)",
                        r->path, (unsigned long long)r->checksum, (unsigned long long)sum);
    for (uint64_t i = 0; i < r->ntokens; i++)
        if (tokens[i] >= r->vocab_size)
            return moe_fail(MOE_ERR_INPUT, "%s: token %u at index %llu is >= vocab_size %u",
                            r->path, tokens[i], (unsigned long long)i, r->vocab_size);
    return MOE_OK;
}

static moe_status read_open_file(reader *r, moe_tokfile *out)
{
    struct stat sb;
    if (fstat(fileno(r->f), &sb) != 0)
        return moe_fail(MOE_ERR_IO, "%s: stat failed: %s", r->path, strerror(errno));
    if (!S_ISREG(sb.st_mode))
        return moe_fail(MOE_ERR_INPUT, "%s: not a regular file", r->path);
    r->size = (long long)sb.st_size;

    unsigned char h[MOE_TOKFILE_HEADER_BYTES] = {0};
    size_t got = fread(h, 1, sizeof h, r->f);
    if (got < sizeof h && ferror(r->f))
        return moe_fail(MOE_ERR_IO, "%s: read failed: %s", r->path, strerror(errno));
    if (got >= 8 && memcmp(h, TOK_MAGIC, 8) == 0) {
        MOE_TRY(parse_tok_header(r, h));
    } else if (got >= 4 && get_u32(h) == MOE_LLMC_MAGIC) {
        MOE_TRY(parse_llmc_header(r, h));
    } else if (got < 8) {
        return moe_fail(MOE_ERR_INPUT, "%s: too short to be a token file (%lld bytes)", r->path,
                        r->size);
    } else {
        return moe_fail(MOE_ERR_INPUT,
                        "%s: bad magic: not a moe token file (\"MOETOK\\0\\1\") nor an llm.c token "
                        "file (%d); first bytes %02x %02x %02x %02x %02x %02x %02x %02x",
                        r->path, MOE_LLMC_MAGIC, h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]);
    }

    size_t bytes;
    if (r->ntokens > SIZE_MAX)
        return moe_fail(MOE_ERR_NOMEM, "%s: %llu tokens do not fit in memory", r->path,
                        (unsigned long long)r->ntokens);
    MOE_TRY(moe_mul_size((size_t)r->ntokens, sizeof(uint32_t), &bytes));
    uint32_t *tokens;
    MOE_TRY(moe_alloc((void **)&tokens, bytes, "token shard"));
    moe_status st = read_payload(r, tokens);
    if (st != MOE_OK) {
        moe_free(tokens);
        moe_trace_frame(__FILE__, __LINE__);
        return st;
    }
    out->vocab_size = r->vocab_size;
    out->ntokens = r->ntokens;
    out->tokens = tokens;
    return MOE_OK;
}

moe_status moe_tokfile_read(const char *path, moe_tokfile *out)
{
    if (!path || !out)
        return moe_fail(MOE_ERR_USAGE, "moe_tokfile_read: NULL argument");
    reader r = {.path = path};
    r.f = fopen(path, "rb");
    if (!r.f)
        return moe_fail(errno == ENOENT ? MOE_ERR_INPUT : MOE_ERR_IO, "%s: cannot open: %s", path,
                        strerror(errno));
    moe_status st = read_open_file(&r, out);
    fclose(r.f);
    if (st != MOE_OK)
        moe_trace_frame(__FILE__, __LINE__);
    return st;
}

void moe_tokfile_free(moe_tokfile *f)
{
    if (!f)
        return;
    moe_free(f->tokens);
    f->tokens = NULL;
    f->ntokens = 0;
    f->vocab_size = 0;
}
