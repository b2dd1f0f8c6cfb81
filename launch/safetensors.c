/*
** safetensors: the reader (moe_st_open / moe_st_read, with dtype conversion)
** and the writer (streaming, atomic). The header's JSON is parsed and checked
** in safetensors_header.c.
*/
#include "launch/safetensors_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "launch/args.h"
#include "runtime/base/fs.h"
#include "runtime/base/mem.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c reads and writes little-endian data in place: port the byte order first"
#endif

#define CHUNK ((size_t)1 << 20) /* staging bytes for dtype conversion and copies */

/* ---- reading ----------------------------------------------------------------- */

static moe_status open_error(const char *path, int err)
{
    moe_status st = err == ENOENT || err == ENOTDIR || err == EISDIR ? MOE_ERR_INPUT : MOE_ERR_IO;
    return moe_fail(st, "cannot open %s: %s", path, strerror(err));
}

static moe_status read_exact(moe_st_file *f, void *buf, size_t n, const char *what)
{
    if (fread(buf, 1, n, f->f) != n) {
        if (ferror(f->f))
            return moe_fail(MOE_ERR_IO, "%s: reading %s: %s", f->path, what, strerror(errno));
        return moe_fail(MOE_ERR_INPUT, "%s: the file ends inside %s (truncated, or changed while read)", f->path, what);
    }
    return MOE_OK;
}

static moe_status load_header(moe_st_file *f, uint64_t file_size)
{
    uint8_t len8[8];
    if (file_size < 8)
        return moe_fail(MOE_ERR_INPUT, "%s: %" PRIu64 " bytes, too short for a safetensors file (8-byte header length first)",
                        f->path, file_size);
    MOE_TRY(read_exact(f, len8, 8, "the header length"));
    uint64_t n = 0;
    for (int k = 7; k >= 0; k--)
        n = (n << 8) | len8[k];
    if (n > MOE_ST_MAX_HEADER)
        return moe_fail(MOE_ERR_INPUT, "%s: header length %" PRIu64 " is over the limit of %llu bytes", f->path, n,
                        MOE_ST_MAX_HEADER);
    if (n > file_size - 8)
        return moe_fail(MOE_ERR_INPUT, "%s: header length %" PRIu64 " runs past the end of the file (%" PRIu64 " bytes)",
                        f->path, n, file_size);
    unsigned char *h = NULL;
    MOE_TRY(moe_alloc((void **)&h, (size_t)n + 1, "safetensors header"));
    moe_status st = read_exact(f, h, (size_t)n, "the header");
    f->data_start = 8 + n;
    f->data_size = file_size - 8 - n;
    if (st == MOE_OK)
        st = moe_alloc((void **)&f->pool, (size_t)n + 1, "safetensors strings");
    if (st == MOE_OK)
        st = moe_st_parse_header(f, h, (size_t)n);
    moe_free(h);
    return st;
}

moe_status moe_st_open(moe_st_file *f, const char *path)
{
    memset(f, 0, sizeof *f);
    if (strlen(path) >= sizeof f->path)
        return moe_fail(MOE_ERR_USAGE, "path of %zu characters is too long", strlen(path));
    snprintf(f->path, sizeof f->path, "%s", path);
    f->f = fopen(path, "rb");
    if (!f->f)
        return open_error(path, errno);
    struct stat sb;
    moe_status st = MOE_OK;
    if (fstat(fileno(f->f), &sb) != 0)
        st = moe_fail(MOE_ERR_IO, "stat %s: %s", path, strerror(errno));
    else if (!S_ISREG(sb.st_mode))
        st = moe_fail(MOE_ERR_INPUT, "%s is not a regular file", path);
    if (st == MOE_OK)
        st = load_header(f, (uint64_t)sb.st_size);
    if (st != MOE_OK) {
        moe_st_close(f);
        moe_trace_frame(__FILE__, __LINE__);
    }
    return st;
}

void moe_st_close(moe_st_file *f)
{
    if (f->f)
        fclose(f->f);
    moe_free(f->t);
    moe_free(f->meta);
    moe_free(f->pool);
    memset(f, 0, sizeof *f);
}

int moe_st_find(const moe_st_file *f, const char *name)
{
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->t[i].name, name) == 0)
            return i;
    return -1;
}

const char *moe_st_meta_get(const moe_st_file *f, const char *key)
{
    for (int i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta[i].key, key) == 0)
            return f->meta[i].value;
    return NULL;
}

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    float f;
    if (exp == 0) { /* zero or subnormal: man * 2^-24 exactly */
        f = (float)man * 0x1p-24f;
        memcpy(&bits, &f, 4);
        bits |= sign;
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    memcpy(&f, &bits, 4);
    return f;
}

/* Widens (or, for F64, narrows) count elements of src into out; first is the
** index of src[0] in the tensor, for messages. */
static moe_status convert(const moe_st_file *f, const moe_st_info *t, const uint8_t *src, size_t count, float *out,
                          uint64_t first)
{
    for (size_t k = 0; k < count; k++) {
        if (t->dtype == MOE_ST_F16) {
            uint16_t h;
            memcpy(&h, src + 2 * k, 2);
            out[k] = half_to_float(h);
        } else if (t->dtype == MOE_ST_BF16) {
            uint16_t h;
            memcpy(&h, src + 2 * k, 2);
            uint32_t bits = (uint32_t)h << 16;
            memcpy(&out[k], &bits, 4);
        } else {
            double d;
            memcpy(&d, src + 8 * k, 8);
            if (!isinf(d) && (d > FLT_MAX || d < -FLT_MAX)) /* the cast would be undefined */
                return moe_fail(MOE_ERR_INPUT, "%s: tensor '%s': element %" PRIu64 " (%g) is outside the float32 range",
                                f->path, t->name, first + k, d);
            out[k] = (float)d;
        }
    }
    return MOE_OK;
}

moe_status moe_st_read(moe_st_file *f, int i, float *out, uint64_t count)
{
    if (i < 0 || i >= f->n)
        return moe_fail(MOE_ERR_USAGE, "%s: no tensor %d (the file has %d)", f->path, i, f->n);
    const moe_st_info *t = &f->t[i];
    if (count != t->numel)
        return moe_fail(MOE_ERR_USAGE, "%s: tensor '%s' has %" PRIu64 " elements, the caller asked for %" PRIu64, f->path,
                        t->name, t->numel, count);
    if (fseeko(f->f, (off_t)(f->data_start + t->begin), SEEK_SET) != 0)
        return moe_fail(MOE_ERR_IO, "%s: seek to tensor '%s': %s", f->path, t->name, strerror(errno));
    char what[MOE_ST_PATH_MAX];
    snprintf(what, sizeof what, "tensor '%s'", t->name);
    if (t->dtype == MOE_ST_F32) {
        for (uint64_t done = 0; done < count;) {
            size_t k = count - done < CHUNK ? (size_t)(count - done) : CHUNK;
            MOE_TRY(read_exact(f, out + done, k * 4, what));
            done += k;
        }
        return MOE_OK;
    }
    size_t es = moe_st_dtype_size(t->dtype), per = CHUNK / es;
    uint8_t *buf = NULL;
    MOE_TRY(moe_alloc((void **)&buf, CHUNK, "safetensors conversion buffer"));
    moe_status st = MOE_OK;
    for (uint64_t done = 0; done < count && st == MOE_OK;) {
        size_t k = count - done < per ? (size_t)(count - done) : per;
        st = read_exact(f, buf, k * es, what);
        if (st == MOE_OK)
            st = convert(f, t, buf, k, out + done, done);
        done += k;
    }
    moe_free(buf);
    MOE_TRY(st);
    return MOE_OK;
}

/* ---- writing ----------------------------------------------------------------- */

struct moe_st_writer {
    char path[MOE_ST_PATH_MAX], tmp[MOE_ST_PATH_MAX + 32];
    FILE *f;
    uint64_t *numel; /* [n] */
    int n, next;
    uint64_t bytes;  /* written so far */
};

static moe_status check_specs(const char *path, const moe_st_spec *t, int n, const moe_st_kv *meta, int nmeta,
                              uint64_t *numel)
{
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        uint64_t bytes;
        if (!t[i].name || !t[i].name[0] || !moe_st_utf8_valid(t[i].name) || strcmp(t[i].name, META_KEY) == 0)
            return moe_fail(MOE_ERR_USAGE, "%s: tensor %d has no usable name (non-empty UTF-8, not %s)", path, i,
                            META_KEY);
        if (t[i].ndim < 0 || t[i].ndim > MOE_ST_MAX_DIMS)
            return moe_fail(MOE_ERR_USAGE, "%s: tensor '%s' has %d dims (0..%d)", path, t[i].name, t[i].ndim,
                            MOE_ST_MAX_DIMS);
        for (int d = 0; d < t[i].ndim; d++)
            if (t[i].shape[d] < 0)
                return moe_fail(MOE_ERR_USAGE, "%s: tensor '%s' has a negative dim", path, t[i].name);
        if (!moe_st_shape_numel(t[i].shape, t[i].ndim, 4, &numel[i], &bytes) || bytes > UINT64_MAX - total)
            return moe_fail(MOE_ERR_USAGE, "%s: tensor '%s' is too large", path, t[i].name);
        total += bytes;
        for (int j = 0; j < i; j++)
            if (strcmp(t[j].name, t[i].name) == 0)
                return moe_fail(MOE_ERR_USAGE, "%s: tensor '%s' given twice", path, t[i].name);
    }
    for (int i = 0; i < nmeta; i++) {
        if (!meta[i].key || !meta[i].value || !moe_st_utf8_valid(meta[i].key) || !moe_st_utf8_valid(meta[i].value))
            return moe_fail(MOE_ERR_USAGE, "%s: metadata entry %d is not two UTF-8 strings", path, i);
        for (int j = 0; j < i; j++)
            if (strcmp(meta[j].key, meta[i].key) == 0)
                return moe_fail(MOE_ERR_USAGE, "%s: metadata key '%s' given twice", path, meta[i].key);
    }
    return MOE_OK;
}


/* The header JSON, space-padded to a multiple of 8, in a malloc'ed buffer. */
static moe_status build_header(const char *path, const moe_st_spec *t, const uint64_t *numel, int n,
                               const moe_st_kv *meta, int nmeta, char **out, size_t *len)
{
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    if (!f)
        return moe_fail(MOE_ERR_SYSTEM, "%s: open_memstream: %s", path, strerror(errno));
    fputc('{', f);
    if (nmeta > 0) {
        fputs("\"" META_KEY "\":{", f);
        for (int i = 0; i < nmeta; i++) {
            fputs(i ? "," : "", f);
            moe_json_string(f, meta[i].key);
            fputc(':', f);
            moe_json_string(f, meta[i].value);
        }
        fputc('}', f);
    }
    uint64_t at = 0;
    for (int i = 0; i < n; i++) {
        fputs(i || nmeta > 0 ? "," : "", f);
        moe_json_string(f, t[i].name);
        fputs(":{\"dtype\":\"F32\",\"shape\":[", f);
        for (int d = 0; d < t[i].ndim; d++)
            fprintf(f, "%s%" PRId64, d ? "," : "", t[i].shape[d]);
        fprintf(f, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", at, at + numel[i] * 4);
        at += numel[i] * 4;
    }
    fputc('}', f);
    while ((ftello(f) % 8) != 0)
        fputc(' ', f);
    if (fclose(f) != 0 || !buf) {
        free(buf);
        return moe_fail(MOE_ERR_NOMEM, "%s: building the header failed", path);
    }
    *out = buf;
    *len = size;
    return MOE_OK;
}

static moe_status write_bytes(moe_st_writer *w, const void *p, size_t n)
{
    if (fwrite(p, 1, n, w->f) != n)
        return moe_fail(MOE_ERR_IO, "writing %s: %s", w->tmp, strerror(errno));
    w->bytes += n;
    return MOE_OK;
}

moe_status moe_st_writer_open(moe_st_writer **out, const char *path, const moe_st_spec *t, int n,
                              const moe_st_kv *meta, int nmeta)
{
    *out = NULL;
    if (n < 0 || nmeta < 0 || strlen(path) >= MOE_ST_PATH_MAX)
        return moe_fail(MOE_ERR_USAGE, "%s: bad writer arguments (%d tensors, %d metadata entries)", path, n, nmeta);
    moe_st_writer *w = NULL;
    MOE_TRY(moe_alloc((void **)&w, sizeof *w, "safetensors writer"));
    moe_status st = moe_alloc((void **)&w->numel, sizeof *w->numel * (size_t)(n + 1), "safetensors sizes");
    char *header = NULL;
    size_t hlen = 0;
    w->n = n;
    snprintf(w->path, sizeof w->path, "%s", path);
    snprintf(w->tmp, sizeof w->tmp, "%s.tmp.%ld", path, (long)getpid());
    if (st == MOE_OK)
        st = check_specs(path, t, n, meta, nmeta, w->numel);
    if (st == MOE_OK)
        st = build_header(path, t, w->numel, n, meta, nmeta, &header, &hlen);
    if (st == MOE_OK && hlen > MOE_ST_MAX_HEADER)
        st = moe_fail(MOE_ERR_USAGE, "%s: the header would be %zu bytes (limit %llu)", path, hlen, MOE_ST_MAX_HEADER);
    if (st == MOE_OK && !(w->f = fopen(w->tmp, "wb")))
        st = moe_fail(MOE_ERR_IO, "cannot create %s: %s", w->tmp, strerror(errno));
    if (st == MOE_OK) {
        uint8_t len8[8];
        for (int k = 0; k < 8; k++)
            len8[k] = (uint8_t)((uint64_t)hlen >> (8 * k));
        st = write_bytes(w, len8, 8);
        if (st == MOE_OK)
            st = write_bytes(w, header, hlen);
    }
    free(header);
    if (st != MOE_OK) {
        moe_st_writer_abort(w);
        moe_trace_frame(__FILE__, __LINE__);
        return st;
    }
    *out = w;
    return MOE_OK;
}

moe_status moe_st_writer_put(moe_st_writer *w, const float *data, uint64_t count)
{
    if (w->next >= w->n)
        return moe_fail(MOE_ERR_USAGE, "%s: all %d tensors were already written", w->path, w->n);
    if (count != w->numel[w->next])
        return moe_fail(MOE_ERR_USAGE, "%s: tensor %d has %" PRIu64 " elements, got %" PRIu64, w->path, w->next,
                        w->numel[w->next], count);
    MOE_TRY(write_bytes(w, data, (size_t)count * 4));
    w->next++;
    return MOE_OK;
}

/* The rename is durable only once its directory is synced. */

moe_status moe_st_writer_commit(moe_st_writer *w, uint64_t *file_bytes)
{
    moe_status st = MOE_OK;
    if (w->next != w->n)
        st = moe_fail(MOE_ERR_USAGE, "%s: %d of %d tensors written", w->path, w->next, w->n);
    if (st == MOE_OK && (fflush(w->f) != 0 || fsync(fileno(w->f)) != 0))
        st = moe_fail(MOE_ERR_IO, "writing %s: %s", w->tmp, strerror(errno));
    if (fclose(w->f) != 0 && st == MOE_OK)
        st = moe_fail(MOE_ERR_IO, "closing %s: %s", w->tmp, strerror(errno));
    w->f = NULL;
    if (st == MOE_OK && rename(w->tmp, w->path) != 0)
        st = moe_fail(MOE_ERR_IO, "rename %s to %s: %s", w->tmp, w->path, strerror(errno));
    if (st == MOE_OK)
        st = moe_fsync_parent(w->path);
    if (st == MOE_OK && file_bytes)
        *file_bytes = w->bytes;
    if (st != MOE_OK) {
        moe_st_writer_abort(w);
        moe_trace_frame(__FILE__, __LINE__);
        return st;
    }
    moe_free(w->numel);
    moe_free(w);
    return MOE_OK;
}

void moe_st_writer_abort(moe_st_writer *w)
{
    if (!w)
        return;
    if (w->f)
        fclose(w->f);
    if (w->tmp[0])
        unlink(w->tmp); /* nothing to report: it may not exist */
    moe_free(w->numel);
    moe_free(w);
}

moe_status moe_st_write(const char *path, const moe_st_spec *t, const float *const *data, int n,
                        const moe_st_kv *meta, int nmeta)
{
    moe_st_writer *w;
    MOE_TRY(moe_st_writer_open(&w, path, t, n, meta, nmeta));
    for (int i = 0; i < n; i++) {
        moe_status st = moe_st_writer_put(w, data[i], w->numel[i]);
        if (st != MOE_OK) {
            moe_st_writer_abort(w);
            MOE_TRY(st);
        }
    }
    MOE_TRY(moe_st_writer_commit(w, NULL));
    return MOE_OK;
}
