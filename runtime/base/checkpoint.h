/*
** checkpoint: save and load a training step, atomically and verifiably.
**
** Layout (docs/checkpoints.md has the full story):
**
**   ROOT/step-0000100/manifest.pb       CheckpointManifest (proto/checkpoint.proto)
**   ROOT/step-0000100/shard-00000.bin   raw tensor bytes of rank 0, 64-byte aligned
**
** The manifest records the step, the data loader's position, the RNG state, the
** resolved config, and for every tensor its global shape, the slice a shard
** holds (local shape and offset), where the bytes are and their XXH64. Every
** shard also has a size and a whole-file XXH64, and the manifest ends with an
** XXH64 of itself, so any flipped or missing byte is found before use.
** Today one process saves everything: world_size 1, one shard, local == global.
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

/* One named fp32 tensor. shape = global shape (today local == global).
** bytes must equal product(shape[0..ndim)) * sizeof(float); ndim 0..4. */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[MOE_CKPT_MAX_DIMS];
    void *data;
    size_t bytes;
} moe_ckpt_tensor;

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

/* Reads DIR/manifest.pb, checks its trailer checksum, format version and
** internal consistency (names unique, shapes, byte ranges inside their shard,
** no overlaps). Does not read shards. On failure *out is NULL. */
moe_status moe_ckpt_read_manifest(const char *dir, Moe__CheckpointManifest **out);

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
