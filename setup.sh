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
build_pkgs=(cmake make gcc musl-tools pkg-config)
test_pkgs=(check libnbd-bin python3-libnbd nbdkit qemu-utils binutils file fdisk fio groff-base)
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

build_musl() {
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
