/* nbdstack listen addresses: parses the value of `listen = ...` (config.c)
 * and the addresses -U, -i and -p make (cmdline.c) into a struct
 * nbd_listen; a bad one gets a one-line message for the caller to prefix
 * with its file:line or option.
 *
 * Accepted forms: unix:/path or /path (at most sizeof sun_path - 1 bytes);
 * tcp:HOST:PORT, tcp:[IPv6]:PORT, tcp:PORT, tcp:HOST (port 10809), or
 * HOST:PORT without the prefix.  An empty host or "*" means all addresses;
 * a port is 1-65535 or a service name.
 *
 * It does not resolve names or open sockets: host and port stay text for
 * getaddrinfo in server.c, which also gives "localhost" its meaning (both
 * loopbacks).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "listen.h"

#define LISTEN_UNIX_MAX   107         /* sizeof sun_path - 1 */
#define LISTEN_FORMS \
  "unix:/path, tcp:HOST:PORT, tcp:[IPv6]:PORT, tcp:PORT, tcp:HOST or /path"

/* Letters, digits, '_', '-' and '.': the bytes of host and service names
 * (also those of a config key, config.c). */
static int
listen_isnamechar(int c)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
}

void
listen_clear(struct nbd_listen *l)
{
  free(l->path);
  free(l->host);
  free(l->port);
  memset(l, 0, sizeof *l);
}

static int
listen_unix(const char *path, struct nbd_listen *out, char *err,
            size_t errlen)
{
  if (*path == '\0') {
    snprintf(err, errlen, "missing socket path (expected unix:/path)");
    return -1;
  }
  if (strlen(path) > LISTEN_UNIX_MAX) {
    snprintf(err, errlen, "unix socket path is %zu bytes, longer than the "
             "limit of %d", strlen(path), LISTEN_UNIX_MAX);
    return -1;
  }
  out->kind = NBD_LISTEN_UNIX;
  out->path = strdup(path);
  return out->path ? 0 : -1;
}

/* 1..65535, or a service name such as "nbd" (for getaddrinfo). */
static int
listen_port(const char *s, size_t len, char **out, char *err, size_t errlen)
{
  unsigned long v = 0;
  size_t i, digits = 0, alnum = 0;

  for (i = 0; i < len; i++) {
    digits += s[i] >= '0' && s[i] <= '9';
    alnum += listen_isnamechar((unsigned char)s[i]) && s[i] != '.';
  }
  if (len > 0 && digits == len) {
    for (i = 0; i < len && v <= 65535; i++)
      v = v * 10 + (unsigned long)(s[i] - '0');
    if (v >= 1 && v <= 65535) {
      char buf[8];
      snprintf(buf, sizeof buf, "%lu", v);
      *out = strdup(buf);
      return *out ? 0 : -1;
    }
  } else if (len > 0 && len <= 32 && alnum == len && digits < len &&
             ((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z'))) {
    *out = strndup(s, len);
    return *out ? 0 : -1;
  }
  snprintf(err, errlen, "invalid port '%.*s' (expected 1-65535 or a "
           "service name)", (int)(len > 64 ? 64 : len), s);
  return -1;
}

/* Host names and addresses: letters, digits, '.', '-', '_', ':', '%'. */
static int
listen_host(const char *s, size_t len, char **out, char *err, size_t errlen)
{
  size_t i;

  if (len == 0 || (len == 1 && s[0] == '*')) {
    *out = NULL;                /* all addresses */
    return 0;
  }
  for (i = 0; i < len; i++)
    if (!listen_isnamechar((unsigned char)s[i]) && s[i] != ':' &&
        s[i] != '%') {
      snprintf(err, errlen, "invalid character '%c' in host '%.*s'",
               (unsigned char)s[i] >= 0x20 ? s[i] : '?',
               (int)(len > 64 ? 64 : len), s);
      return -1;
    }
  *out = strndup(s, len);
  return *out ? 0 : -1;
}

static int
listen_tcp(const char *s, struct nbd_listen *out, char *err, size_t errlen)
{
  const char *host = s, *port = NULL, *colon;
  size_t hostlen;

  out->kind = NBD_LISTEN_TCP;
  if (*s == '\0') {
    snprintf(err, errlen, "missing host or port (expected %s)",
             LISTEN_FORMS);
    return -1;
  }
  if (*s == '[') {
    const char *close = strchr(s, ']');
    if (close == NULL || close == s + 1) {
      snprintf(err, errlen, close ? "empty IPv6 address in []" :
               "missing ']' after the IPv6 address");
      return -1;
    }
    host = s + 1;
    hostlen = (size_t)(close - host);
    if (close[1] == ':')
      port = close + 2;
    else if (close[1] != '\0') {
      snprintf(err, errlen, "unexpected text after ']': '%.40s' (expected "
               "tcp:[IPv6]:PORT)", close + 1);
      return -1;
    }
  } else if ((colon = strchr(s, ':')) != NULL) {
    if (strchr(colon + 1, ':')) {
      snprintf(err, errlen, "'%.64s': an IPv6 address needs brackets, "
               "as in tcp:[::1]:10809", s);
      return -1;
    }
    hostlen = (size_t)(colon - s);
    port = colon + 1;
  } else if (strspn(s, "0123456789") == strlen(s)) {
    hostlen = 0;                /* tcp:PORT */
    port = s;
  } else
    hostlen = strlen(s);        /* tcp:HOST */
  if (listen_host(host, hostlen, &out->host, err, errlen) == -1)
    return -1;
  if (port == NULL)
    port = LISTEN_DEFAULT_PORT;
  return listen_port(port, strlen(port), &out->port, err, errlen);
}

int
listen_parse(const char *text, struct nbd_listen *out, char *err,
             size_t errlen)
{
  int r;

  memset(out, 0, sizeof *out);
  snprintf(err, errlen, "out of memory");
  if (*text == '\0') {
    snprintf(err, errlen, "empty address (expected %s)", LISTEN_FORMS);
    return -1;
  }
  if (strncmp(text, "unix:", 5) == 0)
    r = listen_unix(text + 5, out, err, errlen);
  else if (text[0] == '/')
    r = listen_unix(text, out, err, errlen);
  else
    r = listen_tcp(strncmp(text, "tcp:", 4) == 0 ? text + 4 : text, out,
                   err, errlen);
  if (r == -1)
    listen_clear(out);
  return r;
}
