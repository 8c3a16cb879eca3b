/* nbdstack HTTP request parser (httpreq.c) for the metrics endpoint:
 * decides what one request asks, from the bytes read so far. */
#ifndef NBDSTACK_HTTPREQ_H
#define NBDSTACK_HTTPREQ_H

#include <stddef.h>

/* The most a request may take, request line and headers together: a
 * scrape is ~200 bytes; anything longer is refused with 400. */
#define HTTPREQ_MAX 8192
/* Header lines at most. */
#define HTTPREQ_MAX_HEADERS 64

enum httpreq_result {
  HTTPREQ_MORE,                 /* no verdict yet: read more */
  HTTPREQ_METRICS,              /* GET /metrics: 200 */
  HTTPREQ_NOT_FOUND,            /* GET of another path: 404 */
  HTTPREQ_METHOD,               /* a well-formed request, not GET: 405 */
  HTTPREQ_BAD,                  /* anything else: 400 */
};

/* The verdict on buf[0..len), the first len bytes of a connection.
 * Never reads past len; a verdict other than MORE does not change when
 * more bytes arrive.  len >= HTTPREQ_MAX without a verdict is BAD. */
enum httpreq_result httpreq_parse(const char *buf, size_t len);

#endif
