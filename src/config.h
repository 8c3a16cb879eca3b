/* nbdstack configuration: what the config file or the command line asks
 * for, after every layer instance has been created, its parameters parsed
 * and its setup run.  config.c reads the INI file, cmdline.c the short
 * nbdkit-like command line; both fill the same struct nbd_config, and both
 * parse listen addresses with listen.c.
 */
#ifndef NBDSTACK_CONFIG_H
#define NBDSTACK_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "engine.h"
#include "listen.h"

#define CONFIG_DEFAULT_THREADS 16
#define CONFIG_MAX_THREADS     1024
#define CONFIG_MAX_NAME        4096     /* NBD strings: at most 4096 bytes */

struct nbd_config {
  struct nbd_listen *listens;
  size_t nlistens;
  struct nbd_export *exports;   /* linked by ->next, in config order */
  /* Unknown export names get the first export instead of an error
   * (command-line mode, as nbdkit does). */
  int any_export_name;
  unsigned threads;             /* worker threads per connection, default 16 */
  int readonly;                 /* -r: every export read-only */
  int verbose;                  /* -v */
  char *pidfile;
  /* Limits against hostile or broken clients (docs/config.md). */
  unsigned max_connections;     /* whole server; default 1024 */
  /* Clients greeted that have not spoken yet (lobby.c), in all and from
   * one source (TCP address or Unix peer process); 0 = the default: 4 x
   * max_connections, and no separate limit per source.  They hold no
   * thread and no connection slot; at a limit the oldest is closed. */
  unsigned max_handshakes, max_handshakes_per_source;
  /* Request and reply buffers of every connection together (bytes);
   * a request that would exceed it waits (transmission.c). */
  uint64_t max_buffer_memory;
  uint64_t handshake_timeout;   /* ns to finish the handshake; default 10 s */
  uint64_t idle_timeout;        /* ns without a request; 0 = never */
  char *user, *group;           /* drop privileges after binding */
  /* Run requests of stacks that never or rarely block on the reader
   * thread (default 1); 0 always uses the per-connection worker pool. */
  int inline_requests;
  /* Inline requests: how long the reader polls for the next request
   * before it sleeps (conn.c); 0 = never. */
  uint64_t poll;
  /* Inline requests from a client that keeps many in flight: how long
   * the reader may sleep to gather several before it answers them
   * (conn_coalesce()); 0 = never. */
  uint64_t coalesce;
  /* --run: a shell command started once the server is ready; the server
   * stops when it exits and exits with its status (nbdkit's captive
   * mode). */
  char *run;
  /* -U -: a private directory made for the socket, removed at exit. */
  char *tmpdir;
  /* Where log lines go (log.c): NULL or "stderr", "syslog",
   * "syslog:/PATH". */
  char *log;
  /* TLS (tls.c): off, offered, or required before any other option;
   * the X.509 directory, the PSK file, whether a client certificate is
   * demanded. */
  int tls;
  char *tls_certificates, *tls_psk;
  int tls_verify_peer;
  /* The metrics endpoint's address (metrics_http.c), as given: NULL =
   * none. */
  char *metrics;
};

enum { NBD_TLS_OFF, NBD_TLS_ON, NBD_TLS_REQUIRE };

/* TLS per export (docs/config.md "TLS"): an export's own `tls`, else the
 * server's.  The server offers STARTTLS when any export's mode is on or
 * require (config_tls_offered), and refuses every option but STARTTLS
 * and ABORT before TLS only when every export requires it
 * (config_tls_forced, proto.md's FORCEDTLS); otherwise a TLS-only export
 * is refused by name (SELECTIVETLS). */
int config_export_tls(const struct nbd_config *cfg,
                      const struct nbd_export *e);
int config_tls_offered(const struct nbd_config *cfg);
int config_tls_forced(const struct nbd_config *cfg);

#define CONFIG_DEFAULT_MAX_CONNECTIONS 1024
#define CONFIG_MAX_BUFFER_MEMORY_DEFAULT (UINT64_C(1) << 30)
#define CONFIG_MIN_BUFFER_MEMORY (UINT64_C(64) << 20)
#define CONFIG_DEFAULT_POLL (UINT64_C(50) * 1000)   /* 50 us */
#define CONFIG_MAX_POLL_US  1000
#define CONFIG_DEFAULT_COALESCE (UINT64_C(120) * 1000)   /* 120 us */
#define CONFIG_MAX_COALESCE_US 1000
#define CONFIG_DEFAULT_HANDSHAKE_TIMEOUT (UINT64_C(10) * 1000000000)

/* Parses the INI text (name is used in messages as name:line:).  Every
 * error is printed to errs as "name:line: message"; returns the number of
 * errors (0 = success).  On success cfg holds the exports with every layer
 * set up; on failure cfg is left freed (config_free not needed). */
int config_parse_string(const char *text, const char *name,
                        struct nbd_config *cfg, FILE *errs);
/* Reload: while prev is set, an export whose lines (its description
 * aside) equal those of the export of the same name in prev shares its
 * layer instances instead of building new ones (engine_export_adopt).
 * NULL to stop. */
void config_reuse_from(const struct nbd_config *prev);
/* Reads a file and calls config_parse_string. */
int config_load_file(const char *path, struct nbd_config *cfg, FILE *errs);
void config_free(struct nbd_config *cfg);
/* Zeroes cfg and sets every default (threads, limits, timeouts). */
void config_defaults(struct nbd_config *cfg);
/* The limits on unfinished handshakes in force (the defaults resolved). */
unsigned config_max_handshakes(const struct nbd_config *cfg);
unsigned config_max_handshakes_per_source(const struct nbd_config *cfg);
#endif
