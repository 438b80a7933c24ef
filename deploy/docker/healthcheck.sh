#!/bin/sh
# Docker HEALTHCHECK: the standard grpc.health.v1 Check against the local service, through the
# package's own client (`reprocodec health`), on the port the entrypoint recorded.
set -eu
port_file="${REPROCODEC_RUN_DIR:-/tmp}/reprocodec-grpc-port"
if [ -r "$port_file" ]; then
    port="$(cat "$port_file")"
else
    port="${REPROCODEC_GRPC_PORT:-}"
fi
case "$port" in
    ''|*[!0-9]*) echo "reprocodec-healthcheck: no gRPC port recorded in $port_file" >&2; exit 1 ;;
esac
exec reprocodec health "127.0.0.1:$port"
