#include "runtime/data.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/mem.h"
#include "runtime/base/rng.h"
#include "runtime/base/tokfile.h"

struct moe_data {
    int seq_len;          /* T */
    uint64_t seed;
    int shuffle;
    int nshards;
    moe_tokfile *shards;  /* (nshards) in stream order */
    uint64_t *starts;     /* (nshards + 1) first stream position of each shard */
    uint64_t ntokens;     /* N */
    uint64_t nwindows;    /* W = (N - 1) / T */
    uint32_t vocab;
    uint64_t *perm;       /* (W) window order of epoch perm_epoch; NULL if !shuffle */
    uint64_t perm_epoch;
    int perm_valid;
};

// ----------------------------------------------------------------------------
// finding a split's shards

typedef enum { SHARD_NONE = 0, SHARD_TOK, SHARD_BIN } shard_kind;

typedef struct {
    char *name;
    shard_kind kind;
    size_t prefix_len;    /* name[0..prefix_len) is everything before the number */
    const char *digits;   /* the number, without leading zeros */
    size_t ndigits;
} shard_name;

static int ends_with(const char *s, size_t len, const char *suffix)
{
    size_t n = strlen(suffix);
    return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

/* "<split>_<digits>.tok|.bin", or "<x>_<split>_<digits>.bin" (llm.c naming). */
static shard_kind classify(const char *name, const char *split, shard_name *out)
{
    size_t len = strlen(name);
    shard_kind kind;
    if (ends_with(name, len, ".tok"))
        kind = SHARD_TOK;
    else if (ends_with(name, len, ".bin"))
        kind = SHARD_BIN;
    else
        return SHARD_NONE;
    size_t stem = len - 4;
    size_t d = stem;
    while (d > 0 && name[d - 1] >= '0' && name[d - 1] <= '9')
        d--;
    if (d == stem || d == 0 || name[d - 1] != '_')
        return SHARD_NONE;
    size_t base = d - 1; /* name[0..base) should be the split, maybe after "x_" */
    size_t sl = strlen(split);
    if (base < sl || memcmp(name + base - sl, split, sl) != 0)
        return SHARD_NONE;
    int exact = base == sl;
    int prefixed = kind == SHARD_BIN && base > sl + 1 && name[base - sl - 1] == '_';
    if (!exact && !prefixed)
        return SHARD_NONE;
    out->kind = kind;
    out->prefix_len = d;
    while (d < stem - 1 && name[d] == '0')
        d++;
    out->digits = name + d;
    out->ndigits = stem - d;
    return kind;
}

/* Prefix first, then the number by value: train_999 < train_1000. */
static int shard_cmp(const void *pa, const void *pb)
{
    const shard_name *a = pa, *b = pb;
    size_t pl = a->prefix_len < b->prefix_len ? a->prefix_len : b->prefix_len;
    int c = memcmp(a->name, b->name, pl);
    if (c == 0 && a->prefix_len != b->prefix_len)
        c = a->prefix_len < b->prefix_len ? -1 : 1;
    if (c == 0 && a->ndigits != b->ndigits)
        c = a->ndigits < b->ndigits ? -1 : 1;
    if (c == 0)
        c = memcmp(a->digits, b->digits, a->ndigits);
    return c != 0 ? c : strcmp(a->name, b->name);
}

static void free_names(shard_name *names, int n)
{
    for (int i = 0; i < n; i++)
        moe_free(names[i].name);
    moe_free(names);
}

static moe_status add_name(shard_name **names, int *n, int *cap, const shard_name *sn,
                           const char *name)
{
    if (*n == *cap) {
        int ncap = *cap ? *cap * 2 : 16;
        shard_name *bigger;
        MOE_TRY(moe_alloc((void **)&bigger, (size_t)ncap * sizeof *bigger, "shard list"));
        if (*n)
            memcpy(bigger, *names, (size_t)*n * sizeof *bigger);
        moe_free(*names);
        *names = bigger;
        *cap = ncap;
    }
    shard_name *dst = &(*names)[*n];
    *dst = *sn;
    size_t len = strlen(name);
    MOE_TRY(moe_alloc((void **)&dst->name, len + 1, "shard name"));
    memcpy(dst->name, name, len + 1);
    dst->digits = dst->name + (sn->digits - name); /* re-point into our copy */
    (*n)++;
    return MOE_OK;
}

static moe_status scan_dir(DIR *dp, const char *dir, const char *split, shard_name **names, int *n)
{
    int cap = 0;
    struct dirent *de;
    errno = 0;
    while ((de = readdir(dp)) != NULL) {
        shard_name sn = {0};
        if (classify(de->d_name, split, &sn) != SHARD_NONE)
            MOE_TRY(add_name(names, n, &cap, &sn, de->d_name));
        errno = 0;
    }
    if (errno != 0)
        return moe_fail(MOE_ERR_IO, "%s: reading directory failed: %s", dir, strerror(errno));
    return MOE_OK;
}

/* The split's shard names in stream order (*names owned by the caller). */
static moe_status find_shards(const char *dir, const char *split, shard_name **names, int *n)
{
    *names = NULL;
    *n = 0;
    DIR *dp = opendir(dir);
    if (!dp) {
        if (errno == ENOENT)
            return moe_fail(MOE_ERR_INPUT, "data directory %s does not exist", dir);
        if (errno == ENOTDIR)
            return moe_fail(MOE_ERR_INPUT, "data path %s is not a directory", dir);
        return moe_fail(MOE_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    }
    moe_status st = scan_dir(dp, dir, split, names, n);
    closedir(dp);
    if (st == MOE_OK && *n == 0)
        st = moe_fail(MOE_ERR_INPUT, "no %s_*.tok or %s_*.bin shards in %s", split, split, dir);
    for (int i = 1; st == MOE_OK && i < *n; i++)
        if ((*names)[i].kind != (*names)[0].kind)
            st = moe_fail(MOE_ERR_INPUT,
                          "%s: split '%s' mixes .tok and .bin shards (%s, %s); keep one format",
                          dir, split, (*names)[0].name, (*names)[i].name);
    if (st != MOE_OK) {
        free_names(*names, *n);
        *names = NULL;
        *n = 0;
        moe_trace_frame(__FILE__, __LINE__);
        return st;
    }
    qsort(*names, (size_t)*n, sizeof **names, shard_cmp);
    return MOE_OK;
}

// ----------------------------------------------------------------------------
// opening

static moe_status load_shards(moe_data *d, const char *dir, const char *split,
                              const shard_name *names)
{
    MOE_TRY(moe_alloc((void **)&d->shards, (size_t)d->nshards * sizeof *d->shards, "shard table"));
    MOE_TRY(moe_alloc((void **)&d->starts, ((size_t)d->nshards + 1) * sizeof *d->starts,
                      "shard offsets"));
    for (int i = 0; i < d->nshards; i++) {
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, names[i].name) >= sizeof path)
            return moe_fail(MOE_ERR_USAGE, "%s/%s: path too long", dir, names[i].name);
        MOE_TRY(moe_tokfile_read(path, &d->shards[i]));
        if (d->shards[i].vocab_size != d->shards[0].vocab_size)
            return moe_fail(MOE_ERR_INPUT,
                            "%s: vocab_size %u differs from %s/%s (vocab_size %u); all '%s' shards "
                            "must share one tokenizer",
                            path, d->shards[i].vocab_size, dir, names[0].name,
                            d->shards[0].vocab_size, split);
        d->starts[i] = d->ntokens;
        d->ntokens += d->shards[i].ntokens;
    }
    d->starts[d->nshards] = d->ntokens;
    d->vocab = d->shards[0].vocab_size;
    if (d->vocab > (uint32_t)INT32_MAX)
        return moe_fail(MOE_ERR_INPUT, "%s: vocab_size %u does not fit int32 token ids", dir,
                        d->vocab);
    if (d->ntokens < (uint64_t)d->seq_len + 1)
        return moe_fail(MOE_ERR_INPUT,
                        "%s: split '%s' has %llu tokens; one window of seq_len %d needs %llu",
                        dir, split, (unsigned long long)d->ntokens, d->seq_len,
                        (unsigned long long)d->seq_len + 1);
    d->nwindows = (d->ntokens - 1) / (uint64_t)d->seq_len;
    if (d->shuffle) {
        size_t bytes;
        if (d->nwindows > SIZE_MAX)
            return moe_fail(MOE_ERR_NOMEM, "%s: too many windows for memory", dir);
        MOE_TRY(moe_mul_size((size_t)d->nwindows, sizeof *d->perm, &bytes));
        MOE_TRY(moe_alloc((void **)&d->perm, bytes, "epoch permutation"));
    }
    return MOE_OK;
}

moe_status moe_data_open(moe_data **out, const char *dir, const char *split, int seq_len,
                         uint64_t seed, int shuffle)
{
    if (!out || !dir || !split)
        return moe_fail(MOE_ERR_USAGE, "moe_data_open: NULL argument");
    if (!*split || strchr(split, '/'))
        return moe_fail(MOE_ERR_USAGE, "data split name '%s' is not a plain name", split);
    if (seq_len <= 0)
        return moe_fail(MOE_ERR_USAGE, "seq_len must be > 0, got %d", seq_len);

    shard_name *names;
    int n;
    MOE_TRY(find_shards(dir, split, &names, &n));
    moe_data *d;
    moe_status st = moe_alloc((void **)&d, sizeof *d, "data loader");
    if (st == MOE_OK) {
        d->seq_len = seq_len;
        d->seed = seed;
        d->shuffle = shuffle != 0;
        d->nshards = n;
        st = load_shards(d, dir, split, names);
        if (st != MOE_OK)
            moe_data_close(d);
    }
    free_names(names, n);
    if (st != MOE_OK) {
        moe_trace_frame(__FILE__, __LINE__);
        return st;
    }
    *out = d;
    return MOE_OK;
}

void moe_data_close(moe_data *d)
{
    if (!d)
        return;
    if (d->shards)
        for (int i = 0; i < d->nshards; i++)
            moe_tokfile_free(&d->shards[i]);
    moe_free(d->shards);
    moe_free(d->starts);
    moe_free(d->perm);
    moe_free(d);
}

uint64_t moe_data_num_windows(const moe_data *d) { return d->nwindows; }
int moe_data_vocab(const moe_data *d) { return (int)d->vocab; }
uint64_t moe_data_num_tokens(const moe_data *d) { return d->ntokens; }

// ----------------------------------------------------------------------------
// reading sequences

/* The permutation of one epoch (data.h gives the exact recipe: it is part of
** the run's reproducibility contract, so it must not change). */
static void build_perm(moe_data *d, uint64_t epoch)
{
    uint64_t W = d->nwindows;
    for (uint64_t i = 0; i < W; i++)
        d->perm[i] = i;
    moe_rng rng;
    moe_rng_seed(&rng, d->seed ^ ((epoch + 1) * 0x9E3779B97F4A7C15ULL));
    for (uint64_t i = W - 1; i > 0; i--) {
        uint64_t j = moe_rng_below(&rng, i + 1);
        uint64_t t = d->perm[i];
        d->perm[i] = d->perm[j];
        d->perm[j] = t;
    }
    d->perm_epoch = epoch;
    d->perm_valid = 1;
}

static uint64_t window_of(moe_data *d, uint64_t seq)
{
    uint64_t epoch = seq / d->nwindows, i = seq % d->nwindows;
    if (!d->shuffle)
        return i;
    if (!d->perm_valid || d->perm_epoch != epoch)
        build_perm(d, epoch);
    return d->perm[i];
}

/* The shard holding stream position pos (the last shard whose start <= pos,
** which skips empty shards). pos < ntokens. */
static int shard_at(const moe_data *d, uint64_t pos)
{
    int lo = 0, hi = d->nshards - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (d->starts[mid] <= pos)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

// dst is (len); copies stream tokens [pos, pos + len), crossing shard edges
static void copy_tokens(const moe_data *d, uint64_t pos, int len, int32_t *dst)
{
    int k = shard_at(d, pos);
    while (len > 0) {
        uint64_t off = pos - d->starts[k];
        uint64_t avail = d->shards[k].ntokens - off;
        int m = avail < (uint64_t)len ? (int)avail : len;
        const uint32_t *src = d->shards[k].tokens + off;
        for (int t = 0; t < m; t++)
            dst[t] = (int32_t)src[t];
        dst += m;
        pos += (uint64_t)m;
        len -= m;
        k++;
    }
}

moe_status moe_data_get(moe_data *d, uint64_t first_seq, int count, int32_t *inputs,
                        int32_t *targets)
{
    if (!d)
        return moe_fail(MOE_ERR_USAGE, "moe_data_get: NULL loader");
    if (count < 0)
        return moe_fail(MOE_ERR_USAGE, "moe_data_get: count %d < 0", count);
    if (count > 0 && (!inputs || !targets))
        return moe_fail(MOE_ERR_USAGE, "moe_data_get: NULL output buffer");
    if (first_seq > UINT64_MAX - (uint64_t)count)
        return moe_fail(MOE_ERR_USAGE, "moe_data_get: sequence number %llu + %d overflows",
                        (unsigned long long)first_seq, count);
    int T = d->seq_len;
    for (int r = 0; r < count; r++) {
        uint64_t start = window_of(d, first_seq + (uint64_t)r) * (uint64_t)T;
        // inputs and targets are (count, T)
        copy_tokens(d, start, T, inputs + (size_t)r * (size_t)T);
        copy_tokens(d, start + 1, T, targets + (size_t)r * (size_t)T);
    }
    return MOE_OK;
}
