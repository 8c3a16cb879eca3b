/* nbdstack fuzzing: the s3 backend's parsers of what a store answers
 * (backends/s3/http.c): the HTTP response head, chunk-size lines and the
 * XML elements of LIST and error bodies, each on the whole input; the
 * name of a listed key (s3_block_key); and the reader of the shared AWS
 * files (backends/s3/awsconf.c) on the input as a file's text.
 *
 * Beyond crashes and UB, it checks what the client relies on: a head
 * parse never claims more bytes than it was given and gives a status of
 * 100-599; a chunk line is within the input; an XML value fits its
 * buffer, and the position only moves forward and stays within the input;
 * a block key is the prefix and 16 lowercase hex digits that print back
 * as the same name; a profile's values are NUL-terminated in their fields.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <stdio.h>

#include "../../backends/s3/awsconf.h"
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
  {
    char *text = malloc(size + 1), name[40];
    struct s3_aws_profile *p = malloc(sizeof *p);
    static const char *const profiles[] = { "default", "p", "with space" };
    char err[200];
    uint64_t blk;
    if (text == NULL || p == NULL)
      abort();
    memcpy(text, buf, size);
    text[size] = '\0';
    if (s3_block_key(text, "d/", &blk)) {
      snprintf(name, sizeof name, "d/%016llx", (unsigned long long)blk);
      if (strcmp(name, text) != 0)
        abort();
    }
    for (i = 0; i < 6; i++) {
      r = s3_aws_profile_parse(text, profiles[i % 3], (int)(i / 3), p, err,
                               sizeof err);
      if (r == 0 && (strnlen(p->access, sizeof p->access) == sizeof p->access ||
                     strnlen(p->secret, sizeof p->secret) == sizeof p->secret ||
                     strnlen(p->token, sizeof p->token) == sizeof p->token ||
                     strnlen(p->region, sizeof p->region) == sizeof p->region))
        abort();
      if (r < 0 && strnlen(err, sizeof err) == sizeof err)
        abort();
    }
    free(p);
    free(text);
  }
  return 0;
}
