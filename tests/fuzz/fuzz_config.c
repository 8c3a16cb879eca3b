/* nbdstack fuzzing: the config file parser (config.c) and, through it, the
 * typed parameters and every compiled-in layer's setup.
 *
 * Text without NUL bytes goes through config_parse_string; text with one
 * through config_load_file on a memfd, the only way a NUL reaches the
 * parser (its "NUL byte in line" check).  Error messages go to /dev/null.
 *
 * A config may name a file backend: file=PATH opens PATH (read-write unless
 * readonly=yes) but never creates, truncates or writes it at setup.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static FILE *fuzz_errs;

static void
fuzz_config_via_file(const uint8_t *data, size_t size)
{
  struct nbd_config cfg;
  char path[64];
  int fd = memfd_create("fuzz.conf", MFD_CLOEXEC);

  if (fd == -1 || write(fd, data, size) != (ssize_t)size)
    abort();
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  memset(&cfg, 0, sizeof cfg);
  if (config_load_file(path, &cfg, fuzz_errs) == 0)
    config_free(&cfg);
  close(fd);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct nbd_config cfg;
  char *text;

  if (fuzz_errs == NULL && (fuzz_errs = fopen("/dev/null", "w")) == NULL)
    abort();
  if (memchr(data, '\0', size)) {
    fuzz_config_via_file(data, size);
    return 0;
  }
  text = malloc(size + 1);
  if (text == NULL)
    return 0;
  memcpy(text, data, size);
  text[size] = '\0';
  memset(&cfg, 0, sizeof cfg);
  if (config_parse_string(text, "fuzz.conf", &cfg, fuzz_errs) == 0)
    config_free(&cfg);
  free(text);
  return 0;
}
