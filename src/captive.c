/* nbdstack captive mode (--run, as nbdkit's): once the server is ready,
 * a shell command runs with the server's URI in its environment; the
 * server stops when it exits and exits with its status.  Starting and
 * stopping the server around it is server.c's.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "layer.h"
#include "process.h"
#include "uri.h"

/* --run: starts the command with the first listener's address in its
 * environment, as nbdkit does.  Returns its pid, or -1. */
pid_t
captive_start(const struct nbd_config *cfg)
{
  const struct nbd_listen *l = &cfg->listens[0];
  const char *name = cfg->exports ? cfg->exports->name : "";
  char uri[URI_MAX];
  pid_t pid;

  uri_build(uri, sizeof uri, l, name, cfg->exports &&
            config_export_tls(cfg, cfg->exports) == NBD_TLS_REQUIRE);
  pid = fork();
  if (pid == -1) {
    nbd_error("--run: fork: %s", strerror(errno));
    return -1;
  }
  if (pid == 0) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGCHLD, &sa, NULL);
    setenv("uri", uri, 1);
    setenv("nbd", uri, 1);
    setenv("exportname", name, 1);
    if (l->kind == NBD_LISTEN_UNIX)
      setenv("unixsocket", l->path, 1);
    else
      setenv("port", l->port, 1);
    execl("/bin/sh", "sh", "-c", cfg->run, (char *)NULL);
    fprintf(stderr, "nbdstack: --run: /bin/sh: %s\n", strerror(errno));
    _exit(127);
  }
  return pid;
}

/* The --run command's exit status as a shell reports it (128 + signal). */
int
captive_status(pid_t pid)
{
  pid_t r;
  int st;

  /* Stopped by a signal while the command still runs: pass it on. */
  while ((r = waitpid(pid, &st, WNOHANG)) == -1 && errno == EINTR)
    ;
  if (r == 0) {
    kill(pid, SIGTERM);
    while ((r = waitpid(pid, &st, 0)) == -1 && errno == EINTR)
      ;
  }
  if (r == -1)
    return 1;
  if (WIFEXITED(st))
    return WEXITSTATUS(st);
  return WIFSIGNALED(st) ? 128 + WTERMSIG(st) : 1;
}

