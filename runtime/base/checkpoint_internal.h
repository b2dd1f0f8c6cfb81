/*
** checkpoint_internal: what the checkpoint module's four files share; not for
** use outside runtime/base/checkpoint*.c. The public interface (and the
** format's story) is checkpoint.h.
**
**   checkpoint_io.c        paths, durable file writes (fsync of files and
**                          directories), exact reads, tree removal, step-N
**                          directory names and listing.
**   checkpoint_manifest.c  shapes and the caller's tensor/part tables; the
**                          manifest: encoding with its checksum trailer,
**                          reading, and its structural checks.
**   checkpoint_write.c     the save: prepare, write_shard, commit, save, the
**                          atomic publish, leftovers of dead saves, keep-last-K.
**   checkpoint_read.c      verify (every shard streamed and hashed), read_rows,
**                          and the loaders (load_dir / latest / path / parts).
**
** Why shared: the writer checks the manifest it builds exactly like a reader
** does (moe_ck_check_manifest), both use the same table checks and the same
** step directory listing, and both sides need the file helpers. Everything
** here is a plain function over caller-owned memory; none of it keeps state.
** Functions returning moe_status have recorded the message (moe_fail), like
** the public ones; those returning int/void report nothing.
*/
#ifndef MOE_CHECKPOINT_INTERNAL_H
#define MOE_CHECKPOINT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "runtime/base/checkpoint.h"
#include "runtime/base/status.h"

#define CKPT_PATH 4096
#define MANIFEST_NAME "manifest.pb"
#define IO_CHUNK ((size_t)4 << 20) /* the read/hash buffer of the streaming checks */

/* ---- checkpoint_io.c: paths and files ------------------------------------ */

/* out = "a/b"; MOE_ERR_USAGE when it does not fit in cap. */
moe_status moe_ck_join(char *out, size_t cap, const char *a, const char *b);
int moe_ck_is_dir(const char *path);
/* "step-" followed by digits only (the only names load considers): 1 and *step. */
int moe_ck_parse_step_name(const char *name, int64_t *step);
/* "step-%07d" */
void moe_ck_step_name(char *out, size_t cap, int64_t step);
/* mkdir -p (runtime/base/fs.h); an existing non-directory is MOE_ERR_INPUT. */
moe_status moe_ck_make_dirs(const char *path);
/* A rename or a new file is durable only once its directory is synced. */
moe_status moe_ck_fsync_dir(const char *path);
/* rm -rf; a missing path is fine. */
moe_status moe_ck_rm_tree(const char *path);
moe_status moe_ck_write_all(FILE *f, const char *path, const void *p, size_t n);
/* fflush + fsync + fclose; f is closed whatever happens. */
moe_status moe_ck_close_synced(FILE *f, const char *path);
/* Creates path holding p[0..n), fsync'ed. */
moe_status moe_ck_write_file_synced(const char *path, const void *p, size_t n);
/* Reads exactly n bytes; a short read is MOE_ERR_INPUT (a truncated file). */
moe_status moe_ck_read_exact(FILE *f, const char *path, void *p, size_t n);

typedef struct {
    int64_t step;
    char name[32];
} moe_ck_step_ent;

/* ROOT's step-N directories, newest first; *out is moe_alloc'ed (the caller
** moe_free's it), NULL when there are none. */
moe_status moe_ck_list_steps(const char *root, moe_ck_step_ent **out, int *count);

/* ---- checkpoint_manifest.c: shapes, tables, manifest checks -------------- */

/* "[d0, d1, ...]" */
void moe_ck_fmt_shape(char *out, size_t cap, const int64_t *dims, size_t nd);
/* Floats in one dim-0 row of a tensor of shape dims (a scalar: 1). */
uint64_t moe_ck_row_elems(const int64_t *dims, int ndim);
/* Checks a part table (the same rules for save and load); what prefixes messages. */
moe_status moe_ck_check_parts(const moe_ckpt_part *p, int n, const char *what);
/* Checks a tensor table (what prefixes messages), then describes each tensor
** as one part holding all its rows: *out is moe_alloc'ed (the caller
** moe_free's it) and points into t's names and data. */
moe_status moe_ck_tensor_parts(const moe_ckpt_tensor *t, int n, const char *what, moe_ckpt_part **out);

/* An entry's dim-0 slice: rows [o, o + l) of g (a scalar is one row). */
void moe_ck_entry_rows(const Moe__TensorEntry *e, int64_t *o, int64_t *l, int64_t *g);
/* qsort comparators over const Moe__TensorEntry *: by name then first row
** (each tensor's slices in row order); by shard then byte offset (file order). */
int moe_ck_cmp_entry_rows(const void *a, const void *b);
int moe_ck_cmp_entry_place(const void *a, const void *b);
/* Everything moe_ckpt_read_manifest checks after parsing; path names the
** manifest in messages. */
moe_status moe_ck_check_manifest(const char *path, const Moe__CheckpointManifest *m);

#endif
