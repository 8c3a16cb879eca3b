/* nbdstack TLS (tls.c): the server's credentials, loaded and checked once
 * at startup, and the per-connection session that wire.c moves bytes
 * through after STARTTLS.  Nothing above wire.c sees a session: the
 * handshake asks wire_starttls(), and reads and writes go on as before.
 * Built with mbedTLS 2.28 (cmake/mbedtls.cmake); with -DNBD_TLS=OFF the
 * functions say that TLS is not compiled in.
 */
#ifndef NBDSTACK_TLS_H
#define NBDSTACK_TLS_H

#include "config.h"
#include "wire.h"

/* 1 when TLS is compiled in. */
int tls_compiled_in(void);
/* A line for --version: "TLS: mbed TLS 2.28.3" or "TLS: not compiled in". */
const char *tls_version_text(void);

/* Loads and checks the credentials cfg names (tls-certificates, tls-psk)
 * when cfg->tls is on or require: unreadable, mismatched or expired
 * ones are refused here with one line each on stderr/the log (errors
 * counted; 0 = ready).  Nothing to do when tls is off. */
int tls_server_init(const struct nbd_config *cfg);
/* 1 once tls_server_init loaded credentials: STARTTLS is offered. */
int tls_server_ready(void);
/* SIGHUP: reads the PSK file again and swaps the keys for the next
 * handshakes; a file with any error is logged and the old keys stay. */
void tls_server_reload(void);
void tls_server_free(void);

/* Runs the server side of the TLS handshake on w (the handshake deadline
 * applies) and switches w to the session; 0, or -1 with a log line (the
 * connection must then be closed). */
int tls_server_start(struct nbd_wire *w);

/* ---- the client side: the nbd backend's upstream --------------------- */

/* nbdkit's nbd plugin keys: X.509 from a directory in libnbd's layout
 * (ca-cert.pem; client-cert.pem and client-key.pem when the server wants
 * a client certificate), or the key of username in a psktool file.
 * verify: check the server's certificate against ca-cert.pem (and its
 * name against hostname, when there is one). */
struct tls_client_opts {
  const char *certificates, *psk, *username;
  int verify;
};
struct tls_client;

/* Loads and checks the credentials; NULL with a one-line reason. */
struct tls_client *tls_client_new(const struct tls_client_opts *o, char *err,
                                  size_t errlen);
void tls_client_free(struct tls_client *c);
/* After the server acknowledged NBD_OPT_STARTTLS: the handshake on w->fd
 * (each wait bounded by w->rcvtimeo), then w->io is the session's.  0
 * with "TLSv1.2, SUITE" in err, or -1 with the reason in err. */
int tls_client_start(struct tls_client *c, struct nbd_wire *w,
                     const char *hostname, char *err, size_t errlen);

#endif
