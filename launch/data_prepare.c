#include "launch/data_prepare.h"
#include "launch/args.h"
#include "runtime/base/fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/base/mem.h"
#include "runtime/base/status.h"
#include "runtime/base/tokfile.h"

#define PROG "moe data prepare"
#define BYTE_VOCAB 256u
#define DEFAULT_VAL_FRACTION 0.05
#define DEFAULT_SHARD_TOKENS 100000000ull

static const char USAGE[] =
    "usage: moe data prepare --input FILE... --out DIR [--tokenizer byte]\n"
    "                        [--val-fraction F] [--shard-tokens N]\n"
    "\n"
    "Turns text into token shards for training.\n"
    "\n"
    "  --input FILE...     text files (UTF-8), concatenated in order; '-' is stdin\n"
    "  --out DIR           output directory (created if missing)\n"
    "  --tokenizer byte    one token per byte, vocab 256 (the only tokenizer so far)\n"
    "  --val-fraction F    last fraction of the tokens kept for validation, 0 < F < 1\n"
    "                      (default 0.05)\n"
    "  --shard-tokens N    at most N tokens per shard file (default 100000000)\n"
    "\n"
    "Writes DIR/train_000.tok ..., DIR/val_000.tok ... and DIR/meta.json.\n"
    "Example: bible -f gen1:1-rev22:21 > kjv.txt\n"
    "         moe data prepare --input kjv.txt --out data/kjv\n";

typedef struct {
    const char **inputs; /* (ninputs) pointers into argv */
    int ninputs;
    const char *out;
    const char *tokenizer;
    double val_fraction;
    uint64_t shard_tokens;
    int help;
} options;

typedef struct {
    unsigned char *data;
    size_t len, cap;
} bytebuf;

// ----------------------------------------------------------------------------
// command line

static moe_status parse_fraction(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v) || v <= 0.0 || v >= 1.0)
        return moe_fail(MOE_ERR_USAGE, "--val-fraction must be a number in (0, 1), got '%s'", s);
    *out = v;
    return MOE_OK;
}

static moe_status parse_count(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*s < '0' || *s > '9' || *end || errno || v == 0)
        return moe_fail(MOE_ERR_USAGE, "--shard-tokens must be a positive integer, got '%s'", s);
    *out = v;
    return MOE_OK;
}

static moe_status parse_args(int argc, char **argv, options *o)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            o->help = 1;
        } else if (moe_arg_is(a, "--input")) {
            if (a[7] == '=') {
                o->inputs[o->ninputs++] = a + 8;
                continue;
            }
            int before = o->ninputs;
            while (i + 1 < argc && !moe_arg_is_flag(argv[i + 1]))
                o->inputs[o->ninputs++] = argv[++i];
            if (o->ninputs == before)
                return moe_fail(MOE_ERR_USAGE, "--input needs at least one FILE");
        } else if (moe_arg_is(a, "--out")) {
            MOE_TRY(moe_arg_value(argc, argv, &i, "--out", &o->out));
        } else if (moe_arg_is(a, "--tokenizer")) {
            MOE_TRY(moe_arg_value(argc, argv, &i, "--tokenizer", &o->tokenizer));
        } else if (moe_arg_is(a, "--val-fraction")) {
            MOE_TRY(moe_arg_value(argc, argv, &i, "--val-fraction", &v));
            MOE_TRY(parse_fraction(v, &o->val_fraction));
        } else if (moe_arg_is(a, "--shard-tokens")) {
            MOE_TRY(moe_arg_value(argc, argv, &i, "--shard-tokens", &v));
            MOE_TRY(parse_count(v, &o->shard_tokens));
        } else if (moe_arg_is_flag(a)) {
            return moe_fail(MOE_ERR_USAGE, "unknown flag '%s'", a);
        } else {
            return moe_fail(MOE_ERR_USAGE, "unexpected argument '%s' (inputs follow --input)", a);
        }
    }
    if (o->help)
        return MOE_OK;
    if (o->ninputs == 0)
        return moe_fail(MOE_ERR_USAGE, "--input FILE... is required");
    if (!o->out || !*o->out)
        return moe_fail(MOE_ERR_USAGE, "--out DIR is required");
    if (strcmp(o->tokenizer, "byte") != 0)
        return moe_fail(MOE_ERR_USAGE, "unknown tokenizer '%s' (supported: byte)", o->tokenizer);
    int stdin_uses = 0;
    for (int i = 0; i < o->ninputs; i++) {
        if (!*o->inputs[i])
            return moe_fail(MOE_ERR_USAGE, "--input has an empty file name");
        stdin_uses += strcmp(o->inputs[i], "-") == 0;
    }
    if (stdin_uses > 1)
        return moe_fail(MOE_ERR_USAGE, "stdin ('-') can be read only once, given %d times",
                        stdin_uses);
    return MOE_OK;
}

// ----------------------------------------------------------------------------
// reading and checking the inputs

static const char *display_name(const char *path) { return strcmp(path, "-") == 0 ? "stdin" : path; }

static moe_status buf_reserve(bytebuf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return MOE_OK;
    if (extra > SIZE_MAX / 2 - b->len)
        return moe_fail(MOE_ERR_NOMEM, "inputs are too large to hold in memory");
    size_t ncap = b->cap ? b->cap : 1 << 16;
    while (ncap - b->len < extra)
        ncap *= 2;
    unsigned char *bigger;
    MOE_TRY(moe_alloc((void **)&bigger, ncap, "input text"));
    if (b->len)
        memcpy(bigger, b->data, b->len);
    moe_free(b->data);
    b->data = bigger;
    b->cap = ncap;
    return MOE_OK;
}

static moe_status read_stream(FILE *f, const char *path, bytebuf *b)
{
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0)
        return moe_fail(MOE_ERR_IO, "%s: stat failed: %s", display_name(path), strerror(errno));
    if (S_ISDIR(sb.st_mode))
        return moe_fail(MOE_ERR_INPUT, "input %s is a directory", display_name(path));
    if (S_ISREG(sb.st_mode) && sb.st_size > 0)
        MOE_TRY(buf_reserve(b, (size_t)sb.st_size + 1)); /* +1: EOF is seen without regrowing */
    for (;;) {
        MOE_TRY(buf_reserve(b, 1 << 16));
        size_t got = fread(b->data + b->len, 1, b->cap - b->len, f);
        b->len += got;
        if (got == 0) {
            if (ferror(f))
                return moe_fail(MOE_ERR_IO, "%s: read failed: %s", display_name(path),
                                strerror(errno));
            return MOE_OK;
        }
    }
}

static moe_status read_input(const char *path, bytebuf *b)
{
    if (strcmp(path, "-") == 0)
        return read_stream(stdin, path, b);
    FILE *f = fopen(path, "rb");
    if (!f)
        return moe_fail(errno == ENOENT || errno == EACCES ? MOE_ERR_INPUT : MOE_ERR_IO,
                        "cannot open input %s: %s", path, strerror(errno));
    moe_status st = read_stream(f, path, b);
    fclose(f);
    if (st != MOE_OK)
        moe_trace_frame(__FILE__, __LINE__);
    return st;
}

/* Length of the well-formed UTF-8 sequence at s (Unicode Table 3-7: no
** overlong forms, no surrogates, nothing above U+10FFFF), or 0 if it is not. */
static size_t utf8_seq_len(const unsigned char *s, size_t avail)
{
    unsigned c = s[0];
    size_t n;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (avail < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t k = 2; k < n; k++)
        if (s[k] < 0x80 || s[k] > 0xBF)
            return 0;
    return n;
}

static moe_status check_utf8(const char *path, const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq_len(s + i, n - i);
        if (k == 0)
            return moe_fail(MOE_ERR_INPUT,
                            "%s: not valid UTF-8 at byte offset %zu (byte 0x%02x); the byte "
                            "tokenizer needs UTF-8 text",
                            display_name(path), i, s[i]);
        i += k;
    }
    return MOE_OK;
}

// ----------------------------------------------------------------------------
// writing

static uint64_t shard_count(uint64_t ntokens, uint64_t per_shard)
{
    return (ntokens + per_shard - 1) / per_shard;
}

/* Writes text[0..n) as shards DIR/<split>_NNN.tok. chunk holds per_shard tokens. */
static moe_status write_split(const options *o, const char *split, const unsigned char *text,
                              uint64_t n, uint32_t *chunk)
{
    uint64_t nshards = shard_count(n, o->shard_tokens);
    for (uint64_t s = 0; s < nshards; s++) {
        uint64_t begin = s * o->shard_tokens;
        uint64_t k = n - begin < o->shard_tokens ? n - begin : o->shard_tokens;
        for (uint64_t i = 0; i < k; i++)
            chunk[i] = text[begin + i]; /* byte tokenizer: token = byte value */
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/%s_%03llu.tok", o->out, split,
                             (unsigned long long)s) >= sizeof path)
            return moe_fail(MOE_ERR_USAGE, "--out path too long");
        MOE_TRY(moe_tokfile_write(path, chunk, k, BYTE_VOCAB));
    }
    return MOE_OK;
}

/* 1 if name is "<split>_<digits>.tok" for split train or val; sets *split_is_val, *num. */
static int our_shard(const char *name, int *split_is_val, unsigned long long *num)
{
    const char *rest;
    if (strncmp(name, "train_", 6) == 0) {
        *split_is_val = 0;
        rest = name + 6;
    } else if (strncmp(name, "val_", 4) == 0) {
        *split_is_val = 1;
        rest = name + 4;
    } else {
        return 0;
    }
    size_t d = strspn(rest, "0123456789");
    if (d == 0 || d > 18 || strcmp(rest + d, ".tok") != 0)
        return 0;
    *num = strtoull(rest, NULL, 10);
    return 1;
}

/* Removes shards this run did not write (left by an earlier, larger run),
** which the loader would otherwise read as part of the data. */
static moe_status remove_stale(const options *o, uint64_t ntrain_shards, uint64_t nval_shards)
{
    DIR *dp = opendir(o->out);
    if (!dp)
        return moe_fail(MOE_ERR_IO, "%s: cannot open directory: %s", o->out, strerror(errno));
    struct dirent *de;
    moe_status st = MOE_OK;
    while (st == MOE_OK && (de = readdir(dp)) != NULL) {
        int is_val;
        unsigned long long num;
        if (!our_shard(de->d_name, &is_val, &num))
            continue;
        char canon[64];
        snprintf(canon, sizeof canon, "%s_%03llu.tok", is_val ? "val" : "train", num);
        if (num < (is_val ? nval_shards : ntrain_shards) && strcmp(canon, de->d_name) == 0)
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", o->out, de->d_name);
        if (unlink(path) != 0)
            st = moe_fail(MOE_ERR_IO, "cannot remove stale shard %s: %s", path, strerror(errno));
    }
    closedir(dp);
    return st;
}

static void json_shards(FILE *f, const char *split, uint64_t n, uint64_t per_shard, int *first)
{
    uint64_t nshards = shard_count(n, per_shard);
    for (uint64_t s = 0; s < nshards; s++) {
        uint64_t k = n - s * per_shard < per_shard ? n - s * per_shard : per_shard;
        fprintf(f, "%s\n    {\"file\": \"%s_%03llu.tok\", \"split\": \"%s\", \"tokens\": %llu}",
                *first ? "" : ",", split, (unsigned long long)s, split, (unsigned long long)k);
        *first = 0;
    }
}

static moe_status write_meta(const options *o, const uint64_t *source_bytes, uint64_t ntrain,
                             uint64_t nval)
{
    char path[4096], tmp[4200];
    if ((size_t)snprintf(path, sizeof path, "%s/meta.json", o->out) >= sizeof path)
        return moe_fail(MOE_ERR_USAGE, "--out path too long");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return moe_fail(MOE_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    fprintf(f, "{\n  \"tokenizer\": \"byte\",\n  \"vocab_size\": %u,\n", BYTE_VOCAB);
    fprintf(f, "  \"train_tokens\": %llu,\n  \"val_tokens\": %llu,\n", (unsigned long long)ntrain,
            (unsigned long long)nval);
    /* shortest decimal that reads back as the same double */
    char frac[32];
    snprintf(frac, sizeof frac, "%.15g", o->val_fraction);
    if (strtod(frac, NULL) != o->val_fraction)
        snprintf(frac, sizeof frac, "%.17g", o->val_fraction);
    fprintf(f, "  \"val_fraction\": %s,\n  \"shard_tokens\": %llu,\n  \"shards\": [", frac,
            (unsigned long long)o->shard_tokens);
    int first = 1;
    json_shards(f, "train", ntrain, o->shard_tokens, &first);
    json_shards(f, "val", nval, o->shard_tokens, &first);
    fprintf(f, "\n  ],\n  \"sources\": [");
    for (int i = 0; i < o->ninputs; i++) {
        fprintf(f, "%s\n    {\"path\": ", i ? "," : "");
        moe_json_string(f, o->inputs[i]);
        fprintf(f, ", \"bytes\": %llu}", (unsigned long long)source_bytes[i]);
    }
    fprintf(f, "\n  ]\n}\n");
    int bad = ferror(f) || fflush(f) != 0 || fsync(fileno(f)) != 0;
    int err = errno;
    if (fclose(f) != 0)
        bad = 1;
    if (bad || rename(tmp, path) != 0) {
        unlink(tmp);
        return moe_fail(MOE_ERR_IO, "cannot write %s: %s", path, strerror(bad ? err : errno));
    }
    return MOE_OK;
}

// ----------------------------------------------------------------------------
// the command

/* The whole command once the options are valid. text/chunk/source_bytes are
** owned by the caller so one cleanup path frees them. */
static moe_status prepare(const options *o, bytebuf *text, uint64_t *source_bytes,
                          uint32_t **chunk)
{
    for (int i = 0; i < o->ninputs; i++) {
        size_t before = text->len;
        MOE_TRY(read_input(o->inputs[i], text));
        MOE_TRY(check_utf8(o->inputs[i], text->data + before, text->len - before));
        source_bytes[i] = text->len - before;
    }
    uint64_t n = text->len;
    if (n == 0)
        return moe_fail(MOE_ERR_INPUT, "%s no text (0 bytes)",
                        o->ninputs > 1 ? "the inputs hold" : "the input holds");
    uint64_t nval = (uint64_t)llround(o->val_fraction * (double)n);
    if (nval > n)
        nval = n;
    uint64_t ntrain = n - nval;
    if (nval == 0 || ntrain == 0)
        return moe_fail(MOE_ERR_INPUT,
                        "%s split would be empty: %llu tokens with --val-fraction %g gives "
                        "train %llu, val %llu tokens; both must be non-empty",
                        nval == 0 ? "validation" : "training", (unsigned long long)n,
                        o->val_fraction, (unsigned long long)ntrain, (unsigned long long)nval);

    MOE_TRY(moe_mkdir_p(o->out));
    uint64_t biggest = ntrain > nval ? ntrain : nval;
    uint64_t per = biggest < o->shard_tokens ? biggest : o->shard_tokens;
    size_t bytes;
    if (per > SIZE_MAX)
        return moe_fail(MOE_ERR_NOMEM, "--shard-tokens %llu does not fit in memory",
                        (unsigned long long)o->shard_tokens);
    MOE_TRY(moe_mul_size((size_t)per, sizeof **chunk, &bytes));
    MOE_TRY(moe_alloc((void **)chunk, bytes, "shard token buffer"));
    MOE_TRY(write_split(o, "train", text->data, ntrain, *chunk));
    MOE_TRY(write_split(o, "val", text->data + ntrain, nval, *chunk));
    uint64_t ntr_sh = shard_count(ntrain, o->shard_tokens);
    uint64_t nva_sh = shard_count(nval, o->shard_tokens);
    MOE_TRY(remove_stale(o, ntr_sh, nva_sh));
    MOE_TRY(write_meta(o, source_bytes, ntrain, nval));
    printf("%s: %s: %llu tokens (byte tokenizer, vocab %u) from %d input%s: train %llu tokens "
           "in %llu shard%s, val %llu tokens in %llu shard%s\n",
           PROG, o->out, (unsigned long long)n, BYTE_VOCAB, o->ninputs, o->ninputs > 1 ? "s" : "",
           (unsigned long long)ntrain, (unsigned long long)ntr_sh, ntr_sh > 1 ? "s" : "",
           (unsigned long long)nval, (unsigned long long)nva_sh, nva_sh > 1 ? "s" : "");
    fflush(stdout);
    return MOE_OK;
}

static moe_status run(int argc, char **argv)
{
    options o = {.tokenizer = "byte",
                 .val_fraction = DEFAULT_VAL_FRACTION,
                 .shard_tokens = DEFAULT_SHARD_TOKENS};
    size_t slots = argc > 0 ? (size_t)argc : 1;
    MOE_TRY(moe_alloc((void **)&o.inputs, slots * sizeof *o.inputs, "input list"));
    moe_status st = parse_args(argc, argv, &o);
    if (st == MOE_OK && o.help) {
        fputs(USAGE, stdout);
        fflush(stdout);
    } else if (st == MOE_OK) {
        bytebuf text = {0};
        uint32_t *chunk = NULL;
        uint64_t *source_bytes = NULL;
        st = moe_alloc((void **)&source_bytes, (size_t)o.ninputs * sizeof *source_bytes,
                       "source sizes");
        if (st == MOE_OK)
            st = prepare(&o, &text, source_bytes, &chunk);
        moe_free(text.data);
        moe_free(chunk);
        moe_free(source_bytes);
    }
    moe_free(o.inputs);
    if (st != MOE_OK)
        moe_trace_frame(__FILE__, __LINE__);
    return st;
}

int moe_data_prepare_main(int argc, char **argv)
{
    moe_error_clear();
    return moe_cmd_exit(PROG, run(argc, argv));
}
