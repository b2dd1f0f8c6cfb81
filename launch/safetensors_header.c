/*
** The header parser is a recursive-descent reader of exactly the grammar in
** safetensors.h, not a general JSON parser: it knows where tensor objects and
** the metadata object may stand, so nothing else can slip through. Decoded
** strings go into one pool sized by the header (a decoded string plus its NUL
** is never longer than its quoted source); the tables grow as entries come.
*/
#include "launch/safetensors_internal.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/mem.h"


static const char *DTYPE_NAMES[] = {"F32", "F16", "BF16", "F64"};
static const size_t DTYPE_SIZES[] = {4, 2, 2, 8};

/* Real safetensors dtypes this reader does not take (named as such). */
static const char *OTHER_DTYPES[] = {"BOOL", "U8",  "I8",      "I16",     "U16",     "I32",     "U32",
                                     "I64",  "U64", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F6_E2M3", "F6_E3M2",
                                     "F4",   "C64"};

const char *moe_st_dtype_name(moe_st_dtype d) { return DTYPE_NAMES[d]; }
size_t moe_st_dtype_size(moe_st_dtype d) { return DTYPE_SIZES[d]; }

static void fmt_shape(char *out, size_t cap, const int64_t *d, int n)
{
    size_t k = (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < n && k < cap; i++)
        k += (size_t)snprintf(out + k, cap - k, "%s%" PRId64, i ? ", " : "", d[i]);
    if (k < cap)
        snprintf(out + k, cap - k, "]");
}

/* product(shape) and its byte size, refusing overflow; 0 on overflow. */
int moe_st_shape_numel(const int64_t *shape, int ndim, size_t elem, uint64_t *numel, uint64_t *bytes)
{
    uint64_t n = 1;
    for (int d = 0; d < ndim; d++) {
        uint64_t s = (uint64_t)shape[d];
        if (s != 0 && n > UINT64_MAX / s)
            return 0;
        n *= s;
    }
    if (n > UINT64_MAX / elem)
        return 0;
    *numel = n;
    *bytes = n * elem;
    return 1;
}

/* ---- UTF-8 ---------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s[0..n) (no overlongs, surrogates or
** code points past U+10FFFF), 0 when it is not one. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    uint32_t cp, min;
    if (c < 0x80)
        return 1;
    if ((c & 0xe0) == 0xc0) {
        len = 2, cp = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        len = 3, cp = c & 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
        len = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

int moe_st_utf8_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(p + i, n - i);
        if (k == 0)
            return 0;
        i += k;
    }
    return 1;
}

static size_t utf8_put(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* ---- the header parser ------------------------------------------------------ */

typedef struct {
    const char *path;
    const unsigned char *s;
    size_t n, i;
    char *pool;
    size_t used;
    const char *tensor; /* the tensor being parsed, for messages; NULL outside one */
    moe_st_info *t;
    int nt, cap_t;
    moe_st_kv *meta;
    int nmeta, cap_meta, seen_meta;
} parser;

static moe_status bad(parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static moe_status bad(parser *p, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (p->tensor)
        return moe_fail(MOE_ERR_INPUT, "%s: tensor '%s': %s (header byte %zu)", p->path, p->tensor, what, p->i);
    return moe_fail(MOE_ERR_INPUT, "%s: bad safetensors header: %s (header byte %zu)", p->path, what, p->i);
}

/* Room for one more element in *arr (count used, *cap allocated): doubles.
** Growing as entries are parsed keeps memory proportional to what the header
** really holds (each entry costs tens of header bytes), never to a bound a
** hostile header could inflate. */
static moe_status grow(void **arr, int count, int *cap, size_t elem, const char *what)
{
    if (count < *cap)
        return MOE_OK;
    int ncap = *cap ? 2 * *cap : 16;
    void *n = NULL;
    MOE_TRY(moe_alloc(&n, elem * (size_t)ncap, what));
    if (count > 0)
        memcpy(n, *arr, elem * (size_t)count);
    moe_free(*arr);
    *arr = n;
    *cap = ncap;
    return MOE_OK;
}

static void skip_ws(parser *p)
{
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r'))
        p->i++;
}

/* The next non-space byte (0 at the end). */
static int peek(parser *p)
{
    skip_ws(p);
    return p->i < p->n ? p->s[p->i] : 0;
}

static moe_status expect(parser *p, char c)
{
    char want[2] = {c, 0};
    if (peek(p) != c)
        return bad(p, "expected '%s'", want);
    p->i++;
    return MOE_OK;
}

static int hex4(const unsigned char *s, uint32_t *out)
{
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        unsigned c = s[k];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= c - '0';
        else if (c >= 'a' && c <= 'f')
            v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v |= c - 'A' + 10;
        else
            return 0;
    }
    *out = v;
    return 1;
}

/* A \u escape: four hex digits (and the low surrogate's escape after a high one),
** at p->i just past "\u". */
static moe_status unicode_escape(parser *p, uint32_t *cp)
{
    if (p->i + 4 > p->n || !hex4(p->s + p->i, cp))
        return bad(p, "\\u needs 4 hex digits");
    p->i += 4;
    if (*cp >= 0xdc00 && *cp <= 0xdfff)
        return bad(p, "a lone low surrogate in \\u escape");
    if (*cp >= 0xd800 && *cp <= 0xdbff) {
        uint32_t lo;
        if (p->i + 6 > p->n || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u' || !hex4(p->s + p->i + 2, &lo) ||
            lo < 0xdc00 || lo > 0xdfff)
            return bad(p, "a high surrogate not followed by a low one");
        p->i += 6;
        *cp = 0x10000 + ((*cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    if (*cp == 0)
        return bad(p, "a NUL character in a string");
    return MOE_OK;
}

/* A JSON string, decoded into the pool; *out points at it. */
static moe_status parse_string(parser *p, const char **out)
{
    if (peek(p) != '"')
        return bad(p, "expected a string");
    p->i++;
    char *dst = p->pool + p->used;
    size_t k = 0;
    for (;;) {
        if (p->i >= p->n)
            return bad(p, "unterminated string");
        unsigned c = p->s[p->i];
        if (c == '"') {
            p->i++;
            break;
        }
        if (c < 0x20)
            return bad(p, "a raw control character in a string");
        if (c >= 0x80) {
            size_t len = utf8_seq(p->s + p->i, p->n - p->i);
            if (len == 0)
                return bad(p, "invalid UTF-8 in a string");
            memcpy(dst + k, p->s + p->i, len);
            k += len;
            p->i += len;
            continue;
        }
        p->i++;
        if (c != '\\') {
            dst[k++] = (char)c;
            continue;
        }
        if (p->i >= p->n)
            return bad(p, "unterminated string");
        c = p->s[p->i++];
        uint32_t cp = 0;
        switch (c) {
        case '"': case '\\': case '/': dst[k++] = (char)c; break;
        case 'b': dst[k++] = '\b'; break;
        case 'f': dst[k++] = '\f'; break;
        case 'n': dst[k++] = '\n'; break;
        case 'r': dst[k++] = '\r'; break;
        case 't': dst[k++] = '\t'; break;
        case 'u':
            MOE_TRY(unicode_escape(p, &cp));
            k += utf8_put(dst + k, cp);
            break;
        default:
            p->i--;
            return bad(p, "unknown escape in a string");
        }
    }
    dst[k] = '\0';
    p->used += k + 1;
    *out = dst;
    return MOE_OK;
}

/* A non-negative JSON integer no larger than max. */
static moe_status parse_uint(parser *p, uint64_t max, uint64_t *out)
{
    int c = peek(p);
    if (c == '-')
        return bad(p, "a negative number");
    if (c < '0' || c > '9')
        return bad(p, "expected a non-negative integer");
    if (c == '0' && p->i + 1 < p->n && p->s[p->i + 1] >= '0' && p->s[p->i + 1] <= '9')
        return bad(p, "a number with a leading zero");
    uint64_t v = 0;
    while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') {
        unsigned d = p->s[p->i] - '0';
        if (v > (max - d) / 10)
            return bad(p, "a number too large");
        v = v * 10 + d;
        p->i++;
    }
    if (p->i < p->n && (p->s[p->i] == '.' || p->s[p->i] == 'e' || p->s[p->i] == 'E'))
        return bad(p, "a number that is not an integer");
    *out = v;
    return MOE_OK;
}

static moe_status parse_dtype(parser *p, moe_st_dtype *out)
{
    const char *s;
    size_t at = p->i;
    MOE_TRY(parse_string(p, &s));
    for (int d = 0; d < 4; d++)
        if (strcmp(s, DTYPE_NAMES[d]) == 0) {
            *out = (moe_st_dtype)d;
            return MOE_OK;
        }
    p->i = at;
    for (size_t d = 0; d < sizeof OTHER_DTYPES / sizeof *OTHER_DTYPES; d++)
        if (strcmp(s, OTHER_DTYPES[d]) == 0)
            return bad(p, "dtype %s is not supported (this reader takes F32, F16, BF16, F64)", s);
    return bad(p, "unknown dtype '%s'", s);
}

static moe_status parse_shape(parser *p, moe_st_info *t)
{
    MOE_TRY(expect(p, '['));
    t->ndim = 0;
    if (peek(p) == ']') {
        p->i++;
        return MOE_OK;
    }
    for (;;) {
        if (t->ndim == MOE_ST_MAX_DIMS)
            return bad(p, "more than 8 dims in shape");
        uint64_t d;
        MOE_TRY(parse_uint(p, INT64_MAX, &d));
        t->shape[t->ndim++] = (int64_t)d;
        int c = peek(p);
        p->i++;
        if (c == ']')
            return MOE_OK;
        if (c != ',') {
            p->i--;
            return bad(p, "expected ',' or ']' in shape");
        }
    }
}

static moe_status parse_offsets(parser *p, moe_st_info *t)
{
    MOE_TRY(expect(p, '['));
    MOE_TRY(parse_uint(p, UINT64_MAX, &t->begin));
    if (peek(p) != ',')
        return bad(p, "data_offsets must be [BEGIN, END]");
    p->i++;
    MOE_TRY(parse_uint(p, UINT64_MAX, &t->end));
    if (peek(p) != ']')
        return bad(p, "data_offsets must be [BEGIN, END]");
    p->i++;
    return MOE_OK;
}

/* {"dtype": ..., "shape": [...], "data_offsets": [b, e]}, each key once, no other. */
static moe_status parse_tensor(parser *p, moe_st_info *t)
{
    int have[3] = {0, 0, 0};
    MOE_TRY(expect(p, '{'));
    if (peek(p) == '}')
        return bad(p, "empty tensor object");
    for (;;) {
        const char *key;
        size_t at = p->i;
        MOE_TRY(parse_string(p, &key));
        p->used -= strlen(key) + 1; /* keys are not kept */
        int k = strcmp(key, "dtype") == 0 ? 0 : strcmp(key, "shape") == 0 ? 1 : strcmp(key, "data_offsets") == 0 ? 2 : -1;
        if (k < 0) {
            p->i = at;
            return bad(p, "unknown key '%s' (a tensor has dtype, shape, data_offsets)", key);
        }
        if (have[k]) {
            p->i = at;
            return bad(p, "key '%s' given twice", key);
        }
        have[k] = 1;
        MOE_TRY(expect(p, ':'));
        if (k == 0)
            MOE_TRY(parse_dtype(p, &t->dtype));
        else if (k == 1)
            MOE_TRY(parse_shape(p, t));
        else
            MOE_TRY(parse_offsets(p, t));
        int c = peek(p);
        p->i++;
        if (c == '}')
            break;
        if (c != ',') {
            p->i--;
            return bad(p, "expected ',' or '}'");
        }
    }
    static const char *KEYS[3] = {"dtype", "shape", "data_offsets"};
    for (int k = 0; k < 3; k++)
        if (!have[k])
            return bad(p, "no '%s'", KEYS[k]);
    return MOE_OK;
}

static moe_status parse_metadata(parser *p)
{
    if (p->seen_meta)
        return bad(p, "key '%s' given twice", META_KEY);
    p->seen_meta = 1;
    MOE_TRY(expect(p, '{'));
    if (peek(p) == '}') {
        p->i++;
        return MOE_OK;
    }
    for (;;) {
        MOE_TRY(grow((void **)&p->meta, p->nmeta, &p->cap_meta, sizeof *p->meta, "safetensors metadata"));
        moe_st_kv *kv = &p->meta[p->nmeta];
        MOE_TRY(parse_string(p, &kv->key));
        MOE_TRY(expect(p, ':'));
        if (peek(p) != '"')
            return bad(p, "__metadata__ value of '%s' is not a string", kv->key);
        MOE_TRY(parse_string(p, &kv->value));
        p->nmeta++;
        int c = peek(p);
        p->i++;
        if (c == '}')
            return MOE_OK;
        if (c != ',') {
            p->i--;
            return bad(p, "expected ',' or '}' in __metadata__");
        }
    }
}

static moe_status parse_header(parser *p)
{
    if (p->n == 0 || p->s[0] != '{')
        return bad(p, "the header does not start with '{'");
    p->i = 1;
    if (peek(p) == '}') {
        p->i++;
    } else {
        for (;;) {
            const char *name;
            MOE_TRY(parse_string(p, &name));
            MOE_TRY(expect(p, ':'));
            if (strcmp(name, META_KEY) == 0) {
                MOE_TRY(parse_metadata(p));
            } else {
                MOE_TRY(grow((void **)&p->t, p->nt, &p->cap_t, sizeof *p->t, "safetensors tensors"));
                if (name[0] == '\0')
                    return bad(p, "a tensor with an empty name");
                moe_st_info *t = &p->t[p->nt];
                memset(t, 0, sizeof *t);
                t->name = name;
                p->tensor = name;
                MOE_TRY(parse_tensor(p, t));
                p->tensor = NULL;
                p->nt++;
            }
            int c = peek(p);
            p->i++;
            if (c == '}')
                break;
            if (c != ',') {
                p->i--;
                return bad(p, "expected ',' or '}'");
            }
        }
    }
    while (p->i < p->n && p->s[p->i] == ' ') /* the padding */
        p->i++;
    if (p->i != p->n)
        return bad(p, "bytes after the header object that are not space padding");
    return MOE_OK;
}

/* ---- the table's checks ---------------------------------------------------- */

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(const moe_st_info *const *)a)->name, (*(const moe_st_info *const *)b)->name);
}

static int cmp_place(const void *a, const void *b)
{
    const moe_st_info *x = *(const moe_st_info *const *)a, *y = *(const moe_st_info *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp((*(const moe_st_kv *const *)a)->key, (*(const moe_st_kv *const *)b)->key);
}

/* Metadata keys are unique (sorted, so a huge header costs n log n). */
static moe_status check_meta(const char *path, const moe_st_kv *meta, int n)
{
    const moe_st_kv **v = NULL;
    MOE_TRY(moe_alloc((void **)&v, sizeof *v * (size_t)(n + 1), "safetensors metadata"));
    for (int i = 0; i < n; i++)
        v[i] = &meta[i];
    qsort(v, (size_t)n, sizeof *v, cmp_key);
    moe_status st = MOE_OK;
    for (int i = 1; i < n && st == MOE_OK; i++)
        if (strcmp(v[i - 1]->key, v[i]->key) == 0)
            st = moe_fail(MOE_ERR_INPUT, "%s: __metadata__ key '%s' is given twice", path, v[i]->key);
    moe_free(v);
    return st;
}

/* Each tensor's byte count against its shape, and the buffer: every byte
** in exactly one tensor. */
static moe_status check_table(const char *path, moe_st_info *t, int n, uint64_t data_size)
{
    for (int i = 0; i < n; i++) {
        uint64_t bytes;
        char shape[256];
        fmt_shape(shape, sizeof shape, t[i].shape, t[i].ndim);
        if (!moe_st_shape_numel(t[i].shape, t[i].ndim, DTYPE_SIZES[t[i].dtype], &t[i].numel, &bytes))
            return moe_fail(MOE_ERR_INPUT, "%s: tensor '%s': shape %s is too large", path, t[i].name, shape);
        if (t[i].end < t[i].begin)
            return moe_fail(MOE_ERR_INPUT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin",
                            path, t[i].name, t[i].begin, t[i].end);
        if (t[i].end - t[i].begin != bytes)
            return moe_fail(MOE_ERR_INPUT,
                            "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
                            " bytes, but %s %s needs %" PRIu64,
                            path, t[i].name, t[i].begin, t[i].end, t[i].end - t[i].begin, DTYPE_NAMES[t[i].dtype],
                            shape, bytes);
        if (t[i].end > data_size)
            return moe_fail(MOE_ERR_INPUT,
                            "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] reach past the data buffer (%" PRIu64
                            " bytes; the file is truncated?)",
                            path, t[i].name, t[i].begin, t[i].end, data_size);
    }
    moe_st_info **v = NULL;
    MOE_TRY(moe_alloc((void **)&v, sizeof *v * (size_t)(n + 1), "safetensors table"));
    for (int i = 0; i < n; i++)
        v[i] = &t[i];
    moe_status st = MOE_OK;
    qsort(v, (size_t)n, sizeof *v, cmp_name);
    for (int i = 1; i < n && st == MOE_OK; i++)
        if (strcmp(v[i - 1]->name, v[i]->name) == 0)
            st = moe_fail(MOE_ERR_INPUT, "%s: tensor '%s' is listed twice", path, v[i]->name);
    qsort(v, (size_t)n, sizeof *v, cmp_place);
    uint64_t at = 0;
    for (int i = 0; i < n && st == MOE_OK; i++) {
        if (v[i]->begin > at)
            st = moe_fail(MOE_ERR_INPUT, "%s: tensor '%s' starts at byte %" PRIu64 " of the data, leaving bytes [%" PRIu64
                          ", %" PRIu64 ") in no tensor (a hole)", path, v[i]->name, v[i]->begin, at, v[i]->begin);
        else if (v[i]->begin < at)
            st = moe_fail(MOE_ERR_INPUT, "%s: tensor '%s' (bytes [%" PRIu64 ", %" PRIu64 ")) overlaps tensor '%s' (ending at %" PRIu64 ")",
                          path, v[i]->name, v[i]->begin, v[i]->end, v[i - 1]->name, at);
        at = v[i]->end;
    }
    if (st == MOE_OK && at != data_size)
        st = moe_fail(MOE_ERR_INPUT, "%s: the data buffer has %" PRIu64 " bytes but the tensors cover %" PRIu64
                      " (%" PRIu64 " bytes in no tensor at its end)", path, data_size, at, data_size - at);
    moe_free(v);
    return st;
}

moe_status moe_st_parse_header(moe_st_file *f, const unsigned char *h, size_t n)
{
    parser p = {.path = f->path, .s = h, .n = n, .pool = f->pool};
    moe_status st = parse_header(&p);
    f->t = p.t; /* the file owns the tables from here, whatever happened */
    f->meta = p.meta;
    f->n = p.nt;
    f->nmeta = p.nmeta;
    if (st == MOE_OK)
        st = check_meta(f->path, f->meta, f->nmeta);
    if (st == MOE_OK)
        st = check_table(f->path, f->t, f->n, f->data_size);
    return st;
}
