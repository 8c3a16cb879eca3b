# nbdstack reliability checks beyond the unit and integration tests.
# Included from the top-level CMakeLists.txt after tests/.
#
#   fuzz/<harness>       libFuzzer harnesses (tests/fuzz/), -DNBD_FUZZ=ON,
#                        clang only: cmake --preset fuzz
#   static_analysis      clang-tidy (.clang-tidy) and cppcheck over src/,
#                        backends/, filters/ (tests/static_analysis.sh)
#   valgrind/smoke       this build's nbdstack under memcheck with a short
#                        client workload (tests/valgrind_smoke.sh)
#   sanitizer/reports    in NBD_SANITIZE builds: fails if any sanitizer wrote
#                        a report while the other tests ran (the presets send
#                        reports to build-*/sanitizer-logs/, because a report
#                        from the server process would otherwise vanish with
#                        the integration test's temp dir)
#
# The last three only exist where they make sense: static analysis and
# valgrind in a plain glibc build (valgrind cannot run a sanitized binary,
# and the musl build has no tests), sanitizer/reports in sanitizer builds.

if(NBD_FUZZ)
  enable_testing()
  add_subdirectory(tests/fuzz)
endif()

if(NOT NBD_BUILD_TESTS)
  return()
endif()

if(NOT NBD_SANITIZE AND NOT NBD_FUZZ AND NOT NBD_STATIC)
  add_test(NAME static_analysis
    COMMAND bash ${CMAKE_SOURCE_DIR}/tests/static_analysis.sh ${CMAKE_BINARY_DIR})
  set_tests_properties(static_analysis PROPERTIES TIMEOUT 600
    SKIP_RETURN_CODE 77 LABELS static ENVIRONMENT "SRCDIR=${CMAKE_SOURCE_DIR}")

  add_test(NAME valgrind/smoke
    COMMAND bash ${CMAKE_SOURCE_DIR}/tests/valgrind_smoke.sh)
  set_tests_properties(valgrind/smoke PROPERTIES TIMEOUT 300
    SKIP_RETURN_CODE 77 LABELS valgrind
    ENVIRONMENT "NBDSTACK=$<TARGET_FILE:nbdstack>;SRCDIR=${CMAKE_SOURCE_DIR}")
endif()

if(NBD_SANITIZE)
  set(NBD_SANITIZER_LOGS ${CMAKE_BINARY_DIR}/sanitizer-logs)
  file(MAKE_DIRECTORY ${NBD_SANITIZER_LOGS})
  add_test(NAME sanitizer/reports
    COMMAND bash ${CMAKE_SOURCE_DIR}/cmake/sanitizer_reports.sh ${NBD_SANITIZER_LOGS})
  # Runs after every other test (ordering only: a filtered run still works).
  get_property(_nbd_all_tests DIRECTORY ${CMAKE_SOURCE_DIR}/tests PROPERTY TESTS)
  set_tests_properties(sanitizer/reports PROPERTIES TIMEOUT 60
    SKIP_RETURN_CODE 77 DEPENDS "${_nbd_all_tests}")
endif()
