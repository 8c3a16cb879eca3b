# CTest script: a layer file that the build must refuse, in every build.
#
#   cmake -DCC=<compiler> -DSRC=<file.c> -DINCLUDES="<dir>;<dir>"
#         -DEXPECT="<regex>;<regex>" [-DDEFS="-DX;-DY"] -P expect_error.cmake
#
# Two compiles of the same file.  The first, with DEFS, takes the default
# warnings and no -Werror, as a plain build does: it must fail, and one
# error line must match every regex in EXPECT (the layer and the method).
# The second, with -DCONTROL and -Werror, must succeed: it proves the
# failure was the one we mean and not a typo in the test file.

foreach(v CC SRC INCLUDES EXPECT)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "expect_error.cmake: -D${v}= is required")
  endif()
endforeach()

set(flags -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -c -o /dev/null)
foreach(dir IN LISTS INCLUDES)
  list(APPEND flags -I${dir})
endforeach()

execute_process(COMMAND ${CC} ${flags} ${DEFS} ${SRC}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(rc EQUAL 0)
  message(FATAL_ERROR "${SRC} ${DEFS} compiled without -Werror; "
          "the build must refuse it:\n${out}")
endif()
# (';' would split CMake list items.)
string(REPLACE ";" "," flat "${out}")
string(REGEX MATCHALL "[^\n]*error[^\n]*" errors "${flat}")
set(found "")
foreach(e IN LISTS errors)
  set(all 1)
  foreach(re IN LISTS EXPECT)
    if(NOT e MATCHES "${re}")
      set(all 0)
    endif()
  endforeach()
  if(all)
    set(found "${e}")
    break()
  endif()
endforeach()
if(found STREQUAL "")
  message(FATAL_ERROR "compile failed, but no error matches all of "
          "'${EXPECT}':\n${out}")
endif()
message(STATUS "refused as expected: ${found}")

execute_process(COMMAND ${CC} ${flags} -Werror -DCONTROL ${SRC}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "control compile (-DCONTROL -Werror) failed:\n${out}")
endif()
message(STATUS "with -DCONTROL: compiles under -Werror")
