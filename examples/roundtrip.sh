#!/usr/bin/env bash
# The store's plumbing end to end, on the default home (PRODIGY_HOME, else ~/.prodigy):
# store an event batch, point this repository's job ref at it, read it back verified,
# move the ref by compare-and-swap, and check the whole store.
#
# Until the MapReduce runner lands (issue 5) this is the "main job" of README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
prodigy=target/release/prodigy
repo=$($prodigy repo-name .)
job=roundtrip-$(date +%s)

batch=$(printf '%s\n' \
  '{"event_type":"job_started","job_id":"'"$job"'","total_items":2}' \
  '{"event_type":"agent_completed","job_id":"'"$job"'","agent_id":"agent-0","item_id":"item-0"}' \
  | $prodigy hash-object -w -t batch --stdin)
echo "stored batch $batch"
$prodigy ref update "events/$repo/$job" "$batch" --old "" -m "first batch"
$prodigy cat-object -p "${batch:0:12}"

second=$(echo '{"event_type":"job_completed","job_id":"'"$job"'"}' | $prodigy hash-object -w -t batch --stdin)
$prodigy ref update "events/$repo/$job" "$second" --old "$batch" -m "second batch"
if $prodigy ref update "events/$repo/$job" "$batch" --old "$batch" 2>/dev/null; then
  echo "a stale compare-and-swap succeeded" >&2; exit 1
fi
$prodigy ref log "events/$repo/$job"
$prodigy fsck
echo "ok: events/$repo/$job -> $($prodigy ref show "events/$repo/$job")"
