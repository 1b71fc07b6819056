// The C baseline: what raw hiredis does with an async context and a minimal poll(2) loop, no Swift involved.
#ifndef HIREDIS_BASELINE_H
#define HIREDIS_BASELINE_H
#include <stdint.h>

typedef struct {
    long messages;        // messages received or published
    double seconds;       // from the first message received (or the first publish) to the last
    int error;            // 0, or nonzero with `message` set
    char message[160];
} baseline_result;

/// Subscribes to `channel`; calls `ready()` once the server acknowledged; returns after `count` messages.
/// `fanout` > 1 hands each message to that many counters (the cost of a per-subscription dispatch in C).
/// With `latencies` (room for `count`), each payload must begin with the publisher's CLOCK_MONOTONIC time in
/// nanoseconds as decimal digits; the receive-minus-send time of each message is stored there.
baseline_result baseline_subscribe(const char *host, int port, const char *channel, long count, int fanout,
                                   void (*ready)(void), uint64_t *latencies);

/// Like `baseline_subscribe` over TLS (verified against `ca_file`): OpenSSL reads the socket, hiredis's reader
/// parses what it decrypts. A blocking socket and one SSL_read per TLS record: the least a TLS subscriber can do.
baseline_result baseline_subscribe_tls(const char *host, int port, const char *channel, long count, const char *ca_file,
                                       void (*ready)(void));

/// Publishes `count` messages of `size` bytes with at most `window` commands in flight, as fast as possible.
baseline_result baseline_publish(const char *host, int port, const char *channel, long count, long size, int window);

/// `baseline_publish` with SPUBLISH: to a sharded channel (on a cluster, `host`/`port` must own its slot).
baseline_result baseline_spublish(const char *host, int port, const char *channel, long count, long size, int window);

/// Publishes `count` messages of `size` bytes at `rate` messages per second, each beginning with its send time
/// (CLOCK_MONOTONIC, nanoseconds, decimal), for publish-to-receive latency.
baseline_result baseline_publish_paced(const char *host, int port, const char *channel, long count, long size, long rate);

/// Appends `count` entries (`XADD stream * payload <size bytes>`) with at most `window` commands in flight.
baseline_result baseline_xadd(const char *host, int port, const char *stream, long count, long size, int window);

/// Creates `group` on `stream` from its first entry (if missing), then reads `count` entries as consumer `bench`:
/// `XREADGROUP ... COUNT batch BLOCK 1000 STREAMS stream >`, each reply's IDs acknowledged by one XACK written
/// together with the next read. `seconds` runs from the first entry read to the last.
baseline_result baseline_xreadgroup(const char *host, int port, const char *stream, const char *group, long count,
                                    int batch);

/// CLOCK_MONOTONIC in nanoseconds.
uint64_t baseline_now_ns(void);
#endif
