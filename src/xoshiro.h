/* nbdstack: the pseudo-random generator nbdkit's random and sparse-random
 * plugins use (xoshiro256** seeded through splitmix64, as in nbdkit's
 * common/include/random.h), so that a seed gives the same disk here as
 * there.  Header-only: the backends call it per byte or per block. */
#ifndef NBDSTACK_XOSHIRO_H
#define NBDSTACK_XOSHIRO_H

#include <stdint.h>

struct xoshiro_state {
  uint64_t s[4];
};

static inline uint64_t
xoshiro_splitmix(uint64_t *seed)
{
  uint64_t z = (*seed += UINT64_C(0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

static inline void
xoshiro_seed(uint64_t seed, struct xoshiro_state *st)
{
  st->s[0] = xoshiro_splitmix(&seed);
  st->s[1] = xoshiro_splitmix(&seed);
  st->s[2] = xoshiro_splitmix(&seed);
  st->s[3] = xoshiro_splitmix(&seed);
}

static inline uint64_t
xoshiro_rotl(uint64_t x, int k)
{
  return (x << k) | (x >> (64 - k));
}

static inline uint64_t
xoshiro_next(struct xoshiro_state *st)
{
  const uint64_t result = xoshiro_rotl(st->s[1] * 5, 7) * 9;
  const uint64_t t = st->s[1] << 17;

  st->s[2] ^= st->s[0];
  st->s[3] ^= st->s[1];
  st->s[1] ^= st->s[2];
  st->s[0] ^= st->s[3];
  st->s[2] ^= t;
  st->s[3] = xoshiro_rotl(st->s[3], 45);
  return result;
}

#endif
