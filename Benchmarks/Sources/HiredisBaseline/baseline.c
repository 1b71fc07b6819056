// Raw hiredis async with a poll(2) loop: the yardstick the Swift layer is measured against.
#define _POSIX_C_SOURCE 200809L
#include "baseline.h"
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <errno.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

uint64_t baseline_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

// ---- the adapter: interest flags polled by `run_loop` ----
typedef struct { int reading, writing; } interest;
static void add_read(void *p) { ((interest *)p)->reading = 1; }
static void del_read(void *p) { ((interest *)p)->reading = 0; }
static void add_write(void *p) { ((interest *)p)->writing = 1; }
static void del_write(void *p) { ((interest *)p)->writing = 0; }
static void cleanup(void *p) { ((interest *)p)->reading = ((interest *)p)->writing = 0; }

typedef struct {
    redisAsyncContext *ac;
    interest io;
    int done;
    int failed;
    baseline_result result;
} session;

static void connected(const redisAsyncContext *ac, int status) {
    session *s = ac->data;
    if (status != REDIS_OK) {
        s->failed = 1;
        s->result.error = 1;
        snprintf(s->result.message, sizeof s->result.message, "connect: %s", ac->c.errstr);
        s->ac = NULL;  // hiredis frees it after this callback
    }
}

static int open_session(session *s, const char *host, int port) {
    memset(s, 0, sizeof *s);
    signal(SIGPIPE, SIG_IGN);
    s->ac = redisAsyncConnect(host, port);
    if (!s->ac || s->ac->err) {
        s->result.error = 1;
        snprintf(s->result.message, sizeof s->result.message, "connect: %s", s->ac ? s->ac->errstr : "out of memory");
        return -1;
    }
    s->ac->data = s;
    s->ac->ev.data = &s->io;
    s->ac->ev.addRead = add_read;
    s->ac->ev.delRead = del_read;
    s->ac->ev.addWrite = add_write;
    s->ac->ev.delWrite = del_write;
    s->ac->ev.cleanup = cleanup;
    redisAsyncSetConnectCallback(s->ac, connected);
    return 0;
}

// Polls the context until `s->done` or failure.
static void run_loop(session *s) {
    while (!s->done && !s->failed && s->ac) {
        struct pollfd fd = { .fd = s->ac->c.fd, .events = 0, .revents = 0 };
        if (s->io.reading) fd.events |= POLLIN;
        if (s->io.writing) fd.events |= POLLOUT;
        if (poll(&fd, 1, 1000) <= 0) continue;
        if (fd.revents & (POLLOUT | POLLERR | POLLHUP)) redisAsyncHandleWrite(s->ac);
        if (!s->ac || s->done || s->failed) break;
        if (fd.revents & (POLLIN | POLLERR | POLLHUP)) redisAsyncHandleRead(s->ac);
    }
}

// ---- subscriber ----
typedef struct {
    session base;
    long count, received;
    int fanout;
    long *counters;
    uint64_t first, last;
    void (*ready)(void);
    int acknowledged;
    uint64_t *latencies;
} subscriber;

static void on_message(redisAsyncContext *ac, void *r, void *privdata) {
    subscriber *s = privdata;
    redisReply *reply = r;
    (void)ac;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3) return;
    if (strcmp(reply->element[0]->str, "subscribe") == 0) {
        if (!s->acknowledged) { s->acknowledged = 1; if (s->ready) s->ready(); }
        return;
    }
    if (strcmp(reply->element[0]->str, "message") != 0) return;
    uint64_t now = baseline_now_ns();
    if (s->received == 0) s->first = now;
    if (s->latencies) s->latencies[s->received] = now - strtoull(reply->element[2]->str, NULL, 10);
    for (int i = 0; i < s->fanout; i++) s->counters[i]++;
    s->received++;
    s->last = now;
    if (s->received >= s->count) s->base.done = 1;
}

baseline_result baseline_subscribe(const char *host, int port, const char *channel, long count, int fanout,
                                   void (*ready)(void), uint64_t *latencies) {
    subscriber s;
    memset(&s, 0, sizeof s);
    s.count = count;
    s.fanout = fanout < 1 ? 1 : fanout;
    s.counters = calloc((size_t)s.fanout, sizeof(long));
    s.ready = ready;
    s.latencies = latencies;
    if (open_session(&s.base, host, port) != 0) { free(s.counters); return s.base.result; }
    s.base.ac->data = &s.base;
    const char *argv[2] = { "SUBSCRIBE", channel };
    size_t lens[2] = { 9, strlen(channel) };
    redisAsyncCommandArgv(s.base.ac, on_message, &s, 2, argv, lens);
    run_loop(&s.base);
    baseline_result result = s.base.result;
    result.messages = s.received;
    result.seconds = (double)(s.last - s.first) / 1e9;
    if (s.base.ac) redisAsyncFree(s.base.ac);
    free(s.counters);
    return result;
}

// ---- publisher ----
typedef struct {
    session base;
    long count, sent, answered;
    int window;
    char *payload;
    size_t size;
    const char *command;  // PUBLISH or SPUBLISH
    const char *channel;
    long rate;  // 0: as fast as the window allows
    uint64_t start;
} publisher;

static void send_more(publisher *p);

static void on_published(redisAsyncContext *ac, void *r, void *privdata) {
    publisher *p = privdata;
    (void)ac;
    if (!r) return;
    p->answered++;
    if (p->answered >= p->count) { p->base.done = 1; return; }
    if (p->rate == 0) send_more(p);
}

static void publish_one(publisher *p) {
    if (p->rate) {  // the send time leads the payload
        int n = snprintf(p->payload, p->size, "%llu", (unsigned long long)baseline_now_ns());
        if ((size_t)n < p->size) p->payload[n] = ' ';
    }
    if (strcmp(p->command, "XADD") == 0) {  // XADD stream * payload <payload>
        const char *argv[5] = { "XADD", p->channel, "*", "payload", p->payload };
        size_t lens[5] = { 4, strlen(p->channel), 1, 7, p->size };
        redisAsyncCommandArgv(p->base.ac, on_published, p, 5, argv, lens);
    } else {
        const char *argv[3] = { p->command, p->channel, p->payload };
        size_t lens[3] = { strlen(p->command), strlen(p->channel), p->size };
        redisAsyncCommandArgv(p->base.ac, on_published, p, 3, argv, lens);
    }
    p->sent++;
}

static void send_more(publisher *p) {
    while (p->sent < p->count && p->sent - p->answered < p->window) publish_one(p);
}

static baseline_result publish(const char *host, int port, const char *command, const char *channel, long count, long size,
                               int window, long rate) {
    publisher p;
    memset(&p, 0, sizeof p);
    p.count = count;
    p.window = window < 1 ? 1 : window;
    p.size = (size_t)(size < 24 && rate ? 24 : size);
    p.payload = malloc(p.size);
    memset(p.payload, 'x', p.size);
    p.command = command;
    p.channel = channel;
    p.rate = rate;
    if (open_session(&p.base, host, port) != 0) { free(p.payload); return p.base.result; }
    p.start = baseline_now_ns();
    if (rate == 0) {
        send_more(&p);
        run_loop(&p.base);
    } else {
        // Paced: one message every 1/rate s, by the clock; replies are drained between sends.
        uint64_t interval = 1000000000ull / (uint64_t)rate;
        while (p.sent < p.count && !p.base.failed && p.base.ac) {
            uint64_t due = p.start + (uint64_t)p.sent * interval, now;
            while ((now = baseline_now_ns()) < due) {
                if (due - now > 200000) {  // sleep most of a long wait, spin the rest
                    struct timespec pause = { 0, (long)(due - now - 100000) };
                    nanosleep(&pause, NULL);
                }
            }
            publish_one(&p);
            redisAsyncHandleWrite(p.base.ac);
            struct pollfd fd = { .fd = p.base.ac->c.fd, .events = POLLIN, .revents = 0 };
            if (poll(&fd, 1, 0) > 0) redisAsyncHandleRead(p.base.ac);
        }
        run_loop(&p.base);
    }
    baseline_result result = p.base.result;
    result.messages = p.answered;
    result.seconds = (double)(baseline_now_ns() - p.start) / 1e9;
    if (p.base.ac) redisAsyncFree(p.base.ac);
    free(p.payload);
    return result;
}

baseline_result baseline_publish(const char *host, int port, const char *channel, long count, long size, int window) {
    return publish(host, port, "PUBLISH", channel, count, size, window, 0);
}

baseline_result baseline_spublish(const char *host, int port, const char *channel, long count, long size, int window) {
    return publish(host, port, "SPUBLISH", channel, count, size, window, 0);
}

baseline_result baseline_xadd(const char *host, int port, const char *stream, long count, long size, int window) {
    return publish(host, port, "XADD", stream, count, size, window, 0);
}

// ---- consumer group: XREADGROUP COUNT n, then XACK of what it returned pipelined with the next read ----
typedef struct {
    session base;
    long count, received;
    int batch, acks_outstanding;
    const char *stream, *group;
    uint64_t first, last;
    const char **argv;  // the XACK's arguments: XACK stream group id...
    size_t *lens;
} group_reader;

static void read_more(group_reader *g);

static void on_acked(redisAsyncContext *ac, void *r, void *privdata) {
    group_reader *g = privdata;
    (void)ac;
    if (!r) return;
    g->acks_outstanding--;
    if (g->received >= g->count && g->acks_outstanding == 0) g->base.done = 1;
}

static void on_read(redisAsyncContext *ac, void *r, void *privdata) {
    group_reader *g = privdata;
    redisReply *reply = r;
    if (!reply) return;
    if (reply->type == REDIS_REPLY_ERROR) {
        g->base.failed = 1;
        g->base.result.error = 1;
        snprintf(g->base.result.message, sizeof g->base.result.message, "XREADGROUP: %s", reply->str);
        return;
    }
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0) {
        redisReply *entries = reply->element[0]->element[1];
        size_t n = entries->elements;
        if (n > 0) {
            uint64_t now = baseline_now_ns();
            if (g->received == 0) g->first = now;
            g->argv[0] = "XACK"; g->lens[0] = 4;
            g->argv[1] = g->stream; g->lens[1] = strlen(g->stream);
            g->argv[2] = g->group; g->lens[2] = strlen(g->group);
            for (size_t i = 0; i < n; i++) {
                redisReply *id = entries->element[i]->element[0];
                g->argv[3 + i] = id->str;
                g->lens[3 + i] = id->len;
            }
            // Formatted into the output buffer now, so the reply may be freed after this callback.
            redisAsyncCommandArgv(ac, on_acked, g, (int)(3 + n), g->argv, g->lens);
            g->acks_outstanding++;
            g->received += (long)n;
            g->last = now;
        }
    }
    if (g->received < g->count) read_more(g);
}

static void read_more(group_reader *g) {
    char count[24];
    snprintf(count, sizeof count, "%d", g->batch);
    const char *argv[11] = { "XREADGROUP", "GROUP", g->group, "bench", "COUNT", count, "BLOCK", "1000", "STREAMS",
                             g->stream, ">" };
    size_t lens[11];
    for (int i = 0; i < 11; i++) lens[i] = strlen(argv[i]);
    redisAsyncCommandArgv(g->base.ac, on_read, g, 11, argv, lens);
}

baseline_result baseline_xreadgroup(const char *host, int port, const char *stream, const char *group, long count,
                                    int batch) {
    group_reader g;
    memset(&g, 0, sizeof g);
    g.count = count;
    g.batch = batch < 1 ? 1 : batch;
    g.stream = stream;
    g.group = group;
    g.argv = malloc(sizeof(char *) * (size_t)(g.batch + 3));
    g.lens = malloc(sizeof(size_t) * (size_t)(g.batch + 3));
    if (open_session(&g.base, host, port) != 0) { free(g.argv); free(g.lens); return g.base.result; }
    g.base.ac->data = &g.base;
    const char *create[6] = { "XGROUP", "CREATE", stream, group, "0", "MKSTREAM" };
    size_t create_lens[6];
    for (int i = 0; i < 6; i++) create_lens[i] = strlen(create[i]);
    redisAsyncCommandArgv(g.base.ac, NULL, NULL, 6, create, create_lens);  // BUSYGROUP is fine
    read_more(&g);
    run_loop(&g.base);
    baseline_result result = g.base.result;
    result.messages = g.received;
    result.seconds = (double)(g.last - g.first) / 1e9;
    if (g.base.ac) redisAsyncFree(g.base.ac);
    free(g.argv);
    free(g.lens);
    return result;
}

baseline_result baseline_publish_paced(const char *host, int port, const char *channel, long count, long size, long rate) {
    return publish(host, port, "PUBLISH", channel, count, size, 1000000, rate);
}

// ---- subscriber over TLS: OpenSSL on a blocking socket, hiredis's reader ----
baseline_result baseline_subscribe_tls(const char *host, int port, const char *channel, long count, const char *ca_file,
                                       void (*ready)(void)) {
    baseline_result result;
    memset(&result, 0, sizeof result);
    signal(SIGPIPE, SIG_IGN);
#define TLS_FAIL(...) do { result.error = 1; snprintf(result.message, sizeof result.message, __VA_ARGS__); goto done; } while (0)
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = NULL;
    redisReader *reader = NULL;
    char *command = NULL;
    int fd = -1;
    if (!ctx || SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) TLS_FAIL("cannot load %s", ca_file);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    struct sockaddr_in address;
    memset(&address, 0, sizeof address);
    address.sin_family = AF_INET;
    address.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &address.sin_addr) != 1) TLS_FAIL("%s is not an IPv4 address", host);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) != 0) TLS_FAIL("connect: %s", strerror(errno));
    ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host);
    if (SSL_connect(ssl) != 1) {
        const char *reason = ERR_reason_error_string(ERR_get_error());
        TLS_FAIL("TLS handshake failed: %s", reason ? reason : "connection closed");
    }
    const char *argv[2] = { "SUBSCRIBE", channel };
    size_t lens[2] = { 9, strlen(channel) };
    int length = redisFormatCommandArgv(&command, 2, argv, lens);
    if (length < 0 || SSL_write(ssl, command, length) != length) TLS_FAIL("cannot send SUBSCRIBE");
    reader = redisReaderCreate();
    static char buffer[64 * 1024];
    long received = 0;
    uint64_t first = 0, last = 0;
    int acknowledged = 0;
    while (received < count) {
        int n = SSL_read(ssl, buffer, sizeof buffer);
        if (n <= 0) TLS_FAIL("TLS read failed after %ld messages", received);
        if (redisReaderFeed(reader, buffer, (size_t)n) != REDIS_OK) TLS_FAIL("reader: %s", reader->errstr);
        void *r = NULL;
        while (received < count) {
            if (redisReaderGetReply(reader, &r) != REDIS_OK) TLS_FAIL("reader: %s", reader->errstr);
            if (!r) break;
            redisReply *reply = r;
            if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 3 && reply->element[0]->type == REDIS_REPLY_STRING) {
                if (!acknowledged && strcmp(reply->element[0]->str, "subscribe") == 0) {
                    acknowledged = 1;
                    if (ready) ready();
                } else if (strcmp(reply->element[0]->str, "message") == 0) {
                    uint64_t now = baseline_now_ns();
                    if (received == 0) first = now;
                    last = now;
                    received++;
                }
            }
            freeReplyObject(reply);
        }
    }
    result.messages = received;
    result.seconds = (double)(last - first) / 1e9;
done:
    if (reader) redisReaderFree(reader);
    if (command) free(command);
    if (ssl) SSL_free(ssl);
    if (fd >= 0) close(fd);
    if (ctx) SSL_CTX_free(ctx);
    return result;
#undef TLS_FAIL
}
