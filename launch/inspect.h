/*
** inspect: `moe inspect KIND ...`, read-only views of moe.c's files.
**
**   moe inspect checkpoint DIR [--json]
**
** checkpoint: DIR is one step directory (ROOT/step-NNNNNNN). Prints the step,
** the data position, the RNG state, the shards and every tensor (name, shape,
** bytes, checksum) after checking every checksum in it (moe_ckpt_verify).
** With --json, one JSON object on stdout and nothing else there; 64-bit
** hashes and RNG words are 16-digit hex strings so no JSON reader rounds them.
**
** Exit status: 0 valid; 2 bad usage or an invalid checkpoint (the message on
** stderr names the file, the tensor and what is wrong); 1 an I/O failure.
** Kinds `plan` and `trace` come with the planner and routing traces.
*/
#ifndef MOE_INSPECT_H
#define MOE_INSPECT_H

/* argv[0] is the kind (the words after `moe inspect`); returns the exit status. */
int moe_inspect_main(int argc, char **argv);

#endif
