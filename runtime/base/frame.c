/*
** frame: see frame.h. Three parts: the job secret (generation, hex, files,
** environment), validation of decoded envelopes, and the writer/reader pair
** that frame, authenticate and sequence them.
*/
#include "runtime/base/frame.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/base/config.h"
#include "runtime/base/log.h"
#include "runtime/base/mem.h"

_Static_assert(MOE_SECRET_BYTES == crypto_auth_hmacsha256_KEYBYTES, "the secret is the HMAC key");
_Static_assert(MOE_FRAME_MAC == crypto_auth_hmacsha256_BYTES, "the MAC is one HMAC-SHA256");
_Static_assert(MOE_FRAME_MAX <= UINT32_MAX - MOE_FRAME_OVERHEAD, "a frame's size fits 32 bits");

/* Bounds of the variable-length fields (proto/control.proto states them). */
#define HOSTNAME_MAX 255
#define REASON_MAX 1024
#define MESSAGE_MAX 4096
#define CONFIG_YAML_MAX (256u << 10)
#define RUN_DIR_MAX (MOE_PATH_MAX - 1)
#define HEARTBEAT_MIN_MS 10u
#define HEARTBEAT_MAX_MS 3600000u
#define HEARTBEAT_TIMEOUT_MAX_MS 86400000u

/* A reader drops a buffer this large once it drains, so one big frame does not
** pin memory on a connection for its lifetime. */
#define READER_KEEP_BYTES (64u << 10)
#define READER_MIN_BYTES 4096u

/* ------------------------------------------------------------------------ */
/* The job secret */

static moe_status sodium_ready(void)
{
    if (sodium_init() < 0)
        return moe_fail(MOE_ERR_SYSTEM, "libsodium failed to initialise");
    return MOE_OK;
}

moe_status moe_secret_generate(moe_secret *s)
{
    MOE_TRY(sodium_ready());
    randombytes_buf(s->key, sizeof s->key);
    return MOE_OK;
}

void moe_secret_wipe(moe_secret *s) { sodium_memzero(s, sizeof *s); }

void moe_secret_to_hex(const moe_secret *s, char hex[MOE_SECRET_HEX + 1])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < MOE_SECRET_BYTES; i++) {
        hex[2 * i] = digits[s->key[i] >> 4];
        hex[2 * i + 1] = digits[s->key[i] & 15];
    }
    hex[MOE_SECRET_HEX] = '\0';
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Messages about a secret never quote its characters: they would end up in logs. */
moe_status moe_secret_from_hex(moe_secret *s, const char *hex, const char *origin)
{
    size_t n = strlen(hex);
    if (n != MOE_SECRET_HEX)
        return moe_fail(MOE_ERR_INPUT, "%s: a job secret is %d hex digits, this one has %zu characters",
                        origin, MOE_SECRET_HEX, n);
    for (size_t i = 0; i < MOE_SECRET_BYTES; i++) {
        int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            moe_secret_wipe(s);
            return moe_fail(MOE_ERR_INPUT, "%s: the job secret has a non-hex character at position %zu", origin,
                            2 * i + (hi < 0 ? 0 : 1));
        }
        s->key[i] = (uint8_t)(hi << 4 | lo);
    }
    return MOE_OK;
}

static moe_status write_all(int fd, const char *p, size_t n, const char *path)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return moe_fail(MOE_ERR_IO, "writing job secret file %s: %s", path, strerror(errno));
        p += w;
        n -= (size_t)w;
    }
    return MOE_OK;
}

moe_status moe_secret_write_file(const moe_secret *s, const char *path)
{
    /* O_EXCL: never reuse (or follow a link planted at) an existing path. */
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return moe_fail(MOE_ERR_IO, "creating job secret file %s: %s", path, strerror(errno));
    char text[MOE_SECRET_HEX + 2];
    moe_secret_to_hex(s, text);
    text[MOE_SECRET_HEX] = '\n';
    moe_status st = MOE_OK;
    if (fchmod(fd, 0600) != 0) /* the umask may have taken the owner's bits */
        st = moe_fail(MOE_ERR_IO, "chmod 0600 %s: %s", path, strerror(errno));
    if (st == MOE_OK)
        st = write_all(fd, text, MOE_SECRET_HEX + 1, path);
    sodium_memzero(text, sizeof text);
    if (close(fd) != 0 && st == MOE_OK)
        st = moe_fail(MOE_ERR_IO, "closing job secret file %s: %s", path, strerror(errno));
    if (st != MOE_OK)
        unlink(path);
    return st;
}

/* Reads at most cap bytes; *n is how many. */
static moe_status read_upto(int fd, char *buf, size_t cap, size_t *n, const char *path)
{
    *n = 0;
    while (*n < cap) {
        ssize_t r = read(fd, buf + *n, cap - *n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return moe_fail(MOE_ERR_IO, "reading job secret file %s: %s", path, strerror(errno));
        if (r == 0)
            break;
        *n += (size_t)r;
    }
    return MOE_OK;
}

static moe_status check_secret_file(int fd, const char *path)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return moe_fail(MOE_ERR_IO, "job secret file %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return moe_fail(MOE_ERR_INPUT, "job secret file %s is not a regular file", path);
    if (st.st_mode & 077)
        return moe_fail(MOE_ERR_INPUT,
                        "job secret file %s has mode %04o: group or others may access it (it must be 0600)",
                        path, (unsigned)(st.st_mode & 07777));
    if (st.st_uid != geteuid())
        return moe_fail(MOE_ERR_INPUT, "job secret file %s is owned by uid %u, not by this user (uid %u)", path,
                        (unsigned)st.st_uid, (unsigned)geteuid());
    return MOE_OK;
}

moe_status moe_secret_read_file(moe_secret *s, const char *path)
{
    /* O_NONBLOCK so a FIFO planted at the path cannot hang us before fstat. */
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return moe_fail(errno == ENOENT ? MOE_ERR_USAGE : MOE_ERR_INPUT, "job secret file %s: %s", path,
                        errno == ELOOP ? "is a symbolic link" : strerror(errno));
    char text[MOE_SECRET_HEX + 3]; /* one byte more than the longest valid file */
    size_t n = 0;
    moe_status st = check_secret_file(fd, path);
    if (st == MOE_OK)
        st = read_upto(fd, text, sizeof text - 1, &n, path);
    close(fd);
    if (st == MOE_OK) {
        if (n == MOE_SECRET_HEX + 1 && text[MOE_SECRET_HEX] == '\n')
            n--;
        if (n != MOE_SECRET_HEX)
            st = moe_fail(MOE_ERR_INPUT, "job secret file %s holds %s%zu bytes; it must hold %d hex digits "
                          "and at most a newline", path, n == sizeof text - 1 ? "more than " : "", n,
                          MOE_SECRET_HEX);
    }
    if (st == MOE_OK) {
        text[n] = '\0';
        st = moe_secret_from_hex(s, text, path);
    }
    sodium_memzero(text, sizeof text);
    return st;
}

moe_status moe_secret_from_env(moe_secret *s)
{
    const char *file = getenv("MOE_JOB_SECRET_FILE");
    const char *hex = getenv("MOE_JOB_SECRET");
    int has_file = file && *file, has_hex = hex && *hex;
    if (has_file && has_hex)
        return moe_fail(MOE_ERR_USAGE, "both MOE_JOB_SECRET_FILE and MOE_JOB_SECRET are set; the launcher sets one");
    if (has_file) {
        MOE_TRY(moe_secret_read_file(s, file));
        return MOE_OK;
    }
    if (has_hex) {
        MOE_TRY(moe_secret_from_hex(s, hex, "MOE_JOB_SECRET"));
        return MOE_OK;
    }
    return moe_fail(MOE_ERR_USAGE, "no job secret: the launcher gives its workers MOE_JOB_SECRET_FILE "
                    "(a 0600 file) or MOE_JOB_SECRET");
}

/* ------------------------------------------------------------------------ */
/* Validation */

const char *moe_frame_refusal_name(moe_frame_refusal r)
{
    switch (r) {
    case MOE_FRAME_ACCEPTED: return "accepted";
    case MOE_FRAME_OVERSIZED: return "oversized";
    case MOE_FRAME_TRUNCATED: return "truncated";
    case MOE_FRAME_BAD_MAC: return "bad-mac";
    case MOE_FRAME_MALFORMED: return "malformed";
    case MOE_FRAME_INVALID: return "invalid";
    case MOE_FRAME_WRONG_JOB: return "wrong-job";
    case MOE_FRAME_WRONG_PEER: return "wrong-peer";
    case MOE_FRAME_REPLAY: return "replay";
    }
    return "unknown";
}

__attribute__((format(printf, 4, 5)))
static moe_frame_refusal say(char *why, size_t cap, moe_frame_refusal r, const char *fmt, ...)
{
    if (why && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, cap, fmt, ap);
        va_end(ap);
    }
    return r;
}

/* Every validation failure is INVALID; the message names field and value. */
#define CHECK(cond, ...)                                                \
    do {                                                                \
        if (!(cond))                                                    \
            return say(why, cap, MOE_FRAME_INVALID, __VA_ARGS__);       \
    } while (0)

typedef enum { STR_JOB_ID, STR_NAME, STR_TEXT } str_kind;

/* Length of the UTF-8 sequence at p (n bytes left), 0 if it is not one:
** no overlong forms, no surrogates, nothing above U+10FFFF. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    unsigned c = p[0], cp, min;
    size_t len;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; min = 0x80; }
    else if ((c & 0xf0) == 0xe0) { len = 3; cp = c & 0x0f; min = 0x800; }
    else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; min = 0x10000; }
    else return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return len;
}

static int job_id_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
}

/* NULL if s is an acceptable string of its kind with lo..hi bytes, else what
** is wrong with it (in buf). Strings reach the logs, so text may not carry
** terminal controls (ESC, CR) and names are plain ASCII. */
static const char *string_fault(const char *s, size_t lo, size_t hi, str_kind kind, char *buf, size_t cap)
{
    const unsigned char *u = (const unsigned char *)(s ? s : "");
    size_t n = strlen((const char *)u);
    if (n < lo)
        return "is empty";
    if (n > hi) {
        snprintf(buf, cap, "is %zu bytes (limit %zu)", n, hi);
        return buf;
    }
    for (size_t i = 0; i < n;) {
        unsigned char c = u[i];
        size_t step = 1;
        int ok;
        if (kind == STR_JOB_ID)
            ok = job_id_char(c);
        else if (kind == STR_NAME)
            ok = c > 0x20 && c < 0x7f;
        else {
            ok = (c >= 0x20 || c == '\t' || c == '\n') && c != 0x7f;
            if (ok && c >= 0x80) {
                step = utf8_len(u + i, n - i);
                if (step == 0) {
                    snprintf(buf, cap, "is not valid UTF-8 at byte %zu", i);
                    return buf;
                }
            }
        }
        if (!ok) {
            snprintf(buf, cap, "has byte 0x%02x at %zu (%s)", c, i,
                     kind == STR_JOB_ID ? "allowed: A-Z a-z 0-9 . _ -"
                     : kind == STR_NAME ? "allowed: printable ASCII without spaces"
                                        : "no control characters but tab and newline");
            return buf;
        }
        i += step;
    }
    return NULL;
}

#define CHECK_STR(field, value, lo, hi, kind)                                                   \
    do {                                                                                        \
        char fault_buf_[96];                                                                    \
        const char *fault_ = string_fault((value), (lo), (hi), (kind), fault_buf_, sizeof fault_buf_); \
        CHECK(!fault_, field " %s", fault_);                                                    \
    } while (0)

static int enum_known(const ProtobufCEnumDescriptor *d, int v)
{
    return v != 0 && protobuf_c_enum_descriptor_get_value(d, v) != NULL;
}

#define CHECK_ENUM(field, value, desc) \
    CHECK(enum_known(&(desc), (int)(value)), field " %d is not a known value", (int)(value))

/* A hand-built message must have been made with its INIT macro; a decoded
** one always is. Checked so the encoder cannot pack garbage. */
#define CHECK_TYPE(field, m, desc) \
    CHECK((m) && (m)->base.descriptor == &(desc), field " is not a %s message", (desc).short_name)

static moe_frame_refusal check_hello(const Moe__Control__Hello *m, uint32_t world, char *why, size_t cap)
{
    CHECK(m->protocol == MOE_CONTROL_PROTOCOL, "hello.protocol %u is not this build's (%d)", m->protocol,
          MOE_CONTROL_PROTOCOL);
    CHECK(m->world_size == world, "hello.world_size %u differs from the job's %u", m->world_size, world);
    CHECK_STR("hello.hostname", m->hostname, 1, HOSTNAME_MAX, STR_NAME);
    CHECK(m->pid >= 1, "hello.pid is 0");
    CHECK(m->local_rank < world, "hello.local_rank %u is not below the world size %u", m->local_rank, world);
    CHECK_STR("hello.binding", m->binding, 0, HOSTNAME_MAX, STR_TEXT);
    return MOE_FRAME_ACCEPTED;
}

static moe_frame_refusal check_parallel(const Moe__Control__ParallelLayout *p, uint32_t world, char *why,
                                        size_t cap)
{
    const uint32_t sizes[5] = {p->tp, p->pp, p->cp, p->ep, p->etp};
    static const char *names[5] = {"tp", "pp", "cp", "ep", "etp"};
    for (int i = 0; i < 5; i++)
        CHECK(sizes[i] >= 1 && sizes[i] <= world, "job_spec.parallel.%s %u is outside [1, %u]", names[i], sizes[i],
              world);
    uint64_t dense = (uint64_t)p->tp * p->cp * p->pp, moe = (uint64_t)p->etp * p->ep * p->pp;
    CHECK(world % dense == 0, "job_spec.parallel: tp*cp*pp = %" PRIu64 " does not divide the world size %u", dense,
          world);
    CHECK(world % moe == 0, "job_spec.parallel: etp*ep*pp = %" PRIu64 " does not divide the world size %u", moe,
          world);
    return MOE_FRAME_ACCEPTED;
}

static moe_frame_refusal check_job_spec(const Moe__Control__JobSpec *m, const Moe__Control__Envelope *e,
                                        uint32_t world, char *why, size_t cap)
{
    CHECK_STR("job_spec.job_id", m->job_id, 1, MOE_JOB_ID_MAX, STR_JOB_ID);
    CHECK(strcmp(m->job_id, e->job_id) == 0, "job_spec.job_id '%s' differs from the envelope's '%s'", m->job_id,
          e->job_id);
    CHECK(m->world_size == world, "job_spec.world_size %u differs from the job's %u", m->world_size, world);
    CHECK_STR("job_spec.run_dir", m->run_dir, 1, RUN_DIR_MAX, STR_TEXT);
    CHECK(m->heartbeat_interval_ms >= HEARTBEAT_MIN_MS && m->heartbeat_interval_ms <= HEARTBEAT_MAX_MS,
          "job_spec.heartbeat_interval_ms %u is outside [%u, %u]", m->heartbeat_interval_ms, HEARTBEAT_MIN_MS,
          HEARTBEAT_MAX_MS);
    CHECK((uint64_t)m->heartbeat_timeout_ms >= 2 * (uint64_t)m->heartbeat_interval_ms &&
              m->heartbeat_timeout_ms <= HEARTBEAT_TIMEOUT_MAX_MS,
          "job_spec.heartbeat_timeout_ms %u is outside [2 x interval = %" PRIu64 ", %u]", m->heartbeat_timeout_ms,
          2 * (uint64_t)m->heartbeat_interval_ms, HEARTBEAT_TIMEOUT_MAX_MS);
    CHECK_STR("job_spec.config_yaml", m->config_yaml, 1, CONFIG_YAML_MAX, STR_TEXT);
    CHECK(m->parallel != NULL, "job_spec.parallel is missing");
    CHECK_TYPE("job_spec.parallel", m->parallel, moe__control__parallel_layout__descriptor);
    moe_frame_refusal r = check_parallel(m->parallel, world, why, cap);
    if (r != MOE_FRAME_ACCEPTED)
        return r;
    CHECK(m->train_iters >= 1 && m->train_iters <= INT32_MAX, "job_spec.train_iters %" PRId64 " is outside [1, %d]",
          m->train_iters, INT32_MAX);
    return MOE_FRAME_ACCEPTED;
}

static moe_frame_refusal check_heartbeat(const Moe__Control__Heartbeat *m, char *why, size_t cap)
{
    CHECK(m->step >= 0, "heartbeat.step %" PRId64 " is negative", m->step);
    CHECK_ENUM("heartbeat.phase", m->phase, moe__control__phase__descriptor);
    return MOE_FRAME_ACCEPTED;
}

#define CHECK_FINITE(m, f) CHECK(isfinite((m)->f), "step_report." #f " is %g (must be finite)", (m)->f)
#define CHECK_NONNEG(m, f) CHECK((m)->f >= 0, "step_report." #f " is %g (must be >= 0)", (m)->f)

static moe_frame_refusal check_step_report(const Moe__Control__StepReport *m, char *why, size_t cap)
{
    CHECK_ENUM("step_report.kind", m->kind, moe__control__report_kind__descriptor);
    CHECK(m->step >= 0, "step_report.step %" PRId64 " is negative", m->step);
    CHECK_FINITE(m, loss);
    CHECK_FINITE(m, aux_loss);
    CHECK_FINITE(m, z_loss);
    CHECK_FINITE(m, lr);
    CHECK_FINITE(m, grad_norm);
    CHECK_FINITE(m, tokens_per_s);
    CHECK_FINITE(m, tflops);
    CHECK_FINITE(m, mfu);
    CHECK_FINITE(m, load_imbalance);
    CHECK_FINITE(m, dropped_frac);
    CHECK_FINITE(m, step_ms);
    CHECK_NONNEG(m, lr);
    CHECK_NONNEG(m, grad_norm);
    CHECK_NONNEG(m, tokens_per_s);
    CHECK_NONNEG(m, tflops);
    CHECK_NONNEG(m, mfu);
    CHECK_NONNEG(m, load_imbalance);
    CHECK_NONNEG(m, step_ms);
    CHECK(m->dropped_frac >= 0 && m->dropped_frac <= 1, "step_report.dropped_frac is %g (must be in [0, 1])",
          m->dropped_frac);
    return MOE_FRAME_ACCEPTED;
}

static moe_frame_refusal check_command(const Moe__Control__Command *m, char *why, size_t cap)
{
    CHECK_ENUM("command.kind", m->kind, moe__control__command_kind__descriptor);
    CHECK(m->at_step >= 0, "command.at_step %" PRId64 " is negative", m->at_step);
    CHECK_STR("command.reason", m->reason, 0, REASON_MAX, STR_TEXT);
    return MOE_FRAME_ACCEPTED;
}

static moe_frame_refusal check_ack(const Moe__Control__Ack *m, char *why, size_t cap)
{
    CHECK(m->seq >= 1, "ack.seq is 0 (sequences start at 1)");
    return MOE_FRAME_ACCEPTED;
}

static moe_frame_refusal check_error(const Moe__Control__Error *m, char *why, size_t cap)
{
    CHECK_ENUM("error.kind", m->kind, moe__control__error_kind__descriptor);
    CHECK(m->step >= 0, "error.step %" PRId64 " is negative", m->step);
    CHECK_STR("error.message", m->message, 0, MESSAGE_MAX, STR_TEXT);
    return MOE_FRAME_ACCEPTED;
}

static const char *role_name(moe_role role)
{
    return role == MOE_ROLE_COORDINATOR ? "coordinator" : role == MOE_ROLE_WORKER ? "worker" : "nobody";
}

/* Which bodies each role sends (proto/control.proto, enum Role). */
static int body_allowed(moe_role sender, Moe__Control__Envelope__BodyCase body)
{
    switch (body) {
    case MOE__CONTROL__ENVELOPE__BODY_HELLO:
    case MOE__CONTROL__ENVELOPE__BODY_HEARTBEAT:
    case MOE__CONTROL__ENVELOPE__BODY_STEP_REPORT: return sender == MOE_ROLE_WORKER;
    case MOE__CONTROL__ENVELOPE__BODY_JOB_SPEC:
    case MOE__CONTROL__ENVELOPE__BODY_COMMAND: return sender == MOE_ROLE_COORDINATOR;
    case MOE__CONTROL__ENVELOPE__BODY_ACK:
    case MOE__CONTROL__ENVELOPE__BODY_ERROR: return 1;
    default: return 0;
    }
}

static const char *body_name(Moe__Control__Envelope__BodyCase body)
{
    switch (body) {
    case MOE__CONTROL__ENVELOPE__BODY_HELLO: return "hello";
    case MOE__CONTROL__ENVELOPE__BODY_JOB_SPEC: return "job_spec";
    case MOE__CONTROL__ENVELOPE__BODY_HEARTBEAT: return "heartbeat";
    case MOE__CONTROL__ENVELOPE__BODY_STEP_REPORT: return "step_report";
    case MOE__CONTROL__ENVELOPE__BODY_COMMAND: return "command";
    case MOE__CONTROL__ENVELOPE__BODY_ACK: return "ack";
    case MOE__CONTROL__ENVELOPE__BODY_ERROR: return "error";
    default: return "no body";
    }
}

static moe_frame_refusal check_body(const Moe__Control__Envelope *e, uint32_t world, char *why, size_t cap)
{
    switch (e->body_case) {
    case MOE__CONTROL__ENVELOPE__BODY_HELLO:
        CHECK_TYPE("hello", e->hello, moe__control__hello__descriptor);
        return check_hello(e->hello, world, why, cap);
    case MOE__CONTROL__ENVELOPE__BODY_JOB_SPEC:
        CHECK_TYPE("job_spec", e->job_spec, moe__control__job_spec__descriptor);
        return check_job_spec(e->job_spec, e, world, why, cap);
    case MOE__CONTROL__ENVELOPE__BODY_HEARTBEAT:
        CHECK_TYPE("heartbeat", e->heartbeat, moe__control__heartbeat__descriptor);
        return check_heartbeat(e->heartbeat, why, cap);
    case MOE__CONTROL__ENVELOPE__BODY_STEP_REPORT:
        CHECK_TYPE("step_report", e->step_report, moe__control__step_report__descriptor);
        return check_step_report(e->step_report, why, cap);
    case MOE__CONTROL__ENVELOPE__BODY_COMMAND:
        CHECK_TYPE("command", e->command, moe__control__command__descriptor);
        return check_command(e->command, why, cap);
    case MOE__CONTROL__ENVELOPE__BODY_ACK:
        CHECK_TYPE("ack", e->ack, moe__control__ack__descriptor);
        return check_ack(e->ack, why, cap);
    case MOE__CONTROL__ENVELOPE__BODY_ERROR:
        CHECK_TYPE("error", e->error, moe__control__error__descriptor);
        return check_error(e->error, why, cap);
    default:
        return say(why, cap, MOE_FRAME_INVALID, "envelope has no body");
    }
}

moe_frame_refusal moe_envelope_check(const Moe__Control__Envelope *e, uint32_t world_size, char *why, size_t cap)
{
    CHECK_TYPE("envelope", e, moe__control__envelope__descriptor);
    CHECK_STR("envelope.job_id", e->job_id, 1, MOE_JOB_ID_MAX, STR_JOB_ID);
    CHECK(e->sender == MOE_ROLE_COORDINATOR || e->sender == MOE_ROLE_WORKER, "envelope.sender %d is not a role",
          (int)e->sender);
    CHECK(e->seq >= 1, "envelope.seq is 0 (sequences start at 1)");
    CHECK(e->rank < world_size, "envelope.rank %u is not below the world size %u", e->rank, world_size);
    CHECK(e->body_case != MOE__CONTROL__ENVELOPE__BODY__NOT_SET, "envelope has no body");
    CHECK(body_allowed(e->sender, e->body_case), "a %s does not send %s", role_name(e->sender),
          body_name(e->body_case));
    return check_body(e, world_size, why, cap);
}

/* A ProtobufCBuffer that compares what protobuf-c packs with the received
** payload instead of storing it: the canonical-encoding check without an
** allocation. */
typedef struct {
    ProtobufCBuffer base;
    const uint8_t *want;
    size_t len, pos;
    int differs;
} compare_buffer;

static void compare_append(ProtobufCBuffer *b, size_t n, const uint8_t *data)
{
    compare_buffer *c = (compare_buffer *)b;
    if (c->differs)
        return;
    size_t same = 0;
    while (same < n && c->pos + same < c->len && c->want[c->pos + same] == data[same])
        same++;
    c->pos += same;
    c->differs = same < n;
}

moe_frame_refusal moe_envelope_decode(const uint8_t *payload, size_t len, uint32_t world_size,
                                      Moe__Control__Envelope **out, char *why, size_t cap)
{
    *out = NULL;
    Moe__Control__Envelope *e = moe__control__envelope__unpack(NULL, len, payload);
    if (!e)
        return say(why, cap, MOE_FRAME_MALFORMED, "a %zu-byte payload is not an Envelope (protobuf decoding failed)",
                   len);
    /* protobuf-c cuts a string at an embedded NUL and keeps the last of a
    ** field written twice; re-encoding exposes both, and anything else our
    ** own encoder would not have written. */
    compare_buffer cb = {{compare_append}, payload, len, 0, 0};
    protobuf_c_message_pack_to_buffer(&e->base, &cb.base);
    moe_frame_refusal r = MOE_FRAME_ACCEPTED;
    if (cb.differs || cb.pos != len)
        r = say(why, cap, MOE_FRAME_INVALID,
                "payload is not in canonical encoding (differs at byte %zu of %zu): a NUL inside a string, "
                "a field repeated, out of order or set to its default, or an overlong varint",
                cb.pos, len);
    if (r == MOE_FRAME_ACCEPTED)
        r = moe_envelope_check(e, world_size, why, cap);
    if (r != MOE_FRAME_ACCEPTED) {
        moe_envelope_free(e);
        return r;
    }
    *out = e;
    return MOE_FRAME_ACCEPTED;
}

void moe_envelope_free(Moe__Control__Envelope *e)
{
    if (e)
        moe__control__envelope__free_unpacked(e, NULL);
}

/* ------------------------------------------------------------------------ */
/* Sending */

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* f holds the payload at f + HEADER; writes the length and the MAC around it. */
static void seal(const moe_secret *s, uint8_t *f, size_t len)
{
    put_be32(f, (uint32_t)len);
    crypto_auth_hmacsha256(f + MOE_FRAME_HEADER + len, f, MOE_FRAME_HEADER + len, s->key);
}

/* Shared by writers and receivers: the identity of a stream end. */
static moe_status check_identity(const char *job_id, uint32_t world, moe_role role, uint32_t rank, const char *what)
{
    char buf[96];
    const char *fault = string_fault(job_id, 1, MOE_JOB_ID_MAX, STR_JOB_ID, buf, sizeof buf);
    if (fault)
        return moe_fail(MOE_ERR_USAGE, "%s: job id %s (1..%d of A-Z a-z 0-9 . _ -)", what, fault, MOE_JOB_ID_MAX);
    if (world < 1 || world > MOE_CONTROL_MAX_WORLD)
        return moe_fail(MOE_ERR_USAGE, "%s: world size %u is outside [1, %u]", what, world, MOE_CONTROL_MAX_WORLD);
    if (role != MOE_ROLE_COORDINATOR && role != MOE_ROLE_WORKER)
        return moe_fail(MOE_ERR_USAGE, "%s: role %d is neither coordinator nor worker", what, (int)role);
    if (rank >= world)
        return moe_fail(MOE_ERR_USAGE, "%s: rank %u is not below the world size %u", what, rank, world);
    return MOE_OK;
}

moe_status moe_frame_writer_init(moe_frame_writer *w, const moe_secret *secret, const char *job_id,
                                 uint32_t world_size, moe_role role, uint32_t rank)
{
    memset(w, 0, sizeof *w);
    MOE_TRY(check_identity(job_id, world_size, role, rank, "control writer"));
    MOE_TRY(sodium_ready());
    w->secret = *secret;
    snprintf(w->job_id, sizeof w->job_id, "%s", job_id);
    w->role = role;
    w->rank = rank;
    w->world_size = world_size;
    w->next_seq = 1;
    return MOE_OK;
}

void moe_frame_writer_free(moe_frame_writer *w) { sodium_memzero(w, sizeof *w); }

moe_status moe_frame_encode(moe_frame_writer *w, Moe__Control__Envelope *env, uint8_t **frame, size_t *frame_len)
{
    *frame = NULL;
    *frame_len = 0;
    if (w->next_seq == 0 || w->next_seq == UINT64_MAX)
        return moe_fail(MOE_ERR_INTERNAL, "control writer is not initialised or out of sequence numbers");
    env->job_id = w->job_id;
    env->rank = w->rank;
    env->sender = w->role;
    env->seq = w->next_seq;
    char why[256];
    if (moe_envelope_check(env, w->world_size, why, sizeof why) != MOE_FRAME_ACCEPTED)
        return moe_fail(MOE_ERR_INTERNAL, "refusing to send an invalid control message: %s", why);
    size_t len = protobuf_c_message_get_packed_size(&env->base);
    if (len > MOE_FRAME_MAX)
        return moe_fail(MOE_ERR_INTERNAL, "a %s control message of %zu bytes exceeds the %u-byte frame limit",
                        body_name(env->body_case), len, MOE_FRAME_MAX);
    uint8_t *f;
    MOE_TRY(moe_alloc((void **)&f, len + MOE_FRAME_OVERHEAD, "control frame"));
    if (protobuf_c_message_pack(&env->base, f + MOE_FRAME_HEADER) != len) {
        moe_free(f);
        return moe_fail(MOE_ERR_INTERNAL, "protobuf-c packed a %s message to another size than it measured",
                        body_name(env->body_case));
    }
    seal(&w->secret, f, len);
    w->next_seq++;
    *frame = f;
    *frame_len = len + MOE_FRAME_OVERHEAD;
    return MOE_OK;
}

moe_status moe_frame_wrap(const moe_secret *secret, const uint8_t *payload, size_t len, uint8_t **frame,
                          size_t *frame_len)
{
    *frame = NULL;
    *frame_len = 0;
    if (len > MOE_FRAME_MAX)
        return moe_fail(MOE_ERR_USAGE, "a payload of %zu bytes exceeds the %u-byte frame limit", len, MOE_FRAME_MAX);
    uint8_t *f;
    MOE_TRY(moe_alloc((void **)&f, len + MOE_FRAME_OVERHEAD, "control frame"));
    if (len)
        memcpy(f + MOE_FRAME_HEADER, payload, len);
    seal(secret, f, len);
    *frame = f;
    *frame_len = len + MOE_FRAME_OVERHEAD;
    return MOE_OK;
}

/* ------------------------------------------------------------------------ */
/* Receiving */

moe_status moe_frame_receiver_init(moe_frame_receiver *rx, const moe_secret *secret, const char *job_id,
                                   uint32_t world_size, moe_role self, uint32_t rank)
{
    memset(rx, 0, sizeof *rx);
    if (self == MOE_ROLE_COORDINATOR)
        rank = 0; /* the coordinator reads every rank's stream */
    MOE_TRY(check_identity(job_id, world_size, self, rank, "control receiver"));
    MOE_TRY(sodium_ready());
    size_t streams = self == MOE_ROLE_WORKER ? 1 : world_size;
    MOE_TRY(moe_alloc((void **)&rx->last_seq, streams * sizeof *rx->last_seq, "control replay window"));
    rx->secret = *secret;
    snprintf(rx->job_id, sizeof rx->job_id, "%s", job_id);
    rx->self = self;
    rx->rank = rank;
    rx->world_size = world_size;
    return MOE_OK;
}

void moe_frame_receiver_free(moe_frame_receiver *rx)
{
    moe_free(rx->last_seq);
    sodium_memzero(rx, sizeof *rx);
}

moe_status moe_frame_reader_init(moe_frame_reader *r, moe_frame_receiver *rx, const char *peer)
{
    memset(r, 0, sizeof *r);
    if (!rx || !rx->last_seq)
        return moe_fail(MOE_ERR_INTERNAL, "control reader needs an initialised receiver");
    r->rx = rx;
    snprintf(r->peer, sizeof r->peer, "%s", peer ? peer : "a peer");
    r->rank = -1;
    r->refusal = MOE_FRAME_ACCEPTED;
    return MOE_OK;
}

void moe_frame_reader_free(moe_frame_reader *r)
{
    moe_free(r->buf);
    memset(r, 0, sizeof *r);
}

/* Room for n more bytes at r->end: slide the live bytes to the front, and
** grow (doubling) only when they and n do not fit. */
static moe_status reader_make_room(moe_frame_reader *r, size_t n)
{
    size_t live = r->end - r->start;
    if (n <= r->cap - r->end)
        return MOE_OK;
    if (live > SIZE_MAX - n)
        return moe_fail(MOE_ERR_NOMEM, "control reader: %zu + %zu bytes overflow", live, n);
    if (live + n <= r->cap) {
        memmove(r->buf, r->buf + r->start, live);
    } else {
        size_t cap = r->cap > READER_MIN_BYTES ? r->cap : READER_MIN_BYTES;
        while (cap < live + n)
            cap = cap > SIZE_MAX / 2 ? live + n : 2 * cap;
        uint8_t *buf;
        MOE_TRY(moe_alloc((void **)&buf, cap, "control reader buffer"));
        if (live)
            memcpy(buf, r->buf + r->start, live);
        moe_free(r->buf);
        r->buf = buf;
        r->cap = cap;
    }
    r->start = 0;
    r->end = live;
    return MOE_OK;
}

moe_status moe_frame_reader_feed(moe_frame_reader *r, const void *bytes, size_t n)
{
    if (r->refusal != MOE_FRAME_ACCEPTED || r->eof || n == 0)
        return MOE_OK;
    MOE_TRY(reader_make_room(r, n));
    memcpy(r->buf + r->end, bytes, n);
    r->end += n;
    return MOE_OK;
}

void moe_frame_reader_eof(moe_frame_reader *r) { r->eof = 1; }

__attribute__((format(printf, 3, 4)))
static moe_frame_result refuse(moe_frame_reader *r, moe_frame_refusal why, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof r->why, fmt, ap);
    va_end(ap);
    r->refusal = why;
    moe_warn("control: refused a frame from %s (%s): %s; dropping the connection", r->peer,
             moe_frame_refusal_name(why), r->why);
    return MOE_FRAME_REFUSED;
}

static void reader_consume(moe_frame_reader *r, size_t n)
{
    r->start += n;
    if (r->start < r->end)
        return;
    r->start = r->end = 0;
    if (r->cap > READER_KEEP_BYTES) {
        moe_free(r->buf);
        r->buf = NULL;
        r->cap = 0;
    }
}

/* The receiver's checks on a valid envelope; *last is its stream's slot. */
static moe_frame_refusal admit(const moe_frame_reader *r, const Moe__Control__Envelope *e, uint64_t **last,
                               char *why, size_t cap)
{
    const moe_frame_receiver *rx = r->rx;
    if (strcmp(e->job_id, rx->job_id) != 0)
        return say(why, cap, MOE_FRAME_WRONG_JOB, "frame for job '%s'; this is job '%s'", e->job_id, rx->job_id);
    moe_role want = rx->self == MOE_ROLE_COORDINATOR ? MOE_ROLE_WORKER : MOE_ROLE_COORDINATOR;
    if (e->sender != want)
        return say(why, cap, MOE_FRAME_WRONG_PEER, "frame sent by a %s, but this %s reads frames from a %s "
                   "(a reflected frame?)", role_name(e->sender), role_name(rx->self), role_name(want));
    if (rx->self == MOE_ROLE_WORKER && e->rank != rx->rank)
        return say(why, cap, MOE_FRAME_WRONG_PEER, "frame for rank %u; this is rank %u", e->rank, rx->rank);
    if (r->rank >= 0 && e->rank != (uint64_t)r->rank)
        return say(why, cap, MOE_FRAME_WRONG_PEER, "frame for rank %u on the connection of rank %" PRId64, e->rank,
                   r->rank);
    uint64_t *slot = &rx->last_seq[rx->self == MOE_ROLE_WORKER ? 0 : e->rank];
    if (e->seq <= *slot)
        return say(why, cap, MOE_FRAME_REPLAY, "rank %u %s frame has seq %" PRIu64 ", not above the last accepted %"
                   PRIu64 " (replayed or reordered)", e->rank, role_name(e->sender), e->seq, *slot);
    *last = slot;
    return MOE_FRAME_ACCEPTED;
}

moe_frame_result moe_frame_reader_next(moe_frame_reader *r, Moe__Control__Envelope **out)
{
    *out = NULL;
    if (r->refusal != MOE_FRAME_ACCEPTED)
        return MOE_FRAME_REFUSED;
    size_t avail = r->end - r->start;
    if (avail < MOE_FRAME_HEADER) {
        if (!r->eof)
            return MOE_FRAME_AGAIN;
        if (avail == 0)
            return MOE_FRAME_CLOSED;
        return refuse(r, MOE_FRAME_TRUNCATED, "the connection closed %zu bytes into a frame's 4-byte length", avail);
    }
    /* Refused before its bytes arrive: an oversized frame is never buffered. */
    const uint8_t *f = r->buf + r->start;
    uint32_t len = get_be32(f);
    if (len > MOE_FRAME_MAX)
        return refuse(r, MOE_FRAME_OVERSIZED, "frame length %u exceeds the %u-byte limit", len, MOE_FRAME_MAX);
    if (avail < MOE_FRAME_OVERHEAD + (size_t)len) {
        if (!r->eof)
            return MOE_FRAME_AGAIN;
        if (avail < MOE_FRAME_HEADER + (size_t)len)
            return refuse(r, MOE_FRAME_TRUNCATED, "truncated payload: the connection closed after %zu of %u bytes",
                          avail - MOE_FRAME_HEADER, len);
        return refuse(r, MOE_FRAME_TRUNCATED, "truncated HMAC: the connection closed after %zu of its %d bytes",
                      avail - MOE_FRAME_HEADER - len, MOE_FRAME_MAC);
    }
    if (crypto_auth_hmacsha256_verify(f + MOE_FRAME_HEADER + len, f, MOE_FRAME_HEADER + (size_t)len,
                                      r->rx->secret.key) != 0)
        return refuse(r, MOE_FRAME_BAD_MAC, "the HMAC of a %u-byte frame does not verify (corrupted or forged, "
                      "or made with another job's secret)", len);
    Moe__Control__Envelope *e;
    char why[sizeof r->why];
    moe_frame_refusal v = moe_envelope_decode(f + MOE_FRAME_HEADER, len, r->rx->world_size, &e, why, sizeof why);
    reader_consume(r, MOE_FRAME_OVERHEAD + (size_t)len); /* f is dead from here */
    uint64_t *last = NULL;
    if (v == MOE_FRAME_ACCEPTED)
        v = admit(r, e, &last, why, sizeof why);
    if (v != MOE_FRAME_ACCEPTED) {
        moe_envelope_free(e);
        return refuse(r, v, "%s", why);
    }
    *last = e->seq;
    if (r->rank < 0)
        r->rank = e->rank;
    r->frames++;
    *out = e;
    return MOE_FRAME_READY;
}
