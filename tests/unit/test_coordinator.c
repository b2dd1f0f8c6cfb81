/*
** test_coordinator: the coordinator's event loop (launch/coordinator.h) driven
** in-process over loopback TCP by hand-made workers, and the worker client
** (runtime/control.h) against it: registration and the JobSpec, step reports,
** a clean finish, a silent rank, a rank that disappears, hostile connections
** (junk, wrong key, oversized, truncated, replayed, a flood of unauthenticated
** connections) that must not disturb the job.
*/
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "launch/coordinator.h"
#include "runtime/base/mem.h"
#include "runtime/base/timer.h"
#include "runtime/control.h"
#include "tests/unit/testutil.h"

static char tmpdir[512];
static moe_secret key;
static const char *JOB = "test-job.0";
static const char *YAML = "num-layers: 2\nhidden-size: 64\n";

static void setup(void)
{
    tu_tmpdir(tmpdir, sizeof tmpdir, "coord");
    ck_assert_int_eq(moe_secret_generate(&key), MOE_OK);
}

static moe_coord *open_coord(uint32_t world, uint32_t interval_ms, uint32_t timeout_ms)
{
    moe_coord_spec spec = {.job_id = JOB, .world_size = world, .run_dir = tmpdir, .secret = &key,
                           .heartbeat_interval_ms = interval_ms, .heartbeat_timeout_ms = timeout_ms,
                           .register_timeout_ms = 2000, .config_yaml = YAML, .tp = 1, .pp = 1, .cp = 1,
                           .ep = world, .etp = 1, .train_iters = 100, .attempt = 3};
    moe_coord *c = NULL;
    ck_assert_msg(moe_coord_open(&c, &spec) == MOE_OK, "%s", moe_errmsg());
    return c;
}

static int dial(const moe_coord *c)
{
    const char *addr = moe_coord_address(c);
    const char *colon = strrchr(addr, ':');
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

static void pump(moe_coord *c, double seconds)
{
    for (double until = moe_now() + seconds; moe_now() < until;)
        ck_assert_msg(moe_coord_poll(c, 5) == MOE_OK, "%s", moe_errmsg());
}

/* A hand-made worker: its stream to the coordinator and the one back. */
typedef struct {
    int fd;
    moe_frame_writer out;
    moe_frame_receiver in;
    moe_frame_reader rd;
} fake_worker;

static void fw_open(fake_worker *w, const moe_coord *c, uint32_t rank, uint32_t world)
{
    w->fd = dial(c);
    ck_assert_int_eq(moe_frame_writer_init(&w->out, &key, JOB, world, MOE_ROLE_WORKER, rank), MOE_OK);
    ck_assert_int_eq(moe_frame_receiver_init(&w->in, &key, JOB, world, MOE_ROLE_WORKER, rank), MOE_OK);
    ck_assert_int_eq(moe_frame_reader_init(&w->rd, &w->in, "coordinator"), MOE_OK);
}

static void fw_close(fake_worker *w)
{
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
    moe_frame_reader_free(&w->rd);
    moe_frame_receiver_free(&w->in);
    moe_frame_writer_free(&w->out);
}

static void send_raw(int fd, const uint8_t *p, size_t n)
{
    ck_assert_int_eq((long)send(fd, p, n, MSG_NOSIGNAL), (long)n);
}

/* Encodes and sends; a copy of the frame goes to *copy (for replaying) when asked. */
static void fw_send(fake_worker *w, Moe__Control__Envelope *env, uint8_t **copy, size_t *copy_len)
{
    uint8_t *frame;
    size_t len;
    ck_assert_msg(moe_frame_encode(&w->out, env, &frame, &len) == MOE_OK, "%s", moe_errmsg());
    send_raw(w->fd, frame, len);
    if (copy) {
        *copy = frame;
        *copy_len = len;
    } else {
        moe_free(frame);
    }
}

static void fw_hello(fake_worker *w, uint32_t world, uint8_t **copy, size_t *copy_len)
{
    Moe__Control__Hello h = MOE__CONTROL__HELLO__INIT;
    h.protocol = MOE_CONTROL_PROTOCOL;
    h.world_size = world;
    /* rank 0 claims this host, the others a foreign one (moe_coord_pids) */
    char self[256] = "localhost";
    gethostname(self, sizeof self - 1);
    h.hostname = w->out.rank == 0 ? self : "testhost";
    h.pid = 4242;
    Moe__Control__Envelope env = MOE__CONTROL__ENVELOPE__INIT;
    env.body_case = MOE__CONTROL__ENVELOPE__BODY_HELLO;
    env.hello = &h;
    fw_send(w, &env, copy, copy_len);
}

static void fw_beat(fake_worker *w, int64_t step, Moe__Control__Phase phase)
{
    Moe__Control__Heartbeat hb = MOE__CONTROL__HEARTBEAT__INIT;
    hb.step = step;
    hb.phase = phase;
    Moe__Control__Envelope env = MOE__CONTROL__ENVELOPE__INIT;
    env.body_case = MOE__CONTROL__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    fw_send(w, &env, NULL, NULL);
}

static void fw_report(fake_worker *w, int64_t step, double loss)
{
    Moe__Control__StepReport r = MOE__CONTROL__STEP_REPORT__INIT;
    r.kind = MOE__CONTROL__REPORT_KIND__REPORT_TRAIN;
    r.step = step;
    r.loss = loss;
    Moe__Control__Envelope env = MOE__CONTROL__ENVELOPE__INIT;
    env.body_case = MOE__CONTROL__ENVELOPE__BODY_STEP_REPORT;
    env.step_report = &r;
    fw_send(w, &env, NULL, NULL);
}

/* The next frame from the coordinator, pumping it meanwhile; NULL at EOF or timeout. */
static Moe__Control__Envelope *fw_recv(fake_worker *w, moe_coord *c, double seconds)
{
    for (double until = moe_now() + seconds; moe_now() < until;) {
        Moe__Control__Envelope *env;
        moe_frame_result res = moe_frame_reader_next(&w->rd, &env);
        if (res == MOE_FRAME_READY)
            return env;
        if (res != MOE_FRAME_AGAIN)
            return NULL;
        ck_assert_int_eq(moe_coord_poll(c, 5), MOE_OK);
        uint8_t buf[4096];
        ssize_t n = recv(w->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0)
            ck_assert_int_eq(moe_frame_reader_feed(&w->rd, buf, (size_t)n), MOE_OK);
        else if (n == 0)
            moe_frame_reader_eof(&w->rd);
    }
    return NULL;
}

static void fw_register(fake_worker *w, moe_coord *c, uint32_t rank, uint32_t world, uint8_t **copy,
                        size_t *copy_len)
{
    fw_open(w, c, rank, world);
    fw_hello(w, world, copy, copy_len);
    Moe__Control__Envelope *env = fw_recv(w, c, 5.0);
    ck_assert_msg(env != NULL, "no JobSpec for rank %u", rank);
    ck_assert_int_eq(env->body_case, MOE__CONTROL__ENVELOPE__BODY_JOB_SPEC);
    ck_assert_int_eq(env->job_spec->world_size, world);
    ck_assert_int_eq(env->job_spec->attempt, 3);
    ck_assert_str_eq(env->job_spec->config_yaml, YAML);
    ck_assert_str_eq(env->job_spec->job_id, JOB);
    moe_envelope_free(env);
}

/* Whether the coordinator has closed fd (reads EOF within seconds). */
static int closed_by_peer(int fd, moe_coord *c, double seconds)
{
    for (double until = moe_now() + seconds; moe_now() < until;) {
        pump(c, 0.01);
        uint8_t b[256];
        ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return 1;
        ck_assert_msg(n < 0, "the coordinator answered a hostile connection");
    }
    return 0;
}

START_TEST(register_report_finish)
{
    moe_coord *c = open_coord(2, 50, 400);
    char path[600];
    snprintf(path, sizeof path, "%s/coordinator.addr", tmpdir);
    ck_assert_int_eq(access(path, R_OK), 0);
    fake_worker w[2];
    for (uint32_t r = 0; r < 2; r++)
        fw_register(&w[r], c, r, 2, NULL, NULL);
    ck_assert_int_eq(moe_coord_registered(c), 2);
    uint32_t pids[2];
    moe_coord_pids(c, pids);
    ck_assert_int_eq(pids[0], 4242); /* on this host */
    ck_assert_int_eq(pids[1], 0);    /* elsewhere: never ours to kill */
    for (int step = 1; step <= 5; step++) {
        fw_report(&w[0], step, 5.0 - step * 0.1);
        fw_beat(&w[1], step, MOE__CONTROL__PHASE__PHASE_TRAINING);
        pump(c, 0.1); /* 0.5 s in all: more than the timeout, kept alive by the frames */
    }
    ck_assert_ptr_null(moe_coord_failure(c, NULL));
    ck_assert_int_eq(moe_coord_last_step(c), 5);
    for (int r = 0; r < 2; r++) {
        fw_beat(&w[r], 5, MOE__CONTROL__PHASE__PHASE_DONE);
        fw_close(&w[r]);
    }
    pump(c, 0.6);
    ck_assert_int_eq(moe_coord_done(c), 2);
    ck_assert_ptr_null(moe_coord_failure(c, NULL));
    ck_assert_int_eq((int)moe_coord_refusals(c), 0);
    moe_coord_close(c);
    ck_assert_int_ne(access(path, F_OK), 0); /* the address goes with the coordinator */
}
END_TEST

START_TEST(silent_rank_fails)
{
    moe_coord *c = open_coord(2, 20, 200);
    fake_worker w[2];
    for (uint32_t r = 0; r < 2; r++)
        fw_register(&w[r], c, r, 2, NULL, NULL);
    double t0 = moe_now();
    int rank = -1;
    while (!moe_coord_failure(c, &rank) && moe_now() - t0 < 2.0) {
        fw_beat(&w[0], 1, MOE__CONTROL__PHASE__PHASE_TRAINING); /* rank 1 says nothing */
        pump(c, 0.02);
    }
    double took = moe_now() - t0;
    const char *why = moe_coord_failure(c, &rank);
    ck_assert_ptr_nonnull(why);
    ck_assert_int_eq(rank, 1);
    ck_assert(moe_coord_failed_silent(c));
    ck_assert_msg(strstr(why, "rank 1 (testhost pid 4242) sent no heartbeat"), "%s", why);
    ck_assert_msg(took >= 0.15 && took < 0.6, "silence found after %.3f s (timeout 0.2 s)", took);
    for (int r = 0; r < 2; r++)
        fw_close(&w[r]);
    moe_coord_close(c);
}
END_TEST

START_TEST(vanished_rank_fails)
{
    moe_coord *c = open_coord(2, 50, 5000);
    fake_worker w[2];
    for (uint32_t r = 0; r < 2; r++)
        fw_register(&w[r], c, r, 2, NULL, NULL);
    fw_close(&w[0]); /* like kill -9: the socket closes without Heartbeat(DONE) */
    pump(c, 0.2);
    int rank;
    const char *why = moe_coord_failure(c, &rank);
    ck_assert_ptr_nonnull(why);
    ck_assert_int_eq(rank, 0);
    ck_assert(!moe_coord_failed_silent(c));
    ck_assert_msg(strstr(why, "closed its connection"), "%s", why);
    fw_close(&w[1]);
    moe_coord_close(c);
}
END_TEST

START_TEST(hostile_frames_refused)
{
    moe_coord *c = open_coord(1, 50, 1000);
    fake_worker w;
    uint8_t *hello;
    size_t hello_len;
    fw_register(&w, c, 0, 1, &hello, &hello_len);

    /* each on its own connection; each must be closed by the coordinator */
    moe_secret other;
    ck_assert_int_eq(moe_secret_generate(&other), MOE_OK);
    moe_frame_writer forger;
    ck_assert_int_eq(moe_frame_writer_init(&forger, &other, JOB, 1, MOE_ROLE_WORKER, 0), MOE_OK);
    Moe__Control__Heartbeat hb = MOE__CONTROL__HEARTBEAT__INIT;
    hb.step = 1;
    hb.phase = MOE__CONTROL__PHASE__PHASE_TRAINING;
    Moe__Control__Envelope env = MOE__CONTROL__ENVELOPE__INIT;
    env.body_case = MOE__CONTROL__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    uint8_t *forged;
    size_t forged_len;
    ck_assert_int_eq(moe_frame_encode(&forger, &env, &forged, &forged_len), MOE_OK);
    const uint8_t oversized[8] = {0x7f, 0xff, 0xff, 0xff, 'a', 'b', 'c', 'd'};
    const char *junk = "GET / HTTP/1.1\r\nHost: coordinator\r\n\r\n";
    struct {
        const uint8_t *p;
        size_t n;
        int shut; /* close our end after sending (a truncated frame needs EOF) */
    } cases[] = {
        {(const uint8_t *)junk, strlen(junk), 0},
        {forged, forged_len, 0},          /* bad-mac */
        {oversized, sizeof oversized, 0}, /* oversized */
        {hello, hello_len / 2, 1},        /* truncated */
        {hello, hello_len, 0},            /* replay: seq 1 of rank 0 was its Hello */
    };
    int n = (int)(sizeof cases / sizeof cases[0]);
    for (int i = 0; i < n; i++) {
        int fd = dial(c);
        send_raw(fd, cases[i].p, cases[i].n);
        if (cases[i].shut)
            shutdown(fd, SHUT_WR);
        ck_assert_msg(closed_by_peer(fd, c, 3.0), "hostile case %d kept open", i);
        close(fd);
        fw_beat(&w, i + 1, MOE__CONTROL__PHASE__PHASE_TRAINING); /* the real worker carries on */
    }
    ck_assert_int_eq((int)moe_coord_refusals(c), n);

    /* a flood of silent connections is capped, and none of it hurts rank 0 */
    int flood[MOE_COORD_MAX_PENDING + 4];
    for (int i = 0; i < MOE_COORD_MAX_PENDING + 4; i++) {
        flood[i] = dial(c);
        pump(c, 0.002);
    }
    pump(c, 0.05);
    ck_assert_int_ge((int)moe_coord_refusals(c), n + 4);
    for (int i = 0; i < MOE_COORD_MAX_PENDING + 4; i++)
        close(flood[i]);
    fw_report(&w, 9, 1.5);
    pump(c, 0.1);
    ck_assert_ptr_null(moe_coord_failure(c, NULL));
    ck_assert_int_eq(moe_coord_last_step(c), 9);
    fw_beat(&w, 9, MOE__CONTROL__PHASE__PHASE_DONE);
    pump(c, 0.05);
    ck_assert_int_eq(moe_coord_done(c), 1);
    moe_free(hello);
    moe_free(forged);
    moe_frame_writer_free(&forger);
    fw_close(&w);
    moe_coord_close(c);
}
END_TEST

/* The worker client against a coordinator looping in another thread, until
** the client says DONE (or 5 s): only that thread touches the coordinator
** until it is joined. */
static void *coord_loop(void *p)
{
    moe_coord *c = p;
    for (double until = moe_now() + 5.0; moe_coord_done(c) < 1 && moe_now() < until;)
        if (moe_coord_poll(c, 5) != MOE_OK)
            break;
    return NULL;
}

START_TEST(worker_client)
{
    moe_coord *c = open_coord(1, 20, 200);
    char hex[MOE_SECRET_HEX + 1];
    moe_secret_to_hex(&key, hex);
    setenv("MOE_COORDINATOR", moe_coord_address(c), 1);
    setenv("MOE_JOB_ID", JOB, 1);
    setenv("MOE_JOB_SECRET", hex, 1);
    unsetenv("MOE_JOB_SECRET_FILE");
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, coord_loop, c), 0);
    ck_assert_msg(moe_control_start(0, 1, "rank 0/1 bound to core 1 (PU 1)") == MOE_OK, "%s", moe_errmsg());
    ck_assert(moe_control_active());
    moe_train_metrics m = {.step = 7, .loss = 2.5, .lr = 1e-3, .grad_norm = 0.5};
    moe_control_report_train(&m);
    usleep(500000); /* 0.5 s: more than twice the timeout, bridged by the client's heartbeats */
    moe_control_finish(MOE_OK);
    ck_assert(!moe_control_active());
    pthread_join(t, NULL);
    ck_assert_msg(moe_coord_failure(c, NULL) == NULL, "%s", moe_coord_failure(c, NULL));
    ck_assert_int_eq(moe_coord_registered(c), 1);
    ck_assert_int_eq(moe_coord_done(c), 1);
    ck_assert_int_eq(moe_coord_last_step(c), 7);
    ck_assert_str_eq(moe_coord_binding(c, 0), "rank 0/1 bound to core 1 (PU 1)"); /* registered with its binding */
    unsetenv("MOE_COORDINATOR");
    unsetenv("MOE_JOB_SECRET");
    moe_coord_close(c);
}
END_TEST

START_TEST(client_off_without_coordinator)
{
    unsetenv("MOE_COORDINATOR");
    ck_assert_int_eq(moe_control_start(0, 1, ""), MOE_OK);
    ck_assert(!moe_control_active());
    moe_train_metrics m = {.step = 1, .loss = 1};
    moe_control_report_train(&m); /* no-ops */
    moe_control_finish(MOE_OK);
}
END_TEST

int main(void)
{
    setenv("MOE_LOG_LEVEL", "error", 1); /* refusals and failures log warnings */
    Suite *s = suite_create("coordinator");
    TCase *tc = tcase_create("coordinator");
    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, register_report_finish);
    tcase_add_test(tc, silent_rank_fails);
    tcase_add_test(tc, vanished_rank_fails);
    tcase_add_test(tc, hostile_frames_refused);
    tcase_add_test(tc, worker_client);
    tcase_add_test(tc, client_off_without_coordinator);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
