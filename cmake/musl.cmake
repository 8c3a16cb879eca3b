# Toolchain file for the shipped binary: musl-gcc, fully static.
# musl-gcc sees only musl's headers; nbdstack needs no kernel headers (the
# few ioctl numbers it uses are defined in the source).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_C_COMPILER musl-gcc)
set(NBD_STATIC ON CACHE BOOL "" FORCE)
