/*
** train_ckpt: the trainer's state as checkpoint tensors, in one format for
** every parallel layout.
**
** A checkpoint holds every parameter ("model.<name>"), both AdamW moments
** ("optim.m.<name>", "optim.v.<name>") and the expert bias
** ("state.expert_bias"), each described with its GLOBAL shape. It is
** sharded: each owner rank writes its part into its own shard file and the
** manifest records how every tensor is cut (runtime/base/checkpoint.h).
** Owners: in each pipeline stage the rank with dp-cp and tp rank 0 writes
** the stage's non-expert tensors (never the last stage's copy of a tied
** embedding); world rank 0 the state; an expert tensor (E_local, ...) on a
** rank is rows of the global (E, ...) one, written by the ranks whose edp
** and etp ranks are 0 (one per ep rank). Tensor-parallel pieces are
** assembled into full tensors first (see train_ckpt.c).
**
** Save is collective over the world (every rank calls it): rank 0 prepares
** the temporary step directory, the owners write their shards, the shard
** indexes are gathered to rank 0, which writes the manifest and renames the
** directory into place. Any rank's failure fails the save on every rank
** (with that rank's message) and leaves no step directory behind.
**
** Load is collective too: every rank reads only the rows it holds, from
** whichever shards hold them, so a checkpoint saved under one layout loads
** under another (1 rank <-> EP 2 x DP 4, ...). The shard files' whole-file
** checks are spread over the ranks, and the ranks agree on every verdict: a
** corrupt or truncated step is skipped by all of them together (falling back
** to the previous one), a model mismatch stops all of them.
**
** ROOT must be one directory that every rank sees (a shared file system).
*/
#ifndef MOE_TRAIN_CKPT_H
#define MOE_TRAIN_CKPT_H

#include "runtime/trainer.h"

moe_status moe_train_save(moe_trainer *t, const moe_config *cfg, const char *root, long step,
                          uint64_t next_seq);
/* path: a checkpoint root (newest valid step) or one step directory. */
moe_status moe_train_load(moe_trainer *t, const char *path, long *step, uint64_t *next_seq,
                          char *loaded_dir, size_t cap);

#endif
