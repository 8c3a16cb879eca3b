#!/usr/bin/env bash
# nbdstack set-up: installs what is missing (Debian, as root or via sudo),
# builds, then either starts the server on config.example or runs the
# whole test suite.
#
#   ./setup.sh run     build the static binary and serve config.example
#   ./setup.sh test    build the static binary and the test build, run CTest
#   ./setup.sh build   build the static binary only
#   ./setup.sh ci      test, then the reliability checks: the whole suite
#                      under ASan+UBSan, the concurrent tests under TSan,
#                      each fuzzer for FUZZ_SECONDS (30) (cmake/analysis.cmake)
set -euo pipefail
cd "$(dirname "$0")"

mode=${1:-run}
build_pkgs=(cmake make gcc musl-tools pkg-config dpkg-dev)
# libmbedtls-dev: the glibc test build's TLS library (the static binary's
# is built from Debian's mbedtls source package, fetch_mbedtls below);
# gnutls-bin: certtool and gnutls-cli for the TLS tests; curl and
# prometheus (promtool check metrics) for the metrics endpoint's test;
# python3-botocore (SigV4 reference signatures), python3-boto3 and
# nbdkit-plugin-python (nbdkit's S3 plugin) and the ceph packages: the s3
# backend's tests against a single-node Ceph cluster (tests/ceph/,
# ./setup.sh ci runs them).
test_pkgs=(check libnbd-bin python3-libnbd nbdkit qemu-utils binutils file fdisk fio groff-base
           libmbedtls-dev gnutls-bin openssl curl prometheus
           python3-botocore python3-boto3 nbdkit-plugin-python
           ceph-mon ceph-osd radosgw ceph-common)
# ci: fuzzers (clang 14 + its sanitizer runtimes), valgrind, static analysis
ci_pkgs=(clang libclang-rt-14-dev valgrind cppcheck clang-tidy)

install_missing() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "setup: installing ${missing[*]}" >&2
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
}

# mbedTLS for the static binary: Debian's source package, unpacked under
# third_party/ (not committed), which cmake/mbedtls.cmake compiles with
# musl-gcc.  apt-get source needs a deb-src entry: a separate sources
# file with the same archive and key as debian.sources, which is left
# alone.  NBD_TLS=OFF skips all of it.
mbedtls_dir=third_party/mbedtls-src
fetch_mbedtls() {
  [ "${NBD_TLS:-ON}" = OFF ] && return 0
  [ -f "$mbedtls_dir/include/mbedtls/ssl.h" ] && return 0
  local sudo=() list=/etc/apt/sources.list.d/debian-src.sources
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  if ! apt-get source --print-uris mbedtls >/dev/null 2>&1; then
    if [ ! -f "$list" ]; then
      echo "setup: adding $list (deb-src for Debian's main archive)" >&2
      # debian.sources with every Types: deb turned into deb-src.
      sed -n 's/^Types:.*/Types: deb-src/; p' /etc/apt/sources.list.d/debian.sources \
        | "${sudo[@]}" tee "$list" >/dev/null
    fi
    "${sudo[@]}" apt-get update -qq
  fi
  local tmp
  tmp=$(mktemp -d)
  ( cd "$tmp" && apt-get source --download-only -qq mbedtls >/dev/null 2>&1 ) ||
    { echo "setup: apt-get source mbedtls failed" >&2; rm -rf "$tmp"; return 1; }
  rm -rf "$mbedtls_dir" && mkdir -p third_party
  # apt checked the files against the signed Sources index; --no-check
  # only skips dpkg-source's own look for the uploader's key.  It applies
  # Debian's patches.
  dpkg-source --no-check -x "$tmp"/mbedtls_*.dsc "$tmp/src" >/dev/null
  mv "$tmp/src" "$mbedtls_dir"
  rm -rf "$tmp"
  echo "setup: mbedTLS $(dpkg-parsechangelog -l "$mbedtls_dir/debian/changelog" -S Version) in $mbedtls_dir" >&2
}

build_musl() {
  fetch_mbedtls
  cmake --preset musl -DNBD_WERROR="${NBD_WERROR:-OFF}" >/dev/null
  cmake --build --preset musl -j"$(nproc)"
}

case "$mode" in
  build)
    install_missing "${build_pkgs[@]}"
    build_musl
    ;;
  run)
    install_missing "${build_pkgs[@]}"
    build_musl
    echo "setup: starting nbdstack on config.example (Ctrl-C stops it)" >&2
    exec ./build-musl/nbdstack -c config.example
    ;;
  test)
    install_missing "${build_pkgs[@]}" "${test_pkgs[@]}"
    build_musl
    cmake --preset glibc -DNBD_WERROR="${NBD_WERROR:-OFF}" >/dev/null
    cmake --build --preset glibc -j"$(nproc)"
    NBD_REQUIRE_STATIC=1 ctest --preset glibc -j2
    ;;
  ci)
    # Every step runs even if an earlier one failed, so that one CI run
    # shows every broken check; the exit status says whether any failed.
    install_missing "${build_pkgs[@]}" "${test_pkgs[@]}" "${ci_pkgs[@]}"
    failed=()
    ci_step() {
      local name=$1 t0=$SECONDS; shift
      echo "setup: ci: === $name" >&2
      if "$@"; then echo "setup: ci: $name passed ($((SECONDS - t0)) s)" >&2
      else echo "setup: ci: $name FAILED ($((SECONDS - t0)) s)" >&2; failed+=("$name"); fi
    }
    ci_build() {
      cmake --preset "$1" -DNBD_WERROR="${NBD_WERROR:-OFF}" >/dev/null &&
        cmake --build --preset "$1" -j"$(nproc)"
    }
    ci_step "test (static binary, unit, integration, static analysis, valgrind)" "$0" test
    ci_step "asan build" ci_build asan
    ci_step "asan+ubsan suite" ctest --preset asan -j2
    ci_step "tsan build" ci_build tsan
    ci_step "tsan concurrency tests" ctest --preset tsan -j2
    ci_step "fuzz build" ci_build fuzz
    ci_step "fuzzers, ${FUZZ_SECONDS:-30} s each" ctest --preset fuzz -j2
    ci_step "s3 backend on a Ceph cluster" env NBD_REQUIRE_STATIC=1 ctest --preset ceph
    if [ ${#failed[@]} -ne 0 ]; then
      printf 'setup: ci: FAILED: %s\n' "${failed[@]}" >&2
      exit 1
    fi
    echo "setup: ci: all passed" >&2
    ;;
  *)
    echo "usage: $0 run|test|build|ci" >&2
    exit 2
    ;;
esac
