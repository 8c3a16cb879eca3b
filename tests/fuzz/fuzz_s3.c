/* nbdstack fuzzing: the s3 backend's parsers of what a store answers
 * (backends/s3/http.c): the HTTP response head, chunk-size lines and the
 * XML elements of LIST and error bodies, each on the whole input.
 *
 * Beyond crashes and UB, it checks what the client relies on: a head
 * parse never claims more bytes than it was given and gives a status of
 * 100-599; a chunk line is within the input; an XML value fits its
 * buffer, and the position only moves forward and stays within the input.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../backends/s3/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static const char *const tags[] = {
    "Key", "IsTruncated", "NextContinuationToken", "Code", "Message",
  };
  const char *buf = (const char *)data;
  struct s3_http_head h;
  uint64_t n;
  size_t i;
  int r;

  r = s3_http_parse_head(buf, size, &h);
  if (r > 0 && ((size_t)r > size || h.status < 100 || h.status > 599 ||
                strlen(h.etag) >= sizeof h.etag))
    abort();
  r = s3_http_parse_chunk_line(buf, size, &n);
  if (r > 0 && (size_t)r > size)
    abort();
  for (i = 0; i < sizeof tags / sizeof tags[0]; i++) {
    char out[64];
    size_t pos = 0, before;
    int k = 0;
    do {
      before = pos;
      k = s3_xml_next(buf, size, &pos, tags[i], out, sizeof out);
      if (k == 1 && (pos <= before || pos > size || strlen(out) >= sizeof out))
        abort();
    } while (k == 1);
  }
  return 0;
}
