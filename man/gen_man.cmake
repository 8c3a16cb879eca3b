# Writes one man page: the built binary prints it (nbdstack --man PAGE,
# src/manpage.c) from the same tables --list and --help use.
#   cmake -DBIN=path/nbdstack -DPAGE=1|5|filters|backends -DOUT=file -P gen_man.cmake
execute_process(COMMAND ${BIN} --man ${PAGE}
                OUTPUT_FILE ${OUT}.tmp ERROR_VARIABLE err RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  file(REMOVE ${OUT}.tmp)
  message(FATAL_ERROR "${BIN} --man ${PAGE} failed (${rc}): ${err}")
endif()
file(RENAME ${OUT}.tmp ${OUT})
