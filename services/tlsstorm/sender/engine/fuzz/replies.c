/* libFuzzer over what a server says to the engine: its reply parser, its SMTP state machine,
 * the start of a handshake fed garbage, and the report it writes for Python, built with
 * AddressSanitizer and UndefinedBehaviorSanitizer (scripts/engine-fuzz.sh; tests/test_engine.py
 * runs it for a fixed time in `make test`).
 *
 * The engine's own code (included below) runs one connection whose socket is one end of a
 * socketpair; the harness is the server at the other end. The input's first byte picks the
 * conversation; the rest is a list of events, each a control byte then its bytes:
 *   byte 0:  bit 0 STARTTLS (OpenSSL), bit 1 phases traced, bits 2-3 messages - 1,
 *            bit 4 messages of 256 KiB (more than the socket takes: writes wait),
 *            bit 5 pieces of the message given out of order (head and text swapped)
 *   control: bits 0-5 n, bit 6: the next byte written (n + 1) KiB times (a flood), else the
 *            next n bytes written; bit 7: the server reads what the engine sent, first;
 *            0x3f alone: the server closes its end.
 * After each event the engine handles its socket as its epoll loop would. Every report it
 * writes must be one line of valid JSON: what Python's json.loads takes.
 *
 * The rustls calls are never reached here (no rustls configuration is given): they abort. */
#include "../smtp_engine.c"

#include <sys/un.h>

rc_config *rc_config_new(const char *ca, int t, int k, int h, int s, char *e, size_t n) {
    abort();
}
rc_config *rc_config_clone(const rc_config *config) { abort(); }
void rc_config_free(rc_config *config) {
    if (config)
        abort();
}
rc_conn *rc_conn_new(const rc_config *config, const char *name, int fd, char *e, size_t n) {
    abort();
}
void rc_conn_free(rc_conn *conn) {
    if (conn)
        abort();
}
int rc_handshake(rc_conn *conn) { abort(); }
long rc_read(rc_conn *conn, void *buf, size_t len, int *status) { abort(); }
int rc_has_pending(const rc_conn *conn) { abort(); }
int rc_write(rc_conn *conn, const void *data, size_t len) { abort(); }
int rc_flush(rc_conn *conn) { abort(); }
void rc_close(rc_conn *conn) { abort(); }
void rc_info(const rc_conn *conn, char *v, size_t vl, char *c, size_t cl, int *r) { abort(); }
int rc_error(const rc_conn *conn, char *text, size_t len) { abort(); }

/* ---- a JSON checker (RFC 8259), enough to say whether json.loads would take a line ---- */

static const char *json_value(const char *p, const char *end, int depth);

static const char *json_space(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static const char *json_string(const char *p, const char *end) {
    if (p >= end || *p++ != '"')
        return NULL;
    while (p < end && *p != '"') {
        unsigned char c = (unsigned char)*p++;
        if (c < 0x20 || c > 0x7e) /* the engine writes ASCII only */
            return NULL;
        if (c != '\\')
            continue;
        if (p >= end)
            return NULL;
        char escape = *p++;
        if (escape == 'u') {
            for (int i = 0; i < 4; i++, p++)
                if (p >= end || !strchr("0123456789abcdefABCDEF", *p) || !*p)
                    return NULL;
        } else if (!strchr("\"\\/bfnrt", escape) || !escape) {
            return NULL;
        }
    }
    return p < end ? p + 1 : NULL;
}

static const char *json_number(const char *p, const char *end) {
    const char *start = p;
    if (p < end && *p == '-')
        p++;
    if (p < end && *p == '0')
        p++;
    else if (p < end && *p >= '1' && *p <= '9')
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    else
        return NULL;
    if (p < end && *p == '.') {
        const char *digits = ++p;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        if (p == digits)
            return NULL;
    }
    return p > start ? p : NULL;
}

static const char *json_items(const char *p, const char *end, int depth, char close,
                              int keyed) {
    p = json_space(p + 1, end);
    if (p < end && *p == close)
        return p + 1;
    for (;;) {
        if (keyed) {
            p = json_string(json_space(p, end), end);
            if (!p || (p = json_space(p, end)) >= end || *p++ != ':')
                return NULL;
        }
        p = json_value(p, end, depth + 1);
        if (!p || (p = json_space(p, end)) >= end)
            return NULL;
        if (*p == close)
            return p + 1;
        if (*p++ != ',')
            return NULL;
    }
}

static const char *json_value(const char *p, const char *end, int depth) {
    p = json_space(p, end);
    if (p >= end || depth > 16)
        return NULL;
    switch (*p) {
    case '{': return json_items(p, end, depth, '}', 1);
    case '[': return json_items(p, end, depth, ']', 0);
    case '"': return json_string(p, end);
    case 't': return end - p >= 4 && !memcmp(p, "true", 4) ? p + 4 : NULL;
    case 'f': return end - p >= 5 && !memcmp(p, "false", 5) ? p + 5 : NULL;
    case 'n': return end - p >= 4 && !memcmp(p, "null", 4) ? p + 4 : NULL;
    default: return json_number(p, end);
    }
}

static void check_reports(const buf_t *reports) {
    const char *p = reports->data, *end = reports->data + reports->len;
    int lines = 0;
    while (p < end) {
        const char *line_end = memchr(p, '\n', (size_t)(end - p));
        const char *parsed = line_end ? json_value(p, line_end, 0) : NULL;
        if (!parsed || json_space(parsed, line_end) != line_end) {
            fprintf(stderr, "a report that is not one line of JSON:\n%.*s\n", (int)(end - p), p);
            abort();
        }
        lines++;
        p = line_end + 1;
    }
    if (lines != 1) {
        fprintf(stderr, "%d reports for one connection\n", lines);
        abort();
    }
}

/* ---- the conversation ---- */

static SSL_CTX *client_ctx;
static int epoll_fd = -1;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    signal(SIGPIPE, SIG_IGN);
    client_ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(client_ctx, SSL_VERIFY_NONE, NULL);
    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    return client_ctx && epoll_fd >= 0 ? 0 : 1;
}

static void drain(int fd) {
    char sink[65536];
    while (read(fd, sink, sizeof sink) > 0) {
    }
}

/* What begin() does, on a socket already connected (the socketpair's end). */
static conn_t *begun(engine_t *e, int fd) {
    take_incoming(e, e->incoming);
    e->incoming = NULL;
    conn_t *c = e->pending;
    e->pending = e->pending_tail = NULL;
    go_live(e, c);
    c->fd = fd;
    watch_socket(e, c);
    return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    uint8_t flags = data[0];
    int messages = 1 + ((flags >> 2) & 3);
    size_t text_len = flags & 16 ? 256 * 1024 : 512;
    char *text = malloc(text_len);
    memset(text, 'x', text_len);
    for (size_t i = 76; i < text_len; i += 78)
        memcpy(text + i - 1, "\r\n", 2);
    const char *head = "Subject: fuzz\r\n\r\n";
    size_t head_len = strlen(head);
    char *pieces = malloc(head_len + text_len);
    memcpy(pieces, head, head_len);
    memcpy(pieces + head_len, text, text_len);
    int piece_lengths[] = {(int)head_len, (int)text_len};
    int heads[4], texts[4];
    for (int i = 0; i < 4; i++) {
        heads[i] = flags & 32 ? 1 : 0;
        texts[i] = flags & 32 ? 0 : 1;
    }
    job_t job = {.address = "127.0.0.1", .port = 25, .ssl_ctx = flags & 1 ? client_ctx : NULL,
                 .server_name = "mx.test", .ehlo = "fuzz.test", .mail_from = "a@fuzz.test",
                 .rcpt_to = "b@fuzz.test", .messages = messages, .pieces = pieces,
                 .piece_lengths = piece_lengths, .piece_count = 2, .head_of = heads,
                 .text_of = texts, .timeout_ms = 1000, .trace_phases = (flags >> 1) & 1};

    engine_t e = {0};
    e.epoll_fd = epoll_fd;
    e.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pthread_mutex_init(&e.lock, NULL);
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) != 0 ||
        engine_start(&e, &job) <= 0)
        abort();
    conn_t *c = begun(&e, pair[0]);
    int server = pair[1];

    size_t at = 1;
    while (at < size && !c->finished) {
        uint8_t control = data[at++];
        if (control & 128)
            drain(server);
        size_t n = control & 63;
        if ((control & 127) == 63) {
            shutdown(server, SHUT_WR);
        } else if (control & 64) {
            if (at < size) {
                char flood[1024];
                memset(flood, data[at++], sizeof flood);
                for (size_t k = 0; k <= n; k++)
                    if (write(server, flood, sizeof flood) < 0)
                        break;
            }
        } else {
            n = n < size - at ? n : size - at;
            if (n && write(server, data + at, n) < 0) {
            }
            at += n;
        }
        on_event(c, EPOLLIN | (c->writing ? EPOLLOUT : 0));
    }
    if (!c->finished) /* what the engine's timer does to a conversation left waiting */
        finish(c, "TimeoutError", "no reply within 1 s", 0, NULL, 0);
    check_reports(&e.finished);

    free_list(e.ended);
    free(e.finished.data);
    for (int i = 0; i < MAX_SESSIONS; i++) {
        free(e.sessions[i].name);
        SSL_CTX_free(e.sessions[i].ctx);
        if (e.sessions[i].session)
            SSL_SESSION_free(e.sessions[i].session);
    }
    close(e.wake_fd);
    close(server);
    pthread_mutex_destroy(&e.lock);
    free(pieces);
    free(text);
    return 0;
}
