/* nbdstack socket activation: the listening sockets systemd (or a client
 * such as libnbd's "nbdinfo -- [ nbdstack ... ]") passed as fds 3..3+N-1
 * (sd_listen_fds(3) without libsystemd).  It binds nothing (sockets.c).
 */
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "sockets.h"

/* systemd socket activation: LISTEN_PID must be us; fds 3..3+N-1. */
int
activation_fds(int *fds, int max)
{
  const char *pid = getenv("LISTEN_PID"), *nfds = getenv("LISTEN_FDS");
  char *end;
  long n, i;

  if (pid == NULL || nfds == NULL)
    return 0;
  if (strtol(pid, &end, 10) != (long)getpid() || *end)
    return 0;
  n = strtol(nfds, &end, 10);
  if (*end || n <= 0 || n > max)
    return 0;
  unsetenv("LISTEN_PID");
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_FDNAMES");
  /* As nbdkit does: a server that a client started itself through socket
   * activation (libnbd's "nbdinfo -- [ nbdstack ... ]") ends with that
   * client, which does not always signal it (not when the handshake
   * failed).  Under systemd the parent is PID 1, which never goes. */
  {
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) == 0 && getppid() != parent)
      raise(SIGTERM);           /* it went before we asked */
  }
  for (i = 0; i < n; i++) {
    fds[i] = 3 + (int)i;
    fcntl(fds[i], F_SETFD, FD_CLOEXEC);
  }
  return (int)n;
}

