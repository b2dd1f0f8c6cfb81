/*
** test_checkpoint: save/load round trips, retention, and every way a
** checkpoint on disk can be broken (runtime/checkpoint.h), plus
** `moe inspect checkpoint` (launch/inspect.h).
*/
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "launch/inspect.h"
#include "runtime/base/status.h"
#include "runtime/base/checkpoint.h"
#include "testutil.h"

/* ------------------------------------------------------------------------- */
/* a small "model": odd sizes so padding is exercised, an empty tensor, a scalar */

#define NT 6
static const char *NAMES[NT] = {"embedding.weight", "layers.0.attn.qkv.weight", "layers.0.norm.weight",
                                "odd.weight",       "empty.weight",             "scalar"};
static const int NDIM[NT] = {2, 2, 1, 2, 2, 0};
static const int64_t SHAPES[NT][4] = {{16, 8}, {24, 8}, {8}, {3, 5}, {0, 4}, {0}};

typedef struct {
    moe_ckpt_tensor t[NT];
    uint32_t *data[NT];
} model;

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Random bit patterns (NaNs and denormals included): only a bit-exact copy passes. */
static void model_init(model *m, uint64_t seed)
{
    for (int i = 0; i < NT; i++) {
        size_t numel = 1;
        for (int d = 0; d < NDIM[i]; d++)
            numel *= (size_t)SHAPES[i][d];
        m->data[i] = malloc(numel * 4 + 4);
        ck_assert_ptr_nonnull(m->data[i]);
        for (size_t k = 0; k < numel; k++)
            m->data[i][k] = (uint32_t)mix(seed * 1000003u + (uint64_t)i * 7919u + k);
        m->t[i].name = NAMES[i];
        m->t[i].ndim = NDIM[i];
        memcpy(m->t[i].shape, SHAPES[i], sizeof m->t[i].shape);
        m->t[i].data = m->data[i];
        m->t[i].bytes = numel * 4;
    }
}

static void model_fill(model *m, uint32_t word)
{
    for (int i = 0; i < NT; i++)
        for (size_t k = 0; k < m->t[i].bytes / 4; k++)
            m->data[i][k] = word;
}

static void model_free(model *m)
{
    for (int i = 0; i < NT; i++)
        free(m->data[i]);
}

static int model_equal(const model *a, const model *b)
{
    for (int i = 0; i < NT; i++)
        if (a->t[i].bytes != b->t[i].bytes || memcmp(a->data[i], b->data[i], a->t[i].bytes) != 0)
            return 0;
    return 1;
}

static moe_ckpt_meta meta_for(int64_t step)
{
    moe_ckpt_meta m = {.step = step, .data_next_sequence = (uint64_t)step * 128 + 7};
    for (int i = 0; i < 4; i++)
        m.rng_state[i] = mix((uint64_t)step + (uint64_t)i);
    return m;
}

static void save_step(const char *root, int64_t step, int keep)
{
    model m;
    model_init(&m, (uint64_t)step);
    moe_ckpt_meta meta = meta_for(step);
    moe_status st = moe_ckpt_save(root, &meta, m.t, NT, "num-layers: 1\nhidden-size: 8\n", keep);
    ck_assert_msg(st == MOE_OK, "save step %lld: %s", (long long)step, moe_errmsg());
    model_free(&m);
}

static void step_dir(char *out, size_t cap, const char *root, int64_t step)
{
    snprintf(out, cap, "%s/step-%07lld", root, (long long)step);
}

static void shard_path(char *out, size_t cap, const char *root, int64_t step)
{
    snprintf(out, cap, "%s/step-%07lld/shard-00000.bin", root, (long long)step);
}

/* Where tensor `name` starts in the shard of a step. */
static uint64_t tensor_offset(const char *dir, const char *name)
{
    Moe__CheckpointManifest *m = NULL;
    ck_assert_msg(moe_ckpt_read_manifest(dir, &m) == MOE_OK, "%s", moe_errmsg());
    uint64_t off = UINT64_MAX;
    for (size_t i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i]->name, name) == 0)
            off = m->tensors[i]->byte_offset;
    moe__checkpoint_manifest__free_unpacked(m, NULL);
    ck_assert(off != UINT64_MAX);
    return off;
}

static void flip_byte(const char *path, uint64_t off)
{
    FILE *f = fopen(path, "r+b");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fseek(f, (long)off, SEEK_SET), 0);
    int c = fgetc(f);
    ck_assert_int_ne(c, EOF);
    ck_assert_int_eq(fseek(f, (long)off, SEEK_SET), 0);
    ck_assert_int_ne(fputc(c ^ 0x10, f), EOF);
    ck_assert_int_eq(fclose(f), 0);
}

static long file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? (long)sb.st_size : -1;
}

/* Names in dir (not . or ..), sorted, joined by spaces. */
static void list_dir(const char *dir, char *out, size_t cap)
{
    char names[32][256];
    int n = 0;
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < 32)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            snprintf(names[n++], sizeof names[0], "%s", e->d_name);
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], (int (*)(const void *, const void *))strcmp);
    out[0] = '\0';
    for (int i = 0; i < n; i++)
        snprintf(out + strlen(out), cap - strlen(out), "%s%s", i ? " " : "", names[i]);
}

/* Runs fn with file descriptor fd (1 or 2) going to a file; returns what it wrote. */
static int captured(int fd, char *out, size_t cap, int (*fn)(void *), void *arg)
{
    char path[512];
    snprintf(path, sizeof path, "%s/moe-ckpt-capture-%ld", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
             (long)getpid());
    fflush(stdout);
    fflush(stderr);
    int saved = dup(fd);
    int tmp = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    ck_assert(saved >= 0 && tmp >= 0);
    ck_assert_int_ge(dup2(tmp, fd), 0);
    int rc = fn(arg);
    fflush(stdout);
    fflush(stderr);
    ck_assert_int_ge(dup2(saved, fd), 0);
    close(saved);
    ssize_t n = pread(tmp, out, cap - 1, 0);
    out[n > 0 ? n : 0] = '\0';
    close(tmp);
    unlink(path);
    return rc;
}

/* Removes a test's directory once the test has passed (a failure keeps it to look at). */
static void rm_root(const char *root)
{
    char cmd[1024], out[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    ck_assert_int_eq(tu_run(cmd, out, sizeof out), 0);
}

/* ------------------------------------------------------------------------- */

START_TEST(test_round_trip)
{
    moe_error_clear();
    char root[512], dir[600];
    tu_tmpdir(root, sizeof root, "ckpt");
    model src, dst;
    model_init(&src, 42);
    model_init(&dst, 0);
    model_fill(&dst, 0);
    moe_ckpt_meta meta = meta_for(100), got;
    memset(&got, 0, sizeof got);
    ck_assert_msg(moe_ckpt_save(root, &meta, src.t, NT, "seed: 1\n", 0) == MOE_OK, "%s", moe_errmsg());

    char names[1024];
    list_dir(root, names, sizeof names);
    ck_assert_str_eq(names, "step-0000100");
    step_dir(dir, sizeof dir, root, 100);
    list_dir(dir, names, sizeof names);
    ck_assert_str_eq(names, "manifest.pb shard-00000.bin");

    ck_assert_msg(moe_ckpt_load_latest(root, &got, dst.t, NT, names, sizeof names) == MOE_OK, "%s", moe_errmsg());
    ck_assert_str_eq(names, dir);
    ck_assert(model_equal(&src, &dst));
    ck_assert_mem_eq(&got, &meta, sizeof meta);

    /* The manifest says what it should, and its trailer was parsed as field 15. */
    Moe__CheckpointManifest *m = NULL;
    ck_assert(moe_ckpt_read_manifest(dir, &m) == MOE_OK);
    ck_assert_uint_eq(m->format_version, MOE_CKPT_FORMAT_VERSION);
    ck_assert_int_eq(m->step, 100);
    ck_assert_uint_eq(m->world_size, 1);
    ck_assert_uint_eq(m->n_tensors, NT);
    ck_assert_uint_eq(m->n_shards, 1);
    ck_assert_str_eq(m->config_yaml, "seed: 1\n");
    ck_assert(m->manifest_xxh64 != 0);
    for (size_t i = 0; i < m->n_tensors; i++) {
        ck_assert_uint_eq(m->tensors[i]->byte_offset % MOE_CKPT_ALIGN, 0);
        ck_assert_str_eq(m->tensors[i]->dtype, "f32");
    }
    moe__checkpoint_manifest__free_unpacked(m, NULL);

    /* Saves are reproducible: the same step saved again is byte-identical. */
    char shard[700], before[700];
    shard_path(shard, sizeof shard, root, 100);
    long size = file_size(shard);
    snprintf(before, sizeof before, "%s/copy.bin", root);
    char cmd[4096], out[256];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s' && cp '%s/manifest.pb' '%s/copy.pb'", shard, before, dir, root);
    ck_assert_int_eq(tu_run(cmd, out, sizeof out), 0);
    ck_assert(moe_ckpt_save(root, &meta, src.t, NT, "seed: 1\n", 0) == MOE_OK);
    snprintf(cmd, sizeof cmd, "cmp '%s' '%s' && cmp '%s/manifest.pb' '%s/copy.pb'", shard, before, dir, root);
    ck_assert_msg(tu_run(cmd, out, sizeof out) == 0, "%s", out);
    ck_assert_int_eq(file_size(shard), size);
    model_free(&src);
    model_free(&dst);
    rm_root(root);
}
END_TEST

START_TEST(test_load_path_forms)
{
    moe_error_clear();
    char root[512], dir[600], slash[700], loaded[1024];
    tu_tmpdir(root, sizeof root, "ckpt");
    save_step(root, 100, 0);
    save_step(root, 200, 0);
    model want, got;
    model_init(&want, 100);
    model_init(&got, 0);
    moe_ckpt_meta meta;

    ck_assert(moe_ckpt_load_path(root, &meta, got.t, NT, loaded, sizeof loaded) == MOE_OK);
    step_dir(dir, sizeof dir, root, 200);
    ck_assert_str_eq(loaded, dir);
    ck_assert_int_eq(meta.step, 200);

    step_dir(dir, sizeof dir, root, 100);
    snprintf(slash, sizeof slash, "%s/", dir);
    ck_assert_msg(moe_ckpt_load_path(slash, &meta, got.t, NT, loaded, sizeof loaded) == MOE_OK, "%s", moe_errmsg());
    ck_assert_str_eq(loaded, slash);
    ck_assert_int_eq(meta.step, 100);
    ck_assert(model_equal(&want, &got));

    ck_assert(moe_ckpt_load_path("/nonexistent/moe-ckpt", &meta, got.t, NT, loaded, sizeof loaded) == MOE_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(moe_errmsg(), "/nonexistent/moe-ckpt"));
    model_free(&want);
    model_free(&got);
    rm_root(root);
}
END_TEST

START_TEST(test_keep_two)
{
    moe_error_clear();
    char root[512], names[1024];
    tu_tmpdir(root, sizeof root, "ckpt");
    for (int s = 1; s <= 5; s++)
        save_step(root, s * 100, 2);
    list_dir(root, names, sizeof names);
    ck_assert_str_eq(names, "step-0000400 step-0000500");
    save_step(root, 600, 0); /* keep 0 keeps all */
    list_dir(root, names, sizeof names);
    ck_assert_str_eq(names, "step-0000400 step-0000500 step-0000600");
    save_step(root, 700, 1);
    list_dir(root, names, sizeof names);
    ck_assert_str_eq(names, "step-0000700");
    rm_root(root);
}
END_TEST

START_TEST(test_keep_skips_broken)
{
    /* A broken step does not count as one of the `keep`. */
    moe_error_clear();
    char root[512], names[1024], path[700];
    tu_tmpdir(root, sizeof root, "ckpt");
    save_step(root, 100, 0);
    save_step(root, 200, 0);
    snprintf(path, sizeof path, "%s/step-0000200/manifest.pb", root);
    ck_assert_int_eq(unlink(path), 0);
    save_step(root, 300, 2);
    list_dir(root, names, sizeof names);
    ck_assert_str_eq(names, "step-0000100 step-0000200 step-0000300");
    save_step(root, 400, 2);
    list_dir(root, names, sizeof names);
    ck_assert_str_eq(names, "step-0000300 step-0000400");
    rm_root(root);
}
END_TEST

START_TEST(test_resave_same_step)
{
    moe_error_clear();
    char root[512], names[1024];
    tu_tmpdir(root, sizeof root, "ckpt");
    model a, b, got;
    model_init(&a, 1);
    model_init(&b, 2);
    model_init(&got, 0);
    moe_ckpt_meta meta = meta_for(100), lm;
    ck_assert(moe_ckpt_save(root, &meta, a.t, NT, NULL, 0) == MOE_OK);
    meta.data_next_sequence = 999;
    ck_assert(moe_ckpt_save(root, &meta, b.t, NT, NULL, 0) == MOE_OK);
    list_dir(root, names, sizeof names);
    ck_assert_str_eq(names, "step-0000100");
    ck_assert(moe_ckpt_load_latest(root, &lm, got.t, NT, NULL, 0) == MOE_OK);
    ck_assert(model_equal(&b, &got));
    ck_assert_uint_eq(lm.data_next_sequence, 999);
    model_free(&a);
    model_free(&b);
    model_free(&got);
    rm_root(root);
}
END_TEST

static int load_latest_quiet(void *arg)
{
    void **a = arg;
    return (int)moe_ckpt_load_latest(a[0], a[1], a[2], NT, a[3], 1024);
}

START_TEST(test_corrupt_byte_fallback)
{
    moe_error_clear();
    char root[512], dir[600], shard[700], loaded[1024];
    tu_tmpdir(root, sizeof root, "ckpt");
    save_step(root, 100, 0);
    save_step(root, 200, 0);
    step_dir(dir, sizeof dir, root, 200);
    shard_path(shard, sizeof shard, root, 200);
    flip_byte(shard, tensor_offset(dir, "layers.0.attn.qkv.weight") + 17);

    model got, want;
    model_init(&got, 0);
    model_init(&want, 100);
    moe_ckpt_meta meta;
    ck_assert(moe_ckpt_load_dir(dir, &meta, got.t, NT) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "checksum mismatch in tensor 'layers.0.attn.qkv.weight'"), "%s", moe_errmsg());
    ck_assert_ptr_nonnull(strstr(moe_errmsg(), shard));
    moe_error_clear();

    char err[8192];
    void *args[4] = {root, &meta, got.t, loaded};
    int st = captured(2, err, sizeof err, load_latest_quiet, args);
    ck_assert_msg(st == MOE_OK, "%s", moe_errmsg());
    ck_assert_int_eq(meta.step, 100);
    step_dir(dir, sizeof dir, root, 100);
    ck_assert_str_eq(loaded, dir);
    ck_assert(model_equal(&want, &got));
    /* The fallback was announced, naming the bad file, the tensor and what happens next. */
    ck_assert_msg(strstr(err, "warn") && strstr(err, "step-0000200") && strstr(err, "layers.0.attn.qkv.weight") &&
                  strstr(err, "trying the previous one"), "stderr was: %s", err);
    model_free(&got);
    model_free(&want);
    rm_root(root);
}
END_TEST

START_TEST(test_all_corrupt_and_none)
{
    moe_error_clear();
    char root[512], shard[700];
    tu_tmpdir(root, sizeof root, "ckpt");
    model got;
    model_init(&got, 0);
    moe_ckpt_meta meta;
    ck_assert(moe_ckpt_load_latest(root, &meta, got.t, NT, NULL, 0) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "no checkpoints in") && strstr(moe_errmsg(), root), "%s", moe_errmsg());
    moe_error_clear();

    save_step(root, 100, 0);
    shard_path(shard, sizeof shard, root, 100);
    ck_assert_int_eq(truncate(shard, 10), 0);
    char err[8192];
    void *args[4] = {root, &meta, got.t, NULL};
    int st = captured(2, err, sizeof err, load_latest_quiet, args);
    ck_assert_int_eq(st, MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "no valid checkpoint in") && strstr(moe_errmsg(), root) &&
                  strstr(moe_errmsg(), "truncated"), "%s", moe_errmsg());
    ck_assert_ptr_nonnull(strstr(err, "no older checkpoint left"));
    model_free(&got);
    rm_root(root);
}
END_TEST

START_TEST(test_truncated_shard)
{
    moe_error_clear();
    char root[512], dir[600], shard[700];
    tu_tmpdir(root, sizeof root, "ckpt");
    save_step(root, 100, 0);
    step_dir(dir, sizeof dir, root, 100);
    shard_path(shard, sizeof shard, root, 100);
    ck_assert_int_eq(truncate(shard, file_size(shard) - 10), 0);
    model got;
    model_init(&got, 0);
    moe_ckpt_meta meta;
    ck_assert(moe_ckpt_load_dir(dir, &meta, got.t, NT) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), shard) && strstr(moe_errmsg(), "truncated"), "%s", moe_errmsg());
    moe_error_clear();

    /* Grown instead of shrunk: also refused. */
    save_step(root, 200, 0);
    shard_path(shard, sizeof shard, root, 200);
    FILE *f = fopen(shard, "ab");
    ck_assert_ptr_nonnull(f);
    fputs("junk", f);
    fclose(f);
    step_dir(dir, sizeof dir, root, 200);
    ck_assert(moe_ckpt_load_dir(dir, &meta, got.t, NT) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "the manifest says"), "%s", moe_errmsg());
    moe_error_clear();

    /* Missing altogether. */
    ck_assert_int_eq(unlink(shard), 0);
    ck_assert(moe_ckpt_load_dir(dir, &meta, got.t, NT) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "shard file is missing"), "%s", moe_errmsg());
    model_free(&got);
    rm_root(root);
}
END_TEST

START_TEST(test_bad_manifests)
{
    moe_error_clear();
    char root[512], dir[600], path[700];
    tu_tmpdir(root, sizeof root, "ckpt");
    save_step(root, 100, 0);
    step_dir(dir, sizeof dir, root, 100);
    snprintf(path, sizeof path, "%s/manifest.pb", dir);
    model got;
    model_init(&got, 0);
    moe_ckpt_meta meta;

    /* A flipped byte anywhere in the manifest is caught by its trailer. */
    flip_byte(path, 5);
    ck_assert(moe_ckpt_load_dir(dir, &meta, got.t, NT) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "manifest.pb") && strstr(moe_errmsg(), "checksum mismatch"), "%s",
                  moe_errmsg());
    moe_error_clear();

    tu_write(path, "this is not a manifest at all");
    ck_assert(moe_ckpt_load_dir(dir, &meta, got.t, NT) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), path), "%s", moe_errmsg());
    moe_error_clear();

    /* Garbage with a valid trailer: the protobuf parse itself refuses it. */
    unsigned char junk[9 + 9] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x79};
    uint64_t h = XXH64(junk, 9, 0);
    for (int i = 0; i < 8; i++)
        junk[10 + i] = (unsigned char)(h >> (8 * i));
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(junk, 1, sizeof junk, f), sizeof junk);
    fclose(f);
    ck_assert(moe_ckpt_load_dir(dir, &meta, got.t, NT) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "protobuf parse failed"), "%s", moe_errmsg());
    moe_error_clear();

    tu_write(path, "");
    ck_assert(moe_ckpt_load_dir(dir, &meta, got.t, NT) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "too short"), "%s", moe_errmsg());
    moe_error_clear();

    ck_assert_int_eq(unlink(path), 0);
    ck_assert(moe_ckpt_load_dir(dir, &meta, got.t, NT) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), path) && strstr(moe_errmsg(), "missing"), "%s", moe_errmsg());
    moe_error_clear();

    /* A root given where a step dir is expected: the message says so. */
    ck_assert(moe_ckpt_load_dir(root, &meta, got.t, NT) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "checkpoint root"), "%s", moe_errmsg());
    model_free(&got);
    rm_root(root);
}
END_TEST

/* Rewrites a step's manifest through edit(), with a valid trailer. */
static void edit_manifest(const char *dir, void (*edit)(Moe__CheckpointManifest *))
{
    Moe__CheckpointManifest *m = NULL;
    ck_assert_msg(moe_ckpt_read_manifest(dir, &m) == MOE_OK, "%s", moe_errmsg());
    edit(m);
    ck_assert(moe_ckpt_write_manifest(dir, m) == MOE_OK);
    moe__checkpoint_manifest__free_unpacked(m, NULL);
}

static void set_version_99(Moe__CheckpointManifest *m) { m->format_version = 99; }
static void push_outside(Moe__CheckpointManifest *m) { m->tensors[1]->byte_offset = m->shards[0]->size; }
static void overlap(Moe__CheckpointManifest *m) { m->tensors[1]->byte_offset = m->tensors[0]->byte_offset + 4; }
static void split(Moe__CheckpointManifest *m)
{
    m->world_size = 2;
    m->tensors[0]->local_shape[0] = 8;
    m->tensors[0]->byte_size /= 2;
}

START_TEST(test_manifest_contents)
{
    moe_error_clear();
    char root[512], dir[600];
    tu_tmpdir(root, sizeof root, "ckpt");
    model got;
    model_init(&got, 0);
    moe_ckpt_meta meta;
    struct {
        void (*edit)(Moe__CheckpointManifest *);
        const char *says;
    } cases[] = {
        {set_version_99, "format_version 99 is not supported"},
        {push_outside, "lie outside shard-00000.bin"},
        {overlap, "overlap in shard-00000.bin"},
        {split, "rows [8, 16) of 16 are in no shard"},
    };
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++) {
        save_step(root, 100 + i, 0);
        step_dir(dir, sizeof dir, root, 100 + i);
        edit_manifest(dir, cases[i].edit);
        ck_assert(moe_ckpt_load_dir(dir, &meta, got.t, NT) == MOE_ERR_INPUT);
        ck_assert_msg(strstr(moe_errmsg(), cases[i].says), "case %d: %s", i, moe_errmsg());
        moe_error_clear();
    }
    model_free(&got);
    rm_root(root);
}
END_TEST

START_TEST(test_model_mismatch)
{
    moe_error_clear();
    char root[512], dir[600];
    tu_tmpdir(root, sizeof root, "ckpt");
    save_step(root, 100, 0);
    step_dir(dir, sizeof dir, root, 100);
    model got;
    model_init(&got, 0);
    moe_ckpt_meta meta;

    /* shape: the checkpoint has [24, 8] */
    got.t[1].shape[0] = 32;
    got.t[1].bytes = 32 * 8 * 4;
    free(got.data[1]);
    got.data[1] = malloc(got.t[1].bytes);
    got.t[1].data = got.data[1];
    ck_assert(moe_ckpt_load_dir(dir, &meta, got.t, NT) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "layers.0.attn.qkv.weight: checkpoint has [24, 8], model has [32, 8]"), "%s",
                  moe_errmsg());
    moe_error_clear();
    /* ... and load_latest does not fall back on it: older steps have the same shapes. */
    ck_assert(moe_ckpt_load_latest(root, &meta, got.t, NT, NULL, 0) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "checkpoint has [24, 8], model has [32, 8]"), "%s", moe_errmsg());
    moe_error_clear();
    model_free(&got);

    /* the model lacks a tensor the checkpoint has */
    model_init(&got, 0);
    ck_assert(moe_ckpt_load_dir(dir, &meta, got.t, NT - 1) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "scalar: checkpoint has [], model has no such tensor"), "%s", moe_errmsg());
    moe_error_clear();

    /* the model has a tensor the checkpoint lacks */
    got.t[2].name = "layers.0.norm.bias";
    ck_assert(moe_ckpt_load_dir(dir, &meta, got.t, NT) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "layers.0.norm.bias: checkpoint has no such tensor, model has [8]"), "%s",
                  moe_errmsg());
    model_free(&got);
    rm_root(root);
}
END_TEST

START_TEST(test_failure_leaves_buffers)
{
    moe_error_clear();
    char root[512], dir[600], shard[700];
    tu_tmpdir(root, sizeof root, "ckpt");
    save_step(root, 100, 0);
    step_dir(dir, sizeof dir, root, 100);
    shard_path(shard, sizeof shard, root, 100);
    /* Corrupt the last non-empty tensor: a loader that copied as it checked
    ** would already have overwritten the others. */
    flip_byte(shard, tensor_offset(dir, "scalar") + 1);
    model got, sentinel;
    model_init(&got, 0);
    model_init(&sentinel, 0);
    model_fill(&got, 0xdeadbeefu);
    model_fill(&sentinel, 0xdeadbeefu);
    moe_ckpt_meta meta, meta0;
    memset(&meta, 0x5a, sizeof meta);
    memcpy(&meta0, &meta, sizeof meta);
    ck_assert(moe_ckpt_load_dir(dir, &meta, got.t, NT) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "'scalar'"), "%s", moe_errmsg());
    ck_assert(model_equal(&got, &sentinel));
    ck_assert_mem_eq(&meta, &meta0, sizeof meta);
    moe_error_clear();
    /* A shape mismatch discovered on the last tensor: also untouched. */
    save_step(root, 200, 0);
    step_dir(dir, sizeof dir, root, 200);
    got.t[3].shape[0] = 5;
    got.t[3].shape[1] = 3;
    ck_assert(moe_ckpt_load_dir(dir, &meta, got.t, NT) == MOE_ERR_INPUT);
    ck_assert(model_equal(&got, &sentinel));
    ck_assert_mem_eq(&meta, &meta0, sizeof meta);
    model_free(&got);
    model_free(&sentinel);
    rm_root(root);
}
END_TEST

START_TEST(test_tmp_dirs)
{
    moe_error_clear();
    char root[512], path[700], names[1024], loaded[1024], dir[600];
    tu_tmpdir(root, sizeof root, "ckpt");
    save_step(root, 100, 0);
    /* An interrupted save of step 500 by a process that no longer exists. */
    snprintf(path, sizeof path, "%s/.tmp-step-0000500-2147483646", root);
    ck_assert_int_eq(mkdir(path, 0755), 0);
    snprintf(path, sizeof path, "%s/.tmp-step-0000500-2147483646/shard-00000.bin", root);
    tu_write(path, "half");
    model got;
    model_init(&got, 0);
    moe_ckpt_meta meta;
    ck_assert(moe_ckpt_load_latest(root, &meta, got.t, NT, loaded, sizeof loaded) == MOE_OK);
    step_dir(dir, sizeof dir, root, 100);
    ck_assert_str_eq(loaded, dir);
    ck_assert(moe_ckpt_load_path(root, &meta, got.t, NT, loaded, sizeof loaded) == MOE_OK);
    ck_assert_str_eq(loaded, dir);
    list_dir(root, names, sizeof names);
    ck_assert_str_eq(names, ".tmp-step-0000500-2147483646 step-0000100");
    /* A .old- dir whose step is gone (crash mid-swap) is put back. */
    snprintf(path, sizeof path, "%s/.old-step-0000100-2147483646", root);
    ck_assert_int_eq(rename(dir, path), 0);
    save_step(root, 200, 0);
    list_dir(root, names, sizeof names);
    ck_assert_str_eq(names, "step-0000100 step-0000200");
    model_free(&got);
    rm_root(root);
}
END_TEST

START_TEST(test_large_tensors)
{
    /* Tensors larger than the 4 MiB read chunk, straddling chunk boundaries. */
    moe_error_clear();
    char root[512], dir[600], shard[700];
    tu_tmpdir(root, sizeof root, "ckpt");
    static const char *names[3] = {"big.a", "big.b", "big.c"};
    static const int64_t shapes[3][2] = {{1536, 1024}, {3, 7}, {1300, 1001}};
    moe_ckpt_tensor src[3], dst[3];
    for (int i = 0; i < 3; i++) {
        size_t numel = (size_t)(shapes[i][0] * shapes[i][1]);
        uint32_t *a = malloc(numel * 4), *b = calloc(numel, 4);
        ck_assert(a && b);
        for (size_t k = 0; k < numel; k++)
            a[k] = (uint32_t)mix(k * 3 + (size_t)i);
        src[i] = (moe_ckpt_tensor){.name = names[i], .ndim = 2, .shape = {shapes[i][0], shapes[i][1]}, .data = a,
                                   .bytes = numel * 4};
        dst[i] = src[i];
        dst[i].data = b;
    }
    moe_ckpt_meta meta = meta_for(7), got;
    ck_assert_msg(moe_ckpt_save(root, &meta, src, 3, NULL, 1) == MOE_OK, "%s", moe_errmsg());
    step_dir(dir, sizeof dir, root, 7);
    ck_assert_msg(moe_ckpt_load_dir(dir, &got, dst, 3) == MOE_OK, "%s", moe_errmsg());
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(memcmp(src[i].data, dst[i].data, src[i].bytes), 0);
    ck_assert_mem_eq(&got, &meta, sizeof meta);

    shard_path(shard, sizeof shard, root, 7);
    flip_byte(shard, tensor_offset(dir, "big.c") + 3u * 1024 * 1024 + 5);
    ck_assert(moe_ckpt_load_dir(dir, &got, dst, 3) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "checksum mismatch in tensor 'big.c'"), "%s", moe_errmsg());
    moe_error_clear();
    flip_byte(shard, tensor_offset(dir, "big.c") + 3u * 1024 * 1024 + 5);
    flip_byte(shard, 4u * 1024 * 1024 + 1); /* in big.a, just past the first chunk */
    ck_assert(moe_ckpt_load_dir(dir, &got, dst, 3) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "checksum mismatch in tensor 'big.a'"), "%s", moe_errmsg());
    moe_error_clear();
    for (int i = 0; i < 3; i++) {
        free(src[i].data);
        free(dst[i].data);
    }
    rm_root(root);
}
END_TEST

static int inspect_args(void *arg)
{
    char **a = arg;
    int n = 0;
    while (a[n])
        n++;
    return moe_inspect_main(n, a);
}

START_TEST(test_inspect)
{
    moe_error_clear();
    char root[512], dir[600], shard[700], out[65536], err[8192];
    tu_tmpdir(root, sizeof root, "ckpt");
    save_step(root, 100, 0);
    step_dir(dir, sizeof dir, root, 100);

    char *good[] = {"checkpoint", dir, NULL};
    ck_assert_int_eq(captured(1, out, sizeof out, inspect_args, good), 0);
    ck_assert_msg(strstr(out, "step        100") && strstr(out, "layers.0.attn.qkv.weight") &&
                  strstr(out, "[24, 8]") && strstr(out, "result      valid"), "%s", out);

    char *json[] = {"checkpoint", "--json", dir, NULL};
    ck_assert_int_eq(captured(1, out, sizeof out, inspect_args, json), 0);
    ck_assert_msg(out[0] == '{' && strchr(out, '\n') == out + strlen(out) - 1, "%s", out);
    ck_assert_msg(strstr(out, "\"valid\":true") && strstr(out, "\"step\":100") &&
                  strstr(out, "\"global_shape\":[24,8]") && strstr(out, "\"data_next_sequence\":12807"), "%s", out);

    shard_path(shard, sizeof shard, root, 100);
    flip_byte(shard, tensor_offset(dir, "embedding.weight") + 3);
    ck_assert_int_eq(captured(2, err, sizeof err, inspect_args, good), 2);
    ck_assert_msg(strstr(err, "checksum mismatch in tensor 'embedding.weight'"), "%s", err);
    ck_assert_int_eq(captured(1, out, sizeof out, inspect_args, json), 2);
    ck_assert_msg(strstr(out, "\"valid\":false") && strstr(out, "\"name\":\"embedding.weight\"") &&
                  strstr(out, "\"ok\":false") && strstr(out, "\"name\":\"odd.weight\""), "%s", out);

    char missing[700];
    snprintf(missing, sizeof missing, "%s/step-0000999", root);
    char *none[] = {"checkpoint", missing, "--json", NULL};
    ck_assert_int_eq(captured(1, out, sizeof out, inspect_args, none), 2);
    ck_assert_msg(strstr(out, "\"valid\":false") && strstr(out, "step-0000999"), "%s", out);

    char *kind[] = {"frobnicate", "x", NULL};
    ck_assert_int_eq(captured(2, err, sizeof err, inspect_args, kind), 2);
    ck_assert_msg(strstr(err, "moe inspect: unknown kind 'frobnicate' (expected: checkpoint, trace, plan)"), "%s",
                  err);
    char *nodir[] = {"checkpoint", NULL};
    ck_assert_int_eq(captured(2, err, sizeof err, inspect_args, nodir), 2);
    char *noargs[] = {NULL};
    ck_assert_int_eq(captured(2, err, sizeof err, inspect_args, noargs), 2);
    rm_root(root);
}
END_TEST

START_TEST(test_save_refuses_bad_tables)
{
    moe_error_clear();
    char root[512];
    tu_tmpdir(root, sizeof root, "ckpt");
    model m;
    model_init(&m, 1);
    moe_ckpt_meta meta = meta_for(1);
    m.t[1].name = m.t[0].name;
    ck_assert(moe_ckpt_save(root, &meta, m.t, NT, NULL, 0) == MOE_ERR_INTERNAL);
    ck_assert_msg(strstr(moe_errmsg(), "appears twice"), "%s", moe_errmsg());
    moe_error_clear();
    m.t[1].name = NAMES[1];
    m.t[2].bytes += 4;
    ck_assert(moe_ckpt_save(root, &meta, m.t, NT, NULL, 0) == MOE_ERR_INTERNAL);
    moe_error_clear();
    char names[1024];
    list_dir(root, names, sizeof names);
    ck_assert_str_eq(names, "");
    model_free(&m);
    rm_root(root);
}
END_TEST

/* ------------------------------------------------------------------------- */
/* sharded: two writers, each its own shard, one manifest                     */

/* x (6, 5) is cut 2 + 4 rows between the shards; d (4, 3) and s (scalar) are whole. */
typedef struct {
    float x[6 * 5], d[4 * 3], s;
} sharded;

static void sharded_init(sharded *v, uint64_t seed)
{
    uint32_t w;
    for (int i = 0; i < 30; i++) {
        w = (uint32_t)mix(seed + (uint64_t)i);
        memcpy(&v->x[i], &w, 4);
    }
    for (int i = 0; i < 12; i++) {
        w = (uint32_t)mix(seed + 100 + (uint64_t)i);
        memcpy(&v->d[i], &w, 4);
    }
    w = (uint32_t)mix(seed + 999);
    memcpy(&v->s, &w, 4);
}

/* Parts of the three tensors: x rows [x0, x0 + xr), d and s whole. */
static void sharded_parts(sharded *v, moe_ckpt_part p[3], int64_t x0, int64_t xr)
{
    p[0] = (moe_ckpt_part){.name = "x", .ndim = 2, .shape = {6, 5}, .row_start = x0, .rows = xr,
                           .data = v->x + x0 * 5, .bytes = (size_t)xr * 5 * 4};
    p[1] = (moe_ckpt_part){.name = "d", .ndim = 2, .shape = {4, 3}, .row_start = 0, .rows = 4, .data = v->d,
                           .bytes = sizeof v->d};
    p[2] = (moe_ckpt_part){.name = "s", .ndim = 0, .row_start = 0, .rows = 1, .data = &v->s, .bytes = 4};
}

/* Writer 0: x rows [0, 2) and d; writer 1: x rows [2, 6) and s. Returns 0 if
** the commit failed (its status in *st). use1: whether writer 1's index is handed in. */
static int save_sharded(const char *root, int64_t step, sharded *v, int use1, moe_status *st)
{
    moe_ckpt_part p[3], q[3];
    sharded_parts(v, p, 0, 2);
    sharded_parts(v, q, 2, 4);
    moe_ckpt_part w0[2] = {p[0], p[1]}, w1[2] = {q[0], q[2]};
    char tmp[1024];
    ck_assert_msg(moe_ckpt_prepare(root, step, tmp, sizeof tmp) == MOE_OK, "%s", moe_errmsg());
    uint8_t *ix[2] = {NULL, NULL};
    size_t len[2] = {0, 0};
    ck_assert_msg(moe_ckpt_write_shard(tmp, 0, w0, 2, &ix[0], &len[0]) == MOE_OK, "%s", moe_errmsg());
    ck_assert_msg(moe_ckpt_write_shard(tmp, 1, w1, 2, &ix[1], &len[1]) == MOE_OK, "%s", moe_errmsg());
    ck_assert(len[0] > 0 && len[1] > 0);
    const uint8_t *cix[2] = {ix[0], ix[1]};
    moe_ckpt_meta meta = meta_for(step);
    *st = moe_ckpt_commit(root, tmp, &meta, "x: 1\n", "test 2", 2, cix, len, use1 ? 2 : 1, 0);
    free(ix[0]);
    free(ix[1]);
    return *st == MOE_OK;
}

START_TEST(test_sharded_round_trip)
{
    moe_error_clear();
    char root[512], dir[600], path[700];
    tu_tmpdir(root, sizeof root, "ckpt");
    sharded v;
    sharded_init(&v, 5);
    moe_status st;
    ck_assert_msg(save_sharded(root, 7, &v, 1, &st), "%s", moe_errmsg());
    step_dir(dir, sizeof dir, root, 7);
    snprintf(path, sizeof path, "%s/shard-00001.bin", dir);
    ck_assert_int_gt(file_size(path), 0);

    Moe__CheckpointManifest *m = NULL;
    ck_assert_msg(moe_ckpt_read_manifest(dir, &m) == MOE_OK, "%s", moe_errmsg());
    ck_assert_uint_eq(m->world_size, 2);
    ck_assert_uint_eq(m->n_shards, 2);
    ck_assert_uint_eq(m->n_tensors, 4);
    ck_assert_str_eq(m->layout, "test 2");
    int seen = 0;
    for (size_t i = 0; i < m->n_tensors; i++) {
        const Moe__TensorEntry *e = m->tensors[i];
        if (strcmp(e->name, "x") != 0)
            continue;
        ck_assert_int_eq(e->global_shape[0], 6);
        ck_assert_int_eq(e->local_offset[0], e->shard == 0 ? 0 : 2);
        ck_assert_int_eq(e->local_shape[0], e->shard == 0 ? 2 : 4);
        ck_assert_int_eq(e->local_shape[1], 5);
        seen |= 1 << e->shard;
    }
    ck_assert_int_eq(seen, 3);
    ck_assert_msg(moe_ckpt_verify(dir, m, NULL, NULL) == MOE_OK, "%s", moe_errmsg());

    /* Rows 1..4 straddle the cut between shard 0 and shard 1. */
    float got[6 * 5];
    ck_assert_msg(moe_ckpt_read_rows(dir, m, "x", 1, 4, got, 4 * 5 * 4) == MOE_OK, "%s", moe_errmsg());
    ck_assert(memcmp(got, v.x + 5, 4 * 5 * 4) == 0);
    ck_assert_msg(moe_ckpt_read_rows(dir, m, "x", 0, 6, got, sizeof got) == MOE_OK, "%s", moe_errmsg());
    ck_assert(memcmp(got, v.x, sizeof got) == 0);
    ck_assert_msg(moe_ckpt_read_rows(dir, m, "x", 3, 1, got, 5 * 4) == MOE_OK, "%s", moe_errmsg());
    ck_assert(memcmp(got, v.x + 15, 5 * 4) == 0);
    ck_assert(moe_ckpt_read_rows(dir, m, "x", 3, 4, got, 4 * 5 * 4) == MOE_ERR_INTERNAL);
    moe_error_clear();
    ck_assert(moe_ckpt_read_rows(dir, m, "nope", 0, 1, got, 4) == MOE_ERR_INPUT);
    moe_error_clear();
    moe__checkpoint_manifest__free_unpacked(m, NULL);

    /* One process loads whole tensors... */
    sharded w;
    memset(&w, 0, sizeof w);
    moe_ckpt_tensor t[3] = {{.name = "x", .ndim = 2, .shape = {6, 5}, .data = w.x, .bytes = sizeof w.x},
                            {.name = "d", .ndim = 2, .shape = {4, 3}, .data = w.d, .bytes = sizeof w.d},
                            {.name = "s", .ndim = 0, .data = &w.s, .bytes = 4}};
    moe_ckpt_meta meta, want = meta_for(7);
    ck_assert_msg(moe_ckpt_load_dir(dir, &meta, t, 3) == MOE_OK, "%s", moe_errmsg());
    ck_assert(memcmp(&w, &v, sizeof w) == 0);
    ck_assert(memcmp(&meta, &want, sizeof meta) == 0);

    /* ... and another layout its own rows: x [1, 4) from both shards. */
    memset(&w, 0, sizeof w);
    moe_ckpt_part p[3];
    sharded_parts(&w, p, 1, 3);
    char loaded[700];
    ck_assert_msg(moe_ckpt_load_parts(root, &meta, p, 3, NULL, loaded, sizeof loaded) == MOE_OK, "%s",
                  moe_errmsg());
    ck_assert_str_eq(loaded, dir);
    ck_assert(memcmp(w.x + 5, v.x + 5, 3 * 5 * 4) == 0);
    ck_assert(w.x[0] == 0.0f && w.x[20] == 0.0f);
    ck_assert(memcmp(w.d, v.d, sizeof w.d) == 0 && memcmp(&w.s, &v.s, 4) == 0);

    /* A checkpoint missing a tensor is a model mismatch, named. */
    p[2].name = "s2";
    ck_assert(moe_ckpt_load_parts(dir, &meta, p, 3, NULL, NULL, 0) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "s2: checkpoint has no such tensor"), "%s", moe_errmsg());
    moe_error_clear();

    /* inspect shows both shards and the slices */
    char out[65536];
    char *args[] = {"checkpoint", dir, NULL};
    ck_assert_int_eq(captured(1, out, sizeof out, inspect_args, args), 0);
    ck_assert_msg(strstr(out, "world size  2 (test 2)") && strstr(out, "shard-00001.bin") &&
                  strstr(out, "tensors     3 in 4 slices") && strstr(out, "[6, 5] slice [4, 5] at [2, 0]") &&
                  strstr(out, "result      valid"), "%s", out);
    rm_root(root);
}
END_TEST

START_TEST(test_sharded_corrupt_second)
{
    moe_error_clear();
    char root[512], dir[600], path[700], out[65536], err[8192];
    tu_tmpdir(root, sizeof root, "ckpt");
    sharded v;
    sharded_init(&v, 9);
    moe_status st;
    ck_assert_msg(save_sharded(root, 6, &v, 1, &st), "%s", moe_errmsg());
    ck_assert_msg(save_sharded(root, 8, &v, 1, &st), "%s", moe_errmsg());
    step_dir(dir, sizeof dir, root, 8);
    snprintf(path, sizeof path, "%s/shard-00001.bin", dir);
    flip_byte(path, tensor_offset(dir, "s")); /* shard 1 holds s; x's first entry is in shard 0 */

    sharded w;
    memset(&w, 0, sizeof w);
    moe_ckpt_part p[3];
    sharded_parts(&w, p, 0, 6);
    moe_ckpt_meta meta;
    ck_assert(moe_ckpt_load_parts(dir, &meta, p, 3, NULL, NULL, 0) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "shard-00001.bin") && strstr(moe_errmsg(), "checksum mismatch in tensor 's'"),
                  "%s", moe_errmsg());
    moe_error_clear();
    sharded zero;
    memset(&zero, 0, sizeof zero);
    ck_assert(memcmp(&w, &zero, sizeof w) == 0); /* nothing written on failure */

    /* read_rows checks each slice it reads */
    Moe__CheckpointManifest *m = NULL;
    ck_assert_msg(moe_ckpt_read_manifest(dir, &m) == MOE_OK, "%s", moe_errmsg());
    float s;
    ck_assert(moe_ckpt_read_rows(dir, m, "s", 0, 1, &s, 4) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "shard-00001.bin"), "%s", moe_errmsg());
    moe_error_clear();
    float x[10];
    ck_assert_msg(moe_ckpt_read_rows(dir, m, "x", 0, 2, x, sizeof x) == MOE_OK, "%s", moe_errmsg());
    moe__checkpoint_manifest__free_unpacked(m, NULL);

    /* inspect marks the second shard BAD and names it */
    char *args[] = {"checkpoint", dir, NULL};
    ck_assert_int_eq(captured(2, err, sizeof err, inspect_args, args), 2);
    ck_assert_msg(strstr(err, "shard-00001.bin") && strstr(err, "checksum mismatch in tensor 's'"), "%s", err);
    ck_assert_int_eq(captured(1, out, sizeof out, inspect_args, args), 2);
    ck_assert_msg(strstr(out, "shard-00000.bin") && strstr(out, "BAD"), "%s", out);

    /* the root falls back to step 6 */
    char loaded[700], want[700];
    ck_assert_msg(moe_ckpt_load_parts(root, &meta, p, 3, NULL, loaded, sizeof loaded) == MOE_OK, "%s", moe_errmsg());
    step_dir(want, sizeof want, root, 6);
    ck_assert_str_eq(loaded, want);
    ck_assert(memcmp(&w, &v, sizeof w) == 0);

    /* a truncated second shard is refused naming it */
    step_dir(dir, sizeof dir, root, 6);
    snprintf(path, sizeof path, "%s/shard-00001.bin", dir);
    ck_assert_int_eq(truncate(path, 10), 0);
    ck_assert(moe_ckpt_load_parts(dir, &meta, p, 3, NULL, NULL, 0) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), path) && strstr(moe_errmsg(), "truncated"), "%s", moe_errmsg());
    moe_error_clear();
    rm_root(root);
}
END_TEST

/* Two loaders of a group, run one after the other in this process (agree()
** just returns the loader's own code): each reads only its slices, and
** shard s is checked whole by loader s % 2 alone. */
static int agree_self(void *ctx, int code, char *msg, size_t cap)
{
    (void)ctx;
    (void)msg;
    (void)cap;
    return code;
}

START_TEST(test_sharded_group_split)
{
    moe_error_clear();
    char root[512], dir[600], path[700];
    tu_tmpdir(root, sizeof root, "ckpt");
    sharded v;
    sharded_init(&v, 3);
    moe_status st;
    ck_assert_msg(save_sharded(root, 4, &v, 1, &st), "%s", moe_errmsg());
    step_dir(dir, sizeof dir, root, 4);
    /* x rows [2, 6) in shard 1 (the manifest lists shard 1's x last) */
    snprintf(path, sizeof path, "%s/shard-00001.bin", dir);
    flip_byte(path, tensor_offset(dir, "x") + 9);
    sharded w;
    moe_ckpt_part p[3];
    moe_ckpt_meta meta;
    /* loader 0 reads x rows [0, 2) (shard 0), d, s and checks shard 0 whole: fine */
    memset(&w, 0, sizeof w);
    sharded_parts(&w, p, 0, 2);
    moe_ckpt_group g0 = {.rank = 0, .size = 2, .agree = agree_self};
    ck_assert_msg(moe_ckpt_load_parts(dir, &meta, p, 3, &g0, NULL, 0) == MOE_OK, "%s", moe_errmsg());
    ck_assert(memcmp(w.x, v.x, 2 * 5 * 4) == 0 && memcmp(&w.s, &v.s, 4) == 0);
    /* loader 1 reads the same rows but checks shard 1 whole: refused, naming it */
    moe_ckpt_group g1 = {.rank = 1, .size = 2, .agree = agree_self};
    ck_assert(moe_ckpt_load_parts(dir, &meta, p, 3, &g1, NULL, 0) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), path) && strstr(moe_errmsg(), "checksum mismatch in tensor 'x'"), "%s",
                  moe_errmsg());
    moe_error_clear();
    /* a loader reading rows [2, 6) finds it on its own */
    sharded_parts(&w, p, 2, 4);
    ck_assert(moe_ckpt_load_parts(dir, &meta, p, 3, &g0, NULL, 0) == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), path), "%s", moe_errmsg());
    moe_error_clear();
    rm_root(root);
}
END_TEST

START_TEST(test_sharded_commit_checks_cover)
{
    moe_error_clear();
    char root[512], names[1024];
    tu_tmpdir(root, sizeof root, "ckpt");
    sharded v;
    sharded_init(&v, 1);
    moe_status st;
    ck_assert(!save_sharded(root, 3, &v, 0, &st)); /* writer 1's index left out */
    ck_assert(st == MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "tensor x: rows [2, 6) of 6 are in no shard"), "%s", moe_errmsg());
    moe_error_clear();
    list_dir(root, names, sizeof names);
    ck_assert_str_eq(names, ""); /* the temporary directory is gone, no step appeared */
    rm_root(root);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_load_path_forms);
    tcase_add_test(tc, test_keep_two);
    tcase_add_test(tc, test_keep_skips_broken);
    tcase_add_test(tc, test_resave_same_step);
    tcase_add_test(tc, test_corrupt_byte_fallback);
    tcase_add_test(tc, test_all_corrupt_and_none);
    tcase_add_test(tc, test_truncated_shard);
    tcase_add_test(tc, test_bad_manifests);
    tcase_add_test(tc, test_manifest_contents);
    tcase_add_test(tc, test_model_mismatch);
    tcase_add_test(tc, test_failure_leaves_buffers);
    tcase_add_test(tc, test_tmp_dirs);
    tcase_add_test(tc, test_large_tensors);
    tcase_add_test(tc, test_inspect);
    tcase_add_test(tc, test_save_refuses_bad_tables);
    tcase_add_test(tc, test_sharded_round_trip);
    tcase_add_test(tc, test_sharded_corrupt_second);
    tcase_add_test(tc, test_sharded_group_split);
    tcase_add_test(tc, test_sharded_commit_checks_cover);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    setenv("MOE_LOG_LEVEL", "info", 1); /* the fallback test reads the warning */
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
