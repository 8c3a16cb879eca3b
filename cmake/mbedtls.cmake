# TLS (src/tls.c) with mbedTLS 2.28.
#
#   -DNBD_TLS=OFF              no TLS: STARTTLS is refused, --tls=on fails
#   NBD_MBEDTLS=source         compile Debian's mbedtls source package (setup.sh
#                              unpacks it into third_party/mbedtls-src, not
#                              committed) with this build's compiler and the
#                              trimmed cmake/nbd_mbedtls_config.h: the static
#                              musl binary (Debian's libmbedtls is for glibc)
#   NBD_MBEDTLS=system         link Debian's libmbedtls-dev (glibc builds)
#
# Every target of the tree links nbd_tls (link_libraries below): the core's
# objects need its headers and the same config the library was built with,
# and every executable made of them needs the library.
option(NBD_TLS "Build with TLS (STARTTLS, mbedTLS)" ON)
if(CMAKE_C_COMPILER MATCHES "musl")
  set(_nbd_mbedtls_default source)
else()
  set(_nbd_mbedtls_default system)
endif()
set(NBD_MBEDTLS ${_nbd_mbedtls_default} CACHE STRING "mbedTLS: source (build it) or system (libmbedtls-dev)")
set(NBD_MBEDTLS_SOURCE_DIR ${CMAKE_SOURCE_DIR}/third_party/mbedtls-src CACHE PATH
    "Unpacked mbedtls source package (setup.sh fetches it)")

add_library(nbd_tls INTERFACE)
if(NOT NBD_TLS)
  message(STATUS "TLS: off (NBD_TLS=OFF)")
  return()
endif()
target_compile_definitions(nbd_tls INTERFACE NBD_HAVE_TLS=1)

if(NBD_MBEDTLS STREQUAL "source")
  if(NOT EXISTS ${NBD_MBEDTLS_SOURCE_DIR}/include/mbedtls/ssl.h)
    message(FATAL_ERROR "TLS: no mbedtls source in ${NBD_MBEDTLS_SOURCE_DIR}: "
            "run ./setup.sh build (it fetches Debian's mbedtls source package), "
            "or configure with -DNBD_TLS=OFF")
  endif()
  file(GLOB _mbedtls_sources ${NBD_MBEDTLS_SOURCE_DIR}/library/*.c)
  # cmake/mbedtls-2.28-write-nocopy.patch: mbedtls_ssl_write encrypts the
  # caller's plaintext straight into the record instead of copying it in
  # first (docs/tls.md, "Throughput").  Applied to a copy in the build
  # tree, never to the shared source; a hunk that does not apply stops
  # the build.
  set(_nbd_patch ${CMAKE_SOURCE_DIR}/cmake/mbedtls-2.28-write-nocopy.patch)
  set(_nbd_ssl_msg ${CMAKE_BINARY_DIR}/mbedtls-patched/ssl_msg.c)
  find_program(NBD_PATCH_PROGRAM patch)
  if(NOT NBD_PATCH_PROGRAM)
    message(FATAL_ERROR "TLS: 'patch' is needed to build mbedTLS from source "
            "(apt-get install patch)")
  endif()
  add_custom_command(OUTPUT ${_nbd_ssl_msg}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/mbedtls-patched
    COMMAND ${CMAKE_COMMAND} -E copy ${NBD_MBEDTLS_SOURCE_DIR}/library/ssl_msg.c
            ${_nbd_ssl_msg}.tmp
    COMMAND ${NBD_PATCH_PROGRAM} --quiet --force --no-backup-if-mismatch
            -i ${_nbd_patch} ${_nbd_ssl_msg}.tmp
    COMMAND ${CMAKE_COMMAND} -E rename ${_nbd_ssl_msg}.tmp ${_nbd_ssl_msg}
    DEPENDS ${NBD_MBEDTLS_SOURCE_DIR}/library/ssl_msg.c ${_nbd_patch}
    COMMENT "Patching mbedTLS's ssl_msg.c (write without a copy)"
    VERBATIM)
  list(REMOVE_ITEM _mbedtls_sources ${NBD_MBEDTLS_SOURCE_DIR}/library/ssl_msg.c)
  list(APPEND _mbedtls_sources ${_nbd_ssl_msg})
  # MBEDTLS_GCM_ALT (nbd_mbedtls_config.h): our AES-GCM, see the file.
  add_library(nbd_mbedtls STATIC ${_mbedtls_sources} ${CMAKE_SOURCE_DIR}/cmake/nbd_gcm_alt.c)
  # Its own code, not ours: none of the tree's warnings or -Werror.
  set_property(TARGET nbd_mbedtls PROPERTY COMPILE_OPTIONS -D_GNU_SOURCE -w)
  target_compile_definitions(nbd_mbedtls PUBLIC
    "MBEDTLS_CONFIG_FILE=\"nbd_mbedtls_config.h\"")
  target_include_directories(nbd_mbedtls PUBLIC ${NBD_MBEDTLS_SOURCE_DIR}/include
                             ${CMAKE_SOURCE_DIR}/cmake)
  target_include_directories(nbd_mbedtls PRIVATE ${NBD_MBEDTLS_SOURCE_DIR}/library)
  target_link_libraries(nbd_tls INTERFACE nbd_mbedtls)
  # Test helper for tests/integration/test_gcm_alt.py (not installed).
  add_executable(nbd_gcm_check ${CMAKE_SOURCE_DIR}/cmake/nbd_gcm_check.c)
  target_link_libraries(nbd_gcm_check nbd_mbedtls)
  set_property(TARGET nbd_gcm_check PROPERTY COMPILE_OPTIONS -w)
  message(STATUS "TLS: mbedTLS built from ${NBD_MBEDTLS_SOURCE_DIR}")
elseif(NBD_MBEDTLS STREQUAL "system")
  find_path(MBEDTLS_INCLUDE_DIR mbedtls/ssl.h)
  find_library(MBEDTLS_LIB mbedtls)
  find_library(MBEDX509_LIB mbedx509)
  find_library(MBEDCRYPTO_LIB mbedcrypto)
  if(NOT MBEDTLS_INCLUDE_DIR OR NOT MBEDTLS_LIB OR NOT MBEDX509_LIB OR NOT MBEDCRYPTO_LIB)
    message(FATAL_ERROR "TLS: libmbedtls-dev not found (apt-get install libmbedtls-dev), "
            "or configure with -DNBD_TLS=OFF")
  endif()
  target_include_directories(nbd_tls INTERFACE ${MBEDTLS_INCLUDE_DIR})
  target_link_libraries(nbd_tls INTERFACE ${MBEDTLS_LIB} ${MBEDX509_LIB} ${MBEDCRYPTO_LIB})
  message(STATUS "TLS: system mbedTLS (${MBEDTLS_LIB})")
else()
  message(FATAL_ERROR "NBD_MBEDTLS must be source or system, not '${NBD_MBEDTLS}'")
endif()
