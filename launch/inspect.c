#include "launch/inspect.h"
#include "launch/args.h"
#include "launch/inspect_plan.h"
#include "launch/inspect_trace.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "runtime/base/mem.h"
#include "runtime/base/status.h"
#include "runtime/base/checkpoint.h"

static const char *USAGE = "usage: moe inspect checkpoint DIR [--json]\n"
                           "       moe inspect trace FILE [--json]    (routing trace: load, skew, drift)\n"
                           "       moe inspect plan PLAN [--json]     (expert placement)\n"
                           "  checkpoint DIR  a step directory (ROOT/step-NNNNNNN): its step, data position,\n"
                           "                  RNG state, shards and tensors (each slice of a sharded one);\n"
                           "                  every shard and every checksum is verified\n"
                           "  --json          one JSON object on stdout\n"
                           "Exit status: 0 valid, 2 bad usage or invalid checkpoint, 1 I/O failure.\n";

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "moe inspect: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n%s", USAGE);
    va_end(ap);
    return 2;
}

/* ------------------------------------------------------------------------- */
/* JSON                                                                       */

static void json_dims(FILE *f, const int64_t *d, size_t n)
{
    fputc('[', f);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%s%" PRId64, i ? "," : "", d[i]);
    fputc(']', f);
}

static void json_report(FILE *f, const char *dir, const Moe__CheckpointManifest *m, const int *shard_ok,
                        const int *tensor_ok, const char *error)
{
    fputs("{\"dir\":", f);
    moe_json_string(f, dir);
    fprintf(f, ",\"valid\":%s,\"error\":", error ? "false" : "true");
    if (error)
        moe_json_string(f, error);
    else
        fputs("null", f);
    if (!m) {
        fputs("}\n", f);
        return;
    }
    fprintf(f, ",\"format_version\":%u,\"created_by\":", m->format_version);
    moe_json_string(f, m->created_by);
    fprintf(f, ",\"step\":%" PRId64 ",\"data_next_sequence\":%" PRIu64 ",\"world_size\":%u,\"layout\":",
            m->step, m->data_next_sequence, m->world_size);
    moe_json_string(f, m->layout);
    fputs(",\"rng_state\":[", f);
    for (size_t i = 0; i < m->n_rng_state; i++)
        fprintf(f, "%s\"%016" PRIx64 "\"", i ? "," : "", m->rng_state[i]);
    fprintf(f, "],\"config_yaml_bytes\":%zu,\"shards\":[", strlen(m->config_yaml ? m->config_yaml : ""));
    for (size_t i = 0; i < m->n_shards; i++) {
        const Moe__ShardFile *s = m->shards[i];
        fprintf(f, "%s{\"file\":", i ? "," : "");
        moe_json_string(f, s->file);
        fprintf(f, ",\"rank\":%u,\"size\":%" PRIu64 ",\"xxh64\":\"%016" PRIx64 "\",\"ok\":%s}", s->rank, s->size,
                s->xxh64, shard_ok[i] ? "true" : "false");
    }
    fputs("],\"tensors\":[", f);
    for (size_t i = 0; i < m->n_tensors; i++) {
        const Moe__TensorEntry *e = m->tensors[i];
        fprintf(f, "%s{\"name\":", i ? "," : "");
        moe_json_string(f, e->name);
        fputs(",\"dtype\":", f);
        moe_json_string(f, e->dtype);
        fputs(",\"global_shape\":", f);
        json_dims(f, e->global_shape, e->n_global_shape);
        fputs(",\"local_shape\":", f);
        json_dims(f, e->local_shape, e->n_local_shape);
        fputs(",\"local_offset\":", f);
        json_dims(f, e->local_offset, e->n_local_offset);
        fprintf(f, ",\"shard\":%u,\"byte_offset\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"xxh64\":\"%016" PRIx64
                "\",\"ok\":%s}", e->shard, e->byte_offset, e->byte_size, e->xxh64, tensor_ok[i] ? "true" : "false");
    }
    fputs("]}\n", f);
}

/* ------------------------------------------------------------------------- */
/* text                                                                       */

static void fmt_dims(char *out, size_t cap, const int64_t *d, size_t n)
{
    size_t k = (size_t)snprintf(out, cap, "[");
    for (size_t i = 0; i < n && k < cap; i++)
        k += (size_t)snprintf(out + k, cap - k, "%s%" PRId64, i ? ", " : "", d[i]);
    if (k < cap)
        snprintf(out + k, cap - k, "]");
}

/* The global shape, plus the slice when this entry holds only part of it. */
static void fmt_entry_shape(char *out, size_t cap, const Moe__TensorEntry *e)
{
    fmt_dims(out, cap, e->global_shape, e->n_global_shape);
    int whole = 1;
    for (size_t d = 0; d < e->n_global_shape; d++)
        whole &= e->local_shape[d] == e->global_shape[d] && e->local_offset[d] == 0;
    if (whole)
        return;
    char l[128], o[128];
    fmt_dims(l, sizeof l, e->local_shape, e->n_local_shape);
    fmt_dims(o, sizeof o, e->local_offset, e->n_local_offset);
    size_t k = strlen(out);
    snprintf(out + k, cap - k, " slice %s at %s", l, o);
}

/* Tensors, not slices: a sharded checkpoint lists a tensor once per slice. */
static size_t count_names(const Moe__CheckpointManifest *m)
{
    size_t n = 0;
    for (size_t i = 0; i < m->n_tensors; i++) {
        size_t j = 0;
        while (j < i && strcmp(m->tensors[j]->name, m->tensors[i]->name) != 0)
            j++;
        n += j == i;
    }
    return n;
}

static void text_report(FILE *f, const char *dir, const Moe__CheckpointManifest *m, const int *shard_ok,
                        const int *tensor_ok, const char *error)
{
    fprintf(f, "checkpoint  %s\n", dir);
    fprintf(f, "format      %u (%s)\n", m->format_version, m->created_by && m->created_by[0] ? m->created_by : "?");
    fprintf(f, "step        %" PRId64 "\n", m->step);
    fprintf(f, "data        next sequence %" PRIu64 "\n", m->data_next_sequence);
    fprintf(f, "rng         ");
    for (size_t i = 0; i < m->n_rng_state; i++)
        fprintf(f, "%s%016" PRIx64, i ? " " : "", m->rng_state[i]);
    fprintf(f, "\nworld size  %u", m->world_size);
    if (m->layout && m->layout[0])
        fprintf(f, " (%s)", m->layout);
    fputc('\n', f);
    fprintf(f, "config      %zu bytes of YAML\n", strlen(m->config_yaml ? m->config_yaml : ""));

    uint64_t total = 0;
    for (size_t i = 0; i < m->n_shards; i++)
        total += m->shards[i]->size;
    fprintf(f, "shards      %zu, %" PRIu64 " bytes\n", m->n_shards, total);
    for (size_t i = 0; i < m->n_shards; i++) {
        const Moe__ShardFile *s = m->shards[i];
        fprintf(f, "  %-18s rank %-4u %12" PRIu64 " bytes  xxh64 %016" PRIx64 "  %s\n", s->file, s->rank, s->size,
                s->xxh64, shard_ok[i] ? "ok" : "BAD");
    }

    int wname = 4, wshape = 5;
    char shape[512];
    total = 0;
    for (size_t i = 0; i < m->n_tensors; i++) {
        int ln = (int)strlen(m->tensors[i]->name);
        fmt_entry_shape(shape, sizeof shape, m->tensors[i]);
        int ls = (int)strlen(shape);
        wname = ln > wname ? ln : wname;
        wshape = ls > wshape ? ls : wshape;
        total += m->tensors[i]->byte_size;
    }
    size_t distinct = count_names(m);
    if (distinct == m->n_tensors)
        fprintf(f, "tensors     %zu, %" PRIu64 " bytes\n", m->n_tensors, total);
    else
        fprintf(f, "tensors     %zu in %zu slices, %" PRIu64 " bytes\n", distinct, m->n_tensors, total);
    fprintf(f, "  %-*s  %-*s  %12s  %-16s  %s\n", wname, "name", wshape, "shape", "bytes", "xxh64", "check");
    for (size_t i = 0; i < m->n_tensors; i++) {
        const Moe__TensorEntry *e = m->tensors[i];
        fmt_entry_shape(shape, sizeof shape, e);
        fprintf(f, "  %-*s  %-*s  %12" PRIu64 "  %016" PRIx64 "  %s\n", wname, e->name, wshape, shape, e->byte_size,
                e->xxh64, tensor_ok[i] ? "ok" : "BAD");
    }
    if (error)
        fprintf(f, "result      INVALID: %s\n", error);
    else
        fprintf(f, "result      valid (every checksum matches)\n");
}

/* ------------------------------------------------------------------------- */

static int inspect_checkpoint(const char *dir, int json)
{
    moe_error_clear();
    Moe__CheckpointManifest *m = NULL;
    int *shard_ok = NULL, *tensor_ok = NULL;
    moe_status st = moe_ckpt_read_manifest(dir, &m);
    if (st == MOE_OK)
        st = moe_alloc((void **)&shard_ok, sizeof *shard_ok * (m->n_shards + 1), "inspect shard flags");
    if (st == MOE_OK)
        st = moe_alloc((void **)&tensor_ok, sizeof *tensor_ok * (m->n_tensors + 1), "inspect tensor flags");
    int have_flags = st == MOE_OK;
    if (st == MOE_OK)
        st = moe_ckpt_verify(dir, m, shard_ok, tensor_ok);
    const char *error = st == MOE_OK ? NULL : moe_errmsg();
    const Moe__CheckpointManifest *shown = have_flags ? m : NULL;
    if (json)
        json_report(stdout, dir, shown, shard_ok, tensor_ok, error);
    else if (shown)
        text_report(stdout, dir, shown, shard_ok, tensor_ok, error);
    fflush(stdout);
    if (st != MOE_OK)
        moe_error_print(stderr, "moe inspect");
    moe_free(shard_ok);
    moe_free(tensor_ok);
    if (m)
        moe__checkpoint_manifest__free_unpacked(m, NULL);
    return moe_exit_code(st);
}

static int is_help(const char *a) { return strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0; }

int moe_inspect_main(int argc, char **argv)
{
    if (argc < 1)
        return usage_error("missing kind (expected: checkpoint, trace, plan)");
    if (is_help(argv[0])) {
        fputs(USAGE, stdout);
        return 0;
    }
    if (strcmp(argv[0], "trace") == 0)
        return moe_inspect_trace_main(argc - 1, argv + 1);
    if (strcmp(argv[0], "plan") == 0)
        return moe_inspect_plan_main(argc - 1, argv + 1);
    if (strcmp(argv[0], "checkpoint") != 0) {
        fprintf(stderr, "moe inspect: unknown kind '%s' (expected: checkpoint, trace, plan)\n", argv[0]);
        return 2;
    }
    const char *dir = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (is_help(a)) {
            fputs(USAGE, stdout);
            return 0;
        }
        if (strcmp(a, "--json") == 0)
            json = 1;
        else if (a[0] == '-' && a[1] != '\0')
            return usage_error("checkpoint: unknown option '%s'", a);
        else if (dir)
            return usage_error("checkpoint: one DIR only, got a second one '%s'", a);
        else
            dir = a;
    }
    if (!dir)
        return usage_error("checkpoint: missing DIR");
    return inspect_checkpoint(dir, json);
}
