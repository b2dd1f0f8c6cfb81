/*
** test_frame: the control plane's wire layer (runtime/base/frame.h). Every message
** kind survives a round trip; every hostile frame (junk, oversized, truncated,
** tampered, forged, replayed, reordered, another job's, invalid fields) is
** refused with the right reason; any split of the byte stream across feeds
** decodes identically; secret files with loose permissions are refused.
*/
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/base/frame.h"
#include "runtime/base/mem.h"
#include "testutil.h"

#define JOB "job-1"
#define WORLD 4u

static moe_secret secret_a, secret_b;

static void make_secret(moe_secret *s, uint8_t base)
{
    for (int i = 0; i < MOE_SECRET_BYTES; i++)
        s->key[i] = (uint8_t)(base + 7 * i);
}

static void setup(void)
{
    make_secret(&secret_a, 1);
    make_secret(&secret_b, 2);
    moe_error_clear();
}

/* ---- building blocks ---------------------------------------------------- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
} bytes;

static void bytes_add(bytes *b, const uint8_t *p, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        b->p = realloc(b->p, b->cap);
        ck_assert_ptr_nonnull(b->p);
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

/* Packed bytes of a message, for comparing two messages field by field. */
static bytes pack(const ProtobufCMessage *m)
{
    bytes b = {0};
    b.cap = protobuf_c_message_get_packed_size(m) + 1;
    b.p = malloc(b.cap);
    ck_assert_ptr_nonnull(b.p);
    b.n = protobuf_c_message_pack(m, b.p);
    return b;
}

static void coord_rx(moe_frame_receiver *rx)
{
    ck_assert_int_eq(moe_frame_receiver_init(rx, &secret_a, JOB, WORLD, MOE_ROLE_COORDINATOR, 0), MOE_OK);
}

static void worker_rx(moe_frame_receiver *rx, uint32_t rank)
{
    ck_assert_int_eq(moe_frame_receiver_init(rx, &secret_a, JOB, WORLD, MOE_ROLE_WORKER, rank), MOE_OK);
}

static void writer(moe_frame_writer *w, const moe_secret *s, const char *job, moe_role role, uint32_t rank)
{
    ck_assert_int_eq(moe_frame_writer_init(w, s, job, WORLD, role, rank), MOE_OK);
}

/* Encodes env with w and appends the frame to out. */
static void encode_into(moe_frame_writer *w, Moe__Control__Envelope *env, bytes *out)
{
    uint8_t *f;
    size_t n;
    ck_assert_msg(moe_frame_encode(w, env, &f, &n) == MOE_OK, "encode: %s", moe_errmsg());
    bytes_add(out, f, n);
    moe_free(f);
}

/* Frames a hand-made envelope as it is (no validation), with `s`. */
static bytes craft(Moe__Control__Envelope *env, const moe_secret *s)
{
    bytes payload = pack(&env->base);
    uint8_t *f;
    size_t n;
    ck_assert_int_eq(moe_frame_wrap(s, payload.p, payload.n, &f, &n), MOE_OK);
    bytes b = {0};
    bytes_add(&b, f, n);
    moe_free(f);
    free(payload.p);
    return b;
}

/* Feeds n bytes to r, then takes envelopes until it stops; returns the last result. */
static moe_frame_result drain(moe_frame_reader *r, const uint8_t *p, size_t n, int eof, bytes *got, int *count)
{
    if (n)
        ck_assert_int_eq(moe_frame_reader_feed(r, p, n), MOE_OK);
    if (eof)
        moe_frame_reader_eof(r);
    Moe__Control__Envelope *e;
    moe_frame_result res;
    while ((res = moe_frame_reader_next(r, &e)) == MOE_FRAME_READY) {
        ck_assert_ptr_nonnull(e);
        if (got) {
            bytes b = pack(&e->base);
            bytes_add(got, b.p, b.n);
            free(b.p);
        }
        if (count)
            (*count)++;
        moe_envelope_free(e);
    }
    ck_assert_ptr_null(e);
    return res;
}

/* Feeds the whole frame (then EOF) to a fresh reader on rx and expects a
** refusal for `reason` whose message contains `piece`. */
static void expect_refused_rx(moe_frame_receiver *rx, const uint8_t *p, size_t n, moe_frame_refusal reason,
                              const char *piece)
{
    moe_frame_reader r;
    ck_assert_int_eq(moe_frame_reader_init(&r, rx, "test"), MOE_OK);
    int count = 0;
    moe_frame_result res = drain(&r, p, n, 1, NULL, &count);
    ck_assert_msg(res == MOE_FRAME_REFUSED, "expected a refusal (%s), got result %d", moe_frame_refusal_name(reason),
                  res);
    ck_assert_msg(r.refusal == reason, "expected %s, got %s: %s", moe_frame_refusal_name(reason),
                  moe_frame_refusal_name(r.refusal), r.why);
    ck_assert_msg(strstr(r.why, piece), "refusal \"%s\" lacks \"%s\"", r.why, piece);
    ck_assert_int_eq(count, 0);
    /* Final: nothing more comes out of this connection. */
    Moe__Control__Envelope *e;
    ck_assert_int_eq(moe_frame_reader_next(&r, &e), MOE_FRAME_REFUSED);
    moe_frame_reader_free(&r);
}

static void expect_refused(const uint8_t *p, size_t n, moe_frame_refusal reason, const char *piece)
{
    moe_frame_receiver rx;
    coord_rx(&rx);
    expect_refused_rx(&rx, p, n, reason, piece);
    moe_frame_receiver_free(&rx);
}

/* A valid worker -> coordinator heartbeat from rank 1, seq 1, to edit. */
typedef struct {
    Moe__Control__Envelope env;
    Moe__Control__Heartbeat hb;
    Moe__Control__Hello hello;
    Moe__Control__StepReport rep;
} worker_msg;

static void worker_heartbeat(worker_msg *m)
{
    Moe__Control__Envelope env = MOE__CONTROL__ENVELOPE__INIT;
    Moe__Control__Heartbeat hb = MOE__CONTROL__HEARTBEAT__INIT;
    Moe__Control__Hello hello = MOE__CONTROL__HELLO__INIT;
    Moe__Control__StepReport rep = MOE__CONTROL__STEP_REPORT__INIT;
    m->env = env;
    m->hb = hb;
    m->hello = hello;
    m->rep = rep;
    m->env.job_id = (char *)JOB;
    m->env.rank = 1;
    m->env.sender = MOE__CONTROL__ROLE__ROLE_WORKER;
    m->env.seq = 1;
    m->env.body_case = MOE__CONTROL__ENVELOPE__BODY_HEARTBEAT;
    m->env.heartbeat = &m->hb;
    m->hb.step = 3;
    m->hb.phase = MOE__CONTROL__PHASE__PHASE_TRAINING;
}

static void fill_report(Moe__Control__StepReport *rep)
{
    rep->kind = MOE__CONTROL__REPORT_KIND__REPORT_TRAIN;
    rep->step = 12;
    rep->loss = 3.25;
    rep->aux_loss = 0.01;
    rep->z_loss = 1e-4;
    rep->lr = 3e-4;
    rep->grad_norm = 0.9;
    rep->tokens_per_s = 12345.5;
    rep->tflops = 1.5;
    rep->mfu = 0.31;
    rep->load_imbalance = 1.2;
    rep->dropped_frac = 0.05;
    rep->step_ms = 812.0;
}

/* ---- round trips -------------------------------------------------------- */

/* Every kind a worker sends, through a coordinator's reader. */
START_TEST(roundtrip_worker_kinds)
{
    moe_frame_writer w;
    writer(&w, &secret_a, JOB, MOE_ROLE_WORKER, 2);
    bytes stream = {0}, sent = {0};

    Moe__Control__Hello hello = MOE__CONTROL__HELLO__INIT;
    hello.protocol = MOE_CONTROL_PROTOCOL;
    hello.world_size = WORLD;
    hello.hostname = (char *)"node-07.cluster";
    hello.pid = 4242;
    hello.local_rank = 2;
    Moe__Control__Heartbeat hb = MOE__CONTROL__HEARTBEAT__INIT;
    hb.step = 17;
    hb.phase = MOE__CONTROL__PHASE__PHASE_CHECKPOINTING;
    Moe__Control__StepReport train = MOE__CONTROL__STEP_REPORT__INIT, eval = MOE__CONTROL__STEP_REPORT__INIT;
    fill_report(&train);
    eval.kind = MOE__CONTROL__REPORT_KIND__REPORT_EVAL;
    eval.step = 20;
    eval.loss = 2.75;
    Moe__Control__Ack ack = MOE__CONTROL__ACK__INIT;
    ack.seq = 9;
    Moe__Control__Error err = MOE__CONTROL__ERROR__INIT;
    err.kind = MOE__CONTROL__ERROR_KIND__ERROR_DIVERGED;
    err.step = 21;
    err.message = (char *)"loss is nan at step 21\n\tafter a grad norm of 1e9 (ünïcödé ok)";

    Moe__Control__Envelope envs[6];
    for (int i = 0; i < 6; i++) {
        Moe__Control__Envelope init = MOE__CONTROL__ENVELOPE__INIT;
        envs[i] = init;
    }
    envs[0].body_case = MOE__CONTROL__ENVELOPE__BODY_HELLO, envs[0].hello = &hello;
    envs[1].body_case = MOE__CONTROL__ENVELOPE__BODY_HEARTBEAT, envs[1].heartbeat = &hb;
    envs[2].body_case = MOE__CONTROL__ENVELOPE__BODY_STEP_REPORT, envs[2].step_report = &train;
    envs[3].body_case = MOE__CONTROL__ENVELOPE__BODY_STEP_REPORT, envs[3].step_report = &eval;
    envs[4].body_case = MOE__CONTROL__ENVELOPE__BODY_ACK, envs[4].ack = &ack;
    envs[5].body_case = MOE__CONTROL__ENVELOPE__BODY_ERROR, envs[5].error = &err;
    for (int i = 0; i < 6; i++) {
        encode_into(&w, &envs[i], &stream);
        ck_assert_uint_eq(envs[i].seq, (uint64_t)i + 1);
        ck_assert_str_eq(envs[i].job_id, JOB);
        bytes b = pack(&envs[i].base);
        bytes_add(&sent, b.p, b.n);
        free(b.p);
    }
    ck_assert_uint_eq(w.next_seq, 7);

    moe_frame_receiver rx;
    coord_rx(&rx);
    moe_frame_reader r;
    ck_assert_int_eq(moe_frame_reader_init(&r, &rx, "127.0.0.1:5000"), MOE_OK);
    ck_assert_int_eq(moe_frame_reader_feed(&r, stream.p, stream.n), MOE_OK);

    /* Field by field for two of them, then every one byte for byte. */
    Moe__Control__Envelope *e;
    ck_assert_int_eq(moe_frame_reader_next(&r, &e), MOE_FRAME_READY);
    ck_assert_int_eq(e->body_case, MOE__CONTROL__ENVELOPE__BODY_HELLO);
    ck_assert_str_eq(e->job_id, JOB);
    ck_assert_uint_eq(e->rank, 2);
    ck_assert_uint_eq(e->seq, 1);
    ck_assert_int_eq(e->sender, MOE__CONTROL__ROLE__ROLE_WORKER);
    ck_assert_str_eq(e->hello->hostname, "node-07.cluster");
    ck_assert_uint_eq(e->hello->pid, 4242);
    ck_assert_int_eq(r.rank, 2);
    bytes got = {0};
    bytes b = pack(&e->base);
    bytes_add(&got, b.p, b.n);
    free(b.p);
    moe_envelope_free(e);
    ck_assert_int_eq(moe_frame_reader_next(&r, &e), MOE_FRAME_READY);
    ck_assert_int_eq(e->heartbeat->phase, MOE__CONTROL__PHASE__PHASE_CHECKPOINTING);
    ck_assert_int_eq(e->heartbeat->step, 17);
    b = pack(&e->base);
    bytes_add(&got, b.p, b.n);
    free(b.p);
    moe_envelope_free(e);
    int count = 2;
    ck_assert_int_eq(drain(&r, NULL, 0, 1, &got, &count), MOE_FRAME_CLOSED);
    ck_assert_int_eq(count, 6);
    ck_assert_uint_eq(r.frames, 6);
    ck_assert_uint_eq(rx.last_seq[2], 6);
    ck_assert_uint_eq(got.n, sent.n);
    ck_assert(memcmp(got.p, sent.p, sent.n) == 0);

    moe_frame_reader_free(&r);
    moe_frame_receiver_free(&rx);
    moe_frame_writer_free(&w);
    free(stream.p);
    free(sent.p);
    free(got.p);
}
END_TEST

/* Every kind the coordinator sends, through a worker's reader; the JobSpec
** carries a large config (the reader's buffer grows, fed in small pieces). */
START_TEST(roundtrip_coordinator_kinds)
{
    moe_frame_writer w;
    writer(&w, &secret_a, JOB, MOE_ROLE_COORDINATOR, 3);
    bytes stream = {0}, sent = {0};

    size_t yaml_len = 200000;
    char *yaml = malloc(yaml_len + 1);
    for (size_t i = 0; i < yaml_len; i++)
        yaml[i] = i % 40 == 39 ? '\n' : (char)('a' + i % 26);
    yaml[yaml_len] = '\0';
    Moe__Control__ParallelLayout par = MOE__CONTROL__PARALLEL_LAYOUT__INIT;
    par.tp = 2, par.pp = 1, par.cp = 1, par.ep = 4, par.etp = 1;
    Moe__Control__JobSpec spec = MOE__CONTROL__JOB_SPEC__INIT;
    spec.job_id = (char *)JOB;
    spec.world_size = WORLD;
    spec.run_dir = (char *)"/scratch/runs/tiny";
    spec.heartbeat_interval_ms = 1000;
    spec.heartbeat_timeout_ms = 10000;
    spec.config_yaml = yaml;
    spec.parallel = &par;
    spec.train_iters = 1000;
    spec.attempt = 1;
    Moe__Control__Command cmd = MOE__CONTROL__COMMAND__INIT;
    cmd.kind = MOE__CONTROL__COMMAND_KIND__COMMAND_STOP;
    cmd.at_step = 40;
    cmd.reason = (char *)"rank 2 stopped beating";
    Moe__Control__Ack ack = MOE__CONTROL__ACK__INIT;
    ack.seq = 1;
    Moe__Control__Error err = MOE__CONTROL__ERROR__INIT;
    err.kind = MOE__CONTROL__ERROR_KIND__ERROR_PROTOCOL;
    err.message = (char *)"";

    Moe__Control__Envelope envs[4];
    for (int i = 0; i < 4; i++) {
        Moe__Control__Envelope init = MOE__CONTROL__ENVELOPE__INIT;
        envs[i] = init;
    }
    envs[0].body_case = MOE__CONTROL__ENVELOPE__BODY_JOB_SPEC, envs[0].job_spec = &spec;
    envs[1].body_case = MOE__CONTROL__ENVELOPE__BODY_COMMAND, envs[1].command = &cmd;
    envs[2].body_case = MOE__CONTROL__ENVELOPE__BODY_ACK, envs[2].ack = &ack;
    envs[3].body_case = MOE__CONTROL__ENVELOPE__BODY_ERROR, envs[3].error = &err;
    for (int i = 0; i < 4; i++) {
        encode_into(&w, &envs[i], &stream);
        bytes b = pack(&envs[i].base);
        bytes_add(&sent, b.p, b.n);
        free(b.p);
    }

    moe_frame_receiver rx;
    worker_rx(&rx, 3);
    moe_frame_reader r;
    ck_assert_int_eq(moe_frame_reader_init(&r, &rx, "coordinator"), MOE_OK);
    bytes got = {0};
    int count = 0;
    for (size_t off = 0; off < stream.n; off += 1000) {
        size_t n = stream.n - off < 1000 ? stream.n - off : 1000;
        ck_assert_int_eq(drain(&r, stream.p + off, n, 0, &got, &count), MOE_FRAME_AGAIN);
        /* The buffer holds at most one incomplete frame plus one feed. */
        ck_assert_uint_le(r.end - r.start, yaml_len + 1000 + 1000);
    }
    ck_assert_int_eq(drain(&r, NULL, 0, 1, &got, &count), MOE_FRAME_CLOSED);
    ck_assert_int_eq(count, 4);
    ck_assert_uint_eq(got.n, sent.n);
    ck_assert(memcmp(got.p, sent.p, sent.n) == 0);
    ck_assert_uint_le(r.cap, 64u << 10); /* the big buffer went once drained */

    moe_frame_reader_free(&r);
    moe_frame_receiver_free(&rx);
    moe_frame_writer_free(&w);
    free(yaml);
    free(stream.p);
    free(sent.p);
    free(got.p);
}
END_TEST

/* Any split of a stream of frames across two feeds, and one byte per feed,
** yields the same envelopes. */
START_TEST(split_at_every_byte)
{
    moe_frame_writer w;
    writer(&w, &secret_a, JOB, MOE_ROLE_WORKER, 1);
    bytes stream = {0};
    worker_msg m;
    worker_heartbeat(&m);
    encode_into(&w, &m.env, &stream);
    m.env.body_case = MOE__CONTROL__ENVELOPE__BODY_STEP_REPORT;
    m.env.step_report = &m.rep;
    fill_report(&m.rep);
    encode_into(&w, &m.env, &stream);
    Moe__Control__Ack ack = MOE__CONTROL__ACK__INIT;
    ack.seq = 5;
    m.env.body_case = MOE__CONTROL__ENVELOPE__BODY_ACK;
    m.env.ack = &ack;
    encode_into(&w, &m.env, &stream);

    bytes want = {0};
    {
        moe_frame_receiver rx;
        coord_rx(&rx);
        moe_frame_reader r;
        moe_frame_reader_init(&r, &rx, "whole");
        int count = 0;
        ck_assert_int_eq(drain(&r, stream.p, stream.n, 1, &want, &count), MOE_FRAME_CLOSED);
        ck_assert_int_eq(count, 3);
        moe_frame_reader_free(&r);
        moe_frame_receiver_free(&rx);
    }
    for (size_t k = 0; k <= stream.n; k++) {
        moe_frame_receiver rx;
        coord_rx(&rx);
        moe_frame_reader r;
        moe_frame_reader_init(&r, &rx, "split");
        bytes got = {0};
        int count = 0;
        ck_assert_int_eq(drain(&r, stream.p, k, 0, &got, &count), MOE_FRAME_AGAIN);
        ck_assert_int_eq(drain(&r, stream.p + k, stream.n - k, 1, &got, &count), MOE_FRAME_CLOSED);
        ck_assert_msg(count == 3 && got.n == want.n && memcmp(got.p, want.p, want.n) == 0,
                      "split at byte %zu differs", k);
        free(got.p);
        moe_frame_reader_free(&r);
        moe_frame_receiver_free(&rx);
    }
    {
        moe_frame_receiver rx;
        coord_rx(&rx);
        moe_frame_reader r;
        moe_frame_reader_init(&r, &rx, "bytewise");
        bytes got = {0};
        int count = 0;
        for (size_t i = 0; i < stream.n; i++)
            ck_assert_int_eq(drain(&r, stream.p + i, 1, 0, &got, &count), MOE_FRAME_AGAIN);
        ck_assert_int_eq(drain(&r, NULL, 0, 1, &got, &count), MOE_FRAME_CLOSED);
        ck_assert(count == 3 && got.n == want.n && memcmp(got.p, want.p, want.n) == 0);
        free(got.p);
        moe_frame_reader_free(&r);
        moe_frame_receiver_free(&rx);
    }
    moe_frame_writer_free(&w);
    free(stream.p);
    free(want.p);
}
END_TEST

/* ---- hostile bytes ------------------------------------------------------ */

START_TEST(junk_refused)
{
    const char *http = "GET / HTTP/1.1\r\nHost: coordinator\r\n\r\n";
    expect_refused((const uint8_t *)http, strlen(http), MOE_FRAME_OVERSIZED, "exceeds");
    /* A plausible length, then noise where the payload and HMAC should be. */
    uint8_t small[4 + 8 + 32];
    memset(small, 0xa5, sizeof small);
    small[0] = small[1] = small[2] = 0, small[3] = 8;
    expect_refused(small, sizeof small, MOE_FRAME_BAD_MAC, "does not verify");
    /* Random junk never gets through, whatever its length prefix says. */
    uint64_t x = 88172645463325252ull;
    uint8_t junk[300];
    for (int t = 0; t < 2000; t++) {
        for (size_t i = 0; i < sizeof junk; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            junk[i] = (uint8_t)x;
        }
        if (t % 2)
            junk[0] = junk[1] = 0; /* small lengths too */
        if (t % 4 == 1)
            junk[2] = 0;
        moe_frame_receiver rx;
        coord_rx(&rx);
        moe_frame_reader r;
        moe_frame_reader_init(&r, &rx, "junk");
        int count = 0;
        ck_assert_int_eq(drain(&r, junk, sizeof junk, 1, NULL, &count), MOE_FRAME_REFUSED);
        ck_assert_int_eq(count, 0);
        ck_assert(r.refusal == MOE_FRAME_OVERSIZED || r.refusal == MOE_FRAME_TRUNCATED ||
                  r.refusal == MOE_FRAME_BAD_MAC);
        moe_frame_reader_free(&r);
        moe_frame_receiver_free(&rx);
    }
}
END_TEST

START_TEST(length_over_max)
{
    /* Refused from the 4 length bytes alone: nothing more is buffered or awaited. */
    uint8_t hdr[4] = {0, 0x10, 0, 1}; /* MOE_FRAME_MAX + 1 */
    moe_frame_receiver rx;
    coord_rx(&rx);
    moe_frame_reader r;
    moe_frame_reader_init(&r, &rx, "big");
    ck_assert_int_eq(drain(&r, hdr, 4, 0, NULL, NULL), MOE_FRAME_REFUSED);
    ck_assert_int_eq(r.refusal, MOE_FRAME_OVERSIZED);
    ck_assert_msg(strstr(r.why, "1048577"), "%s", r.why);
    /* Bytes fed after a refusal are dropped. */
    uint8_t more[100] = {0};
    ck_assert_int_eq(moe_frame_reader_feed(&r, more, sizeof more), MOE_OK);
    ck_assert_uint_eq(r.end - r.start, 4);
    moe_frame_reader_free(&r);
    uint8_t huge[4] = {0xff, 0xff, 0xff, 0xff};
    expect_refused_rx(&rx, huge, 4, MOE_FRAME_OVERSIZED, "exceeds");
    moe_frame_receiver_free(&rx);

    /* Exactly the limit is framing-legal (refused later, by its HMAC). */
    uint8_t at_max[4] = {0, 0x10, 0, 0};
    moe_frame_receiver_init(&rx, &secret_a, JOB, WORLD, MOE_ROLE_COORDINATOR, 0);
    moe_frame_reader_init(&r, &rx, "max");
    ck_assert_int_eq(drain(&r, at_max, 4, 0, NULL, NULL), MOE_FRAME_AGAIN);
    moe_frame_reader_free(&r);
    moe_frame_receiver_free(&rx);
}
END_TEST

START_TEST(truncated_at_eof)
{
    moe_frame_writer w;
    writer(&w, &secret_a, JOB, MOE_ROLE_WORKER, 1);
    worker_msg m;
    worker_heartbeat(&m);
    bytes f = {0};
    encode_into(&w, &m.env, &f);
    size_t len = f.n - MOE_FRAME_OVERHEAD;

    expect_refused(f.p, 2, MOE_FRAME_TRUNCATED, "4-byte length");
    expect_refused(f.p, MOE_FRAME_HEADER + len / 2, MOE_FRAME_TRUNCATED, "truncated payload");
    expect_refused(f.p, MOE_FRAME_HEADER + len, MOE_FRAME_TRUNCATED, "truncated HMAC");
    expect_refused(f.p, f.n - 1, MOE_FRAME_TRUNCATED, "31 of its 32");

    /* Before EOF the same bytes are only incomplete. */
    moe_frame_receiver rx;
    coord_rx(&rx);
    moe_frame_reader r;
    moe_frame_reader_init(&r, &rx, "slow");
    ck_assert_int_eq(drain(&r, f.p, f.n - 1, 0, NULL, NULL), MOE_FRAME_AGAIN);
    int count = 0;
    ck_assert_int_eq(drain(&r, f.p + f.n - 1, 1, 1, NULL, &count), MOE_FRAME_CLOSED);
    ck_assert_int_eq(count, 1);
    moe_frame_reader_free(&r);
    moe_frame_receiver_free(&rx);
    moe_frame_writer_free(&w);
    free(f.p);
}
END_TEST

/* Any single flipped bit anywhere in a frame is refused; in the payload or
** the HMAC by the HMAC check itself. */
START_TEST(flipped_bytes)
{
    moe_frame_writer w;
    writer(&w, &secret_a, JOB, MOE_ROLE_WORKER, 1);
    worker_msg m;
    worker_heartbeat(&m);
    m.env.body_case = MOE__CONTROL__ENVELOPE__BODY_STEP_REPORT;
    m.env.step_report = &m.rep;
    fill_report(&m.rep);
    bytes f = {0};
    encode_into(&w, &m.env, &f);
    for (size_t i = 0; i < f.n; i++) {
        for (int bit = 0; bit < 8; bit += 3) {
            f.p[i] ^= (uint8_t)(1u << bit);
            if (i >= MOE_FRAME_HEADER) {
                expect_refused(f.p, f.n, MOE_FRAME_BAD_MAC, "does not verify");
            } else {
                moe_frame_receiver rx;
                coord_rx(&rx);
                moe_frame_reader r;
                moe_frame_reader_init(&r, &rx, "flip");
                int count = 0;
                ck_assert_int_eq(drain(&r, f.p, f.n, 1, NULL, &count), MOE_FRAME_REFUSED);
                ck_assert_int_eq(count, 0);
                moe_frame_reader_free(&r);
                moe_frame_receiver_free(&rx);
            }
            f.p[i] ^= (uint8_t)(1u << bit);
        }
    }
    /* Restored, it is accepted: the refusals above were the flips'. */
    moe_frame_receiver rx;
    coord_rx(&rx);
    moe_frame_reader r;
    moe_frame_reader_init(&r, &rx, "intact");
    int count = 0;
    ck_assert_int_eq(drain(&r, f.p, f.n, 1, NULL, &count), MOE_FRAME_CLOSED);
    ck_assert_int_eq(count, 1);
    moe_frame_reader_free(&r);
    moe_frame_receiver_free(&rx);
    moe_frame_writer_free(&w);
    free(f.p);
}
END_TEST

START_TEST(wrong_secret)
{
    moe_frame_writer w;
    writer(&w, &secret_b, JOB, MOE_ROLE_WORKER, 1);
    worker_msg m;
    worker_heartbeat(&m);
    bytes f = {0};
    encode_into(&w, &m.env, &f);
    expect_refused(f.p, f.n, MOE_FRAME_BAD_MAC, "another job's secret");
    moe_frame_writer_free(&w);
    free(f.p);
}
END_TEST

START_TEST(replay_and_reorder)
{
    moe_frame_writer w;
    writer(&w, &secret_a, JOB, MOE_ROLE_WORKER, 1);
    worker_msg m;
    worker_heartbeat(&m);
    bytes f1 = {0}, f2 = {0}, f3 = {0};
    encode_into(&w, &m.env, &f1);
    encode_into(&w, &m.env, &f2);
    encode_into(&w, &m.env, &f3);

    moe_frame_receiver rx;
    coord_rx(&rx);
    moe_frame_reader r;
    moe_frame_reader_init(&r, &rx, "w1");
    int count = 0;
    ck_assert_int_eq(drain(&r, f1.p, f1.n, 0, NULL, &count), MOE_FRAME_AGAIN);
    ck_assert_int_eq(count, 1);
    moe_frame_reader_free(&r);
    /* The same frame again, on this or any other connection: a replay. */
    expect_refused_rx(&rx, f1.p, f1.n, MOE_FRAME_REPLAY, "seq 1, not above the last accepted 1");
    /* 3 before 2: 2 is refused as reordered. */
    moe_frame_reader_init(&r, &rx, "w1");
    ck_assert_int_eq(drain(&r, f3.p, f3.n, 0, NULL, &count), MOE_FRAME_AGAIN);
    ck_assert_int_eq(count, 2);
    ck_assert_int_eq(drain(&r, f2.p, f2.n, 0, NULL, &count), MOE_FRAME_REFUSED);
    ck_assert_int_eq(r.refusal, MOE_FRAME_REPLAY);
    ck_assert_msg(strstr(r.why, "seq 2, not above the last accepted 3"), "%s", r.why);
    ck_assert_uint_eq(rx.last_seq[1], 3);
    moe_frame_reader_free(&r);
    moe_frame_receiver_free(&rx);
    moe_frame_writer_free(&w);
    free(f1.p);
    free(f2.p);
    free(f3.p);
}
END_TEST

/* Streams are per rank: rank 2's seq 1 is fresh after rank 1's seq 5; a
** worker that reconnects carries on; the old connection's frames stay dead. */
START_TEST(streams_and_reconnect)
{
    moe_frame_writer w1, w2;
    writer(&w1, &secret_a, JOB, MOE_ROLE_WORKER, 1);
    writer(&w2, &secret_a, JOB, MOE_ROLE_WORKER, 2);
    worker_msg m;
    worker_heartbeat(&m);
    bytes a = {0}, b = {0}, c = {0};
    for (int i = 0; i < 5; i++)
        encode_into(&w1, &m.env, &a);
    encode_into(&w2, &m.env, &b);
    encode_into(&w1, &m.env, &c); /* seq 6 on rank 1, after a reconnect */

    moe_frame_receiver rx;
    coord_rx(&rx);
    moe_frame_reader r1, r2;
    moe_frame_reader_init(&r1, &rx, "rank1");
    moe_frame_reader_init(&r2, &rx, "rank2");
    int count = 0;
    ck_assert_int_eq(drain(&r1, a.p, a.n, 0, NULL, &count), MOE_FRAME_AGAIN);
    ck_assert_int_eq(drain(&r2, b.p, b.n, 0, NULL, &count), MOE_FRAME_AGAIN);
    ck_assert_int_eq(count, 6);
    ck_assert_int_eq(r1.rank, 1);
    ck_assert_int_eq(r2.rank, 2);
    /* A connection carries one rank: rank 1's next frame on rank 2's connection is refused. */
    ck_assert_int_eq(drain(&r2, c.p, c.n, 0, NULL, &count), MOE_FRAME_REFUSED);
    ck_assert_int_eq(r2.refusal, MOE_FRAME_WRONG_PEER);
    ck_assert_msg(strstr(r2.why, "connection of rank 2"), "%s", r2.why);
    ck_assert_uint_eq(rx.last_seq[1], 5); /* a refused frame consumes nothing */
    moe_frame_reader_free(&r1);
    moe_frame_reader_free(&r2);
    /* Rank 1 reconnects: its next seq is fine, its old frames are replays. */
    moe_frame_reader r3;
    moe_frame_reader_init(&r3, &rx, "rank1-again");
    ck_assert_int_eq(drain(&r3, c.p, c.n, 0, NULL, &count), MOE_FRAME_AGAIN);
    ck_assert_int_eq(count, 7);
    moe_frame_reader_free(&r3);
    expect_refused_rx(&rx, a.p, a.n, MOE_FRAME_REPLAY, "replayed");
    moe_frame_receiver_free(&rx);
    moe_frame_writer_free(&w1);
    moe_frame_writer_free(&w2);
    free(a.p);
    free(b.p);
    free(c.p);
}
END_TEST

/* One connection's refusal leaves the others serving. */
START_TEST(refusal_is_per_connection)
{
    moe_frame_writer w;
    writer(&w, &secret_a, JOB, MOE_ROLE_WORKER, 1);
    worker_msg m;
    worker_heartbeat(&m);
    bytes f1 = {0}, f2 = {0};
    encode_into(&w, &m.env, &f1);
    encode_into(&w, &m.env, &f2);
    moe_frame_receiver rx;
    coord_rx(&rx);
    moe_frame_reader good, bad;
    moe_frame_reader_init(&good, &rx, "good");
    moe_frame_reader_init(&bad, &rx, "bad");
    int count = 0;
    ck_assert_int_eq(drain(&good, f1.p, f1.n, 0, NULL, &count), MOE_FRAME_AGAIN);
    f2.p[10] ^= 1;
    ck_assert_int_eq(drain(&bad, f2.p, f2.n, 0, NULL, &count), MOE_FRAME_REFUSED);
    f2.p[10] ^= 1;
    ck_assert_int_eq(drain(&good, f2.p, f2.n, 1, NULL, &count), MOE_FRAME_CLOSED);
    ck_assert_int_eq(count, 2);
    moe_frame_reader_free(&good);
    moe_frame_reader_free(&bad);
    moe_frame_receiver_free(&rx);
    moe_frame_writer_free(&w);
    free(f1.p);
    free(f2.p);
}
END_TEST

START_TEST(wrong_job)
{
    moe_frame_writer w;
    writer(&w, &secret_a, "job-2", MOE_ROLE_WORKER, 1);
    worker_msg m;
    worker_heartbeat(&m);
    bytes f = {0};
    encode_into(&w, &m.env, &f);
    expect_refused(f.p, f.n, MOE_FRAME_WRONG_JOB, "frame for job 'job-2'; this is job 'job-1'");
    moe_frame_writer_free(&w);
    free(f.p);
}
END_TEST

START_TEST(wrong_peer)
{
    /* A coordinator's own frame reflected back at it. */
    moe_frame_writer wc;
    writer(&wc, &secret_a, JOB, MOE_ROLE_COORDINATOR, 1);
    Moe__Control__Ack ack = MOE__CONTROL__ACK__INIT;
    ack.seq = 1;
    Moe__Control__Envelope env = MOE__CONTROL__ENVELOPE__INIT;
    env.body_case = MOE__CONTROL__ENVELOPE__BODY_ACK;
    env.ack = &ack;
    bytes f = {0};
    encode_into(&wc, &env, &f);
    expect_refused(f.p, f.n, MOE_FRAME_WRONG_PEER, "reflected");
    /* Rank 1's frame delivered to rank 2. */
    moe_frame_receiver rx;
    worker_rx(&rx, 2);
    expect_refused_rx(&rx, f.p, f.n, MOE_FRAME_WRONG_PEER, "frame for rank 1; this is rank 2");
    moe_frame_receiver_free(&rx);
    /* And to rank 1 it is fine. */
    worker_rx(&rx, 1);
    moe_frame_reader r;
    moe_frame_reader_init(&r, &rx, "coordinator");
    int count = 0;
    ck_assert_int_eq(drain(&r, f.p, f.n, 1, NULL, &count), MOE_FRAME_CLOSED);
    ck_assert_int_eq(count, 1);
    moe_frame_reader_free(&r);
    moe_frame_receiver_free(&rx);
    moe_frame_writer_free(&wc);
    free(f.p);
}
END_TEST

/* Authenticated frames whose content is wrong: crafted payloads, since the
** encoder refuses to write them. */
static void expect_invalid(worker_msg *m, const char *piece)
{
    bytes f = craft(&m->env, &secret_a);
    expect_refused(f.p, f.n, MOE_FRAME_INVALID, piece);
    free(f.p);
}

START_TEST(invalid_fields)
{
    worker_msg m;
    worker_heartbeat(&m);
    { /* the unedited message passes, so each refusal below is its edit's */
        bytes f = craft(&m.env, &secret_a);
        moe_frame_receiver rx;
        coord_rx(&rx);
        moe_frame_reader r;
        moe_frame_reader_init(&r, &rx, "ok");
        int count = 0;
        ck_assert_int_eq(drain(&r, f.p, f.n, 1, NULL, &count), MOE_FRAME_CLOSED);
        ck_assert_int_eq(count, 1);
        moe_frame_reader_free(&r);
        moe_frame_receiver_free(&rx);
        free(f.p);
    }
    m.env.rank = WORLD;
    expect_invalid(&m, "envelope.rank 4 is not below the world size 4");
    worker_heartbeat(&m);
    m.env.seq = 0;
    expect_invalid(&m, "envelope.seq is 0");
    worker_heartbeat(&m);
    m.env.sender = MOE__CONTROL__ROLE__ROLE_UNSPECIFIED;
    expect_invalid(&m, "envelope.sender 0");
    worker_heartbeat(&m);
    m.env.job_id = (char *)"job 1";
    expect_invalid(&m, "envelope.job_id has byte 0x20");
    worker_heartbeat(&m);
    m.env.body_case = MOE__CONTROL__ENVELOPE__BODY__NOT_SET;
    expect_invalid(&m, "envelope has no body");
    worker_heartbeat(&m);
    m.hb.step = -1;
    expect_invalid(&m, "heartbeat.step -1 is negative");
    worker_heartbeat(&m);
    m.hb.phase = (Moe__Control__Phase)99;
    expect_invalid(&m, "heartbeat.phase 99 is not a known value");

    worker_heartbeat(&m);
    m.env.body_case = MOE__CONTROL__ENVELOPE__BODY_STEP_REPORT;
    m.env.step_report = &m.rep;
    fill_report(&m.rep);
    m.rep.loss = NAN;
    expect_invalid(&m, "step_report.loss is nan");
    fill_report(&m.rep);
    m.rep.grad_norm = INFINITY;
    expect_invalid(&m, "step_report.grad_norm is inf");
    fill_report(&m.rep);
    m.rep.dropped_frac = 1.5;
    expect_invalid(&m, "dropped_frac is 1.5");
    fill_report(&m.rep);
    m.rep.kind = MOE__CONTROL__REPORT_KIND__REPORT_UNSPECIFIED;
    expect_invalid(&m, "step_report.kind 0");

    worker_heartbeat(&m);
    m.env.body_case = MOE__CONTROL__ENVELOPE__BODY_HELLO;
    m.env.hello = &m.hello;
    char host[301];
    memset(host, 'h', 300);
    host[300] = '\0';
    m.hello.protocol = MOE_CONTROL_PROTOCOL;
    m.hello.world_size = WORLD;
    m.hello.pid = 7;
    m.hello.hostname = host;
    expect_invalid(&m, "hello.hostname is 300 bytes (limit 255)");
    m.hello.hostname = (char *)"node\x1b[2J";
    expect_invalid(&m, "hello.hostname has byte 0x1b");
    m.hello.hostname = (char *)"node1";
    m.hello.protocol = 2;
    expect_invalid(&m, "hello.protocol 2");
    m.hello.protocol = MOE_CONTROL_PROTOCOL;
    m.hello.world_size = 8;
    expect_invalid(&m, "hello.world_size 8 differs from the job's 4");

    /* A worker does not send commands. */
    worker_heartbeat(&m);
    Moe__Control__Command cmd = MOE__CONTROL__COMMAND__INIT;
    cmd.kind = MOE__CONTROL__COMMAND_KIND__COMMAND_ABORT;
    m.env.body_case = MOE__CONTROL__ENVELOPE__BODY_COMMAND;
    m.env.command = &cmd;
    expect_invalid(&m, "a worker does not send command");

    /* Error text: no terminal controls, valid UTF-8. */
    worker_heartbeat(&m);
    Moe__Control__Error err = MOE__CONTROL__ERROR__INIT;
    err.kind = MOE__CONTROL__ERROR_KIND__ERROR_IO;
    err.message = (char *)"disk full\r";
    m.env.body_case = MOE__CONTROL__ENVELOPE__BODY_ERROR;
    m.env.error = &err;
    expect_invalid(&m, "error.message has byte 0x0d");
    err.message = (char *)"bad \xc0\xaf utf-8";
    expect_invalid(&m, "error.message is not valid UTF-8 at byte 4");
    err.kind = (Moe__Control__ErrorKind)42;
    err.message = (char *)"";
    expect_invalid(&m, "error.kind 42");
}
END_TEST

/* A NUL inside a string, and a body written twice: protobuf-c would decode
** both silently (cut string, last body wins); the canonical check refuses. */
START_TEST(noncanonical_payloads)
{
    worker_msg m;
    worker_heartbeat(&m);
    m.env.body_case = MOE__CONTROL__ENVELOPE__BODY_HELLO;
    m.env.hello = &m.hello;
    m.hello.protocol = MOE_CONTROL_PROTOCOL;
    m.hello.world_size = WORLD;
    m.hello.pid = 7;
    m.hello.hostname = (char *)"nodeXevil";
    bytes p = pack(&m.env.base);
    uint8_t *x = memchr(p.p, 'X', p.n);
    ck_assert_ptr_nonnull(x);
    *x = '\0';
    uint8_t *f;
    size_t n;
    ck_assert_int_eq(moe_frame_wrap(&secret_a, p.p, p.n, &f, &n), MOE_OK);
    expect_refused(f, n, MOE_FRAME_INVALID, "canonical");
    moe_free(f);
    /* Directly through the decoder too. */
    Moe__Control__Envelope *e = (Moe__Control__Envelope *)1;
    char why[256];
    ck_assert_int_eq(moe_envelope_decode(p.p, p.n, WORLD, &e, why, sizeof why), MOE_FRAME_INVALID);
    ck_assert_ptr_null(e);
    *x = 'X';
    ck_assert_int_eq(moe_envelope_decode(p.p, p.n, WORLD, &e, why, sizeof why), MOE_FRAME_ACCEPTED);
    ck_assert_str_eq(e->hello->hostname, "nodeXevil");
    moe_envelope_free(e);

    /* Heartbeat body appended after a valid hello body. */
    bytes two = {0};
    bytes_add(&two, p.p, p.n);
    const uint8_t extra_hb[] = {0x62, 0x02, 0x10, 0x03}; /* field 12, len 2: phase = 3 */
    bytes_add(&two, extra_hb, sizeof extra_hb);
    ck_assert_int_eq(moe_envelope_decode(two.p, two.n, WORLD, &e, why, sizeof why), MOE_FRAME_INVALID);
    ck_assert_msg(strstr(why, "canonical"), "%s", why);
    /* Not protobuf at all. */
    const uint8_t bad[] = {0x0a, 0x50, 'a'};
    ck_assert_int_eq(moe_envelope_decode(bad, sizeof bad, WORLD, &e, why, sizeof why), MOE_FRAME_MALFORMED);
    ck_assert_ptr_null(e);
    /* The empty payload is an envelope with nothing in it. */
    ck_assert_int_eq(moe_envelope_decode(bad, 0, WORLD, &e, why, sizeof why), MOE_FRAME_INVALID);
    free(p.p);
    free(two.p);
}
END_TEST

START_TEST(job_spec_sanity)
{
    moe_frame_writer w;
    writer(&w, &secret_a, JOB, MOE_ROLE_COORDINATOR, 0);
    Moe__Control__ParallelLayout par = MOE__CONTROL__PARALLEL_LAYOUT__INIT;
    par.tp = par.pp = par.cp = par.ep = par.etp = 1;
    Moe__Control__JobSpec spec = MOE__CONTROL__JOB_SPEC__INIT;
    spec.job_id = (char *)JOB;
    spec.world_size = WORLD;
    spec.run_dir = (char *)"runs/a";
    spec.heartbeat_interval_ms = 500;
    spec.heartbeat_timeout_ms = 1000;
    spec.config_yaml = (char *)"num-layers: 2\n";
    spec.parallel = &par;
    spec.train_iters = 10;
    Moe__Control__Envelope env = MOE__CONTROL__ENVELOPE__INIT;
    env.body_case = MOE__CONTROL__ENVELOPE__BODY_JOB_SPEC;
    env.job_spec = &spec;
    uint8_t *f;
    size_t n;
    ck_assert_int_eq(moe_frame_encode(&w, &env, &f, &n), MOE_OK);
    moe_free(f);

    char why[256];
    /* Each broken field, checked directly against the validator. */
    spec.job_id = (char *)"job-9";
    ck_assert_int_eq(moe_envelope_check(&env, WORLD, why, sizeof why), MOE_FRAME_INVALID);
    ck_assert_msg(strstr(why, "job_spec.job_id 'job-9' differs"), "%s", why);
    spec.job_id = (char *)JOB;
    spec.world_size = 3;
    ck_assert_int_eq(moe_envelope_check(&env, WORLD, why, sizeof why), MOE_FRAME_INVALID);
    ck_assert_msg(strstr(why, "job_spec.world_size 3"), "%s", why);
    spec.world_size = WORLD;
    spec.heartbeat_timeout_ms = 999;
    ck_assert_int_eq(moe_envelope_check(&env, WORLD, why, sizeof why), MOE_FRAME_INVALID);
    ck_assert_msg(strstr(why, "heartbeat_timeout_ms 999"), "%s", why);
    spec.heartbeat_timeout_ms = 1000;
    spec.heartbeat_interval_ms = 0;
    ck_assert_int_eq(moe_envelope_check(&env, WORLD, why, sizeof why), MOE_FRAME_INVALID);
    ck_assert_msg(strstr(why, "heartbeat_interval_ms 0"), "%s", why);
    spec.heartbeat_interval_ms = 500;
    par.ep = 3;
    ck_assert_int_eq(moe_envelope_check(&env, WORLD, why, sizeof why), MOE_FRAME_INVALID);
    ck_assert_msg(strstr(why, "etp*ep*pp = 3 does not divide"), "%s", why);
    par.ep = 0;
    ck_assert_int_eq(moe_envelope_check(&env, WORLD, why, sizeof why), MOE_FRAME_INVALID);
    ck_assert_msg(strstr(why, "parallel.ep 0"), "%s", why);
    par.ep = 2;
    spec.parallel = NULL;
    ck_assert_int_eq(moe_envelope_check(&env, WORLD, why, sizeof why), MOE_FRAME_INVALID);
    ck_assert_msg(strstr(why, "job_spec.parallel is missing"), "%s", why);
    spec.parallel = &par;
    spec.config_yaml = (char *)"";
    ck_assert_int_eq(moe_envelope_check(&env, WORLD, why, sizeof why), MOE_FRAME_INVALID);
    ck_assert_msg(strstr(why, "job_spec.config_yaml is empty"), "%s", why);
    spec.config_yaml = (char *)"a: 1\n";
    spec.train_iters = 0;
    ck_assert_int_eq(moe_envelope_check(&env, WORLD, why, sizeof why), MOE_FRAME_INVALID);
    ck_assert_msg(strstr(why, "train_iters 0"), "%s", why);
    spec.train_iters = 10;
    ck_assert_int_eq(moe_envelope_check(&env, WORLD, why, sizeof why), MOE_FRAME_ACCEPTED);
    moe_frame_writer_free(&w);
}
END_TEST

/* The encoder refuses what a receiver would, and such a refusal costs no seq. */
START_TEST(encoder_refuses_invalid)
{
    moe_frame_writer w;
    writer(&w, &secret_a, JOB, MOE_ROLE_WORKER, 1);
    worker_msg m;
    worker_heartbeat(&m);
    m.env.body_case = MOE__CONTROL__ENVELOPE__BODY_STEP_REPORT;
    m.env.step_report = &m.rep;
    fill_report(&m.rep);
    m.rep.loss = NAN;
    uint8_t *f = (uint8_t *)1;
    size_t n = 1;
    ck_assert_int_eq(moe_frame_encode(&w, &m.env, &f, &n), MOE_ERR_INTERNAL);
    ck_assert_ptr_null(f);
    ck_assert_uint_eq(n, 0);
    ck_assert_msg(strstr(moe_errmsg(), "step_report.loss is nan"), "%s", moe_errmsg());
    ck_assert_uint_eq(w.next_seq, 1);
    /* A worker cannot send a JobSpec. */
    moe_error_clear();
    Moe__Control__JobSpec spec = MOE__CONTROL__JOB_SPEC__INIT;
    m.env.body_case = MOE__CONTROL__ENVELOPE__BODY_JOB_SPEC;
    m.env.job_spec = &spec;
    ck_assert_int_eq(moe_frame_encode(&w, &m.env, &f, &n), MOE_ERR_INTERNAL);
    ck_assert_msg(strstr(moe_errmsg(), "a worker does not send job_spec"), "%s", moe_errmsg());
    /* Too big for a frame. */
    moe_frame_writer_free(&w);
    writer(&w, &secret_a, JOB, MOE_ROLE_WORKER, 1);
    moe_error_clear();
    Moe__Control__Error err = MOE__CONTROL__ERROR__INIT;
    err.kind = MOE__CONTROL__ERROR_KIND__ERROR_IO;
    err.message = (char *)"fine";
    m.env.body_case = MOE__CONTROL__ENVELOPE__BODY_ERROR;
    m.env.error = &err;
    ck_assert_int_eq(moe_frame_encode(&w, &m.env, &f, &n), MOE_OK);
    moe_free(f);
    ck_assert_uint_eq(w.next_seq, 2);
    moe_frame_writer_free(&w);

    /* Writer and receiver identities. */
    moe_error_clear();
    ck_assert_int_eq(moe_frame_writer_init(&w, &secret_a, "bad id", WORLD, MOE_ROLE_WORKER, 0), MOE_ERR_USAGE);
    ck_assert_msg(strstr(moe_errmsg(), "job id has byte 0x20"), "%s", moe_errmsg());
    moe_error_clear();
    ck_assert_int_eq(moe_frame_writer_init(&w, &secret_a, JOB, WORLD, MOE_ROLE_WORKER, WORLD), MOE_ERR_USAGE);
    moe_error_clear();
    ck_assert_int_eq(moe_frame_writer_init(&w, &secret_a, "", WORLD, MOE_ROLE_WORKER, 0), MOE_ERR_USAGE);
    moe_error_clear();
    moe_frame_receiver rx;
    ck_assert_int_eq(moe_frame_receiver_init(&rx, &secret_a, JOB, 0, MOE_ROLE_COORDINATOR, 0), MOE_ERR_USAGE);
    ck_assert_ptr_null(rx.last_seq);
    /* A payload above the limit is not framed. */
    moe_error_clear();
    ck_assert_int_eq(moe_frame_wrap(&secret_a, (const uint8_t *)"", MOE_FRAME_MAX + 1, &f, &n), MOE_ERR_USAGE);
}
END_TEST

/* ---- the job secret ----------------------------------------------------- */

static char tmpdir[512];

static const char *tmp_path(const char *name)
{
    static char path[4][1024];
    static int i;
    i = (i + 1) % 4;
    snprintf(path[i], sizeof path[i], "%s/%s", tmpdir, name);
    return path[i];
}

static void expect_input_error(moe_status st, const char *piece)
{
    ck_assert_msg(st == MOE_ERR_INPUT, "expected an input error, got %s (%s)", moe_status_name(st), moe_errmsg());
    ck_assert_msg(strstr(moe_errmsg(), piece), "message \"%s\" lacks \"%s\"", moe_errmsg(), piece);
    moe_error_clear();
}

START_TEST(secret_file)
{
    tu_tmpdir(tmpdir, sizeof tmpdir, "frame");
    moe_secret s, t;
    ck_assert_int_eq(moe_secret_generate(&s), MOE_OK);
    ck_assert_int_eq(moe_secret_generate(&t), MOE_OK);
    ck_assert(memcmp(&s, &t, sizeof s) != 0);

    const char *path = tmp_path("secret");
    umask(0022);
    ck_assert_int_eq(moe_secret_write_file(&s, path), MOE_OK);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_uint_eq(st.st_mode & 0777, 0600);
    ck_assert_uint_eq((size_t)st.st_size, MOE_SECRET_HEX + 1);
    memset(&t, 0, sizeof t);
    ck_assert_int_eq(moe_secret_read_file(&t, path), MOE_OK);
    ck_assert(memcmp(&s, &t, sizeof s) == 0);
    /* Never overwritten. */
    ck_assert_int_eq(moe_secret_write_file(&s, path), MOE_ERR_IO);
    moe_error_clear();

    /* Group or other bits: refused, whatever they are. */
    ck_assert_int_eq(chmod(path, 0644), 0);
    expect_input_error(moe_secret_read_file(&t, path), "mode 0644");
    ck_assert_int_eq(chmod(path, 0640), 0);
    expect_input_error(moe_secret_read_file(&t, path), "group or others");
    ck_assert_int_eq(chmod(path, 0602), 0);
    expect_input_error(moe_secret_read_file(&t, path), "mode 0602");
    ck_assert_int_eq(chmod(path, 0400), 0);
    ck_assert_int_eq(moe_secret_read_file(&t, path), MOE_OK);

    char hex[MOE_SECRET_HEX + 1];
    moe_secret_to_hex(&s, hex);
    char text[200];
    const char *p2 = tmp_path("short");
    snprintf(text, sizeof text, "%.*s\n", MOE_SECRET_HEX - 2, hex);
    tu_write(p2, text);
    chmod(p2, 0600);
    expect_input_error(moe_secret_read_file(&t, p2), "holds 63 bytes");
    const char *p3 = tmp_path("long");
    snprintf(text, sizeof text, "%s00\n", hex);
    tu_write(p3, text);
    chmod(p3, 0600);
    expect_input_error(moe_secret_read_file(&t, p3), "more than");
    const char *p4 = tmp_path("nonhex");
    snprintf(text, sizeof text, "%s", hex);
    text[10] = 'g';
    tu_write(p4, text);
    chmod(p4, 0600);
    expect_input_error(moe_secret_read_file(&t, p4), "non-hex character at position 10");
    ck_assert_msg(!strstr(moe_errmsg(), hex + 12), "the message quotes the secret");
    const char *p5 = tmp_path("link");
    ck_assert_int_eq(symlink(path, p5), 0);
    expect_input_error(moe_secret_read_file(&t, p5), "symbolic link");
    expect_input_error(moe_secret_read_file(&t, tmpdir), "not a regular file");
    ck_assert_int_eq(moe_secret_read_file(&t, tmp_path("missing")), MOE_ERR_USAGE);
    moe_error_clear();

    /* Hex round trip, either case. */
    for (char *c = hex; *c; c++)
        if (*c >= 'a' && *c <= 'f')
            *c = (char)(*c - 'a' + 'A');
    memset(&t, 0, sizeof t);
    ck_assert_int_eq(moe_secret_from_hex(&t, hex, "test"), MOE_OK);
    ck_assert(memcmp(&s, &t, sizeof s) == 0);
    expect_input_error(moe_secret_from_hex(&t, "abcd", "MOE_JOB_SECRET"), "MOE_JOB_SECRET: a job secret is 64");
}
END_TEST

START_TEST(secret_env)
{
    tu_tmpdir(tmpdir, sizeof tmpdir, "frame-env");
    moe_secret s, t;
    ck_assert_int_eq(moe_secret_generate(&s), MOE_OK);
    const char *path = tmp_path("secret");
    ck_assert_int_eq(moe_secret_write_file(&s, path), MOE_OK);
    char hex[MOE_SECRET_HEX + 1];
    moe_secret_to_hex(&s, hex);

    unsetenv("MOE_JOB_SECRET");
    unsetenv("MOE_JOB_SECRET_FILE");
    ck_assert_int_eq(moe_secret_from_env(&t), MOE_ERR_USAGE);
    ck_assert_msg(strstr(moe_errmsg(), "no job secret"), "%s", moe_errmsg());
    moe_error_clear();
    setenv("MOE_JOB_SECRET_FILE", path, 1);
    memset(&t, 0, sizeof t);
    ck_assert_int_eq(moe_secret_from_env(&t), MOE_OK);
    ck_assert(memcmp(&s, &t, sizeof s) == 0);
    setenv("MOE_JOB_SECRET", hex, 1);
    ck_assert_int_eq(moe_secret_from_env(&t), MOE_ERR_USAGE);
    ck_assert_msg(strstr(moe_errmsg(), "both"), "%s", moe_errmsg());
    moe_error_clear();
    unsetenv("MOE_JOB_SECRET_FILE");
    memset(&t, 0, sizeof t);
    ck_assert_int_eq(moe_secret_from_env(&t), MOE_OK);
    ck_assert(memcmp(&s, &t, sizeof s) == 0);
    /* A 0644 file named by the environment is refused like any other. */
    unsetenv("MOE_JOB_SECRET");
    chmod(path, 0644);
    setenv("MOE_JOB_SECRET_FILE", path, 1);
    expect_input_error(moe_secret_from_env(&t), "mode 0644");
    unsetenv("MOE_JOB_SECRET_FILE");
}
END_TEST

int main(void)
{
    setenv("MOE_LOG_LEVEL", "error", 1); /* refusals log a warning each; thousands here */
    Suite *s = suite_create("frame");
    TCase *rt = tcase_create("roundtrip");
    tcase_add_checked_fixture(rt, setup, NULL);
    tcase_add_test(rt, roundtrip_worker_kinds);
    tcase_add_test(rt, roundtrip_coordinator_kinds);
    tcase_add_test(rt, split_at_every_byte);
    suite_add_tcase(s, rt);
    TCase *hostile = tcase_create("hostile");
    tcase_add_checked_fixture(hostile, setup, NULL);
    tcase_add_test(hostile, junk_refused);
    tcase_add_test(hostile, length_over_max);
    tcase_add_test(hostile, truncated_at_eof);
    tcase_add_test(hostile, flipped_bytes);
    tcase_add_test(hostile, wrong_secret);
    tcase_add_test(hostile, replay_and_reorder);
    tcase_add_test(hostile, streams_and_reconnect);
    tcase_add_test(hostile, refusal_is_per_connection);
    tcase_add_test(hostile, wrong_job);
    tcase_add_test(hostile, wrong_peer);
    tcase_add_test(hostile, invalid_fields);
    tcase_add_test(hostile, noncanonical_payloads);
    tcase_add_test(hostile, job_spec_sanity);
    tcase_add_test(hostile, encoder_refuses_invalid);
    suite_add_tcase(s, hostile);
    TCase *sec = tcase_create("secret");
    tcase_add_checked_fixture(sec, setup, NULL);
    tcase_add_test(sec, secret_file);
    tcase_add_test(sec, secret_env);
    suite_add_tcase(s, sec);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
