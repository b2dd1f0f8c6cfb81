/*
** checkpoint_cmd: `moe checkpoint export|import`, moe.c checkpoints to and
** from safetensors files (launch/safetensors.h), for other tools (PyTorch,
** Hugging Face) and back.
**
**   moe checkpoint export --from PATH --safetensors OUT [--with-optimizer]
**   moe checkpoint import --safetensors IN --config CFG.yaml --to ROOT [--step N]
**
** export: PATH is a step directory, or a checkpoint root whose newest step
** that verifies completely is used (a broken newer one is skipped with a
** warning, like `moe train --load`). Every byte is verified (manifest,
** shards, checksums) before anything is written. Each "model.X" tensor
** becomes "X" (F32, its global shape, however the checkpoint was sharded);
** --with-optimizer adds the training state under its own names: "optim.m.X",
** "optim.v.X", "state.expert_bias". __metadata__: "format" "pt", "moe.step",
** "moe.data_next_sequence" and "moe.config" (the checkpoint's config YAML).
** OUT is written to a temporary file and renamed into place.
**
** import: builds the model of CFG.yaml (vocab-size must be set) on one rank to
** learn every parameter's name and global shape, and requires IN to hold
** exactly those: each as "X" or "model.X", F32/F16/BF16/F64, with exactly its
** shape. A missing parameter, a wrong shape and an extra tensor are refused,
** naming the tensor and both shapes. Optimizer moments are zero and the step
** 0 unless IN carries optim.* tensors (then all of them, for every parameter;
** step and data position come from its moe.* metadata); the expert bias is
** zero unless IN has "state.expert_bias". --step N sets the step. Values must
** be finite (second moments also non-negative). The result is one step
** directory ROOT/step-N written by moe_ckpt_save (single shard), which
** `moe train --load ROOT` resumes from. ROOT must hold no step directories
** yet, so that the imported step is the one a load picks.
**
** Exit status (moe_cmd_exit): 0 ok; 2 bad usage or bad input (a corrupt
** checkpoint, a hostile or mismatched safetensors file); 1 a failure while
** running (I/O, memory).
*/
#ifndef MOE_CHECKPOINT_CMD_H
#define MOE_CHECKPOINT_CMD_H

#include <stdint.h>

#include "runtime/base/status.h"

#define MOE_CKPT_CMD_PATH 4096

typedef struct {
    int tensors;                  /* written to the file / the checkpoint */
    uint64_t bytes;               /* of the safetensors file / of tensor data */
    int64_t step;
    int with_optimizer;           /* export: asked for; import: IN had moments */
    char dir[MOE_CKPT_CMD_PATH];  /* the step directory read / written */
} moe_ckpt_cmd_summary;

/* argv[0] is "export" or "import" (the words after `moe checkpoint`);
** returns the exit status. */
int moe_checkpoint_main(int argc, char **argv);

/* The two commands without the command line. */
moe_status moe_checkpoint_export(const char *from, const char *out, int with_optimizer, moe_ckpt_cmd_summary *sum);
/* step < 0: the default (0, or IN's moe.step when IN carries moments). */
moe_status moe_checkpoint_import(const char *in, const char *config_path, const char *root, int64_t step,
                                 moe_ckpt_cmd_summary *sum);

#endif
