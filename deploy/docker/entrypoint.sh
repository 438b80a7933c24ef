#!/bin/sh
# Container entrypoint: one image, either service.
#
#   reprocodec-entrypoint encoder [FLAGS...]    -> reprocodec-encoder --host ... --port 50051 ...
#   reprocodec-entrypoint decoder [FLAGS...]    -> reprocodec-decoder --host ... --port 50052 ...
#   reprocodec-entrypoint reprocodec ARGS...    -> the CLI (inspect, calibrate, health, ...)
#
# Settings come from the environment (a Compose file or a Kubernetes ConfigMap sets them) and
# become flags; FLAGS given after the role come last, so they win (argparse keeps the last).
#   REPROCODEC_HOST            bind address (the services bind loopback by default; a container
#                              must listen on all interfaces to be reachable: 0.0.0.0)
#   REPROCODEC_GRPC_PORT       default 50051 (encoder) / 50052 (decoder)
#   REPROCODEC_METRICS_PORT    default 9101 (encoder) / 9102 (decoder)
#   REPROCODEC_PROFILE         numerics profile (cpu, cpu-nomkldnn, cuda, ...)
#   REPROCODEC_DEVICE          cpu | cuda
#   REPROCODEC_MAX_CONCURRENCY, REPROCODEC_MAX_MESSAGE_MB, REPROCODEC_AUTH_TOKEN_FILE,
#   REPROCODEC_MAX_REQUEST_MEMORY_MB, REPROCODEC_MAX_MEMORY_MB (default: 75 % of the
#   container's memory limit, read from its cgroup),
#   REPROCODEC_TLS_CERT, REPROCODEC_TLS_KEY, REPROCODEC_TLS_CLIENT_CA   (optional)
#   REPROCODEC_BITSTREAM_FORMAT  encoder: the newest format it writes (7 while decoders of
#                              reprocodec 0.7 remain, 6 while 0.6 ones do, 5 while 0.5.0
#                              ones do, 4 while 0.4.0
#                              ones do, 3 while 0.3.0 ones do, 2 while 0.2.0 ones do; default
#                              the newest)
# The gRPC port in use is written to $REPROCODEC_RUN_DIR/reprocodec-grpc-port (default /tmp) for
# the image's HEALTHCHECK (reprocodec-healthcheck), which runs as a separate process.
set -eu

usage() {
    echo "usage: reprocodec-entrypoint encoder|decoder [FLAGS...]" >&2
    echo "       reprocodec-entrypoint reprocodec ARGS...   (the command-line tool)" >&2
    exit 64
}

[ $# -ge 1 ] || usage
role="$1"
shift
case "$role" in
    encoder) default_port=50051; default_metrics_port=9101 ;;
    decoder) default_port=50052; default_metrics_port=9102 ;;
    reprocodec) exec reprocodec "$@" ;;
    *) usage ;;
esac

port="${REPROCODEC_GRPC_PORT:-$default_port}"
metrics_port="${REPROCODEC_METRICS_PORT:-$default_metrics_port}"

# A --port among the extra flags overrides the environment: the health check must know it.
expect_port=no
for arg in "$@"; do
    if [ "$expect_port" = yes ]; then port="$arg"; expect_port=no; continue; fi
    case "$arg" in
        --port) expect_port=yes ;;
        --port=*) port="${arg#--port=}" ;;
    esac
done
case "$port" in
    ''|*[!0-9]*) echo "reprocodec-entrypoint: gRPC port must be a number, not '$port'" >&2; exit 64 ;;
esac

run_dir="${REPROCODEC_RUN_DIR:-/tmp}"
# Not fatal: a read-only /tmp only costs the Docker HEALTHCHECK (Kubernetes probes gRPC itself).
echo "$port" > "$run_dir/reprocodec-grpc-port" 2>/dev/null \
    || echo "reprocodec-entrypoint: cannot write $run_dir/reprocodec-grpc-port" >&2

# Build the flag list in "$@": settings first, then the caller's flags.
extra_count=$#
set -- "$@" \
    --host "${REPROCODEC_HOST:-0.0.0.0}" \
    --port "$port" \
    --metrics-port "$metrics_port"
[ -n "${REPROCODEC_PROFILE:-}" ] && set -- "$@" --profile "$REPROCODEC_PROFILE"
[ -n "${REPROCODEC_DEVICE:-}" ] && set -- "$@" --device "$REPROCODEC_DEVICE"
[ -n "${REPROCODEC_MAX_CONCURRENCY:-}" ] && set -- "$@" --max-concurrency "$REPROCODEC_MAX_CONCURRENCY"
[ -n "${REPROCODEC_MAX_MESSAGE_MB:-}" ] && set -- "$@" --max-message-mb "$REPROCODEC_MAX_MESSAGE_MB"
[ -n "${REPROCODEC_MAX_REQUEST_MEMORY_MB:-}" ] && set -- "$@" --max-request-memory-mb "$REPROCODEC_MAX_REQUEST_MEMORY_MB"
[ -n "${REPROCODEC_MAX_MEMORY_MB:-}" ] && set -- "$@" --max-memory-mb "$REPROCODEC_MAX_MEMORY_MB"
[ -n "${REPROCODEC_AUTH_TOKEN_FILE:-}" ] && set -- "$@" --auth-token-file "$REPROCODEC_AUTH_TOKEN_FILE"
[ -n "${REPROCODEC_TLS_CERT:-}" ] && set -- "$@" --tls-cert "$REPROCODEC_TLS_CERT"
[ -n "${REPROCODEC_TLS_KEY:-}" ] && set -- "$@" --tls-key "$REPROCODEC_TLS_KEY"
[ -n "${REPROCODEC_TLS_CLIENT_CA:-}" ] && set -- "$@" --tls-client-ca "$REPROCODEC_TLS_CLIENT_CA"
[ -n "${REPROCODEC_BITSTREAM_FORMAT:-}" ] && set -- "$@" --bitstream-format "$REPROCODEC_BITSTREAM_FORMAT"
# Rotate the caller's flags (the first $extra_count words) to the end, so that they win.
while [ "$extra_count" -gt 0 ]; do
    first="$1"
    shift
    set -- "$@" "$first"
    extra_count=$((extra_count - 1))
done

# exec: the service replaces this shell (as PID 1) and gets SIGTERM itself, so its graceful
# shutdown (health NOT_SERVING, drain in-flight requests) runs on `docker stop` / pod deletion.
exec "reprocodec-$role" "$@"
