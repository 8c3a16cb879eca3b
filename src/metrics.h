/* nbdstack live metrics (metrics.c: the counters and their Prometheus
 * text; metrics_http.c: the endpoint).  The hooks below are what the
 * connection code calls; each is one call at its site. */
#ifndef NBDSTACK_METRICS_H
#define NBDSTACK_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct nbd_config;
struct nbd_conn;
struct nbd_request;

/* Why a client was turned away (nbdstack_connections_refused_total). */
enum metrics_refusal {
  METRICS_REFUSED_MAX_CONNECTIONS,      /* server.c: max-connections */
  METRICS_REFUSED_MAX_HANDSHAKES,       /* lobby.c: closed for a newer one */
  METRICS_REFUSED_EXPORT_LIMIT,         /* handshake.c: the export's limit */
  METRICS_REFUSED_LIMIT,                /* handshake.c: a layer's open said
                                         * EBUSY (the limit filter) */
  METRICS_REFUSED_IP,                   /* conn.c, handshake.c: a layer's
                                         * preconnect (the ip filter) */
  METRICS_REFUSED_TLS,                  /* handshake.c: TLS required, the
                                         * client has none */
  METRICS_REFUSED_POLICY,               /* handshake.c: a layer's open said
                                         * EPERM or EACCES */
  METRICS_REFUSED_UNKNOWN_EXPORT,       /* handshake.c: no such export, or
                                         * a layer's open said ENOENT
                                         * (exportname-strict) */
  METRICS_REFUSED_OPEN_FAILED,          /* handshake.c: a layer's open
                                         * failed otherwise (EIO, ...) */
  METRICS_NREFUSALS
};

/* ---- hooks (any thread) ------------------------------------------------- */

/* The handshake of c ended: r is 0 (entering transmission with c->exp),
 * or -1 (closing).  Counts it, and on 0 attaches c to its export's
 * counters (only while the endpoint is on). */
void metrics_handshake(struct nbd_conn *c, int r);
/* The client sent NBD_OPT_ABORT: the handshake that ends next on this
 * thread ended by the client's choice, not as a failure. */
void metrics_handshake_aborted(void);
/* lobby.c closed a client still silent at its handshake deadline. */
void metrics_handshake_timeout(void);
/* c closes: its export's open connections go down. */
void metrics_conn_close(struct nbd_conn *c);
void metrics_refused(enum metrics_refusal why);
/* When a request starts: the time, or 0 when c is not counted (the
 * endpoint is off: then no clock is read). */
uint64_t metrics_start(const struct nbd_conn *c);
/* Request r of c was answered with err (0 or -errno); t0 from
 * metrics_start (0: not timed, as for requests refused before they ran).
 * Call it before the reply goes out, so that a client that saw its reply
 * sees it counted. */
void metrics_request(const struct nbd_conn *c, const struct nbd_request *r,
                     int err, uint64_t t0);

/* ---- main thread -------------------------------------------------------- */

/* The exports of cfg are the ones shown (every counter at 0 from the
 * start); those of an earlier set are shown while they have connections.
 * Called at start and after each reload. */
void metrics_configure(const struct nbd_config *cfg);
/* Binds cfg->metrics and starts the endpoint's thread: 0 (also when no
 * endpoint is configured), or -1 after logging why. */
int metrics_start_server(const struct nbd_config *cfg);
/* The Unix socket the endpoint made, NULL if none (for -u/-g: removed at
 * exit by whoever keeps the right to). */
const char *metrics_unix_path(void);
/* Stops the thread, closes the socket, removes a Unix socket. */
void metrics_stop_server(void);

/* ---- the exposition (metrics thread, tests) ----------------------------- */

/* The whole Prometheus text (format 0.0.4) in a malloc'd buffer, its
 * length in *len; NULL when out of memory.  Takes no lock the data path
 * takes. */
char *metrics_render(size_t *len);
/* An HTTP response of the endpoint went out with this status code. */
void metrics_note_response(int code);

#endif
