#!/bin/sh
# Docker HEALTHCHECK: the standard grpc.health.v1 Check against the local service, through the
# package's own client (`reprocodec health`), on the port the entrypoint recorded. Its deadline
# stays under the HEALTHCHECK --timeout (5 s), so a hung server reads as unhealthy, not as a
# killed probe. (A service started with TLS needs a probe with credentials: use the
# orchestrator's own gRPC probe there, as deploy/k8s does.)
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
exec reprocodec health --timeout 3 "127.0.0.1:$port"
