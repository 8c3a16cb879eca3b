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

#endif
