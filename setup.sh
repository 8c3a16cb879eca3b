#!/usr/bin/env bash
# nbdstack set-up: installs what is missing (Debian, as root or via sudo),
# builds, then either starts the server on config.example or runs the
# whole test suite.
#
#   ./setup.sh run     build the static binary and serve config.example
#   ./setup.sh test    build the static binary and the test build, run CTest
#   ./setup.sh build   build the static binary only
set -euo pipefail
cd "$(dirname "$0")"

mode=${1:-run}
build_pkgs=(cmake make gcc musl-tools pkg-config)
test_pkgs=(check libnbd-bin python3-libnbd nbdkit qemu-utils binutils file)

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
  *)
    echo "usage: $0 run|test|build" >&2
    exit 2
    ;;
esac
