/* nbdstack process set-up: the limit on open files, the pidfile, and
 * giving up root once the sockets are bound.  Signals and the order of
 * these steps are server.c's.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
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

/* -u/-g take a name or a number; 0, or -1 (logged). */
static int
process_parse_id(const char *s, unsigned long *out)
{
  char *end;

  if (s[0] < '0' || s[0] > '9')
    return -1;
  errno = 0;
  *out = strtoul(s, &end, 10);
  return errno || *end || *out >= (unsigned long)(uid_t)-1 ? -1 : 0;
}

static int
process_find_ids(const struct nbd_config *cfg, uid_t *uid, gid_t *gid,
                 int *have_uid)
{
  struct passwd *pw = NULL;
  struct group *gr;
  unsigned long n;

  *have_uid = 0;
  *gid = getgid();
  if (cfg->user) {
    if ((pw = getpwnam(cfg->user)) == NULL &&
        process_parse_id(cfg->user, &n) == 0)
      pw = getpwuid((uid_t)n);
    if (pw) {
      *uid = pw->pw_uid;
      *gid = pw->pw_gid;
    } else if (process_parse_id(cfg->user, &n) == 0) {
      *uid = (uid_t)n;
      if (cfg->group == NULL) {
        nbd_error("user %s has no passwd entry: give its group too (-g)",
                  cfg->user);
        return -1;
      }
    } else {
      nbd_error("unknown user '%s'", cfg->user);
      return -1;
    }
    *have_uid = 1;
  }
  if (cfg->group) {
    if ((gr = getgrnam(cfg->group)) != NULL)
      *gid = gr->gr_gid;
    else if (process_parse_id(cfg->group, &n) == 0)
      *gid = (gid_t)n;
    else {
      nbd_error("unknown group '%s'", cfg->group);
      return -1;
    }
  }
  return 0;
}

/* What we made as root (Unix sockets, the pidfile, -U -'s directory)
 * lives in directories the user we become may not write to, so removing
 * it at exit is left to a child that keeps root: it does nothing but
 * wait for the server to close its end of a pipe (exit, crash or kill),
 * then removes exactly the paths it was given at fork, no others. */
static pid_t process_cleaner = -1;
static int process_cleaner_fd = -1;

static void
process_cleaner_main(int rfd, char **paths, size_t n, const char *dir)
{
  struct sigaction sa;
  char c;
  size_t i;
  int fd;

  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_IGN;     /* a group-wide SIGTERM/SIGHUP is not ours */
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  sigaction(SIGPIPE, &sa, NULL);
  /* Hold no listener, no export's file or lock past their close. */
  for (fd = 3; fd < 65536; fd++)
    if (fd != rfd && fcntl(fd, F_GETFD) != -1)
      close(fd);
  prctl(PR_SET_NAME, "nbdstack-clean", 0, 0, 0);
  while (read(rfd, &c, 1) == -1 && errno == EINTR)
    ;
  for (i = 0; i < n; i++)
    unlink(paths[i]);
  if (dir)
    rmdir(dir);
  _exit(0);
}

static int
process_start_cleaner(const struct nbd_config *cfg,
                      const char *const *paths, size_t n)
{
  int p[2];
  pid_t pid;

  if (n == 0 && cfg->tmpdir == NULL)
    return 0;
  if (pipe2(p, O_CLOEXEC) == -1) {
    nbd_error("pipe: %s", strerror(errno));
    return -1;
  }
  pid = fork();
  if (pid == -1) {
    nbd_error("fork: %s", strerror(errno));
    close(p[0]);
    close(p[1]);
    return -1;
  }
  if (pid == 0) {
    close(p[1]);
    process_cleaner_main(p[0], (char **)paths, n, cfg->tmpdir);
  }
  close(p[0]);
  process_cleaner = pid;
  process_cleaner_fd = p[1];
  return 0;
}

void
process_cleanup_done(void)
{
  int st;

  if (process_cleaner == -1)
    return;
  close(process_cleaner_fd);
  while (waitpid(process_cleaner, &st, 0) == -1 && errno == EINTR)
    ;
  process_cleaner = -1;
}

int
process_drop_privileges(const struct nbd_config *cfg,
                        const char *const *paths, size_t npaths)
{
  uid_t uid = 0;
  gid_t gid;
  int have_uid;

  if (cfg->user == NULL && cfg->group == NULL)
    return 0;
  if (process_find_ids(cfg, &uid, &gid, &have_uid) == -1)
    return -1;
  if (process_start_cleaner(cfg, paths, npaths) == -1)
    return -1;
  if (setgroups(1, &gid) == -1 || setgid(gid) == -1) {
    nbd_error("cannot change group to %u: %s", (unsigned)gid,
              strerror(errno));
    return -1;
  }
  if (have_uid && setuid(uid) == -1) {
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

