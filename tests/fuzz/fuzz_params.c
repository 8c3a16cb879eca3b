/* nbdstack fuzzing: the typed parameter parsers of params.c (size, uint,
 * bool, duration), each on the input as a NUL-terminated string.
 *
 * Beyond crashes and UB, it checks properties callers rely on: a parser
 * that fails leaves its output untouched; a bool is 0 or 1; and a whole
 * size ("123", "4k", "2MiB") is exactly digits << unit, or rejected when
 * that overflows 64 bits (no wrap-around).
 */
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine.h"
#include "params.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_POISON UINT64_C(0x5a5a5a5a5a5a5a5a)

/* For "DIGITS[UNIT[i][b]]" without a fraction: expected value of
 * params_parse_size; returns 0 (then *ok says whether it fits) or -1 when
 * s is not of that form. */
static int
fuzz_whole_size(const char *s, uint64_t *out, int *ok)
{
  static const char units[] = "bkmgtpe";
  char digits[32];
  const char *p = s, *u;
  uint64_t v;
  int shift = 0;
  size_t n;

  while (isdigit((unsigned char)*p))
    p++;
  n = (size_t)(p - s);
  if (n == 0 || n >= sizeof digits)
    return -1;
  memcpy(digits, s, n);
  digits[n] = '\0';
  /* Sizes are decimal whatever their leading zeros (params_parse_uint
   * reads "010" as octal, as nbdkit reads integers; sizes it does not). */
  errno = 0;
  v = strtoull(digits, NULL, 10);
  if (errno == ERANGE) {
    *ok = 0;                    /* more than 64 bits of digits */
    return 0;
  }
  if (*p) {
    u = strchr(units, tolower((unsigned char)*p));
    if (u == NULL)
      return -1;
    shift = (int)(u - units) * 10;
    p++;
    if (*p && !(shift && (strcasecmp(p, "ib") == 0 || strcasecmp(p, "b") == 0)))
      return -1;
  }
  *ok = shift == 0 || v <= (UINT64_MAX >> shift);
  *out = *ok ? v << shift : 0;
  return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  char *s = malloc(size + 1);
  uint64_t u, want = 0;
  int b, r, ok;

  if (s == NULL)
    return 0;
  memcpy(s, data, size);
  s[size] = '\0';

  u = FUZZ_POISON;
  r = params_parse_size(s, &u);
  if (r == -1 && u != FUZZ_POISON)
    abort();                    /* failed but wrote its output */
  if (fuzz_whole_size(s, &want, &ok) == 0 &&
      (ok ? r != 0 || u != want : r != -1))
    abort();                    /* wrong value, or an overflow accepted */
  u = FUZZ_POISON;
  if (params_parse_uint(s, &u) == -1 && u != FUZZ_POISON)
    abort();
  b = 42;
  if (params_parse_bool(s, &b) == -1 ? b != 42 : b != 0 && b != 1)
    abort();
  u = FUZZ_POISON;
  if (params_parse_duration(s, &u) == -1 && u != FUZZ_POISON)
    abort();
  free(s);
  return 0;
}
