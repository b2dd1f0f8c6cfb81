/*
** checkpoint: save and load a training step, atomically and verifiably.
**
** Layout (docs/checkpoints.md has the full story):
**
**   ROOT/step-0000100/manifest.pb       CheckpointManifest (proto/checkpoint.proto)
**   ROOT/step-0000100/shard-00000.bin   raw tensor bytes of rank 0, 64-byte aligned
**   ROOT/step-0000100/shard-00002.bin   ... and of every other rank that wrote a part
**
** The manifest records the step, the data loader's position, the RNG state, the
** resolved config, and for every tensor its global shape, the slice a shard
** holds (local shape and offset), where the bytes are and their XXH64. Every
** shard also has a size and a whole-file XXH64, and the manifest ends with an
** XXH64 of itself, so any flipped or missing byte is found before use.
** One process (moe_ckpt_save) writes one shard with every tensor whole. A
** sharded save (moe_ckpt_prepare / moe_ckpt_write_shard / moe_ckpt_commit,
** driven by runtime/train_ckpt.c over MPI; this module does no communication)
** has each writing rank put its dim-0 slices of tensors into its own shard;
** the manifest lists every slice, and together they cover each tensor exactly
** once. Any layout can load any checkpoint: readers ask for dim-0 row ranges
** and get them from whichever slices hold them.
**
** Save is atomic: everything is written into ROOT/.tmp-step-NNNNNNN-<pid>/,
** each file fsync'ed, the directory fsync'ed, then renamed to its final name and
** ROOT fsync'ed. A crash leaves either the old state or the new checkpoint,
** never a half-written step directory under a step-* name. Re-saving a step
** swaps the new directory in (the old one is removed afterwards). One process
** saves into a ROOT at a time.
**
** Load never trusts a byte it has not checked: the manifest's own checksum and
** structure, then every shard's size and checksum and every tensor's checksum,
** then the match of names and shapes against the caller's tensors. Only when
** all of that passes are the caller's buffers written, so a failed load leaves
** the model exactly as it was.
**
** Memory: tensors' `data` belong to the caller (save reads them, load fills
** them). A manifest from moe_ckpt_read_manifest belongs to the caller and is
** freed with moe__checkpoint_manifest__free_unpacked(m, NULL).
**
** Errors: a corrupt, truncated, missing or incompatible checkpoint is
** MOE_ERR_INPUT with a message naming the file (and tensor) and what is wrong;
** a failing system call is MOE_ERR_IO.
*/
#ifndef MOE_CHECKPOINT_H
#define MOE_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "proto/checkpoint.pb-c.h"
#include "runtime/base/status.h"

#define MOE_CKPT_FORMAT_VERSION 1
#define MOE_CKPT_MAX_DIMS 4
#define MOE_CKPT_ALIGN 64 /* byte alignment of every tensor inside a shard */

/* One named fp32 tensor, whole. shape = global shape.
** bytes must equal product(shape[0..ndim)) * sizeof(float); ndim 0..4. */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[MOE_CKPT_MAX_DIMS];
    void *data;
    size_t bytes;
} moe_ckpt_tensor;

/* A dim-0 slice of a tensor: rows [row_start, row_start + rows) of a tensor
** whose GLOBAL shape is shape (a row is product(shape[1..ndim)) floats).
** bytes = rows * row size * sizeof(float). ndim 0 (a scalar) has one row:
** row_start 0, rows 1. Saving: the slice this shard holds (rows may be the
** whole tensor). Loading: the rows the caller wants, into data. */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[MOE_CKPT_MAX_DIMS];
    int64_t row_start, rows;
    void *data;
    size_t bytes;
} moe_ckpt_part;

/* What a resumed run needs besides the tensors to continue bit-exactly. */
typedef struct {
    int64_t step;                /* optimizer steps completed */
    uint64_t data_next_sequence; /* the data loader's next sequence */
    uint64_t rng_state[4];       /* the trainer's moe_rng */
} moe_ckpt_meta;

/* Writes ROOT/step-<meta->step>/ (creating ROOT if needed), replacing an
** existing directory of that step. Leftover .tmp-* directories of earlier,
** interrupted saves are removed first. config_yaml may be NULL.
** keep > 0: afterwards removes every step directory older than the newest
** `keep` intact ones (intact: manifest checks out and shards have their sizes). */
moe_status moe_ckpt_save(const char *root, const moe_ckpt_meta *meta, const moe_ckpt_tensor *t, int n,
                         const char *config_yaml, int keep);

/* Loads one step directory into t[0..n) (matched by name) and *meta. Validates
** everything first; on any failure neither t[i].data nor *meta is written. */
moe_status moe_ckpt_load_dir(const char *dir, moe_ckpt_meta *meta, moe_ckpt_tensor *t, int n);

/* Loads the newest step directory in ROOT that validates completely. One that
** is corrupt or truncated is reported with moe_warn (file and problem) and the
** previous one is tried; a model mismatch (missing/extra tensor, shape) stops at
** once. .tmp-* directories are ignored. loaded_dir (if not NULL) receives the
** directory used. MOE_ERR_INPUT "no checkpoints in ROOT" when there are no
** step directories, or naming ROOT and the last problem when none is valid. */
moe_status moe_ckpt_load_latest(const char *root, moe_ckpt_meta *meta, moe_ckpt_tensor *t, int n, char *loaded_dir,
                                size_t cap);

/* `--load PATH`: a step directory (it holds manifest.pb, or is named step-N)
** is loaded with moe_ckpt_load_dir, anything else as a ROOT with
** moe_ckpt_load_latest. */
moe_status moe_ckpt_load_path(const char *path, moe_ckpt_meta *meta, moe_ckpt_tensor *t, int n, char *loaded_dir,
                              size_t cap);

/* ---- sharded save: prepare (one process), write_shard (each writer), commit (the preparer) ----
** The caller makes sure every write_shard has returned before commit (a
** barrier) and hands commit every writer's index, in rank order. */

/* Creates ROOT if needed, removes leftovers of interrupted saves, and makes
** an empty ROOT/.tmp-step-N-<pid>/ for step; its path goes to tmp_dir. */
moe_status moe_ckpt_prepare(const char *root, int64_t step, char *tmp_dir, size_t cap);

/* Writes TMP_DIR/shard-<rank, 5 digits>.bin holding p[0..n), fsync'ed, and
** returns its index: an opaque byte string (the shard's file entry and its
** slices) in *index (moe_alloc'ed, the caller moe_free's it), *len bytes.
** n == 0 writes no file: *index NULL, *len 0. */
moe_status moe_ckpt_write_shard(const char *tmp_dir, uint32_t rank, const moe_ckpt_part *p, int n, uint8_t **index,
                                size_t *len);

/* Writes the manifest of every index (empty ones are skipped) into tmp_dir,
** checks it like a loader would (every tensor covered exactly once, one
** global shape per name), then renames tmp_dir to ROOT/step-<meta->step>
** (swapping out an existing one) and applies keep like moe_ckpt_save.
** layout (may be NULL) is recorded for people ("dp 2 x ep 2"). On failure
** tmp_dir is removed. */
moe_status moe_ckpt_commit(const char *root, const char *tmp_dir, const moe_ckpt_meta *meta, const char *config_yaml,
                           const char *layout, uint32_t world_size, const uint8_t *const *index, const size_t *len,
                           int nindex, int keep);

/* Removes a prepared tmp_dir after a failed save (errors are only logged). */
void moe_ckpt_discard(const char *tmp_dir);

/* ---- sharded load ---------------------------------------------------------- */

/* Loaders that must decide together (MPI ranks): agree() is called by every
** loader at the same points with its code (0 fine, 1 this step is unusable:
** corrupt, truncated or unreadable, 2 stop: model mismatch or a hard failure)
** and its message (when code != 0); it returns the largest code of all and,
** when that is nonzero, leaves in msg the message of a loader that had it
** (-1: the agreement itself failed, with the reason in moe_errmsg). Shard
** file s is checked whole (size, every slice, whole-file checksum) by the
** loader with s % size == rank, so the group together checks every byte
** while each one reads only the slices it asks for. */
typedef struct {
    int rank, size;
    int (*agree)(void *ctx, int code, char *msg, size_t cap);
    /* Optional, for loaders that each ask for a subset of the tensors
    ** (pipeline stages): flags[i] becomes 1 on every loader when any loader
    ** had it 1; returns 0, or -1 when the exchange failed. Without it every
    ** loader must ask for every tensor. */
    int (*any)(void *ctx, int32_t *flags, int n);
    void *ctx;
} moe_ckpt_group;

/* Like moe_ckpt_load_path, for slices: PATH is a step directory or a ROOT
** (newest usable step, falling back like moe_ckpt_load_latest). Every name
** in the checkpoint must be asked for by some part (of some loader, with
** g->any) and every part must match
** its global shape; rows may come from any number of shards. Each slice
** read is checked against its checksum and its shard's size. g NULL: one
** loader (it also checks every shard whole). Nothing is written to the
** parts or *meta unless every loader's checks pass. */
moe_status moe_ckpt_load_parts(const char *path, moe_ckpt_meta *meta, moe_ckpt_part *p, int n,
                               const moe_ckpt_group *g, char *loaded_dir, size_t cap);

/* Reads rows [start, start + count) of tensor `name` (count * row size * 4 =
** bytes) from the shards of dir's manifest m that hold them, checking the
** checksum of every slice it reads from (each one is read whole). */
moe_status moe_ckpt_read_rows(const char *dir, const Moe__CheckpointManifest *m, const char *name, int64_t start,
                              int64_t count, void *out, size_t bytes);

/* Reads DIR/manifest.pb, checks its trailer checksum, format version and
** internal consistency (shapes, byte ranges inside their shard, no overlaps,
** every tensor's slices cut along dim 0 and covering it exactly once with one
** global shape). Does not read shards. On failure *out is NULL. */
moe_status moe_ckpt_read_manifest(const char *dir, Moe__CheckpointManifest **out);

/* PATH as a loader takes it (a step directory, named step-N or holding a
** manifest, or a ROOT whose newest fully valid step is used, falling back
** past unusable ones with a warning): dir gets the step directory and *m
** its manifest, every byte it describes verified. The caller frees *m with
** moe__checkpoint_manifest__free_unpacked. */
moe_status moe_ckpt_open_verified(const char *path, char *dir, size_t cap, Moe__CheckpointManifest **m);
/* Does ROOT hold any step-N directory? (A missing ROOT holds none.) */
int moe_ckpt_has_steps(const char *root);

/* Reads every shard of a manifest from moe_ckpt_read_manifest and checks sizes
** and checksums. shard_ok[m->n_shards] and tensor_ok[m->n_tensors] (either may
** be NULL) get 1 for each one that checks out, 0 otherwise; all are checked
** even after a failure, and the status describes the first problem found
** (a bad tensor is named). */
moe_status moe_ckpt_verify(const char *dir, const Moe__CheckpointManifest *m, int *shard_ok, int *tensor_ok);

/* Writes DIR/manifest.pb (packed m plus its checksum trailer; m->manifest_xxh64
** is ignored) and fsyncs it. For tools that rewrite manifests. */
moe_status moe_ckpt_write_manifest(const char *dir, const Moe__CheckpointManifest *m);

#endif
