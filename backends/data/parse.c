/* nbdstack backend data: the data= language (nbdkit's data format, the
 * subset in docs/backends/data.md) and base64=.
 *
 * A recursive-descent parser that evaluates as it reads: each expression
 * becomes a value (bytes, or for a large group a store of its own), which
 * is written at the current offset as many times as its "*N" says, cut
 * by any "[N:M]" slices (postfix, left to right, with the repeats).  A
 * group "( ... )" is evaluated in its own store with offsets relative to
 * its start; its length is the highest offset reached inside it, and it is
 * copied whole, zeros included, as nbdkit does.  It does not do variables,
 * names or scripts: those are refused with their offset.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "layer.h"
#include "parse.h"

#define DATA_MAX_DEPTH   64                     /* nested groups */
#define DATA_FLAT_MAX    ((uint64_t)1 << 20)    /* groups kept as bytes */
#define DATA_FILE_MAX    ((uint64_t)1 << 30)    /* <FILE read in whole */
#define DATA_OFF_MAX     ((uint64_t)INT64_MAX)  /* the largest disk */

struct data_parser {
  const char *text;
  size_t pos;
  int depth;
  char *err;
  size_t errlen;
};

/* An evaluated expression: buf (len bytes) or, for a large group, store. */
struct data_value {
  unsigned char *buf;
  struct data_store *store;
  uint64_t len;
};

static int __attribute__((format(printf, 3, 4)))
data_fail(struct data_parser *p, size_t at, const char *fmt, ...)
{
  char msg[256];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  snprintf(p->err, p->errlen, "data: at offset %zu: %s", at, msg);
  return -1;
}

/* A number, a word or a file name ends at one of these. */
static int
data_is_end(char c)
{
  return c == '\0' || c == ' ' || c == '\t' || c == '\n' || c == '\r' ||
         c == '\f' || c == '\v' || c == '(' || c == ')' || c == '*' ||
         c == '#' || c == '[';
}

static size_t
data_token_len(const char *s)
{
  size_t n = 0;

  while (!data_is_end(s[n]))
    n++;
  return n;
}

/* "unknown token 'TOK'", the token cut at 32 characters. */
static int
data_unknown(struct data_parser *p, size_t at)
{
  size_t n = data_token_len(p->text + at);

  if (n == 0)
    n = 1;
  return data_fail(p, at, "unknown token '%.*s%s'", (int)(n > 32 ? 32 : n),
                   p->text + at, n > 32 ? "..." : "");
}

static void
data_skip_space(struct data_parser *p)
{
  for (;;) {
    char c = p->text[p->pos];
    if (c == '#') {
      while (p->text[p->pos] && p->text[p->pos] != '\n')
        p->pos++;
    }
    else if (c && data_is_end(c) && c != '(' && c != ')' && c != '*' &&
             c != '[')
      p->pos++;
    else
      return;
  }
}

/* A whole token at pos as a number: decimal, 0x hex or 0 octal. */
static int
data_number(struct data_parser *p, uint64_t *out)
{
  size_t at = p->pos, n = data_token_len(p->text + at), i = 0;
  const char *s = p->text + at;
  unsigned base = 10;
  uint64_t v = 0;

  if (n == 0)
    return data_fail(p, at, "expected a number");
  if (s[0] == '-' && s[1] >= '0' && s[1] <= '9')
    return data_fail(p, at, "negative numbers are not allowed: '%.*s'",
                     (int)n, s);
  if (n > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
    base = 16, i = 2;
  else if (n > 1 && s[0] == '0')
    base = 8, i = 1;
  for (; i < n; i++) {
    unsigned d;
    char c = s[i];

    if (c >= '0' && c <= '9')
      d = (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f')
      d = (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F')
      d = (unsigned)(c - 'A' + 10);
    else
      d = 99;
    if (d >= base)
      return data_unknown(p, at);
    if (v > (UINT64_MAX - d) / base)
      return data_fail(p, at, "number '%.*s' is too large", (int)n, s);
    v = v * base + d;
  }
  p->pos = at + n;
  *out = v;
  return 0;
}

static int
data_value_bytes(struct data_value *v, uint64_t len)
{
  v->len = len;
  v->buf = malloc(len ? len : 1);
  return v->buf ? 0 : -1;
}

/* le16:N ... be64:N at pos (the prefix already matched). */
static int
data_word(struct data_parser *p, struct data_value *v)
{
  const char *s = p->text + p->pos;
  unsigned bytes = (s[2] == '1' ? 2 : s[2] == '3' ? 4 : 8), i;
  int le = s[0] == 'l';
  size_t at;
  uint64_t w = 0;

  p->pos += 5;
  at = p->pos;
  if (data_number(p, &w) == -1)
    return -1;
  if (bytes < 8 && w >> (bytes * 8))
    return data_fail(p, at, "%.4s word %llu is out of range", s,
                     (unsigned long long)w);
  if (data_value_bytes(v, bytes) == -1)
    return data_fail(p, at, "out of memory");
  for (i = 0; i < bytes; i++)
    v->buf[le ? i : bytes - 1 - i] = (unsigned char)(w >> (8 * i));
  return 0;
}

/* "..." with nbdkit 1.32's escapes: C's simple ones, \xNN (exactly two
 * hex digits), and any other character stands for itself (\e is 'e');
 * octal and unicode (\101, \0, \u00e9) are refused, as nbdkit does. */
static int
data_hexval(char c)
{
  return isdigit((unsigned char)c) ? c - '0' : tolower((unsigned char)c) - 'a' + 10;
}

static int
data_string(struct data_parser *p, struct data_value *v)
{
  size_t start = p->pos, i, n = 0;
  const char *s = p->text;

  if (data_value_bytes(v, strlen(s + start)) == -1)
    return data_fail(p, start, "out of memory");
  for (i = start + 1; s[i] != '"'; i++) {
    char c = s[i];

    if (c == '\0')
      return data_fail(p, start, "unterminated string");
    if (c == '\\') {
      switch (s[++i]) {
      case '\\': c = '\\'; break;
      case '"':  c = '"'; break;
      case '\'': c = '\''; break;
      case 'a':  c = '\a'; break;
      case 'b':  c = '\b'; break;
      case 'f':  c = '\f'; break;
      case 'n':  c = '\n'; break;
      case 'r':  c = '\r'; break;
      case 't':  c = '\t'; break;
      case 'v':  c = '\v'; break;
      case 'x':
        if (!isxdigit((unsigned char)s[i + 1]) ||
            !isxdigit((unsigned char)s[i + 2]))
          return data_fail(p, i - 1, "\\xNN must be followed by exactly two "
                           "hexadecimal characters");
        c = (char)(data_hexval(s[i + 1]) * 16 + data_hexval(s[i + 2]));
        i += 2;
        break;
      case '\0':
        return data_fail(p, start, "unterminated string");
      default:
        if (isdigit((unsigned char)s[i]) || s[i] == 'u' || s[i] == 'U')
          return data_fail(p, i - 1, "unsupported escape '\\%c' in a string "
                           "(numeric and unicode escapes are not implemented, "
                           "as in nbdkit)", s[i]);
        c = s[i];               /* \e is e, \? is ?: nbdkit's */
        break;
      }
    }
    v->buf[n++] = (unsigned char)c;
  }
  v->len = n;
  p->pos = i + 1;
  return 0;
}

/* <FILE: the whole file, read now; the name ends as a number does. */
static int
data_file(struct data_parser *p, struct data_value *v)
{
  size_t at = p->pos, n;
  char *name;
  struct stat st;
  uint64_t got = 0;
  int fd, e;

  if (p->text[at + 1] == '(')
    return data_fail(p, at, "'<(SCRIPT)' is not supported");
  n = data_token_len(p->text + at + 1);
  if (n == 0)
    return data_fail(p, at, "'<' needs a file name");
  if ((name = strndup(p->text + at + 1, n)) == NULL)
    return data_fail(p, at, "out of memory");
  if ((fd = open(name, O_RDONLY | O_CLOEXEC)) == -1 || fstat(fd, &st) == -1) {
    e = errno;
    data_fail(p, at, "%s: %s", name, strerror(e));
    goto out;
  }
  if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > DATA_FILE_MAX) {
    data_fail(p, at, "%s: not a regular file of at most 1 GiB", name);
    goto out;
  }
  if (data_value_bytes(v, (uint64_t)st.st_size) == -1) {
    data_fail(p, at, "%s: out of memory", name);
    goto out;
  }
  while (got < v->len) {
    ssize_t r = read(fd, v->buf + got, v->len - got);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0) {
      data_fail(p, at, "%s: %s", name, r ? strerror(errno) : "file shrank");
      goto out;
    }
    got += (uint64_t)r;
  }
  p->pos = at + 1 + n;
  close(fd);
  free(name);
  return 0;
out:
  if (fd >= 0)
    close(fd);
  free(name);
  return -1;
}

static int data_list(struct data_parser *p, struct data_store *s,
                     uint64_t *high, size_t open_at);

/* ( ... ): evaluated in its own store; small ones become bytes. */
static int
data_group(struct data_parser *p, struct data_value *v)
{
  size_t at = p->pos;
  struct data_store *s;
  int r;

  if (p->depth >= DATA_MAX_DEPTH)
    return data_fail(p, at, "groups nested deeper than %d", DATA_MAX_DEPTH);
  if ((s = data_store_new()) == NULL)
    return data_fail(p, at, "out of memory");
  p->pos++;
  p->depth++;
  r = data_list(p, s, &v->len, at);
  p->depth--;
  if (r == -1) {
    data_store_free(s);
    return -1;
  }
  if (v->len > DATA_FLAT_MAX) {
    v->store = s;
    return 0;
  }
  r = data_value_bytes(v, v->len);
  if (r == 0)
    data_store_read(s, v->buf, v->len, 0);
  data_store_free(s);
  return r == 0 ? 0 : data_fail(p, at, "out of memory");
}

/* One expression before any "*N". */
static int
data_expr(struct data_parser *p, struct data_value *v)
{
  const char *s = p->text + p->pos;
  size_t at = p->pos;
  uint64_t b = 0;

  if (*s == '"')
    return data_string(p, v);
  if (*s == '<')
    return data_file(p, v);
  if (*s == '(')
    return data_group(p, v);
  if ((s[0] == 'l' || s[0] == 'b') && s[1] == 'e' &&
      (strncmp(s + 2, "16:", 3) == 0 || strncmp(s + 2, "32:", 3) == 0 ||
       strncmp(s + 2, "64:", 3) == 0))
    return data_word(p, v);
  if ((*s >= '0' && *s <= '9') || *s == '-') {
    if (data_number(p, &b) == -1)
      return -1;
    if (b > 255)
      return data_fail(p, at, "byte %llu is out of range (0..255)",
                       (unsigned long long)b);
    if (data_value_bytes(v, 1) == -1)
      return data_fail(p, at, "out of memory");
    v->buf[0] = (unsigned char)b;
    return 0;
  }
  return data_unknown(p, at);
}

/* @N, @+N, @-N, @^N. */
static int
data_offset(struct data_parser *p, uint64_t *cur)
{
  size_t at = p->pos;
  char op = p->text[at + 1];
  uint64_t n = 0;

  p->pos++;
  if (op == '+' || op == '-' || op == '^')
    p->pos++;
  else
    op = '=';
  if (data_is_end(p->text[p->pos]))
    return data_fail(p, at, "'%.*s' needs a number", (int)(p->pos - at),
                     p->text + at);
  if (data_number(p, &n) == -1)
    return -1;
  switch (op) {
  case '=': *cur = n; break;
  case '+':
    if (n > DATA_OFF_MAX - *cur)
      return data_fail(p, at, "offset past 2^63-1");
    *cur += n;
    break;
  case '-':
    if (n > *cur)
      return data_fail(p, at, "@-%llu goes before the start (the offset is "
                       "%llu)", (unsigned long long)n,
                       (unsigned long long)*cur);
    *cur -= n;
    break;
  case '^':
    if (n == 0 || (n & (n - 1)))
      return data_fail(p, at, "@^%llu: the alignment must be a power of 2",
                       (unsigned long long)n);
    if (*cur % n) {
      if (n - *cur % n > DATA_OFF_MAX - *cur)
        return data_fail(p, at, "offset past 2^63-1");
      *cur += n - *cur % n;
    }
    break;
  }
  if (*cur > DATA_OFF_MAX)
    return data_fail(p, at, "offset past 2^63-1");
  return 0;
}

/* One bound of a slice: digits (decimal, 0x hex, 0 octal) up to stop, or
 * nothing (the default). */
static int
data_slice_bound(struct data_parser *p, char stop, uint64_t dflt,
                 uint64_t *out, size_t at)
{
  const char *s = p->text + p->pos;
  char *end;

  if (*s == stop) {
    *out = dflt;
  }
  else {
    if (!isdigit((unsigned char)*s))
      return data_fail(p, at, "[N:M] must be numbers: '%.*s'",
                       (int)data_token_len(s), s);
    errno = 0;
    *out = strtoull(s, &end, 0);
    if (errno || *end != stop)
      return data_fail(p, at, "[N:M] must be numbers");
    s = end;
  }
  p->pos = (size_t)(s - p->text) + 1;
  return 0;
}

/* v * count as bytes (count becomes 1), for a slice that follows "*N". */
static int
data_flatten(struct data_parser *p, struct data_value *v, uint64_t *count,
             size_t at)
{
  uint64_t k;
  unsigned char *buf;

  if (*count == 1)
    return 0;
  if (v->store || (v->len && *count > DATA_FLAT_MAX / v->len))
    return data_fail(p, at, "a slice of a repeat over 1 MiB is not supported");
  if ((buf = malloc(v->len * *count + 1)) == NULL)
    return data_fail(p, at, "out of memory");
  for (k = 0; k < *count && v->len; k++)
    memcpy(buf + k * v->len, v->buf, v->len);
  free(v->buf);
  v->buf = buf;
  v->len *= *count;
  *count = 1;
  return 0;
}

/* [N:M]: bytes N to M-1 of v (nbdkit >= 1.24); N defaults to 0, M to the
 * end; N <= M <= the length, else refused as nbdkit does. */
static int
data_slice(struct data_parser *p, struct data_value *v, size_t at)
{
  uint64_t n = 0, m = 0;
  unsigned char *buf;

  p->pos++;
  if (data_slice_bound(p, ':', 0, &n, at) == -1 ||
      data_slice_bound(p, ']', v->len, &m, at) == -1)
    return -1;
  if (n > m || m > v->len)
    return data_fail(p, at, "[%llu:%llu] does not describe a valid slice of "
                     "%llu bytes", (unsigned long long)n,
                     (unsigned long long)m, (unsigned long long)v->len);
  if (m - n > DATA_FLAT_MAX && v->store)
    return data_fail(p, at, "a slice over 1 MiB of a group is not supported");
  if ((buf = malloc(m - n + 1)) == NULL)
    return data_fail(p, at, "out of memory");
  if (v->store) {
    data_store_read(v->store, buf, m - n, n);
    data_store_free(v->store);
    v->store = NULL;
  }
  else if (m > n) {
    memcpy(buf, v->buf + n, m - n);
  }
  free(v->buf);
  v->buf = buf;
  v->len = m - n;
  return 0;
}

/* Any "*N" and "[N:M]" after an expression, left to right: the product
 * of the counts, and v sliced. */
static int
data_repeat(struct data_parser *p, struct data_value *v, uint64_t *count)
{
  for (;;) {
    size_t save = p->pos, at;
    uint64_t n = 0;

    data_skip_space(p);
    at = p->pos;
    if (p->text[at] == '[') {
      if (data_flatten(p, v, count, at) == -1 ||
          data_slice(p, v, at) == -1)
        return -1;
      continue;
    }
    if (p->text[at] != '*') {
      p->pos = save;
      return 0;
    }
    p->pos++;
    data_skip_space(p);
    if (data_number(p, &n) == -1)
      return -1;
    if (n && *count > DATA_OFF_MAX / n)
      return data_fail(p, at, "repeat count too large");
    *count *= n;
  }
}

/* Writes v count times at offset (all checked against 2^63-1). */
static int
data_emit(struct data_store *s, const struct data_value *v, uint64_t count,
          uint64_t offset)
{
  uint64_t total = v->len * count, k, chunk;
  unsigned char *rep;
  int r = 0;

  if (total == 0)
    return 0;
  if (v->store) {
    for (k = 0; k < count && r == 0; k++)
      r = data_store_blit(s, v->store, v->len, offset + k * v->len);
    return r;
  }
  /* Bytes: as many whole copies as fit in 1 MiB, written in turn. */
  chunk = DATA_FLAT_MAX / v->len;
  chunk = (chunk ? chunk : 1) * v->len;
  if (chunk > total)
    chunk = total;
  if ((rep = malloc(chunk)) == NULL)
    return -ENOMEM;
  for (k = 0; k < chunk; k += v->len)
    memcpy(rep + k, v->buf, v->len);
  for (k = 0; k < total && r == 0; k += chunk)
    r = data_store_write(s, rep, total - k < chunk ? total - k : chunk,
                         offset + k);
  free(rep);
  return r;
}

/* Expressions up to the end (top level) or the ')' closing the group
 * opened at open_at; *high is the highest offset reached. */
static int
data_list(struct data_parser *p, struct data_store *s, uint64_t *high,
          size_t open_at)
{
  int nested = open_at != (size_t)-1;
  uint64_t cur = 0, count;

  *high = 0;
  for (;;) {
    struct data_value v = { NULL, NULL, 0 };
    size_t at;
    int r;

    data_skip_space(p);
    at = p->pos;
    switch (p->text[at]) {
    case '\0':
      return nested ? data_fail(p, open_at, "unmatched '('") : 0;
    case ')':
      if (!nested)
        return data_fail(p, at, "unmatched ')'");
      p->pos++;
      return 0;
    case '*':
      return data_fail(p, at, "'*' must follow a byte, word, string, file "
                       "or group");
    case '[':
      return data_fail(p, at, "'[N:M]' must follow a byte, word, string, "
                       "file or group");
    case '@':
      if (data_offset(p, &cur) == -1)
        return -1;
      break;
    default:
      count = 1;
      r = data_expr(p, &v);
      if (r == 0)
        r = data_repeat(p, &v, &count);
      if (r == 0 && count && v.len > (DATA_OFF_MAX - cur) / count)
        r = data_fail(p, at, "data past 2^63-1");
      if (r == 0 && data_emit(s, &v, count, cur) < 0)
        r = data_fail(p, at, "out of memory");
      free(v.buf);
      data_store_free(v.store);
      if (r == -1)
        return -1;
      cur += v.len * count;
    }
    if (cur > *high)
      *high = cur;
  }
}

int
data_parse(const char *text, struct data_store *s, uint64_t *len,
           char *err, size_t errlen)
{
  struct data_parser p = { text, 0, 0, err, errlen };

  return data_list(&p, s, len, (size_t)-1);
}

static int
data_b64_digit(char c)
{
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

/* RFC 4648 base64, padding optional; whitespace is skipped. */
int
data_base64(const char *text, struct data_store *s, uint64_t *len,
            char *err, size_t errlen)
{
  size_t n = strlen(text), i, out = 0, pad_at = (size_t)-1;
  unsigned char *buf = malloc(n / 4 * 3 + 3);
  uint32_t acc = 0;
  unsigned bits = 0;
  int r;

  if (buf == NULL) {
    snprintf(err, errlen, "base64: out of memory");
    return -1;
  }
  for (i = 0; i < n; i++) {
    int d = data_b64_digit(text[i]);

    if (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' ||
        text[i] == '\r')
      continue;
    if (text[i] == '=') {
      if (pad_at == (size_t)-1)
        pad_at = i;
      continue;
    }
    if (d < 0 || pad_at != (size_t)-1) {
      snprintf(err, errlen, "base64: at offset %zu: invalid character "
               "'%c'", i, text[i]);
      free(buf);
      return -1;
    }
    acc = acc << 6 | (uint32_t)d;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      buf[out++] = (unsigned char)(acc >> bits);
    }
  }
  if (bits >= 6) {                     /* one digit alone makes no byte */
    snprintf(err, errlen, "base64: at offset %zu: truncated input", n);
    free(buf);
    return -1;
  }
  r = data_store_write(s, buf, out, 0);
  free(buf);
  if (r < 0) {
    snprintf(err, errlen, "base64: out of memory");
    return -1;
  }
  *len = out;
  return 0;
}
