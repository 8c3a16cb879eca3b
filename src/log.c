/* nbdstack logging: one line per message, to one of three places:
 *
 *  - stderr, prefixed with the program name (the default);
 *  - stderr that is the journal (systemd sets JOURNAL_STREAM to the
 *    device:inode of the stream it connected; when stderr is that very
 *    file), with sd-daemon(3)'s "<N>" priority prefixes instead, so the
 *    journal keeps each line's level;
 *  - a syslog socket (log = syslog or syslog:PATH, default /dev/log):
 *    one datagram per line in the traditional format
 *    "<PRI>Mmm dd hh:mm:ss nbdstack[PID]: message", facility daemon.
 *
 * Debug messages appear only with -v.  Nothing here is on the data path:
 * connections log when they start and end, not per request.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "layer.h"
#include "log.h"

int nbd_verbose;

#define LOG_STDERR  0
#define LOG_JOURNAL 1
#define LOG_SYSLOG  2
#define LOG_NULL    3                   /* nbdkit's --log=null */
#define LOG_SYSLOG_DEFAULT "/dev/log"
#define LOG_FACILITY_DAEMON (3 << 3)

/* Atomic: a layer's thread started at setup (exitwhen's poll) may log
 * while the main thread opens the log. */
static atomic_int log_mode = LOG_STDERR;
static int log_fd = -1;                 /* syslog: connected datagram socket */
static struct sockaddr_un log_addr;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

/* Does JOURNAL_STREAM ("DEV:INO") name the file on fd 2?  A child that
 * inherited the variable but not the stream (stderr redirected) must not
 * write priority prefixes into a file. */
static int
log_stderr_is_journal(void)
{
  const char *js = getenv("JOURNAL_STREAM");
  unsigned long long dev, ino;
  struct stat st;
  char *end;

  if (js == NULL || *js < '0' || *js > '9')
    return 0;
  errno = 0;
  dev = strtoull(js, &end, 10);
  if (*end != ':' || end[1] < '0' || end[1] > '9')
    return 0;
  ino = strtoull(end + 1, &end, 10);
  if (*end != '\0' || errno != 0)
    return 0;
  if (fstat(STDERR_FILENO, &st) == -1)
    return 0;
  return (unsigned long long)st.st_dev == dev &&
         (unsigned long long)st.st_ino == ino;
}

/* (Re)connects the syslog socket; caller holds log_lock (or is alone). */
static int
log_syslog_connect(void)
{
  if (log_fd != -1)
    close(log_fd);
  log_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (log_fd == -1)
    return -1;
  if (connect(log_fd, (struct sockaddr *)&log_addr, sizeof log_addr) == -1) {
    int e = errno;
    close(log_fd);
    log_fd = -1;
    errno = e;
    return -1;
  }
  return 0;
}

/* The syslog socket spec names, or NULL for stderr; -1 when spec is not
 * a valid `log` value.  Shared by the settings' check and log_open. */
static int
log_parse(const char *spec, const char **path, char *err, size_t errlen)
{
  *path = NULL;
  if (spec == NULL || strcmp(spec, "stderr") == 0 || strcmp(spec, "null") == 0)
    return 0;
  *path = LOG_SYSLOG_DEFAULT;
  if (strncmp(spec, "syslog:", 7) == 0)
    *path = spec + 7;
  else if (strcmp(spec, "syslog") != 0) {
    snprintf(err, errlen, "invalid value '%.64s' (expected stderr, syslog, "
             "syslog:/PATH or null)", spec);
    return -1;
  }
  if ((*path)[0] != '/' || strlen(*path) >= sizeof log_addr.sun_path) {
    snprintf(err, errlen, "invalid syslog socket '%.64s' (expected an "
             "absolute path of at most %zu bytes)", *path,
             sizeof log_addr.sun_path - 1);
    return -1;
  }
  return 0;
}

int
log_check(const char *spec, char *err, size_t errlen)
{
  const char *path;

  return log_parse(spec, &path, err, errlen);
}

int
log_open(const char *spec, char *err, size_t errlen)
{
  const char *path;

  /* First, so that an error about spec reaches the journal right. */
  log_mode = log_stderr_is_journal() ? LOG_JOURNAL : LOG_STDERR;
  if (log_parse(spec, &path, err, errlen) == -1)
    return -1;
  if (spec != NULL && strcmp(spec, "null") == 0)
    log_mode = LOG_NULL;
  if (path == NULL)
    return 0;
  memset(&log_addr, 0, sizeof log_addr);
  log_addr.sun_family = AF_UNIX;
  memcpy(log_addr.sun_path, path, strlen(path));
  if (log_syslog_connect() == -1) {
    snprintf(err, errlen, "cannot connect to the syslog socket %s: %s", path,
             strerror(errno));
    return -1;
  }
  log_mode = LOG_SYSLOG;
  return 0;
}

/* One datagram; a syslog daemon that restarted gets a new connect.  If
 * the socket is gone for good the line goes to stderr, not nowhere. */
static void
log_syslog(int sev, const char *level, const char *line)
{
  char msg[1200], stamp[32];
  struct tm tm;
  time_t now = time(NULL);
  int n;

  localtime_r(&now, &tm);
  strftime(stamp, sizeof stamp, "%b %e %H:%M:%S", &tm);
  n = snprintf(msg, sizeof msg, "<%d>%s nbdstack[%ld]: %s%s",
               LOG_FACILITY_DAEMON | sev, stamp, (long)getpid(), level, line);
  if (n < 0)
    return;
  if ((size_t)n >= sizeof msg)
    n = sizeof msg - 1;
  pthread_mutex_lock(&log_lock);
  if (log_fd == -1 || send(log_fd, msg, (size_t)n, MSG_NOSIGNAL) == -1) {
    if (log_syslog_connect() == -1 ||
        send(log_fd, msg, (size_t)n, MSG_NOSIGNAL) == -1)
      fprintf(stderr, "nbdstack: %s%s\n", level, line);
  }
  pthread_mutex_unlock(&log_lock);
}

/* The whole line, newline included, in one write(2): an unbuffered
 * stderr would otherwise write it in pieces (musl: 80 bytes at a time,
 * then the newline), and the output of other processes on the same
 * stream (a --run command's, a shell's) could land inside it. */
static void
log_write_line(const char *text, size_t len)
{
  ssize_t n;

  while (len > 0) {
    n = write(STDERR_FILENO, text, len);
    if (n == -1 && errno == EINTR)
      continue;
    if (n <= 0)
      return;
    text += n;
    len -= (size_t)n;
  }
}

static void
log_vprint(int sev, const char *level, const char *fmt, va_list ap)
{
  char line[1024], out[1100];
  int n;

  if (log_mode == LOG_NULL)
    return;
  vsnprintf(line, sizeof line, fmt, ap);
  if (log_mode == LOG_SYSLOG) {
    log_syslog(sev, level, line);
    return;
  }
  if (log_mode == LOG_JOURNAL)
    n = snprintf(out, sizeof out, "<%d>%s%s\n", sev, level, line);
  else
    n = snprintf(out, sizeof out, "nbdstack: %s%s\n", level, line);
  if (n < 0)
    return;
  if ((size_t)n >= sizeof out) {
    n = sizeof out - 1;
    out[n - 1] = '\n';
  }
  log_write_line(out, (size_t)n);
}

/* Severities of syslog(3): LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG. */
#define LOG_FN(fn, sev, level, cond)                                        \
  void fn(const char *fmt, ...)                                             \
  {                                                                         \
    va_list ap;                                                             \
    if (!(cond))                                                            \
      return;                                                               \
    va_start(ap, fmt);                                                      \
    log_vprint(sev, level, fmt, ap);                                        \
    va_end(ap);                                                             \
  }

LOG_FN(nbd_error, 3, "error: ", 1)
LOG_FN(nbd_warn, 4, "warning: ", 1)
LOG_FN(nbd_info, 6, "", 1)
LOG_FN(nbd_debug, 7, "debug: ", nbd_verbose)
