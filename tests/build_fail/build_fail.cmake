# CTest script: a filter that leaves out a method must not compile, and the
# compiler must name the filter and the method.
#
#   cmake -DCC=<compiler> -DSRC=<missing_method.c> -DINCLUDES="<dir>;<dir>"
#         -P build_fail.cmake
#
# Two compiles of the same file: without WITH_TRIM it must fail with an
# error that names 'missing_trim'; with -DWITH_TRIM (trim passed through)
# it must succeed under -Werror.  The second run proves the first failed
# for the right reason and not for a typo in the test filter.

foreach(v CC SRC INCLUDES)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "build_fail.cmake: -D${v}= is required")
  endif()
endforeach()

set(flags -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Werror -c -o /dev/null)
foreach(dir IN LISTS INCLUDES)
  list(APPEND flags -I${dir})
endforeach()

execute_process(COMMAND ${CC} ${flags} ${SRC}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(rc EQUAL 0)
  message(FATAL_ERROR "a filter without trim compiled; the build must refuse it")
endif()
# gcc: "'missing_trim' undeclared"; clang: "undeclared identifier 'missing_trim'".
if(NOT out MATCHES "missing_trim" OR NOT out MATCHES "undeclared")
  message(FATAL_ERROR "compile failed, but not by naming missing_trim:\n${out}")
endif()
# Every error must be about the missing method, nothing else.
# (';' would split CMake list items: gcc adds "; did you mean ...".)
string(REPLACE ";" "," flat "${out}")
string(REGEX MATCHALL "[^\n]*error:[^\n]*" errors "${flat}")
foreach(e IN LISTS errors)
  if(NOT e MATCHES "missing_trim")
    message(FATAL_ERROR "unrelated compile error: ${e}\n${out}")
  endif()
endforeach()
message(STATUS "without trim: refused as expected:\n${out}")

execute_process(COMMAND ${CC} ${flags} -DWITH_TRIM ${SRC}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "control compile with trim passed through failed:\n${out}")
endif()
message(STATUS "with PASSTHROUGH(missing, trim): compiles")
