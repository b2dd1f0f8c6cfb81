/*
** config_yaml.c: a YAML file of `key: value` lines in (every value through
** the same setter as flags, so both refuse the same things with the same
** words), and the resolved configuration out as YAML that reads back to the
** same struct. See config.h for the contract.
*/
#include "runtime/base/config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "runtime/base/config_internal.h"

/* ---- reading ----------------------------------------------------------- */

typedef struct {
    yaml_parser_t parser;
    FILE *file;
    const char *path;
    int seen_line[]; /* per key: line it was set on, 0 = not yet (duplicates) */
} yaml_reader;

static size_t line_of(yaml_mark_t m) { return m.line + 1; }

static moe_status yaml_problem(yaml_reader *r)
{
    yaml_parser_t *p = &r->parser;
    if (p->error == YAML_MEMORY_ERROR)
        return moe_fail(MOE_ERR_NOMEM, "%s: out of memory while parsing YAML", r->path);
    if (p->error == YAML_READER_ERROR && ferror(r->file)) /* errno says more than "input error" */
        return moe_fail(MOE_ERR_USAGE, "cannot read config file %s: %s", r->path, strerror(errno));
    if (p->error == YAML_READER_ERROR)
        return moe_fail(MOE_ERR_USAGE, "%s: malformed YAML: %s (at byte %zu)", r->path,
                        p->problem ? p->problem : "unreadable input", p->problem_offset);
    if (p->context)
        return moe_fail(MOE_ERR_USAGE, "%s:%zu:%zu: malformed YAML: %s (%s, at %zu:%zu)", r->path,
                        line_of(p->problem_mark), p->problem_mark.column + 1,
                        p->problem ? p->problem : "syntax error", p->context, line_of(p->context_mark),
                        p->context_mark.column + 1);
    return moe_fail(MOE_ERR_USAGE, "%s:%zu:%zu: malformed YAML: %s", r->path, line_of(p->problem_mark),
                    p->problem_mark.column + 1, p->problem ? p->problem : "syntax error");
}

static moe_status next_event(yaml_reader *r, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&r->parser, ev))
        return yaml_problem(r);
    return MOE_OK;
}

/* A plain ~, null or empty scalar is YAML's null: the key has no value. */
static const char *scalar_text(const yaml_event_t *ev)
{
    const char *s = (const char *)ev->data.scalar.value;
    if (ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
        (strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0))
        return "";
    return s;
}

static moe_status yaml_error_at(yaml_reader *r, yaml_mark_t m, const char *what, const char *name)
{
    if (name)
        return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s: %s", r->path, line_of(m), name, what);
    return moe_fail(MOE_ERR_USAGE, "%s:%zu: %s", r->path, line_of(m), what);
}

/* Joins a sequence of scalars into "[a,b,c]" (moe-layer-freq only). */
static moe_status read_sequence(yaml_reader *r, const moe_cfg_key *k, char *out, size_t cap)
{
    size_t n = 0;
    out[n++] = '[';
    for (int first = 1;; first = 0) {
        yaml_event_t ev;
        MOE_TRY(next_event(r, &ev));
        if (ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (ev.type != YAML_SCALAR_EVENT) {
            yaml_mark_t m = ev.start_mark;
            yaml_event_delete(&ev);
            return yaml_error_at(r, m, "list entries must be 0 or 1", k->name);
        }
        const char *s = (const char *)ev.data.scalar.value;
        size_t len = strlen(s);
        if (n + len + 3 > cap) {
            yaml_mark_t m = ev.start_mark;
            yaml_event_delete(&ev);
            return yaml_error_at(r, m, "list is too long; write a long pattern like ([0]+[1]*15)", k->name);
        }
        if (!first)
            out[n++] = ',';
        memcpy(out + n, s, len);
        n += len;
        yaml_event_delete(&ev);
    }
    out[n++] = ']';
    out[n] = '\0';
    return MOE_OK;
}

/* One `key: value` pair whose key event has been read. */
static moe_status read_pair(yaml_reader *r, moe_config *c, const yaml_event_t *kev)
{
    const char *name = (const char *)kev->data.scalar.value;
    char origin[MOE_PATH_MAX + 32];
    snprintf(origin, sizeof origin, "%s:%zu", r->path, line_of(kev->start_mark));
    const moe_cfg_key *k = moe_cfg_find_key(name);
    if (!k)
        return moe_cfg_unknown_key(name, origin, "");
    int idx = (int)(k - moe_cfg_keys);
    if (r->seen_line[idx])
        return moe_fail(MOE_ERR_USAGE, "%s: duplicate key \"%s\" (first set on line %d)", origin, name,
                        r->seen_line[idx]);
    r->seen_line[idx] = (int)line_of(kev->start_mark);

    yaml_event_t ev;
    MOE_TRY(next_event(r, &ev));
    snprintf(origin, sizeof origin, "%s:%zu", r->path, line_of(ev.start_mark));
    moe_status st = MOE_OK;
    if (ev.type == YAML_SCALAR_EVENT) {
        st = moe_cfg_set_key(c, k, scalar_text(&ev), origin, "");
    } else if (ev.type == YAML_SEQUENCE_START_EVENT && k->type == T_LAYER_FREQ) {
        char joined[sizeof c->moe_layer_freq];
        st = read_sequence(r, k, joined, sizeof joined);
        if (st == MOE_OK)
            st = moe_cfg_set_key(c, k, joined, origin, "");
    } else if (ev.type == YAML_SEQUENCE_START_EVENT) {
        st = yaml_error_at(r, ev.start_mark, "a list is allowed only for moe-layer-freq", k->name);
    } else if (ev.type == YAML_ALIAS_EVENT) {
        st = yaml_error_at(r, ev.start_mark, "YAML aliases are not supported", k->name);
    } else {
        st = yaml_error_at(r, ev.start_mark, "value must be a single value, not a mapping", k->name);
    }
    yaml_event_delete(&ev);
    return st;
}

static moe_status read_mapping(yaml_reader *r, moe_config *c)
{
    for (;;) {
        yaml_event_t ev;
        MOE_TRY(next_event(r, &ev));
        if (ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            return MOE_OK;
        }
        moe_status st;
        if (ev.type == YAML_SCALAR_EVENT)
            st = read_pair(r, c, &ev);
        else
            st = yaml_error_at(r, ev.start_mark, "keys must be plain names like num-layers", NULL);
        yaml_event_delete(&ev);
        MOE_TRY(st);
    }
}

/* stream: [document: mapping | empty] */
static moe_status read_stream(yaml_reader *r, moe_config *c)
{
    yaml_event_t ev;
    MOE_TRY(next_event(r, &ev)); /* STREAM_START */
    yaml_event_delete(&ev);
    MOE_TRY(next_event(r, &ev));
    if (ev.type == YAML_STREAM_END_EVENT) { /* empty file, or comments only */
        yaml_event_delete(&ev);
        return MOE_OK;
    }
    yaml_event_delete(&ev); /* DOCUMENT_START */

    MOE_TRY(next_event(r, &ev));
    moe_status st = MOE_OK;
    if (ev.type == YAML_MAPPING_START_EVENT)
        st = read_mapping(r, c);
    else if (!(ev.type == YAML_SCALAR_EVENT && scalar_text(&ev)[0] == '\0'))
        st = yaml_error_at(r, ev.start_mark, "the top level must be a mapping of key: value lines", NULL);
    yaml_event_delete(&ev);
    MOE_TRY(st);

    MOE_TRY(next_event(r, &ev)); /* DOCUMENT_END */
    yaml_event_delete(&ev);
    MOE_TRY(next_event(r, &ev));
    yaml_event_type_t t = ev.type;
    yaml_mark_t m = ev.start_mark;
    yaml_event_delete(&ev);
    if (t != YAML_STREAM_END_EVENT)
        return yaml_error_at(r, m, "only one YAML document is allowed", NULL);
    return MOE_OK;
}

moe_status moe_config_load_yaml(moe_config *c, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return moe_fail(MOE_ERR_USAGE, "cannot open config file %s: %s", path, strerror(errno));
    struct stat sb;
    int e = fstat(fileno(f), &sb) != 0 ? errno : S_ISDIR(sb.st_mode) ? EISDIR : 0;
    if (e) {
        fclose(f);
        return moe_fail(MOE_ERR_USAGE, "cannot read config file %s: %s", path, strerror(e));
    }
    yaml_reader *r = calloc(1, sizeof *r + (size_t)moe_cfg_nkeys * sizeof r->seen_line[0]);
    if (!r) {
        fclose(f);
        return moe_fail(MOE_ERR_NOMEM, "out of memory reading %s", path);
    }
    r->path = path;
    r->file = f;
    if (!yaml_parser_initialize(&r->parser)) {
        free(r);
        fclose(f);
        return moe_fail(MOE_ERR_NOMEM, "cannot initialise the YAML parser for %s", path);
    }
    yaml_parser_set_input_file(&r->parser, f);
    moe_status st = read_stream(r, c);
    yaml_parser_delete(&r->parser);
    free(r);
    fclose(f);
    return st;
}

/* ---- writing ----------------------------------------------------------- */

/* YAML double-quoted: escapes for the quote, the backslash and controls. */
static void write_quoted(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\t': fputs("\\t", f); break;
        case '\r': fputs("\\r", f); break;
        default:
            if (*p < 0x20 || *p == 0x7f)
                fprintf(f, "\\x%02x", *p);
            else
                fputc(*p, f);
        }
    }
    fputc('"', f);
}

/* The shortest %.Ng that reads back to the same double (17 always does);
** whole numbers without an exponent, so rotary-base reads 10000, not 1e+04. */
static void format_double(char *buf, size_t cap, double x)
{
    if (x == floor(x) && fabs(x) < 1e15) {
        snprintf(buf, cap, "%.0f", x);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, cap, "%.*g", prec, x);
        if (strtod(buf, NULL) == x)
            return;
    }
}

static void write_value(FILE *f, const moe_config *c, const moe_cfg_key *k)
{
    const void *p = moe_cfg_cfield(c, k);
    char num[40];
    switch (k->type) {
    case T_INT: fprintf(f, "%d", *(const int *)p); break;
    case T_U64: fprintf(f, "%" PRIu64, *(const uint64_t *)p); break;
    case T_DOUBLE:
        format_double(num, sizeof num, *(const double *)p);
        fputs(num, f);
        break;
    case T_BOOL: fputs(*(const int *)p ? "true" : "false", f); break;
    case T_ENUM: {
        int v = *(const int *)p, n = 0;
        while (k->choices[n])
            n++;
        fputs(v >= 0 && v < n ? k->choices[v] : "?", f);
        break;
    }
    case T_STRING: write_quoted(f, (const char *)p); break;
    case T_LAYER_FREQ: write_quoted(f, (const char *)p); break;
    }
}

moe_status moe_config_write_yaml(const moe_config *c, FILE *f)
{
    for (int i = 0; i < moe_cfg_nkeys; i++) {
        fprintf(f, "%s: ", moe_cfg_keys[i].name);
        write_value(f, c, &moe_cfg_keys[i]);
        fputc('\n', f);
    }
    if (ferror(f))
        return moe_fail(MOE_ERR_IO, "writing the configuration failed: %s", strerror(errno));
    return MOE_OK;
}

/* The directory's entry for a rename is durable only once the directory is
** synced. Some filesystems refuse fsync on a directory; that is not an error. */
static moe_status sync_parent_dir(const char *path)
{
    char dir[MOE_PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return moe_fail(MOE_ERR_IO, "cannot open directory %s: %s", dir, strerror(errno));
    int rc = fsync(fd), e = errno;
    close(fd);
    if (rc != 0 && e != EINVAL && e != ENOTSUP)
        return moe_fail(MOE_ERR_IO, "cannot sync directory %s: %s", dir, strerror(e));
    return MOE_OK;
}

moe_status moe_config_save(const moe_config *c, const char *path)
{
    char tmp[MOE_PATH_MAX + 32];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof tmp)
        return moe_fail(MOE_ERR_USAGE, "config path is too long: %s", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return moe_fail(MOE_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    moe_status st = moe_config_write_yaml(c, f);
    if (st == MOE_OK && (fflush(f) != 0 || fsync(fileno(f)) != 0))
        st = moe_fail(MOE_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    if (fclose(f) != 0 && st == MOE_OK)
        st = moe_fail(MOE_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    if (st == MOE_OK && rename(tmp, path) != 0)
        st = moe_fail(MOE_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    if (st != MOE_OK) {
        unlink(tmp);
        return st;
    }
    MOE_TRY(sync_parent_dir(path));
    return MOE_OK;
}

