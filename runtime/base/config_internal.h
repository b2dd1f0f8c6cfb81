/*
** config_internal: what the config module's three files share; not for use
** outside runtime/base/config*.c. The public interface is config.h.
**
**   config.c        the key table, messages, the setter (one key from text),
**                   defaults, moe-layer-freq parsing, command line, --help.
**   config_yaml.c   reading a YAML file through the setter; writing one back.
**   config_check.c  moe_config_validate: per-key ranges again, and the
**                   relations between keys.
**
** The table (moe_cfg_keys, moe_cfg_nkeys rows) is the only list of keys;
** the other files walk it rather than naming fields. It is constant data
** and owns no memory. Every function here reports failures as moe_status
** with the message already recorded (moe_fail), like the public ones.
*/
#ifndef MOE_CONFIG_INTERNAL_H
#define MOE_CONFIG_INTERNAL_H

#include <stddef.h>

#include "runtime/base/config.h"

typedef enum { T_INT, T_U64, T_DOUBLE, T_BOOL, T_STRING, T_ENUM, T_LAYER_FREQ } moe_cfg_type;

enum { MIN_EXCL = 1, MAX_EXCL = 2 }; /* range bounds that are open */

typedef struct {
    const char *name;            /* Megatron's flag without the dashes */
    moe_cfg_type type;
    size_t off;                  /* offset of the field in moe_config */
    size_t size;                 /* T_STRING, T_LAYER_FREQ: bytes of the field, NUL included */
    double min, max;             /* T_INT, T_DOUBLE: allowed range */
    int excl;                    /* MIN_EXCL | MAX_EXCL */
    const char *const *choices;  /* T_ENUM: names in value order, NULL-terminated */
    const char *def;             /* default, as the text a user would type */
    const char *help;
} moe_cfg_key;

extern const moe_cfg_key moe_cfg_keys[];
extern const int moe_cfg_nkeys;

static inline void *moe_cfg_field(moe_config *c, const moe_cfg_key *k) { return (char *)c + k->off; }
static inline const void *moe_cfg_cfield(const moe_config *c, const moe_cfg_key *k)
{
    return (const char *)c + k->off;
}

/* The row named name (no dashes), or NULL. */
const moe_cfg_key *moe_cfg_find_key(const char *name);

/*
** Sets k from text. origin names where the value came from ("file:line",
** "command line"); dash is "--" for flags and "" for YAML keys, so messages
** name the key as the user wrote it.
*/
moe_status moe_cfg_set_key(moe_config *c, const moe_cfg_key *k, const char *value, const char *origin,
                           const char *dash);

/* The "unknown key/flag" error, with a did-you-mean suggestion when one is close. */
moe_status moe_cfg_unknown_key(const char *name, const char *origin, const char *dash);

/* Whether v is in k's range, and that range in words ("must be between 1 and 256"). */
int moe_cfg_in_range(const moe_cfg_key *k, double v);
void moe_cfg_range_text(const moe_cfg_key *k, char *buf, size_t cap);

/*
** Parses a canonical (whitespace-free) moe-layer-freq. On success returns 1
** and either *every > 0 (the integer form) or *every = 0 and
** pattern[0..*len) (pattern holds MOE_MAX_LAYERS). On failure returns 0 with
** *err set to static text.
*/
int moe_cfg_lf_parse(const char *s, long *every, int *pattern, int *len, const char **err);

#endif
