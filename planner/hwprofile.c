/*
** hwprofile.c: the hardware profile YAML reader (libyaml events). See
** hwprofile.h for the format and what is refused.
*/
#include "planner/hwprofile.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

typedef enum { F_STRING, F_REAL, F_INT } field_type;

typedef struct {
    const char *key;
    field_type type;
    size_t off;
    double min, max; /* inclusive range for numbers */
    int optional;    /* may be left out (then 0) */
} field_def;

#define OFF(m) offsetof(moe_hwprofile, m)
static const field_def FIELDS[MOE_HW_NFIELDS] = {
    [MOE_HW_DTYPE] = {"dtype", F_STRING, OFF(dtype), 0, 0},
    [MOE_HW_GEMM_TFLOPS] = {"gemm_tflops", F_REAL, OFF(gemm_tflops), 1e-6, 1e6},
    [MOE_HW_GEMM_EFFICIENCY] = {"gemm_efficiency", F_REAL, OFF(gemm_efficiency), 1e-3, 1},
    [MOE_HW_MEM_BW_GBS] = {"mem_bw_gbs", F_REAL, OFF(mem_bw_gbs), 1e-3, 1e6},
    [MOE_HW_MEM_GIB] = {"mem_gib", F_REAL, OFF(mem_gib), 1e-3, 1e6},
    [MOE_HW_RANKS_PER_NODE] = {"ranks_per_node", F_INT, OFF(ranks_per_node), 1, 1 << 20},
    [MOE_HW_SHARED] = {"shared", F_INT, OFF(shared), 0, 1},
    [MOE_HW_INTRA_GBS] = {"intra_node_gbs", F_REAL, OFF(intra_gbs), 1e-6, 1e6},
    [MOE_HW_INTRA_LAT_US] = {"intra_node_latency_us", F_REAL, OFF(intra_lat_us), 0, 1e6},
    [MOE_HW_INTER_GBS] = {"inter_node_gbs", F_REAL, OFF(inter_gbs), 1e-6, 1e6},
    [MOE_HW_INTER_LAT_US] = {"inter_node_latency_us", F_REAL, OFF(inter_lat_us), 0, 1e6},
    [MOE_HW_LINK_EFFICIENCY] = {"link_efficiency", F_REAL, OFF(link_efficiency), 1e-3, 1},
    [MOE_HW_KERNEL_OVERHEAD_US] = {"kernel_overhead_us", F_REAL, OFF(kernel_overhead_us), 0, 1e4},
    [MOE_HW_ELEMENTWISE_GBS] = {"elementwise_gbs", F_REAL, OFF(elementwise_gbs), 1e-3, 1e6},
    [MOE_HW_SOFTMAX_GELEMS] = {"softmax_gelems", F_REAL, OFF(softmax_gelems), 1e-3, 1e6},
    [MOE_HW_ATTENTION_GELEMS] = {"attention_gelems", F_REAL, OFF(attention_gelems), 1e-3, 1e6},
    [MOE_HW_ATTENTION_BLOCK_GELEMS] = {"attention_block_gelems", F_REAL, OFF(attention_block_gelems), 1e-3, 1e6},
    [MOE_HW_OPTIMIZER_GPARAMS] = {"optimizer_gparams", F_REAL, OFF(optimizer_gparams), 1e-4, 1e6},
    [MOE_HW_CORES] = {"cores", F_INT, OFF(cores), 1, 1 << 20},
    [MOE_HW_THREADS] = {"threads", F_INT, OFF(threads), 1, 1 << 20},
    [MOE_HW_OVERSUB_LAT_US] = {"oversubscribed_latency_us", F_REAL, OFF(oversub_lat_us), 0, 1e6},
    [MOE_HW_INTER_BURST_KB] = {"inter_node_burst_kb", F_REAL, OFF(inter_burst_kb), 0, 1e9},
    [MOE_HW_CORE_CACHE_KB] = {"core_cache_kb", F_REAL, OFF(core_cache_kb), 0, 1e9, 1},
};
#undef OFF

const char *moe_hw_field_key(moe_hw_field f)
{
    return (unsigned)f < MOE_HW_NFIELDS ? FIELDS[f].key : "?";
}

int moe_hwprofile_dtype_bytes(const moe_hwprofile *hw)
{
    return strcmp(hw->dtype, "bf16") == 0 ? 2 : 4;
}

static double table_at(const moe_hw_efftable *t, double flops)
{
    int n = t->points;
    if (flops <= t->flops[0])
        return t->value[0];
    if (flops >= t->flops[n - 1])
        return t->value[n - 1];
    int i = 1;
    while (t->flops[i] < flops)
        i++;
    double f = log(flops / t->flops[i - 1]) / log(t->flops[i] / t->flops[i - 1]);
    return t->value[i - 1] + f * (t->value[i] - t->value[i - 1]);
}

double moe_hwprofile_gemm_efficiency(const moe_hwprofile *hw, double flops)
{
    return hw->eff.points < 2 ? hw->gemm_efficiency : table_at(&hw->eff, flops);
}

double moe_hwprofile_gemm_efficiency_cached(const moe_hwprofile *hw, double flops)
{
    return hw->eff_cached.points < 2 ? moe_hwprofile_gemm_efficiency(hw, flops) : table_at(&hw->eff_cached, flops);
}

// ----------------------------------------------------------------------------
// reading

typedef struct {
    yaml_parser_t parser;
    FILE *file;
    const char *path;
} reader;

static size_t line_of(yaml_mark_t m) { return m.line + 1; }

static moe_status next_event(reader *r, yaml_event_t *ev)
{
    if (yaml_parser_parse(&r->parser, ev))
        return MOE_OK;
    yaml_parser_t *p = &r->parser;
    if (p->error == YAML_MEMORY_ERROR)
        return moe_fail(MOE_ERR_NOMEM, "%s: out of memory while parsing YAML", r->path);
    return moe_fail(MOE_ERR_USAGE, "%s:%zu: malformed YAML: %s", r->path, line_of(p->problem_mark),
                    p->problem ? p->problem : "syntax error");
}

/* Next event, which must be of type t; `what` names it for the message. */
static moe_status expect(reader *r, yaml_event_t *ev, yaml_event_type_t t, const char *what)
{
    MOE_TRY(next_event(r, ev));
    if (ev->type == t)
        return MOE_OK;
    size_t line = line_of(ev->start_mark);
    yaml_event_delete(ev);
    return moe_fail(MOE_ERR_USAGE, "%s:%zu: expected %s", r->path, line, what);
}

static moe_status copy_text(reader *r, size_t line, const char *key, const char *s, char *out, size_t cap)
{
    if (strlen(s) >= cap)
        return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s: text longer than %zu characters", r->path, line, key, cap - 1);
    memcpy(out, s, strlen(s) + 1);
    return MOE_OK;
}

static moe_status set_value(reader *r, size_t line, const field_def *f, const char *s, moe_hwprofile *hw)
{
    if (f->type == F_STRING) {
        if (strcmp(s, "bf16") != 0 && strcmp(s, "fp32") != 0)
            return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s: '%s' is not bf16 or fp32", r->path, line, f->key, s);
        return copy_text(r, line, f->key, s, (char *)hw + f->off, sizeof hw->dtype);
    }
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v))
        return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s: '%s' is not a number", r->path, line, f->key, s);
    if (v < f->min || v > f->max)
        return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s: %g is out of range [%g, %g]", r->path, line, f->key, v, f->min,
                        f->max);
    if (f->type == F_INT) {
        if (v != floor(v))
            return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s: %g is not an integer", r->path, line, f->key, v);
        *(int *)((char *)hw + f->off) = (int)v;
    } else
        *(double *)((char *)hw + f->off) = v;
    return MOE_OK;
}

/* The body of `key: {value: V, source: S}` after its MAPPING_START. */
static moe_status read_sourced(reader *r, size_t line, moe_hw_field k, moe_hwprofile *hw)
{
    const field_def *f = &FIELDS[k];
    char value[128] = "", source[sizeof hw->source[0]] = "";
    int have_value = 0, have_source = 0;
    for (;;) {
        yaml_event_t ev;
        MOE_TRY(next_event(r, &ev));
        if (ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (ev.type != YAML_SCALAR_EVENT) {
            size_t l = line_of(ev.start_mark);
            yaml_event_delete(&ev);
            return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s: expected `value` or `source`", r->path, l, f->key);
        }
        char sub[16];
        size_t l = line_of(ev.start_mark);
        int is_value = strcmp((const char *)ev.data.scalar.value, "value") == 0;
        int is_source = strcmp((const char *)ev.data.scalar.value, "source") == 0;
        snprintf(sub, sizeof sub, "%s", (const char *)ev.data.scalar.value);
        yaml_event_delete(&ev);
        if (!is_value && !is_source)
            return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s: unknown key '%s' (expected value and source)", r->path, l,
                            f->key, sub);
        if ((is_value && have_value) || (is_source && have_source))
            return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s: '%s' given twice", r->path, l, f->key, sub);
        MOE_TRY(expect(r, &ev, YAML_SCALAR_EVENT, "a scalar"));
        moe_status st = is_value
                            ? copy_text(r, l, f->key, (const char *)ev.data.scalar.value, value, sizeof value)
                            : copy_text(r, l, f->key, (const char *)ev.data.scalar.value, source, sizeof source);
        yaml_event_delete(&ev);
        MOE_TRY(st);
        have_value |= is_value;
        have_source |= is_source;
    }
    if (!have_value)
        return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s has no value", r->path, line, f->key);
    if (!have_source || !source[strspn(source, " \t")])
        return moe_fail(MOE_ERR_USAGE,
                        "%s:%zu: %s = %s has no source: every number needs `source: \"where it comes from\"`",
                        r->path, line, f->key, value);
    MOE_TRY(set_value(r, line, f, value, hw));
    memcpy(hw->source[k], source, sizeof source);
    return MOE_OK;
}

static moe_status number_of(reader *r, size_t line, const char *key, const char *s, double *v)
{
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(*v))
        return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s: '%s' is not a number", r->path, line, key, s);
    return MOE_OK;
}

/* "key: what", for expect's message. */
static const char *what_of(char *buf, size_t cap, const char *key, const char *what)
{
    snprintf(buf, cap, "%s: %s", key, what);
    return buf;
}

/* One [flops, efficiency] pair of table `key` after its SEQUENCE_START. */
static moe_status read_point(reader *r, size_t line, const char *key, moe_hw_efftable *t)
{
    char what[96];
    double v[2];
    for (int i = 0; i < 2; i++) {
        yaml_event_t ev;
        MOE_TRY(expect(r, &ev, YAML_SCALAR_EVENT, what_of(what, sizeof what, key, "a point [flops, efficiency]")));
        moe_status st = number_of(r, line, key, (const char *)ev.data.scalar.value, &v[i]);
        yaml_event_delete(&ev);
        MOE_TRY(st);
    }
    yaml_event_t ev;
    MOE_TRY(expect(r, &ev, YAML_SEQUENCE_END_EVENT, what_of(what, sizeof what, key, "a point of two numbers")));
    yaml_event_delete(&ev);
    int n = t->points;
    if (n == MOE_HW_EFF_POINTS)
        return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s: more than %d points", r->path, line, key, MOE_HW_EFF_POINTS);
    if (v[0] <= 0 || (n > 0 && v[0] <= t->flops[n - 1]))
        return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s: flops %g must be > 0 and above the point before", r->path, line,
                        key, v[0]);
    if (v[1] <= 0 || v[1] > 1)
        return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s: efficiency %g is out of range (0, 1]", r->path, line, key, v[1]);
    t->flops[n] = v[0], t->value[n] = v[1], t->points = n + 1;
    return MOE_OK;
}

static moe_status read_points(reader *r, size_t line, const char *key, moe_hw_efftable *t)
{
    yaml_event_t ev;
    char what[96];
    MOE_TRY(expect(r, &ev, YAML_SEQUENCE_START_EVENT, what_of(what, sizeof what, key, "points as a list")));
    yaml_event_delete(&ev);
    for (;;) {
        MOE_TRY(next_event(r, &ev));
        int end = ev.type == YAML_SEQUENCE_END_EVENT, pt = ev.type == YAML_SEQUENCE_START_EVENT;
        size_t l = line_of(ev.start_mark);
        yaml_event_delete(&ev);
        if (end)
            break;
        if (!pt)
            return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s: each point is [flops, efficiency]", r->path, l, key);
        MOE_TRY(read_point(r, l, key, t));
    }
    if (t->points < 2)
        return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s: needs at least 2 points", r->path, line, key);
    return MOE_OK;
}

/* `key: {source: S, points: [[f, e], ...]}` into t, its key read. */
static moe_status read_table(reader *r, size_t line, const char *key, moe_hw_efftable *t)
{
    yaml_event_t ev;
    char what[96];
    MOE_TRY(expect(r, &ev, YAML_MAPPING_START_EVENT,
                   what_of(what, sizeof what, key, "a mapping of source and points")));
    yaml_event_delete(&ev);
    int have_points = 0;
    for (;;) {
        MOE_TRY(next_event(r, &ev));
        if (ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        size_t l = line_of(ev.start_mark);
        char sub[16] = "";
        if (ev.type == YAML_SCALAR_EVENT)
            snprintf(sub, sizeof sub, "%s", (const char *)ev.data.scalar.value);
        yaml_event_delete(&ev);
        if (strcmp(sub, "points") == 0 && !have_points) {
            MOE_TRY(read_points(r, l, key, t));
            have_points = 1;
        } else if (strcmp(sub, "source") == 0 && !t->source[0]) {
            MOE_TRY(expect(r, &ev, YAML_SCALAR_EVENT, what_of(what, sizeof what, key, "source as a string")));
            moe_status st = copy_text(r, l, key, (const char *)ev.data.scalar.value, t->source,
                                      sizeof t->source);
            yaml_event_delete(&ev);
            MOE_TRY(st);
        } else
            return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s: unexpected or repeated key '%s' (expected source and points)",
                            r->path, l, key, sub);
    }
    if (!have_points)
        return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s has no points", r->path, line, key);
    if (!t->source[strspn(t->source, " \t")])
        return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s has no source", r->path, line, key);
    return MOE_OK;
}

static int field_of(const char *key)
{
    for (int k = 0; k < MOE_HW_NFIELDS; k++)
        if (strcmp(FIELDS[k].key, key) == 0)
            return k;
    return -1;
}

/* One `key: ...` pair of the top-level mapping, its key event already read. */
static moe_status read_pair(reader *r, const char *key, size_t line, moe_hwprofile *hw, size_t *seen)
{
    yaml_event_t ev;
    int k = field_of(key);
    int is_name = strcmp(key, "name") == 0, is_desc = strcmp(key, "description") == 0;
    int is_table = strcmp(key, "gemm_efficiency_table") == 0;
    int is_cached = strcmp(key, "gemm_efficiency_table_cached") == 0;
    if (k < 0 && !is_name && !is_desc && !is_table && !is_cached)
        return moe_fail(MOE_ERR_USAGE, "%s:%zu: unknown key '%s'", r->path, line, key);
    int slot = is_name      ? MOE_HW_NFIELDS
               : is_desc    ? MOE_HW_NFIELDS + 1
               : is_table   ? MOE_HW_NFIELDS + 2
               : is_cached  ? MOE_HW_NFIELDS + 3
                            : k;
    if (seen[slot])
        return moe_fail(MOE_ERR_USAGE, "%s:%zu: '%s' given twice (first at line %zu)", r->path, line, key,
                        seen[slot]);
    seen[slot] = line;
    if (is_table || is_cached)
        return read_table(r, line, key, is_table ? &hw->eff : &hw->eff_cached);
    MOE_TRY(next_event(r, &ev));
    if (is_name || is_desc) {
        moe_status st = ev.type == YAML_SCALAR_EVENT
                            ? (is_name ? copy_text(r, line, key, (const char *)ev.data.scalar.value, hw->name,
                                                   sizeof hw->name)
                                       : copy_text(r, line, key, (const char *)ev.data.scalar.value,
                                                   hw->description, sizeof hw->description))
                            : moe_fail(MOE_ERR_USAGE, "%s:%zu: %s must be a plain string", r->path, line, key);
        yaml_event_delete(&ev);
        return st;
    }
    if (ev.type == YAML_SCALAR_EVENT) {
        char v[64];
        snprintf(v, sizeof v, "%s", (const char *)ev.data.scalar.value);
        yaml_event_delete(&ev);
        return moe_fail(MOE_ERR_USAGE,
                        "%s:%zu: %s = %s has no source: write it as `%s: {value: %s, source: \"where it comes "
                        "from\"}`",
                        r->path, line, key, v, key, v);
    }
    int is_map = ev.type == YAML_MAPPING_START_EVENT;
    yaml_event_delete(&ev);
    if (!is_map)
        return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s must be a mapping with value and source", r->path, line, key);
    return read_sourced(r, line, (moe_hw_field)k, hw);
}

static moe_status read_document(reader *r, moe_hwprofile *hw)
{
    yaml_event_t ev;
    size_t seen[MOE_HW_NFIELDS + 4] = {0};
    MOE_TRY(expect(r, &ev, YAML_STREAM_START_EVENT, "a YAML stream"));
    yaml_event_delete(&ev);
    MOE_TRY(next_event(r, &ev));
    int empty = ev.type == YAML_STREAM_END_EVENT;
    yaml_event_delete(&ev);
    if (empty)
        return moe_fail(MOE_ERR_USAGE, "%s: empty file (expected a hardware profile mapping)", r->path);
    MOE_TRY(expect(r, &ev, YAML_MAPPING_START_EVENT, "a mapping of profile keys"));
    yaml_event_delete(&ev);
    for (;;) {
        MOE_TRY(next_event(r, &ev));
        if (ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (ev.type != YAML_SCALAR_EVENT) {
            size_t l = line_of(ev.start_mark);
            yaml_event_delete(&ev);
            return moe_fail(MOE_ERR_USAGE, "%s:%zu: expected a key", r->path, l);
        }
        char key[64];
        size_t line = line_of(ev.start_mark);
        snprintf(key, sizeof key, "%s", (const char *)ev.data.scalar.value);
        yaml_event_delete(&ev);
        MOE_TRY(read_pair(r, key, line, hw, seen));
    }
    if (!seen[MOE_HW_NFIELDS] || !hw->name[0])
        return moe_fail(MOE_ERR_USAGE, "%s: missing key 'name'", r->path);
    for (int k = 0; k < MOE_HW_NFIELDS; k++)
        if (!seen[k] && !FIELDS[k].optional)
            return moe_fail(MOE_ERR_USAGE, "%s: missing key '%s'", r->path, FIELDS[k].key);
    if (seen[MOE_HW_NFIELDS + 3] && !seen[MOE_HW_NFIELDS + 2])
        return moe_fail(MOE_ERR_USAGE, "%s:%zu: gemm_efficiency_table_cached without gemm_efficiency_table (the "
                        "out-of-cache table it complements)", r->path, seen[MOE_HW_NFIELDS + 3]);
    return MOE_OK;
}

moe_status moe_hwprofile_load(const char *path, moe_hwprofile *out)
{
    reader r = {.path = path};
    r.file = fopen(path, "rb");
    if (!r.file)
        return moe_fail(MOE_ERR_USAGE, "cannot open hardware profile %s: %s", path, strerror(errno));
    if (!yaml_parser_initialize(&r.parser)) {
        fclose(r.file);
        return moe_fail(MOE_ERR_NOMEM, "%s: cannot initialise the YAML parser", path);
    }
    yaml_parser_set_input_file(&r.parser, r.file);
    moe_hwprofile *hw = calloc(1, sizeof *hw);
    moe_status st = hw ? read_document(&r, hw) : moe_fail(MOE_ERR_NOMEM, "hardware profile");
    yaml_parser_delete(&r.parser);
    fclose(r.file);
    if (st == MOE_OK) {
        snprintf(hw->path, sizeof hw->path, "%s", path);
        *out = *hw;
    } else
        moe_trace_frame(__FILE__, __LINE__);
    free(hw);
    return st;
}
