/* nbdstack typed parameters (params.c): a layer's key=value pairs
 * checked against its parameter table, and the parsers of sizes,
 * integers, booleans and durations that the settings share. */
#ifndef NBDSTACK_PARAMS_H
#define NBDSTACK_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "layer.h"

int params_set(struct nbd_layer *layer, const char *key, const char *value,
               char *err, size_t errlen);
/* Applies defaults to unset params and checks required ones. */
int params_finish(struct nbd_layer *layer, char *err, size_t errlen);
void params_free(struct nbd_layer *layer);
/* Did-you-mean for an unknown name: the name in known (a list "a, b, c",
 * as the unknown-name messages print it) nearest to word by edit
 * distance (a swap of two neighbours counts one, '-' and '_' are the
 * same), if it is close enough to be a typo.  Fills buf with
 * "did you mean 'NAME'?; " or "" (to go before "known: ..."); returns
 * buf. */
const char *params_suggest(const char *word, const char *known, char *buf,
                           size_t len);
int params_parse_size(const char *s, uint64_t *out);
int params_parse_uint(const char *s, uint64_t *out);
int params_parse_bool(const char *s, int *out);
int params_parse_duration(const char *s, uint64_t *out_ns);
const char *params_type_name(enum nbd_param_type t);

#endif
