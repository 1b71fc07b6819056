// The only C this package has: includes, and what Swift cannot see by itself.
// Everything here must compile against hiredis 0.14 (Debian bookworm) and 1.x (Homebrew, newer distributions).
#ifndef CHIREDIS_SHIM_H
#define CHIREDIS_SHIM_H

// Both header layouts resolve these: Debian's pkg-config adds -I/usr/include/hiredis, Homebrew's adds the prefix.
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/sds.h>

// Swift cannot evaluate `#if` on C macros: expose the library version as values.
static inline int chiredis_version_major(void) { return HIREDIS_MAJOR; }
static inline int chiredis_version_minor(void) { return HIREDIS_MINOR; }

// RESP3 reply types exist only in hiredis 1.x. On 0.14 they get values no reply can carry,
// so the decoder can name them on both versions without a Swift-side version check.
#if HIREDIS_MAJOR >= 1
static const int CHIREDIS_REPLY_DOUBLE = REDIS_REPLY_DOUBLE;
static const int CHIREDIS_REPLY_BOOL = REDIS_REPLY_BOOL;
static const int CHIREDIS_REPLY_MAP = REDIS_REPLY_MAP;
static const int CHIREDIS_REPLY_SET = REDIS_REPLY_SET;
static const int CHIREDIS_REPLY_ATTR = REDIS_REPLY_ATTR;
static const int CHIREDIS_REPLY_PUSH = REDIS_REPLY_PUSH;
static const int CHIREDIS_REPLY_BIGNUM = REDIS_REPLY_BIGNUM;
static const int CHIREDIS_REPLY_VERB = REDIS_REPLY_VERB;
#else
static const int CHIREDIS_REPLY_DOUBLE = -107;
static const int CHIREDIS_REPLY_BOOL = -108;
static const int CHIREDIS_REPLY_MAP = -109;
static const int CHIREDIS_REPLY_SET = -110;
static const int CHIREDIS_REPLY_ATTR = -111;
static const int CHIREDIS_REPLY_PUSH = -112;
static const int CHIREDIS_REPLY_BIGNUM = -113;
static const int CHIREDIS_REPLY_VERB = -114;
#endif

// `&ac->c`: Swift cannot form a stable pointer to a field of a struct it reaches through a pointer.
static inline redisContext *_Nonnull chiredis_context(redisAsyncContext *_Nonnull ac) { return &ac->c; }

// The error text, a char array that Swift would import as a 128-element tuple.
static inline const char *_Nonnull chiredis_errstr(const redisContext *_Nonnull c) { return c->errstr; }


// Whether the context's reader holds part of a reply: unparsed bytes, a nested item begun, or a top-level item
// whose type byte was read. At end of stream this means the server closed mid-reply. A reader asked for a reply
// with nothing left to parse also sits at ridx 0 (with the top task's type -1): that is not mid-reply.
// `pos`, `len` and `ridx` exist in 0.14 and 1.x; the task stack is `rstack` in 0.14 and `task` in 1.x.
static inline int chiredis_reader_mid_reply(const redisContext *_Nonnull c) {
    const redisReader *r = c->reader;
    if (r == NULL) return 0;
    if (r->len > r->pos || r->ridx > 0) return 1;
#if HIREDIS_MAJOR >= 1
    return r->ridx == 0 && r->task != NULL && r->task[0] != NULL && r->task[0]->type >= 0;
#else
    return r->ridx == 0 && r->rstack[0].type >= 0;
#endif
}

// How deep the aggregate the reader is in the middle of is nested (-1: none). `ridx` exists in 0.14 and 1.x.
static inline int chiredis_reader_depth(const redisContext *_Nonnull c) {
    return c->reader != NULL ? c->reader->ridx : -1;
}

// How many bytes hiredis's output buffer holds, not yet written to the socket. (hiredis moves the rest of the buffer
// after every partial write, so the package keeps it small and feeds it as it drains.)
static inline size_t chiredis_output_length(const redisContext *_Nonnull c) {
    return c->obuf != NULL ? sdslen((sds)c->obuf) : 0;
}

// Over TLS the package writes hiredis's output buffer itself (through the TLS session, which takes all of it at
// once), then empties it in O(1), and feeds decrypted bytes to hiredis's reader.
static inline const char *_Nullable chiredis_output(const redisContext *_Nonnull c) { return c->obuf; }
static inline void chiredis_output_clear(redisContext *_Nonnull c) {
    if (c->obuf != NULL) sdsclear((sds)c->obuf);
}
static inline int chiredis_reader_feed(redisContext *_Nonnull c, const char *_Nonnull bytes, size_t length) {
    return redisReaderFeed(c->reader, bytes, length);
}
#endif
