/*
** data_prepare: `moe data prepare`, text files -> token shards (tokfile.h).
**
**   moe data prepare --input FILE... --out DIR [--tokenizer byte]
**                    [--val-fraction F] [--shard-tokens N]
**
** Reads the inputs in order ("-" is stdin), checks each is valid UTF-8,
** tokenizes the concatenation (byte tokenizer: one token per byte, vocab 256),
** keeps the last round(F * ntokens) tokens (F default 0.05) as the validation
** split, and writes DIR/train_000.tok, train_001.tok, ... (at most N tokens
** each, default 100000000), DIR/val_000.tok, ... and DIR/meta.json. DIR is
** created if missing; stale train_NNN.tok / val_NNN.tok files from an earlier
** run with more shards are removed so the loader cannot pick them up. Every
** file is written atomically. Prints a one-line summary on stdout.
*/
#ifndef MOE_DATA_PREPARE_H
#define MOE_DATA_PREPARE_H

/* argv holds the arguments after "prepare" (argv[0] is the first flag; argc
** may be 0). Returns the exit status: 0 ok (also for --help, which prints the
** usage on stdout), 2 bad usage or bad input, 1 a failure while running; on
** failure prints "moe data prepare: error: <what>" on stderr, and the message
** stays readable through moe_errmsg(). */
int moe_data_prepare_main(int argc, char **argv);

#endif
