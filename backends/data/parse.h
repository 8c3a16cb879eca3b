/* nbdstack backend data: the data= language and base64= (parse.c).
 *
 * Both write the bytes they describe into a store and return its length
 * (what nbdkit takes as the disk size when size= is not given).  Errors
 * name the key and the offset in the text of the first bad token:
 * "data: at offset 7: unknown token '$x'".
 */
#ifndef NBDSTACK_DATA_PARSE_H
#define NBDSTACK_DATA_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

/* 0, or -1 with err filled. */
int data_parse(const char *text, struct data_store *s, uint64_t *len,
               char *err, size_t errlen);
int data_base64(const char *text, struct data_store *s, uint64_t *len,
                char *err, size_t errlen);

#endif
