/* nbdstack engine: exports, layer instances and per-connection stacks.
 *
 * The engine owns the export list built at startup, opens and closes one
 * context per layer for each connection, and caches each layer's
 * capabilities.  The next_<method>() entry points (engine.c) are where all
 * emulation and boundary checks live.  It knows nothing of sockets.
 */
#ifndef NBDSTACK_ENGINE_H
#define NBDSTACK_ENGINE_H

#include <pthread.h>
#include <stdio.h>

#include "layer.h"

struct nbd_export {
  char *name;
  char *description;
  struct nbd_layer *top;        /* client side; ->below ... backend */
  int readonly;                 /* forced read-only (config or -r) */
  unsigned max_connections;     /* 0 = only the server-wide limit */
  /* Per-export `tls` (NBD_TLS_OFF, _ON, _REQUIRE of config.h), or -1:
   * the server's.  Read from the set's own export, never its origin
   * (config_export_tls). */
  int tls;
  unsigned nconnections;        /* open stacks now (server.c's lock) */
  /* Derived by engine_export_finish from the stack. */
  enum nbd_thread_model model;
  enum nbd_nonblocking nonblocking; /* lowest of its layers' (layer.h) */
  pthread_mutex_t lock;         /* for SERIALIZE_CONNECTIONS/ALL_REQUESTS */
  struct nbd_export *next;      /* in config order */
  /* Reload (reload.c): the export's config lines but its description,
   * to tell whether a new config changed it; and, for an export a reload kept, the export
   * first built (origin: its layers, lock and connection count), which
   * lives until the last config holding it is freed. */
  char *sig;
  struct nbd_export *origin;    /* NULL: this one owns its layers */
  unsigned views;               /* origin: kept copies alive (engine.c) */
  int dropped;                  /* origin: its own config is gone */
};

/* Layer instances and exports (engine.c). */
struct nbd_layer *engine_layer_new(const struct nbd_layer_ops *ops,
                                   const char *export_name);
/* Runs params_finish and the layer's setup. */
int engine_layer_setup(struct nbd_layer *layer, char *err, size_t errlen);
void engine_layer_free(struct nbd_layer *layer);
struct nbd_export *engine_export_new(const char *name);
/* Appends a layer below the ones already there (call filters first, then
 * the backend). */
void engine_export_push(struct nbd_export *exp, struct nbd_layer *layer);
/* Checks the stack ends with exactly one backend and derives the thread
 * model; 0 or -1 with err filled. */
int engine_export_finish(struct nbd_export *exp, char *err, size_t errlen);
void engine_export_free(struct nbd_export *exp);
/* Appends "key=value\n" to exp->sig; 0 or -1 (out of memory). */
int engine_export_sign(struct nbd_export *exp, const char *key,
                       const char *value);
/* Reload: fresh (parsed, its layers never set up) becomes a copy of old,
 * whose layers it shares instead of its own, which are discarded
 * without cleanup. */
void engine_export_adopt(struct nbd_export *fresh, struct nbd_export *old);
/* The export that owns exp's layers (exp itself, or its origin). */
struct nbd_export *engine_export_origin(struct nbd_export *exp);

/* Opens the export's stack for one connection: contexts allocated, open
 * called inner to outer, then prepare inner to outer, then capabilities
 * cached.  Every context gets info (NULL outside a connection).  Returns
 * the top context or NULL with err filled and errno set (the error a
 * layer's open or prepare returned, so that EBUSY or EPERM can be told
 * to the client as a refusal). */
struct nbd_ctx *engine_open(struct nbd_export *exp, int readonly,
                            const struct nbd_conn_info *info, char *err,
                            size_t errlen);
/* finalize outer to inner, then close outer to inner, then free. */
int engine_close(struct nbd_ctx *top);

/* The names the export's stack serves (layer.h "export names"), asked
 * with contexts that are not opened: 0 = only the export's own name
 * (exports left empty), 1 = exactly the names in exports (the caller
 * clears them), or -errno. */
int engine_list_exports(struct nbd_export *exp,
                        const struct nbd_conn_info *info,
                        struct nbd_exports *exports);

/* Before the handshake (methods.def, preconnect): may this client use
 * the export?  0, or -errno from the layer that refused it. */
int engine_preconnect(struct nbd_export *exp,
                      const struct nbd_conn_info *info);

#endif
