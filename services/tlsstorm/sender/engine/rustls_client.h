/* The engine's rustls client (rustls_client/src/lib.rs, a static library built by cargo):
 * a profile's configuration, and one session on a connected non-blocking socket. */
#ifndef TLSSTORM_RUSTLS_CLIENT_H
#define TLSSTORM_RUSTLS_CLIENT_H
#include <stddef.h>

typedef struct rc_config rc_config;
typedef struct rc_conn rc_conn;

enum { RC_DONE = 0, RC_WANT_READ = 1, RC_WANT_WRITE = 2, RC_CLOSED = 3, RC_EOF = 4,
       RC_TLS_ERROR = -1, RC_OS_ERROR = -2 };

/* ca_file NULL: any certificate (its handshake signature still checked); tls13 0: TLS 1.2 only. */
rc_config *rc_config_new(const char *ca_file, int tls13, int tickets, int check_hostname, int sni,
                         char *error, size_t error_len);
rc_config *rc_config_clone(const rc_config *config);
void rc_config_free(rc_config *config);

rc_conn *rc_conn_new(const rc_config *config, const char *server_name, int fd, char *error,
                     size_t error_len);
void rc_conn_free(rc_conn *conn);
int rc_handshake(rc_conn *conn);
long rc_read(rc_conn *conn, void *buf, size_t len, int *status);
int rc_has_pending(const rc_conn *conn);
int rc_write(rc_conn *conn, const void *data, size_t len);
int rc_flush(rc_conn *conn);
void rc_close(rc_conn *conn);
void rc_info(const rc_conn *conn, char *version, size_t version_len, char *cipher,
             size_t cipher_len, int *resumed);
int rc_error(const rc_conn *conn, char *text, size_t len);
#endif
