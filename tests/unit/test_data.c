/*
** test_data: token shard files (tokfile), `moe data prepare`, and the loader.
*/
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "launch/data_prepare.h"
#include "runtime/base/rng.h"
#include "runtime/base/status.h"
#include "runtime/base/tokfile.h"
#include "runtime/data.h"
#include "testutil.h"

// ----------------------------------------------------------------------------
// helpers

static char tmp[512];

static void setup(void) { tu_tmpdir(tmp, sizeof tmp, "data"); }

static void teardown(void)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    tu_run(cmd, NULL, 0);
}

static const char *P(const char *name)
{
    static char buf[4][1024];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof buf[i], "%s/%s", tmp, name);
    return buf[i];
}

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static long file_size(const char *path)
{
    struct stat sb;
    ck_assert_int_eq(stat(path, &sb), 0);
    return (long)sb.st_size;
}

static void write_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

/* Overwrites n bytes at offset off of an existing file. */
static void patch(const char *path, long off, const void *data, size_t n)
{
    FILE *f = fopen(path, "r+b");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fseek(f, off, SEEK_SET), 0);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

static void assert_msg_has(const char *needle)
{
    ck_assert_msg(strstr(moe_errmsg(), needle) != NULL, "error message '%s' lacks '%s'",
                  moe_errmsg(), needle);
}

/* Reads expecting failure; returns the status. */
static moe_status read_fails(const char *path)
{
    moe_tokfile tf = {0};
    moe_error_clear();
    moe_status st = moe_tokfile_read(path, &tf);
    ck_assert_ptr_null(tf.tokens);
    return st;
}

/* An llm.c shard by hand: 256 x int32 header, then uint16 tokens. */
static void write_llmc(const char *path, const uint16_t *toks, int n, int extra_bytes)
{
    int32_t header[256] = {0};
    header[0] = 20240520;
    header[1] = 1;
    header[2] = n;
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(header, sizeof(int32_t), 256, f), 256);
    ck_assert_uint_eq(fwrite(toks, sizeof(uint16_t), (size_t)n, f), (size_t)n);
    for (int i = 0; i < extra_bytes; i++)
        fputc(0, f);
    ck_assert_int_eq(fclose(f), 0);
}

// ----------------------------------------------------------------------------
// tokfile

static void roundtrip(uint32_t vocab, uint64_t n, long bpt)
{
    uint32_t *t = malloc((n ? n : 1) * sizeof *t);
    moe_rng r;
    moe_rng_seed(&r, vocab);
    for (uint64_t i = 0; i < n; i++)
        t[i] = (uint32_t)moe_rng_below(&r, vocab);
    if (n)
        t[n - 1] = vocab - 1; /* the largest legal token survives */
    const char *path = P("rt.tok");
    ck_assert_int_eq(moe_tokfile_write(path, t, n, vocab), MOE_OK);
    ck_assert(!exists(P("rt.tok.tmp")));
    ck_assert_int_eq(file_size(path), 64 + (long)n * bpt);
    moe_tokfile tf = {0};
    ck_assert_int_eq(moe_tokfile_read(path, &tf), MOE_OK);
    ck_assert_uint_eq(tf.vocab_size, vocab);
    ck_assert_uint_eq(tf.ntokens, n);
    ck_assert(n == 0 || memcmp(tf.tokens, t, n * sizeof *t) == 0);
    moe_tokfile_free(&tf);
    moe_tokfile_free(&tf); /* twice is fine */
    free(t);
}

START_TEST(test_tokfile_roundtrip)
{
    roundtrip(256, 100000, 2);    /* crosses the 16K-token staging chunks */
    roundtrip(65536, 40000, 2);
    roundtrip(65537, 40000, 4);
    roundtrip(50257, 1, 2);
    roundtrip(7, 0, 2);           /* an empty shard is a valid file */

    /* the header is laid out as documented */
    uint32_t t[3] = {1, 2, 3};
    ck_assert_int_eq(moe_tokfile_write(P("h.tok"), t, 3, 300), MOE_OK);
    unsigned char h[70];
    FILE *f = fopen(P("h.tok"), "rb");
    ck_assert_uint_eq(fread(h, 1, 70, f), 70);
    fclose(f);
    ck_assert_int_eq(memcmp(h, "MOETOK\0\1", 8), 0);
    ck_assert_int_eq(h[8], 1);                    /* version */
    ck_assert_int_eq(h[12] | h[13] << 8, 300);    /* vocab_size */
    ck_assert_int_eq(h[16], 3);                   /* ntokens */
    ck_assert_int_eq(h[24], 2);                   /* bytes_per_token */
    ck_assert_int_eq(h[64] | h[65] << 8, 1);      /* first token, little-endian */
    ck_assert_int_eq(h[68] | h[69] << 8, 3);
}
END_TEST

static const char *write_sample(void)
{
    uint32_t t[1000];
    for (int i = 0; i < 1000; i++)
        t[i] = (uint32_t)(i * 7 % 1000);
    const char *path = P("s.tok");
    ck_assert_int_eq(moe_tokfile_write(path, t, 1000, 1000), MOE_OK);
    return path;
}

START_TEST(test_tokfile_corrupt_checksum)
{
    const char *path = write_sample();
    unsigned char b = 0x55;
    patch(path, 64 + 501, &b, 1);
    ck_assert_int_eq(read_fails(path), MOE_ERR_INPUT);
    assert_msg_has(path);
    assert_msg_has("checksum mismatch");

    /* a corrupted stored checksum is caught the same way */
    path = write_sample();
    patch(path, 32, &b, 1);
    ck_assert_int_eq(read_fails(path), MOE_ERR_INPUT);
    assert_msg_has("checksum mismatch");
}
END_TEST

START_TEST(test_tokfile_truncated)
{
    const char *path = write_sample();
    ck_assert_int_eq(truncate(path, 1500), 0);
    ck_assert_int_eq(read_fails(path), MOE_ERR_INPUT);
    assert_msg_has(path);
    assert_msg_has("truncated: header says 1000 tokens (2064 bytes), file has 1500 bytes");

    ck_assert_int_eq(truncate(path, 40), 0);
    ck_assert_int_eq(read_fails(path), MOE_ERR_INPUT);
    assert_msg_has("truncated");

    /* trailing garbage is refused too: the size must match exactly */
    path = write_sample();
    ck_assert_int_eq(truncate(path, 2070), 0);
    ck_assert_int_eq(read_fails(path), MOE_ERR_INPUT);
    assert_msg_has("size mismatch");

    /* a missing file */
    ck_assert_int_eq(read_fails(P("nope.tok")), MOE_ERR_INPUT);
    assert_msg_has("nope.tok");
}
END_TEST

START_TEST(test_tokfile_bad_magic)
{
    const char *path = write_sample();
    patch(path, 0, "X", 1);
    ck_assert_int_eq(read_fails(path), MOE_ERR_INPUT);
    assert_msg_has(path);
    assert_msg_has("bad magic");

    write_bytes(P("tiny"), "MOE", 3);
    ck_assert_int_eq(read_fails(P("tiny")), MOE_ERR_INPUT);
    assert_msg_has("too short");

    /* unknown version and a bad token width */
    path = write_sample();
    unsigned char v2 = 2, w3 = 3;
    patch(path, 8, &v2, 1);
    ck_assert_int_eq(read_fails(path), MOE_ERR_INPUT);
    assert_msg_has("version 2");
    path = write_sample();
    patch(path, 24, &w3, 1);
    ck_assert_int_eq(read_fails(path), MOE_ERR_INPUT);
    assert_msg_has("bytes_per_token");
}
END_TEST

START_TEST(test_tokfile_token_out_of_vocab)
{
    /* the writer refuses, naming the token, and leaves no file */
    uint32_t t[4] = {1, 2, 10, 3};
    moe_error_clear();
    ck_assert_int_eq(moe_tokfile_write(P("v.tok"), t, 4, 10), MOE_ERR_INPUT);
    assert_msg_has("token 10 at index 2");
    ck_assert(!exists(P("v.tok")));
    ck_assert(!exists(P("v.tok.tmp")));

    /* the reader refuses a file whose tokens exceed its header's vocab: the
    ** checksum covers only the payload, so shrinking the vocab gets past it */
    const char *path = write_sample();
    unsigned char small[4] = {100, 0, 0, 0};
    patch(path, 12, small, 4);
    ck_assert_int_eq(read_fails(path), MOE_ERR_INPUT);
    assert_msg_has(path);
    assert_msg_has(">= vocab_size 100");
}
END_TEST

START_TEST(test_tokfile_llmc_bin)
{
    uint16_t toks[500];
    for (int i = 0; i < 500; i++)
        toks[i] = (uint16_t)(i * 97 % 50257);
    toks[499] = 50256;
    write_llmc(P("x_train_000000.bin"), toks, 500, 0);
    moe_tokfile tf = {0};
    ck_assert_int_eq(moe_tokfile_read(P("x_train_000000.bin"), &tf), MOE_OK);
    ck_assert_uint_eq(tf.vocab_size, 50257);
    ck_assert_uint_eq(tf.ntokens, 500);
    for (int i = 0; i < 500; i++)
        ck_assert_uint_eq(tf.tokens[i], toks[i]);
    moe_tokfile_free(&tf);

    /* the format comes from the magic, not the name */
    write_llmc(P("odd.tok"), toks, 10, 0);
    ck_assert_int_eq(moe_tokfile_read(P("odd.tok"), &tf), MOE_OK);
    ck_assert_uint_eq(tf.ntokens, 10);
    moe_tokfile_free(&tf);

    /* size must be exactly 1024 + 2 * ntok, as llm.c checks */
    write_llmc(P("long.bin"), toks, 10, 2);
    ck_assert_int_eq(read_fails(P("long.bin")), MOE_ERR_INPUT);
    assert_msg_has("size mismatch");
    write_llmc(P("short.bin"), toks, 10, 0);
    ck_assert_int_eq(truncate(P("short.bin"), 1024 + 2 * 9), 0);
    ck_assert_int_eq(read_fails(P("short.bin")), MOE_ERR_INPUT);
    assert_msg_has("truncated");

    /* tokens past GPT-2's vocab, and other versions, are refused */
    toks[3] = 60000;
    write_llmc(P("big.bin"), toks, 10, 0);
    ck_assert_int_eq(read_fails(P("big.bin")), MOE_ERR_INPUT);
    assert_msg_has(">= vocab_size 50257");
    write_llmc(P("v.bin"), toks, 2, 0);
    int32_t seven = 7;
    patch(P("v.bin"), 4, &seven, 4);
    ck_assert_int_eq(read_fails(P("v.bin")), MOE_ERR_INPUT);
    assert_msg_has("version 7");
}
END_TEST

// ----------------------------------------------------------------------------
// prepare

static int prepare(const char *args)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", args);
    char *argv[64];
    int argc = 0;
    for (char *tok = strtok(buf, " "); tok && argc < 64; tok = strtok(NULL, " "))
        argv[argc++] = tok;
    return moe_data_prepare_main(argc, argv);
}

static moe_tokfile read_ok(const char *path)
{
    moe_tokfile tf = {0};
    moe_status st = moe_tokfile_read(path, &tf);
    ck_assert_msg(st == MOE_OK, "%s: %s", path, moe_errmsg());
    return tf;
}

/* Some text with multi-byte characters: n bytes. */
static char *sample_text(size_t *n)
{
    static const char line[] = "In the beginning God created the heaven and the earth. \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\n";
    size_t L = sizeof line - 1, reps = 40;
    char *s = malloc(L * reps + 1);
    for (size_t i = 0; i < reps; i++)
        memcpy(s + i * L, line, L);
    s[L * reps] = '\0';
    *n = L * reps;
    return s;
}

START_TEST(test_prepare_basic)
{
    size_t n;
    char *text = sample_text(&n);
    write_bytes(P("in.txt"), text, n);
    char args[2048];
    snprintf(args, sizeof args, "--input %s --out %s --val-fraction 0.1", P("in.txt"), P("out"));
    ck_assert_int_eq(prepare(args), 0);
    ck_assert(exists(P("out/meta.json")));
    ck_assert(!exists(P("out/train_001.tok")));
    moe_tokfile tr = read_ok(P("out/train_000.tok"));
    moe_tokfile va = read_ok(P("out/val_000.tok"));
    uint64_t nval = (uint64_t)(0.1 * (double)n + 0.5);
    ck_assert_uint_eq(tr.vocab_size, 256);
    ck_assert_uint_eq(va.vocab_size, 256);
    ck_assert_uint_eq(va.ntokens, nval);
    ck_assert_uint_eq(tr.ntokens + va.ntokens, n);
    /* train is the head, val the tail, each byte one token */
    for (uint64_t i = 0; i < tr.ntokens; i++)
        ck_assert_uint_eq(tr.tokens[i], (unsigned char)text[i]);
    for (uint64_t i = 0; i < va.ntokens; i++)
        ck_assert_uint_eq(va.tokens[i], (unsigned char)text[tr.ntokens + i]);

    FILE *f = fopen(P("out/meta.json"), "r");
    char meta[4096] = {0};
    ck_assert_uint_gt(fread(meta, 1, sizeof meta - 1, f), 0);
    fclose(f);
    char want[128];
    ck_assert_ptr_nonnull(strstr(meta, "\"tokenizer\": \"byte\""));
    ck_assert_ptr_nonnull(strstr(meta, "\"vocab_size\": 256"));
    snprintf(want, sizeof want, "\"train_tokens\": %llu", (unsigned long long)tr.ntokens);
    ck_assert_ptr_nonnull(strstr(meta, want));
    snprintf(want, sizeof want, "\"val_tokens\": %llu", (unsigned long long)va.ntokens);
    ck_assert_ptr_nonnull(strstr(meta, want));
    ck_assert_ptr_nonnull(strstr(meta, "\"file\": \"train_000.tok\""));
    ck_assert_ptr_nonnull(strstr(meta, "\"file\": \"val_000.tok\""));
    ck_assert_ptr_nonnull(strstr(meta, P("in.txt")));
    moe_tokfile_free(&tr);
    moe_tokfile_free(&va);

    /* the default val fraction is 0.05 */
    snprintf(args, sizeof args, "--input %s --out %s", P("in.txt"), P("out2"));
    ck_assert_int_eq(prepare(args), 0);
    va = read_ok(P("out2/val_000.tok"));
    ck_assert_uint_eq(va.ntokens, (uint64_t)(0.05 * (double)n + 0.5));
    moe_tokfile_free(&va);
    free(text);
}
END_TEST

START_TEST(test_prepare_shards_and_inputs)
{
    write_bytes(P("a.txt"), "abcdefghij", 10);
    write_bytes(P("b.txt"), "KLMNOPQRST", 10);
    char args[2048];
    /* two inputs in order; 20 tokens, val 4; train 16 in shards of 5: 5,5,5,1 */
    snprintf(args, sizeof args, "--input %s %s --out=%s --val-fraction 0.2 --shard-tokens 5",
             P("a.txt"), P("b.txt"), P("o"));
    ck_assert_int_eq(prepare(args), 0);
    const char *want = "abcdefghijKLMNOPQRST";
    const char *names[] = {"o/train_000.tok", "o/train_001.tok", "o/train_002.tok",
                           "o/train_003.tok", "o/val_000.tok"};
    const uint64_t sizes[] = {5, 5, 5, 1, 4};
    int at = 0;
    for (int s = 0; s < 5; s++) {
        moe_tokfile tf = read_ok(P(names[s]));
        ck_assert_uint_eq(tf.ntokens, sizes[s]);
        for (uint64_t i = 0; i < tf.ntokens; i++, at++)
            ck_assert_uint_eq(tf.tokens[i], (unsigned char)want[at]);
        moe_tokfile_free(&tf);
    }
    ck_assert(!exists(P("o/train_004.tok")));
    ck_assert(!exists(P("o/val_001.tok")));

    /* re-preparing into the same directory with fewer shards drops the stale ones */
    snprintf(args, sizeof args, "--input %s --out %s --val-fraction 0.2", P("a.txt"), P("o"));
    ck_assert_int_eq(prepare(args), 0);
    ck_assert(exists(P("o/train_000.tok")));
    ck_assert(!exists(P("o/train_001.tok")));
    ck_assert(!exists(P("o/train_003.tok")));
    moe_tokfile tf = read_ok(P("o/train_000.tok"));
    ck_assert_uint_eq(tf.ntokens, 8);
    moe_tokfile_free(&tf);

    /* --help succeeds */
    ck_assert_int_eq(prepare("--help"), 0);
}
END_TEST

START_TEST(test_prepare_bad_input)
{
    char args[2048];
    /* invalid UTF-8: the message names the file and the byte offset */
    static const char bad[] = "hello w\xff" "rld and more text";
    write_bytes(P("bad.txt"), bad, sizeof bad - 1);
    snprintf(args, sizeof args, "--input %s --out %s", P("bad.txt"), P("o"));
    ck_assert_int_eq(prepare(args), 2);
    assert_msg_has(P("bad.txt"));
    assert_msg_has("byte offset 7");
    ck_assert(!exists(P("o/train_000.tok")));

    /* an overlong encoding, a surrogate, and a sequence cut off at the end */
    write_bytes(P("over.txt"), "abc\xc0\xaf", 5);
    snprintf(args, sizeof args, "--input %s --out %s", P("over.txt"), P("o"));
    ck_assert_int_eq(prepare(args), 2);
    assert_msg_has("byte offset 3");
    write_bytes(P("sur.txt"), "ab\xed\xa0\x80xyz", 8);
    snprintf(args, sizeof args, "--input %s --out %s", P("sur.txt"), P("o"));
    ck_assert_int_eq(prepare(args), 2);
    assert_msg_has("byte offset 2");
    write_bytes(P("cut.txt"), "abcdefgh\xe2\x82", 10);
    snprintf(args, sizeof args, "--input %s --out %s", P("cut.txt"), P("o"));
    ck_assert_int_eq(prepare(args), 2);
    assert_msg_has("byte offset 8");

    /* missing input file */
    snprintf(args, sizeof args, "--input %s --out %s", P("missing.txt"), P("o"));
    ck_assert_int_eq(prepare(args), 2);
    assert_msg_has("missing.txt");

    /* empty validation split: 3 tokens * 0.05 rounds to 0 */
    write_bytes(P("abc.txt"), "abc", 3);
    snprintf(args, sizeof args, "--input %s --out %s", P("abc.txt"), P("o"));
    ck_assert_int_eq(prepare(args), 2);
    assert_msg_has("validation split would be empty");
    assert_msg_has("train 3, val 0");

    /* empty input */
    write_bytes(P("empty.txt"), "", 0);
    snprintf(args, sizeof args, "--input %s --out %s", P("empty.txt"), P("o"));
    ck_assert_int_eq(prepare(args), 2);

    /* usage errors */
    ck_assert_int_eq(prepare("--out x"), 2);
    snprintf(args, sizeof args, "--input %s", P("abc.txt"));
    ck_assert_int_eq(prepare(args), 2);
    snprintf(args, sizeof args, "--input %s --out %s --tokenizer gpt2", P("abc.txt"), P("o"));
    ck_assert_int_eq(prepare(args), 2);
    assert_msg_has("unknown tokenizer");
    snprintf(args, sizeof args, "--input %s --out %s --val-fraction 1.5", P("abc.txt"), P("o"));
    ck_assert_int_eq(prepare(args), 2);
    snprintf(args, sizeof args, "--input %s --out %s --shard-tokens 0", P("abc.txt"), P("o"));
    ck_assert_int_eq(prepare(args), 2);
    snprintf(args, sizeof args, "--input %s --out %s --bogus", P("abc.txt"), P("o"));
    ck_assert_int_eq(prepare(args), 2);
    ck_assert_int_eq(prepare("--input - - --out x"), 2);
    ck_assert(!exists(P("o")));
}
END_TEST

// ----------------------------------------------------------------------------
// loader

enum { NTOK = 1000, T = 8 };

/* DIR/train_000.tok + train_001.tok hold tokens 0..NTOK-1 (token i == i, so a
** window is recognisable by its first token); the shard edge (333) is not a
** multiple of T, so some windows straddle it. */
static void make_stream(const char *dir)
{
    mkdir(dir, 0777);
    uint32_t t[NTOK];
    for (int i = 0; i < NTOK; i++)
        t[i] = (uint32_t)i;
    char path[1024];
    snprintf(path, sizeof path, "%s/train_000.tok", dir);
    ck_assert_int_eq(moe_tokfile_write(path, t, 333, 4096), MOE_OK);
    snprintf(path, sizeof path, "%s/train_001.tok", dir);
    ck_assert_int_eq(moe_tokfile_write(path, t + 333, NTOK - 333, 4096), MOE_OK);
}

static moe_data *open_ok(const char *dir, const char *split, int seq_len, uint64_t seed, int shuffle)
{
    moe_data *d = NULL;
    moe_status st = moe_data_open(&d, dir, split, seq_len, seed, shuffle);
    ck_assert_msg(st == MOE_OK, "open %s/%s: %s", dir, split, moe_errmsg());
    return d;
}

/* Window index of each sequence in [first, first+count), via one call. */
static void windows(moe_data *d, uint64_t first, int count, uint64_t *out)
{
    int32_t *in = malloc((size_t)count * T * sizeof *in);
    int32_t *tg = malloc((size_t)count * T * sizeof *tg);
    ck_assert_int_eq(moe_data_get(d, first, count, in, tg), MOE_OK);
    for (int r = 0; r < count; r++) {
        ck_assert_int_eq(in[r * T] % T, 0);
        out[r] = (uint64_t)in[r * T] / T;
    }
    free(in);
    free(tg);
}

START_TEST(test_loader_targets_shifted)
{
    make_stream(P("d"));
    moe_data *d = open_ok(P("d"), "train", T, 1, 1);
    ck_assert_uint_eq(moe_data_num_tokens(d), NTOK);
    ck_assert_uint_eq(moe_data_num_windows(d), (NTOK - 1) / T);
    ck_assert_int_eq(moe_data_vocab(d), 4096);
    uint64_t W = moe_data_num_windows(d);
    int n = (int)W + 7;
    int32_t *in = malloc((size_t)n * T * sizeof *in), *tg = malloc((size_t)n * T * sizeof *tg);
    ck_assert_int_eq(moe_data_get(d, 0, n, in, tg), MOE_OK);
    for (int r = 0; r < n; r++) {
        int32_t w0 = in[r * T];
        ck_assert_int_eq(w0 % T, 0);
        ck_assert_int_lt(w0 + T, NTOK); /* the last target exists */
        for (int t = 0; t < T; t++) {
            ck_assert_int_eq(in[r * T + t], w0 + t);     /* contiguous, across shards too */
            ck_assert_int_eq(tg[r * T + t], w0 + t + 1); /* targets = inputs shifted by one */
        }
    }
    free(in);
    free(tg);
    ck_assert_int_eq(moe_data_get(d, 0, 0, NULL, NULL), MOE_OK);
    moe_error_clear();
    ck_assert_int_eq(moe_data_get(d, 0, -1, NULL, NULL), MOE_ERR_USAGE);
    moe_data_close(d);
}
END_TEST

START_TEST(test_loader_each_window_once_per_epoch)
{
    make_stream(P("d"));
    moe_data *d = open_ok(P("d"), "train", T, 42, 1);
    uint64_t W = moe_data_num_windows(d);
    uint64_t *w = malloc(3 * W * sizeof *w);
    windows(d, 0, (int)(3 * W), w);
    for (int e = 0; e < 3; e++) {
        char *seen = calloc(W, 1);
        for (uint64_t i = 0; i < W; i++) {
            ck_assert_uint_lt(w[e * W + i], W);
            ck_assert_int_eq(seen[w[e * W + i]], 0);
            seen[w[e * W + i]] = 1;
        }
        free(seen);
    }
    /* epochs are shuffled differently, and not left in order */
    ck_assert_int_ne(memcmp(w, w + W, W * sizeof *w), 0);
    int in_order = 1;
    for (uint64_t i = 0; i < W; i++)
        in_order &= w[i] == i;
    ck_assert(!in_order);
    free(w);
    moe_data_close(d);
}
END_TEST

START_TEST(test_loader_order_independent)
{
    make_stream(P("d"));
    moe_data *a = open_ok(P("d"), "train", T, 7, 1);
    uint64_t W = moe_data_num_windows(a);
    int n = (int)(3 * W + 5);
    uint64_t *ref = malloc((size_t)n * sizeof *ref);
    windows(a, 0, n, ref);

    /* one at a time, backwards, on a fresh handle */
    moe_data *b = open_ok(P("d"), "train", T, 7, 1);
    for (int s = n - 1; s >= 0; s--) {
        uint64_t w;
        windows(b, (uint64_t)s, 1, &w);
        ck_assert_uint_eq(w, ref[s]);
    }
    /* random chunks, jumping back and forth over epoch boundaries, on the
    ** handle that has already cached a later epoch */
    moe_rng r;
    moe_rng_seed(&r, 99);
    uint64_t *got = malloc((size_t)n * sizeof *got);
    for (int k = 0; k < 200; k++) {
        int len = 1 + (int)moe_rng_below(&r, 2 * W);
        uint64_t first = moe_rng_below(&r, (uint64_t)(n - len + 1));
        windows(a, first, len, got);
        for (int i = 0; i < len; i++)
            ck_assert_uint_eq(got[i], ref[first + (uint64_t)i]);
    }
    /* a chunk exactly straddling the epoch 0 -> 1 boundary */
    windows(b, W - 3, 6, got);
    for (int i = 0; i < 6; i++)
        ck_assert_uint_eq(got[i], ref[W - 3 + (uint64_t)i]);
    free(got);
    free(ref);
    moe_data_close(a);
    moe_data_close(b);
}
END_TEST

START_TEST(test_loader_no_shuffle_and_seeds)
{
    make_stream(P("d"));
    moe_data *d = open_ok(P("d"), "train", T, 5, 0);
    uint64_t W = moe_data_num_windows(d);
    uint64_t *w = malloc(2 * W * sizeof *w);
    windows(d, 0, (int)(2 * W), w);
    for (uint64_t s = 0; s < 2 * W; s++)
        ck_assert_uint_eq(w[s], s % W); /* identity, every epoch */
    moe_data_close(d);

    /* same seed -> same order, different seed -> different order */
    uint64_t *a = malloc(W * sizeof *a), *b = malloc(W * sizeof *b), *c = malloc(W * sizeof *c);
    d = open_ok(P("d"), "train", T, 1, 1);
    windows(d, 0, (int)W, a);
    moe_data_close(d);
    d = open_ok(P("d"), "train", T, 1, 1);
    windows(d, 0, (int)W, b);
    moe_data_close(d);
    d = open_ok(P("d"), "train", T, 2, 1);
    windows(d, 0, (int)W, c);
    moe_data_close(d);
    ck_assert_int_eq(memcmp(a, b, W * sizeof *a), 0);
    ck_assert_int_ne(memcmp(a, c, W * sizeof *a), 0);
    free(a);
    free(b);
    free(c);
    free(w);
}
END_TEST

START_TEST(test_loader_errors)
{
    moe_data *d = NULL;
    moe_error_clear();
    ck_assert_int_eq(moe_data_open(&d, P("none"), "train", T, 0, 1), MOE_ERR_INPUT);
    assert_msg_has("does not exist");
    ck_assert_ptr_null(d);

    make_stream(P("d"));
    moe_error_clear();
    ck_assert_int_eq(moe_data_open(&d, P("d"), "val", T, 0, 0), MOE_ERR_INPUT);
    assert_msg_has("no val_*.tok or val_*.bin shards in");
    assert_msg_has(P("d"));

    /* too few tokens for one window: 1000 tokens, seq_len 1000 needs 1001 */
    moe_error_clear();
    ck_assert_int_eq(moe_data_open(&d, P("d"), "train", NTOK, 0, 1), MOE_ERR_INPUT);
    assert_msg_has("has 1000 tokens; one window of seq_len 1000 needs 1001");
    d = open_ok(P("d"), "train", NTOK - 1, 0, 1); /* exactly one window */
    ck_assert_uint_eq(moe_data_num_windows(d), 1);
    moe_data_close(d);
    d = NULL;
    moe_error_clear();
    ck_assert_int_eq(moe_data_open(&d, P("d"), "train", 0, 0, 1), MOE_ERR_USAGE);

    /* a shard with another vocab */
    uint32_t t[20] = {0};
    ck_assert_int_eq(moe_tokfile_write(P("d/train_002.tok"), t, 20, 256), MOE_OK);
    moe_error_clear();
    ck_assert_int_eq(moe_data_open(&d, P("d"), "train", T, 0, 1), MOE_ERR_INPUT);
    assert_msg_has("train_002.tok: vocab_size 256 differs");

    /* a corrupt shard names itself */
    unlink(P("d/train_002.tok"));
    ck_assert_int_eq(truncate(P("d/train_001.tok"), 100), 0);
    moe_error_clear();
    ck_assert_int_eq(moe_data_open(&d, P("d"), "train", T, 0, 1), MOE_ERR_INPUT);
    assert_msg_has("train_001.tok: truncated");

    /* .tok and .bin mixed in one split */
    make_stream(P("m"));
    uint16_t tk[20] = {0};
    write_llmc(P("m/train_005.bin"), tk, 20, 0);
    moe_error_clear();
    ck_assert_int_eq(moe_data_open(&d, P("m"), "train", T, 0, 1), MOE_ERR_INPUT);
    assert_msg_has("mixes .tok and .bin");
    ck_assert_ptr_null(d);
}
END_TEST

START_TEST(test_loader_bin_shards_and_order)
{
    /* llm.c naming; shards ordered by number, not by string (2 before 10) */
    mkdir(P("b"), 0777);
    uint16_t t[64];
    for (int i = 0; i < 64; i++)
        t[i] = (uint16_t)(1000 + i);
    write_llmc(P("b/fine_train_10.bin"), t + 32, 32, 0);
    write_llmc(P("b/fine_train_2.bin"), t, 32, 0);
    write_llmc(P("b/fine_val_000000.bin"), t, 20, 0);
    write_llmc(P("b/pretrain_3.bin"), t, 20, 0); /* another split's name: ignored */
    moe_data *d = open_ok(P("b"), "train", T, 0, 0);
    ck_assert_uint_eq(moe_data_num_tokens(d), 64);
    ck_assert_int_eq(moe_data_vocab(d), 50257);
    ck_assert_uint_eq(moe_data_num_windows(d), 63 / T);
    int32_t in[T * 7], tg[T * 7];
    ck_assert_int_eq(moe_data_get(d, 0, 7, in, tg), MOE_OK);
    for (int i = 0; i < T * 7; i++) {
        ck_assert_int_eq(in[i], 1000 + i);
        ck_assert_int_eq(tg[i], 1001 + i);
    }
    moe_data_close(d);
    d = open_ok(P("b"), "val", 4, 0, 0);
    ck_assert_uint_eq(moe_data_num_tokens(d), 20);
    moe_data_close(d);
}
END_TEST

START_TEST(test_loader_reads_prepared_dir)
{
    size_t n;
    char *text = sample_text(&n);
    write_bytes(P("in.txt"), text, n);
    char args[2048];
    snprintf(args, sizeof args, "--input %s --out %s --shard-tokens 500", P("in.txt"), P("p"));
    ck_assert_int_eq(prepare(args), 0);
    moe_data *tr = open_ok(P("p"), "train", 16, 3, 1);
    moe_data *va = open_ok(P("p"), "val", 16, 3, 0);
    ck_assert_uint_eq(moe_data_num_tokens(tr) + moe_data_num_tokens(va), n);
    ck_assert_int_eq(moe_data_vocab(tr), 256);
    int32_t in[16], tg[16];
    ck_assert_int_eq(moe_data_get(va, 0, 1, in, tg), MOE_OK);
    size_t ntr = (size_t)moe_data_num_tokens(tr);
    for (int t = 0; t < 16; t++)
        ck_assert_int_eq(in[t], (unsigned char)text[ntr + (size_t)t]);
    moe_data_close(tr);
    moe_data_close(va);
    free(text);
}
END_TEST

/* The documented recipe (data.h), rebuilt here independently: a change to the
** loader's order would silently change what resumed runs train on. */
START_TEST(test_loader_documented_permutation)
{
    make_stream(P("d"));
    const uint64_t seed = 1234;
    moe_data *d = open_ok(P("d"), "train", T, seed, 1);
    uint64_t W = moe_data_num_windows(d);
    uint64_t *perm = malloc(W * sizeof *perm), *got = malloc(W * sizeof *got);
    for (uint64_t e = 0; e < 3; e++) {
        for (uint64_t i = 0; i < W; i++)
            perm[i] = i;
        moe_rng r;
        moe_rng_seed(&r, seed ^ ((e + 1) * 0x9E3779B97F4A7C15ULL));
        for (uint64_t i = W - 1; i > 0; i--) {
            uint64_t j = moe_rng_below(&r, i + 1), t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        windows(d, e * W, (int)W, got);
        ck_assert_int_eq(memcmp(perm, got, W * sizeof *got), 0);
    }
    free(perm);
    free(got);
    moe_data_close(d);
}
END_TEST

static Suite *data_suite(void)
{
    Suite *s = suite_create("data");
    TCase *tf = tcase_create("tokfile");
    tcase_add_checked_fixture(tf, setup, teardown);
    tcase_add_test(tf, test_tokfile_roundtrip);
    tcase_add_test(tf, test_tokfile_corrupt_checksum);
    tcase_add_test(tf, test_tokfile_truncated);
    tcase_add_test(tf, test_tokfile_bad_magic);
    tcase_add_test(tf, test_tokfile_token_out_of_vocab);
    tcase_add_test(tf, test_tokfile_llmc_bin);
    suite_add_tcase(s, tf);
    TCase *pr = tcase_create("prepare");
    tcase_add_checked_fixture(pr, setup, teardown);
    tcase_add_test(pr, test_prepare_basic);
    tcase_add_test(pr, test_prepare_shards_and_inputs);
    tcase_add_test(pr, test_prepare_bad_input);
    suite_add_tcase(s, pr);
    TCase *ld = tcase_create("loader");
    tcase_add_checked_fixture(ld, setup, teardown);
    tcase_add_test(ld, test_loader_targets_shifted);
    tcase_add_test(ld, test_loader_each_window_once_per_epoch);
    tcase_add_test(ld, test_loader_order_independent);
    tcase_add_test(ld, test_loader_no_shuffle_and_seeds);
    tcase_add_test(ld, test_loader_documented_permutation);
    tcase_add_test(ld, test_loader_errors);
    tcase_add_test(ld, test_loader_bin_shards_and_order);
    tcase_add_test(ld, test_loader_reads_prepared_dir);
    suite_add_tcase(s, ld);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(data_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
