#!/usr/bin/env bash
# Requests on the per-connection worker pool (--no-inline): real clients
# pipelining many requests per connection get every reply, and the data
# round-trips intact, so the concurrent path is exercised end to end.
. "$(dirname "$0")/lib.sh"
require_layer memory
require_tool nbdcopy qemu-img

head -c 64M /dev/urandom > "$T/in.img"
start_server "$T/w.sock" --no-inline -t 8 memory size=64M
check "nbdcopy in, 4 connections x 32 requests" \
    t nbdcopy -C 4 --requests=32 --request-size=65536 "$T/in.img" "$(uri "$T/w.sock")"
check "nbdcopy out, 1 connection x 64 requests" \
    t nbdcopy -C 1 --requests=64 --request-size=16384 "$(uri "$T/w.sock")" "$T/out.img"
check "data round-trips on workers" cmp "$T/in.img" "$T/out.img"
check "qemu-img compare" t qemu-img compare -f raw -F raw "$T/in.img" "$(uri "$T/w.sock")"
check "server alive" server_alive
finish
