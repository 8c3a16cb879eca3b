# Generate methods_gen.h from src/methods.def.
#
# Usage: cmake -DIN=src/methods.def -DOUT=build/gen/methods_gen.h -P gen_methods.cmake
#
# The output is a plain, readable header (open it in the build tree when
# debugging).  Its first part, included by every layer through layer.h:
# one typedef per method, the ops struct fields, the capability fields of
# struct nbd_ctx, the PASSTHROUGH_<m>/UNSUPPORTED_<m> bodies,
# NBD_REQUIRED_METHODS(layer), which names layer_<m> for every datapath and
# capability method so that a layer that neither implements nor passes
# through a method fails to compile with "'<layer>_<method>' undeclared",
# and the checks the register macros run on each layer (method types,
# PASSTHROUGH in a backend).  Its second part, compiled only into engine.c
# (NBD_METHODS_GEN_ENGINE): the function that asks every capability once
# per connection and the next_<cap>() accessors of the cached answers.

cmake_policy(SET CMP0007 NEW)
cmake_policy(SET CMP0057 NEW)
# A '[' makes CMake keep the rest of the file as one list element, which
# silently drops every method after it: refuse it, comments included.
file(READ "${IN}" _raw)
string(FIND "${_raw}" "[" _bracket)
if(NOT _bracket EQUAL -1)
  message(FATAL_ERROR "${IN}: no '[' anywhere in this file (CMake lists "
                      "treat it as a bracket and drop the lines after it)")
endif()
file(STRINGS "${IN}" lines)
set(typedefs "")
set(fields "")
set(required "")
set(typecheck "")
set(backendcheck "")
set(lifecycle "")
set(pass "")
set(unsup "")
set(nextdecl "")
set(names "")
set(enum "")
set(capfields "")
set(ask "")
set(accessors "")
set(cached "")
set(count 0)
foreach(line IN LISTS lines)
  if(line MATCHES "^[ \t]*#" OR line MATCHES "^[ \t]*$")
    continue()
  endif()
  string(REPLACE "|" ";" cols "${line}")
  list(LENGTH cols ncols)
  if(NOT ncols EQUAL 6)
    message(FATAL_ERROR "${IN}: bad line (want 6 columns): ${line}")
  endif()
  list(GET cols 0 kind)
  list(GET cols 1 name)
  list(GET cols 2 ret)
  list(GET cols 3 params)
  list(GET cols 4 def)
  list(GET cols 5 cache)
  if(NOT kind MATCHES "^(data|cap|life|opt|name|conn)$")
    message(FATAL_ERROR "${IN}: unknown kind '${kind}' in: ${line}")
  endif()
  if(NOT kind STREQUAL "cap" AND NOT cache STREQUAL "")
    message(FATAL_ERROR "${IN}: only a cap has a cache column: ${line}")
  endif()

  # Parameter names, for forwarding calls and (void) casts; pointer
  # parameters with their pointee types, for capability out-parameters.
  set(argnames "")
  set(voids "")
  set(outnames "")
  set(outtypes "")
  if(NOT params STREQUAL "")
    string(REPLACE "," ";" plist "${params}")
    foreach(p IN LISTS plist)
      string(STRIP "${p}" p)
      if(NOT p MATCHES "([A-Za-z_][A-Za-z0-9_]*)$")
        message(FATAL_ERROR "${IN}: cannot find parameter name in '${p}'")
      endif()
      set(pname "${CMAKE_MATCH_1}")
      string(APPEND argnames ", ${pname}")
      string(APPEND voids " (void)${pname};")
      if(p MATCHES "^(.*[^ ]) *\\* *${pname}$")
        list(APPEND outnames "${pname}")
        list(APPEND outtypes "${CMAKE_MATCH_1}")
      endif()
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
  string(APPEND typecheck
    "  NBD_CHECK_TYPE(layer, what, ${name}, \"${ret} (${fullparams})\"); \\\n")
  string(APPEND backendcheck "  NBD_CHECK_NOT_PASSED(layer, ${name}); \\\n")
  # The marker NBD_CHECK_NOT_PASSED looks for: an array of 2 (never
  # defined, never used) that a backend's registration redeclares
  # without a size.
  string(APPEND pass
    "#define PASSTHROUGH_${name}(layer) \\\n"
    "  extern char nbd_passthrough_##layer##_${name}[2]; \\\n"
    "  static ${ret} layer##_${name}(${fullparams}) \\\n"
    "  { (void)self; return next_${name}(${nextcall}); }\n")
  string(APPEND unsup
    "#define UNSUPPORTED_${name}(layer) \\\n"
    "  static ${ret} layer##_${name}(${fullparams}) \\\n"
    "  { (void)self; (void)next;${voids} return ${def}; }\n")

  if(NOT kind STREQUAL "cap")
    continue()
  endif()
  # ---- the capability cache: fields, the ask, the accessor ----
  set(cond "")
  if(cache MATCHES "^(.*) if writable$")
    set(cond 1)
    set(cache "${CMAKE_MATCH_1}")
  endif()
  if(NOT cache MATCHES "^[a-z_]+( [a-z_]+)*$")
    message(FATAL_ERROR "${IN}: bad cache column '${cache}' in: ${line}")
  endif()
  set(cfields "${cache}")
  string(REPLACE " " ";" cfields "${cfields}")
  list(LENGTH cfields nf)
  list(LENGTH outnames nout)
  set(guard "")
  if(cond)
    if(NOT "can_write" IN_LIST cached)
      message(FATAL_ERROR "${IN}: '${name}' is 'if writable' but comes before can_write")
    endif()
    set(guard "!readonly && c->can_write")
  endif()
  set(body "")
  if(params STREQUAL "")
    if(NOT nf EQUAL 1)
      message(FATAL_ERROR "${IN}: '${name}' has no parameters: it keeps one field")
    endif()
    list(GET cfields 0 f)
    string(APPEND capfields "  ${ret} ${f}; \\\n")
    string(APPEND body
      "    ${ret} r = o->${name}(c, n);\n\n"
      "    if (r < 0) {\n"
      "      *failed = NBD_METHOD_${uname};\n"
      "      return (int)r;\n"
      "    }\n"
      "    c->${f} = r;\n")
    set(zero "    c->${f} = 0;\n")
    string(APPEND accessors
      "${ret}\nnext_${name}(struct nbd_ctx *next)\n{\n"
      "  return next->${f};\n}\n\n")
  else()
    if(NOT nf EQUAL nout)
      message(FATAL_ERROR "${IN}: '${name}' keeps one field per pointer parameter")
    endif()
    set(callargs "")
    set(copy "")
    set(zero "")
    math(EXPR last "${nf} - 1")
    foreach(i RANGE ${last})
      list(GET cfields ${i} f)
      list(GET outtypes ${i} t)
      list(GET outnames ${i} pn)
      string(APPEND capfields "  ${t} ${f}; \\\n")
      string(APPEND callargs ", &c->${f}")
      string(APPEND copy "  *${pn} = next->${f};\n")
      string(APPEND zero "    c->${f} = 0;\n")
    endforeach()
    # Zeroed first: an UNSUPPORTED body leaves the out-parameters alone.
    string(APPEND body "    ${ret} r;\n\n${zero}"
      "    r = o->${name}(c, n${callargs});\n"
      "    if (r < 0) {\n"
      "      *failed = NBD_METHOD_${uname};\n"
      "      return (int)r;\n"
      "    }\n")
    string(APPEND accessors
      "${ret}\nnext_${name}(${nextparams})\n{\n${copy}  return 0;\n}\n\n")
  endif()
  list(APPEND cached ${cfields})
  if(guard STREQUAL "")
    string(APPEND ask "  {\n${body}  }\n")
  else()
    string(APPEND ask "  if (${guard}) {\n${body}  }\n  else {\n${zero}  }\n")
  endif()
endforeach()

set(out "/* Generated from src/methods.def by cmake/gen_methods.cmake.  Do not edit. */\n")
string(APPEND out "#ifndef NBDSTACK_METHODS_GEN_H\n#define NBDSTACK_METHODS_GEN_H\n\n")
string(APPEND out "struct nbd_ctx;\nstruct nbd_extents;\nstruct nbd_exports;\nstruct nbd_source;\nstruct nbd_sink;\nstruct nbd_async;\n\n")
string(APPEND out "enum nbd_method {\n${enum}  NBD_METHOD_COUNT = ${count}\n};\n\n")
string(APPEND out "${typedefs}\n")
string(APPEND out "/* Fields of struct nbd_layer_ops, one function pointer per method. */\n")
string(APPEND out "#define NBD_OPS_FIELDS \\\n${fields}  /* end */\n\n")
string(APPEND out "/* Fields of struct nbd_ctx: every capability's answer, asked once per\n")
string(APPEND out " * connection (the column 'cache'). */\n")
string(APPEND out "#define NBD_CTX_CAP_FIELDS \\\n${capfields}  /* end */\n\n")
string(APPEND out "/* Method names, indexed by enum nbd_method. */\n")
string(APPEND out "#define NBD_METHOD_NAMES \\\n${names}  /* end */\n\n")
string(APPEND out "/* Every datapath and capability method a layer must provide: its own\n")
string(APPEND out " * function layer_<method>, or one made by PASSTHROUGH(layer, method) or\n")
string(APPEND out " * UNSUPPORTED(layer, method).  A missing one stops the build with\n")
string(APPEND out " * \"'<layer>_<method>' undeclared\". */\n")
string(APPEND out "#define NBD_REQUIRED_METHODS(layer) \\\n${required}  /* end */\n\n")
string(APPEND out "/* The type of every method NBD_REQUIRED_METHODS named, each checked\n")
string(APPEND out " * after the ops struct (what: \"filter\" or \"backend\").  Without it a\n")
string(APPEND out " * wrong signature, or a macro alias to a function of another shape, is\n")
string(APPEND out " * only a warning, and the call misbehaves at run time.  The sizes are a\n")
string(APPEND out " * detour so that gcc reports a missing method once, as undeclared, and\n")
string(APPEND out " * not again as a broken assertion. */\n")
string(APPEND out "#define NBD_CHECK_TYPE(layer, what, m, want) \\\n")
string(APPEND out "  _Static_assert(sizeof(struct { char nbd_c_[__builtin_types_compatible_p( \\\n")
string(APPEND out "      __typeof__(&layer##_##m), nbd_##m##_fn *) ? 1 : 2]; }) == 1, \\\n")
string(APPEND out "    what \" \" #layer \": method \" #m \": \" #layer \"_\" #m \\\n")
string(APPEND out "    \" must be an nbd_\" #m \"_fn: \" want)\n")
string(APPEND out "#define NBD_CHECK_METHOD_TYPES(layer, what) \\\n${typecheck}  /* end */\n\n")
string(APPEND out "/* A backend has nothing below it: PASSTHROUGH there would call through\n")
string(APPEND out " * a NULL next on the first request.  PASSTHROUGH_<m> declares\n")
string(APPEND out " * nbd_passthrough_<layer>_<m> as char[2]; the backend's registration\n")
string(APPEND out " * declares it again without a size, so its type is char[2] only when the\n")
string(APPEND out " * file passed the method through. */\n")
string(APPEND out "#define NBD_CHECK_NOT_PASSED(layer, m) \\\n")
string(APPEND out "  extern char nbd_passthrough_##layer##_##m[]; \\\n")
string(APPEND out "  _Static_assert(__builtin_types_compatible_p( \\\n")
string(APPEND out "      __typeof__(nbd_passthrough_##layer##_##m), char[1]), \\\n")
string(APPEND out "    \"backend \" #layer \": method \" #m \": PASSTHROUGH(\" #layer \", \" #m \\\n")
string(APPEND out "    \") in a backend, which has no layer below; write \" #layer \"_\" #m \\\n")
string(APPEND out "    \" or say UNSUPPORTED(\" #layer \", \" #m \")\")\n")
string(APPEND out "#define NBD_CHECK_BACKEND_METHODS(layer) \\\n${backendcheck}  /* end */\n\n")
string(APPEND out "/* Call a method of the layer below, with the engine's checks and emulation. */\n")
string(APPEND out "${nextdecl}\n")
string(APPEND out "/* Forward a method unchanged to the layer below (filters only). */\n${pass}\n")
string(APPEND out "/* Declare a method unsupported; it returns the column 'default' (backends). */\n${unsup}\n")
string(APPEND out "#endif\n\n")
string(APPEND out "#if defined(NBD_METHODS_GEN_ENGINE) && !defined(NBDSTACK_METHODS_GEN_ENGINE_DONE)\n")
string(APPEND out "#define NBDSTACK_METHODS_GEN_ENGINE_DONE\n\n")
string(APPEND out "/* Asks every capability of one layer once, in src/methods.def order, into\n")
string(APPEND out " * the fields of c.  0, or the -errno of the first that failed with\n")
string(APPEND out " * *failed set to it.  The engine normalises the answers afterwards. */\n")
string(APPEND out "static int\nengine_gen_ask_caps(struct nbd_ctx *c, int readonly, enum nbd_method *failed)\n{\n")
string(APPEND out "  const struct nbd_layer_ops *o = c->layer->ops;\n  struct nbd_ctx *n = c->next;\n\n")
string(APPEND out "${ask}  return 0;\n}\n\n")
string(APPEND out "/* Capabilities of the layer below: the cached answers. */\n${accessors}")
string(APPEND out "#endif\n")

# Only rewrite when the content changed, so dependent objects do not rebuild.
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
  if(old STREQUAL out)
    return()
  endif()
endif()
file(WRITE "${OUT}" "${out}")
