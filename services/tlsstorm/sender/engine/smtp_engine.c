/* The sender's SMTP conversations, held in C on a thread of their own (issue 12).
 *
 * Why: in Python every reply costs an event-loop callback, a few method calls and, under TLS,
 * copies through memory BIOs; per message the sender spent more than half the CPU of the
 * receiver it measures. Here one epoll set holds every connection, served by the engine's own
 * thread, so Python's event loop wakes once per finished connection, not once per reply.
 * Python hands connections over (engine_start, from its thread) and takes the reports
 * (engine_take, when the descriptor engine_done_fd gives is readable); a mutex guards only
 * that hand-over. TLS is OpenSSL's, on the socket itself, with the SSL_CTX of the Python
 * SSLContext the sender built (same ClientHello), or rustls's (rustls_client.h) for the
 * profiles that name it: its client costs about half of OpenSSL 3.0's per handshake.
 *
 * A wave's connections are handed over ahead of their due times, a few at a time: the engine
 * connects each when it is due, or skips it when its group (the wave) already has its limit
 * of connections in flight; their reports wait, without waking Python, until the wave next
 * takes them or the group has nothing left. So Python wakes a few dozen times a second, not
 * several times per connection. A bot's list of connections one after another (the sender's
 * /v1/batch) is a group of limit 1 whose connections queue instead of being skipped: each
 * begins, in order, when the group has room (their due times are not used).
 *
 * A connection ends with one JSON line in the reports: its marks on
 * CLOCK_MONOTONIC (Python's perf_counter_ns), the messages accepted with the kernel's byte
 * counts (TCP_INFO), the handshake, the command phases, and the failure that ended it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "rustls_client.h"

#define MAX_REPLY_BYTES (64 * 1024) /* far above any real reply (RFC 5321: 512 per line) */
#define KEPT_REPLY_BYTES 512        /* of a reply's text, what its report keeps */
#define READ_BYTES (16 * 1024)
#define MAX_SESSIONS 64
#define ENGINE_THREAD_NAME "tlsstorm-engine" /* 15 characters: Linux's limit */

enum step { GREETING, EHLO, STARTTLS, HANDSHAKE, EHLO_TLS, MAIL, RCPT, DATA, BODY, QUIT };
static const char *const PHASE_NAMES[] = {"smtp.connect", "smtp.ehlo", "smtp.starttls",
                                          "smtp.starttls", "smtp.ehlo", "smtp.mail",
                                          "smtp.rcpt", "smtp.data", "smtp.data", "smtp.quit"};
static const int EXPECTED[] = {220, 250, 220, 0, 250, 250, 250, 354, 250, 221};

/* What Python asks for: one connection (ctypes mirrors this struct in sender/engine.py). */
typedef struct {
    const char *address;     /* numeric IPv4 or IPv6 */
    int port;
    void *ssl_ctx;           /* the SSL_CTX to STARTTLS with (OpenSSL) */
    void *rustls_config;     /* or the rc_config (rustls); neither: plain */
    const char *server_name; /* SNI and the name checked; NULL: none */
    int check_hostname;
    int resume;              /* offer the last session kept for this context and name */
    const char *ehlo, *mail_from, *rcpt_to;
    int messages;
    /* Each message is its header piece then its text piece, both dot-stuffed (the engine ends
     * it with ".\r\n"); messages of one size share their text, so a connection of large
     * messages holds its text about once, not once per message. */
    const char *pieces; /* every piece, one after another */
    const int *piece_lengths;
    int piece_count;
    const int *head_of, *text_of; /* per message: the index of its header and of its text */
    int timeout_ms;
    int quick_ack, trace_phases;
    long long due_ns; /* CLOCK_MONOTONIC; 0: at once */
    long group;       /* the wave, which has at most group_limit connections in flight; 0: none */
    int group_limit;
    int queue;        /* begins when its group has room, after those queued before it */
    int quiet;        /* its report wakes Python only when its group has nothing left */
} job_t;

typedef struct {
    char *data;
    size_t len, cap;
} buf_t;

typedef struct {
    SSL_CTX *ctx;
    char *name;
    SSL_SESSION *session;
} kept_session_t;

typedef struct conn conn_t;

typedef struct group {
    long id;
    int limit, in_flight, waiting; /* waiting: handed over, not yet begun */
    conn_t *queued, *queued_tail;  /* a queue's connections, in order (not in `pending`) */
    struct group *next;
} group_t;

typedef struct {
    /* The engine's thread alone: */
    int epoll_fd, timer_fd;
    int64_t timer_armed_ns; /* 0: not armed */
    conn_t *live;           /* a doubly linked list of the connections in flight */
    conn_t *pending;        /* handed over, not yet due: a list by due time */
    conn_t *pending_tail;
    group_t *groups;
    int wake_python;        /* a report in this pass is awaited at once */
    conn_t *ended;          /* finished in this pass, freed at its end (events may name them) */
    buf_t finished;         /* JSON lines of the connections that ended in this pass */
    kept_session_t sessions[MAX_SESSIONS];
    /* Python's thread alone: */
    long next_id;
    /* Both, under the lock (the descriptors are only written and read): */
    pthread_t thread;
    pthread_mutex_t lock;
    int wake_fd; /* Python -> engine: connections are waiting, or stop */
    int done_fd; /* engine -> Python: reports are waiting */
    conn_t *incoming;
    buf_t cancels; /* groups whose connections not yet due are dropped (longs) */
    buf_t reports;
    int stopping;
} engine_t;

static char TIMER_TAG, WAKE_TAG; /* epoll data of the engine's own descriptors */

struct conn {
    engine_t *engine;
    conn_t *prev, *next;
    long id;
    int fd;
    struct sockaddr_storage address;
    socklen_t address_len;
    char *address_text;
    int port;
    int64_t due_ns;
    long group_id;
    int group_limit, queue, quiet;
    group_t *group;
    enum step step;
    int connected, finished;
    SSL_CTX *ctx;
    SSL *ssl;
    rc_config *rconfig;
    rc_conn *rtls;
    char *server_name, *ehlo, *mail_from, *rcpt_to, *pieces;
    size_t *piece_offsets;
    int *piece_lengths, *head_of, *text_of;
    buf_t message; /* the message being sent, put together from its pieces */
    int messages, accepted, timeout_ms, quick_ack, trace_phases, check_hostname, resume;
    int tls_refused;
    int writing; /* EPOLLOUT asked for: something waits for room in the socket */
    buf_t rx; /* reply lines not yet complete */
    size_t rx_line;     /* of rx, where the first line not yet read whole starts */
    size_t rx_searched; /* of rx, from where a line end is still to be looked for */
    buf_t tx; /* what the socket did not take yet */
    size_t tx_off;
    int64_t deadline_ns, phase_started_ns, start_ns, greeted_ns, handshake_started_ns,
        handshake_ended_ns;
    int64_t start_wall_ns;
    buf_t accepted_json, phases_json;
};

static int64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int buf_reserve(buf_t *b, size_t more) {
    if (b->len + more + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *grown = realloc(b->data, cap);
    if (!grown)
        return -1;
    b->data = grown;
    b->cap = cap;
    return 0;
}

static void buf_add(buf_t *b, const char *data, size_t len) {
    if (buf_reserve(b, len) == 0) {
        memcpy(b->data + b->len, data, len);
        b->len += len;
        b->data[b->len] = 0;
    }
}

static void buf_printf(buf_t *b, const char *format, ...) {
    va_list args;
    va_start(args, format);
    int needed = vsnprintf(NULL, 0, format, args);
    va_end(args);
    if (needed < 0 || buf_reserve(b, (size_t)needed) != 0)
        return;
    va_start(args, format);
    vsnprintf(b->data + b->len, (size_t)needed + 1, format, args);
    va_end(args);
    b->len += (size_t)needed;
}

/* A JSON string of raw bytes; bytes above 0x7f as \u00XX (Python decodes them back). */
static void buf_json_string(buf_t *b, const char *data, size_t len) {
    static const char hex[] = "0123456789abcdef";
    buf_add(b, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)data[i];
        if (c == '"' || c == '\\') {
            char escaped[2] = {'\\', (char)c};
            buf_add(b, escaped, 2);
        } else if (c < 0x20 || c > 0x7e) {
            char escaped[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            buf_add(b, escaped, 6);
        } else {
            buf_add(b, (const char *)&c, 1);
        }
    }
    buf_add(b, "\"", 1);
}

/* Payload bytes so far (received, sent), as tlsstorm.common.wire.wire_bytes counts them. */
static void wire_bytes(int fd, uint64_t *received, uint64_t *sent) {
    unsigned char info[256];
    socklen_t len = sizeof info;
    *received = *sent = 0;
    memset(info, 0, sizeof info);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, &len) != 0 || len < 136)
        return;
    memcpy(received, info + 128, 8);
    unsigned char state = info[0];
    if (state == 6 || state == 8 || state == 9 || state == 11)
        *received -= 1; /* the peer's FIN takes a sequence number, not a payload byte */
    if (len >= 216) {
        uint64_t bytes_sent, retransmitted;
        uint32_t not_sent;
        memcpy(&bytes_sent, info + 200, 8);
        memcpy(&retransmitted, info + 208, 8);
        memcpy(&not_sent, info + 144, 4);
        *sent = bytes_sent - retransmitted + not_sent;
    } else {
        memcpy(sent, info + 120, 8);
    }
}

/* The NSS key log (SSLKEYLOGFILE) of OpenSSL's connections, one per process as OpenSSL's
 * callback has no context; rustls keeps its own (KeyLogFile), appending to the same file. */
static FILE *key_log;
static pthread_mutex_t key_log_lock = PTHREAD_MUTEX_INITIALIZER;

static void write_key_line(const SSL *ssl, const char *line) {
    (void)ssl;
    pthread_mutex_lock(&key_log_lock);
    if (key_log) {
        fprintf(key_log, "%s\n", line);
        fflush(key_log);
    }
    pthread_mutex_unlock(&key_log_lock);
}

/* ---------------------------------------------------------------------------------------- */

static void conn_free(conn_t *c) {
    if (c->ssl)
        SSL_free(c->ssl);
    SSL_CTX_free(c->ctx);
    rc_conn_free(c->rtls);
    rc_config_free(c->rconfig);
    if (c->fd >= 0)
        close(c->fd); /* also leaves the epoll set */
    free(c->address_text);
    free(c->server_name);
    free(c->ehlo);
    free(c->mail_from);
    free(c->rcpt_to);
    free(c->pieces);
    free(c->piece_offsets);
    free(c->piece_lengths);
    free(c->head_of);
    free(c->text_of);
    free(c->message.data);
    free(c->tx.data);
    free(c->rx.data);
    free(c->accepted_json.data);
    free(c->phases_json.data);
    free(c);
}

static kept_session_t *kept_session(engine_t *e, SSL_CTX *ctx, const char *name, int create) {
    const char *key = name ? name : "";
    for (int i = 0; i < MAX_SESSIONS; i++)
        if (e->sessions[i].ctx == ctx && strcmp(e->sessions[i].name, key) == 0)
            return &e->sessions[i];
    if (!create)
        return NULL;
    for (int i = 0; i < MAX_SESSIONS; i++)
        if (e->sessions[i].ctx == NULL) {
            SSL_CTX_up_ref(ctx); /* the key stays this context while its session is kept */
            e->sessions[i].ctx = ctx;
            e->sessions[i].name = strdup(key);
            return &e->sessions[i];
        }
    return NULL;
}

/* The group of that id, made on first use; NULL when out of memory (then no limit holds). */
static group_t *group_of(engine_t *e, long id, int limit) {
    for (group_t *g = e->groups; g; g = g->next)
        if (g->id == id)
            return g;
    group_t *g = calloc(1, sizeof *g);
    if (g) {
        g->id = id;
        g->limit = limit;
        g->next = e->groups;
        e->groups = g;
    }
    return g;
}

/* Forgotten once none of its connections is in flight or waiting; Python then takes the
 * reports it kept. */
static void release_group(engine_t *e, group_t *g) {
    if (g->in_flight || g->waiting)
        return;
    e->wake_python = 1;
    for (group_t **link = &e->groups; *link; link = &(*link)->next)
        if (*link == g) {
            *link = g->next;
            free(g);
            return;
        }
}

static void mark_wire(buf_t *out, int fd, int64_t at_ns) {
    uint64_t received, sent;
    wire_bytes(fd, &received, &sent);
    buf_printf(out, "{\"ns\":%lld,\"received\":%llu,\"sent\":%llu}", (long long)at_ns,
               (unsigned long long)received, (unsigned long long)sent);
}

/* Over: one JSON line for Python, the socket closed (politely after a complete conversation:
 * close_notify under TLS), the session kept when resuming. `failure` is NULL on success;
 * `code` is an SMTP reply code (with `reply`) or 0. */
static void finish(conn_t *c, const char *kind, const char *failure, int code,
                   const char *reply, size_t reply_len) {
    if (c->finished)
        return;
    c->finished = 1;
    engine_t *e = c->engine;
    if (!c->quiet)
        e->wake_python = 1;
    if (c->group) {
        c->group->in_flight--;
        release_group(e, c->group);
        c->group = NULL;
    }
    buf_t *out = &e->finished;
    int64_t ended = now_ns(CLOCK_MONOTONIC);
    buf_printf(out, "{\"id\":%ld,\"start_ns\":%lld,\"start_wall_ns\":%lld,\"greeted_ns\":%lld,",
               c->id, (long long)c->start_ns, (long long)c->start_wall_ns,
               (long long)c->greeted_ns);
    buf_add(out, "\"final\":", 8);
    if (c->connected)
        mark_wire(out, c->fd, ended);
    else
        buf_printf(out, "{\"ns\":%lld,\"received\":0,\"sent\":0}", (long long)ended);
    buf_printf(out, ",\"tls_refused\":%s,\"tls\":", c->tls_refused ? "true" : "false");
    if (c->ssl && c->handshake_ended_ns) {
        const SSL_CIPHER *cipher = SSL_get_current_cipher(c->ssl);
        buf_printf(out,
                   "{\"version\":\"%s\",\"cipher\":\"%s\",\"resumed\":%s,\"started_ns\":%lld,"
                   "\"ended_ns\":%lld}",
                   SSL_get_version(c->ssl), cipher ? SSL_CIPHER_get_name(cipher) : "",
                   SSL_session_reused(c->ssl) ? "true" : "false",
                   (long long)c->handshake_started_ns, (long long)c->handshake_ended_ns);
    } else if (c->rtls && c->handshake_ended_ns) {
        char version[16], cipher[64];
        int resumed;
        rc_info(c->rtls, version, sizeof version, cipher, sizeof cipher, &resumed);
        buf_printf(out,
                   "{\"version\":\"%s\",\"cipher\":\"%s\",\"resumed\":%s,\"started_ns\":%lld,"
                   "\"ended_ns\":%lld}",
                   version, cipher, resumed ? "true" : "false", (long long)c->handshake_started_ns,
                   (long long)c->handshake_ended_ns);
    } else {
        buf_add(out, "null", 4);
    }
    buf_add(out, ",\"accepted\":[", 13);
    if (c->accepted_json.len)
        buf_add(out, c->accepted_json.data, c->accepted_json.len);
    buf_add(out, "],\"phases\":[", 12);
    if (c->phases_json.len)
        buf_add(out, c->phases_json.data, c->phases_json.len);
    buf_add(out, "],\"failure\":", 12);
    if (failure) {
        buf_printf(out, "{\"code\":%d,\"reply\":", code);
        if (reply)
            buf_json_string(out, reply, reply_len);
        else
            buf_add(out, "null", 4);
        buf_add(out, ",\"text\":", 8);
        buf_t text = {0};
        buf_printf(&text, "%s: %s", kind, failure);
        buf_json_string(out, text.data, text.len);
        free(text.data);
        buf_add(out, "}", 1);
    } else {
        buf_add(out, "null", 4);
    }
    buf_add(out, "}\n", 2);

    if (c->ssl && c->accepted == c->messages && c->resume) {
        kept_session_t *kept = kept_session(e, c->ctx, c->server_name, 1);
        SSL_SESSION *session = SSL_get1_session(c->ssl);
        if (kept && session) {
            if (kept->session)
                SSL_SESSION_free(kept->session);
            kept->session = session;
        } else if (session) {
            SSL_SESSION_free(session);
        }
    }
    if (c->ssl && !failure && c->handshake_ended_ns)
        SSL_shutdown(c->ssl); /* our close_notify; the peer's is not waited for */
    if (c->rtls && !failure && c->handshake_ended_ns)
        rc_close(c->rtls);
    if (c->prev)
        c->prev->next = c->next;
    else
        e->live = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = NULL;
    c->next = e->ended;
    e->ended = c;
}

static const char *errno_kind(int error) {
    switch (error) {
    case ECONNREFUSED: return "ConnectionRefusedError";
    case ECONNRESET: return "ConnectionResetError";
    case ECONNABORTED: return "ConnectionAbortedError";
    case EPIPE: return "BrokenPipeError";
    case ETIMEDOUT: return "TimeoutError";
    default: return "OSError";
    }
}

static void fail_errno(conn_t *c, int error) {
    char text[160];
    snprintf(text, sizeof text, "[Errno %d] %s", error, strerror(error));
    finish(c, errno_kind(error), text, 0, NULL, 0);
}

/* Python's ssl names an error "[SSL: REASON] reason"; the reason's mnemonic is its text in
 * capitals with underscores, as OpenSSL's own tables have it. */
static void fail_ssl(conn_t *c, int ssl_error) {
    unsigned long error = ERR_get_error();
    ERR_clear_error();
    if (!error) {
        if (ssl_error == SSL_ERROR_SYSCALL && errno) {
            fail_errno(c, errno);
            return;
        }
        finish(c, "ConnectionResetError", "the server closed the connection", 0, NULL, 0);
        return;
    }
    const char *reason = ERR_reason_error_string(error);
    char mnemonic[128], text[512];
    snprintf(mnemonic, sizeof mnemonic, "%s", reason ? reason : "unknown error");
    for (char *p = mnemonic; *p; p++)
        *p = *p == ' ' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
    long verified = SSL_get_verify_result(c->ssl);
    if (verified != X509_V_OK && strcmp(mnemonic, "CERTIFICATE_VERIFY_FAILED") == 0) {
        snprintf(text, sizeof text, "[SSL: %s] %s: %s", mnemonic, reason,
                 X509_verify_cert_error_string(verified));
        finish(c, "SSLCertVerificationError", text, 0, NULL, 0);
        return;
    }
    snprintf(text, sizeof text, "[SSL: %s] %s", mnemonic, reason ? reason : "unknown error");
    finish(c, "SSLError", text, 0, NULL, 0);
}

/* A rustls session's end, in the words fail_ssl uses for OpenSSL's. */
static void fail_rustls(conn_t *c, int status) {
    char text[512];
    switch (status) {
    case RC_OS_ERROR:
        fail_errno(c, errno);
        return;
    case RC_CLOSED:
        finish(c, "ConnectionResetError", "the server ended TLS (close_notify)", 0, NULL, 0);
        return;
    case RC_TLS_ERROR:
        if (rc_error(c->rtls, text, sizeof text))
            finish(c, "SSLCertVerificationError", text, 0, NULL, 0);
        else
            finish(c, "SSLError", text, 0, NULL, 0);
        return;
    default:
        finish(c, "ConnectionResetError", "the server closed the connection", 0, NULL, 0);
    }
}

static void acknowledge_at_once(conn_t *c) {
    /* TCP_QUICKACK after each command (see SenderSettings.quick_ack). */
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
}

static void want_write(conn_t *c, int on) {
    if (c->writing == on)
        return;
    c->writing = on;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(c->engine->epoll_fd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* OpenSSL must wait for the socket: for data (the next readable event comes anyway) or for
 * room (asked for). */
static int ssl_waits(conn_t *c, int error) {
    if (error == SSL_ERROR_WANT_WRITE)
        want_write(c, 1);
    return error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE;
}

static void flush_plain(conn_t *c) {
    while (c->tx_off < c->tx.len) {
        ssize_t n = send(c->fd, c->tx.data + c->tx_off, c->tx.len - c->tx_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) {
                want_write(c, 1);
                return;
            }
            if (errno == EINTR)
                continue;
            fail_errno(c, errno);
            return;
        }
        c->tx_off += (size_t)n;
    }
    if (c->tx.len) {
        c->tx.len = c->tx_off = 0;
        want_write(c, 0);
    }
}

static void write_data(conn_t *c, const char *data, size_t len) {
    if (c->rtls) {
        int status = rc_write(c->rtls, data, len); /* rustls keeps what the socket leaves */
        if (status == RC_WANT_WRITE)
            want_write(c, 1);
        else if (status != RC_DONE) {
            fail_rustls(c, status);
            return;
        }
    } else if (c->ssl) {
        /* Partial writes are off (OpenSSL's default): a record is all taken or retried
         * whole. Commands and bodies fit the socket's buffer on every path we drive. */
        int n = SSL_write(c->ssl, data, (int)len);
        if (n <= 0) {
            int error = SSL_get_error(c->ssl, n);
            if (error == SSL_ERROR_WANT_WRITE || error == SSL_ERROR_WANT_READ) {
                buf_add(&c->tx, data, len); /* retried from flush_tls */
                want_write(c, 1);
                return;
            }
            fail_ssl(c, error);
            return;
        }
    } else if (c->tx.len) {
        buf_add(&c->tx, data, len);
    } else {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN) {
            fail_errno(c, errno);
            return;
        }
        if (n < (ssize_t)len) {
            buf_add(&c->tx, data + (n > 0 ? n : 0), len - (size_t)(n > 0 ? n : 0));
            want_write(c, 1);
        }
    }
    if (c->quick_ack && !c->finished)
        acknowledge_at_once(c);
}

static void flush_tls(conn_t *c) {
    if (c->rtls) {
        int status = rc_flush(c->rtls);
        if (status == RC_DONE)
            want_write(c, 0);
        else if (status != RC_WANT_WRITE)
            fail_rustls(c, status);
        return;
    }
    if (!c->tx.len) {
        want_write(c, 0);
        return;
    }
    int n = SSL_write(c->ssl, c->tx.data, (int)c->tx.len);
    if (n > 0) {
        c->tx.len = 0;
        want_write(c, 0);
        return;
    }
    int error = SSL_get_error(c->ssl, n);
    if (!ssl_waits(c, error))
        fail_ssl(c, error);
}

static void send_command(conn_t *c, enum step step, const char *command) {
    char line[1024]; /* commands are short: names and addresses are checked in Python */
    int len = snprintf(line, sizeof line, "%s\r\n", command);
    c->step = step;
    c->deadline_ns = now_ns(CLOCK_MONOTONIC) + (int64_t)c->timeout_ms * 1000000;
    write_data(c, line, len < (int)sizeof line ? (size_t)len : sizeof line - 1);
}

static void send_ehlo(conn_t *c, enum step step) {
    char command[300];
    snprintf(command, sizeof command, "EHLO %s", c->ehlo);
    send_command(c, step, command);
}

static void phase(conn_t *c, const char *name) {
    int64_t now = now_ns(CLOCK_MONOTONIC);
    int message = c->accepted < c->messages ? c->accepted : c->messages - 1;
    buf_printf(&c->phases_json, "%s[\"%s\",%d,%lld,%lld]", c->phases_json.len ? "," : "", name,
               message, (long long)c->phase_started_ns, (long long)now);
    c->phase_started_ns = now;
}

static void next_message(conn_t *c) {
    char command[600];
    if (c->accepted < c->messages) {
        snprintf(command, sizeof command, "MAIL FROM:<%s>", c->mail_from);
        send_command(c, MAIL, command);
    } else {
        send_command(c, QUIT, "QUIT");
    }
}

static void advance_handshake(conn_t *c);

/* rustls names the server (SNI as its configuration says) and checks that name; an address
 * stands in when none is given (rustls sends no SNI for one). */
static int start_rustls(conn_t *c) {
    char error[256];
    c->rtls = rc_conn_new(c->rconfig, c->server_name ? c->server_name : c->address_text, c->fd,
                          error, sizeof error);
    if (!c->rtls) {
        char text[300];
        snprintf(text, sizeof text, "[SSL] %s", error);
        finish(c, "SSLError", text, 0, NULL, 0);
        return -1;
    }
    return 0;
}

/* OpenSSL on the socket: SNI and the name checked as Python's ssl sets them, the kept session
 * offered when resuming. */
static int start_openssl(conn_t *c) {
    c->ssl = SSL_new(c->ctx);
    if (!c->ssl) { /* out of memory, or a context OpenSSL will not use: no session to go on */
        const char *reason = ERR_reason_error_string(ERR_get_error());
        char text[300];
        ERR_clear_error();
        snprintf(text, sizeof text, "[SSL] SSL_new failed: %s", reason ? reason : "no reason");
        finish(c, "SSLError", text, 0, NULL, 0);
        return -1;
    }
    /* No Python callback may run on this SSL: Python's would look for its socket object,
     * which it has not. The keys go to the engine's own key log (engine_key_log). */
    SSL_set_msg_callback(c->ssl, NULL);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_connect_state(c->ssl);
    SSL_set_read_ahead(c->ssl, 1); /* one recv per readable socket, not one per record part */
    SSL_set_mode(c->ssl, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_AUTO_RETRY);
    if (c->server_name) {
        ASN1_OCTET_STRING *ip = a2i_IPADDRESS(c->server_name);
        if (!ip) /* RFC 6066: no SNI for an address, as Python's ssl does */
            SSL_set_tlsext_host_name(c->ssl, c->server_name);
        if (c->check_hostname) {
            X509_VERIFY_PARAM *param = SSL_get0_param(c->ssl);
            X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            if (ip)
                X509_VERIFY_PARAM_set1_ip(param, ip->data, (size_t)ip->length);
            else
                X509_VERIFY_PARAM_set1_host(param, c->server_name, 0);
        }
        ASN1_OCTET_STRING_free(ip);
    }
    if (c->resume) {
        kept_session_t *kept = kept_session(c->engine, c->ctx, c->server_name, 0);
        if (kept && kept->session)
            SSL_set_session(c->ssl, kept->session);
    }
    return 0;
}

static void start_handshake(conn_t *c) {
    if ((c->rconfig ? start_rustls(c) : start_openssl(c)) != 0)
        return;
    c->step = HANDSHAKE;
    c->deadline_ns = now_ns(CLOCK_MONOTONIC) + (int64_t)c->timeout_ms * 1000000;
    c->handshake_started_ns = now_ns(CLOCK_MONOTONIC);
    advance_handshake(c);
}

static void advance_handshake(conn_t *c) {
    if (c->rtls) {
        int status = rc_handshake(c->rtls);
        if (status == RC_WANT_WRITE)
            want_write(c, 1);
        if (status == RC_WANT_READ || status == RC_WANT_WRITE)
            return;
        if (status != RC_DONE) {
            fail_rustls(c, status);
            return;
        }
    } else {
        ERR_clear_error();
        errno = 0;
        int done = SSL_connect(c->ssl);
        if (done != 1) {
            int error = SSL_get_error(c->ssl, done);
            if (!ssl_waits(c, error))
                fail_ssl(c, error);
            return;
        }
    }
    c->handshake_ended_ns = now_ns(CLOCK_MONOTONIC);
    want_write(c, 0); /* if the handshake had to wait for room */
    if (c->trace_phases)
        phase(c, "smtp.starttls"); /* the handshake belongs to the STARTTLS phase */
    send_ehlo(c, EHLO_TLS);
}

static int contains_starttls(const char *text, size_t len) {
    for (size_t i = 0; i + 8 <= len; i++)
        if (strncasecmp(text + i, "STARTTLS", 8) == 0)
            return 1;
    return 0;
}

/* The reply's text as Python's client gives it: each line past its code, joined by \n; at most
 * KEPT_REPLY_BYTES of it, then how much was left out. A report lives until its connection
 * ends, and a server answering each of a connection's messages with 64 KiB would otherwise
 * make the sender hold (and JSON-escape, six bytes to one) megabytes per connection. */
static void reply_message(const char *text, size_t len, buf_t *out) {
    size_t start = 0;
    while (start <= len) {
        const char *end = memmem(text + start, len - start, "\r\n", 2);
        size_t stop = end ? (size_t)(end - text) : len;
        if (start)
            buf_add(out, "\n", 1);
        if (stop > start + 4)
            buf_add(out, text + start + 4, stop - start - 4);
        if (!end)
            break;
        start = stop + 2;
    }
    if (out->len > KEPT_REPLY_BYTES) {
        size_t left_out = out->len - KEPT_REPLY_BYTES;
        out->len = KEPT_REPLY_BYTES;
        buf_printf(out, " [%zu bytes more, not kept]", left_out);
    }
}

static void fail_reply(conn_t *c, int code, const char *text, size_t len) {
    if (c->step == QUIT) { /* every message is in: QUIT's answer does not matter */
        finish(c, NULL, NULL, 0, NULL, 0);
        return;
    }
    buf_t message = {0};
    reply_message(text, len, &message);
    char kind[16];
    snprintf(kind, sizeof kind, "smtp_%d", code);
    finish(c, kind, message.data ? message.data : "", code, message.data ? message.data : "",
           message.len);
    free(message.data);
}

/* Message `index` as DATA sends it: its header, its text, the ending dot; one write, so one
 * record under TLS, as a client that had the whole message would make. */
static void put_message_together(conn_t *c, int index) {
    buf_t *message = &c->message;
    int head = c->head_of[index], text = c->text_of[index];
    message->len = 0;
    buf_add(message, c->pieces + c->piece_offsets[head], (size_t)c->piece_lengths[head]);
    buf_add(message, c->pieces + c->piece_offsets[text], (size_t)c->piece_lengths[text]);
    buf_add(message, ".\r\n", 3);
}

static void replied(conn_t *c, int code, const char *text, size_t len) {
    enum step step = c->step;
    if (c->writing) {
        /* A reply while what it answers has not all left (a server that stops reading a
         * message and answers it): it cannot be that answer, and taking it would count the
         * message accepted unsent and write the next command behind a write still pending. */
        char why[160];
        snprintf(why, sizeof why, "the server replied %d before %s had been sent whole", code,
                 step == BODY ? "the message" : "the command");
        finish(c, "EarlyReply", why, code, NULL, 0);
        return;
    }
    if (c->trace_phases && !(step == STARTTLS && code == 220))
        phase(c, PHASE_NAMES[step]);
    if (code != EXPECTED[step]) {
        if (step == STARTTLS && code == 454) { /* as opportunistic bots do: carry on plain */
            c->tls_refused = 1;
            next_message(c);
            return;
        }
        fail_reply(c, code, text, len);
        return;
    }
    char command[600];
    switch (step) {
    case GREETING:
        c->greeted_ns = now_ns(CLOCK_MONOTONIC);
        send_ehlo(c, EHLO);
        break;
    case EHLO:
        if (!c->ctx && !c->rconfig)
            next_message(c);
        else if (contains_starttls(text, len))
            send_command(c, STARTTLS, "STARTTLS");
        else
            finish(c, "StartTlsNotOffered", "the server's EHLO does not offer STARTTLS", 0,
                   NULL, 0);
        break;
    case STARTTLS:
        start_handshake(c);
        break;
    case EHLO_TLS:
        next_message(c);
        break;
    case MAIL:
        snprintf(command, sizeof command, "RCPT TO:<%s>", c->rcpt_to);
        send_command(c, RCPT, command);
        break;
    case RCPT:
        send_command(c, DATA, "DATA");
        break;
    case DATA:
        c->step = BODY;
        c->deadline_ns = now_ns(CLOCK_MONOTONIC) + (int64_t)c->timeout_ms * 1000000;
        put_message_together(c, c->accepted);
        write_data(c, c->message.data, c->message.len);
        break;
    case BODY: {
        buf_t message = {0};
        reply_message(text, len, &message);
        buf_t *out = &c->accepted_json;
        buf_printf(out, "%s{\"code\":%d,\"reply\":", out->len ? "," : "", code);
        buf_json_string(out, message.data ? message.data : "", message.len);
        free(message.data);
        if (c->accepted < c->messages - 1) { /* the last one ends at the connection's end */
            buf_add(out, ",\"at\":", 6);
            mark_wire(out, c->fd, now_ns(CLOCK_MONOTONIC));
        }
        buf_add(out, "}", 1);
        c->accepted++;
        next_message(c);
        break;
    }
    case QUIT:
        finish(c, NULL, NULL, 0, NULL, 0);
        break;
    default:
        break;
    }
}

/* Reply lines collected; a reply ends at a line whose fourth byte is not '-'. Each byte is
 * looked at once (continuation lines already read, and the searched part of a line not yet
 * ended, are not scanned again), so a reply sent a byte at a time costs what it costs whole. */
static void take(conn_t *c, const char *data, size_t len) {
    buf_t *rx = &c->rx;
    buf_add(rx, data, len);
    size_t start = c->rx_line, from = c->rx_searched;
    while (!c->finished) {
        char *end = memmem(rx->data + from, rx->len - from, "\r\n", 2);
        if (!end)
            break;
        const char *line = rx->data + start;
        size_t stop = (size_t)(end - rx->data), line_len = stop - start;
        start = from = stop + 2;
        if (line_len > 3 && line[3] == '-')
            continue;
        int code = 0;
        if (line_len >= 3 && line[0] >= '0' && line[0] <= '9' && line[1] >= '0' &&
            line[1] <= '9' && line[2] >= '0' && line[2] <= '9')
            code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + line[2] - '0';
        if (c->step == STARTTLS && code == 220 && rx->len > start) {
            /* RFC 3207: what came before TLS is discarded; bytes already behind the 220 would be
             * read as the first reply inside TLS (the client's side of CVE-2011-0411). */
            char text[160];
            snprintf(text, sizeof text, "the server sent %zu bytes in plain text after "
                     "STARTTLS's 220, before TLS: refused as an injection", rx->len - start);
            finish(c, "StartTlsInjection", text, 0, NULL, 0);
            return;
        }
        /* The whole reply, all its lines, from the buffer's start; what follows it stays. */
        replied(c, code, rx->data, stop);
        memmove(rx->data, rx->data + start, rx->len - start);
        rx->len -= start;
        start = from = 0;
    }
    c->rx_line = start;
    c->rx_searched = rx->len > start ? rx->len - 1 : start; /* a '\r' may meet its '\n' next */
    if (rx->len > MAX_REPLY_BYTES && !c->finished)
        finish(c, "ConnectionAbortedError", "the server's reply ran past 64 KiB without ending",
               0, NULL, 0);
}

static void on_readable(conn_t *c) {
    char data[READ_BYTES];
    if (!c->ssl && !c->rtls) {
        ssize_t n = recv(c->fd, data, sizeof data, 0);
        if (n > 0)
            take(c, data, (size_t)n);
        else if (n == 0)
            finish(c, "ConnectionResetError", "the server closed the connection", 0, NULL, 0);
        else if (errno != EAGAIN && errno != EINTR)
            fail_errno(c, errno);
        return;
    }
    if (c->step == HANDSHAKE) {
        advance_handshake(c);
        if (c->finished || c->step == HANDSHAKE)
            return;
    }
    while (c->rtls && !c->finished) {
        int status;
        long n = rc_read(c->rtls, data, sizeof data, &status);
        if (n > 0) {
            take(c, data, (size_t)n);
            if (!rc_has_pending(c->rtls))
                break; /* all decrypted: another read would only find the socket empty */
            continue;
        }
        if (status != RC_WANT_READ)
            fail_rustls(c, status);
        break;
    }
    while (c->ssl && !c->finished) {
        ERR_clear_error();
        errno = 0;
        int n = SSL_read(c->ssl, data, sizeof data);
        if (n > 0) {
            take(c, data, (size_t)n);
            if (!SSL_has_pending(c->ssl))
                break; /* all decrypted: another read would only find the socket empty */
            continue;
        }
        int error = SSL_get_error(c->ssl, n);
        if (ssl_waits(c, error))
            break;
        if (error == SSL_ERROR_ZERO_RETURN) {
            finish(c, "ConnectionResetError", "the server ended TLS (close_notify)", 0, NULL, 0);
            break;
        }
        fail_ssl(c, error);
        break;
    }
}

static void on_connected(conn_t *c) {
    int error = 0;
    socklen_t len = sizeof error;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &len);
    if (error) {
        fail_errno(c, error);
        return;
    }
    c->connected = 1;
    want_write(c, 0);
}

static void on_event(conn_t *c, uint32_t events) {
    if (!c->connected) {
        on_connected(c);
        if (c->finished)
            return;
    }
    if (events & EPOLLOUT) {
        int tls = c->ssl || c->rtls;
        if (tls && c->step == HANDSHAKE)
            advance_handshake(c);
        else if (tls)
            flush_tls(c);
        else
            flush_plain(c);
    }
    if (!c->finished && (events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        on_readable(c);
}

/* ---------------------------------------------------------------------------------------- */

/* At the next deadline of a connection in flight, or due time of one waiting. */
static void arm_timer(engine_t *e) {
    int64_t earliest = e->pending ? e->pending->due_ns : 0;
    for (conn_t *c = e->live; c; c = c->next)
        if (!earliest || c->deadline_ns < earliest)
            earliest = c->deadline_ns;
    if (earliest == e->timer_armed_ns)
        return;
    struct itimerspec when = {0};
    if (earliest) {
        when.it_value.tv_sec = earliest / 1000000000;
        when.it_value.tv_nsec = earliest % 1000000000;
    }
    timerfd_settime(e->timer_fd, TFD_TIMER_ABSTIME, &when, NULL);
    e->timer_armed_ns = earliest;
}

static void expire(engine_t *e) {
    uint64_t expirations;
    if (read(e->timer_fd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
        return;
    e->timer_armed_ns = 0;
    int64_t now = now_ns(CLOCK_MONOTONIC);
    conn_t *c = e->live;
    while (c) {
        conn_t *next = c->next;
        if (c->deadline_ns <= now) {
            char text[64];
            if (c->connected)
                snprintf(text, sizeof text, "no reply within %g s", c->timeout_ms / 1000.0);
            else
                text[0] = 0; /* as asyncio.timeout says it of a connect that never came */
            finish(c, "TimeoutError", text, 0, NULL, 0);
        }
        c = next;
    }
}

static void signal_fd(int fd) {
    uint64_t one = 1;
    while (write(fd, &one, sizeof one) < 0 && errno == EINTR) {
    }
}

static void drain_fd(int fd) {
    uint64_t count;
    while (read(fd, &count, sizeof count) < 0 && errno == EINTR) {
    }
}

/* Connections Python handed over: a queue's to the end of its group's queue; the others into
 * the list of those waiting, by due time, after those due no later (a wave hands them over in
 * that order: they go at the end). */
static void take_incoming(engine_t *e, conn_t *incoming) {
    conn_t *reversed = NULL; /* Python pushed them newest first */
    while (incoming) {
        conn_t *c = incoming;
        incoming = c->next;
        c->next = reversed;
        reversed = c;
    }
    while (reversed) {
        conn_t *c = reversed;
        reversed = c->next;
        c->next = NULL;
        if (c->group_id && (c->group = group_of(e, c->group_id, c->group_limit)))
            c->group->waiting++;
        if (c->queue && c->group) {
            if (c->group->queued_tail)
                c->group->queued_tail->next = c;
            else
                c->group->queued = c;
            c->group->queued_tail = c;
        } else if (!e->pending_tail || e->pending_tail->due_ns <= c->due_ns) {
            if (e->pending_tail)
                e->pending_tail->next = c;
            else
                e->pending = c;
            e->pending_tail = c;
        } else {
            conn_t **link = &e->pending;
            while ((*link)->due_ns <= c->due_ns)
                link = &(*link)->next;
            c->next = *link;
            *link = c;
        }
    }
}

/* A due connection's clocks started, in the list of those in flight and its group's count. */
static void go_live(engine_t *e, conn_t *c) {
    c->start_ns = now_ns(CLOCK_MONOTONIC);
    c->start_wall_ns = now_ns(CLOCK_REALTIME);
    c->phase_started_ns = c->start_ns;
    c->deadline_ns = c->start_ns + (int64_t)c->timeout_ms * 1000000;
    c->prev = NULL;
    c->next = e->live;
    if (e->live)
        e->live->prev = c;
    e->live = c;
    if (c->group)
        c->group->in_flight++;
}

/* Its socket in the epoll set, writable awaited: the connect's completion. */
static void watch_socket(engine_t *e, conn_t *c) {
    c->writing = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(e->epoll_fd, EPOLL_CTL_ADD, c->fd, &ev) != 0)
        fail_errno(c, errno);
}

/* A due connection: live, its socket made and connecting, in the epoll set. A failure here
 * is the connection's report, as Python's OSError would say it. */
static void begin(engine_t *e, conn_t *c) {
    go_live(e, c);
    c->fd = socket(c->address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (c->fd < 0 ||
        (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one),
         connect(c->fd, (struct sockaddr *)&c->address, c->address_len) != 0 &&
             errno != EINPROGRESS)) {
        int error = errno;
        char text[160];
        snprintf(text, sizeof text, "[Errno %d] no connection to %s:%d", error, c->address_text,
                 c->port);
        finish(c, errno_kind(error), text, 0, NULL, 0);
        return;
    }
    watch_socket(e, c);
}

/* A connection that never began ends with a report saying why ("skipped", "cancelled"). */
static void end_unbegun(engine_t *e, conn_t *c, const char *why, int wake) {
    buf_printf(&e->finished, "{\"id\":%ld,\"%s\":true}\n", c->id, why);
    e->wake_python |= wake;
    if (c->group) {
        c->group->waiting--;
        release_group(e, c->group);
    }
    conn_free(c);
}

/* Each connection now due begins, or is skipped when its group has its limit in flight; then
 * each queue with room begins its next. A connection that fails at once ends here too, so a
 * queue is worked down in this loop, never by recursion. */
static void launch_due(engine_t *e) {
    int64_t now = now_ns(CLOCK_MONOTONIC);
    while (e->pending && e->pending->due_ns <= now) {
        conn_t *c = e->pending;
        e->pending = c->next;
        if (!e->pending)
            e->pending_tail = NULL;
        if (c->group && c->group->in_flight >= c->group->limit) {
            end_unbegun(e, c, "skipped", !c->quiet);
            continue;
        }
        if (c->group)
            c->group->waiting--;
        begin(e, c);
    }
    group_t *g = e->groups;
    while (g) {
        if (!g->queued) {
            g = g->next;
            continue;
        }
        g->waiting++; /* held: its connections may end while it begins them */
        while (g->queued && g->in_flight < g->limit) {
            conn_t *c = g->queued;
            g->queued = c->next;
            if (!g->queued)
                g->queued_tail = NULL;
            g->waiting--;
            begin(e, c);
        }
        g->waiting--;
        group_t *next = g->next;
        release_group(e, g);
        g = next;
    }
}

/* The waiting connections of the groups Python stopped: dropped, each with a report. */
static void cancel(engine_t *e, const long *groups, size_t count) {
    for (size_t i = 0; i < count; i++) {
        conn_t **link = &e->pending;
        e->pending_tail = NULL;
        while (*link) {
            conn_t *c = *link;
            if (c->group_id != groups[i]) {
                e->pending_tail = c;
                link = &c->next;
                continue;
            }
            *link = c->next;
            end_unbegun(e, c, "cancelled", 1);
        }
        for (group_t *g = e->groups; g; g = g->next)
            if (g->id == groups[i]) {
                conn_t *queued = g->queued;
                g->queued = g->queued_tail = NULL;
                g->waiting++; /* held while its queue is dropped */
                while (queued) {
                    conn_t *next = queued->next;
                    end_unbegun(e, queued, "cancelled", 1);
                    queued = next;
                }
                g->waiting--;
                release_group(e, g);
                break;
            }
    }
}

static void publish(engine_t *e) {
    while (e->ended) {
        conn_t *c = e->ended;
        e->ended = c->next;
        conn_free(c);
    }
    if (!e->finished.len)
        return;
    pthread_mutex_lock(&e->lock);
    buf_add(&e->reports, e->finished.data, e->finished.len);
    pthread_mutex_unlock(&e->lock);
    e->finished.len = 0;
    if (e->wake_python)
        signal_fd(e->done_fd);
    e->wake_python = 0;
}

static void *engine_loop(void *argument) {
    engine_t *e = argument;
    struct epoll_event events[64];
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are Python's: its main thread takes them */
    for (;;) {
        int ready = epoll_wait(e->epoll_fd, events, 64, -1);
        if (ready < 0 && errno != EINTR)
            break;
        pthread_mutex_lock(&e->lock);
        conn_t *incoming = e->incoming;
        e->incoming = NULL;
        buf_t cancels = e->cancels;
        e->cancels = (buf_t){0};
        int stopping = e->stopping;
        pthread_mutex_unlock(&e->lock);
        if (stopping) {
            e->incoming = incoming; /* freed by engine_free */
            free(cancels.data);
            break;
        }
        take_incoming(e, incoming);
        cancel(e, (const long *)cancels.data, cancels.len / sizeof(long));
        free(cancels.data);
        for (int i = 0; i < ready; i++) {
            void *tag = events[i].data.ptr;
            if (tag == &WAKE_TAG)
                drain_fd(e->wake_fd);
            else if (tag == &TIMER_TAG)
                expire(e);
            else if (!((conn_t *)tag)->finished)
                on_event(tag, events[i].events);
        }
        launch_due(e);
        arm_timer(e);
        publish(e);
    }
    return NULL;
}

static int watch(engine_t *e, int fd, char *tag) {
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = tag};
    return epoll_ctl(e->epoll_fd, EPOLL_CTL_ADD, fd, &ev);
}

engine_t *engine_new(void) {
    engine_t *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    e->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    e->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->done_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pthread_mutex_init(&e->lock, NULL);
    if (e->epoll_fd < 0 || e->timer_fd < 0 || e->wake_fd < 0 || e->done_fd < 0 ||
        watch(e, e->timer_fd, &TIMER_TAG) != 0 || watch(e, e->wake_fd, &WAKE_TAG) != 0 ||
        pthread_create(&e->thread, NULL, engine_loop, e) != 0) {
        int fds[] = {e->epoll_fd, e->timer_fd, e->wake_fd, e->done_fd};
        for (int i = 0; i < 4; i++)
            if (fds[i] >= 0)
                close(fds[i]);
        pthread_mutex_destroy(&e->lock);
        free(e);
        return NULL;
    }
    pthread_setname_np(e->thread, ENGINE_THREAD_NAME); /* benches find its CPU by this name */
    return e;
}

/* Readable when reports are waiting (engine_take clears it). */
int engine_done_fd(engine_t *e) { return e->done_fd; }

static char *copy_of(const char *text) { return text ? strdup(text) : NULL; }

/* job_t's fields by name, then its size and each field's offset: engine.py checks its ctypes
 * mirror against them when it loads the engine, so the two cannot drift apart unnoticed. */
#define JOB_FIELDS(X)                                                                          \
    X(address) X(port) X(ssl_ctx) X(rustls_config) X(server_name) X(check_hostname) X(resume)  \
    X(ehlo) X(mail_from) X(rcpt_to) X(messages) X(pieces) X(piece_lengths) X(piece_count)      \
    X(head_of) X(text_of) X(timeout_ms) X(quick_ack) X(trace_phases) X(due_ns) X(group)        \
    X(group_limit) X(queue) X(quiet)
#define JOB_FIELD_NAME(field) #field " "
#define JOB_FIELD_OFFSET(field) offsetof(job_t, field),
const char engine_job_fields[] = JOB_FIELDS(JOB_FIELD_NAME);
const size_t engine_job_layout[] = {sizeof(job_t), JOB_FIELDS(JOB_FIELD_OFFSET)};

/* What the rest of the engine relies on: every text there, the counts and lengths in range,
 * each message's pieces among those given, names short enough for their commands. */
static int job_is_whole(const job_t *job) {
    if (!job->address || !job->ehlo || !job->mail_from || !job->rcpt_to || !job->pieces ||
        !job->piece_lengths || !job->head_of || !job->text_of)
        return 0;
    if (job->port < 1 || job->port > 65535 || job->messages < 1 || job->piece_count < 1 ||
        job->timeout_ms < 1 || job->group_limit < 0 || strlen(job->ehlo) > 255 ||
        strlen(job->mail_from) > 512 || strlen(job->rcpt_to) > 512 ||
        (job->server_name && strlen(job->server_name) > 255))
        return 0;
    for (int i = 0; i < job->piece_count; i++)
        if (job->piece_lengths[i] < 0)
            return 0;
    for (int i = 0; i < job->messages; i++)
        if (job->head_of[i] < 0 || job->head_of[i] >= job->piece_count || job->text_of[i] < 0 ||
            job->text_of[i] >= job->piece_count)
            return 0;
    return 1;
}

/* A connection handed over: its id (> 0), or -errno (a job not whole or an address that is not
 * numeric: -EINVAL; no memory). Called from Python's thread; the engine's thread connects it
 * when it is due. */
long engine_start(engine_t *e, const job_t *job) {
    if (!job_is_whole(job))
        return -EINVAL;
    struct sockaddr_storage address = {0};
    socklen_t address_len;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&address;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&address;
    if (inet_pton(AF_INET, job->address, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)job->port);
        address_len = sizeof *v4;
    } else if (inet_pton(AF_INET6, job->address, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)job->port);
        address_len = sizeof *v6;
    } else {
        return -EINVAL;
    }
    conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->engine = e;
    c->fd = -1;
    c->address = address;
    c->address_len = address_len;
    c->address_text = copy_of(job->address);
    c->port = job->port;
    c->due_ns = job->due_ns;
    c->group_id = job->group;
    c->group_limit = job->group_limit;
    c->queue = job->queue;
    c->quiet = job->quiet;
    c->ctx = job->ssl_ctx;
    if (c->ctx) {
        SSL_CTX_up_ref(c->ctx); /* ours until the connection is freed, whatever Python drops */
        /* Python's keylog callback (keylog_filename, or SSLKEYLOGFILE in
         * ssl.create_default_context) would crash on the engine's SSL objects: ours instead. */
        pthread_mutex_lock(&key_log_lock);
        SSL_CTX_set_keylog_callback(c->ctx, key_log ? write_key_line : NULL);
        pthread_mutex_unlock(&key_log_lock);
    }
    if (job->rustls_config)
        c->rconfig = rc_config_clone(job->rustls_config); /* likewise */
    c->server_name = copy_of(job->server_name);
    c->ehlo = copy_of(job->ehlo);
    c->mail_from = copy_of(job->mail_from);
    c->rcpt_to = copy_of(job->rcpt_to);
    c->messages = job->messages;
    size_t pieces = (size_t)job->piece_count, messages = (size_t)job->messages;
    c->piece_lengths = malloc(sizeof(int) * pieces);
    c->piece_offsets = malloc(sizeof(size_t) * pieces);
    c->head_of = malloc(sizeof(int) * messages);
    c->text_of = malloc(sizeof(int) * messages);
    size_t total = 0;
    for (size_t i = 0; c->piece_lengths && c->piece_offsets && i < pieces; i++) {
        c->piece_lengths[i] = job->piece_lengths[i];
        c->piece_offsets[i] = total;
        total += (size_t)job->piece_lengths[i];
    }
    c->pieces = malloc(total ? total : 1);
    if (!c->address_text || !c->ehlo || !c->mail_from || !c->rcpt_to || !c->piece_lengths ||
        !c->piece_offsets || !c->head_of || !c->text_of || !c->pieces) {
        conn_free(c);
        return -ENOMEM;
    }
    memcpy(c->pieces, job->pieces, total);
    memcpy(c->head_of, job->head_of, sizeof(int) * messages);
    memcpy(c->text_of, job->text_of, sizeof(int) * messages);
    c->timeout_ms = job->timeout_ms;
    c->quick_ack = job->quick_ack;
    c->trace_phases = job->trace_phases;
    c->check_hostname = job->check_hostname;
    c->resume = job->resume;
    c->step = GREETING;
    long id = c->id = ++e->next_id; /* c is the engine thread's once handed over */
    pthread_mutex_lock(&e->lock);
    c->next = e->incoming;
    e->incoming = c;
    pthread_mutex_unlock(&e->lock);
    signal_fd(e->wake_fd);
    return id;
}

/* OpenSSL's session keys appended to `path` in the NSS key log format (SSLKEYLOGFILE), or
 * none with NULL: 0, or -errno when the file cannot be opened. */
int engine_key_log(const char *path) {
    FILE *file = path ? fopen(path, "a") : NULL;
    if (path && !file)
        return -errno;
    pthread_mutex_lock(&key_log_lock);
    if (key_log)
        fclose(key_log);
    key_log = file;
    pthread_mutex_unlock(&key_log_lock);
    return 0;
}

/* The group's connections not yet due are dropped, each with a report {"cancelled": true}. */
void engine_cancel(engine_t *e, long group) {
    pthread_mutex_lock(&e->lock);
    buf_add(&e->cancels, (const char *)&group, sizeof group);
    pthread_mutex_unlock(&e->lock);
    signal_fd(e->wake_fd);
}

/* The reports waiting, as JSON lines (free with engine_free_text), or NULL when none are. */
char *engine_take(engine_t *e) {
    drain_fd(e->done_fd);
    pthread_mutex_lock(&e->lock);
    char *text = e->reports.len ? e->reports.data : NULL;
    if (text)
        e->reports = (buf_t){0};
    pthread_mutex_unlock(&e->lock);
    return text;
}

void engine_free_text(char *text) { free(text); }

/* A profile's rustls configuration, for Python (the static library's own symbols are not
 * exported); NULL with `error` filled when it cannot be made. */
rc_config *engine_rustls_config(const char *ca_file, int tls13, int tickets, int check_hostname,
                                int sni, char *error, size_t error_len) {
    return rc_config_new(ca_file, tls13, tickets, check_hostname, sni, error, error_len);
}

void engine_rustls_config_free(rc_config *config) { rc_config_free(config); }

static void free_list(conn_t *c) {
    while (c) {
        conn_t *next = c->next;
        conn_free(c);
        c = next;
    }
}

/* The thread stopped and every connection in flight dropped without a report (the sender is
 * stopping). */
void engine_free(engine_t *e) {
    pthread_mutex_lock(&e->lock);
    e->stopping = 1;
    pthread_mutex_unlock(&e->lock);
    signal_fd(e->wake_fd);
    pthread_join(e->thread, NULL);
    free_list(e->live);
    free_list(e->ended);
    free_list(e->incoming);
    free_list(e->pending);
    while (e->groups) {
        group_t *next = e->groups->next;
        free_list(e->groups->queued);
        free(e->groups);
        e->groups = next;
    }
    free(e->cancels.data);
    for (int i = 0; i < MAX_SESSIONS; i++) {
        free(e->sessions[i].name);
        SSL_CTX_free(e->sessions[i].ctx);
        if (e->sessions[i].session)
            SSL_SESSION_free(e->sessions[i].session);
    }
    int fds[] = {e->epoll_fd, e->timer_fd, e->wake_fd, e->done_fd};
    for (int i = 0; i < 4; i++)
        close(fds[i]);
    pthread_mutex_destroy(&e->lock);
    free(e->finished.data);
    free(e->reports.data);
    free(e);
}
