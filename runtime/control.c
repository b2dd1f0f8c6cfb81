#include "runtime/control.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "runtime/base/frame.h"
#include "runtime/base/log.h"
#include "runtime/base/mem.h"
#include "runtime/base/timer.h"
#include "runtime/trainer.h"

#define CONNECT_TIMEOUT_S 30.0

typedef struct {
    int fd;
    int rank, world;
    moe_secret key;
    moe_frame_writer out;   /* guarded by send_lock */
    moe_frame_receiver in;
    moe_frame_reader reader;
    pthread_mutex_t send_lock;
    pthread_t thread;
    int thread_started;
    int wake[2];            /* finish writes a byte to end the thread */
    uint32_t interval_ms;
    atomic_long step;
    atomic_int phase;
    int lost;               /* the coordinator went away (thread only) */
    char binding[256];      /* sent in Hello */
} client;

static client *cl;

int moe_control_active(void) { return cl != NULL; }

/* ------------------------------------------------------------------------ */

static int send_frame(client *c, Moe__Control__Envelope *env)
{
    uint8_t *frame;
    size_t len;
    int bad = 0;
    pthread_mutex_lock(&c->send_lock);
    if (moe_frame_encode(&c->out, env, &frame, &len) != MOE_OK) {
        pthread_mutex_unlock(&c->send_lock);
        moe_warn("control: %s", moe_errmsg());
        return -1;
    }
    for (size_t off = 0; off < len && !bad;) {
        ssize_t w = send(c->fd, frame + off, len - off, MSG_NOSIGNAL);
        if (w > 0)
            off += (size_t)w;
        else if (!(w < 0 && errno == EINTR))
            bad = 1;
    }
    pthread_mutex_unlock(&c->send_lock);
    moe_free(frame);
    return bad ? -1 : 0;
}

static int send_heartbeat(client *c)
{
    Moe__Control__Heartbeat hb = MOE__CONTROL__HEARTBEAT__INIT;
    hb.step = atomic_load(&c->step);
    hb.phase = (Moe__Control__Phase)atomic_load(&c->phase);
    Moe__Control__Envelope env = MOE__CONTROL__ENVELOPE__INIT;
    env.body_case = MOE__CONTROL__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    return send_frame(c, &env);
}

/* Reads what is there; *env gets the next frame or NULL. Returns -1 when the
** connection is over (closed, refused, error). */
static int receive(client *c, Moe__Control__Envelope **env)
{
    *env = NULL;
    uint8_t buf[4096];
    ssize_t n = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0 && moe_frame_reader_feed(&c->reader, buf, (size_t)n) != MOE_OK)
        return -1;
    if (n == 0)
        moe_frame_reader_eof(&c->reader);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        return -1;
    moe_frame_result res = moe_frame_reader_next(&c->reader, env);
    return res == MOE_FRAME_REFUSED || res == MOE_FRAME_CLOSED ? -1 : 0;
}

static void act_on(client *c, const Moe__Control__Envelope *e)
{
    if (e->body_case != MOE__CONTROL__ENVELOPE__BODY_COMMAND)
        return; /* a second JobSpec, an Ack: nothing to do */
    const Moe__Control__Command *cmd = e->command;
    if (cmd->kind == MOE__CONTROL__COMMAND_KIND__COMMAND_STOP) {
        if (c->rank == 0)
            moe_info("control: the coordinator asks to stop (%s): checkpointing", cmd->reason);
        moe_train_request_stop();
    } else {
        /* ABORT and CHECKPOINT are not sent by this build's coordinator (it
        ** kills a failed attempt's processes itself). */
        moe_warn("control: ignoring command %d (%s): this worker acts only on stop", (int)cmd->kind,
                 cmd->reason);
    }
}

static void *beat_thread(void *arg)
{
    client *c = arg;
    double next = moe_now() + c->interval_ms / 1e3;
    for (;;) {
        int wait_ms = (int)((next - moe_now()) * 1e3);
        struct pollfd pf[2] = {{.fd = c->wake[0], .events = POLLIN}, {.fd = c->fd, .events = POLLIN}};
        int ready = poll(pf, c->lost ? 1 : 2, wait_ms > 0 ? wait_ms : 0);
        if (ready > 0 && pf[0].revents)
            return NULL;
        if (ready > 0 && !c->lost && pf[1].revents) {
            Moe__Control__Envelope *env;
            int over;
            while ((over = receive(c, &env)) == 0 && env) {
                act_on(c, env);
                moe_envelope_free(env);
            }
            if (over) {
                moe_warn("control: lost the coordinator (%s); training on unsupervised",
                         c->reader.refusal ? c->reader.why : "connection closed");
                c->lost = 1;
            }
        }
        if (moe_now() >= next) {
            if (!c->lost && send_heartbeat(c) != 0) {
                moe_warn("control: cannot send a heartbeat: %s; training on unsupervised", strerror(errno));
                c->lost = 1;
            }
            next += c->interval_ms / 1e3;
            if (next < moe_now())
                next = moe_now() + c->interval_ms / 1e3;
        }
    }
}

/* ------------------------------------------------------------------------ */

static moe_status connect_to(client *c, const char *addr)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || (size_t)(colon - addr) >= sizeof host || !colon[1])
        return moe_fail(MOE_ERR_USAGE, "MOE_COORDINATOR='%s' is not HOST:PORT", addr);
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    int rc = getaddrinfo(host, colon + 1, &hints, &ai);
    if (rc != 0)
        return moe_fail(MOE_ERR_SYSTEM, "coordinator %s: %s", addr, gai_strerror(rc));
    c->fd = -1;
    for (struct addrinfo *p = ai; p && c->fd < 0; p = p->ai_next) {
        c->fd = socket(p->ai_family, p->ai_socktype | SOCK_CLOEXEC, p->ai_protocol);
        if (c->fd >= 0 && connect(c->fd, p->ai_addr, p->ai_addrlen) != 0) {
            close(c->fd);
            c->fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (c->fd < 0)
        return moe_fail(MOE_ERR_SYSTEM, "cannot connect to the coordinator at %s: %s", addr, strerror(errno));
    return MOE_OK;
}

static moe_status say_hello(client *c)
{
    char hostname[256];
    if (gethostname(hostname, sizeof hostname) != 0 || !hostname[0])
        snprintf(hostname, sizeof hostname, "localhost");
    hostname[sizeof hostname - 1] = '\0';
    const char *lr = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    long local = lr ? strtol(lr, NULL, 10) : 0;
    Moe__Control__Hello h = MOE__CONTROL__HELLO__INIT;
    h.protocol = MOE_CONTROL_PROTOCOL;
    h.world_size = (uint32_t)c->world;
    h.hostname = hostname;
    h.pid = (uint32_t)getpid();
    h.local_rank = local >= 0 && local < c->world ? (uint32_t)local : 0;
    h.binding = c->binding;
    Moe__Control__Envelope env = MOE__CONTROL__ENVELOPE__INIT;
    env.body_case = MOE__CONTROL__ENVELOPE__BODY_HELLO;
    env.hello = &h;
    if (send_frame(c, &env) != 0)
        return moe_fail(MOE_ERR_SYSTEM, "cannot send Hello to the coordinator: %s", strerror(errno));
    return MOE_OK;
}

static moe_status await_job_spec(client *c)
{
    double deadline = moe_now() + CONNECT_TIMEOUT_S;
    for (;;) {
        Moe__Control__Envelope *env;
        if (receive(c, &env) != 0)
            return moe_fail(MOE_ERR_SYSTEM, "the coordinator closed the connection before the JobSpec%s%s",
                            c->reader.refusal ? ": " : "", c->reader.refusal ? c->reader.why : "");
        if (env && env->body_case == MOE__CONTROL__ENVELOPE__BODY_JOB_SPEC) {
            const Moe__Control__JobSpec *js = env->job_spec;
            c->interval_ms = js->heartbeat_interval_ms;
            int same = js->world_size == (uint32_t)c->world;
            moe_envelope_free(env);
            if (!same)
                return moe_fail(MOE_ERR_USAGE, "the coordinator's job has another world size than this one (%d)",
                                c->world);
            return MOE_OK;
        }
        moe_envelope_free(env);
        if (env)
            continue;
        double left = deadline - moe_now();
        if (left <= 0)
            return moe_fail(MOE_ERR_SYSTEM, "no JobSpec from the coordinator in %.0f s", CONNECT_TIMEOUT_S);
        struct pollfd pf = {.fd = c->fd, .events = POLLIN};
        poll(&pf, 1, (int)(left * 1e3) + 1);
    }
}

static void client_free(client *c)
{
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    if (c->wake[0] >= 0)
        close(c->wake[0]);
    if (c->wake[1] >= 0)
        close(c->wake[1]);
    moe_frame_reader_free(&c->reader);
    moe_frame_receiver_free(&c->in);
    moe_frame_writer_free(&c->out);
    pthread_mutex_destroy(&c->send_lock);
    moe_secret_wipe(&c->key);
    moe_free(c);
}

moe_status moe_control_start(int rank, int world_size, const char *binding)
{
    const char *addr = getenv("MOE_COORDINATOR");
    if (!addr || !*addr || cl)
        return MOE_OK;
    const char *job = getenv("MOE_JOB_ID");
    if (!job || !*job)
        return moe_fail(MOE_ERR_USAGE, "MOE_COORDINATOR is set but MOE_JOB_ID is not");
    client *c;
    MOE_TRY(moe_alloc((void **)&c, sizeof *c, "control client"));
    memset(c, 0, sizeof *c);
    c->fd = c->wake[0] = c->wake[1] = -1;
    c->rank = rank;
    c->world = world_size;
    snprintf(c->binding, sizeof c->binding, "%s", binding ? binding : "");
    atomic_init(&c->step, 0);
    atomic_init(&c->phase, MOE__CONTROL__PHASE__PHASE_STARTING);
    pthread_mutex_init(&c->send_lock, NULL);
    moe_status st = moe_secret_from_env(&c->key);
    if (st == MOE_OK)
        st = moe_frame_writer_init(&c->out, &c->key, job, (uint32_t)world_size, MOE_ROLE_WORKER, (uint32_t)rank);
    if (st == MOE_OK)
        st = moe_frame_receiver_init(&c->in, &c->key, job, (uint32_t)world_size, MOE_ROLE_WORKER, (uint32_t)rank);
    if (st == MOE_OK)
        st = moe_frame_reader_init(&c->reader, &c->in, "coordinator");
    if (st != MOE_OK) {
        client_free(c);
        return st;
    }
    st = connect_to(c, addr);
    if (st == MOE_OK)
        st = say_hello(c);
    if (st == MOE_OK)
        st = await_job_spec(c);
    if (st == MOE_OK && pipe(c->wake) != 0)
        st = moe_fail(MOE_ERR_SYSTEM, "control: pipe: %s", strerror(errno));
    if (st == MOE_OK) {
        if (pthread_create(&c->thread, NULL, beat_thread, c) != 0)
            st = moe_fail(MOE_ERR_SYSTEM, "control: cannot start the heartbeat thread");
        else
            c->thread_started = 1;
    }
    if (st != MOE_OK) {
        moe_warn("control: %s; training on unsupervised", moe_errmsg());
        client_free(c);
        return MOE_OK;
    }
    cl = c;
    return MOE_OK;
}

void moe_control_report_train(const moe_train_metrics *r)
{
    client *c = cl;
    if (!c)
        return;
    atomic_store(&c->step, r->step);
    atomic_store(&c->phase, MOE__CONTROL__PHASE__PHASE_TRAINING);
    if (c->rank != 0)
        return;
    Moe__Control__StepReport s = MOE__CONTROL__STEP_REPORT__INIT;
    s.kind = MOE__CONTROL__REPORT_KIND__REPORT_TRAIN;
    s.step = r->step;
    s.loss = r->loss;
    s.aux_loss = r->aux_loss;
    s.z_loss = r->z_loss;
    s.lr = r->lr;
    s.grad_norm = r->grad_norm;
    s.tokens_per_s = r->tokens_per_s;
    s.tflops = r->tflops;
    s.mfu = r->mfu;
    s.load_imbalance = r->load_imbalance;
    s.dropped_frac = r->dropped_frac;
    s.step_ms = r->step_ms;
    Moe__Control__Envelope env = MOE__CONTROL__ENVELOPE__INIT;
    Moe__Control__Error err = MOE__CONTROL__ERROR__INIT;
    int finite = s.loss == s.loss && s.loss - s.loss == 0 && s.grad_norm - s.grad_norm == 0;
    if (finite) {
        env.body_case = MOE__CONTROL__ENVELOPE__BODY_STEP_REPORT;
        env.step_report = &s;
    } else { /* the proto's rule: a diverged loss is an Error, not a report */
        err.kind = MOE__CONTROL__ERROR_KIND__ERROR_DIVERGED;
        err.step = r->step;
        err.message = "loss or gradient norm is not finite";
        env.body_case = MOE__CONTROL__ENVELOPE__BODY_ERROR;
        env.error = &err;
    }
    send_frame(c, &env); /* a lost coordinator is the heartbeat thread's to report */
}

void moe_control_report_eval(long step, double val_loss)
{
    client *c = cl;
    if (!c || c->rank != 0 || !(val_loss - val_loss == 0)) /* a non-finite loss fails validation: not sent */
        return;
    Moe__Control__StepReport s = MOE__CONTROL__STEP_REPORT__INIT;
    s.kind = MOE__CONTROL__REPORT_KIND__REPORT_EVAL;
    s.step = step;
    s.loss = val_loss;
    Moe__Control__Envelope env = MOE__CONTROL__ENVELOPE__INIT;
    env.body_case = MOE__CONTROL__ENVELOPE__BODY_STEP_REPORT;
    env.step_report = &s;
    send_frame(c, &env);
}

void moe_control_finish(moe_status st)
{
    client *c = cl;
    if (!c)
        return;
    cl = NULL;
    if (c->thread_started) {
        ssize_t w = write(c->wake[1], "x", 1);
        (void)w;
        pthread_join(c->thread, NULL);
    }
    Moe__Control__Envelope env = MOE__CONTROL__ENVELOPE__INIT;
    Moe__Control__Heartbeat hb = MOE__CONTROL__HEARTBEAT__INIT;
    Moe__Control__Error err = MOE__CONTROL__ERROR__INIT;
    char msg[4097];
    if (st == MOE_OK) {
        hb.step = atomic_load(&c->step);
        hb.phase = MOE__CONTROL__PHASE__PHASE_DONE;
        env.body_case = MOE__CONTROL__ENVELOPE__BODY_HEARTBEAT;
        env.heartbeat = &hb;
    } else {
        /* text only: no control characters may cross the wire */
        snprintf(msg, sizeof msg, "%s", moe_errmsg());
        for (char *p = msg; *p; p++)
            if ((unsigned char)*p < 0x20 && *p != '\t' && *p != '\n')
                *p = ' ';
        err.kind = (Moe__Control__ErrorKind)(st >= MOE_ERR_USAGE && st <= MOE_ERR_INTERNAL ? (int)st : 6);
        err.step = atomic_load(&c->step);
        err.message = msg;
        env.body_case = MOE__CONTROL__ENVELOPE__BODY_ERROR;
        env.error = &err;
    }
    if (!c->lost)
        send_frame(c, &env);
    shutdown(c->fd, SHUT_WR);
    client_free(c);
}
