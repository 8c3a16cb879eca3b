/* nbdstack HTTP request parser: the one input of the metrics endpoint
 * (metrics_http.c) that comes from the network.  A byte-at-a-time state
 * machine over what was read so far, so that junk gets its 400 at the
 * first bad byte instead of after a timeout.
 *
 * It accepts exactly what RFC 9112 calls a request without a body:
 *   request-line = method SP request-target SP HTTP-version CRLF
 *   *( field-name ":" OWS field-value OWS CRLF ) CRLF
 * with HTTP/1.0 or HTTP/1.1 (1.1 needs Host, RFC 9112 3.2), a bare LF
 * taken for CRLF (RFC 9112 2.2), an origin-form target.  A request that
 * announces a body (Content-Length other than 0, Transfer-Encoding) is
 * refused: GET has none here, and we never read one.
 *
 * It does not decode percent escapes, parse a query, or keep anything:
 * the answer is one of five verdicts.
 */
#include <string.h>
#include <strings.h>

#include "httpreq.h"

#define HTTPREQ_MAX_METHOD 16

enum httpreq_state {
  S_METHOD, S_TARGET, S_VERSION, S_RL_LF,
  S_LINE_START, S_NAME, S_VALUE, S_H_LF, S_END_LF,
};

struct httpreq {
  size_t method_len;
  size_t target, target_len;
  size_t ver;                   /* bytes of "HTTP/1.x" matched */
  int minor;
  size_t name, name_len, value;
  unsigned nheaders;
  int host, body;
};

/* RFC 9110 5.6.2 token characters. */
static int
httpreq_tchar(unsigned char c)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || (c != '\0' && strchr("!#$%&'*+-.^_`|~",
                                                        c) != NULL);
}

/* A field value byte: visible, space, tab or obs-text. */
static int
httpreq_vchar(unsigned char c)
{
  return (c >= 0x20 && c != 0x7f) || c == '\t';
}

/* One complete header line: what it means for us. */
static int
httpreq_header(struct httpreq *h, const char *buf, size_t end)
{
  const char *name = buf + h->name;
  const char *v = buf + h->value;
  size_t vlen = end - h->value;

  while (vlen > 0 && (*v == ' ' || *v == '\t'))
    v++, vlen--;
  while (vlen > 0 && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t' ||
                      v[vlen - 1] == '\r'))
    vlen--;
  if (++h->nheaders > HTTPREQ_MAX_HEADERS)
    return -1;
  if (h->name_len == 4 && strncasecmp(name, "host", 4) == 0) {
    if (h->host)
      return -1;                /* RFC 9112 3.2: more than one */
    h->host = 1;
  } else if (h->name_len == 14 &&
             strncasecmp(name, "content-length", 14) == 0) {
    if (vlen != 1 || *v != '0')
      h->body = 1;
  } else if (h->name_len == 17 &&
             strncasecmp(name, "transfer-encoding", 17) == 0)
    h->body = 1;
  return 0;
}

static enum httpreq_result
httpreq_verdict(const struct httpreq *h, const char *buf)
{
  static const char path[] = "/metrics";
  const char *t = buf + h->target;
  size_t plen = sizeof path - 1;

  if ((h->minor == 1 && !h->host) || h->body)
    return HTTPREQ_BAD;
  if (t[0] != '/')
    return HTTPREQ_BAD;         /* origin-form only (no proxy forms) */
  if (h->method_len != 3 || memcmp(buf, "GET", 3) != 0)
    return HTTPREQ_METHOD;
  if (h->target_len >= plen && memcmp(t, path, plen) == 0 &&
      (h->target_len == plen || t[plen] == '?'))
    return HTTPREQ_METRICS;
  return HTTPREQ_NOT_FOUND;
}

enum httpreq_result
httpreq_parse(const char *buf, size_t len)
{
  static const char version[] = "HTTP/1.";
  enum httpreq_state s = S_METHOD;
  struct httpreq h;
  size_t i;

  memset(&h, 0, sizeof h);
  if (len > HTTPREQ_MAX)
    len = HTTPREQ_MAX;
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)buf[i];
    switch (s) {
    case S_METHOD:
      if (c == ' ' && h.method_len > 0) {
        s = S_TARGET;
        h.target = i + 1;
      } else if (!httpreq_tchar(c) || ++h.method_len > HTTPREQ_MAX_METHOD)
        return HTTPREQ_BAD;
      break;
    case S_TARGET:
      if (c == ' ' && h.target_len > 0)
        s = S_VERSION;
      else if (c <= 0x20 || c >= 0x7f)
        return HTTPREQ_BAD;
      else
        h.target_len++;
      break;
    case S_VERSION:
      if (h.ver < sizeof version - 1) {
        if (c != (unsigned char)version[h.ver++])
          return HTTPREQ_BAD;
      } else if (h.ver == sizeof version - 1) {
        if (c != '0' && c != '1')
          return HTTPREQ_BAD;   /* HTTP/1.0 and 1.1 only */
        h.minor = c - '0';
        h.ver++;
      } else if (c == '\r')
        s = S_RL_LF;
      else if (c == '\n')
        s = S_LINE_START;
      else
        return HTTPREQ_BAD;
      break;
    case S_RL_LF:
    case S_H_LF:
      if (c != '\n')
        return HTTPREQ_BAD;
      if (s == S_H_LF && httpreq_header(&h, buf, i - 1) == -1)
        return HTTPREQ_BAD;
      s = S_LINE_START;
      break;
    case S_LINE_START:
      if (c == '\r')
        s = S_END_LF;
      else if (c == '\n')
        return httpreq_verdict(&h, buf);
      else if (httpreq_tchar(c)) {
        s = S_NAME;
        h.name = i;
        h.name_len = 1;
      } else
        return HTTPREQ_BAD;     /* obsolete line folding, junk */
      break;
    case S_NAME:
      if (c == ':') {
        s = S_VALUE;
        h.value = i + 1;
      } else if (httpreq_tchar(c))
        h.name_len++;
      else
        return HTTPREQ_BAD;     /* no space before ':' (RFC 9112 5.1) */
      break;
    case S_VALUE:
      if (c == '\r')
        s = S_H_LF;
      else if (c == '\n') {
        if (httpreq_header(&h, buf, i) == -1)
          return HTTPREQ_BAD;
        s = S_LINE_START;
      } else if (!httpreq_vchar(c))
        return HTTPREQ_BAD;
      break;
    case S_END_LF:
      if (c != '\n')
        return HTTPREQ_BAD;
      return httpreq_verdict(&h, buf);
    }
  }
  return len >= HTTPREQ_MAX ? HTTPREQ_BAD : HTTPREQ_MORE;
}
