/* nbdstack readiness notification: READY=1 / STOPPING=1 datagrams to
 * $NOTIFY_SOCKET (sd_notify(3) without libsystemd).  When to send them is
 * server.c's business.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "layer.h"
#include "process.h"

/* READY=1 to $NOTIFY_SOCKET ('@' = abstract namespace). */
void
notify_systemd(const char *msg)
{
  const char *path = getenv("NOTIFY_SOCKET");
  struct sockaddr_un sun;
  socklen_t len;
  int fd;

  if (path == NULL || (path[0] != '/' && path[0] != '@') ||
      strlen(path) >= sizeof sun.sun_path)
    return;
  memset(&sun, 0, sizeof sun);
  sun.sun_family = AF_UNIX;
  memcpy(sun.sun_path, path, strlen(path));
  if (path[0] == '@')
    sun.sun_path[0] = '\0';
  len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
  fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd == -1)
    return;
  if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sun,
             len) == -1)
    nbd_warn("sd_notify to %s failed: %s", path, strerror(errno));
  close(fd);
}

