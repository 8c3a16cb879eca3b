/* nbdstack registry: the filters and backends linked into this binary.
 *
 * Each layer file places a pointer to its descriptor in the nbd_filters or
 * nbd_backends linker section (layer.h); the linker brackets each section
 * with __start_/__stop_ symbols.  Section order is meaningless, so the
 * lists are sorted by name on first use.  Stack order comes from the config.
 */
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "modules_gen.h"
#include "registry.h"
#include "params.h"

/* Weak: a build with no filters at all has no such section. */
extern const struct nbd_layer_ops *const __start_nbd_filters[]
  __attribute__((weak));
extern const struct nbd_layer_ops *const __stop_nbd_filters[]
  __attribute__((weak));
extern const struct nbd_layer_ops *const __start_nbd_backends[]
  __attribute__((weak));
extern const struct nbd_layer_ops *const __stop_nbd_backends[]
  __attribute__((weak));

#define REGISTRY_MAX 256

struct registry_list {
  const struct nbd_layer_ops *v[REGISTRY_MAX];
  size_t n;
};

static struct registry_list registry_lists[2];
static pthread_once_t registry_once = PTHREAD_ONCE_INIT;

static int
registry_cmp(const void *a, const void *b)
{
  const struct nbd_layer_ops *const *x = a, *const *y = b;
  return strcmp((*x)->name, (*y)->name);
}

static void
registry_fill(struct registry_list *l, const struct nbd_layer_ops *const *b,
              const struct nbd_layer_ops *const *e)
{
  for (; b && b < e && l->n < REGISTRY_MAX; b++)
    if (*b)                     /* padding between entries reads as NULL */
      l->v[l->n++] = *b;
  qsort(l->v, l->n, sizeof l->v[0], registry_cmp);
}

static void
registry_init(void)
{
  registry_fill(&registry_lists[NBD_LAYER_FILTER], __start_nbd_filters,
                __stop_nbd_filters);
  registry_fill(&registry_lists[NBD_LAYER_BACKEND], __start_nbd_backends,
                __stop_nbd_backends);
}

size_t
registry_list(enum nbd_layer_kind kind, const struct nbd_layer_ops *const **out)
{
  pthread_once(&registry_once, registry_init);
  *out = registry_lists[kind].v;
  return registry_lists[kind].n;
}

/* Names are equal when they differ only by '-' against '_': a layer
 * registered as "multi-conn" (NBD_REGISTER_FILTER_AS) lives in
 * multi_conn.c, which is the name the build's selection knows. */
static int
registry_name_eq(const char *a, const char *b)
{
  for (; *a && *b; a++, b++)
    if (*a != *b && !((*a == '-' || *a == '_') && (*b == '-' || *b == '_')))
      return 0;
  return *a == *b;
}

const struct nbd_layer_ops *
registry_find(enum nbd_layer_kind kind, const char *name)
{
  const struct nbd_layer_ops *const *v;
  size_t i, n = registry_list(kind, &v);

  for (i = 0; i < n; i++)
    if (registry_name_eq(v[i]->name, name))
      return v[i];
  return NULL;
}

static void
registry_print_kind(FILE *fp, enum nbd_layer_kind kind, const char *title)
{
  const struct nbd_layer_ops *const *v;
  size_t i, n = registry_list(kind, &v);
  const struct nbd_param *p;

  fprintf(fp, "%s:\n", title);
  for (i = 0; i < n; i++) {
    fprintf(fp, "  %-12s %s\n", v[i]->name,
            v[i]->description ? v[i]->description : "");
    for (p = v[i]->params; p && p->name; p++) {
      fprintf(fp, "      %s=<%s>", p->name, params_type_name(p->type));
      if (p->type == NBD_PARAM_ENUM && p->choices) {
        const char *const *c;
        fprintf(fp, " (");
        for (c = p->choices; *c; c++)
          fprintf(fp, "%s%s", c == p->choices ? "" : "|", *c);
        fprintf(fp, ")");
      }
      if (v[i]->magic_param && strcmp(v[i]->magic_param, p->name) == 0)
        fprintf(fp, " (bare value)");
      if (p->required)
        fprintf(fp, " required");
      else if (p->def)
        fprintf(fp, " default %s", p->def);
      fprintf(fp, "  %s\n", p->help ? p->help : "");
    }
  }
}

void
registry_print(FILE *fp)
{
  registry_print_kind(fp, NBD_LAYER_FILTER, "filters");
  registry_print_kind(fp, NBD_LAYER_BACKEND, "backends");
  fprintf(fp, "\nA key marked (bare value) may also be given as a bare word: "
          "'memory 1G' is\n'memory size=1G'.\n");
}

/* The build's selection (modules_gen.h) must equal what was linked: an
 * OBJECT library keeps every registration, a static archive would not. */
static int
registry_check_kind(enum nbd_layer_kind kind, const char *const *expect,
                    size_t nexpect, char *err, size_t errlen)
{
  const struct nbd_layer_ops *const *v;
  size_t i, n = registry_list(kind, &v);
  const char *what = kind == NBD_LAYER_FILTER ? "filter" : "backend";

  for (i = 0; i < nexpect; i++)
    if (registry_find(kind, expect[i]) == NULL) {
      snprintf(err, errlen, "%s %s was selected but is not linked in",
               what, expect[i]);
      return -1;
    }
  if (n != nexpect) {
    snprintf(err, errlen, "%zu %ss linked in, %zu selected", n, what,
             nexpect);
    return -1;
  }
  for (i = 0; i + 1 < n; i++)
    if (strcmp(v[i]->name, v[i + 1]->name) == 0) {
      snprintf(err, errlen, "%s %s registered twice", what, v[i]->name);
      return -1;
    }
  return 0;
}

int
registry_self_check(char *err, size_t errlen)
{
  static const char *const filters[] = { NBD_SELECTED_FILTERS NULL };
  static const char *const backends[] = { NBD_SELECTED_BACKENDS NULL };

  if (registry_check_kind(NBD_LAYER_FILTER, filters,
                          sizeof filters / sizeof filters[0] - 1,
                          err, errlen) == -1)
    return -1;
  return registry_check_kind(NBD_LAYER_BACKEND, backends,
                             sizeof backends / sizeof backends[0] - 1,
                             err, errlen);
}
