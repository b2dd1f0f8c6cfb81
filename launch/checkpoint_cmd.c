/*
** Export streams one tensor at a time (the checkpoint's rows into one buffer
** as large as the largest tensor, then into the file), so a model larger than
** memory's headroom still exports. Import needs the whole model anyway: it
** reads straight into a one-rank model's parameter buffer and two moment
** buffers of the same layout, then saves those as the trainer would.
*/
#include "launch/checkpoint_cmd.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "launch/args.h"
#include "launch/safetensors.h"
#include "runtime/base/checkpoint.h"
#include "runtime/base/config.h"
#include "runtime/base/log.h"
#include "runtime/base/mem.h"
#include "runtime/model.h"

#define NAME_CAP (MOE_PARAM_NAME_MAX + 16)

static const char USAGE[] =
    "usage: moe checkpoint export --from PATH --safetensors OUT [--with-optimizer]\n"
    "       moe checkpoint import --safetensors IN --config CFG.yaml --to ROOT [--step N]\n"
    "\n"
    "export: a moe.c checkpoint as one safetensors file (F32, global shapes).\n"
    "  --from PATH         a step directory, or a checkpoint root (its newest valid step)\n"
    "  --safetensors OUT   the file to write (atomically)\n"
    "  --with-optimizer    also optim.m.*, optim.v.* and state.expert_bias\n"
    "import: a safetensors file as a checkpoint that `moe train --load ROOT` resumes.\n"
    "  --safetensors IN    tensors named as the model's parameters (or model.<name>),\n"
    "                      F32/F16/BF16/F64, each with exactly the model's shape;\n"
    "                      optional optim.m.*, optim.v.* (all or none), state.expert_bias\n"
    "  --config CFG.yaml   the model (vocab-size must be set)\n"
    "  --to ROOT           a new checkpoint root (no step directories in it yet)\n"
    "  --step N            the step to record (default 0, or IN's moe.step with moments)\n"
    "\n"
    "Exit status: 0 success, 2 bad usage or input, 1 failure while running.\n";

/* ---- small helpers --------------------------------------------------------- */

static void fmt_dims(char *out, size_t cap, const int64_t *d, int n)
{
    size_t k = (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < n && k < cap; i++)
        k += (size_t)snprintf(out + k, cap - k, "%s%" PRId64, i ? ", " : "", d[i]);
    if (k < cap)
        snprintf(out + k, cap - k, "]");
}

static int starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

/* A decimal integer 0..max, the whole string. */
static int parse_count(const char *s, int64_t max, int64_t *out)
{
    if (!s || !*s)
        return 0;
    int64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9' || v > (max - (*p - '0')) / 10)
            return 0;
        v = v * 10 + (*p - '0');
    }
    *out = v;
    return 1;
}

typedef struct {
    moe_st_spec *spec; /* [n] the file's names and shapes */
    const char **src;  /* [n] the checkpoint's names */
    uint64_t *numel;   /* [n] */
    int n, models;
    uint64_t max_numel;
} export_list;

static void export_list_free(export_list *l)
{
    moe_free(l->spec);
    moe_free(l->src);
    moe_free(l->numel);
    memset(l, 0, sizeof *l);
}

/* The manifest's tensors, one per name (the slices of one tensor share it),
** in manifest order; without with_optimizer only model.* ones. */
static moe_status export_list_of(const Moe__CheckpointManifest *m, int with_optimizer, export_list *l)
{
    size_t cap = m->n_tensors + 1;
    memset(l, 0, sizeof *l);
    MOE_TRY(moe_alloc((void **)&l->spec, sizeof *l->spec * cap, "export tensor list"));
    MOE_TRY(moe_alloc((void **)&l->src, sizeof *l->src * cap, "export tensor list"));
    MOE_TRY(moe_alloc((void **)&l->numel, sizeof *l->numel * cap, "export tensor list"));
    for (size_t i = 0; i < m->n_tensors; i++) {
        const Moe__TensorEntry *e = m->tensors[i];
        size_t j = 0;
        while (j < i && strcmp(m->tensors[j]->name, e->name) != 0)
            j++;
        int model = starts_with(e->name, "model.");
        if (j < i || (!model && !with_optimizer))
            continue;
        if (e->n_global_shape > MOE_CKPT_MAX_DIMS)
            return moe_fail(MOE_ERR_INPUT, "checkpoint tensor %s has %zu dims", e->name, e->n_global_shape);
        int k = l->n++;
        moe_st_spec *s = &l->spec[k];
        l->src[k] = e->name;
        s->name = model ? e->name + strlen("model.") : e->name;
        s->ndim = (int)e->n_global_shape;
        l->numel[k] = 1;
        for (int d = 0; d < s->ndim; d++) {
            s->shape[d] = e->global_shape[d];
            l->numel[k] *= (uint64_t)e->global_shape[d]; /* bounded by the manifest's checks */
        }
        if (l->numel[k] > l->max_numel)
            l->max_numel = l->numel[k];
        l->models += model;
    }
    return MOE_OK;
}

moe_status moe_checkpoint_export(const char *from, const char *out, int with_optimizer, moe_ckpt_cmd_summary *sum)
{
    char dir[MOE_CKPT_CMD_PATH];
    Moe__CheckpointManifest *m = NULL;
    export_list l = {0};
    moe_st_writer *w = NULL;
    float *buf = NULL;
    uint64_t bytes = 0;
    moe_status st = MOE_OK;
    MOE_TRY(moe_ckpt_open_verified(from, dir, sizeof dir, &m));
    MOE_TRY_GOTO(export_list_of(m, with_optimizer, &l), st, done);
    if (l.models == 0)
        MOE_TRY_GOTO(moe_fail(MOE_ERR_INPUT, "checkpoint %s has no model.* tensors", dir), st, done);

    char step[32], seq[32];
    snprintf(step, sizeof step, "%" PRId64, m->step);
    snprintf(seq, sizeof seq, "%" PRIu64, m->data_next_sequence);
    moe_st_kv meta[] = {{"format", "pt"},
                        {"moe.step", step},
                        {"moe.data_next_sequence", seq},
                        {"moe.config", m->config_yaml ? m->config_yaml : ""}};
    MOE_TRY_GOTO(moe_alloc((void **)&buf, (size_t)l.max_numel * sizeof(float), "export tensor buffer"), st, done);
    MOE_TRY_GOTO(moe_st_writer_open(&w, out, l.spec, l.n, meta, (int)(sizeof meta / sizeof *meta)), st, done);
    for (int i = 0; i < l.n; i++) {
        int64_t rows = l.spec[i].ndim ? l.spec[i].shape[0] : 1;
        MOE_TRY_GOTO(moe_ckpt_read_rows(dir, m, l.src[i], 0, rows, buf, (size_t)l.numel[i] * sizeof(float)), st,
                     done);
        MOE_TRY_GOTO(moe_st_writer_put(w, buf, l.numel[i]), st, done);
    }
    st = moe_st_writer_commit(w, &bytes);
    w = NULL;
    MOE_TRY_GOTO(st, st, done);
    if (sum) {
        memset(sum, 0, sizeof *sum);
        sum->tensors = l.n;
        sum->bytes = bytes;
        sum->step = m->step;
        sum->with_optimizer = with_optimizer;
        snprintf(sum->dir, sizeof sum->dir, "%s", dir);
    }
done:
    moe_st_writer_abort(w);
    moe_free(buf);
    export_list_free(&l);
    moe__checkpoint_manifest__free_unpacked(m, NULL);
    return st;
}

/* ---- import: matching the file to the model ---------------------------------- */

/* The first problem found (its message) and how many there were. */
typedef struct {
    char first[1536];
    int count;
} problems;

static void problem(problems *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void problem(problems *p, const char *fmt, ...)
{
    if (p->count++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->first, sizeof p->first, fmt, ap);
        va_end(ap);
    }
}

static moe_status problems_status(const problems *p)
{
    if (p->count == 0)
        return MOE_OK;
    if (p->count == 1)
        return moe_fail(MOE_ERR_INPUT, "%s", p->first);
    return moe_fail(MOE_ERR_INPUT, "%s (and %d more problem%s)", p->first, p->count - 1, p->count > 2 ? "s" : "");
}

enum { SRC_MODEL = 0, SRC_M = 1, SRC_V = 2, NSRC = 3 };
static const char *SRC_PREFIX[NSRC] = {"model.", "optim.m.", "optim.v."};

/* Where each of the model's tensors comes from in the file (-1: nowhere). */
typedef struct {
    const moe_param_info *t; /* the model's table [nt] */
    int nt;
    size_t nstate;           /* expert bias floats (0: no MoE layer) */
    int *src[NSRC];          /* [nt] file index per parameter and kind */
    int bias;                /* file index of state.expert_bias */
    int has_moments;
} import_map;

static void import_map_free(import_map *im)
{
    for (int k = 0; k < NSRC; k++)
        moe_free(im->src[k]);
}

static int param_index(const import_map *im, const char *name)
{
    for (int i = 0; i < im->nt; i++)
        if (strcmp(im->t[i].name, name) == 0)
            return i;
    return -1;
}

static int same_shape(const moe_st_info *a, int ndim, const int64_t *shape)
{
    if (a->ndim != ndim)
        return 0;
    for (int d = 0; d < ndim; d++)
        if (a->shape[d] != shape[d])
            return 0;
    return 1;
}

/* File tensor fi as kind k of parameter i (or the expert bias when i < 0). */
static void place(const moe_st_file *f, const char *cfg, import_map *im, int fi, int k, int i, problems *pr)
{
    const moe_st_info *x = &f->t[fi];
    char have[256], want[256];
    fmt_dims(have, sizeof have, x->shape, x->ndim);
    int64_t bias_shape[1] = {(int64_t)im->nstate};
    int ndim = i >= 0 ? im->t[i].ndim : 1;
    const int64_t *shape = i >= 0 ? im->t[i].shape : bias_shape;
    fmt_dims(want, sizeof want, shape, ndim);
    int *slot = i >= 0 ? &im->src[k][i] : &im->bias;
    if (*slot >= 0) {
        problem(pr, "%s: tensor '%s' is given twice (as '%s' and '%s')", f->path, i >= 0 ? im->t[i].name : x->name,
                f->t[*slot].name, x->name);
        return;
    }
    *slot = fi;
    if (!same_shape(x, ndim, shape))
        problem(pr, "%s: tensor '%s' has shape %s, the model of %s has %s", f->path, x->name, have, cfg, want);
}

static moe_status map_file(const moe_st_file *f, const char *cfg, import_map *im)
{
    problems pr = {.count = 0};
    im->bias = -1;
    for (int k = 0; k < NSRC; k++) {
        MOE_TRY(moe_alloc((void **)&im->src[k], sizeof(int) * (size_t)(im->nt + 1), "import map"));
        for (int i = 0; i < im->nt; i++)
            im->src[k][i] = -1;
    }
    for (int fi = 0; fi < f->n; fi++) {
        const char *name = f->t[fi].name;
        char have[256];
        fmt_dims(have, sizeof have, f->t[fi].shape, f->t[fi].ndim);
        if (strcmp(name, "state.expert_bias") == 0) {
            if (im->nstate == 0)
                problem(&pr, "%s: tensor '%s' %s, but the model of %s has no MoE layer (no expert bias)", f->path,
                        name, have, cfg);
            else
                place(f, cfg, im, fi, 0, -1, &pr);
            continue;
        }
        int k = starts_with(name, SRC_PREFIX[SRC_M]) ? SRC_M : starts_with(name, SRC_PREFIX[SRC_V]) ? SRC_V : SRC_MODEL;
        const char *param = name;
        if (k != SRC_MODEL || starts_with(name, SRC_PREFIX[SRC_MODEL]))
            param += strlen(SRC_PREFIX[k]);
        int i = param_index(im, param);
        if (i < 0) {
            problem(&pr, "%s: tensor '%s' %s is not a parameter of the model of %s (extra tensors are refused)",
                    f->path, name, have, cfg);
            continue;
        }
        im->has_moments |= k != SRC_MODEL;
        place(f, cfg, im, fi, k, i, &pr);
    }
    for (int k = 0; k < NSRC; k++)
        for (int i = 0; i < im->nt; i++) {
            if (im->src[k][i] >= 0 || (k != SRC_MODEL && !im->has_moments))
                continue;
            char want[256];
            fmt_dims(want, sizeof want, im->t[i].shape, im->t[i].ndim);
            if (k == SRC_MODEL)
                problem(&pr, "%s: no tensor '%s' (the model of %s needs it, shape %s)", f->path, im->t[i].name, cfg,
                        want);
            else
                problem(&pr, "%s: has optimizer moments but no '%s%s' (shape %s): give all of them or none", f->path,
                        SRC_PREFIX[k], im->t[i].name, want);
        }
    MOE_TRY(problems_status(&pr));
    return MOE_OK;
}

/* ---- import: the values ------------------------------------------------------------- */

/* Reads file tensor fi into out[numel] and refuses values training cannot
** start from. */
static moe_status read_checked(moe_st_file *f, int fi, float *out, size_t numel, int second_moment)
{
    MOE_TRY(moe_st_read(f, fi, out, numel));
    for (size_t k = 0; k < numel; k++) {
        if (!isfinite(out[k]))
            return moe_fail(MOE_ERR_INPUT, "%s: tensor '%s' holds %s at element %zu", f->path, f->t[fi].name,
                            isnan(out[k]) ? "NaN" : "an infinity", k);
        if (second_moment && out[k] < 0)
            return moe_fail(MOE_ERR_INPUT, "%s: tensor '%s' holds %g at element %zu: second moments are not negative",
                            f->path, f->t[fi].name, (double)out[k], k);
    }
    return MOE_OK;
}

static moe_status meta_count(const moe_st_file *f, const char *key, int64_t *out)
{
    const char *v = moe_st_meta_get(f, key);
    *out = 0;
    if (v && !parse_count(v, INT64_MAX, out))
        return moe_fail(MOE_ERR_INPUT, "%s: __metadata__ %s is '%s', not a non-negative integer", f->path, key, v);
    return MOE_OK;
}

/* ROOT must not hold a step yet: a load takes the newest, which would not be ours. */
static moe_status check_root_empty(const char *root)
{
    if (moe_ckpt_has_steps(root))
        return moe_fail(MOE_ERR_INPUT, "%s already holds checkpoints: import into a new directory", root);
    return MOE_OK;
}

static moe_status config_yaml(const moe_config *cfg, char **out)
{
    size_t len = 0;
    FILE *f = open_memstream(out, &len);
    if (!f)
        return moe_fail(MOE_ERR_SYSTEM, "open_memstream: %s", strerror(errno));
    moe_status st = moe_config_write_yaml(cfg, f);
    if (fclose(f) != 0 && st == MOE_OK)
        st = moe_fail(MOE_ERR_NOMEM, "writing the config YAML failed");
    return st;
}

static moe_status load_config(const moe_st_file *f, const char *path, moe_config *cfg)
{
    moe_config_defaults(cfg);
    MOE_TRY(moe_config_load_yaml(cfg, path));
    if (cfg->vocab_size == 0) {
        int e = moe_st_find(f, "embedding.weight");
        if (e < 0)
            e = moe_st_find(f, "model.embedding.weight");
        char hint[MOE_PARAM_NAME_MAX + 128] = "";
        if (e >= 0 && f->t[e].ndim == 2)
            snprintf(hint, sizeof hint, " (%s in the safetensors file has %" PRId64 " rows)", f->t[e].name,
                     f->t[e].shape[0]);
        return moe_fail(MOE_ERR_USAGE, "%s: vocab-size is 0 (training takes it from the data); import needs it set%s",
                        path, hint);
    }
    MOE_TRY(moe_config_validate(cfg));
    return MOE_OK;
}

/* The trainer's checkpoint tensors (runtime/train_ckpt.c, one rank): every
** parameter, both moments, then the expert bias. */
static moe_status ckpt_tensors(moe_model *model, const import_map *im, float *mm, float *vv, moe_ckpt_tensor **out,
                               char **names, int *n)
{
    int cap = NSRC * im->nt + 1;
    MOE_TRY(moe_alloc((void **)out, sizeof **out * (size_t)cap, "import tensor list"));
    MOE_TRY(moe_alloc((void **)names, (size_t)cap * NAME_CAP, "import tensor names"));
    float *base[NSRC] = {moe_model_param_data(model), mm, vv};
    *n = 0;
    for (int k = 0; k < NSRC; k++)
        for (int i = 0; i < im->nt; i++) {
            moe_ckpt_tensor *c = &(*out)[*n];
            char *name = *names + (size_t)*n * NAME_CAP;
            snprintf(name, NAME_CAP, "%s%s", SRC_PREFIX[k], im->t[i].name);
            c->name = name;
            c->ndim = im->t[i].ndim;
            memcpy(c->shape, im->t[i].shape, sizeof c->shape);
            c->data = base[k] + im->t[i].offset;
            c->bytes = im->t[i].numel * sizeof(float);
            (*n)++;
        }
    if (im->nstate > 0) {
        size_t count;
        moe_ckpt_tensor *c = &(*out)[(*n)++];
        c->name = "state.expert_bias";
        c->ndim = 1;
        c->shape[0] = (int64_t)im->nstate;
        c->data = moe_model_state_data(model, &count);
        c->bytes = im->nstate * sizeof(float);
    }
    return MOE_OK;
}

static moe_status read_all(moe_st_file *f, moe_model *model, const import_map *im, float *mm, float *vv)
{
    float *base[NSRC] = {moe_model_param_data(model), mm, vv};
    for (int k = 0; k < NSRC; k++)
        for (int i = 0; i < im->nt; i++)
            if (im->src[k][i] >= 0)
                MOE_TRY(read_checked(f, im->src[k][i], base[k] + im->t[i].offset, im->t[i].numel, k == SRC_V));
    if (im->bias >= 0) {
        size_t count;
        MOE_TRY(read_checked(f, im->bias, moe_model_state_data(model, &count), im->nstate, 0));
    }
    return MOE_OK;
}

moe_status moe_checkpoint_import(const char *in, const char *config_path, const char *root, int64_t step,
                                 moe_ckpt_cmd_summary *sum)
{
    moe_st_file f;
    moe_config cfg;
    moe_model *model = NULL;
    import_map im = {0};
    float *mm = NULL, *vv = NULL;
    moe_ckpt_tensor *t = NULL;
    char *names = NULL, *yaml = NULL;
    int n = 0;
    moe_status st = MOE_OK;
    MOE_TRY(moe_st_open(&f, in));
    MOE_TRY_GOTO(load_config(&f, config_path, &cfg), st, done);
    MOE_TRY_GOTO(moe_model_create(&model, &cfg, 1), st, done);
    im.t = moe_model_params(model, &im.nt);
    moe_model_state_data(model, &im.nstate);
    MOE_TRY_GOTO(map_file(&f, config_path, &im), st, done);
    MOE_TRY_GOTO(check_root_empty(root), st, done);

    size_t floats = moe_model_num_params(model);
    MOE_TRY_GOTO(moe_alloc((void **)&mm, floats * sizeof(float), "AdamW first moments"), st, done);
    MOE_TRY_GOTO(moe_alloc((void **)&vv, floats * sizeof(float), "AdamW second moments"), st, done);
    MOE_TRY_GOTO(read_all(&f, model, &im, mm, vv), st, done);

    moe_ckpt_meta meta = {0};
    int64_t seq = 0;
    if (im.has_moments) {
        MOE_TRY_GOTO(meta_count(&f, "moe.step", &meta.step), st, done);
        MOE_TRY_GOTO(meta_count(&f, "moe.data_next_sequence", &seq), st, done);
        meta.data_next_sequence = (uint64_t)seq;
    }
    if (step >= 0)
        meta.step = step;
    MOE_TRY_GOTO(ckpt_tensors(model, &im, mm, vv, &t, &names, &n), st, done);
    MOE_TRY_GOTO(config_yaml(&cfg, &yaml), st, done);
    MOE_TRY_GOTO(moe_ckpt_save(root, &meta, t, n, yaml, 0), st, done);
    if (sum) {
        memset(sum, 0, sizeof *sum);
        sum->tensors = n;
        for (int i = 0; i < n; i++)
            sum->bytes += t[i].bytes;
        sum->step = meta.step;
        sum->with_optimizer = im.has_moments;
        snprintf(sum->dir, sizeof sum->dir, "%s/step-%07" PRId64, root, meta.step);
    }
done:
    free(yaml);
    moe_free(t);
    moe_free(names);
    moe_free(mm);
    moe_free(vv);
    import_map_free(&im);
    moe_model_free(model);
    moe_st_close(&f);
    return st;
}

/* ---- the command line ------------------------------------------------------------- */

typedef struct {
    const char *from, *safetensors, *config, *to, *step;
    int with_optimizer, help;
} options;

static moe_status parse_options(const char *cmd, int argc, char **argv, options *o)
{
    int import = strcmp(cmd, "import") == 0;
    memset(o, 0, sizeof *o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            o->help = 1;
        else if (moe_arg_is(a, "--safetensors"))
            MOE_TRY(moe_arg_value(argc, argv, &i, "--safetensors", &o->safetensors));
        else if (!import && moe_arg_is(a, "--from"))
            MOE_TRY(moe_arg_value(argc, argv, &i, "--from", &o->from));
        else if (!import && strcmp(a, "--with-optimizer") == 0)
            o->with_optimizer = 1;
        else if (import && moe_arg_is(a, "--config"))
            MOE_TRY(moe_arg_value(argc, argv, &i, "--config", &o->config));
        else if (import && moe_arg_is(a, "--to"))
            MOE_TRY(moe_arg_value(argc, argv, &i, "--to", &o->to));
        else if (import && moe_arg_is(a, "--step"))
            MOE_TRY(moe_arg_value(argc, argv, &i, "--step", &o->step));
        else if (moe_arg_is_flag(a))
            return moe_fail(MOE_ERR_USAGE, "unknown option '%s'", a);
        else
            return moe_fail(MOE_ERR_USAGE, "unexpected argument '%s' (every value follows its --flag)", a);
    }
    if (o->help)
        return MOE_OK;
    const char *need[3] = {import ? "--safetensors" : "--from", import ? "--config" : "--safetensors",
                           import ? "--to" : NULL};
    const char *have[3] = {import ? o->safetensors : o->from, import ? o->config : o->safetensors, o->to};
    for (int k = 0; k < 3; k++)
        if (need[k] && (!have[k] || !have[k][0]))
            return moe_fail(MOE_ERR_USAGE, "%s is required", need[k]);
    return MOE_OK;
}

static int run_export(int argc, char **argv)
{
    const char *prog = "moe checkpoint export";
    options o;
    moe_ckpt_cmd_summary sum;
    moe_status st = parse_options("export", argc, argv, &o);
    if (st == MOE_OK && o.help) {
        fputs(USAGE, stdout);
        return 0;
    }
    if (st == MOE_OK)
        st = moe_checkpoint_export(o.from, o.safetensors, o.with_optimizer, &sum);
    if (st == MOE_OK)
        printf("exported %d tensors%s, %" PRIu64 " bytes: step %" PRId64 " of %s -> %s\n", sum.tensors,
               sum.with_optimizer ? " (with optimizer state)" : "", sum.bytes, sum.step, sum.dir, o.safetensors);
    return moe_cmd_exit(prog, st);
}

static int run_import(int argc, char **argv)
{
    const char *prog = "moe checkpoint import";
    options o;
    moe_ckpt_cmd_summary sum;
    int64_t step = -1;
    moe_status st = parse_options("import", argc, argv, &o);
    if (st == MOE_OK && o.help) {
        fputs(USAGE, stdout);
        return 0;
    }
    if (st == MOE_OK && o.step && !parse_count(o.step, INT64_MAX, &step))
        st = moe_fail(MOE_ERR_USAGE, "--step '%s' is not a non-negative integer", o.step);
    if (st == MOE_OK)
        st = moe_checkpoint_import(o.safetensors, o.config, o.to, step, &sum);
    if (st == MOE_OK)
        printf("imported %d tensors, %" PRIu64 " bytes of float32: %s at step %" PRId64 "%s\n", sum.tensors,
               sum.bytes, sum.dir, sum.step,
               sum.with_optimizer ? " (optimizer moments from the file)" : " (optimizer moments zero)");
    return moe_cmd_exit(prog, st);
}

int moe_checkpoint_main(int argc, char **argv)
{
    if (argc < 1 || (strcmp(argv[0], "export") != 0 && strcmp(argv[0], "import") != 0 &&
                     strcmp(argv[0], "--help") != 0 && strcmp(argv[0], "-h") != 0)) {
        fprintf(stderr, "moe checkpoint: error: %s%s%s\n%s", argc < 1 ? "expected 'export' or 'import'" : "unknown '",
                argc < 1 ? "" : argv[0], argc < 1 ? "" : "' (expected 'export' or 'import')", USAGE);
        return 2;
    }
    if (argv[0][0] == '-') {
        fputs(USAGE, stdout);
        return 0;
    }
    return strcmp(argv[0], "export") == 0 ? run_export(argc, argv) : run_import(argc, argv);
}
