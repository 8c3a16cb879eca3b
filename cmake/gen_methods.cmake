# Generate methods_gen.h from src/methods.def.
#
# Usage: cmake -DIN=src/methods.def -DOUT=build/gen/methods_gen.h -P gen_methods.cmake
#
# The output is a plain, readable header (open it in the build tree when
# debugging): one typedef per method, the ops struct fields, the
# PASSTHROUGH_<m>/UNSUPPORTED_<m> bodies and NBD_REQUIRED_METHODS(layer), which
# names layer_<m> for every datapath and capability method so that a layer
# that neither implements nor passes through a method fails to compile with
# "'<layer>_<method>' undeclared".

cmake_policy(SET CMP0007 NEW)
file(STRINGS "${IN}" lines)
set(typedefs "")
set(fields "")
set(required "")
set(lifecycle "")
set(pass "")
set(unsup "")
set(nextdecl "")
set(names "")
set(enum "")
set(count 0)
foreach(line IN LISTS lines)
  if(line MATCHES "^[ \t]*#" OR line MATCHES "^[ \t]*$")
    continue()
  endif()
  string(REPLACE "|" ";" cols "${line}")
  list(LENGTH cols ncols)
  if(NOT ncols EQUAL 5)
    message(FATAL_ERROR "${IN}: bad line (want 5 columns): ${line}")
  endif()
  list(GET cols 0 kind)
  list(GET cols 1 name)
  list(GET cols 2 ret)
  list(GET cols 3 params)
  list(GET cols 4 def)
  if(NOT kind MATCHES "^(data|cap|life|opt)$")
    message(FATAL_ERROR "${IN}: unknown kind '${kind}' in: ${line}")
  endif()

  # Parameter names, for forwarding calls and (void) casts.
  set(argnames "")
  set(voids "")
  if(NOT params STREQUAL "")
    string(REPLACE "," ";" plist "${params}")
    foreach(p IN LISTS plist)
      string(STRIP "${p}" p)
      if(NOT p MATCHES "([A-Za-z_][A-Za-z0-9_]*)$")
        message(FATAL_ERROR "${IN}: cannot find parameter name in '${p}'")
      endif()
      string(APPEND argnames ", ${CMAKE_MATCH_1}")
      string(APPEND voids " (void)${CMAKE_MATCH_1};")
    endforeach()
    set(fullparams "struct nbd_ctx *self, struct nbd_ctx *next, ${params}")
    set(nextparams "struct nbd_ctx *next, ${params}")
  else()
    set(fullparams "struct nbd_ctx *self, struct nbd_ctx *next")
    set(nextparams "struct nbd_ctx *next")
  endif()
  string(REGEX REPLACE "^, " "" nextargs "${argnames}")
  if(nextargs STREQUAL "")
    set(nextcall "next")
  else()
    set(nextcall "next, ${nextargs}")
  endif()

  string(TOUPPER "${name}" uname)
  string(APPEND typedefs "typedef ${ret} nbd_${name}_fn(${fullparams});\n")
  string(APPEND fields "  nbd_${name}_fn *${name}; \\\n")
  string(APPEND names "  \"${name}\", \\\n")
  string(APPEND enum "  NBD_METHOD_${uname} = ${count},\n")
  math(EXPR count "${count} + 1")

  if(kind STREQUAL "life")
    continue()
  endif()
  string(APPEND nextdecl "${ret} next_${name}(${nextparams});\n")
  if(kind STREQUAL "opt")
    continue()
  endif()
  string(APPEND required "  .${name} = layer##_${name}, \\\n")
  string(APPEND pass
    "#define PASSTHROUGH_${name}(layer) \\\n"
    "  static ${ret} layer##_${name}(${fullparams}) \\\n"
    "  { (void)self; return next_${name}(${nextcall}); }\n")
  string(APPEND unsup
    "#define UNSUPPORTED_${name}(layer) \\\n"
    "  static ${ret} layer##_${name}(${fullparams}) \\\n"
    "  { (void)self; (void)next;${voids} return ${def}; }\n")
endforeach()

set(out "/* Generated from src/methods.def by cmake/gen_methods.cmake.  Do not edit. */\n")
string(APPEND out "#ifndef NBDSTACK_METHODS_GEN_H\n#define NBDSTACK_METHODS_GEN_H\n\n")
string(APPEND out "struct nbd_ctx;\nstruct nbd_extents;\nstruct nbd_source;\n\n")
string(APPEND out "enum nbd_method {\n${enum}  NBD_METHOD_COUNT = ${count}\n};\n\n")
string(APPEND out "${typedefs}\n")
string(APPEND out "/* Fields of struct nbd_layer_ops, one function pointer per method. */\n")
string(APPEND out "#define NBD_OPS_FIELDS \\\n${fields}  /* end */\n\n")
string(APPEND out "/* Method names, indexed by enum nbd_method. */\n")
string(APPEND out "#define NBD_METHOD_NAMES \\\n${names}  /* end */\n\n")
string(APPEND out "/* Every datapath and capability method a layer must provide: its own\n")
string(APPEND out " * function layer_<method>, or one made by PASSTHROUGH(layer, method) or\n")
string(APPEND out " * UNSUPPORTED(layer, method).  A missing one stops the build with\n")
string(APPEND out " * \"'<layer>_<method>' undeclared\". */\n")
string(APPEND out "#define NBD_REQUIRED_METHODS(layer) \\\n${required}  /* end */\n\n")
string(APPEND out "/* Call a method of the layer below, with the engine's checks and emulation. */\n")
string(APPEND out "${nextdecl}\n")
string(APPEND out "/* Forward a method unchanged to the layer below (filters). */\n${pass}\n")
string(APPEND out "/* Declare a method unsupported; it returns the column 'default' (backends). */\n${unsup}\n")
string(APPEND out "#endif\n")

# Only rewrite when the content changed, so dependent objects do not rebuild.
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
  if(old STREQUAL out)
    return()
  endif()
endif()
file(WRITE "${OUT}" "${out}")
