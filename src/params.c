/* nbdstack typed parameters: turn "key=value" text into a layer's conf
 * struct through the layer's table (name, type, offset, default, help).
 *
 * The core parser knows no layer's keys; errors name the key, the value and
 * what was expected, and list the known keys for a typo.
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine.h"
#include "params.h"

const char *
params_type_name(enum nbd_param_type t)
{
  switch (t) {
  case NBD_PARAM_SIZE: return "size";
  case NBD_PARAM_UINT: return "uint";
  case NBD_PARAM_BOOL: return "bool";
  case NBD_PARAM_STRING: return "string";
  case NBD_PARAM_PATH: return "path";
  case NBD_PARAM_DURATION: return "duration";
  case NBD_PARAM_ENUM: return "enum";
  case NBD_PARAM_PATH_LIST: return "path, repeatable";
  case NBD_PARAM_STRING_LIST: return "string, repeatable";
  }
  return "?";
}

/* Decimal, hex with 0x, or octal with a leading 0, as nbdkit reads its
 * integer keys (strtoul base 0): "010" is eight there, and a seed or a
 * count must mean the same in both servers.  "08" is refused. */
int
params_parse_uint(const char *s, uint64_t *out)
{
  int base = 10;
  char *end;
  uint64_t v;

  if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    base = 16;
    if (!isxdigit((unsigned char)s[2]))
      return -1;
  } else if (!isdigit((unsigned char)*s))
    return -1;              /* also rejects "", "-1", "+1" and " 1" */
  else if (s[0] == '0' && s[1] != '\0')
    base = 8;
  errno = 0;
  v = strtoull(s, &end, base);
  if (errno || *end != '\0')
    return -1;
  *out = v;
  return 0;
}

/* Digits after a decimal point, as a fraction in [0, 1).  Plain digits
 * only: strtod would also take an exponent ("1.5e3G"). */
static const char *
params_fraction(const char *s, double *frac)
{
  double scale = 0.1;

  *frac = 0;
  if (!isdigit((unsigned char)*s))
    return NULL;
  for (; isdigit((unsigned char)*s); s++, scale /= 10)
    *frac += (*s - '0') * scale;
  return s;
}

/* 512, 4k, 4K, 4KiB, 1M, 2G, 1T, 1P, 1E; also 1.5G.  Binary units;
 * 2048s is 2048 sectors of 512 bytes, as nbdkit_parse_size reads it. */
int
params_parse_size(const char *s, uint64_t *out)
{
  static const char units[] = "bkmgtpe";
  char *end;
  const char *u, *rest;
  uint64_t v, mult = 1;
  double frac = 0;
  int shift = 0;

  if (!isdigit((unsigned char)*s))
    return -1;              /* also rejects "", "-1", "+1" and " 1" */
  errno = 0;
  v = strtoull(s, &end, 10);
  if (errno)
    return -1;
  rest = end;
  if (*rest == '.' && (rest = params_fraction(rest + 1, &frac)) == NULL)
    return -1;
  if ((*rest == 's' || *rest == 'S') && rest[1] == '\0') {
    shift = 9;
    rest++;
  } else if (*rest != '\0') {
    u = strchr(units, tolower((unsigned char)*rest));
    if (u == NULL)
      return -1;
    shift = (int)(u - units) * 10;
    rest++;
    if (shift && (strcasecmp(rest, "ib") == 0 || strcasecmp(rest, "b") == 0))
      rest += strlen(rest);
    if (*rest != '\0')
      return -1;
  }
  if (shift == 0 && frac != 0)
    return -1;
  mult = (uint64_t)1 << shift;
  if (v > UINT64_MAX / mult)
    return -1;
  v *= mult;
  if (frac != 0) {
    double extra = frac * (double)mult;
    double whole = (double)(uint64_t)(extra + 0.5);
    /* A whole number of bytes only ("1.5k"; not "1.3s", 665.6 bytes:
     * nbdkit refuses every fraction, we refuse what it cannot mean). */
    if (extra - whole > 1e-6 || whole - extra > 1e-6)
      return -1;
    if ((double)v + whole >= 18446744073709551615.0)
      return -1;
    v += (uint64_t)whole;
  }
  *out = v;
  return 0;
}

int
params_parse_bool(const char *s, int *out)
{
  static const char *const yes[] = { "1", "yes", "true", "on", "y", NULL };
  static const char *const no[] = { "0", "no", "false", "off", "n", NULL };
  int i;

  for (i = 0; yes[i]; i++)
    if (strcasecmp(s, yes[i]) == 0)
      return *out = 1, 0;
  for (i = 0; no[i]; i++)
    if (strcasecmp(s, no[i]) == 0)
      return *out = 0, 0;
  return -1;
}

/* 10ns 5us 2ms 1s 1.5s 3m 1h; a bare number is seconds.  The number is
 * digits with an optional fraction: no sign, exponent, hex or "inf". */
int
params_parse_duration(const char *s, uint64_t *out_ns)
{
  static const struct { const char *u; double ns; } units[] = {
    { "ns", 1 }, { "us", 1e3 }, { "ms", 1e6 }, { "s", 1e9 }, { "", 1e9 },
    { "m", 60e9 }, { "min", 60e9 }, { "h", 3600e9 },
  };
  char *end;
  uint64_t whole;
  double v, frac = 0;
  size_t i;

  if (!isdigit((unsigned char)*s))
    return -1;
  errno = 0;
  whole = strtoull(s, &end, 10);
  if (errno)
    return -1;
  if (*end == '.' &&
      (end = (char *)params_fraction(end + 1, &frac)) == NULL)
    return -1;
  v = (double)whole + frac;     /* no strtod: it follows the locale */
  for (i = 0; i < sizeof units / sizeof units[0]; i++)
    if (strcmp(end, units[i].u) == 0) {
      double ns = v * units[i].ns;
      if (ns >= 1.8e19)
        return -1;
      *out_ns = (uint64_t)(ns + 0.5);
      return 0;
    }
  return -1;
}

static const char *
params_expect(const struct nbd_param *p)
{
  switch (p->type) {
  case NBD_PARAM_SIZE: return "a size such as 4096, 64k, 1M or 2G";
  case NBD_PARAM_UINT: return "a non-negative integer";
  case NBD_PARAM_BOOL: return "yes or no";
  case NBD_PARAM_DURATION: return "a duration such as 10ms, 2s or 1m";
  case NBD_PARAM_PATH:
  case NBD_PARAM_PATH_LIST: return "a non-empty path";
  default: return "a value";
  }
}

static int
params_store(const struct nbd_param *p, void *conf, const char *value,
             char *err, size_t errlen)
{
  char *field = (char *)conf + p->offset;
  struct nbd_strlist *list = (struct nbd_strlist *)(void *)field;
  uint64_t u;
  int b, i;
  char *s, **v;

  switch (p->type) {
  case NBD_PARAM_SIZE:
  case NBD_PARAM_UINT:
  case NBD_PARAM_DURATION:
    if ((p->type == NBD_PARAM_SIZE ? params_parse_size(value, &u) :
         p->type == NBD_PARAM_UINT ? params_parse_uint(value, &u) :
         params_parse_duration(value, &u)) == -1)
      goto bad;
    memcpy(field, &u, sizeof u);
    return 0;
  case NBD_PARAM_BOOL:
    if (params_parse_bool(value, &b) == -1)
      goto bad;
    memcpy(field, &b, sizeof b);
    return 0;
  case NBD_PARAM_PATH:
    if (*value == '\0')
      goto bad;
    /* fall through */
  case NBD_PARAM_STRING:
    s = strdup(value);
    if (s == NULL) {
      snprintf(err, errlen, "out of memory");
      return -1;
    }
    free(*(char **)field);
    memcpy(field, &s, sizeof s);
    return 0;
  case NBD_PARAM_PATH_LIST:
    if (*value == '\0')
      goto bad;
    /* fall through */
  case NBD_PARAM_STRING_LIST:
    /* Repeatable: every value is kept, in order. */
    v = realloc(list->v, (list->n + 1) * sizeof *v);
    if (v == NULL || (s = strdup(value)) == NULL) {
      if (v)
        list->v = v;
      snprintf(err, errlen, "out of memory");
      return -1;
    }
    list->v = v;
    list->v[list->n++] = s;
    return 0;
  case NBD_PARAM_ENUM:
    for (i = 0; p->choices && p->choices[i]; i++)
      if (strcasecmp(value, p->choices[i]) == 0) {
        memcpy(field, &i, sizeof i);
        return 0;
      }
    {
      size_t len = 0;
      len += snprintf(err, errlen, "%s: invalid value '%s' (one of:",
                      p->name, value);
      for (i = 0; p->choices && p->choices[i] && len < errlen; i++)
        len += snprintf(err + len, errlen - len, " %s", p->choices[i]);
      if (len < errlen)
        snprintf(err + len, errlen - len, ")");
    }
    return -1;
  }
bad:
  snprintf(err, errlen, "%s: invalid value '%s' (expected %s)", p->name,
           value, params_expect(p));
  return -1;
}

static int
params_index(const struct nbd_layer *layer, const char *key)
{
  const struct nbd_param *p;
  int i;

  for (p = layer->ops->params, i = 0; p && p->name; p++, i++)
    if (strcmp(p->name, key) == 0)
      return i;
  return -1;
}

/* A repeatable key is never "set" here: the stack refuses a key given
 * twice by asking this, and a PATH_LIST or STRING_LIST takes any number
 * of values. */
int
nbd_layer_param_set(const struct nbd_layer *layer, const char *name)
{
  int i = params_index(layer, name);
  return i >= 0 && i < 64 && (layer->params_set & ((uint64_t)1 << i)) &&
         layer->ops->params[i].type != NBD_PARAM_PATH_LIST &&
         layer->ops->params[i].type != NBD_PARAM_STRING_LIST;
}

#define PARAMS_SUGGEST_MAX 64     /* longer names are not compared */

static int
params_same_char(char a, char b)
{
  if (a == '_')
    a = '-';
  if (b == '_')
    b = '-';
  return a == b;
}

/* Optimal string alignment distance between a[0..la) and b[0..lb), both
 * at most PARAMS_SUGGEST_MAX bytes. */
static unsigned
params_distance(const char *a, size_t la, const char *b, size_t lb)
{
  unsigned d[PARAMS_SUGGEST_MAX + 1][PARAMS_SUGGEST_MAX + 1];
  size_t i, j;

  for (i = 0; i <= la; i++)
    d[i][0] = (unsigned)i;
  for (j = 0; j <= lb; j++)
    d[0][j] = (unsigned)j;
  for (i = 1; i <= la; i++)
    for (j = 1; j <= lb; j++) {
      unsigned cost = params_same_char(a[i - 1], b[j - 1]) ? 0 : 1;
      unsigned v = d[i - 1][j] + 1;
      if (d[i][j - 1] + 1 < v)
        v = d[i][j - 1] + 1;
      if (d[i - 1][j - 1] + cost < v)
        v = d[i - 1][j - 1] + cost;
      if (i > 1 && j > 1 && params_same_char(a[i - 1], b[j - 2]) &&
          params_same_char(a[i - 2], b[j - 1]) && d[i - 2][j - 2] + 1 < v)
        v = d[i - 2][j - 2] + 1;
      d[i][j] = v;
    }
  return d[la][lb];
}

const char *
params_suggest(const char *word, const char *known, char *buf, size_t len)
{
  size_t lw = strlen(word), best_len = 0;
  const char *s = known, *best = NULL;
  unsigned best_d = 0, limit;

  if (len == 0)
    return buf;
  buf[0] = '\0';
  if (lw == 0 || lw > PARAMS_SUGGEST_MAX || strcmp(known, "none") == 0)
    return buf;
  /* A typo: one edit in a short word, two in a longer one. */
  limit = lw >= 6 ? 2 : lw >= 3 ? 1 : 0;
  while (*s) {
    size_t n = strcspn(s, ", ");
    if (n > 0 && n <= PARAMS_SUGGEST_MAX) {
      unsigned dist = params_distance(word, lw, s, n);
      if (dist > 0 && dist <= limit && (best == NULL || dist < best_d)) {
        best = s;
        best_len = n;
        best_d = dist;
      }
    }
    s += n;
    s += strspn(s, ", ");
  }
  if (best)
    snprintf(buf, len, "did you mean '%.*s'?; ", (int)best_len, best);
  return buf;
}

/* "unknown key 'rnage' (did you mean 'range'?; known: offset, range)".
 * Every append checks the room left: a long key from a config file must
 * not run past err. */
static void
params_unknown(const struct nbd_layer *layer, const char *key, char *err,
               size_t errlen)
{
  const struct nbd_param *p = layer->ops->params;
  char known[1024], hint[PARAMS_SUGGEST_MAX + 32];
  size_t len = 0;

  known[0] = '\0';
  if (p == NULL || p->name == NULL)
    snprintf(known, sizeof known, "none");
  for (; p && p->name && len < sizeof known; p++)
    len += (size_t)snprintf(known + len, sizeof known - len, "%s%s",
                            p == layer->ops->params ? "" : ", ", p->name);
  snprintf(err, errlen, "unknown key '%s' (%sknown: %s)", key,
           params_suggest(key, known, hint, sizeof hint), known);
}

int
params_set(struct nbd_layer *layer, const char *key, const char *value,
           char *err, size_t errlen)
{
  const struct nbd_param *p;
  int i = params_index(layer, key);

  if (i < 0) {
    params_unknown(layer, key, err, errlen);
    return -1;
  }
  if (i >= 64) {
    snprintf(err, errlen, "%s: too many parameters in layer table", key);
    return -1;
  }
  p = &layer->ops->params[i];
  if (params_store(p, layer->conf, value, err, errlen) == -1)
    return -1;
  layer->params_set |= (uint64_t)1 << i;
  return 0;
}

int
params_finish(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct nbd_param *p;
  int i;

  for (p = layer->ops->params, i = 0; p && p->name; p++, i++) {
    if (layer->params_set & ((uint64_t)1 << i))
      continue;
    if (p->required) {
      snprintf(err, errlen, "missing required key '%s'", p->name);
      return -1;
    }
    if (p->def && params_store(p, layer->conf, p->def, err, errlen) == -1)
      return -1;
  }
  return 0;
}

void
params_free(struct nbd_layer *layer)
{
  const struct nbd_param *p;

  if (layer->conf == NULL)
    return;
  for (p = layer->ops->params; p && p->name; p++)
    if (p->type == NBD_PARAM_STRING || p->type == NBD_PARAM_PATH) {
      char **f = (char **)((char *)layer->conf + p->offset);
      free(*f);
      *f = NULL;
    } else if (p->type == NBD_PARAM_PATH_LIST ||
               p->type == NBD_PARAM_STRING_LIST) {
      struct nbd_strlist *l =
        (struct nbd_strlist *)(void *)((char *)layer->conf + p->offset);
      size_t i;

      for (i = 0; i < l->n; i++)
        free(l->v[i]);
      free(l->v);
      l->v = NULL;
      l->n = 0;
    }
}
