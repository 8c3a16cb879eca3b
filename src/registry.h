/* nbdstack registry (registry.c): the filters and backends compiled in,
 * found through their linker sections. */
#ifndef NBDSTACK_REGISTRY_H
#define NBDSTACK_REGISTRY_H

#include <stddef.h>
#include <stdio.h>

#include "layer.h"

const struct nbd_layer_ops *registry_find(enum nbd_layer_kind kind,
                                          const char *name);
/* Sorted by name; returns the count and sets *out (a static array). */
size_t registry_list(enum nbd_layer_kind kind,
                     const struct nbd_layer_ops *const **out);
/* Prints every layer and its parameters (--list). */
void registry_print(FILE *fp);
/* Compares the linked set with the build's selection; 0 if equal. */
int registry_self_check(char *err, size_t errlen);

#endif
