#!/bin/sh
# Benchmarks our start_server against the Perl reference, side by side.
#
#   bench/run.sh            the full run (about 7 minutes on 2 cores)
#   bench/run.sh --quick    a short pass, to check the harness itself
#   bench/run.sh --impl NAME=BINARY ...   another start_server beside them
#
# Installs what it needs (Debian packages), builds our binary, the bench
# worker and the harness in release mode, then writes bench/results/results.md
# and bench/results/latency.png (raw data and logs: bench/results/raw/).
set -eu
cd "$(dirname "$0")/.."

need=""
command -v wrk >/dev/null 2>&1 || need="$need wrk"
command -v gnuplot >/dev/null 2>&1 || need="$need gnuplot-nox"
[ -x /usr/bin/start_server ] || need="$need libserver-starter-perl"
if [ -n "$need" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing:$need" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # shellcheck disable=SC2086
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >&2
fi

cargo build --release --bin start_server --example bench_worker
cargo build --release --manifest-path bench/Cargo.toml

exec bench/target/release/ss-bench \
  --ours target/release/start_server \
  --reference /usr/bin/start_server \
  --worker target/release/examples/bench_worker \
  --out bench/results \
  "$@"
