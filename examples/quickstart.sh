#!/usr/bin/env bash
# Quick start: runs start_server in front of the example echo server, shows
# a graceful restart, stops it, and leaves nothing behind. Needs cargo and
# curl.
#
#   examples/quickstart.sh          on the first free port from 8080
#   examples/quickstart.sh 9000     on port 9000, or an error if it is taken
set -euo pipefail
cd "$(dirname "$0")/.."

command -v curl >/dev/null || { echo "quickstart: needs curl" >&2; exit 1; }

# Nothing accepts connections on 127.0.0.1:PORT.
port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ $# -gt 0 ]; then
    port=$1
    if ! port_is_free "$port"; then
        echo "quickstart: port $port is taken; give another: $0 PORT" >&2
        exit 1
    fi
else
    port=8080
    until port_is_free "$port"; do port=$((port + 1)); done
fi

# Only what it runs: the axum example of the workspace would take minutes.
cargo build --release -p start-server --bin start_server --example echo_server
start_server=target/release/start_server
worker=target/release/examples/echo_server

# The pid file and status file live in a temporary directory, removed at
# exit, after stopping start_server if it still runs.
work=$(mktemp -d)
files=(--pid-file="$work/pid" --status-file="$work/status")
cleanup() {
    if [ -s "$work/pid" ]; then
        "$start_server" --stop --pid-file="$work/pid" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

set -x
"$start_server" --port="127.0.0.1:$port" "${files[@]}" -- "$worker" &
{ set +x; } 2>/dev/null
server=$!

# The status file appears once the first worker has stayed up for
# --interval (1 s); if start_server exits first, the port was taken.
until [ -s "$work/status" ]; do
    if ! kill -0 "$server" 2>/dev/null; then
        echo "quickstart: start_server could not start on port $port; give another: $0 PORT" >&2
        exit 1
    fi
    sleep 0.1
done

set -x
curl -sS "http://127.0.0.1:$port/"
"$start_server" --restart "${files[@]}"
curl -sS "http://127.0.0.1:$port/"
"$start_server" --stop --pid-file="$work/pid"
{ set +x; } 2>/dev/null
