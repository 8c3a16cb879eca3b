/* nbdstack process set-up: the limit on open files, the pidfile, and
 * giving up root once the sockets are bound.  Signals and the order of
 * these steps are server.c's.
 */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "process.h"

/* Every client holds a socket, in the lobby too: raise the soft limit on
 * open files to the hard one (systemd's default soft limit is 1024), and
 * say so when even that is short of what the limits allow. */
void
process_raise_nofile(const struct nbd_config *cfg)
{
  struct rlimit rl;
  uint64_t want = (uint64_t)cfg->max_connections +
                  config_max_handshakes(cfg) + 256;

  if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
    return;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want)
    nbd_warn("the limit on open files (%llu) is below what max-connections "
             "and max-handshakes allow (%llu): raise LimitNOFILE",
             (unsigned long long)rl.rlim_cur, (unsigned long long)want);
}

/* -u/-g: give up root once the sockets are bound. */
int
process_drop_privileges(const struct nbd_config *cfg)
{
  struct passwd *pw = NULL;
  struct group *gr = NULL;
  gid_t gid;

  if (cfg->user == NULL && cfg->group == NULL)
    return 0;
  if (cfg->user && (pw = getpwnam(cfg->user)) == NULL) {
    nbd_error("unknown user '%s'", cfg->user);
    return -1;
  }
  if (cfg->group && (gr = getgrnam(cfg->group)) == NULL) {
    nbd_error("unknown group '%s'", cfg->group);
    return -1;
  }
  gid = gr ? gr->gr_gid : pw ? pw->pw_gid : getgid();
  if (setgroups(1, &gid) == -1 || setgid(gid) == -1) {
    nbd_error("cannot change group to %u: %s", (unsigned)gid,
              strerror(errno));
    return -1;
  }
  if (pw && setuid(pw->pw_uid) == -1) {
    nbd_error("cannot change user to %s: %s", cfg->user, strerror(errno));
    return -1;
  }
  nbd_debug("running as uid %u gid %u", (unsigned)getuid(), (unsigned)getgid());
  return 0;
}

/* A supervisor waits for the pidfile, so one that cannot be written is
 * fatal (as in nbdkit), not a warning it would never see. */
int
process_write_pidfile(const char *path)
{
  FILE *fp = fopen(path, "w");
  int r;

  if (fp == NULL) {
    nbd_error("cannot write pidfile %s: %s", path, strerror(errno));
    return -1;
  }
  r = fprintf(fp, "%ld\n", (long)getpid()) < 0;
  if (fclose(fp) != 0 || r) {
    nbd_error("cannot write pidfile %s: %s", path, strerror(errno));
    unlink(path);
    return -1;
  }
  return 0;
}

