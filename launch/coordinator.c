#include "launch/coordinator.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "runtime/base/log.h"
#include "runtime/base/mem.h"
#include "runtime/base/timer.h"

typedef struct {
    int fd;
    moe_frame_reader reader;
    double opened;        /* unbound connections are dropped after register_timeout */
    int dead;             /* a send failed: dropped at the end of the round */
    char peer[64];
} conn;

typedef struct {
    int conn;             /* index into conns, -1 when not connected */
    int hello;            /* sent an accepted Hello */
    int done;             /* said Heartbeat(DONE) */
    double last_seen;     /* moe_now() of the last accepted frame */
    uint32_t pid;
    char host[256];
    char binding[256]; /* as the worker logs it */
    int64_t step;
} rank_state;

struct moe_coord {
    moe_coord_spec spec;
    moe_metrics metrics; /* RUN_DIR/metrics.jsonl and the progress line */
    int metrics_open;
    moe_secret secret;
    char job_id[MOE_JOB_ID_MAX + 1];
    char addr[96];
    char addr_path[1100];
    int listen_fd;
    moe_frame_receiver rx;
    int rx_open;
    moe_frame_writer *to; /* [world] coordinator -> worker streams */
    rank_state *ranks;    /* [world] */
    conn *conns;
    int nconns, capconns;
    double opened;
    int unregistered_logged;
    uint64_t refusals;
    int64_t last_step;
    double last_loss;
    int failed_rank;
    int failed_silent;
    int quiet_failure;    /* the failing worker reports it itself (an Error frame) */
    char failure[1024];
};

static moe_status set_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return moe_fail(MOE_ERR_SYSTEM, "coordinator: fcntl: %s", strerror(errno));
    return MOE_OK;
}

static moe_status listen_on(moe_coord *c, const char *host)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = 0; /* ephemeral */
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return moe_fail(MOE_ERR_USAGE, "coordinator: '%s' is not a numeric IPv4 address", host);
    c->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->listen_fd < 0)
        return moe_fail(MOE_ERR_SYSTEM, "coordinator: socket: %s", strerror(errno));
    if (bind(c->listen_fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(c->listen_fd, 128) < 0)
        return moe_fail(MOE_ERR_SYSTEM, "coordinator: cannot listen on %s: %s", host, strerror(errno));
    socklen_t len = sizeof sa;
    if (getsockname(c->listen_fd, (struct sockaddr *)&sa, &len) < 0)
        return moe_fail(MOE_ERR_SYSTEM, "coordinator: getsockname: %s", strerror(errno));
    snprintf(c->addr, sizeof c->addr, "%s:%u", host, (unsigned)ntohs(sa.sin_port));
    return set_nonblocking(c->listen_fd);
}

static moe_status write_addr_file(moe_coord *c)
{
    char tmp[1200];
    snprintf(c->addr_path, sizeof c->addr_path, "%s/coordinator.addr", c->spec.run_dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", c->addr_path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return moe_fail(MOE_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    int bad = fprintf(f, "%s\njob %s\n", c->addr, c->job_id) < 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, c->addr_path) != 0)
        return moe_fail(MOE_ERR_IO, "cannot write %s: %s", c->addr_path, strerror(errno));
    return MOE_OK;
}

moe_status moe_coord_open(moe_coord **out, const moe_coord_spec *spec)
{
    *out = NULL;
    if (spec->world_size < 1 || !spec->secret || !spec->job_id || !spec->run_dir || !spec->config_yaml)
        return moe_fail(MOE_ERR_USAGE, "coordinator: incomplete job spec");
    moe_coord *c;
    MOE_TRY(moe_alloc((void **)&c, sizeof *c, "coordinator"));
    memset(c, 0, sizeof *c);
    c->spec = *spec;
    c->secret = *spec->secret;
    c->spec.secret = &c->secret;
    c->listen_fd = -1;
    c->failed_rank = -1;
    c->opened = moe_now();
    if (!c->spec.register_timeout_ms)
        c->spec.register_timeout_ms = 60000;
    snprintf(c->job_id, sizeof c->job_id, "%s", spec->job_id);
    c->spec.job_id = c->job_id;
    moe_status st = MOE_OK;
    size_t W = spec->world_size;
    MOE_TRY_GOTO(moe_alloc((void **)&c->to, W * sizeof *c->to, "coordinator writers"), st, fail);
    MOE_TRY_GOTO(moe_alloc((void **)&c->ranks, W * sizeof *c->ranks, "coordinator ranks"), st, fail);
    memset(c->to, 0, W * sizeof *c->to);
    memset(c->ranks, 0, W * sizeof *c->ranks);
    for (size_t r = 0; r < W; r++) {
        c->ranks[r].conn = -1;
        MOE_TRY_GOTO(moe_frame_writer_init(&c->to[r], &c->secret, c->job_id, spec->world_size,
                                           MOE_ROLE_COORDINATOR, (uint32_t)r), st, fail);
    }
    MOE_TRY_GOTO(moe_frame_receiver_init(&c->rx, &c->secret, c->job_id, spec->world_size,
                                         MOE_ROLE_COORDINATOR, 0), st, fail);
    c->rx_open = 1;
    MOE_TRY_GOTO(listen_on(c, spec->bind_host ? spec->bind_host : "127.0.0.1"), st, fail);
    MOE_TRY_GOTO(write_addr_file(c), st, fail);
    MOE_TRY_GOTO(moe_metrics_open(&c->metrics, spec->run_dir, spec->train_iters, spec->metrics_append), st, fail);
    c->metrics_open = 1;
    moe_debug("coordinator: job %s (attempt %u) listening on %s", c->job_id, spec->attempt, c->addr);
    *out = c;
    return MOE_OK;
fail:
    c->addr_path[0] = '\0';
    moe_coord_close(c);
    return st;
}

const char *moe_coord_address(const moe_coord *c) { return c->addr; }

const char *moe_coord_failure(const moe_coord *c, int *rank)
{
    if (rank)
        *rank = c->failed_rank;
    return c->failure[0] ? c->failure : NULL;
}

int moe_coord_failed_silent(const moe_coord *c) { return c->failed_silent; }

int moe_coord_registered(const moe_coord *c)
{
    int n = 0;
    for (uint32_t r = 0; r < c->spec.world_size; r++)
        n += c->ranks[r].hello;
    return n;
}

int moe_coord_done(const moe_coord *c)
{
    int n = 0;
    for (uint32_t r = 0; r < c->spec.world_size; r++)
        n += c->ranks[r].done;
    return n;
}

uint64_t moe_coord_refusals(const moe_coord *c) { return c->refusals; }
int64_t moe_coord_last_step(const moe_coord *c) { return c->last_step; }

const char *moe_coord_binding(const moe_coord *c, uint32_t r)
{
    return r < c->spec.world_size ? c->ranks[r].binding : "";
}

void moe_coord_pids(const moe_coord *c, uint32_t *pids)
{
    char self[256] = "";
    if (gethostname(self, sizeof self - 1) != 0)
        self[0] = '\0';
    for (uint32_t r = 0; r < c->spec.world_size; r++) {
        const rank_state *rs = &c->ranks[r];
        pids[r] = rs->hello && self[0] && strcmp(rs->host, self) == 0 ? rs->pid : 0;
    }
}

static void sweep_dead(moe_coord *c);

/* The first failure wins: later ones are usually its consequences. */
static void fail_rank(moe_coord *c, int rank, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail_rank(moe_coord *c, int rank, const char *fmt, ...)
{
    if (c->failure[0])
        return;
    char what[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    const rank_state *rs = &c->ranks[rank];
    snprintf(c->failure, sizeof c->failure, "rank %d (%s pid %u) %s", rank, rs->host[0] ? rs->host : "?",
             rs->pid, what);
    c->failed_rank = rank;
    moe_log(c->quiet_failure ? MOE_LOG_DEBUG : MOE_LOG_WARN, "coordinator: %s", c->failure);
}

/* ------------------------------------------------------------------------ */
/* connections */

static void drop_conn(moe_coord *c, int i)
{
    conn *k = &c->conns[i];
    int64_t rank = k->reader.rank;
    if (rank >= 0 && c->ranks[rank].conn == i) {
        c->ranks[rank].conn = -1;
        if (c->ranks[rank].hello && !c->ranks[rank].done)
            fail_rank(c, (int)rank, "closed its connection before finishing (the process died?)");
    }
    close(k->fd);
    moe_frame_reader_free(&k->reader);
    /* keep indices stable for ranks: move the last connection into i */
    int last = c->nconns - 1;
    if (i != last) {
        c->conns[i] = c->conns[last];
        int64_t lr = c->conns[i].reader.rank;
        if (lr >= 0 && c->ranks[lr].conn == last)
            c->ranks[lr].conn = i;
    }
    c->nconns--;
}

static int pending_conns(const moe_coord *c)
{
    int n = 0;
    for (int i = 0; i < c->nconns; i++)
        n += c->conns[i].reader.rank < 0;
    return n;
}

static moe_status accept_conns(moe_coord *c)
{
    for (;;) {
        struct sockaddr_in sa;
        socklen_t len = sizeof sa;
        int fd = accept4(c->listen_fd, (struct sockaddr *)&sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED)
                return MOE_OK;
            if (errno == EMFILE || errno == ENFILE) {
                moe_warn("coordinator: accept: %s", strerror(errno));
                return MOE_OK;
            }
            return moe_fail(MOE_ERR_SYSTEM, "coordinator: accept: %s", strerror(errno));
        }
        char ip[INET_ADDRSTRLEN] = "?";
        inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
        if (pending_conns(c) >= MOE_COORD_MAX_PENDING) {
            moe_warn("coordinator: refused a connection from %s:%u: %d connections have not "
                     "authenticated yet", ip, (unsigned)ntohs(sa.sin_port), MOE_COORD_MAX_PENDING);
            close(fd);
            c->refusals++;
            continue;
        }
        if (c->nconns == c->capconns) {
            int cap = c->capconns ? 2 * c->capconns : 8;
            conn *grown = realloc(c->conns, (size_t)cap * sizeof *grown);
            if (!grown) {
                close(fd);
                return moe_fail(MOE_ERR_NOMEM, "coordinator: out of memory for connections");
            }
            c->conns = grown;
            c->capconns = cap;
        }
        conn *k = &c->conns[c->nconns];
        memset(k, 0, sizeof *k);
        k->fd = fd;
        k->opened = moe_now();
        snprintf(k->peer, sizeof k->peer, "%s:%u", ip, (unsigned)ntohs(sa.sin_port));
        moe_status st = moe_frame_reader_init(&k->reader, &c->rx, k->peer);
        if (st != MOE_OK) {
            close(fd);
            return st;
        }
        c->nconns++;
    }
}

/* Writes a whole frame on a non-blocking socket, waiting up to 2 s for room. */
static int send_all(int fd, const uint8_t *p, size_t n)
{
    double deadline = moe_now() + 2.0;
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        double left = deadline - moe_now();
        if (left <= 0)
            return -1;
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        poll(&pf, 1, (int)(left * 1000) + 1);
    }
    return 0;
}

static moe_status send_to(moe_coord *c, uint32_t rank, Moe__Control__Envelope *env)
{
    uint8_t *frame;
    size_t len;
    MOE_TRY(moe_frame_encode(&c->to[rank], env, &frame, &len));
    int k = c->ranks[rank].conn;
    int bad = k < 0 || c->conns[k].dead || send_all(c->conns[k].fd, frame, len) != 0;
    moe_free(frame);
    if (bad && k >= 0 && !c->conns[k].dead) {
        moe_warn("coordinator: cannot send to rank %u (%s): %s", rank, c->conns[k].peer, strerror(errno));
        c->conns[k].dead = 1;
    }
    return MOE_OK;
}

static moe_status send_job_spec(moe_coord *c, uint32_t rank)
{
    const moe_coord_spec *s = &c->spec;
    Moe__Control__ParallelLayout par = MOE__CONTROL__PARALLEL_LAYOUT__INIT;
    par.tp = s->tp;
    par.pp = s->pp;
    par.cp = s->cp;
    par.ep = s->ep;
    par.etp = s->etp;
    Moe__Control__JobSpec js = MOE__CONTROL__JOB_SPEC__INIT;
    js.job_id = c->job_id;
    js.world_size = s->world_size;
    js.run_dir = (char *)s->run_dir;
    js.heartbeat_interval_ms = s->heartbeat_interval_ms;
    js.heartbeat_timeout_ms = s->heartbeat_timeout_ms;
    js.config_yaml = (char *)s->config_yaml;
    js.parallel = &par;
    js.train_iters = s->train_iters;
    js.attempt = s->attempt;
    Moe__Control__Envelope env = MOE__CONTROL__ENVELOPE__INIT;
    env.body_case = MOE__CONTROL__ENVELOPE__BODY_JOB_SPEC;
    env.job_spec = &js;
    return send_to(c, rank, &env);
}

moe_status moe_coord_command(moe_coord *c, Moe__Control__CommandKind kind, const char *reason)
{
    for (uint32_t r = 0; r < c->spec.world_size; r++) {
        if (!c->ranks[r].hello || c->ranks[r].conn < 0)
            continue;
        Moe__Control__Command cmd = MOE__CONTROL__COMMAND__INIT;
        cmd.kind = kind;
        cmd.reason = (char *)(reason ? reason : "");
        Moe__Control__Envelope env = MOE__CONTROL__ENVELOPE__INIT;
        env.body_case = MOE__CONTROL__ENVELOPE__BODY_COMMAND;
        env.command = &cmd;
        MOE_TRY(send_to(c, r, &env));
    }
    sweep_dead(c);
    return MOE_OK;
}

/* ------------------------------------------------------------------------ */
/* the conversation */

/* Rank 0's report as the run's metrics: one metrics.jsonl line, and the
** progress line every log_interval steps (and at the last). */
static moe_status write_metrics(moe_coord *c, const Moe__Control__StepReport *s)
{
    if (!c->metrics_open)
        return MOE_OK;
    if (s->kind == MOE__CONTROL__REPORT_KIND__REPORT_EVAL)
        return moe_metrics_eval(&c->metrics, (long)s->step, s->loss);
    moe_train_metrics m = {(long)s->step, s->loss, s->aux_loss, s->z_loss, s->lr, s->grad_norm, s->tokens_per_s,
                           s->tflops, s->mfu, s->load_imbalance, s->dropped_frac, s->step_ms};
    long li = c->spec.log_interval;
    int print = li > 0 && (m.step % li == 0 || m.step == c->spec.train_iters);
    return moe_metrics_train(&c->metrics, &m, print);
}

/* Returns nonzero when the connection must be dropped. */
static int handle(moe_coord *c, int k, const Moe__Control__Envelope *e, moe_status *st)
{
    uint32_t r = e->rank;
    rank_state *rs = &c->ranks[r];
    rs->last_seen = moe_now();
    if (e->body_case == MOE__CONTROL__ENVELOPE__BODY_HELLO) {
        const Moe__Control__Hello *h = e->hello;
        if (h->protocol != MOE_CONTROL_PROTOCOL || h->world_size != c->spec.world_size) {
            moe_warn("coordinator: rank %u at %s speaks protocol %u for %u ranks; this job is protocol %u "
                     "with %u ranks: dropping it", r, c->conns[k].peer, h->protocol, h->world_size,
                     MOE_CONTROL_PROTOCOL, c->spec.world_size);
            return 1;
        }
        if (rs->conn >= 0 && rs->conn != k) {
            moe_warn("coordinator: a second connection for rank %u from %s: dropping it", r, c->conns[k].peer);
            return 1;
        }
        rs->conn = k;
        rs->hello = 1;
        rs->pid = h->pid;
        snprintf(rs->host, sizeof rs->host, "%s", h->hostname);
        snprintf(rs->binding, sizeof rs->binding, "%s", h->binding ? h->binding : "");
        moe_debug("coordinator: rank %u registered: host %s pid %u local rank %u, %s", r, rs->host, rs->pid,
                  h->local_rank, rs->binding[0] ? rs->binding : "not bound");
        *st = send_job_spec(c, r);
        return 0;
    }
    if (!rs->hello || rs->conn != k) {
        moe_warn("coordinator: rank %u at %s sent %s before Hello: dropping it", r, c->conns[k].peer,
                 e->body_case == MOE__CONTROL__ENVELOPE__BODY_HEARTBEAT ? "a heartbeat" : "a frame");
        c->refusals++;
        return 1;
    }
    switch (e->body_case) {
    case MOE__CONTROL__ENVELOPE__BODY_HEARTBEAT:
        rs->step = e->heartbeat->step;
        if (e->heartbeat->phase == MOE__CONTROL__PHASE__PHASE_DONE)
            rs->done = 1;
        break;
    case MOE__CONTROL__ENVELOPE__BODY_STEP_REPORT:
        if (e->step_report->kind == MOE__CONTROL__REPORT_KIND__REPORT_TRAIN) {
            rs->step = e->step_report->step;
            if (r == 0) {
                c->last_step = e->step_report->step;
                c->last_loss = e->step_report->loss;
            }
        }
        if (r == 0)
            *st = write_metrics(c, e->step_report);
        break;
    case MOE__CONTROL__ENVELOPE__BODY_ERROR:
        c->quiet_failure = !c->failure[0];
        fail_rank(c, (int)r, "failed at step %lld: %s", (long long)e->error->step, e->error->message);
        break;
    default:
        break; /* Ack: nothing waits for one */
    }
    return 0;
}

static moe_status service(moe_coord *c, int k)
{
    uint8_t buf[65536];
    moe_status st = MOE_OK;
    for (;;) {
        ssize_t n = recv(c->conns[k].fd, buf, sizeof buf, 0);
        if (n > 0) {
            MOE_TRY(moe_frame_reader_feed(&c->conns[k].reader, buf, (size_t)n));
        } else if (n == 0) {
            moe_frame_reader_eof(&c->conns[k].reader);
        } else if (errno == EINTR) {
            continue;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
            moe_frame_reader_eof(&c->conns[k].reader); /* reset: what was buffered decides */
        }
        Moe__Control__Envelope *env;
        moe_frame_result res;
        int drop = 0;
        while ((res = moe_frame_reader_next(&c->conns[k].reader, &env)) == MOE_FRAME_READY) {
            drop = handle(c, k, env, &st);
            moe_envelope_free(env);
            if (drop || st != MOE_OK)
                break;
        }
        if (res == MOE_FRAME_REFUSED)
            c->refusals++;
        if (drop || c->conns[k].dead || res == MOE_FRAME_REFUSED || res == MOE_FRAME_CLOSED) {
            drop_conn(c, k);
            return st;
        }
        if (st != MOE_OK || n <= 0 || (size_t)n < sizeof buf)
            return st;
    }
}

static void sweep_dead(moe_coord *c)
{
    for (int i = c->nconns - 1; i >= 0; i--)
        if (i < c->nconns && c->conns[i].dead)
            drop_conn(c, i);
}

static void check_deadlines(moe_coord *c)
{
    double now = moe_now();
    double reg = c->spec.register_timeout_ms / 1e3, beat = c->spec.heartbeat_timeout_ms / 1e3;
    for (int i = 0; i < c->nconns;) {
        if (c->conns[i].reader.rank < 0 && now - c->conns[i].opened > reg) {
            moe_warn("coordinator: dropping %s: no valid Hello in %.0f s", c->conns[i].peer, reg);
            c->refusals++;
            drop_conn(c, i);
            continue;
        }
        i++;
    }
    for (uint32_t r = 0; r < c->spec.world_size; r++) {
        rank_state *rs = &c->ranks[r];
        if (rs->hello && !rs->done && now - rs->last_seen > beat && !c->failure[0]) {
            c->failed_silent = 1;
            fail_rank(c, (int)r, "sent no heartbeat for %.1f s (timeout %.1f s): stopped or hung",
                      now - rs->last_seen, beat);
        }
    }
    if (!c->unregistered_logged && now - c->opened > reg && moe_coord_registered(c) < (int)c->spec.world_size) {
        c->unregistered_logged = 1;
        moe_warn("coordinator: only %d of %u ranks registered in %.0f s; the others are not supervised",
                 moe_coord_registered(c), c->spec.world_size, reg);
    }
}

moe_status moe_coord_poll(moe_coord *c, int timeout_ms)
{
    int n = c->nconns + 1;
    struct pollfd stack[64], *pf = stack;
    if (n > 64)
        MOE_TRY(moe_alloc((void **)&pf, (size_t)n * sizeof *pf, "coordinator poll set"));
    pf[0] = (struct pollfd){.fd = c->listen_fd, .events = POLLIN};
    for (int i = 0; i < c->nconns; i++)
        pf[i + 1] = (struct pollfd){.fd = c->conns[i].fd, .events = POLLIN};
    int ready = poll(pf, (nfds_t)n, timeout_ms);
    moe_status st = MOE_OK;
    if (ready < 0 && errno != EINTR)
        st = moe_fail(MOE_ERR_SYSTEM, "coordinator: poll: %s", strerror(errno));
    if (ready > 0) {
        /* Service from the back: drop_conn moves the last connection into a
        ** dropped slot, which is then one we have already looked at. */
        int fds[n];
        for (int i = 0; i < c->nconns; i++)
            fds[i] = pf[i + 1].revents ? c->conns[i].fd : -1;
        for (int i = c->nconns - 1; i >= 0 && st == MOE_OK; i--)
            if (fds[i] >= 0 && i < c->nconns && c->conns[i].fd == fds[i])
                st = service(c, i);
        if (st == MOE_OK && (pf[0].revents & POLLIN))
            st = accept_conns(c);
    }
    if (pf != stack)
        moe_free(pf);
    sweep_dead(c);
    if (st == MOE_OK)
        check_deadlines(c);
    return st;
}

void moe_coord_close(moe_coord *c)
{
    if (!c)
        return;
    if (c->metrics_open)
        moe_metrics_close(&c->metrics);
    while (c->nconns > 0) {
        conn *k = &c->conns[c->nconns - 1];
        close(k->fd);
        moe_frame_reader_free(&k->reader);
        c->nconns--;
    }
    free(c->conns);
    if (c->listen_fd >= 0)
        close(c->listen_fd);
    if (c->addr_path[0])
        unlink(c->addr_path);
    if (c->to)
        for (uint32_t r = 0; r < c->spec.world_size; r++)
            moe_frame_writer_free(&c->to[r]);
    moe_free(c->to);
    moe_free(c->ranks);
    if (c->rx_open)
        moe_frame_receiver_free(&c->rx);
    moe_secret_wipe(&c->secret);
    moe_free(c);
}
