/* nbdstack URIs: the one builder of NBD URIs (doc/uri.md of the NBD
 * project), for --run (captive.c), --print-uri and the startup log
 * (server.c).  It does not parse URIs.
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "uri.h"

/* Appends s, percent-encoding all but unreserved characters (and '/',
 * kept for socket paths). */
static void
uri_append(char *uri, size_t len, const char *s)
{
  size_t n = strlen(uri);
  static const char hex[] = "0123456789ABCDEF";

  for (; *s && n + 4 < len; s++) {
    unsigned char ch = (unsigned char)*s;
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
        (ch >= '0' && ch <= '9') || strchr("-._~/", ch))
      uri[n++] = (char)ch;
    else {
      uri[n++] = '%';
      uri[n++] = hex[ch >> 4];
      uri[n++] = hex[ch & 15];
    }
  }
  uri[n] = '\0';
}

void
uri_build(char *uri, size_t len, const struct nbd_listen *l,
          const char *name, int tls)
{
  const char *scheme = tls ? "nbds" : "nbd";

  if (l->kind == NBD_LISTEN_UNIX) {
    snprintf(uri, len, "%s+unix:///", scheme);
    uri_append(uri, len, name);
    if (strlen(uri) + 9 < len)
      strcat(uri, "?socket=");
    uri_append(uri, len, l->path);
  } else {
    const char *h = l->host && *l->host ? l->host : "localhost";
    int v6 = strchr(h, ':') != NULL;
    snprintf(uri, len, "%s://%s%s%s:%s/", scheme, v6 ? "[" : "", h,
             v6 ? "]" : "", l->port);
    uri_append(uri, len, name);
  }
}

int
uri_of_socket(char *uri, size_t len, int fd, const char *name, int tls)
{
  struct sockaddr_storage ss;
  socklen_t sslen = sizeof ss;
  char host[INET6_ADDRSTRLEN] = "", port[16] = "";
  struct nbd_listen l;

  memset(&ss, 0, sizeof ss);
  memset(&l, 0, sizeof l);
  if (getsockname(fd, (struct sockaddr *)&ss, &sslen) == -1)
    return -1;
  if (ss.ss_family == AF_UNIX) {
    const struct sockaddr_un *sun = (const struct sockaddr_un *)&ss;
    if (sun->sun_path[0] == '\0')
      return -1;                /* unnamed or abstract: no path to give */
    l.kind = NBD_LISTEN_UNIX;
    l.path = (char *)sun->sun_path;
  } else if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
    if (getnameinfo((const struct sockaddr *)&ss, sslen, host, sizeof host,
                    port, sizeof port, NI_NUMERICHOST | NI_NUMERICSERV))
      return -1;
    /* Every address: a client on this host reaches it as localhost. */
    if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0)
      host[0] = '\0';
    l.kind = NBD_LISTEN_TCP;
    l.host = host;
    l.port = port;
  } else
    return -1;
  uri_build(uri, len, &l, name, tls);
  return 0;
}
