/* nbdstack stack builder: an export's stack from layer names and their
 * parameters, checked the same way whichever front end reads them (the
 * config file, config.c, or the command line, cmdline.c): unknown names
 * with the known ones listed, filters before one backend, a bounded
 * number of layers, each parameter given once to the layer that takes
 * it, then every layer's setup, backend first, and the export's checks.
 * Errors go to the front end's reporter; building goes on, so that one
 * run shows them all.  It reads no file and no argv.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stack.h"
#include "registry.h"
#include "params.h"

#define STACK_ERRLEN 1024

static void
stack_error(struct nbd_stack *st, int line, const char *fmt, ...)
  __attribute__((format(printf, 3, 4)));

static void
stack_error(struct nbd_stack *st, int line, const char *fmt, ...)
{
  char msg[STACK_ERRLEN];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  st->nerrs++;
  st->error(st->arg, line, msg);
}

static const char *
stack_kind_name(enum nbd_layer_kind kind)
{
  return kind == NBD_LAYER_FILTER ? "filter" : "backend";
}

int
stack_is_key(const char *s, size_t len)
{
  size_t i;

  if (len == 0 || !((s[0] >= 'a' && s[0] <= 'z') ||
                    (s[0] >= 'A' && s[0] <= 'Z') || s[0] == '_'))
    return 0;
  for (i = 1; i < len; i++)
    if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
          (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '.' ||
          s[i] == '-'))
      return 0;
  return 1;
}

size_t
stack_layer_names(enum nbd_layer_kind kind, char *buf, size_t len)
{
  const struct nbd_layer_ops *const *v;
  size_t i, n = registry_list(kind, &v), used = 0;

  if (len == 0)
    return 0;
  buf[0] = '\0';
  for (i = 0; i < n && used < len; i++)
    used += (size_t)snprintf(buf + used, len - used, "%s%s",
                             i ? ", " : "", v[i]->name);
  if (n == 0)
    used = (size_t)snprintf(buf, len, "none");
  return used < len ? used : len - 1;
}

size_t
stack_param_names(const struct nbd_layer_ops *ops, char *buf, size_t len)
{
  const struct nbd_param *q;
  size_t used = 0;

  if (len == 0)
    return 0;
  buf[0] = '\0';
  for (q = ops->params; q && q->name && used < len; q++)
    used += (size_t)snprintf(buf + used, len - used, "%s%s",
                             q == ops->params ? "" : ", ", q->name);
  if (ops->params == NULL || ops->params[0].name == NULL)
    used = (size_t)snprintf(buf, len, "none");
  return used < len ? used : len - 1;
}

void
stack_begin(struct nbd_stack *st, struct nbd_export *exp, const char *label,
            stack_error_fn *error, void *arg)
{
  memset(st, 0, sizeof *st);
  st->exp = exp;
  st->label = label;
  st->error = error;
  st->arg = arg;
}

static void
stack_unknown(struct nbd_stack *st, enum nbd_layer_kind kind,
              const char *name, int line)
{
  enum nbd_layer_kind other = kind == NBD_LAYER_FILTER ? NBD_LAYER_BACKEND
                                                       : NBD_LAYER_FILTER;
  char known[512], hint[128];

  stack_layer_names(kind, known, sizeof known);
  if (registry_find(other, name) == NULL)
    stack_error(st, line, "unknown %s '%s' (%sknown: %s)",
                stack_kind_name(kind), name,
                params_suggest(name, known, hint, sizeof hint), known);
  else if (st->cmdline && other == NBD_LAYER_FILTER)
    stack_error(st, line, "unknown %s '%s' (known: %s); '%s' is a filter, "
                "use --filter %s", stack_kind_name(kind), name, known, name,
                name);
  else
    stack_error(st, line, "unknown %s '%s' (known: %s); '%s' is a %s",
                stack_kind_name(kind), name, known, name,
                stack_kind_name(other));
}

/* Whether a layer of this kind may come next. */
static int
stack_allowed(struct nbd_stack *st, enum nbd_layer_kind kind,
              const char *name, int line)
{
  if (kind == NBD_LAYER_BACKEND && st->backend_line) {
    stack_error(st, line, "second backend for %s (first at line %d)",
                st->label, st->backend_line);
    return 0;
  }
  if (kind == NBD_LAYER_FILTER && st->backend_line) {
    stack_error(st, line, "filter %s comes after the backend (line %d): "
                "list filters first, client side first", name,
                st->backend_line);
    return 0;
  }
  if (st->n >= STACK_MAX_LAYERS) {
    stack_error(st, line, "too many layers in %s (at most %d)", st->label,
                STACK_MAX_LAYERS);
    return 0;
  }
  return 1;
}

struct nbd_layer *
stack_add(struct nbd_stack *st, enum nbd_layer_kind kind, const char *name,
          int line)
{
  const struct nbd_layer_ops *ops = registry_find(kind, name);
  struct nbd_layer *layer;

  if (ops == NULL) {
    stack_unknown(st, kind, name, line);
    return NULL;
  }
  if (!stack_allowed(st, kind, name, line))
    return NULL;
  if (st->n == st->cap) {
    size_t cap = st->cap ? 2 * st->cap : 8;
    struct stack_layer *v = realloc(st->v, cap * sizeof *v);
    if (v == NULL)
      goto oom;
    st->v = v;
    st->cap = cap;
  }
  layer = engine_layer_new(ops, st->exp->name);
  if (layer == NULL)
    goto oom;
  st->v[st->n].layer = layer;
  st->v[st->n].line = line;
  st->v[st->n].ok = 1;
  st->n++;
  engine_export_push(st->exp, layer);
  if (kind == NBD_LAYER_BACKEND)
    st->backend_line = line ? line : -1;
  return layer;

oom:
  stack_error(st, line, "out of memory");
  return NULL;
}

void
stack_bad_params(struct nbd_stack *st)
{
  if (st->n > 0)
    st->v[st->n - 1].ok = 0;
}

/* key=value or a bare value for layer; 0, or -1 with err filled. */
static int
stack_give(struct nbd_layer *layer, const char *key, const char *value,
           char *err, size_t errlen)
{
  const char *magic = layer->ops->magic_param;
  char known[512];

  if (key == NULL) {
    if (magic == NULL) {
      stack_param_names(layer->ops, known, sizeof known);
      snprintf(err, errlen, "takes no bare value '%s' (write key=value; "
               "known keys: %s)", value, known);
      return -1;
    }
    if (nbd_layer_param_set(layer, magic)) {
      snprintf(err, errlen, "bare value '%s' sets '%s', which is already "
               "set", value, magic);
      return -1;
    }
    key = magic;
  } else if (nbd_layer_param_set(layer, key)) {
    snprintf(err, errlen, "key '%s' given twice", key);
    return -1;
  }
  return params_set(layer, key, value, err, errlen);
}

int
stack_param(struct nbd_stack *st, struct nbd_layer *layer, const char *key,
            const char *value, int line)
{
  char err[STACK_ERRLEN];
  size_t i;

  if (stack_give(layer, key, value, err, sizeof err) == 0)
    return 0;
  stack_error(st, line, "%s %s: %s", stack_kind_name(layer->ops->kind),
              layer->ops->name, err);
  for (i = 0; i < st->n; i++)
    if (st->v[i].layer == layer)
      st->v[i].ok = 0;
  return -1;
}

static int
stack_has_key(const struct nbd_layer_ops *ops, const char *key)
{
  const struct nbd_param *q;

  for (q = ops->params; q && q->name; q++)
    if (strcmp(q->name, key) == 0)
      return 1;
  return 0;
}

int
stack_param_routed(struct nbd_stack *st, const char *key, const char *value,
                   int line)
{
  char msg[STACK_ERRLEN], known[512], all[STACK_ERRLEN], hint[128];
  size_t i, used, nall = 0;

  if (st->n == 0)
    return -1;
  if (key == NULL)
    return stack_param(st, st->v[st->n - 1].layer, NULL, value, line);
  for (i = 0; i < st->n; i++)
    if (stack_has_key(st->v[i].layer->ops, key))
      return stack_param(st, st->v[i].layer, key, value, line);
  all[0] = '\0';
  for (i = 0; i < st->n && nall < sizeof all; i++) {
    stack_param_names(st->v[i].layer->ops, known, sizeof known);
    if (strcmp(known, "none") != 0)
      nall += (size_t)snprintf(all + nall, sizeof all - nall, "%s%s",
                               nall ? ", " : "", known);
  }
  used = (size_t)snprintf(msg, sizeof msg, "unknown key '%s' (%s", key,
                          params_suggest(key, all, hint, sizeof hint));
  for (i = 0; i < st->n && used < sizeof msg; i++) {
    const struct nbd_layer_ops *ops = st->v[i].layer->ops;
    stack_param_names(ops, known, sizeof known);
    used += (size_t)snprintf(msg + used, sizeof msg - used, "%s%s %s knows: "
                             "%s", i ? "; " : "", stack_kind_name(ops->kind),
                             ops->name, known);
  }
  stack_error(st, line, "%s)", msg);
  return -1;
}

int
stack_finish(struct nbd_stack *st, int header_line)
{
  char err[STACK_ERRLEN];
  size_t i;

  for (i = st->n; i-- > 0;) {
    struct nbd_layer *l = st->v[i].layer;
    if (st->v[i].ok && engine_layer_setup(l, err, sizeof err) == -1)
      stack_error(st, st->v[i].line, "%s %s: %s",
                  stack_kind_name(l->ops->kind), l->ops->name, err);
  }
  if (st->backend_line &&
      engine_export_finish(st->exp, err, sizeof err) == -1)
    stack_error(st, header_line, "%s: %s", st->label, err);
  free(st->v);
  st->v = NULL;
  st->n = st->cap = 0;
  return st->nerrs ? -1 : 0;
}
