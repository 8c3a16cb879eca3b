/* nbdstack config file, the lexical part: lines, quoted and raw values,
 * the words of a layer line, section headers, and the one-line error
 * messages "file:line: message".  What the sections and keys mean is
 * config.c's.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "config_lex.h"

/* ---- small helpers ------------------------------------------------------- */

int
config_isspace(int c)
{
  return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

char *
config_skip_space(char *s)
{
  while (config_isspace((unsigned char)*s))
    s++;
  return s;
}

void
config_trim_end(char *s)
{
  size_t n = strlen(s);

  while (n > 0 && config_isspace((unsigned char)s[n - 1]))
    s[--n] = '\0';
}

int
config_iskeychar(int c)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
}

/* Every message is one line: control bytes from a broken file become '?'. */
void
config_error(struct config_parser *p, int line, const char *fmt, ...)
{
  char msg[CONFIG_ERRLEN];
  va_list ap;
  size_t i;
  int n;

  va_start(ap, fmt);
  n = vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (n >= (int)sizeof msg)
    memcpy(msg + sizeof msg - 4, "...", 4);
  for (i = 0; msg[i]; i++)
    if (((unsigned char)msg[i] < 0x20 && msg[i] != '\t') || msg[i] == 0x7f)
      msg[i] = '?';
  p->nerrs++;
  if (p->errs)
    fprintf(p->errs, "%s:%d: %s\n", p->name, line, msg);
}

/* ---- values -------------------------------------------------------------- */

/* s points at an opening '"'.  Removes the quotes in place (\" and \\ are
 * escapes; any other backslash is kept) and returns the byte after the
 * closing quote, or NULL when there is none. */
static char *
config_unquote(char *s)
{
  char *r = s + 1, *w = s;

  while (*r && *r != '"') {
    if (*r == '\\' && (r[1] == '"' || r[1] == '\\'))
      r++;
    *w++ = *r++;
  }
  if (*r != '"')
    return NULL;
  *w = '\0';
  return r + 1;
}

/* The value of a one-value key: "quoted" (may hold '#' and spaces at the
 * ends), or raw text up to a " #" comment, trailing space removed. */
int
config_scalar(struct config_parser *p, char *v)
{
  char *q;

  if (*v == '"') {
    q = config_unquote(v);
    if (q == NULL) {
      config_error(p, p->line, "unterminated quote");
      return -1;
    }
    q = config_skip_space(q);
    if (*q != '\0' && *q != '#') {
      config_error(p, p->line, "unexpected text after the closing quote: "
                   "'%.40s'", q);
      return -1;
    }
    return 0;
  }
  for (q = v; *q; q++)
    if (*q == '#' && (q == v || config_isspace((unsigned char)q[-1]))) {
      *q = '\0';
      break;
    }
  config_trim_end(v);
  return 0;
}

/* Splits a filter/backend value into words in place, shell-like: words
 * separated by blanks, "double quotes" group, a word starting with '#'
 * starts a comment.  *out is malloc'd; returns the count or -1. */
int
config_words(struct config_parser *p, char *s, struct config_word **out)
{
  struct config_word *v;
  char *r = s, *w = s, c;
  int n = 0;

  /* A word takes at least one byte and a separator. */
  v = calloc(strlen(s) / 2 + 2, sizeof *v);
  if (v == NULL) {
    config_error(p, p->line, "out of memory");
    return -1;
  }
  for (;;) {
    r = config_skip_space(r);
    if (*r == '\0' || *r == '#')
      break;
    v[n].text = w;
    v[n].eq = NULL;
    while (*r && !config_isspace((unsigned char)*r)) {
      if (*r != '"') {
        if (*r == '=' && v[n].eq == NULL)
          v[n].eq = w;
        *w++ = *r++;
        continue;
      }
      for (r++; *r && *r != '"'; *w++ = *r++)
        if (*r == '\\' && (r[1] == '"' || r[1] == '\\'))
          r++;
      if (*r != '"') {
        config_error(p, p->line, "unterminated quote");
        free(v);
        return -1;
      }
      r++;
    }
    c = *r;                     /* w <= r: save before terminating */
    *w++ = '\0';
    n++;
    if (c == '\0')
      break;
    r++;
  }
  *out = v;
  return n;
}

/* Parses "[word]", "[word NAME]" or "[word "NAME"]" in place.  Returns 0
 * with *word, *wlen and *arg (NUL-terminated, NULL when absent) set, or -1
 * after an error. */
int
config_header_split(struct config_parser *p, char *s, const char **word,
                    size_t *wlen, char **arg)
{
  char *q = config_skip_space(s + 1), *argend = NULL;

  *word = q;
  *arg = NULL;
  while (config_iskeychar((unsigned char)*q))
    q++;
  *wlen = (size_t)(q - *word);
  q = config_skip_space(q);
  if (*q == '"') {
    *arg = q;
    if ((q = config_unquote(q)) == NULL) {
      config_error(p, p->line, "unterminated quote in section header");
      return -1;
    }
  } else if (*q != ']' && *q != '\0') {
    *arg = q;
    q += strcspn(q, " \t\r\v\f]\"");
    argend = q;
    if (config_isspace((unsigned char)*q) && *config_skip_space(q) != ']') {
      config_error(p, p->line, "bad section header: a name with spaces "
                   "must be quoted, as in [export \"my disk\"]");
      return -1;
    }
  }
  q = config_skip_space(q);
  if (*q != ']') {
    config_error(p, p->line, "bad section header: expected ']'%s",
                 *q == '"' ? " (a quote inside a name?)" : "");
    return -1;
  }
  q = config_skip_space(q + 1);
  if (*q != '\0' && *q != '#' && *q != ';') {
    config_error(p, p->line, "bad section header: unexpected text after "
                 "']': '%.40s'", q);
    return -1;
  }
  if (*wlen == 0) {
    config_error(p, p->line, "bad section header: missing section name "
                 "(known: [server], [export NAME])");
    return -1;
  }
  if (argend)
    *argend = '\0';
  return 0;
}

