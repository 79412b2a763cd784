#!/usr/bin/env bash
# What the idempotence of full-record appends costs (#18 item 6): a job's log of NODES
# batches (one record each, writer "w"), then, with hyperfine (medians of RUNS):
#
#   bare event (baseline)     `events append` of one bare event: a fresh writer, no check
#   full record, new writer   one full record of a writer the log has never seen: the head's
#                             writer set says so, no other node is read
#   full record, next seq     one full record of writer "w" with its next seq: the walk stops
#                             at w's latest node (the head here)
#   retry of the last append  w's latest record again: that node, and its batch opened
#   retry of an old append    a record of w from the middle of the chain: the walk goes back
#                             to it (NODES/2 node headers), then opens its batch
#
# Every command is the same `sh` script with its input on a pipe, the baseline too.
# Each appended record grows the log by one node; the figures are medians over runs that
# each add one, so the chain stays NODES long to within RUNS.
#
#   benches/append_retry.sh              # NODES=10000 RUNS=20
#   NODES=1000 RUNS=5 benches/append_retry.sh
set -euo pipefail
NODES=${NODES:-10000}
RUNS=${RUNS:-20}
cd "$(dirname "$0")/.."
cargo build --release --quiet
PRODIGY=$PWD/target/release/prodigy
command -v hyperfine >/dev/null || apt-get install -y hyperfine >/dev/null
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/prodigy-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export PRODIGY_HOME=$WORK/home
rec() { printf '{"id":"r%s","timestamp":"2026-01-01T00:00:00Z","writer":"w","seq":%s,"event":{"event_type":"agent_started","agent_id":"a"}}\n' "$1" "$1"; }
for ((i = 0; i < NODES; i++)); do rec "$i"; done >"$WORK/log.jsonl"
"$PRODIGY" events append --job j --repo bench --batch-size 1 "$WORK/log.jsonl" >/dev/null
rec $((NODES / 2)) >"$WORK/old.jsonl"
echo "$NODES" >"$WORK/next"
# $1: the writer ("w" continues w's seqs, "new" makes a writer per run); $2: "retry" appends
# w's latest record again.
cat >"$WORK/one.sh" <<SH
n=\$(cat "$WORK/next")
w=\$1
if [ "\$2" = retry ]; then n=\$((n - 1)); else echo \$((n + 1)) >"$WORK/next"; fi
if [ "\$w" = new ]; then w=new-\$n; fi
if [ "\$w" = bare ]; then
  echo '{"event_type":"agent_started","agent_id":"a"}' | "$PRODIGY" events append --job j --repo bench >/dev/null
  exit
fi
printf '{"id":"r%s","timestamp":"2026-01-01T00:00:00Z","writer":"%s","seq":%s,"event":{"event_type":"agent_started","agent_id":"a"}}\n' "\$n" "\$w" "\$n" |
  "$PRODIGY" events append --job j --repo bench >/dev/null
SH
hyperfine --warmup 2 --runs "$RUNS" --style basic --export-markdown "$WORK/table.md" \
  -n 'bare event (baseline)' "sh $WORK/one.sh bare" \
  -n 'full record, new writer' "sh $WORK/one.sh new" \
  -n 'full record, next seq' "sh $WORK/one.sh w" \
  -n 'retry of the last append' "sh $WORK/one.sh w retry" \
  -n 'retry of an old append' "sh -c '$PRODIGY events append --job j --repo bench <$WORK/old.jsonl'" >/dev/null
echo "log of $NODES nodes; $(nproc) cores; $(uname -r)"
cat "$WORK/table.md"
