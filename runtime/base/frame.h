/*
** frame: the control plane's wire layer. Framing, authentication, replay
** protection and validation of the messages in proto/control.proto, which the
** coordinator (launch/) and the workers (moe-worker) exchange over TCP.
** docs/control-plane.md has the conversation and the threat model.
**
** A frame on the wire:
**
**     L (4 bytes, big-endian)   L <= MOE_FRAME_MAX
**     payload (L bytes)         a packed moe.control.Envelope
**     mac (32 bytes)            HMAC-SHA256(secret, L || payload)  (libsodium)
**
** The secret is 32 random bytes made per job by the launcher
** (moe_secret_generate) and handed to its workers through the environment,
** never a command line: MOE_JOB_SECRET_FILE names a file of mode 0600 holding
** the secret as 64 hex digits, or MOE_JOB_SECRET holds the hex itself.
**
** Streams and replay. Each worker rank has two streams, worker -> coordinator
** and coordinator -> worker. A moe_frame_writer is one stream's sending end:
** it stamps every envelope with the job id, the worker rank, the sender's role
** and the next sequence number (1, 2, 3, ...). A moe_frame_receiver is the
** receiving end of all the streams one process reads (the coordinator: every
** rank's worker -> coordinator stream; a worker: its own coordinator -> worker
** stream) and keeps the last accepted seq of each, so a frame whose seq is not
** above it is refused as replayed or reordered. The receiver outlives
** connections: a worker that reconnects carries on with its writer's next seq,
** and a frame recorded on the old connection is refused on the new one.
**
** Receiving. A moe_frame_reader is one connection: feed it the bytes as they
** arrive (a non-blocking socket may deliver any split), then take complete
** envelopes with moe_frame_reader_next until it says MOE_FRAME_AGAIN:
**
**     n = read(fd, tmp, sizeof tmp);
**     if (n > 0) MOE_TRY(moe_frame_reader_feed(&r, tmp, (size_t)n));
**     if (n == 0) moe_frame_reader_eof(&r);
**     Moe__Control__Envelope *env;
**     moe_frame_result res;
**     while ((res = moe_frame_reader_next(&r, &env)) == MOE_FRAME_READY) {
**         handle(r.rank, env);            // authenticated, validated, fresh
**         moe_envelope_free(env);
**     }
**     if (res == MOE_FRAME_REFUSED || res == MOE_FRAME_CLOSED) drop(fd);
**
** Each frame is checked in this order, and the first failure refuses it:
** length (MOE_FRAME_OVERSIZED), completeness at EOF (TRUNCATED), the HMAC in
** constant time (BAD_MAC), protobuf decoding (MALFORMED), field validation
** (INVALID: see proto/control.proto for every field's range), then the
** receiver's checks: the job id (WRONG_JOB), the direction and rank
** (WRONG_PEER), the sequence number (REPLAY). A refusal is logged at warn
** level, names what was wrong (r.why) and is final: the reader refuses
** everything after it, and the caller drops the connection. Other connections
** are not affected. A sequence number is consumed only by an accepted frame.
**
** Sending. Build the body on the stack with protobuf-c's INIT macros, point
** the envelope at it, and encode; the writer fills the header fields:
**
**     Moe__Control__Heartbeat hb = MOE__CONTROL__HEARTBEAT__INIT;
**     hb.step = step;
**     hb.phase = MOE__CONTROL__PHASE__PHASE_TRAINING;
**     Moe__Control__Envelope env = MOE__CONTROL__ENVELOPE__INIT;
**     env.body_case = MOE__CONTROL__ENVELOPE__BODY_HEARTBEAT;
**     env.heartbeat = &hb;
**     uint8_t *frame; size_t len;
**     MOE_TRY(moe_frame_encode(&w, &env, &frame, &len));  // then write len bytes, moe_free(frame)
**
** The encoder validates what it sends with the receiver's rules: a peer may
** refuse a frame this build wrote for where or when it arrives (job,
** direction, rank, seq), never for its content as long as both ends agree on
** the world size.
**
** Memory and threads: no global state. A reader's buffer holds one frame plus
** one feed (an oversized length is refused from its 4 bytes, so never more
** than MOE_FRAME_OVERHEAD + MOE_FRAME_MAX plus a feed, doubled at most for
** growth) and is released when it drains after growing past 64 KiB.
** protobuf-c allocates each decoded envelope; the caller owns it. A receiver
** and its readers belong to one thread (the event loop). Structs hold a copy
** of the secret; the *_free functions wipe it.
**
** Restarts: a new attempt of a job gets a new job id and secret (and fresh
** receivers), so nothing from an earlier attempt is accepted.
*/
#ifndef MOE_FRAME_H
#define MOE_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "proto/control.pb-c.h"
#include "runtime/base/status.h"

#define MOE_CONTROL_PROTOCOL 1         /* Hello.protocol of this build */
#define MOE_FRAME_MAX (1u << 20)       /* largest payload (packed Envelope), bytes */
#define MOE_FRAME_HEADER 4             /* the big-endian length */
#define MOE_FRAME_MAC 32               /* HMAC-SHA256 */
#define MOE_FRAME_OVERHEAD (MOE_FRAME_HEADER + MOE_FRAME_MAC)
#define MOE_SECRET_BYTES 32
#define MOE_SECRET_HEX (2 * MOE_SECRET_BYTES)
#define MOE_JOB_ID_MAX 64              /* bytes of [A-Za-z0-9._-] */
#define MOE_CONTROL_MAX_WORLD (1u << 20)

/* ------------------------------------------------------------------------ */
/* The job secret */

typedef struct {
    uint8_t key[MOE_SECRET_BYTES];
} moe_secret;

/* 32 bytes from libsodium's randombytes_buf. */
moe_status moe_secret_generate(moe_secret *s);

/* hex gets MOE_SECRET_HEX lowercase digits and a NUL. */
void moe_secret_to_hex(const moe_secret *s, char hex[MOE_SECRET_HEX + 1]);

/* Exactly MOE_SECRET_HEX hex digits (either case); `origin` names where they
** came from in the error (MOE_ERR_INPUT), which never quotes the digits. */
moe_status moe_secret_from_hex(moe_secret *s, const char *hex, const char *origin);

/* Creates path (it must not exist) with mode 0600 holding the hex secret and
** a newline. The launcher's half of MOE_JOB_SECRET_FILE. */
moe_status moe_secret_write_file(const moe_secret *s, const char *path);

/* Reads a secret file: a regular file (not a symlink) owned by this user,
** with no group or other permission bits, holding the hex secret and at most
** one trailing newline. Anything else is MOE_ERR_INPUT naming the problem. */
moe_status moe_secret_read_file(moe_secret *s, const char *path);

/* A worker's secret: MOE_JOB_SECRET_FILE (read as above) or else
** MOE_JOB_SECRET (hex). Both set, or neither, is MOE_ERR_USAGE. */
moe_status moe_secret_from_env(moe_secret *s);

void moe_secret_wipe(moe_secret *s);

/* ------------------------------------------------------------------------ */
/* Validation (what every received frame passes; exposed for tests and fuzzing) */

/* The proto's enum under short names, so env->sender compares without casts. */
typedef Moe__Control__Role moe_role;
#define MOE_ROLE_COORDINATOR MOE__CONTROL__ROLE__ROLE_COORDINATOR
#define MOE_ROLE_WORKER MOE__CONTROL__ROLE__ROLE_WORKER

typedef enum {
    MOE_FRAME_ACCEPTED = 0,
    MOE_FRAME_OVERSIZED, /* length prefix above MOE_FRAME_MAX */
    MOE_FRAME_TRUNCATED, /* the connection closed inside a frame */
    MOE_FRAME_BAD_MAC,   /* HMAC does not verify: tampered, junk, or another secret */
    MOE_FRAME_MALFORMED, /* authenticated, but not a decodable Envelope */
    MOE_FRAME_INVALID,   /* a field out of range, a missing body, a non-canonical encoding */
    MOE_FRAME_WRONG_JOB, /* Envelope.job_id is not the receiver's job */
    MOE_FRAME_WRONG_PEER,/* wrong direction, or a rank this connection does not carry */
    MOE_FRAME_REPLAY     /* seq not above the last accepted on its stream */
} moe_frame_refusal;

/* "oversized", "truncated", "bad-mac", ... ("accepted" for MOE_FRAME_ACCEPTED). */
const char *moe_frame_refusal_name(moe_frame_refusal r);

/* Checks one envelope of a job of world_size ranks against
** proto/control.proto: header fields, exactly one body and one that
** e->sender sends, every body field in range. Not the receiver's checks
** (job id equality, direction, replay). On failure `why` (cap bytes) names
** the field and value. */
moe_frame_refusal moe_envelope_check(const Moe__Control__Envelope *e, uint32_t world_size,
                                     char *why, size_t cap);

/* Unpacks a payload (no length, no HMAC) and checks it: MALFORMED if
** protobuf-c refuses it, INVALID if it is not in canonical encoding (packing
** the result again must give exactly the payload: this catches a NUL inside
** a string, which protobuf-c would silently cut, and a field or body written
** twice, of which it would keep the last) or fails moe_envelope_check. *out is the envelope when ACCEPTED, else NULL. */
moe_frame_refusal moe_envelope_decode(const uint8_t *payload, size_t len, uint32_t world_size,
                                      Moe__Control__Envelope **out, char *why, size_t cap);

/* Frees an envelope from moe_frame_reader_next or moe_envelope_decode (NULL ok). */
void moe_envelope_free(Moe__Control__Envelope *e);

/* ------------------------------------------------------------------------ */
/* Sending */

typedef struct {
    moe_secret secret;
    char job_id[MOE_JOB_ID_MAX + 1];
    moe_role role;       /* who sends */
    uint32_t rank;       /* the worker rank of this stream: a worker's own, the coordinator's destination */
    uint32_t world_size;
    uint64_t next_seq;   /* starts at 1 */
} moe_frame_writer;

/* MOE_ERR_USAGE for a malformed job id, world_size outside
** [1, MOE_CONTROL_MAX_WORLD] or rank >= world_size. */
moe_status moe_frame_writer_init(moe_frame_writer *w, const moe_secret *secret, const char *job_id,
                                 uint32_t world_size, moe_role role, uint32_t rank);
void moe_frame_writer_free(moe_frame_writer *w);

/* Sets env's job_id (pointing into w), rank, sender and seq, validates it,
** and returns the whole frame in *frame (moe_alloc'd, the caller frees it with
** moe_free after sending *frame_len bytes). An envelope that fails
** validation or packs above MOE_FRAME_MAX is MOE_ERR_INTERNAL and consumes
** no seq. */
moe_status moe_frame_encode(moe_frame_writer *w, Moe__Control__Envelope *env, uint8_t **frame,
                            size_t *frame_len);

/* Frames payload as it is, without validating it: for tests and fuzz seeds. */
moe_status moe_frame_wrap(const moe_secret *secret, const uint8_t *payload, size_t len, uint8_t **frame,
                          size_t *frame_len);

/* ------------------------------------------------------------------------ */
/* Receiving */

typedef struct {
    moe_secret secret;
    char job_id[MOE_JOB_ID_MAX + 1];
    moe_role self;       /* frames must come from the other role */
    uint32_t rank;       /* a worker's own rank (frames must be addressed to it); unused by the coordinator */
    uint32_t world_size;
    uint64_t *last_seq;  /* last accepted seq per stream (0 = none): world_size entries, or 1 for a worker */
} moe_frame_receiver;

/* self is the receiving process's role; rank is its rank when self is
** MOE_ROLE_WORKER. MOE_ERR_USAGE as for moe_frame_writer_init. */
moe_status moe_frame_receiver_init(moe_frame_receiver *rx, const moe_secret *secret, const char *job_id,
                                   uint32_t world_size, moe_role self, uint32_t rank);
void moe_frame_receiver_free(moe_frame_receiver *rx);

typedef enum {
    MOE_FRAME_AGAIN = 0, /* no complete frame buffered: feed more */
    MOE_FRAME_READY,     /* *out is one accepted envelope */
    MOE_FRAME_CLOSED,    /* EOF between frames: the peer hung up cleanly */
    MOE_FRAME_REFUSED    /* see refusal and why; drop the connection */
} moe_frame_result;

typedef struct {
    moe_frame_receiver *rx; /* borrowed; outlives the reader */
    char peer[64];          /* who is on the other end, for log lines */
    int64_t rank;           /* worker rank this connection carries: -1 until its first accepted frame */
    uint64_t frames;        /* frames accepted */
    moe_frame_refusal refusal; /* MOE_FRAME_ACCEPTED until a refusal */
    char why[256];          /* the refusal, naming what was wrong */
    uint8_t *buf;           /* bytes [start, end) are fed and not yet consumed */
    size_t cap, start, end;
    int eof;
} moe_frame_reader;

/* peer labels log lines (an address, "coordinator"); it may be NULL. */
moe_status moe_frame_reader_init(moe_frame_reader *r, moe_frame_receiver *rx, const char *peer);
void moe_frame_reader_free(moe_frame_reader *r);

/* Appends n bytes. Fails only for lack of memory. Bytes fed after a refusal
** are dropped. Call moe_frame_reader_next until AGAIN between feeds, so the
** buffer holds at most one incomplete frame plus one feed. */
moe_status moe_frame_reader_feed(moe_frame_reader *r, const void *bytes, size_t n);

/* The peer closed its end (read returned 0): after the buffered frames, next
** says CLOSED, or REFUSED (truncated) if the stream stopped inside a frame. */
void moe_frame_reader_eof(moe_frame_reader *r);

/* The next buffered frame, checked as the top of this file says. READY: *out
** is the envelope (free with moe_envelope_free) and its seq is now the
** stream's last; the first READY binds the connection to out->rank. Any other
** result sets *out to NULL. */
moe_frame_result moe_frame_reader_next(moe_frame_reader *r, Moe__Control__Envelope **out);

#endif
