/*
** test_safetensors: the safetensors writer and strict reader
** (launch/safetensors.h): round trips, dtype conversion, and hostile files,
** each refused with a message naming the file (and tensor); then
** `moe checkpoint export/import` (launch/checkpoint_cmd.h) on a small model's
** sharded checkpoint: bit-exact both ways, and every mismatch refused.
*/
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "launch/checkpoint_cmd.h"
#include "launch/safetensors.h"
#include "runtime/base/checkpoint.h"
#include "runtime/base/config.h"
#include "runtime/base/status.h"
#include "runtime/model.h"
#include "testutil.h"

static char dir[1024];

static void setup(void) { tu_tmpdir(dir, sizeof dir, "safetensors"); }

static void teardown(void)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

static void path_of(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", dir, name); }

static uint32_t mix32(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return (uint32_t)(x ^ (x >> 31));
}

static long file_size(const char *path)
{
    struct stat sb;
    ck_assert_int_eq(stat(path, &sb), 0);
    return (long)sb.st_size;
}

/* A file from parts: the 8-byte length (declared, whatever the header is),
** the header text, then data. */
static void write_raw(const char *path, uint64_t declared, const char *header, const void *data, size_t dlen)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    uint8_t len8[8];
    for (int k = 0; k < 8; k++)
        len8[k] = (uint8_t)(declared >> (8 * k));
    ck_assert_int_eq(fwrite(len8, 1, 8, f), 8);
    ck_assert_int_eq(fwrite(header, 1, strlen(header), f), strlen(header));
    if (dlen)
        ck_assert_int_eq(fwrite(data, 1, dlen, f), dlen);
    ck_assert_int_eq(fclose(f), 0);
}

/* header with its true length, then dlen bytes of data. */
static void write_file(const char *path, const char *header, size_t dlen)
{
    static uint8_t zeros[4096];
    ck_assert_uint_le(dlen, sizeof zeros);
    write_raw(path, strlen(header), header, zeros, dlen);
}

/* Opening path fails with MOE_ERR_INPUT, and the message names the file and
** holds every needle (NULL ends). */
static void expect_refused(const char *path, const char *needle, const char *needle2)
{
    moe_st_file f;
    moe_error_clear();
    moe_status st = moe_st_open(&f, path);
    ck_assert_msg(st == MOE_ERR_INPUT, "%s: status %d, expected a refusal with '%s'", path, (int)st, needle);
    const char *msg = moe_errmsg();
    ck_assert_msg(strstr(msg, path) != NULL, "message does not name the file: %s", msg);
    ck_assert_msg(strstr(msg, needle) != NULL, "message lacks '%s': %s", needle, msg);
    ck_assert_msg(!needle2 || strstr(msg, needle2) != NULL, "message lacks '%s': %s", needle2, msg);
    ck_assert_ptr_null(f.f);
    moe_st_close(&f); /* harmless after a failure */
}

/* ---- round trips ------------------------------------------------------------------ */

START_TEST(round_trip)
{
    char path[1200];
    path_of(path, sizeof path, "a.safetensors");
    moe_st_spec spec[4] = {{.name = "layers.0.w", .ndim = 2, .shape = {3, 5}},
                           {.name = "scalar", .ndim = 0},
                           {.name = "empty", .ndim = 2, .shape = {0, 4}},
                           {.name = "odd \"name\" \xc3\xa9\n", .ndim = 1, .shape = {7}}};
    uint32_t a[15], s[1], b[7];
    for (int k = 0; k < 15; k++)
        a[k] = mix32((uint64_t)k); /* any bit pattern, NaNs included: a copy must be exact */
    s[0] = 0x3f800000u;
    for (int k = 0; k < 7; k++)
        b[k] = mix32(100 + (uint64_t)k);
    const float *data[4] = {(const float *)a, (const float *)s, (const float *)s, (const float *)b};
    moe_st_kv meta[2] = {{"format", "pt"}, {"moe.config", "num-layers: 2\nname: \"x\\y\"\n"}};
    ck_assert_msg(moe_st_write(path, spec, data, 4, meta, 2) == MOE_OK, "%s", moe_errmsg());

    moe_st_file f;
    ck_assert_msg(moe_st_open(&f, path) == MOE_OK, "%s", moe_errmsg());
    ck_assert_int_eq(f.n, 4);
    ck_assert_int_eq(f.data_start % 8, 0); /* the header is padded: the buffer starts 8-aligned */
    ck_assert_int_eq(f.data_size, (15 + 1 + 0 + 7) * 4);
    ck_assert_str_eq(moe_st_meta_get(&f, "format"), "pt");
    ck_assert_str_eq(moe_st_meta_get(&f, "moe.config"), meta[1].value);
    ck_assert_ptr_null(moe_st_meta_get(&f, "nothing"));
    for (int i = 0; i < 4; i++) {
        int j = moe_st_find(&f, spec[i].name);
        ck_assert_int_eq(j, i);
        ck_assert_int_eq(f.t[j].dtype, MOE_ST_F32);
        ck_assert_int_eq(f.t[j].ndim, spec[i].ndim);
        for (int d = 0; d < spec[i].ndim; d++)
            ck_assert_int_eq(f.t[j].shape[d], spec[i].shape[d]);
    }
    ck_assert_int_eq(moe_st_find(&f, "missing"), -1);
    uint32_t got[16];
    ck_assert(moe_st_read(&f, 0, (float *)got, 15) == MOE_OK);
    ck_assert_mem_eq(got, a, sizeof a);
    ck_assert(moe_st_read(&f, 1, (float *)got, 1) == MOE_OK);
    ck_assert_uint_eq(got[0], s[0]);
    ck_assert(moe_st_read(&f, 2, (float *)got, 0) == MOE_OK);
    ck_assert(moe_st_read(&f, 3, (float *)got, 7) == MOE_OK);
    ck_assert_mem_eq(got, b, sizeof b);
    ck_assert(moe_st_read(&f, 0, (float *)got, 14) == MOE_ERR_USAGE); /* the wrong count */
    moe_st_close(&f);

    /* Re-writing replaces the file whole, and leaves no temporary file. */
    ck_assert(moe_st_write(path, spec, data, 1, NULL, 0) == MOE_OK);
    ck_assert(moe_st_open(&f, path) == MOE_OK);
    ck_assert_int_eq(f.n, 1);
    ck_assert_int_eq(f.nmeta, 0);
    moe_st_close(&f);
    char cmd[1300], out[256];
    snprintf(cmd, sizeof cmd, "ls '%s' | grep -c tmp", dir);
    tu_run(cmd, out, sizeof out);
    ck_assert_str_eq(out, "0\n");
}
END_TEST

/* More entries than the tables start with: they grow. */
START_TEST(many_tensors)
{
    char path[1200];
    path_of(path, sizeof path, "many.safetensors");
    enum { N = 100, M = 40 };
    static char names[N][16], keys[M][16];
    moe_st_spec spec[N];
    moe_st_kv meta[M];
    float v[N][3];
    const float *data[N];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "t%03d", N - 1 - i);
        spec[i] = (moe_st_spec){.name = names[i], .ndim = 1, .shape = {i % 4}};
        for (int k = 0; k < 3; k++)
            v[i][k] = (float)(i * 10 + k);
        data[i] = v[i];
    }
    for (int i = 0; i < M; i++) {
        snprintf(keys[i], sizeof keys[i], "k%d", i);
        meta[i] = (moe_st_kv){keys[i], names[i]};
    }
    ck_assert_msg(moe_st_write(path, spec, data, N, meta, M) == MOE_OK, "%s", moe_errmsg());
    moe_st_file f;
    ck_assert_msg(moe_st_open(&f, path) == MOE_OK, "%s", moe_errmsg());
    ck_assert_int_eq(f.n, N);
    ck_assert_int_eq(f.nmeta, M);
    for (int i = 0; i < N; i++) {
        float got[3];
        int j = moe_st_find(&f, names[i]);
        ck_assert_int_eq(j, i);
        ck_assert(moe_st_read(&f, j, got, (uint64_t)(i % 4)) == MOE_OK);
        ck_assert_mem_eq(got, v[i], sizeof(float) * (size_t)(i % 4));
    }
    ck_assert_str_eq(moe_st_meta_get(&f, "k39"), names[39]);
    moe_st_close(&f);
}
END_TEST

START_TEST(empty_file_of_tensors)
{
    char path[1200];
    path_of(path, sizeof path, "none.safetensors");
    ck_assert(moe_st_write(path, NULL, NULL, 0, NULL, 0) == MOE_OK);
    moe_st_file f;
    ck_assert_msg(moe_st_open(&f, path) == MOE_OK, "%s", moe_errmsg());
    ck_assert_int_eq(f.n, 0);
    moe_st_close(&f);
}
END_TEST

/* Headers the reference writer makes: spaces inside, \u escapes, padding. */
START_TEST(reads_other_writers_json)
{
    char path[1200];
    path_of(path, sizeof path, "py.safetensors");
    const char *h = "{\"__metadata__\": {\"format\": \"pt\"}, \"w\\u00e9\\ud83d\\ude00\": {\"dtype\": \"F32\", "
                    "\"shape\": [2], \"data_offsets\": [0, 8]}}       ";
    write_file(path, h, 8);
    moe_st_file f;
    ck_assert_msg(moe_st_open(&f, path) == MOE_OK, "%s", moe_errmsg());
    ck_assert_str_eq(f.t[0].name, "w\xc3\xa9\xf0\x9f\x98\x80");
    ck_assert_int_eq(f.t[0].numel, 2);
    moe_st_close(&f);
}
END_TEST

START_TEST(converts_dtypes)
{
    char path[1200];
    path_of(path, sizeof path, "dt.safetensors");
    const char *h = "{\"h\":{\"dtype\":\"F16\",\"shape\":[5],\"data_offsets\":[0,10]},"
                    "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[10,14]},"
                    "\"d\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[14,30]},"
                    "\"big\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[30,38]}}";
    uint8_t data[38];
    uint16_t h16[5] = {0x3c00, 0xc000, 0x0001, 0x7c00, 0x3555}; /* 1, -2, 2^-24, inf, 0.333... */
    uint16_t b16[2] = {0x3f80, 0xc040};                         /* 1, -3 */
    double d64[2] = {0.1, -1e-3}, big = 1e300;
    memcpy(data, h16, 10);
    memcpy(data + 10, b16, 4);
    memcpy(data + 14, d64, 16);
    memcpy(data + 30, &big, 8);
    write_raw(path, strlen(h), h, data, sizeof data);
    moe_st_file f;
    ck_assert_msg(moe_st_open(&f, path) == MOE_OK, "%s", moe_errmsg());
    float v[5];
    ck_assert(moe_st_read(&f, 0, v, 5) == MOE_OK);
    ck_assert(v[0] == 1.0f && v[1] == -2.0f && v[2] == 0x1p-24f && isinf(v[3]) && v[3] > 0);
    ck_assert(fabsf(v[4] - 0.33325195f) < 1e-7f);
    ck_assert(moe_st_read(&f, 1, v, 2) == MOE_OK);
    ck_assert(v[0] == 1.0f && v[1] == -3.0f);
    ck_assert(moe_st_read(&f, 2, v, 2) == MOE_OK);
    ck_assert(v[0] == (float)0.1 && v[1] == (float)-1e-3);
    moe_error_clear();
    ck_assert(moe_st_read(&f, 3, v, 1) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "'big'") && strstr(moe_errmsg(), "float32 range"), "%s", moe_errmsg());
    moe_st_close(&f);
}
END_TEST

/* ---- hostile files ------------------------------------------------------------------- */

#define T2(NAME, DT, SHAPE, B, E) "\"" NAME "\":{\"dtype\":\"" DT "\",\"shape\":" SHAPE ",\"data_offsets\":[" B "," E "]}"

START_TEST(refuses_truncated)
{
    char path[1200];
    path_of(path, sizeof path, "trunc.safetensors");
    moe_st_spec spec[2] = {{.name = "first", .ndim = 1, .shape = {4}}, {.name = "last", .ndim = 2, .shape = {2, 3}}};
    float a[4] = {1, 2, 3, 4}, b[6] = {5, 6, 7, 8, 9, 10};
    const float *data[2] = {a, b};
    ck_assert(moe_st_write(path, spec, data, 2, NULL, 0) == MOE_OK);
    ck_assert_int_eq(truncate(path, file_size(path) - 4), 0);
    expect_refused(path, "'last'", "reach past the data buffer");
    ck_assert_int_eq(truncate(path, 5), 0);
    expect_refused(path, "too short", NULL);
    ck_assert_int_eq(truncate(path, 0), 0);
    expect_refused(path, "too short", NULL);
}
END_TEST

START_TEST(refuses_header_length)
{
    char path[1200];
    path_of(path, sizeof path, "len.safetensors");
    write_raw(path, 1000, "{}", NULL, 0);
    expect_refused(path, "header length 1000 runs past the end of the file", NULL);
    write_raw(path, 200000000ull, "{}", NULL, 0);
    expect_refused(path, "over the limit", NULL);
    write_raw(path, UINT64_MAX, "{}", NULL, 0);
    expect_refused(path, "over the limit", NULL);
    write_raw(path, 0, "", NULL, 0);
    expect_refused(path, "does not start with '{'", NULL);
}
END_TEST

START_TEST(refuses_bad_layout)
{
    char path[1200];
    path_of(path, sizeof path, "lay.safetensors");
    write_file(path, "{" T2("a", "F32", "[2]", "0", "8") "," T2("b", "F32", "[2]", "4", "12") "}", 12);
    expect_refused(path, "'b'", "overlaps tensor 'a'");
    write_file(path, "{" T2("a", "F32", "[2]", "0", "8") "," T2("b", "F32", "[2]", "12", "20") "}", 20);
    expect_refused(path, "'b'", "hole");
    write_file(path, "{" T2("a", "F32", "[2]", "4", "12") "}", 12);
    expect_refused(path, "'a'", "hole");
    write_file(path, "{" T2("a", "F32", "[2]", "0", "8") "}", 12);
    expect_refused(path, "in no tensor at its end", NULL);
    write_file(path, "{" T2("a", "F32", "[3]", "0", "8") "}", 8);
    expect_refused(path, "'a'", "needs 12");
    write_file(path, "{" T2("a", "F16", "[2, 2]", "0", "16") "}", 16);
    expect_refused(path, "'a'", "needs 8");
    write_file(path, "{" T2("a", "F32", "[2]", "8", "0") "}", 8);
    expect_refused(path, "'a'", "end before they begin");
    write_file(path, "{" T2("a", "F32", "[4611686018427387904, 8]", "0", "8") "}", 8);
    expect_refused(path, "'a'", "too large");
    write_file(path, "{}", 4);
    expect_refused(path, "in no tensor at its end", NULL);
}
END_TEST

START_TEST(refuses_dtypes)
{
    char path[1200];
    path_of(path, sizeof path, "dtype.safetensors");
    write_file(path, "{" T2("w", "F33", "[2]", "0", "8") "}", 8);
    expect_refused(path, "'w'", "unknown dtype 'F33'");
    write_file(path, "{" T2("w", "I32", "[2]", "0", "8") "}", 8);
    expect_refused(path, "'w'", "dtype I32 is not supported");
    write_file(path, "{" T2("w", "f32", "[2]", "0", "8") "}", 8);
    expect_refused(path, "'w'", "unknown dtype 'f32'");
}
END_TEST

START_TEST(refuses_duplicates)
{
    char path[1200];
    path_of(path, sizeof path, "dup.safetensors");
    write_file(path, "{" T2("w", "F32", "[1]", "0", "4") "," T2("w", "F32", "[1]", "4", "8") "}", 8);
    expect_refused(path, "tensor 'w' is listed twice", NULL);
    write_file(path, "{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    expect_refused(path, "'w'", "key 'dtype' given twice");
    write_file(path, "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0);
    expect_refused(path, "__metadata__ key 'k' is given twice", NULL);
    write_file(path, "{\"__metadata__\":{},\"__metadata__\":{}}", 0);
    expect_refused(path, "key '__metadata__' given twice", NULL);
}
END_TEST

START_TEST(refuses_bad_json)
{
    char path[1200];
    path_of(path, sizeof path, "json.safetensors");
    static const struct {
        const char *header, *needle;
    } cases[] = {
        {"{" T2("w", "F32", "[1]", "0", "4") ",}", "expected a string"},
        {"{" T2("w", "F32", "[1]", "0", "4"), "expected ',' or '}'"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", "not an integer"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1e0],\"data_offsets\":[0,4]}}", "not an integer"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", "negative"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", "leading zero"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", "[BEGIN, END]"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", "[BEGIN, END]"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", "unknown key 'x'"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", "no 'data_offsets'"},
        {"{\"w\":{}}", "empty tensor object"},
        {"{\"w\":[1]}", "expected '{'"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", "more than 8 dims"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", "expected '['"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,99999999999999999999]}}", "too large"},
        {"{\"__metadata__\":{\"k\":1}}", "value of 'k' is not a string"},
        {"{\"__metadata__\":{\"k\":\"a\\u0000b\"}}", "NUL"},
        {"{\"__metadata__\":{\"k\":\"a\\ud800\"}}", "surrogate"},
        {"{\"__metadata__\":{\"k\":\"a\\q\"}}", "unknown escape"},
        {"{\"__metadata__\":{\"k\":\"a\tb\"}}", "raw control character"},
        {"{\"__metadata__\":{\"k\":\"\xc3\x28\"}}", "invalid UTF-8"},
        {"{\"__metadata__\":{\"k\":\"\xc0\xaf\"}}", "invalid UTF-8"},
        {"{\"__metadata__\":{\"k\":\"abc}}", "unterminated string"},
        {"{} x", "not space padding"},
        {"{}\n", "not space padding"},
        {" {}", "does not start with '{'"},
        {"[]", "does not start with '{'"},
        {"{\"\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", "empty name"},
        {"{w:1}", "expected a string"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        write_file(path, cases[c].header, 0);
        expect_refused(path, cases[c].needle, NULL);
    }
    /* Errors inside a tensor's object name the tensor. */
    write_file(path, "{\"w.1\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4);
    expect_refused(path, "tensor 'w.1'", "not an integer");
}
END_TEST

START_TEST(refuses_missing_file)
{
    char path[1200];
    path_of(path, sizeof path, "nope.safetensors");
    expect_refused(path, "No such file", NULL);
    expect_refused(dir, "not a regular file", NULL);
}
END_TEST

START_TEST(writer_refuses_bad_specs)
{
    char path[1200];
    path_of(path, sizeof path, "w.safetensors");
    moe_st_spec spec[2] = {{.name = "a", .ndim = 1, .shape = {2}}, {.name = "a", .ndim = 1, .shape = {2}}};
    moe_st_writer *w = NULL;
    ck_assert(moe_st_writer_open(&w, path, spec, 2, NULL, 0) == MOE_ERR_USAGE);
    ck_assert_ptr_null(w);
    spec[1].name = "__metadata__";
    ck_assert(moe_st_writer_open(&w, path, spec, 2, NULL, 0) == MOE_ERR_USAGE);
    spec[1].name = "b";
    spec[1].shape[0] = -1;
    ck_assert(moe_st_writer_open(&w, path, spec, 2, NULL, 0) == MOE_ERR_USAGE);
    spec[1].shape[0] = 3;
    ck_assert(moe_st_writer_open(&w, path, spec, 2, NULL, 0) == MOE_OK);
    float x[3] = {1, 2, 3};
    ck_assert(moe_st_writer_put(w, x, 3) == MOE_ERR_USAGE); /* tensor 0 has 2 */
    ck_assert(moe_st_writer_put(w, x, 2) == MOE_OK);
    ck_assert(moe_st_writer_commit(w, NULL) == MOE_ERR_USAGE); /* one still missing */
    ck_assert_int_eq(access(path, F_OK), -1);                   /* nothing was published */
    char cmd[1300], out[256];
    snprintf(cmd, sizeof cmd, "ls -A '%s' | wc -l", dir);
    tu_run(cmd, out, sizeof out);
    ck_assert_str_eq(out, "0\n");
}
END_TEST

/* ---- export / import ------------------------------------------------------------------- */

#define CFG_FMT                                                                                               \
    "num-layers: 2\nhidden-size: %d\nffn-hidden-size: 32\nnum-attention-heads: 2\nnum-query-groups: 1\n"      \
    "seq-length: 8\nvocab-size: %d\nnum-experts: 4\nmoe-router-topk: 2\nmoe-ffn-hidden-size: 8\n"             \
    "moe-layer-freq: [0,1]\nmoe-router-enable-expert-bias: true\nmicro-batch-size: 1\nglobal-batch-size: 1\n"
static char CFG[1024];

/* The small model's config with hidden size C and vocabulary V, at path. */
static void write_cfg(const char *path, int C, int V)
{
    char text[1024];
    snprintf(text, sizeof text, CFG_FMT, C, V);
    tu_write(path, text);
    if (C == 16 && V == 32)
        snprintf(CFG, sizeof CFG, "%s", text);
}

/* A model's full training state as the trainer saves it. */
typedef struct {
    moe_config cfg;
    moe_model *m;
    const moe_param_info *t;
    int nt;
    size_t nparams, nstate;
    float *mm, *vv, *bias;
    moe_ckpt_tensor ct[64];
    char names[64][96];
    int n;
} state;

static void state_make(state *s, const char *cfg_path, uint64_t seed)
{
    memset(s, 0, sizeof *s);
    moe_config_defaults(&s->cfg);
    ck_assert_msg(moe_config_load_yaml(&s->cfg, cfg_path) == MOE_OK, "%s", moe_errmsg());
    ck_assert_msg(moe_model_create(&s->m, &s->cfg, 1) == MOE_OK, "%s", moe_errmsg());
    moe_model_init(s->m, seed);
    s->t = moe_model_params(s->m, &s->nt);
    s->nparams = moe_model_num_params(s->m);
    s->bias = moe_model_state_data(s->m, &s->nstate);
    s->mm = calloc(s->nparams, sizeof(float));
    s->vv = calloc(s->nparams, sizeof(float));
    ck_assert(s->mm && s->vv);
    for (size_t k = 0; k < s->nparams; k++) {
        s->mm[k] = (float)((int)(mix32(seed + k) % 2001) - 1000) * 1e-4f;
        s->vv[k] = (float)(mix32(seed * 7 + k) % 1000) * 1e-6f;
    }
    for (size_t k = 0; k < s->nstate; k++)
        s->bias[k] = (float)k * 0.25f - 1.0f;
    const char *prefix[3] = {"model.", "optim.m.", "optim.v."};
    float *base[3] = {moe_model_param_data(s->m), s->mm, s->vv};
    ck_assert_int_le(3 * s->nt + 1, 64);
    for (int p = 0; p < 3; p++)
        for (int i = 0; i < s->nt; i++) {
            moe_ckpt_tensor *c = &s->ct[s->n];
            snprintf(s->names[s->n], sizeof s->names[0], "%s%s", prefix[p], s->t[i].name);
            c->name = s->names[s->n];
            c->ndim = s->t[i].ndim;
            memcpy(c->shape, s->t[i].shape, sizeof c->shape);
            c->data = base[p] + s->t[i].offset;
            c->bytes = s->t[i].numel * 4;
            s->n++;
        }
    ck_assert_uint_gt(s->nstate, 0);
    s->ct[s->n++] = (moe_ckpt_tensor){.name = "state.expert_bias", .ndim = 1, .shape = {(int64_t)s->nstate},
                                      .data = s->bias, .bytes = s->nstate * 4};
}

static void state_free(state *s)
{
    moe_model_free(s->m);
    free(s->mm);
    free(s->vv);
}

/* Saves s sharded as EP 2 would: rank 0 every dense tensor and expert rows
** [0, E/2), rank 1 expert rows [E/2, E). */
static void save_sharded(const state *s, const char *root, int64_t step)
{
    moe_ckpt_part p0[64], p1[64];
    int n0 = 0, n1 = 0;
    for (int i = 0; i < s->n; i++) {
        const moe_ckpt_tensor *c = &s->ct[i];
        const char *pn = strchr(c->name, '.') + 1;
        if (strncmp(c->name, "optim.", 6) == 0)
            pn = strchr(pn, '.') + 1;
        int expert = 0;
        for (int j = 0; j < s->nt; j++)
            if (strcmp(s->t[j].name, pn) == 0)
                expert = s->t[j].is_expert;
        moe_ckpt_part whole = {.name = c->name, .ndim = c->ndim, .row_start = 0,
                               .rows = c->ndim ? c->shape[0] : 1, .data = c->data, .bytes = c->bytes};
        memcpy(whole.shape, c->shape, sizeof whole.shape);
        if (!expert) {
            p0[n0++] = whole;
            continue;
        }
        int64_t half = c->shape[0] / 2;
        moe_ckpt_part a = whole, b = whole;
        a.rows = half;
        a.bytes = c->bytes / 2;
        b.row_start = half;
        b.rows = c->shape[0] - half;
        b.bytes = c->bytes - a.bytes;
        b.data = (char *)c->data + a.bytes;
        p0[n0++] = a;
        p1[n1++] = b;
    }
    ck_assert_int_gt(n1, 0);
    char tmp[2048];
    uint8_t *ix[2];
    size_t len[2];
    ck_assert_msg(moe_ckpt_prepare(root, step, tmp, sizeof tmp) == MOE_OK, "%s", moe_errmsg());
    ck_assert_msg(moe_ckpt_write_shard(tmp, 0, p0, n0, &ix[0], &len[0]) == MOE_OK, "%s", moe_errmsg());
    ck_assert_msg(moe_ckpt_write_shard(tmp, 1, p1, n1, &ix[1], &len[1]) == MOE_OK, "%s", moe_errmsg());
    moe_ckpt_meta meta = {.step = step, .data_next_sequence = 77};
    const uint8_t *cix[2] = {ix[0], ix[1]};
    ck_assert_msg(moe_ckpt_commit(root, tmp, &meta, CFG, "world 2 = dp 1 x ep 2", 2, cix, len, 2, 0) == MOE_OK, "%s",
                  moe_errmsg());
    moe_free(ix[0]);
    moe_free(ix[1]);
}

/* Loads root's checkpoint into fresh buffers laid out like s and compares
** with s (moments: with them, or zero). */
static void expect_checkpoint(const state *s, const char *root, int64_t step, int moments)
{
    moe_ckpt_tensor t[64];
    void *buf[64];
    for (int i = 0; i < s->n; i++) {
        t[i] = s->ct[i];
        buf[i] = malloc(t[i].bytes + 4);
        ck_assert_ptr_nonnull(buf[i]);
        memset(buf[i], 0xab, t[i].bytes);
        t[i].data = buf[i];
    }
    moe_ckpt_meta meta;
    char loaded[2048];
    ck_assert_msg(moe_ckpt_load_path(root, &meta, t, s->n, loaded, sizeof loaded) == MOE_OK, "%s", moe_errmsg());
    ck_assert_int_eq(meta.step, step);
    for (int i = 0; i < s->n; i++) {
        int optim = strncmp(t[i].name, "optim.", 6) == 0;
        if (optim && !moments) {
            for (size_t k = 0; k < t[i].bytes / 4; k++)
                ck_assert_msg(((float *)buf[i])[k] == 0.0f, "%s[%zu] is not zero", t[i].name, k);
        } else if (strcmp(t[i].name, "state.expert_bias") == 0 && !moments) {
            for (size_t k = 0; k < t[i].bytes / 4; k++)
                ck_assert(((float *)buf[i])[k] == 0.0f);
        } else {
            ck_assert_msg(memcmp(buf[i], s->ct[i].data, t[i].bytes) == 0, "%s differs", t[i].name);
        }
        free(buf[i]);
    }
}

START_TEST(export_import_round_trip)
{
    char cfg[1200], root[1200], out[1200], full[1200], imp[1200], imp2[1200];
    path_of(cfg, sizeof cfg, "cfg.yaml");
    path_of(root, sizeof root, "ckpt");
    path_of(out, sizeof out, "model.safetensors");
    path_of(full, sizeof full, "full.safetensors");
    path_of(imp, sizeof imp, "imported");
    path_of(imp2, sizeof imp2, "imported2");
    write_cfg(cfg, 16, 32);
    state s;
    state_make(&s, cfg, 5);
    save_sharded(&s, root, 9);

    moe_ckpt_cmd_summary sum;
    ck_assert_msg(moe_checkpoint_export(root, out, 0, &sum) == MOE_OK, "%s", moe_errmsg());
    ck_assert_int_eq(sum.tensors, s.nt);
    ck_assert_int_eq(sum.step, 9);
    ck_assert_int_eq(sum.bytes, file_size(out));
    ck_assert_msg(moe_checkpoint_export(root, full, 1, &sum) == MOE_OK, "%s", moe_errmsg());
    ck_assert_int_eq(sum.tensors, s.n);

    /* Every tensor in the file: its name (model. dropped), global shape, bits. */
    moe_st_file f;
    ck_assert_msg(moe_st_open(&f, full) == MOE_OK, "%s", moe_errmsg());
    ck_assert_int_eq(f.n, s.n);
    ck_assert_str_eq(moe_st_meta_get(&f, "format"), "pt");
    ck_assert_str_eq(moe_st_meta_get(&f, "moe.step"), "9");
    ck_assert_str_eq(moe_st_meta_get(&f, "moe.data_next_sequence"), "77");
    ck_assert_str_eq(moe_st_meta_get(&f, "moe.config"), CFG);
    for (int i = 0; i < s.n; i++) {
        const char *name = strncmp(s.ct[i].name, "model.", 6) == 0 ? s.ct[i].name + 6 : s.ct[i].name;
        int j = moe_st_find(&f, name);
        ck_assert_msg(j >= 0, "%s missing", name);
        ck_assert_int_eq(f.t[j].ndim, s.ct[i].ndim);
        for (int d = 0; d < s.ct[i].ndim; d++)
            ck_assert_int_eq(f.t[j].shape[d], s.ct[i].shape[d]);
        float *v = malloc(s.ct[i].bytes + 4);
        ck_assert(moe_st_read(&f, j, v, f.t[j].numel) == MOE_OK);
        ck_assert_msg(memcmp(v, s.ct[i].data, s.ct[i].bytes) == 0, "%s differs", name);
        free(v);
    }
    moe_st_close(&f);

    /* Back: everything, bit for bit, at the file's step; or the model alone. */
    ck_assert_msg(moe_checkpoint_import(full, cfg, imp, -1, &sum) == MOE_OK, "%s", moe_errmsg());
    ck_assert_int_eq(sum.step, 9);
    ck_assert_int_eq(sum.with_optimizer, 1);
    expect_checkpoint(&s, imp, 9, 1);
    ck_assert_msg(moe_checkpoint_import(out, cfg, imp2, -1, &sum) == MOE_OK, "%s", moe_errmsg());
    ck_assert_int_eq(sum.step, 0);
    expect_checkpoint(&s, imp2, 0, 0);

    /* export -> import -> export: the same tensors, bit for bit (the config
    ** YAML differs: the import records the resolved config). */
    char again[1200];
    path_of(again, sizeof again, "again.safetensors");
    ck_assert(moe_checkpoint_export(imp, again, 1, NULL) == MOE_OK);
    moe_st_file a, b;
    ck_assert(moe_st_open(&a, full) == MOE_OK);
    ck_assert(moe_st_open(&b, again) == MOE_OK);
    ck_assert_int_eq(a.n, b.n);
    ck_assert_int_eq(a.data_size, b.data_size);
    for (int i = 0; i < a.n; i++) {
        ck_assert_str_eq(a.t[i].name, b.t[i].name);
        ck_assert_int_eq(a.t[i].begin, b.t[i].begin);
        ck_assert_int_eq(a.t[i].end, b.t[i].end);
    }
    char *da = malloc(a.data_size + 1), *db = malloc(b.data_size + 1);
    ck_assert(fseek(a.f, (long)a.data_start, SEEK_SET) == 0 && fread(da, 1, a.data_size, a.f) == a.data_size);
    ck_assert(fseek(b.f, (long)b.data_start, SEEK_SET) == 0 && fread(db, 1, b.data_size, b.f) == b.data_size);
    ck_assert(memcmp(da, db, a.data_size) == 0);
    free(da);
    free(db);
    moe_st_close(&a);
    moe_st_close(&b);

    /* An existing root is refused (a load would pick its newest step). */
    moe_error_clear();
    ck_assert(moe_checkpoint_import(full, cfg, imp, 3, NULL) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "already holds checkpoints"), "%s", moe_errmsg());
    state_free(&s);
}
END_TEST

/* Writes the tensors of s named by keep() (with their checkpoint names,
** "model." dropped unless with_prefix), plus an extra one if extra. */
static void write_subset(const state *s, const char *path, int skip, int with_prefix, const char *extra, int moments,
                         float poison)
{
    moe_st_spec spec[66];
    const float *data[66];
    float x[3] = {0, 0, 0};
    int n = 0;
    for (int i = 0; i < s->n; i++) {
        int optim = strncmp(s->ct[i].name, "optim.", 6) == 0 || strncmp(s->ct[i].name, "state.", 6) == 0;
        if (i == skip || (optim && !moments))
            continue;
        spec[n].name = !with_prefix && !optim ? s->ct[i].name + 6 : s->ct[i].name;
        spec[n].ndim = s->ct[i].ndim;
        memcpy(spec[n].shape, s->ct[i].shape, sizeof s->ct[i].shape);
        data[n++] = s->ct[i].data;
    }
    if (extra) {
        spec[n] = (moe_st_spec){.name = extra, .ndim = 1, .shape = {3}};
        data[n++] = x;
    }
    float saved = ((float *)s->ct[0].data)[0];
    if (poison != 0)
        ((float *)s->ct[0].data)[0] = poison;
    ck_assert_msg(moe_st_write(path, spec, data, n, NULL, 0) == MOE_OK, "%s", moe_errmsg());
    ((float *)s->ct[0].data)[0] = saved;
}

static void expect_import_refused(const char *in, const char *cfg, const char *root, const char *n1, const char *n2)
{
    moe_error_clear();
    moe_status st = moe_checkpoint_import(in, cfg, root, -1, NULL);
    ck_assert_msg(st == MOE_ERR_INPUT || st == MOE_ERR_USAGE, "import of %s: status %d", in, (int)st);
    ck_assert_msg(strstr(moe_errmsg(), n1) && (!n2 || strstr(moe_errmsg(), n2)), "message lacks '%s'/'%s': %s", n1,
                  n2 ? n2 : "", moe_errmsg());
    ck_assert_int_eq(access(root, F_OK), -1); /* nothing written */
}

START_TEST(import_refuses_mismatch)
{
    char cfg[1200], cfg2[1200], in[1200], root[1200];
    path_of(cfg, sizeof cfg, "cfg.yaml");
    path_of(cfg2, sizeof cfg2, "wide.yaml");
    path_of(in, sizeof in, "in.safetensors");
    path_of(root, sizeof root, "root");
    write_cfg(cfg, 16, 32);
    write_cfg(cfg2, 32, 32);
    state s;
    state_make(&s, cfg, 11);

    /* A good file (with the model. prefix) imports. */
    write_subset(&s, in, -1, 1, NULL, 0, 0);
    ck_assert_msg(moe_checkpoint_import(in, cfg, root, 4, NULL) == MOE_OK, "%s", moe_errmsg());
    expect_checkpoint(&s, root, 4, 0);
    char cmd[1300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    ck_assert_int_eq(system(cmd), 0);

    write_subset(&s, in, -1, 0, NULL, 0, 0);
    expect_import_refused(in, cfg2, root, "'embedding.weight' has shape [32, 16]", "[32, 32]");
    write_subset(&s, in, 2, 0, NULL, 0, 0);
    char missing[200];
    snprintf(missing, sizeof missing, "no tensor '%s'", s.t[2].name);
    expect_import_refused(in, cfg, root, missing, "needs it");
    write_subset(&s, in, -1, 0, "bogus.weight", 0, 0);
    expect_import_refused(in, cfg, root, "'bogus.weight' [3] is not a parameter", NULL);
    write_subset(&s, in, s.nt + 1, 0, NULL, 1, 0); /* optim.m of parameter 1 left out */
    snprintf(missing, sizeof missing, "no 'optim.m.%s'", s.t[1].name);
    expect_import_refused(in, cfg, root, missing, NULL);
    write_subset(&s, in, -1, 0, "model.embedding.weight", 0, 0);
    expect_import_refused(in, cfg, root, "given twice", "'model.embedding.weight'");
    write_subset(&s, in, -1, 0, NULL, 0, NAN);
    expect_import_refused(in, cfg, root, "holds NaN at element 0", "embedding.weight");
    write_subset(&s, in, -1, 0, NULL, 0, INFINITY);
    expect_import_refused(in, cfg, root, "an infinity", NULL);

    char novocab[1200];
    path_of(novocab, sizeof novocab, "novocab.yaml");
    write_cfg(novocab, 16, 0);
    write_subset(&s, in, -1, 0, NULL, 0, 0);
    expect_import_refused(in, novocab, root, "vocab-size is 0", "has 32 rows");
    state_free(&s);
}
END_TEST

START_TEST(export_refuses_bad_checkpoints)
{
    char cfg[1200], root[1200], out[1200], shard[1300];
    path_of(cfg, sizeof cfg, "cfg.yaml");
    path_of(root, sizeof root, "ckpt");
    path_of(out, sizeof out, "out.safetensors");
    write_cfg(cfg, 16, 32);
    state s;
    state_make(&s, cfg, 3);
    moe_error_clear();
    ck_assert(moe_checkpoint_export(root, out, 0, NULL) == MOE_ERR_INPUT); /* no such root */
    ck_assert_int_eq(mkdir(root, 0755), 0);
    moe_error_clear();
    ck_assert(moe_checkpoint_export(root, out, 0, NULL) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "no checkpoints in"), "%s", moe_errmsg());

    /* Two steps; the newer corrupted: the root falls back, the step itself is refused. */
    save_sharded(&s, root, 1);
    moe_model_init(s.m, 4);
    save_sharded(&s, root, 2);
    snprintf(shard, sizeof shard, "%s/step-0000002/shard-00001.bin", root);
    FILE *f = fopen(shard, "r+b");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fseek(f, 0, SEEK_SET), 0);
    int c = fgetc(f);
    ck_assert_int_eq(fseek(f, 0, SEEK_SET), 0);
    fputc(c ^ 1, f);
    ck_assert_int_eq(fclose(f), 0);
    moe_ckpt_cmd_summary sum;
    ck_assert_msg(moe_checkpoint_export(root, out, 0, &sum) == MOE_OK, "%s", moe_errmsg());
    ck_assert_int_eq(sum.step, 1);
    char step2[1300];
    snprintf(step2, sizeof step2, "%s/step-0000002", root);
    ck_assert_int_eq(unlink(out), 0);
    moe_error_clear();
    ck_assert(moe_checkpoint_export(step2, out, 0, NULL) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "shard-00001.bin"), "%s", moe_errmsg());
    ck_assert_int_eq(access(out, F_OK), -1);
    state_free(&s);
}
END_TEST

START_TEST(cli_exit_codes)
{
    char out[4096], cmd[3000];
    snprintf(cmd, sizeof cmd, "%s checkpoint", tu_bin("moe"));
    ck_assert_int_eq(tu_run(cmd, out, sizeof out), 2);
    snprintf(cmd, sizeof cmd, "%s checkpoint export --safetensors x", tu_bin("moe"));
    ck_assert_int_eq(tu_run(cmd, out, sizeof out), 2);
    ck_assert_msg(strstr(out, "--from is required"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s checkpoint import --safetensors x --config y --to z --step -3", tu_bin("moe"));
    ck_assert_int_eq(tu_run(cmd, out, sizeof out), 2);
    ck_assert_msg(strstr(out, "--step"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s checkpoint import --safetensors %s/none --config y --to z", tu_bin("moe"), dir);
    ck_assert_int_eq(tu_run(cmd, out, sizeof out), 2);
    ck_assert_msg(strstr(out, "No such file"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s checkpoint export --help", tu_bin("moe"));
    ck_assert_int_eq(tu_run(cmd, out, sizeof out), 0);
    ck_assert_msg(strstr(out, "--with-optimizer"), "%s", out);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("safetensors");
    TCase *c = tcase_create("format");
    tcase_add_checked_fixture(c, setup, teardown);
    tcase_add_test(c, round_trip);
    tcase_add_test(c, many_tensors);
    tcase_add_test(c, empty_file_of_tensors);
    tcase_add_test(c, reads_other_writers_json);
    tcase_add_test(c, converts_dtypes);
    tcase_add_test(c, refuses_truncated);
    tcase_add_test(c, refuses_header_length);
    tcase_add_test(c, refuses_bad_layout);
    tcase_add_test(c, refuses_dtypes);
    tcase_add_test(c, refuses_duplicates);
    tcase_add_test(c, refuses_bad_json);
    tcase_add_test(c, refuses_missing_file);
    tcase_add_test(c, writer_refuses_bad_specs);
    suite_add_tcase(s, c);
    TCase *k = tcase_create("checkpoint");
    tcase_add_checked_fixture(k, setup, teardown);
    tcase_add_test(k, export_import_round_trip);
    tcase_add_test(k, import_refuses_mismatch);
    tcase_add_test(k, export_refuses_bad_checkpoints);
    tcase_add_test(k, cli_exit_codes);
    suite_add_tcase(s, k);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
