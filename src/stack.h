/* nbdstack stack builder (stack.c): the one way an export's stack is
 * built from names and parameters, for the config file and the command
 * line alike.  Each front end gives its own way of reporting an error
 * (config.c: "file:line: ...", cmdline.c: "nbdstack: ..."). */
#ifndef NBDSTACK_STACK_H
#define NBDSTACK_STACK_H

#include <stddef.h>

#include "engine.h"

#define STACK_MAX_LAYERS 64           /* engine_open keeps 64 contexts */

/* Reports one error of the stack being built; line 0 = none known. */
typedef void stack_error_fn(void *arg, int line, const char *msg);

struct stack_layer {
  struct nbd_layer *layer;
  int line;
  int ok;                       /* its parameters parsed: run its setup */
};

struct nbd_stack {
  struct nbd_export *exp;
  const char *label;            /* "export \"vm1\"", for messages */
  stack_error_fn *error;
  void *arg;
  int cmdline;                  /* hints say --filter */
  struct stack_layer *v;
  size_t n, cap;
  int backend_line;             /* 0 = no backend yet */
  int nerrs;
};

void stack_begin(struct nbd_stack *st, struct nbd_export *exp,
                 const char *label, stack_error_fn *error, void *arg);
/* Adds the layer called name (filters before the backend, one backend);
 * NULL when that is refused (reported). */
struct nbd_layer *stack_add(struct nbd_stack *st, enum nbd_layer_kind kind,
                            const char *name, int line);
/* One parameter for layer: key=value, or a bare value (key NULL) for its
 * magic parameter; 0, or -1 (reported). */
int stack_param(struct nbd_stack *st, struct nbd_layer *layer,
                const char *key, const char *value, int line);
/* The command line's way: key=value goes to the first layer, filters in
 * order then the backend, that knows the key; a bare value to the
 * backend's magic parameter. */
int stack_param_routed(struct nbd_stack *st, const char *key,
                       const char *value, int line);
/* Marks the last layer added as having bad parameters (no setup). */
void stack_bad_params(struct nbd_stack *st);
/* Runs every layer's setup, backend first (a filter may look below),
 * then the export's own checks; 0, or -1 (reported).  Frees the
 * builder's list, not the export. */
int stack_finish(struct nbd_stack *st, int header_line);

/* Writes "a, b, c" (registered filters or backends, or a layer's keys),
 * or "none"; returns strlen of it. */
size_t stack_layer_names(enum nbd_layer_kind kind, char *buf, size_t len);
size_t stack_param_names(const struct nbd_layer_ops *ops, char *buf,
                         size_t len);
/* True when s[0..len) is a parameter key: [A-Za-z_][A-Za-z0-9_.-]*.  A
 * word "k=v" whose k is not a key is a bare value ("/srv/a=b.img"), as in
 * nbdkit. */
int stack_is_key(const char *s, size_t len);

#endif
