#!/usr/bin/env bash
# The remote store's benchmark (benches/remote.rs) against an S3-compatible server on
# loopback: starts s3s-fs (cargo install s3s-fs@0.14.1 --features binary) with a scratch
# directory on /var/tmp, points the AWS_* variables at it, runs the benchmark, stops it.
#
# s3s-fs writes a response's headers and body in two segments without TCP_NODELAY, so on
# a pooled connection the body waits for the client's delayed ACK (40 ms on Linux): every
# GET with a body costs ~40 ms on loopback, which S3 itself does not do. As root, the
# script therefore runs the benchmark twice: once on 127.0.0.1 as s3s-fs behaves, and once
# on 127.0.0.77 with a `quickack` route (the client acknowledges at once, so the server's
# segments are not held), which is the figure to compare with a real endpoint.
#
#   benches/remote.sh                 # 200 appends of each size, 100,000 events shown
#   APPENDS=500 EVENTS=1000000 benches/remote.sh
set -euo pipefail
cd "$(dirname "$0")/.."
server=$(command -v s3s-fs || echo "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs")
root=$(mktemp -d /var/tmp/prodigy-s3-XXXXXX)
mkdir -p "$root/bench"
pids=()
routed=false
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  if $routed; then ip route del local 127.0.0.77 dev lo table local 2>/dev/null || true; fi
  rm -rf "$root"
}
trap cleanup EXIT
cargo bench --locked --bench remote --no-run 2>/dev/null
run() { # host label
  local host=$1 port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$server" --host "$host" --port "$port" --access-key bench --secret-key benchsecret "$root" \
    >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do (exec 3<>/dev/tcp/"$host"/"$port") 2>/dev/null && break; sleep 0.05; done
  echo "== $2"
  AWS_ENDPOINT_URL=http://$host:$port AWS_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret \
    REMOTE_STORE=s3://bench/run-${host//./-} cargo bench --locked --bench remote 2>/dev/null
}
run 127.0.0.1 "s3s-fs on 127.0.0.1 (responses held by the delayed ACK)"
if [ "$(id -u)" = 0 ] && ip route replace local 127.0.0.77 dev lo table local quickack 1; then
  routed=true
  run 127.0.0.77 "s3s-fs on 127.0.0.77, quickack route (responses not held)"
fi
