/*
** fuzz_frame: libFuzzer target for the control plane's frame reader and
** envelope validation (runtime/base/frame.c). tests/fuzz/run_fuzz.sh builds and
** runs it under ASan + UBSan.
**
** Input: byte 0 picks the mode, byte 1 the size of each feed, byte 2 the
** receiver (world size, role, rank); the rest is the body.
**   mode 0 (outsider): the body is the byte stream of a connection, fed as it
**          is. Without the key almost everything stops at the HMAC, which is
**          the point: framing and authentication of hostile bytes.
**   mode 1 (insider): the body is records [2-byte big-endian length][payload];
**          each payload is sealed with the job's key before it is fed, so the
**          fuzzer reaches decoding, validation, direction and replay checks
**          as a peer holding the secret would.
**   always: the body also goes straight through moe_envelope_decode.
** Besides the sanitizers, it traps when an invariant breaks: an accepted
** envelope fails moe_envelope_check, is for another job, or does not carry a
** seq above every earlier one of its stream; a decoded payload is not exactly
** what packing the result gives; a reader says anything after a refusal.
**
** Built with -DFUZZ_FRAME_SEEDS it is instead a program that writes a seed
** corpus (valid streams and payloads of every message kind) into a directory.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/frame.h"
#include "runtime/base/mem.h"

#define FUZZ_JOB "fuzz-job"

static void fuzz_secret(moe_secret *s)
{
    for (int i = 0; i < MOE_SECRET_BYTES; i++)
        s->key[i] = (uint8_t)(0x42 + 3 * i);
}

#define ENSURE(cond)                                                              \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "fuzz_frame: invariant broken: %s (line %d)\n", #cond, __LINE__); \
            __builtin_trap();                                                     \
        }                                                                         \
    } while (0)

#ifndef FUZZ_FRAME_SEEDS /* the fuzz target */

typedef struct {
    uint32_t world;
    moe_role self;
    uint32_t rank;
} receiver_spec;

static receiver_spec spec_from(uint8_t b)
{
    receiver_spec s;
    s.world = (uint32_t)(b & 7) + 1;
    s.self = (b & 8) ? MOE_ROLE_WORKER : MOE_ROLE_COORDINATOR;
    s.rank = (uint32_t)(b >> 4) % s.world;
    return s;
}

/* Feeds stream in chunks of `chunk` bytes (EOF after the last) and checks
** what comes out. */
static void run_reader(const uint8_t *stream, size_t n, size_t chunk, receiver_spec rs)
{
    moe_secret key;
    fuzz_secret(&key);
    moe_frame_receiver rx;
    ENSURE(moe_frame_receiver_init(&rx, &key, FUZZ_JOB, rs.world, rs.self, rs.rank) == MOE_OK);
    moe_frame_reader r;
    ENSURE(moe_frame_reader_init(&r, &rx, "fuzz") == MOE_OK);
    uint64_t last[8] = {0};
    size_t off = 0;
    int done = 0;
    while (!done) {
        size_t k = n - off < chunk ? n - off : chunk;
        ENSURE(moe_frame_reader_feed(&r, stream + off, k) == MOE_OK);
        off += k;
        if (off == n)
            moe_frame_reader_eof(&r);
        Moe__Control__Envelope *e;
        moe_frame_result res;
        while ((res = moe_frame_reader_next(&r, &e)) == MOE_FRAME_READY) {
            char why[256];
            ENSURE(e != NULL);
            ENSURE(moe_envelope_check(e, rs.world, why, sizeof why) == MOE_FRAME_ACCEPTED);
            ENSURE(strcmp(e->job_id, FUZZ_JOB) == 0);
            ENSURE(e->sender != rs.self);
            ENSURE(rs.self == MOE_ROLE_COORDINATOR || e->rank == rs.rank);
            ENSURE(r.rank == (int64_t)e->rank);
            ENSURE(e->seq > last[e->rank]);
            last[e->rank] = e->seq;
            moe_envelope_free(e);
        }
        ENSURE(e == NULL);
        if (res == MOE_FRAME_REFUSED) {
            ENSURE(r.refusal != MOE_FRAME_ACCEPTED && r.why[0] != '\0');
            ENSURE(moe_frame_reader_next(&r, &e) == MOE_FRAME_REFUSED && e == NULL);
            done = 1;
        } else if (res == MOE_FRAME_CLOSED) {
            ENSURE(off == n);
            done = 1;
        } else {
            ENSURE(res == MOE_FRAME_AGAIN && off < n);
        }
    }
    moe_frame_reader_free(&r);
    moe_frame_receiver_free(&rx);
}

/* Mode 1: seal each [len][payload] record with the job's key. */
static uint8_t *seal_records(const uint8_t *body, size_t n, size_t *out_n)
{
    moe_secret key;
    fuzz_secret(&key);
    /* At most n/2 records, each growing by the frame overhead less its 2-byte length. */
    size_t cap = n + (n / 2 + 1) * MOE_FRAME_OVERHEAD;
    uint8_t *stream = malloc(cap);
    ENSURE(stream != NULL);
    size_t used = 0, off = 0;
    while (off + 2 <= n) {
        size_t len = (size_t)body[off] << 8 | body[off + 1];
        off += 2;
        if (len > n - off)
            len = n - off;
        ENSURE(used + len + MOE_FRAME_OVERHEAD <= cap);
        uint8_t *f;
        size_t flen;
        ENSURE(moe_frame_wrap(&key, body + off, len, &f, &flen) == MOE_OK);
        memcpy(stream + used, f, flen);
        used += flen;
        moe_free(f);
        off += len;
    }
    *out_n = used;
    return stream;
}

/* Comparing what protobuf-c packs with the payload, byte for byte. */
static void check_decode(const uint8_t *p, size_t n, uint32_t world)
{
    static Moe__Control__Envelope sentinel;
    Moe__Control__Envelope *e = &sentinel; /* must come back NULL unless accepted */
    char why[256];
    moe_frame_refusal v = moe_envelope_decode(p, n, world, &e, why, sizeof why);
    if (v != MOE_FRAME_ACCEPTED) {
        ENSURE(e == NULL && why[0] != '\0');
        ENSURE(v == MOE_FRAME_MALFORMED || v == MOE_FRAME_INVALID);
        return;
    }
    size_t len = protobuf_c_message_get_packed_size(&e->base);
    ENSURE(len == n);
    uint8_t *again = malloc(len + 1);
    ENSURE(again != NULL);
    ENSURE(protobuf_c_message_pack(&e->base, again) == len);
    ENSURE(memcmp(again, p, n) == 0);
    free(again);
    moe_envelope_free(e);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    setenv("MOE_LOG_LEVEL", "error", 1); /* every refusal would log a warning */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    uint8_t mode = data[0], chunk_b = data[1];
    receiver_spec rs = spec_from(data[2]);
    const uint8_t *body = data + 3;
    size_t n = size - 3;
    size_t chunk = chunk_b == 0xff ? (n ? n : 1) : (size_t)(chunk_b % 64) + 1;

    if (mode & 1) {
        size_t sn;
        uint8_t *stream = seal_records(body, n, &sn);
        run_reader(stream, sn, chunk, rs);
        free(stream);
    } else {
        run_reader(body, n, chunk, rs);
    }
    check_decode(body, n, rs.world);
    moe_error_clear(); /* thread-local; keeps the first failure otherwise */
    return 0;
}

#else /* the seed corpus writer */

static int write_seed(const char *dir, const char *name, uint8_t mode, uint8_t recv, const uint8_t *body, size_t n)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    uint8_t head[3] = {mode, 0xff, recv};
    int ok = fwrite(head, 1, 3, f) == 3 && fwrite(body, 1, n, f) == n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

typedef struct {
    uint8_t *p;
    size_t n;
} buf;

static void buf_add(buf *b, const void *p, size_t n)
{
    b->p = realloc(b->p, b->n + n);
    ENSURE(b->p != NULL);
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

/* Appends env's frame to frames and its payload as a record to records. */
static void add_message(moe_frame_writer *w, Moe__Control__Envelope *env, buf *frames, buf *records)
{
    uint8_t *f;
    size_t n;
    if (moe_frame_encode(w, env, &f, &n) != MOE_OK) {
        fprintf(stderr, "fuzz_frame seeds: %s\n", moe_errmsg());
        exit(1);
    }
    buf_add(frames, f, n);
    size_t len = n - MOE_FRAME_OVERHEAD;
    uint8_t hdr[2] = {(uint8_t)(len >> 8), (uint8_t)len};
    buf_add(records, hdr, 2);
    buf_add(records, f + MOE_FRAME_HEADER, len);
    moe_free(f);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    moe_secret key;
    fuzz_secret(&key);
    /* World 4: receiver byte 3 is a coordinator, 0x1b worker rank 1. */
    const uint8_t to_coord = 3, to_worker1 = 0x1b;
    moe_frame_writer ww, wc;
    if (moe_frame_writer_init(&ww, &key, FUZZ_JOB, 4, MOE_ROLE_WORKER, 1) != MOE_OK ||
        moe_frame_writer_init(&wc, &key, FUZZ_JOB, 4, MOE_ROLE_COORDINATOR, 1) != MOE_OK) {
        fprintf(stderr, "fuzz_frame seeds: %s\n", moe_errmsg());
        return 1;
    }
    buf wf = {0}, wr = {0}, cf = {0}, cr = {0};

    Moe__Control__Envelope env = MOE__CONTROL__ENVELOPE__INIT;
    Moe__Control__Hello hello = MOE__CONTROL__HELLO__INIT;
    hello.protocol = MOE_CONTROL_PROTOCOL;
    hello.world_size = 4;
    hello.hostname = (char *)"node-1";
    hello.pid = 100;
    env.body_case = MOE__CONTROL__ENVELOPE__BODY_HELLO, env.hello = &hello;
    add_message(&ww, &env, &wf, &wr);
    Moe__Control__Heartbeat hb = MOE__CONTROL__HEARTBEAT__INIT;
    hb.step = 5;
    hb.phase = MOE__CONTROL__PHASE__PHASE_TRAINING;
    env.body_case = MOE__CONTROL__ENVELOPE__BODY_HEARTBEAT, env.heartbeat = &hb;
    add_message(&ww, &env, &wf, &wr);
    Moe__Control__StepReport rep = MOE__CONTROL__STEP_REPORT__INIT;
    rep.kind = MOE__CONTROL__REPORT_KIND__REPORT_TRAIN;
    rep.step = 5, rep.loss = 4.5, rep.aux_loss = 0.01, rep.lr = 1e-3, rep.grad_norm = 1.0;
    rep.tokens_per_s = 1000, rep.tflops = 0.5, rep.mfu = 0.2, rep.load_imbalance = 1.1;
    rep.dropped_frac = 0.01, rep.step_ms = 100;
    env.body_case = MOE__CONTROL__ENVELOPE__BODY_STEP_REPORT, env.step_report = &rep;
    add_message(&ww, &env, &wf, &wr);
    Moe__Control__Ack ack = MOE__CONTROL__ACK__INIT;
    ack.seq = 1;
    env.body_case = MOE__CONTROL__ENVELOPE__BODY_ACK, env.ack = &ack;
    add_message(&ww, &env, &wf, &wr);
    Moe__Control__Error err = MOE__CONTROL__ERROR__INIT;
    err.kind = MOE__CONTROL__ERROR_KIND__ERROR_IO;
    err.step = 5;
    err.message = (char *)"writing checkpoint: no space left on device";
    env.body_case = MOE__CONTROL__ENVELOPE__BODY_ERROR, env.error = &err;
    add_message(&ww, &env, &wf, &wr);

    Moe__Control__ParallelLayout par = MOE__CONTROL__PARALLEL_LAYOUT__INIT;
    par.tp = 2, par.pp = 1, par.cp = 1, par.ep = 2, par.etp = 1;
    Moe__Control__JobSpec spec = MOE__CONTROL__JOB_SPEC__INIT;
    spec.job_id = (char *)FUZZ_JOB;
    spec.world_size = 4;
    spec.run_dir = (char *)"/tmp/run";
    spec.heartbeat_interval_ms = 1000;
    spec.heartbeat_timeout_ms = 5000;
    spec.config_yaml = (char *)"num-layers: 2\nhidden-size: 64\nnum-experts: 4\n";
    spec.parallel = &par;
    spec.train_iters = 100;
    env.body_case = MOE__CONTROL__ENVELOPE__BODY_JOB_SPEC, env.job_spec = &spec;
    add_message(&wc, &env, &cf, &cr);
    Moe__Control__Command cmd = MOE__CONTROL__COMMAND__INIT;
    cmd.kind = MOE__CONTROL__COMMAND_KIND__COMMAND_CHECKPOINT;
    cmd.at_step = 50;
    cmd.reason = (char *)"operator asked";
    env.body_case = MOE__CONTROL__ENVELOPE__BODY_COMMAND, env.command = &cmd;
    add_message(&wc, &env, &cf, &cr);
    env.body_case = MOE__CONTROL__ENVELOPE__BODY_ACK, env.ack = &ack;
    add_message(&wc, &env, &cf, &cr);
    env.body_case = MOE__CONTROL__ENVELOPE__BODY_ERROR, env.error = &err;
    add_message(&wc, &env, &cf, &cr);

    int rc = 0;
    rc |= write_seed(dir, "worker-stream", 0, to_coord, wf.p, wf.n);
    rc |= write_seed(dir, "worker-records", 1, to_coord, wr.p, wr.n);
    rc |= write_seed(dir, "coordinator-stream", 0, to_worker1, cf.p, cf.n);
    rc |= write_seed(dir, "coordinator-records", 1, to_worker1, cr.p, cr.n);
    /* One payload alone: the direct decode path sees a valid envelope. */
    rc |= write_seed(dir, "jobspec-payload", 2, to_worker1, cr.p + 2, (size_t)cr.p[0] << 8 | cr.p[1]);
    rc |= write_seed(dir, "hello-payload", 2, to_coord, wr.p + 2, (size_t)wr.p[0] << 8 | wr.p[1]);
    const char *http = "GET / HTTP/1.1\r\n\r\n";
    rc |= write_seed(dir, "junk", 0, to_coord, (const uint8_t *)http, strlen(http));
    free(wf.p), free(wr.p), free(cf.p), free(cr.p);
    moe_frame_writer_free(&ww);
    moe_frame_writer_free(&wc);
    if (rc) {
        fprintf(stderr, "fuzz_frame seeds: cannot write into %s\n", dir);
        return 1;
    }
    return 0;
}

#endif
