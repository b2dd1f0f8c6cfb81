/*
** train_ckpt: the trainer's state as checkpoint tensors, in one format for
** every parallel layout.
**
** A checkpoint holds every parameter ("model.<name>"), both AdamW moments
** ("optim.m.<name>", "optim.v.<name>") and the expert bias
** ("state.expert_bias"), each with its GLOBAL shape. Under expert
** parallelism the expert tensors are gathered over the ep group (in expert
** order) and world rank 0 writes; on load every rank reads the checkpoint and
** keeps its own experts. So a checkpoint saved under one layout loads under
** another with the same model.
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
