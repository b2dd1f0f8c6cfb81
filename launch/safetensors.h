/*
** safetensors: the Hugging Face tensor file format, written and read strictly.
**
** Layout (https://github.com/huggingface/safetensors):
**
**   8 bytes   N, the header length, unsigned little-endian
**   N bytes   a JSON object (UTF-8), space-padded at its end:
**             {"__metadata__": {"key": "value", ...},          optional
**              "NAME": {"dtype": "F32", "shape": [d0, d1, ...],
**                       "data_offsets": [BEGIN, END]}, ...}
**   the rest  the data buffer; tensor NAME is bytes [BEGIN, END) of it,
**             row-major, little-endian
**
** The writer puts out F32 tensors in the order given, back to back from
** offset 0, with the header padded so the buffer starts 8-byte aligned (what
** the reference implementation does), into a temporary file that is fsync'ed
** and renamed over the target only once complete.
**
** The reader trusts nothing. It refuses, with MOE_ERR_INPUT and a message
** naming the file (and the tensor when there is one):
**   - a file too short for the length, a header length over 100,000,000 bytes
**     (the reference's bound) or running past the end of the file;
**   - a header that is not exactly this grammar: a JSON object whose values are
**     tensor objects with exactly the keys dtype, shape and data_offsets, plus
**     at most one "__metadata__" object of string values; integers without
**     sign, fraction or exponent; strings valid UTF-8 with no NUL; nothing
**     after the object but spaces; any duplicated key (so every name is unique);
**   - a dtype other than F32, F16, BF16, F64 (the others are named as not
**     supported, an unknown one as unknown); more than MOE_ST_MAX_DIMS dims;
**   - data_offsets whose length is not product(shape) * dtype size, or that
**     reach past the buffer; tensors that overlap, leave a hole, or do not
**     cover the buffer exactly from 0 to its end (no trailing bytes).
** Values are read as float: F16, BF16 and F64 are converted (an F64 value
** beyond the float range is refused, naming the tensor and element).
**
** Memory: an open moe_st_file owns its tensor table, its metadata and every
** string in them (names point into it) until moe_st_close. A writer owns
** nothing of the caller's: names and shapes are copied into the header at
** open, data is written by each put.
**
** Errors: bad input is MOE_ERR_INPUT, bad arguments (a writer given a
** duplicate name, a wrong count) MOE_ERR_USAGE, failing system calls
** MOE_ERR_IO; each message names the file.
*/
#ifndef MOE_SAFETENSORS_H
#define MOE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "runtime/base/status.h"

#define MOE_ST_MAX_HEADER 100000000ull /* bytes of JSON, as the reference reader */
#define MOE_ST_MAX_DIMS 8
#define MOE_ST_PATH_MAX 4096

typedef enum { MOE_ST_F32 = 0, MOE_ST_F16, MOE_ST_BF16, MOE_ST_F64 } moe_st_dtype;

/* "F32", "F16", "BF16", "F64"; bytes of one element. */
const char *moe_st_dtype_name(moe_st_dtype d);
size_t moe_st_dtype_size(moe_st_dtype d);

typedef struct {
    const char *key, *value;
} moe_st_kv;

/* One tensor of an open file; shape[0..ndim) (ndim 0: a scalar, one element). */
typedef struct {
    const char *name;
    moe_st_dtype dtype;
    int ndim;
    int64_t shape[MOE_ST_MAX_DIMS];
    uint64_t numel;
    uint64_t begin, end; /* bytes [begin, end) of the data buffer */
} moe_st_info;

typedef struct {
    char path[MOE_ST_PATH_MAX];
    FILE *f;
    uint64_t data_start; /* 8 + N: where the data buffer starts in the file */
    uint64_t data_size;  /* bytes in the data buffer */
    moe_st_info *t;      /* [n], in header order */
    int n;
    moe_st_kv *meta;     /* [nmeta], the __metadata__ entries in header order */
    int nmeta;
    char *pool;          /* the decoded strings */
} moe_st_file;

/* Opens path and checks its header completely (see above); the data bytes are
** read only by moe_st_read. On failure *f is left closed (moe_st_close on it
** is harmless). */
moe_status moe_st_open(moe_st_file *f, const char *path);
void moe_st_close(moe_st_file *f);

/* Index of tensor name, or -1. */
int moe_st_find(const moe_st_file *f, const char *name);
/* Value of metadata key, or NULL. */
const char *moe_st_meta_get(const moe_st_file *f, const char *key);

/* Reads tensor i as count floats into out (count must be its numel),
** converting from its dtype. */
moe_status moe_st_read(moe_st_file *f, int i, float *out, uint64_t count);

/* ---- writing ------------------------------------------------------------- */

/* A tensor to write: its name (non-empty UTF-8, not "__metadata__") and shape. */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[MOE_ST_MAX_DIMS];
} moe_st_spec;

typedef struct moe_st_writer moe_st_writer;

/* Starts path: checks the specs (unique names, shapes), writes the header
** (meta may be NULL with nmeta 0) into a temporary file beside path. */
moe_status moe_st_writer_open(moe_st_writer **out, const char *path, const moe_st_spec *t, int n,
                              const moe_st_kv *meta, int nmeta);
/* The next tensor's data, in spec order: count (its numel) floats. */
moe_status moe_st_writer_put(moe_st_writer *w, const float *data, uint64_t count);
/* After every tensor was put: fsync, rename over path, fsync the directory.
** Frees w whatever happens (on failure the temporary file is removed). */
moe_status moe_st_writer_commit(moe_st_writer *w, uint64_t *file_bytes);
/* Gives up: removes the temporary file and frees w (NULL is fine). */
void moe_st_writer_abort(moe_st_writer *w);

/* All at once: data[i] holds tensor i's numel floats. */
moe_status moe_st_write(const char *path, const moe_st_spec *t, const float *const *data, int n,
                        const moe_st_kv *meta, int nmeta);

#endif
