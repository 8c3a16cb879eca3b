/* nbdstack fuzzing: the metrics endpoint's HTTP request parser
 * (httpreq.c), on the input as the first bytes a client sent.
 *
 * Beyond crashes and UB (the parser must never read past len), it checks
 * the property the endpoint relies on when it parses again after each
 * recv: a verdict, once given, does not change when more bytes arrive
 * (every prefix answers MORE or the verdict of the whole, and the first
 * prefix with a verdict is where the whole one was decided); a request
 * as long as the bound has a verdict; and 200 is only ever given to a
 * "GET /metrics" request.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "httpreq.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  /* A copy of exactly size bytes: ASan sees any read past the end. */
  char *buf = malloc(size ? size : 1);
  enum httpreq_result whole, v;
  size_t k, step;

  if (buf == NULL)
    return 0;
  memcpy(buf, data, size);
  whole = httpreq_parse(buf, size);
  if (size >= HTTPREQ_MAX && whole == HTTPREQ_MORE)
    abort();
  if (whole == HTTPREQ_METRICS &&
      (size < 13 || memcmp(buf, "GET /metrics", 12) != 0 ||
       (buf[12] != ' ' && buf[12] != '?')))
    abort();
  /* Every prefix of a short input; a sample of the prefixes of a long
   * one (quadratic otherwise). */
  step = size <= 512 ? 1 : size / 256;
  for (k = 0; k < size; k += step) {
    v = httpreq_parse(buf, k);
    if (v != HTTPREQ_MORE && v != whole)
      abort();
  }
  free(buf);
  return 0;
}
